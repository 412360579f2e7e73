"""`python -m bench.longrun`: many thousands of small training steps; resident memory and steps/s over time.

A leak (a tensor kept per step, a growing log, a data-loader cache) shows as resident memory rising with
the step count; a slowdown as falling steps/s. The run trains a tiny character GPT on tiny Shakespeare with
the real loop (evaluations and checkpoints included) and prints a row per tenth of the run.
"""

from __future__ import annotations

import os

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
    os.environ.setdefault(_key, _value)

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """Current resident set size of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.longrun", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-growth-mib", type=float, default=50.0,
                   help="fail if resident memory grows more than this between the first and last tenth")
    args = p.parse_args(argv)

    import matplotlib.pyplot  # noqa: F401  (imported now: the loss plot at the end would look like growth)
    import torch

    from minilm.config import load_config
    from minilm.train import train

    torch.set_num_threads(args.threads)
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
    done = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append((time.perf_counter() - start, rss_mib()))

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cfg = load_config(str(ROOT / "configs" / "gpt-char-tiny.yaml"), [
            f"data.train_files={ROOT / 'data' / 'tinyshakespeare.txt'}", f"train.out_dir={run_dir}",
            "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "train.batch_size=8",
            f"train.max_steps={args.steps}", f"train.eval_interval={max(args.steps // 10, 1)}", "train.eval_batches=5",
            "log.log_interval=100", "train.warmup_steps=100",
        ])
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        train(cfg)
        done.set()
        thread.join()
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["split"] == "train"]
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    total = time.perf_counter() - start
    print(f"\n{args.steps} steps in {total:.0f} s; resident memory and speed by tenth of the run:")
    print(f"{'step':>7} {'steps/s':>8} {'RSS MiB':>8}")
    tenth = max(len(logged) // 10, 1)
    chunks = [logged[i : i + tenth] for i in range(0, len(logged), tenth)]
    rss_at = [rss for _, rss in samples]
    for n, chunk in enumerate(chunks):
        rate = sum(r["tokens_per_s"] for r in chunk) / len(chunk) / tokens_per_step
        rss = rss_at[min(len(rss_at) - 1, (n + 1) * len(rss_at) // len(chunks) - 1)] if rss_at else rss_mib()
        print(f"{chunk[-1]['step']:>7} {rate:>8.1f} {rss:>8.1f}")
    first = rss_at[len(rss_at) // 10] if rss_at else 0.0
    last = rss_at[-1] if rss_at else 0.0
    growth = last - first
    print(f"resident memory after the first tenth {first:.1f} MiB, at the end {last:.1f} MiB (growth {growth:+.1f} MiB)")
    ok = growth <= args.max_growth_mib
    print("PASS: memory flat" if ok else f"FAIL: memory grew more than {args.max_growth_mib} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
