"""Pretraining text read while training (data.streaming=true): no prepared shards, no pass over the corpus first.

The sources (files, or a hub dataset) are read in the same pieces prepare reads (pieces.py) by a `datasets`
IterableDataset, split between the processes (`split_dataset_by_node`: whole files where their number allows,
else every process keeps its share of the pieces), tokenized in batches as they arrive and packed into blocks.
Every block carries the stream position after it (datasets' iterable state at the start of a batch of pieces,
and how many of that batch's tokens are used up), so a resumed run reads on from exactly the next token.

Validation is the first data.val_tokens tokens of data.val_files, or else of the training text, whose pieces
are then left out of training.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data import prepared
from minilm.data.batch import this_process
from minilm.data.pieces import list_sources, pieces
from minilm.errors import DataError
from minilm.tokenizer import encode_texts, eot_id

Position = dict  # {"epoch": int, "rows": datasets' state_dict or None (the epoch's start), "skip": tokens}


def _rows(sources: list[dict], column: str, held: dict[str, int]) -> Iterator[dict]:
    """The pieces of `sources` (this shard's), without the first held[index] pieces of a source."""
    for source in sources:
        skip = held.get(str(source["index"]), 0)
        for i, (text, end) in enumerate(pieces(source, column)):
            if i >= skip:
                yield {"text": text, "end": end}


def _encode(tok: Tokenizer, texts: list[str], ends: list[bool]) -> np.ndarray:
    """The texts' ids, <|endoftext|> after each one that ends a document (as prepare writes them)."""
    tail = [eot_id(tok)] if eot_id(tok) is not None else []
    ids = [e.ids + (tail if end else []) for e, end in zip(encode_texts(tok, texts), ends)]
    return np.fromiter((i for part in ids for i in part), dtype=np.int64)


def _batches(rows: datasets.IterableDataset) -> Iterator[tuple[list[str], list[bool], dict]]:
    """Pieces in batches of about BATCH_CHARS characters, each with the stream's state after it."""
    texts, ends, chars = [], [], 0
    for row in rows:
        texts.append(row["text"])
        ends.append(row["end"])
        chars += len(row["text"])
        if chars >= prepared.BATCH_CHARS:
            yield texts, ends, rows.state_dict()
            texts, ends, chars = [], [], 0
    if texts:
        yield texts, ends, rows.state_dict()


class StreamedBlocks(torch.utils.data.IterableDataset):
    """`size` tokens at a time, every `stride` tokens, from this process's share of the stream, epoch after
    epoch without end; `make` turns them into an example. Set `position` before iterating to resume."""

    def __init__(self, rows: Callable[[], datasets.IterableDataset], tok: Tokenizer, size: int, stride: int,
                 make: Callable[[np.ndarray], dict]):
        self.rows, self.tok, self.size, self.stride, self.make = rows, tok, size, stride, make
        self.position: Position = {"epoch": 0, "rows": None, "skip": 0}

    def __iter__(self) -> Iterator[dict]:
        pos = self.position
        while True:
            rows = self.rows()
            if pos["rows"] is not None:
                rows.load_state_dict(pos["rows"])
            yielded = False
            for example in self._epoch(rows, pos["epoch"], pos["rows"], pos["skip"]):
                yielded = True
                yield example
            if not yielded and pos["rows"] is None:
                raise DataError(f"this process's share of the streamed training text holds fewer than {self.size} "
                                "tokens (without data.val_files, the pieces of text that validation's first "
                                "data.val_tokens came from are not trained on): give more text, set data.val_files, "
                                "or use fewer processes")
            pos = {"epoch": pos["epoch"] + 1, "rows": None, "skip": 0}

    def _epoch(self, rows: datasets.IterableDataset, epoch: int, state: dict | None, skip: int) -> Iterator[dict]:
        pending: deque[tuple[dict | None, int]] = deque()  # (state before, tokens) of batches not used up
        buf, off = np.zeros(0, np.int64), skip  # buf starts at pending[0]'s first token; off: tokens used
        for texts, ends, after in _batches(rows):
            ids = _encode(self.tok, texts, ends)
            pending.append((state, len(ids)))
            buf, state = np.concatenate([buf, ids]), after
            while len(buf) - off >= self.size:
                example = self.make(buf[off : off + self.size])
                off += self.stride
                while pending and off >= pending[0][1]:  # a batch used up: later positions start past it
                    off -= pending[0][1]
                    buf = buf[pending.popleft()[1]:]
                anchor = pending[0][0] if pending else state
                yield {**example, "position": {"epoch": epoch, "rows": anchor, "skip": off}}


def with_positions(collate: Callable[[list[dict]], dict] | None) -> Callable[[list[dict]], dict]:
    """A collator for streamed examples: the batch also carries the position after its last example."""
    inner = collate or torch.utils.data.default_collate

    def run(examples: list[dict]) -> dict:
        position = [e.pop("position") for e in examples][-1]
        return {**inner(examples), "position": position}

    return run


def _head(tok: Tokenizer, sources: list[dict], column: str, limit: int) -> tuple[np.ndarray, dict[str, int]]:
    """The first `limit` tokens of the sources, and how many whole pieces of each source they came from."""
    parts, held, n = [], {}, 0
    for source in sources:
        for text, end in pieces(source, column):
            parts.append(_encode(tok, [text], [end]))
            held[str(source["index"])] = held.get(str(source["index"]), 0) + 1
            n += len(parts[-1])
            if n >= limit:
                return np.concatenate(parts)[:limit], held
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), held


@dataclass
class Streamed:
    """cfg's pretraining text to stream: the validation tokens (in memory) and this process's training rows."""

    tokenizer: Tokenizer
    val: np.ndarray
    rows: Callable[[], datasets.IterableDataset]

    def blocks(self, size: int, stride: int, make: Callable[[np.ndarray], dict]) -> StreamedBlocks:
        return StreamedBlocks(self.rows, self.tokenizer, size, stride, make)


def open_stream(cfg: Config, tok: Tokenizer, process: tuple[int, int] | None = None) -> Streamed:
    """The streamed text of cfg, this process's share: process = (rank, number of processes), by default those
    of the distributed run (if any)."""
    sources = {split: [{**s, "index": i} for i, s in enumerate(found)] for split, found in list_sources(cfg).items()}
    column = cfg.data.text_column
    val, held = _head(tok, sources.get("val", sources["train"]), column, cfg.data.val_tokens)
    if "val" in sources:
        held = {}  # validation has its own files: training reads all of its own
    rank, world = process or this_process()

    def rows() -> datasets.IterableDataset:
        ds = datasets.IterableDataset.from_generator(
            _rows, gen_kwargs={"sources": sources["train"], "column": column, "held": held})
        return split_dataset_by_node(ds, rank, world) if world > 1 else ds

    return Streamed(tok, val, rows)
