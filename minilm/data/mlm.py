"""BERT pretraining data: documents -> sentences -> NSP segment pairs, and the dynamic masking collator.

Pairs follow BERT's create_pretraining_data.py: fill a chunk of sentences up to the target length (sometimes
shorter), split it at a random sentence boundary into A and B; half the time replace B by a run of sentences
from another document; trim the longer segment from a random end until the pair fits.
"""

from __future__ import annotations

import random
import re
import zlib

import datasets
import numpy as np
import torch
from tokenizers import Tokenizer

from minilm.config import DataConfig
from minilm.data.batch import IGNORE, Shuffled, pad_examples
from minilm.data.prepared import Prepared, TokenStream
from minilm.errors import DataError
from minilm.tokenizer import BERT_SPECIALS, CLS, MASK, PAD, SEP

# a sentence ends at . ! or ? (optionally followed by a closing quote) before whitespace and a capital/quote
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019]?\s+(?=[\"'\u201c\u2018(]?[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Paragraphs (blank-line separated, lines unwrapped) split into sentences."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if para:
            out += [s.strip() for s in _SENTENCE_END.split(para) if s.strip()]
    return out


def tokenize_sentences(docs: datasets.Dataset, tok: Tokenizer, num_proc: int) -> list[list[list[int]]]:
    """Each document as a list of sentences, each a list of token ids (no special tokens)."""

    def encode(batch: dict) -> dict:
        out = []
        for text in batch["text"]:
            sents = split_sentences(text or "")
            ids = [e.ids for e in tok.encode_batch(sents, add_special_tokens=False)] if sents else []
            out.append([s for s in ids if s])
        return {"sentences": out}

    ds = docs.map(encode, batched=True, batch_size=8, num_proc=min(num_proc, len(docs)),
                  remove_columns=docs.column_names, desc="splitting and tokenizing")
    return [d for d in ds["sentences"] if d]


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]  # trim either end so no side is systematically lost


def nsp_pairs(docs: list[list[list[int]]], max_len: int, short_seq_prob: float, seed: int) -> list[tuple]:
    """(A, B, is_random_next) examples whose [CLS] A [SEP] B [SEP] fits in max_len tokens."""
    if len(docs) < 2:
        raise DataError("next-sentence prediction needs at least two documents: add files or set data.nsp=false")
    rng = random.Random(seed)
    max_tokens = max_len - 3  # [CLS], [SEP], [SEP]
    out = []
    for d, doc in enumerate(docs):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: list[list[int]] = []
        length, i = 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                n_sentences = len(chunk)
                if len(chunk) == 1 and len(chunk[0]) >= 2:  # one long sentence: split it so B can be its real next
                    cut = rng.randint(1, len(chunk[0]) - 1)
                    chunk = [chunk[0][:cut], chunk[0][cut:]]
                if chunk:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    a = [t for s in chunk[:a_end] for t in s]
                    if len(chunk) == 1 or rng.random() < 0.5:
                        is_random = 1
                        other = rng.randrange(len(docs) - 1)
                        other_doc = docs[other + (other >= d)]  # any document but this one
                        start = rng.randint(0, len(other_doc) - 1)
                        b: list[int] = []
                        for s in other_doc[start:]:
                            b += s
                            if len(b) >= target - len(a):
                                break
                        i -= max(0, n_sentences - a_end)  # the chunk's unused whole sentences are used next
                    else:
                        is_random = 0
                        b = [t for s in chunk[a_end:] for t in s]
                    _truncate_pair(a, b, max_tokens, rng)
                    if a and b:
                        out.append((a, b, is_random))
                chunk, length = [], 0
                target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
            i += 1
    return out


class PairDataset(torch.utils.data.Dataset):
    """NSP examples as [CLS] A [SEP] B [SEP] with segment ids 0/1 and the next-sentence label."""

    def __init__(self, pairs: list[tuple], cls_id: int, sep_id: int):
        self.pairs, self.cls, self.sep = pairs, cls_id, sep_id

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        a, b, is_random = self.pairs[i]
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


def build_mlm_dataset(docs: datasets.Dataset, tok: Tokenizer, cfg: DataConfig, max_len: int,
                      seed: int) -> torch.utils.data.Dataset:
    cls_id, sep_id = _bert_ids(tok)
    if not cfg.nsp:
        from minilm.data.lm import tokenize_stream

        return BlockDataset(tokenize_stream(docs, tok, cfg.num_proc), max_len, cls_id, sep_id)
    docs_ids = tokenize_sentences(docs, tok, cfg.num_proc)
    return PairDataset(nsp_pairs(docs_ids, max_len, cfg.short_seq_prob, seed), cls_id, sep_id)


def build_mlm_datasets(train_docs: datasets.Dataset, val_docs: datasets.Dataset | None, tok: Tokenizer,
                       cfg: DataConfig, max_len: int, seed: int) -> tuple[Shuffled, torch.utils.data.Dataset]:
    """Training examples (reshuffled each epoch) and validation examples from held-out documents."""
    if val_docs is None:  # hold out the last val_fraction of the documents
        n_val = max(1, round(len(train_docs) * cfg.val_fraction))
        if len(train_docs) - n_val < 1:
            raise DataError("BERT validation needs held-out documents: set data.val_files or give more documents")
        train_docs, val_docs = train_docs.select(range(len(train_docs) - n_val)), train_docs.select(
            range(len(train_docs) - n_val, len(train_docs)))
    if cfg.nsp and len(val_docs) < 2:  # random B segments must come from another held-out document
        raise DataError("BERT validation with next-sentence prediction needs at least two held-out documents: "
                        "add data.val_files or set data.nsp=false")
    train = build_mlm_dataset(train_docs, tok, cfg, max_len, seed)
    return Shuffled(train, seed), build_mlm_dataset(val_docs, tok, cfg, max_len, seed + 1)
