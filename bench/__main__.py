"""`python -m bench`: run the workloads and print the markdown table."""

from __future__ import annotations

import os

# before transformers / huggingface_hub / wandb are imported: never touch the network
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
                     ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)

import argparse
import gc
import sys
import time
from collections.abc import Callable

import torch

from bench.common import Result, Settings

WORKLOADS = ("gpt-train", "gpt-sample", "bert-train", "s2s-greedy", "s2s-beam5")


def _runners() -> dict[str, Callable[[Settings], Result]]:
    from bench import bert, gpt, seq2seq

    return {"gpt-train": gpt.train, "gpt-sample": gpt.sample, "bert-train": bert.train,
            "s2s-greedy": seq2seq.greedy, "s2s-beam5": seq2seq.beam5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", default=",".join(WORKLOADS),
                   help=f"comma-separated workloads to run (default: all of {','.join(WORKLOADS)})")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per side (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions per side first (default 2; --quick 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per repetition in the training workloads (default 3; --quick 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="both sides alike: fp32, or bf16 autocast (weights fp32); auto: bf16 on cuda, fp32 on cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                   help="torch.compile both sides (auto: on a GPU only)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile one repetition per side and print its top N operators")
    p.add_argument("--quick", action="store_true", help="tiny models and few repetitions: a smoke test")
    args = p.parse_args(argv)
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(args.only) - set(WORKLOADS))
    if unknown or not args.only:
        p.error(f"--only: unknown workload(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(WORKLOADS)}")
    for name, quick, full in (("repeats", 2, 5), ("warmup", 1, 2), ("steps", 2, 3)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1:
        p.error("--repeats and --steps must be at least 1, --warmup at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # its notices would interleave with the table
    compile_ = args.compile == "yes" or (args.compile == "auto" and args.device == "cuda")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as minilm trains
    s = Settings(device=torch.device(args.device), repeats=args.repeats, warmup=args.warmup, steps=args.steps,
                 quick=args.quick, compile=compile_, profile=args.profile,
                 bf16=None if args.precision == "auto" else args.precision == "bf16")
    from bench.common import render

    runners = _runners()
    results = []
    for name in args.only:
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(runners[name](s))
        print(f"  {name} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        gc.collect()  # drop this workload's models before the next one
        if s.cuda:
            torch.cuda.empty_cache()
    print(render(s, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
