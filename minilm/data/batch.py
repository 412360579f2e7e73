"""What every task's data shares: the no-loss label, a seeded per-epoch order, and dynamic padding."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE = -100  # label value that carries no loss (PyTorch's cross_entropy ignore_index default)


class Shuffled(torch.utils.data.Dataset):
    """A seeded new order each epoch; the same (seed, epoch) always gives the same order, so resume is exact.

    Not accelerate's seedable sampler: it seeds epoch e with seed + e, so runs whose seeds differ by k see the same
    orders k epochs apart; numpy's SeedSequence([seed, epoch]) keeps every (seed, epoch) apart, and the orders the
    measured results came from."""

    def __init__(self, data: torch.utils.data.Dataset, seed: int):
        self.data, self.seed = data, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return self.data[int(self.order[i])]


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
