"""`python -m bench.finetune`: the README's fine-tuning results table, measured.

Fine-tunes every task config (SST-2, MRPC, TREC-6) from three starting points: bert-mini from scratch, a
bert-mini pretrained by minilm, and a GPT pretrained by minilm. Each run is a real `minilm finetune` in its
own process; the table reports the last epoch's evaluation (no checkpoint selection on the evaluation
data) and the wall time of the whole command, data preparation included. A run directory that already
holds a finished run is read, not trained again, so an interrupted table can be completed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

TASKS = {  # task: (config, what the table reports)
    "sst2": ("configs/finetune-sst2.yaml", ("accuracy",)),
    "mrpc": ("configs/finetune-mrpc.yaml", ("f1", "accuracy")),
    "trec": ("configs/finetune-trec.yaml", ("accuracy",)),
}


def _last_eval(run: Path) -> dict | None:
    """The last evaluation in a run's metrics.jsonl, or None."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    evals = [json.loads(x) for x in lines if x.strip() and '"val"' in x]
    return evals[-1] if evals else None


def run_one(task: str, start: str, init_from: str | None, root: Path, extra: list[str]) -> tuple[dict, float, str]:
    config, _ = TASKS[task]
    out = root / f"{start}-{task}"
    args = ["minilm", "finetune", config, f"train.out_dir={out}", *([f"model.init_from={init_from}"] if init_from else []),
            *extra]
    command = shlex.join(args)
    timing = out / "wall_seconds.txt"  # written only once the command has succeeded
    if timing.exists() and (done := _last_eval(out)) is not None:
        return done, float(timing.read_text()), command
    print(f"running: {command}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if subprocess.run(args, stdout=subprocess.DEVNULL).returncode:  # minilm has printed why, in one line
        raise SystemExit(f"failed: {command}")
    wall = time.perf_counter() - t0
    timing.write_text(f"{wall:.1f}\n")
    result = _last_eval(out)
    if result is None:
        raise SystemExit(f"{out}: the run finished without a final evaluation")
    return result, wall, command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--bert", default="runs/bert-mini-gutenberg", help="a minilm BERT run to start from")
    p.add_argument("--gpt", default="runs/gpt-mini-gutenberg", help="a minilm GPT run to start from")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    p.add_argument("--starts", default="scratch,bert,gpt", help="comma-separated, from scratch,bert,gpt")
    p.add_argument("--root", default="runs/finetune", help="where the run directories go")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    starts = {"scratch": None, "bert": args.bert, "gpt": args.gpt}
    tasks, chosen = args.tasks.split(","), args.starts.split(",")
    if unknown := sorted({*tasks} - TASKS.keys()) + sorted({*chosen} - starts.keys()):
        p.error(f"unknown task or start {', '.join(unknown)}: choose tasks from {','.join(TASKS)} and starts "
                "from scratch,bert,gpt")
    starts = {k: starts[k] for k in chosen}
    rows = []
    for task in tasks:
        for start, init_from in starts.items():
            result, wall, command = run_one(task, start, init_from, Path(args.root), args.overrides)
            shown = " / ".join(f"{100 * result['val_' + m]:.1f}" for m in TASKS[task][1])
            rows.append(f"| {task} ({' / '.join(TASKS[task][1])}) | {start} | {shown} | {wall:.0f} s | `{command}` |")
    print("| task (metric) | start | result | wall | command |\n|---|---|---:|---:|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
