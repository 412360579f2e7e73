"""Sequence-to-sequence data: source/target tables -> token ids, the decoder's teacher-forced input and labels with
padding on both sides, and the validation sources grouped with all their targets for the decoded metrics.

The decoder starts from and ends with one token, the tokenizer's end-of-text ([SEP] for a WordPiece vocabulary):
it reads [end] + target and predicts target + [end].
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.batch import IGNORE, pad_examples
from minilm.data.tables import require_column
from minilm.errors import DataError
from minilm.tokenizer import EOT, SEP, encode_texts


def end_id(tok: Tokenizer) -> int:
    """The token that starts and ends every target."""
    for name in (EOT, SEP):
        if tok.token_to_id(name) is not None:
            return tok.token_to_id(name)
    raise DataError(f"the tokenizer has neither {EOT} nor {SEP} to start and end targets: train one with minilm "
                    "(tokenizer.path unset) or add one of them")


def source_text(text: str, chars: bool) -> str:
    """The source as the tokenizer reads it: with seq2seq.source_chars, one character per token."""
    if not chars:
        return text
    return " ".join("▁" if ch.isspace() else ch for ch in text.strip())


def table_texts(table: datasets.Dataset, cfg: Config) -> list[str]:
    """Sources and targets of a table, for training a tokenizer that serves both sides."""
    c = cfg.seq2seq
    require_column(table, c.source_column, "seq2seq.source_column", "data.train_files")
    require_column(table, c.target_column, "seq2seq.target_column", "data.train_files")
    return [source_text(str(t), c.source_chars) for t in table[c.source_column]] + [str(t) for t in table[c.target_column]]


def encode_pairs(table: datasets.Dataset, tok: Tokenizer, cfg: Config, what: str,
                 targets: bool = True) -> datasets.Dataset:
    """Columns input_ids and (with `targets`) target_ids. An empty side or one longer than the model's
    positions is refused, naming the row and the fix."""
    c, block = cfg.seq2seq, cfg.model.block_size
    require_column(table, c.source_column, "seq2seq.source_column", what)
    sources = [source_text(str(t), c.source_chars) for t in table[c.source_column]]
    columns = {"input_ids": [e.ids for e in encode_texts(tok, sources)]}
    if targets:
        require_column(table, c.target_column, "seq2seq.target_column", what)
        columns["target_ids"] = [e.ids for e in encode_texts(tok, [str(t) for t in table[c.target_column]])]
    for name, ids in columns.items():
        side = "source" if name == "input_ids" else "target"
        empty = next((i for i, x in enumerate(ids) if not x), None)
        if empty is not None:
            raise DataError(f"row {empty + 1} of {what} has an empty {side}: remove it or fill it in")
        room = block if side == "source" else block - 1  # the decoder also reads the start token
        longest = max(range(len(ids)), key=lambda i: len(ids[i]))
        if len(ids[longest]) > room:
            n = sum(len(x) > room for x in ids)
            raise DataError(f"{n} {side}(s) of {what} are longer than model.block_size={block} allows (row "
                            f"{longest + 1}: {len(ids[longest])} tokens): raise model.block_size to "
                            f"{len(ids[longest]) + (side == 'target')} or drop those rows")
    return datasets.Dataset.from_dict(columns)


class PairCollator:
    """Sources padded with their mask; the decoder's input [end] + target and labels target + [end], padded (labels
    with IGNORE)."""

    def __init__(self, end: int):
        self.end = end

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_examples([{"input_ids": e["input_ids"]} for e in examples], self.end)
        if "target_ids" not in examples[0]:
            return batch
        dec = pad_examples([{"input_ids": [self.end, *e["target_ids"]]} for e in examples], self.end)
        labels = pad_examples([{"input_ids": [*e["target_ids"], self.end]} for e in examples], IGNORE)["input_ids"]
        return {**batch, "decoder_input_ids": dec["input_ids"], "decoder_attention_mask": dec["attention_mask"],
                "labels": labels}


@dataclass
class References:
    """Distinct sources in order of first appearance, each with all the targets the table gives it."""

    sources: list[list[int]]
    targets: list[list[list[int]]]
    end: int  # the start / end token

    @classmethod
    def of(cls, pairs: datasets.Dataset, end: int) -> References:
        index: dict[tuple[int, ...], int] = {}
        sources, targets = [], []
        for src, tgt in zip(pairs["input_ids"], pairs["target_ids"]):
            i = index.setdefault(tuple(src), len(sources))
            if i == len(sources):
                sources.append(src)
                targets.append([])
            targets[i].append(tgt)
        return cls(sources, targets, end)
