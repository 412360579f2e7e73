"""`python -m bench.checkpointing`: what activation checkpointing saves in memory and costs in speed.

Trains the same GPT for a few steps with `train.gradient_checkpointing` off and on, each in a fresh process
(peak memory is a per-process high-water mark), and prints tokens/s and peak memory: on a GPU
`torch.cuda.max_memory_allocated`, on a CPU the growth of the resident set over the training steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _measure(checkpointing: bool, device: str, steps: int, layers: int, width: int, block: int, batch: int) -> dict:
    """One setting, in this process: median tokens/s of the timed steps and the peak memory in MiB."""
    from minilm.config import TrainConfig
    from minilm.models import family_of
    from minilm.models.transformer.config import TransformerConfig
    from minilm.models.transformer.heads import CausalLM
    from minilm.optim import make_optimizer

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=8192, block_size=block, n_layer=layers, n_head=width // 64, n_embd=width)
    model = CausalLM(cfg).to(device).train()
    if checkpointing:
        family_of(cfg).checkpointing(model)
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(cfg.vocab_size, (batch, block + 1), device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    rates = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(x[:, :-1], labels=x[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(batch * block / (time.perf_counter() - t0))
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    timed = sorted(rates[1:])  # the first step allocates everything
    return {"tok_s": timed[len(timed) // 2], "peak_mib": peak}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checkpointing", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = dict(device=args.device, steps=args.steps, layers=args.layers, width=args.width, block=args.block,
                 batch=args.batch)
    if args.child:
        print(json.dumps(_measure(args.child == "on", **shape)))
        return 0
    results = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, "-m", "bench.checkpointing", *(sys.argv[1:] if argv is None else argv), "--child", setting]
        results[setting] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    memory = "peak GPU memory allocated" if args.device == "cuda" else "resident-set growth over the steps"
    print(f"GPT {args.layers} layers x {args.width} wide, block {args.block}, batch {args.batch}, vocab 8192, "
          f"{args.device}, median of {args.steps - 1} steps after one warm-up; memory = {memory}\n")
    print("| gradient checkpointing | tokens/s | peak memory |\n|---|---:|---:|")
    for setting, r in results.items():
        print(f"| {setting} | {r['tok_s']:,.0f} | {r['peak_mib']:,.0f} MiB |")
    off, on = results["off"], results["on"]
    print(f"\ncheckpointing: {on['tok_s'] / off['tok_s']:.2f}x the speed, {on['peak_mib'] / off['peak_mib']:.2f}x "
          f"the memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
