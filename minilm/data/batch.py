"""What every task's data shares: the no-loss label, a seeded per-epoch order, and dynamic padding."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE = -100  # label value that carries no loss (PyTorch's cross_entropy ignore_index default)


class Reordered(torch.utils.data.Dataset):
    """`data` read in the order `self.order` (set by the subclass)."""

    def __init__(self, data: torch.utils.data.Dataset):
        self.data = data
        self.order = np.arange(len(data))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return self.data[int(self.order[i])]


class Shuffled(Reordered):
    """A seeded new order each epoch; the same (seed, epoch) always gives the same order, so resume is exact.

    Not accelerate's seedable sampler: it seeds epoch e with seed + e, so runs whose seeds differ by k see the same
    orders k epochs apart; numpy's SeedSequence([seed, epoch]) keeps every (seed, epoch) apart, and the orders the
    measured results came from.

    With `batch` > 0 the order is grouped by length (transformers' group_by_length, Trainer's sampler): the
    shuffled examples are sorted by length within windows of WINDOW batches, cut into batches of `batch`, and
    the batches shuffled, so a batch pads to a length close to its own examples' while the batches still come
    in a random order."""

    WINDOW = 64  # batches per sorted window: wide enough to find close lengths, narrow enough to stay random

    def __init__(self, data: torch.utils.data.Dataset, seed: int, batch: int = 0):
        super().__init__(data)
        self.seed, self.batch = seed, batch
        self.lengths = example_lengths(data) if batch else None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.data))
        self.order = grouped(order, self.lengths, self.batch, rng) if self.batch else order


def grouped(order: np.ndarray, lengths: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """`order` sorted by length (longest first) within windows of Shuffled.WINDOW batches, its whole batches
    then shuffled; a last part batch stays last (a loader with drop_last drops it)."""
    window = batch * Shuffled.WINDOW
    parts = [order[i:i + window] for i in range(0, len(order), window)]
    order = np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in parts])
    whole = len(order) // batch * batch
    batches = order[:whole].reshape(-1, batch)  # (batches, batch)
    return np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), order[whole:]])


def example_lengths(data: torch.utils.data.Dataset) -> np.ndarray:
    """Tokens per example: input_ids plus target_ids where an example has them (seq2seq)."""
    columns = getattr(data, "column_names", None)
    if columns is not None:  # a datasets.Dataset: read whole columns, not row by row
        return sum(np.fromiter((len(r) for r in data[c]), dtype=np.int64, count=len(data))
                   for c in ("input_ids", "target_ids") if c in columns)
    return np.array([len(e["input_ids"]) + len(e.get("target_ids", ())) for e in data], dtype=np.int64)


class ByLength(Reordered):
    """The examples longest first: a whole-set evaluation pads each batch to lengths close to its own (the order
    of the examples changes no metric)."""

    def __init__(self, data: torch.utils.data.Dataset):
        super().__init__(data)
        self.order = np.argsort(-example_lengths(data), kind="stable")


def pad_examples(examples: list[dict], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """input_ids (and segment_ids, if the examples have them) padded to the longest example, with the
    attention mask (1 = real token); padding goes on the right, or on the left."""
    side = "left" if left else "right"

    def pad(rows: list, value: int) -> torch.Tensor:
        return pad_sequence([torch.as_tensor(r, dtype=torch.long) for r in rows], batch_first=True,
                            padding_value=value, padding_side=side)  # (B, T)

    ids = [e["input_ids"] for e in examples]
    batch = {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(r) for r in ids], 0)}
    if "segment_ids" in examples[0]:
        batch["segment_ids"] = pad([e["segment_ids"] for e in examples], 0)
    return batch


def this_process() -> tuple[int, int]:
    """(rank, number of processes) of the distributed run, or (0, 1)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
