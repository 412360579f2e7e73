"""`python -m bench.tree_depth [--data data/listops/test.tsv]`: the cost of depth for the tree family.

For batches of bracketed trees (in file order): the sequential steps a batch costs a tree model (its tallest
tree's height) against those a sequence model takes (its longest row, in tokens with the brackets, as padded),
and the training speed (forward + backward, examples/s) of level batching against composing one node at a time,
the two taking turns (AB BA ...) so that a drift in the machine's speed affects both alike. The weights are
untrained: the speed does not depend on them."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minilm.data.trees import binary_brackets
from minilm.models.tree.config import TreeConfig
from minilm.models.tree.model import TreeNet, schedule


def _batches(path: str, batch: int, column: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Right-padded (ids, mask) batches of the file's trees (0 and 1 the brackets) and the vocabulary size."""
    vocab = {"(": 0, ")": 1}
    lines = [line.split("\t") for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]
    rows = [[vocab.setdefault(t, len(vocab)) for t in binary_brackets(cells[column]).split()]
            for cells in lines if cells[column].strip() != "expression"]  # the header of data/prepare.py's tables
    out = []
    for first in range(0, len(rows), batch):
        part = rows[first:first + batch]
        ids = torch.ones(len(part), max(map(len, part)), dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(part):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        out.append((ids, mask))
    return out, len(vocab)


def _examples_per_s(net: TreeNet, ids: torch.Tensor, mask: torch.Tensor, node_by_node: bool) -> float:
    start = time.perf_counter()
    net(ids, mask, node_by_node=node_by_node).sum().backward()
    return len(ids) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tree_depth", description=__doc__)
    p.add_argument("--data", default="data/listops/test.tsv", help="a TSV of bracketed trees")
    p.add_argument("--column", type=int, default=1, help="the trees' column (0-based)")
    p.add_argument("--arch", default="tree_lstm")
    p.add_argument("--width", type=int, default=128, help="n_embd and the node state's width")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--timed", type=int, default=4, help="batches timed each way (the first ones)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches, vocab = _batches(args.data, args.batch, args.column)
    heights = [len(schedule(ids, mask, 0, 1).sizes) - 1 for ids, mask in batches]
    lengths = [ids.size(1) for ids, _ in batches]
    print(f"{len(batches)} batches of {args.batch} from {args.data}: sequential steps per batch, mean (max)")
    print(f"  tree model (tallest tree):        {statistics.mean(heights):8.1f} ({max(heights)})")
    print(f"  sequence model (longest row):     {statistics.mean(lengths):8.1f} ({max(lengths)})")
    torch.manual_seed(0)
    net = TreeNet(TreeConfig(arch=args.arch, vocab_size=vocab, n_embd=args.width, open_id=0, close_id=1))
    rates: dict[bool, list[float]] = {False: [], True: []}
    for i, (ids, mask) in enumerate(batches[:args.timed]):
        for node_by_node in ((False, True) if i % 2 == 0 else (True, False)):
            rates[node_by_node].append(_examples_per_s(net, ids, mask, node_by_node))
    level, node = (statistics.median(rates[k]) for k in (False, True))
    print(f"training speed, {args.arch} {args.width} wide, median of {len(rates[False])} batches (forward + backward):")
    print(f"  level by level:   {level:10.1f} examples/s")
    print(f"  node by node:     {node:10.1f} examples/s   (level batching {level / node:.1f}x)")


if __name__ == "__main__":
    main()
