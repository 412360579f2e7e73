"""Causal-LM data: a token stream (prepared shards, or text streamed while training) -> fixed-length blocks
with next-token labels."""

from __future__ import annotations

import numpy as np
import torch

from minilm.config import Config
from minilm.data.prepared import Prepared, TokenStream
from minilm.data.streaming import StreamedBlocks, Streamed
from minilm.errors import DataError


class PackedBlocks(torch.utils.data.Dataset):
    """A token stream cut into blocks of `block_size` inputs with next-token labels.

    With `shuffle`, each epoch starts the cut at a new seeded offset and visits blocks in a seeded
    order, so a run sees varied windows yet any (epoch, index) pair is reproducible for resume. The
    stream may be a memory-mapped TokenStream: a block is read only when it is asked for.
    """

    def __init__(self, tokens: np.ndarray | TokenStream, block_size: int, shuffle: bool = False, seed: int = 0):
        span = block_size if shuffle else 0  # room kept for the random offset
        n = (len(tokens) - 1 - span) // block_size
        if n < 1:
            raise DataError(
                f"the text has {len(tokens)} tokens, fewer than one block of {block_size + 1 + span}: "
                "use more data or a smaller model.block_size"
            )
        self.tokens = tokens if isinstance(tokens, TokenStream) else TokenStream([tokens])
        self.block_size, self.shuffle, self.seed, self.n = block_size, shuffle, seed, n
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            self.offset = int(rng.integers(self.block_size))
            self.order = torch.from_numpy(rng.permutation(self.n))
        else:
            self.offset, self.order = 0, torch.arange(self.n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = self.offset + int(self.order[i]) * self.block_size
        return lm_example(self.tokens[start : start + self.block_size + 1])


class ContiguousLanes(torch.utils.data.Dataset):
    """Truncated BPTT order: the stream cut into `lanes * processes` contiguous lanes; this process reads lanes
    rank * lanes ... (rank + 1) * lanes - 1, item i being block i // lanes of lane i % lanes, so that batches of
    `lanes` items in order continue each lane where the previous batch stopped. Every epoch walks them again
    from the start."""

    def __init__(self, tokens: TokenStream, block_size: int, lanes: int, rank: int = 0, processes: int = 1):
        self.tokens, self.block_size, self.lanes = tokens, block_size, lanes
        self.lane_len = len(tokens) // (lanes * processes)
        self.steps = (self.lane_len - 1) // block_size
        if self.steps < 1:
            raise DataError(f"the text has {len(tokens)} tokens, too few for {lanes * processes} lanes of at least "
                            f"{block_size + 1} (train.tbptt): use more data, or a smaller train.batch_size or "
                            "model.block_size")
        self.first_lane = rank * lanes

    def set_epoch(self, epoch: int) -> None:
        pass  # the same walk every epoch

    def __len__(self) -> int:
        return self.steps * self.lanes

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step, lane = divmod(i, self.lanes)
        start = (self.first_lane + lane) * self.lane_len + step * self.block_size
        return lm_example(self.tokens[start : start + self.block_size + 1])


def lm_example(chunk: np.ndarray) -> dict[str, torch.Tensor]:
    """block_size + 1 tokens -> the inputs and their next tokens."""
    chunk = torch.from_numpy(chunk.astype(np.int64))
    return {"input_ids": chunk[:-1], "labels": chunk[1:]}


def split_stream(cfg: Config, data: Prepared) -> tuple[TokenStream, TokenStream]:
    """Training and validation streams: the val split, or the held-out last data.val_fraction of the training
    stream (as nanoGPT holds out tiny Shakespeare's tail); validation capped at data.val_tokens."""
    train = data.stream("train")
    if "val" in data.splits():
        val = data.stream("val")
    else:
        cut = int(len(train) * (1 - cfg.data.val_fraction))
        train, val = train.window(0, cut), train.window(cut, len(train))
    return train, val.head(cfg.data.val_tokens)


def build_lm_datasets(cfg: Config, data: Prepared,
                      process: tuple[int, int] = (0, 1)) -> tuple[PackedBlocks | ContiguousLanes, PackedBlocks]:
    """Shuffled blocks, or with train.tbptt this process's contiguous lanes (process = (rank, processes))."""
    train, val = split_stream(cfg, data)
    bs = cfg.model.block_size
    if cfg.train.tbptt:
        return ContiguousLanes(train, bs, cfg.train.batch_size, *process), PackedBlocks(val, bs)
    return PackedBlocks(train, bs, shuffle=True, seed=cfg.train.seed), PackedBlocks(val, bs)


def build_streamed_lm_datasets(cfg: Config, data: Streamed) -> tuple[StreamedBlocks, PackedBlocks]:
    """Blocks read in stream order (no shuffling: shuffle the files' documents beforehand if they are sorted)."""
    bs = cfg.model.block_size
    return data.blocks(bs + 1, bs, lm_example), PackedBlocks(data.val, bs)
