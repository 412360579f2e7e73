"""`python -m bench.equal_time CONFIG[:OVERRIDE,...] ...`: models at equal wall time (the README's recurrent and
ListOps tables). Each config first trains probes (60 steps each): `--probe-rounds` rounds, one probe of every
config per round, so that a machine whose speed drifts slows every config alike; a config's steps/s is the median
over its probes (each over its logged steps after the first window). That x the budget sets train.max_steps, so
that its cosine schedule ends at the budget; then the real runs, one after another, each evaluated at the end (or
`--evals` times, evenly: a learning curve against the run's wall time). A run's result depends on its steps, not
on its speed, so only the probes need the CPU to themselves."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _train(config: str, overrides: list[str], out_dir: Path) -> float:
    """Run `minilm train` in a fresh process; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minilm.cli", "train", config, f"train.out_dir={out_dir}", *overrides],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.equal_time", description=__doc__)
    p.add_argument("configs", nargs="+", help="CONFIG or CONFIG:key=value,key=value")
    p.add_argument("--seconds", type=float, default=240.0, help="the training budget of each model")
    p.add_argument("--out", default=None, help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--probe-steps", type=int, default=60, help="steps of each probe that measures steps/s")
    p.add_argument("--probe-rounds", type=int, default=3, help="probes of each config, interleaved (median)")
    p.add_argument("--evals", type=int, default=1, help="evaluations over each run (the last at its end)")
    p.add_argument("--metric", default="val_loss", help="the validation metric to show (default val_loss)")
    args = p.parse_args(argv)
    if args.probe_rounds < 1 or args.probe_steps < 3:
        p.error("--probe-rounds must be at least 1 and --probe-steps at least 3 (a probe logs three windows)")
    root = Path(args.out or tempfile.mkdtemp(prefix="equal-time-"))
    print(f"| config | steps/s (probe) | steps | wall s | {args.metric} |\n|---|---:|---:|---:|---:|", flush=True)
    specs = []  # (config, overrides)
    for spec in args.configs:
        config, _, extra = spec.partition(":")
        specs.append((config, [o for o in extra.split(",") if o]))
    rates: list[list[float]] = [[] for _ in specs]
    n = args.probe_steps
    for r in range(args.probe_rounds):  # interleaved: every config once per round
        for i, (config, overrides) in enumerate(specs):
            probe = root / f"{i}-probe-{r}"
            _train(config, [*overrides, f"train.max_steps={n}", f"train.eval_interval={n}", "train.eval_batches=1",
                            f"log.log_interval={max(n // 3, 1)}"], probe)
            logged = _records(probe, "train")  # three windows: the first holds the start-up
            rates[i].append((logged[-1]["step"] - logged[0]["step"]) / (logged[-1]["seconds"] - logged[0]["seconds"]))
    curves = []
    for i, ((config, overrides), spec) in enumerate(zip(specs, args.configs)):
        rate = statistics.median(rates[i])
        print(f"probes of {spec}: " + ", ".join(f"{x:.1f}" for x in rates[i]) + " steps/s", file=sys.stderr)
        steps = max(int(rate * args.seconds), n)
        run = root / f"{i}-run"
        interval = max(steps // max(args.evals, 1), 1)
        wall = _train(config, [*overrides, f"train.max_steps={steps}", f"train.eval_interval={interval}"], run)
        vals = _records(run, "val")
        print(f"| {spec} | {rate:.1f} | {steps:,} | {wall:.0f} | {vals[-1][args.metric]:.3f} |", flush=True)
        curves.append((spec, [(r["seconds"] / 60, r[args.metric]) for r in vals]))
    if args.evals > 1:
        print(f"\n{args.metric} against the run's minutes:")
        for spec, points in curves:
            print(f"- {spec}: " + ", ".join(f"{m:.1f} min {v:.3f}" for m, v in points))
    print(f"run directories in {root}")


if __name__ == "__main__":
    main()
