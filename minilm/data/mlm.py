"""BERT pretraining data: documents -> sentences -> NSP segment pairs, and the dynamic masking collator.

Pairs follow BERT's create_pretraining_data.py: fill a chunk of sentences up to the target length (sometimes
shorter), split it at a random sentence boundary into A and B; half the time replace B by a run of sentences
from another document; trim the longer segment from a random end until the pair fits.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch
from tokenizers import Tokenizer

from minilm.config import DataConfig
from minilm.data.batch import IGNORE, Shuffled, pad_examples
from minilm.data.prepared import Prepared, TokenStream
from minilm.data.streaming import StreamedBlocks, Streamed
from minilm.errors import DataError
from minilm.tokenizer import BERT_SPECIALS, CLS, MASK, PAD, SEP

def nsp_spans(starts: np.ndarray, ends: np.ndarray, docs: list[tuple[int, int]], max_len: int,
              short_seq_prob: float, seed: int) -> np.ndarray:
    """(n, 5) rows (A start, A end, B start, B end, is_random_next): token ranges of a stream whose sentence i
    spans [starts[i], ends[i]) and whose document d holds the sentences docs[d] = (first, last + 1). Each
    [CLS] A [SEP] B [SEP] fits in max_len tokens. Only sentence lengths are read, never the tokens."""
    if len(docs) < 2:
        raise DataError("next-sentence prediction needs at least two documents: add files or set data.nsp=false")
    rng = random.Random(seed)
    max_tokens = max_len - 3  # [CLS], [SEP], [SEP]
    out = []
    for d, (lo, hi) in enumerate(docs):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: list[tuple[int, int]] = []  # consecutive sentences: (start, end) each
        length, i = 0, 0
        while i < hi - lo:
            chunk.append((int(starts[lo + i]), int(ends[lo + i])))
            length += chunk[-1][1] - chunk[-1][0]
            if i == hi - lo - 1 or length >= target:
                n_sentences = len(chunk)
                (c0, c1) = chunk[0]
                if len(chunk) == 1 and c1 - c0 >= 2:  # one long sentence: split it so B can be its real next
                    cut = c0 + rng.randint(1, c1 - c0 - 1)
                    chunk = [(c0, cut), (cut, c1)]
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [chunk[0][0], chunk[a_end - 1][1]]
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_random = 1
                    other = rng.randrange(len(docs) - 1)
                    o_lo, o_hi = docs[other + (other >= d)]  # any document but this one
                    first = o_lo + rng.randint(0, o_hi - o_lo - 1)
                    b = [int(starts[first]), int(starts[first])]
                    for k in range(first, o_hi):  # a run of its sentences, long enough to fill the pair
                        b[1] = int(ends[k])
                        if b[1] - b[0] >= target - (a[1] - a[0]):
                            break
                    i -= max(0, n_sentences - a_end)  # the chunk's unused whole sentences are used next
                else:
                    is_random = 0
                    b = [chunk[a_end][0], chunk[-1][1]]
                while (a[1] - a[0]) + (b[1] - b[0]) > max_tokens:
                    longer = a if a[1] - a[0] > b[1] - b[0] else b
                    if rng.random() < 0.5:  # trim either end so no side is systematically lost
                        longer[0] += 1
                    else:
                        longer[1] -= 1
                if a[1] > a[0] and b[1] > b[0]:
                    out.append((a[0], a[1], b[0], b[1], is_random))
                chunk, length = [], 0
                target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
            i += 1
    return np.asarray(out, dtype=np.int64).reshape(-1, 5)


class PairDataset(torch.utils.data.Dataset):
    """NSP examples as [CLS] A [SEP] B [SEP] with segment ids 0/1 and the next-sentence label: from
    (A, B, is_random) tuples, or from nsp_spans rows over a (memory-mapped) token stream."""

    def __init__(self, pairs: list[tuple] | np.ndarray, cls_id: int, sep_id: int,
                 stream: TokenStream | None = None):
        self.pairs, self.cls, self.sep, self.stream = pairs, cls_id, sep_id, stream

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        if self.stream is None:
            a, b, is_random = self.pairs[i]
        else:
            a0, a1, b0, b1, is_random = (int(v) for v in self.pairs[i])
            a, b = self.stream[a0:a1].tolist(), self.stream[b0:b1].tolist()
        ids = [self.cls, *a, self.sep, *b, self.sep]
        seg = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        return {"input_ids": ids, "segment_ids": seg, "next_sentence_label": is_random}


class BlockDataset(torch.utils.data.Dataset):
    """MLM only (RoBERTa / Cramming style): the token stream in blocks of [CLS] ... [SEP], no sentence pairs."""

    def __init__(self, stream: np.ndarray | TokenStream, max_len: int, cls_id: int, sep_id: int):
        self.width = max_len - 2
        self.n = len(stream) // self.width
        if self.n < 1:
            raise DataError(f"the text has {len(stream)} tokens, fewer than one block of {self.width}: "
                            "use more data or a smaller model.block_size")
        self.stream = stream if isinstance(stream, TokenStream) else TokenStream([stream])
        self.cls, self.sep = cls_id, sep_id

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": [self.cls, *self.stream[i * self.width : (i + 1) * self.width].tolist(), self.sep]}


def build_streamed_block_datasets(data: Streamed, max_len: int) -> tuple[StreamedBlocks, BlockDataset]:
    """MLM-only blocks from text read while training, in stream order."""
    cls_id, sep_id = _bert_ids(data.tokenizer)
    width = max_len - 2
    train = data.blocks(width, width, lambda chunk: {"input_ids": [cls_id, *chunk.tolist(), sep_id]})
    return train, BlockDataset(data.val, max_len, cls_id, sep_id)


class MaskingCollator:
    """Pads a batch and masks it afresh each time: mlm_probability of the real, non-special tokens are
    predicted; of those 80 % become [MASK], 10 % a random token, 10 % stay. Other positions carry no loss.
    """

    def __init__(self, tok: Tokenizer, mlm_probability: float, fixed: bool = False):
        self.pad = tok.token_to_id(PAD)
        self.mask = tok.token_to_id(MASK)
        self.special = torch.tensor(sorted(tok.token_to_id(t) for t in BERT_SPECIALS if tok.token_to_id(t) is not None))
        self.vocab = tok.get_vocab_size()
        self.p = mlm_probability
        # training draws from the global RNG (saved with the training state, so resume is exact); `fixed`
        # seeds each example by its content, so every evaluation sees the same masks
        self.fixed = fixed

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_examples(examples, self.pad)  # right-padded
        ids, attention = batch["input_ids"], batch["attention_mask"]  # (B, T) each
        T = ids.size(1)
        if self.fixed:  # each example's draws depend on its own tokens only, not on the batch it is in
            p_choose, roll = torch.ones(len(examples), T), torch.ones(len(examples), T)
            random_ids = torch.full((len(examples), T), self.pad, dtype=torch.long)
            for i, e in enumerate(examples):
                n = len(e["input_ids"])  # draw for the example's own length: padding never shifts the stream
                c, r, x = self._draws((1, n), torch.as_tensor(e["input_ids"]))
                p_choose[i, :n], roll[i, :n], random_ids[i, :n] = c[0], r[0], x[0]
        else:
            p_choose, roll, random_ids = self._draws(tuple(ids.shape))
        candidates = attention.bool() & ~torch.isin(ids, self.special)
        chosen = (p_choose < self.p) & candidates
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        masked = ids.clone()
        masked[chosen & (roll < 0.8)] = self.mask
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        masked[swap] = random_ids[swap]
        batch.update(input_ids=masked, labels=labels)
        if "next_sentence_label" in examples[0]:
            batch["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in examples])
        return batch

    def _draws(self, shape: tuple, seed_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        g = None if seed_ids is None else torch.Generator().manual_seed(zlib.crc32(seed_ids.numpy().tobytes()))
        choose = torch.rand(shape, generator=g)
        roll = torch.rand(shape, generator=g)
        random_ids = torch.randint(len(self.special), self.vocab, shape, generator=g)  # specials come first
        return choose, roll, random_ids


def _bert_ids(tok: Tokenizer) -> tuple[int, int]:
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    if cls_id is None or sep_id is None or tok.token_to_id(MASK) is None:
        raise DataError("BERT pretraining needs a WordPiece tokenizer with [CLS] [SEP] [MASK]: set tokenizer.kind=wordpiece")
    return cls_id, sep_id


def build_block_datasets(data: Prepared, cfg: DataConfig, max_len: int, seed: int) -> tuple[Shuffled, BlockDataset]:
    """MLM-only blocks straight from the prepared shards: training blocks reshuffled each epoch, validation
    from the val split or the held-out last val_fraction of the documents."""
    cls_id, sep_id = _bert_ids(data.tokenizer)
    train = data.stream("train")
    if "val" in data.splits():
        val = data.stream("val")
    else:
        ends = data.doc_ends("train")
        n_val = max(1, round(len(ends) * cfg.val_fraction))
        if len(ends) - n_val < 1:
            raise DataError("BERT validation needs held-out documents: set data.val_files or give more documents")
        cut = int(ends[len(ends) - n_val - 1])
        train, val = train.window(0, cut), train.window(cut, len(train))
    val = val.head(cfg.val_tokens)
    return Shuffled(BlockDataset(train, max_len, cls_id, sep_id), seed), BlockDataset(val, max_len, cls_id, sep_id)


def sentence_docs(data: Prepared, split: str) -> tuple[TokenStream, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """A split's stream, where each sentence starts and ends, and each document's (first, last + 1) sentence."""
    ends = data.sentence_ends(split)
    doc_last = np.searchsorted(ends, data.doc_ends(split), side="right")  # (n_docs,) sentences before each end
    docs = list(zip(np.concatenate([[0], doc_last[:-1]]), doc_last))
    return data.stream(split), np.concatenate([[0], ends[:-1]]), ends, docs


def build_eval_dataset(data: Prepared, cfg: DataConfig, max_len: int, seed: int) -> BlockDataset | PairDataset:
    """The whole "train" split of a prepared folder as validation examples: blocks, or NSP pairs (`minilm eval`)."""
    cls_id, sep_id = _bert_ids(data.tokenizer)
    if not cfg.nsp:
        return BlockDataset(data.stream("train"), max_len, cls_id, sep_id)
    stream, starts, ends, docs = sentence_docs(data, "train")
    pairs = nsp_spans(starts, ends, [d for d in docs if d[1] > d[0]], max_len, cfg.short_seq_prob, seed)
    return PairDataset(pairs, cls_id, sep_id, stream)


def build_nsp_datasets(data: Prepared, cfg: DataConfig, max_len: int, seed: int) -> tuple[Shuffled, PairDataset]:
    """NSP pairs from the sentence boundaries stored with the shards: training pairs reshuffled each epoch,
    validation pairs from the val split or the held-out last val_fraction of the documents (capped at
    val_tokens); pairs are token ranges, read from the memory map when asked for."""
    cls_id, sep_id = _bert_ids(data.tokenizer)
    splits = {split: sentence_docs(data, split) for split in data.splits()}
    stream, starts, ends, docs = splits["train"]
    if "val" in splits:
        val_docs, val = splits["val"][3], splits["val"]
    else:  # hold out the last val_fraction of the documents (as they were counted, empty ones included)
        n_val = max(1, round(len(docs) * cfg.val_fraction))
        if len(docs) - n_val < 1:
            raise DataError("BERT validation needs held-out documents: set data.val_files or give more documents")
        docs, val_docs = docs[: len(docs) - n_val], docs[len(docs) - n_val :]
        val = (stream, starts, ends, val_docs)
    docs, val_docs = [d for d in docs if d[1] > d[0]], [d for d in val_docs if d[1] > d[0]]
    if len(val_docs) < 2:  # random B segments must come from another held-out document
        raise DataError("BERT validation with next-sentence prediction needs at least two held-out documents: "
                        "add data.val_files or set data.nsp=false")
    train_pairs = nsp_spans(starts, ends, docs, max_len, cfg.short_seq_prob, seed)
    val_pairs = nsp_spans(val[1], val[2], val_docs, max_len, cfg.short_seq_prob, seed + 1)
    if cfg.val_tokens:  # an evaluation of a fixed size: the pairs that start within the first val_tokens
        val_pairs = val_pairs[val_pairs[:, 0] - int(val[1][val_docs[0][0]]) < cfg.val_tokens]
    return (Shuffled(PairDataset(train_pairs, cls_id, sep_id, stream), seed),
            PairDataset(val_pairs, cls_id, sep_id, val[0]))
