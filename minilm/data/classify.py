"""Classification data: labelled tables -> label ids + token ids (datasets.map), and dynamic padding.

BERT runs encode `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` with segment ids; GPT runs encode A, or
A <|endoftext|> B, and classify the last real token.
"""

from __future__ import annotations

import datasets
import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.batch import pad_examples
from minilm.data.tables import require_column
from minilm.errors import DataError
from minilm.tokenizer import CLS, EOT, PAD, unknown_chars


def label_names(ds: datasets.Dataset, column: str) -> list[str]:
    """Sorted label values as strings (numbers numerically); their order defines the label ids."""
    values = set(ds.unique(column))
    if all(isinstance(v, int) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted({str(v).strip() for v in values})


def is_bert_tokenizer(tok: Tokenizer) -> bool:
    return tok.token_to_id(CLS) is not None


def encode_table(ds: datasets.Dataset, tok: Tokenizer, cfg: Config, labels: list[str] | None,
                 what: str) -> datasets.Dataset:
    """Columns input_ids, segment_ids and (unless `labels` is None: texts to classify) label_id, truncated to
    the model's block size."""
    c, text_col = cfg.classify, cfg.data.text_column
    require_column(ds, text_col, "data.text_column", what)
    require_column(ds, c.text_pair_column, "classify.text_pair_column", what)
    if labels is not None:
        require_column(ds, c.label_column, "classify.label_column", what)
        index = {name: i for i, name in enumerate(labels)}
        unseen = sorted({str(v).strip() for v in ds.unique(c.label_column)} - set(index))
        if unseen:
            raise DataError(f"{what} has labels the training data never had ({', '.join(unseen[:5])}): "
                            f"use data with the labels {', '.join(labels[:10])}")
    max_len = cfg.model.block_size
    bert = is_bert_tokenizer(tok)
    eot = tok.token_to_id(EOT)

    def encode(batch: dict) -> dict:
        a = [str(t).strip() for t in batch[text_col]]
        b = [str(t).strip() for t in batch[c.text_pair_column]] if c.text_pair_column else None
        if bert:  # the post-processor adds [CLS]/[SEP] and segment ids; truncation keeps both segments
            tok.enable_truncation(max_len)
            encs = tok.encode_batch(list(zip(a, b)) if b else a)
            tok.no_truncation()
            ids, seg = [e.ids for e in encs], [e.type_ids for e in encs]
        else:
            bad = unknown_chars(tok, "".join(a + (b or [])))
            if bad:  # a character vocabulary has no unknown token
                raise DataError(f"{what} has characters the tokenizer never saw ({''.join(bad[:10])!r}): "
                                "fine-tune from a run with a BPE or WordPiece tokenizer")
            ea = [e.ids for e in tok.encode_batch(a, add_special_tokens=False)]
            eb = [e.ids for e in tok.encode_batch(b, add_special_tokens=False)] if b else [None] * len(a)
            if cfg.model.reads_trees:
                _check_tree_lengths(ea, max_len, what)
            ids = [_join_gpt(x, y, eot, max_len) for x, y in zip(ea, eb)]
            seg = [[0] * len(x) for x in ids]
        out = {"input_ids": ids, "segment_ids": seg}
        if labels is not None:
            out["label_id"] = [index[str(v).strip()] for v in batch[c.label_column]]
        return out

    out = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="encoding")
    if len(out) == 0:
        raise DataError(f"{what} has no examples: give a file with labelled rows")
    return out


def _check_tree_lengths(ids: list[list[int]], max_len: int, what: str) -> None:
    """A tree is read whole: cutting it at model.block_size would leave brackets open."""
    longest = max(map(len, ids), default=0)
    if longest > max_len:
        raise DataError(f"{what} has a tree of {longest} tokens, more than model.block_size={max_len}, and a tree "
                        f"cannot be cut: set model.block_size={longest} or more")


def _join_gpt(a: list[int], b: list[int] | None, eot: int | None, max_len: int) -> list[int]:
    """A, or A <eot> B, with the longer text shortened from its end until the whole fits max_len."""
    if b is None:
        return (a or [eot if eot is not None else 0])[:max_len]
    budget = max_len - 1
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a + ([eot] if eot is not None else []) + b


class PadCollator:
    """Pads each batch to its longest example (dynamic padding), on the right or the left."""

    def __init__(self, pad_id: int, side: str = "right"):
        self.pad_id, self.left = pad_id, side == "left"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_examples(examples, self.pad_id, self.left)
        if not batch["segment_ids"].any():  # single sentences: the model's default segment 0
            del batch["segment_ids"]
        if "label_id" in examples[0]:
            batch["labels"] = torch.tensor([e["label_id"] for e in examples])
        return batch


def pad_id(tok: Tokenizer) -> int:
    for name in (PAD, EOT):
        if tok.token_to_id(name) is not None:
            return tok.token_to_id(name)
    return 0


def iter_table_texts(ds: datasets.Dataset, cfg: Config):
    """Texts of the training table, for training a tokenizer when fine-tuning from scratch."""
    cols = [cfg.data.text_column] + ([cfg.classify.text_pair_column] if cfg.classify.text_pair_column else [])
    for col in cols:
        require_column(ds, col, "data.text_column" if col == cfg.data.text_column else "classify.text_pair_column", "data.train_files")
        for rows in ds.select_columns([col]).iter(batch_size=1000):
            yield from (str(t) for t in rows[col])
