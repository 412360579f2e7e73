"""`python -m bench.equal_time CONFIG[:OVERRIDE,...] ...`: language models at equal wall time, the README's
recurrent table. Each config first trains a 60-step probe; its steps/s (from the last logged window) x the budget
sets train.max_steps, so that its cosine schedule ends at the budget; then the real run, one evaluation at the
end. One run at a time: nothing else should share the CPU."""

from __future__ import annotations

import argparse
import json
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
    args = p.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="equal-time-"))
    print("| config | steps/s (probe) | steps | wall s | validation loss |\n|---|---:|---:|---:|---:|", flush=True)
    for i, spec in enumerate(args.configs):
        config, _, extra = spec.partition(":")
        overrides = [o for o in extra.split(",") if o]
        probe = root / f"{i}-probe"
        _train(config, [*overrides, "train.max_steps=60", "train.eval_interval=60", "train.eval_batches=1",
                        "log.log_interval=20"], probe)
        rate = _records(probe, "train")[-1]["tokens_per_s"] / _batch_tokens(probe)
        steps = max(int(rate * args.seconds), 60)
        run = root / f"{i}-run"
        wall = _train(config, [*overrides, f"train.max_steps={steps}", f"train.eval_interval={steps}"], run)
        loss = _records(run, "val")[-1]["val_loss"]
        print(f"| {spec} | {rate:.1f} | {steps:,} | {wall:.0f} | {loss:.3f} |", flush=True)
    print(f"run directories in {root}")


def _batch_tokens(run: Path) -> int:
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    return cfg["train"]["batch_size"] * cfg["model"]["block_size"]


if __name__ == "__main__":
    main()
