"""What every task's data shares: the no-loss label, a seeded per-epoch order, and dynamic padding."""

from __future__ import annotations

import numpy as np
import torch

IGNORE = -100  # label value that carries no loss (PyTorch's cross_entropy ignore_index default)


class Shuffled(torch.utils.data.Dataset):
    """A seeded new order each epoch; the same (seed, epoch) always gives the same order, so resume is exact."""

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
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)  # (B, T)
    seg, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        cols = slice(T - n, T) if left else slice(0, n)
        ids[i, cols] = torch.as_tensor(e["input_ids"])
        if "segment_ids" in e:
            seg[i, cols] = torch.as_tensor(e["segment_ids"])
        mask[i, cols] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "segment_ids" in examples[0]:
        batch["segment_ids"] = seg
    return batch


def this_process() -> tuple[int, int]:
    """(rank, number of processes) of the distributed run, or (0, 1)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
