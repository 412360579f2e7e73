"""`python -m bench.data`: pretraining data at size. Prepare throughput beside a nanoGPT-style baseline, peak
memory of prepare and of training processes, time to the first step (cold and warm), disk per token.

Corpora of the given sizes are built (not committed) from copies of the shipped Gutenberg training novels.
Both sides tokenize with the same byte-level BPE (8,192 ids, trained once on the start of the corpus):
  minilm    `minilm prepare` (pieces of ~256 KB, encode_batch_fast, uint16 shards, manifest), in a child process
  baseline  each file read whole, its lines in ~1 MB pieces, the same encode_batch, appended to one uint16
            file (nanoGPT's prepare.py without the datasets step), in a child process
Training is `configs/gpt-mini-gutenberg.yaml` for a few steps on the corpus; "cold" prepares first, "warm"
reuses the prepared shards; `--streaming-only` trains with data.streaming=true instead (nothing prepared). Peak memory is each child's own maximum resident set (getrusage).
"""

from __future__ import annotations

import os

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
    os.environ.setdefault(_key, _value)

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT / "data" / "gutenberg" / "train"
CONFIG = ROOT / "configs" / "gpt-mini-gutenberg.yaml"


def build_corpus(folder: Path, megabytes: int) -> int:
    """Copies of the training novels, one file each, until the folder holds `megabytes` MB; returns bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    books = sorted(BOOKS.glob("*.txt"))
    total, i = 0, 0
    while total < megabytes * 1_000_000:
        book = books[i % len(books)]
        target = folder / f"{i // len(books):04d}-{book.name}"
        shutil.copyfile(book, target)
        total += target.stat().st_size
        i += 1
    return total


def run_child(args: list[str], watch: Path | None = None) -> tuple[float, float, float | None, str]:
    """(wall seconds, peak MiB of the largest process in the child's tree, seconds until `watch` holds a line,
    output) of a command."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "true"})
        first = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if watch is not None and first is None and watch.is_file() and watch.stat().st_size:
                first = time.perf_counter() - start
            time.sleep(0.05)
        wall = time.perf_counter() - start
        log.seek(0)
        out = log.read()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"bench.data: {' '.join(args[:4])} ... failed (exit {code}):\n{out[-2000:]}")
    return wall, usage.ru_maxrss / 1024, first, out  # Linux reports KiB


BASELINE = r"""
import sys, numpy as np
from pathlib import Path
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1]); eot = tok.token_to_id("<|endoftext|>")
files = sorted(Path(sys.argv[2]).glob("*.txt"))
import time; started = time.perf_counter()
with open(sys.argv[3], "wb") as out:
    batch, size = [], 0
    def flush():
        global batch, size
        encs = tok.encode_batch([t for t, _ in batch], add_special_tokens=False)
        out.write(np.concatenate([np.asarray(e.ids + ([eot] if end else []), np.uint16)
                                  for e, (_, end) in zip(encs, batch)]).tobytes())
        batch, size = [], 0
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        for i in range(0, len(lines), 20000):
            piece = "".join(lines[i:i + 20000])
            batch.append((piece, i + 20000 >= len(lines))); size += len(piece)
            if size >= 1 << 23:
                flush()
    if batch:
        flush()
print(f"tokenized in {time.perf_counter() - started:.3f} s")
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000", help="corpus sizes in MB, comma-separated")
    p.add_argument("--steps", type=int, default=3, help="training steps per timed run")
    p.add_argument("--two-processes", action="store_true", help="also train with two CPU processes on the largest")
    p.add_argument("--workdir", default=None, help="where corpora and runs go (default: a temporary folder)")
    p.add_argument("--streaming-only", action="store_true", help="only train with data.streaming=true (nothing "
                   "prepared): time to the first step and peak memory at each size")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="minilm-bench-data-"))
    py = sys.executable
    rows = []
    for mb in [int(s) for s in args.sizes.split(",")]:
        corpus = work / f"corpus-{mb}"
        nbytes = build_corpus(corpus, mb)
        common = [f"data.train_files=[{corpus}]", f"data.prepared_dir={work / f'prepared-{mb}'}"]
        # the tokenizer once (on tokenizer.sample_bytes of the corpus), then the timed tokenization with it
        tok_dir = work / f"tok-{mb}"
        t_tok, _, _, _ = run_child([py, "-m", "minilm.cli", "prepare", str(CONFIG), f"data.train_files=[{BOOKS}]",
                                    f"data.prepared_dir={tok_dir}"])
        tokfile = tok_dir / "tokenizer.json"
        timed = [*common, f"tokenizer.path={tokfile}", "data.val_files=[]"]  # the corpus alone, as the baseline
        train_args = [py, "-m", "minilm.cli", "train", str(CONFIG), *timed, f"train.max_steps={args.steps}",
                      f"train.eval_interval={args.steps}", "log.log_interval=1", "data.val_tokens=16384"]
        if args.streaming_only:
            run = work / f"run-{mb}-streaming"
            shutil.rmtree(run, ignore_errors=True)
            _, peak, first, _ = run_child([*train_args, "data.streaming=true", f"train.out_dir={run}"],
                                          watch=run / "metrics.jsonl")
            print(f"| {nbytes / 1e6:,.0f} MB streamed | first step {first:.1f} s | training peak {peak:,.0f} MiB |",
                  flush=True)
            continue
        # the work itself, as each side times it (process start-up, mostly imports, is left out)
        _, peak_b, _, out = run_child([py, "-c", BASELINE, str(tokfile), str(corpus), str(work / "baseline.bin")])
        wall_b = float(re.search(r"tokenized in ([\d.]+) s", out).group(1))
        shutil.rmtree(work / f"prepared-{mb}", ignore_errors=True)
        _, peak_m, _, out = run_child([py, "-m", "minilm.cli", "prepare", str(CONFIG), *timed])
        wall_m = float(re.search(r"tokenized in ([\d.]+) s", out).group(1))
        manifest = json.loads((work / f"prepared-{mb}" / "manifest.json").read_text())
        tokens = sum(s["tokens"] for shards in manifest["splits"].values() for s in shards)
        disk = sum(f.stat().st_size for f in (work / f"prepared-{mb}").iterdir() if f.suffix in (".bin", ".docs"))
        runs = {}
        for label in ("cold", "warm"):
            if label == "cold":
                shutil.rmtree(work / f"prepared-{mb}")
            run = work / f"run-{mb}-{label}"
            shutil.rmtree(run, ignore_errors=True)
            runs[label] = run_child([*train_args, f"train.out_dir={run}"], watch=run / "metrics.jsonl")
        row = {"MB": mb, "bytes": nbytes, "tokens": tokens, "baseline_s": wall_b, "prepare_s": wall_m,
               "speed_vs_baseline": wall_b / wall_m, "prepare_MBps": nbytes / 1e6 / wall_m,
               "prepare_peak_MiB": peak_m, "baseline_peak_MiB": peak_b, "disk_bytes_per_token": disk / tokens,
               "tokenizer_s": t_tok, "first_step_cold_s": runs["cold"][2], "first_step_warm_s": runs["warm"][2],
               "train_peak_MiB": runs["warm"][1]}
        if args.two_processes and mb == max(int(s) for s in args.sizes.split(",")):
            run = work / f"run-{mb}-2proc"
            shutil.rmtree(run, ignore_errors=True)
            two = [py, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu-2proc.yaml",
                   "--main_process_port", "29533", "train.py", str(CONFIG), *timed, f"train.out_dir={run}",
                   f"train.max_steps={args.steps}", f"train.eval_interval={args.steps}", "log.log_interval=1",
                   "data.val_tokens=16384", "train.batch_size=16"]
            os.environ["ACCELERATE_USE_CPU"] = "1"
            row["two_proc_peak_MiB"] = run_child(two, watch=run / "metrics.jsonl")[1]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| corpus | tokens | prepare (minilm / baseline) | speed vs baseline | prepare peak | training peak | "
          "first step cold / warm | disk per token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['bytes'] / 1e6:,.0f} MB | {r['tokens'] / 1e6:,.1f}M | {r['prepare_s']:.1f} s / {r['baseline_s']:.1f} s "
              f"({r['prepare_MBps']:.1f} MB/s) | {r['speed_vs_baseline']:.2f}x | {r['prepare_peak_MiB']:,.0f} MiB | "
              f"{r['train_peak_MiB']:,.0f} MiB{' (2 procs: %.0f MiB each at most)' % r['two_proc_peak_MiB'] if 'two_proc_peak_MiB' in r else ''} | "
              f"{r['first_step_cold_s']:.1f} s / {r['first_step_warm_s']:.1f} s | {r['disk_bytes_per_token']:.2f} B |")
    print(f"(work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
