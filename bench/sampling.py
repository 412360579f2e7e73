"""`python -m bench.sampling RUN [RUN ...]`: sampling speed of trained language-model runs of any family, in new
tokens per second at batch 1 and 8, each with its own cache (a Transformer's keys and values, a recurrent stack's
state). The runs take turns (AB BA ...) in one process, so a drift in the machine's speed affects all alike."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minilm.generate import generate
from minilm.models import count_params
from minilm.run import load_run


def _tokens_per_s(model: torch.nn.Module, batch: int, new: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, model.cfg.vocab_size, (batch, 16), generator=gen)
    start = time.perf_counter()
    n = sum(1 for _ in generate(model, prompt, new, temperature=1.0, top_k=50, eot=None, generator=gen))
    return batch * n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sampling", description=__doc__)
    p.add_argument("runs", nargs="+", help="run directories of causal_lm runs")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {run: load_run(run)[1] for run in args.runs}
    print(f"| run | model | parameters | " + " | ".join(f"batch {b} tok/s" for b in args.batches) + " |")
    print("|---|---|---:|" + "---:|" * len(args.batches))
    rates = {(run, b): [] for run in models for b in args.batches}
    for b in args.batches:
        for run, model in models.items():  # warm-up
            _tokens_per_s(model, b, 16, 0)
        for r in range(args.repeats):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for run in order:
                rates[run, b].append(_tokens_per_s(models[run], b, args.new_tokens, r))
    for run, model in models.items():
        cells = " | ".join(f"{statistics.median(rates[run, b]):,.0f}" for b in args.batches)
        print(f"| {run} | {model.cfg.describe()} | {count_params(model) / 1e6:.2f}M | {cells} |")


if __name__ == "__main__":
    main()
