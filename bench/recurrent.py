"""`python -m bench.recurrent`: step time (forward + backward) of minilm's recurrent layers at one width and
sequence length (SRU vs LSTM vs GRU vs Elman RNN), and of the ways to run SRU's element-wise recurrence
(a plain loop, TorchScript, torch.compile of one step, torch.compile of the whole loop). Interleaved, median
of the timed repetitions; prints markdown."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from minilm.models.recurrent.model import RecurrentLayer, sru_recurrence


def _median_ms(fns: dict, repeats: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        order = list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]  # interleaved, alternating first
        for name, fn in order:
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def layers(batch: int, length: int, width: int, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """ms per forward + backward of one layer of each kind on (batch, length, width) inputs."""
    torch.manual_seed(0)
    x = torch.randn(batch, length, width, device=device)

    def step(layer):
        def run():
            inp = x.clone().requires_grad_(True)
            out, _ = layer(inp, None, None)
            out.sum().backward()
        return run

    fns = {arch: step(RecurrentLayer(arch, width, width, False).to(device)) for arch in ("sru", "lstm", "gru", "rnn")}
    return _median_ms(fns, repeats, warmup)


def recurrences(batch: int, length: int, width: int, repeats: int, warmup: int, whole: bool) -> dict[str, float]:
    """ms per forward + backward of SRU's element-wise recurrence alone, run four ways."""
    warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent torch

    def one_step(x_t, f_t, r_t, hw_t, v_f, v_r, c, keep_t):
        f, r = torch.sigmoid(f_t + v_f * c), torch.sigmoid(r_t + v_r * c)
        c = torch.where(keep_t > 0, f * c + (1 - f) * x_t, c)
        return r * c + (1 - r) * hw_t, c

    compiled_step = torch.compile(one_step, dynamic=False)

    def stepped(x, f_in, r_in, hw, v_f, v_r, c, keep):
        hs = []
        for t in range(x.size(0)):
            h, c = compiled_step(x[t], f_in[t], r_in[t], hw[t], v_f, v_r, c, keep[t])
            hs.append(h)
        return torch.stack(hs), c

    ways = {"plain loop (minilm)": sru_recurrence, "TorchScript": torch.jit.script(sru_recurrence),
            "torch.compile of one step": stepped}
    if whole:
        ways["torch.compile of the whole loop"] = torch.compile(sru_recurrence, dynamic=False)

    def run(fn):
        def go():
            xs = [torch.randn(length, batch, width, requires_grad=True) for _ in range(4)]
            v = [torch.randn(width, requires_grad=True) for _ in range(2)]
            h, c = fn(*xs, *v, torch.zeros(batch, width), torch.ones(length, batch, 1))
            (h.sum() + c.sum()).backward()
        return go

    return _median_ms({name: run(fn) for name, fn in ways.items()}, repeats, warmup)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recurrent", description=__doc__)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--whole-loop", action="store_true",
                   help="also torch.compile the whole recurrence (compiles for minutes at length 128)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = f"batch {args.batch}, length {args.length}, width {args.width}"
    print(f"One layer, forward + backward ({shape}, {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} after {args.warmup} warm-up, interleaved):\n")
    print("| layer | ms per step | speed vs LSTM |\n|---|---:|---:|")
    ms = layers(args.batch, args.length, args.width, args.repeats, args.warmup, device)
    for name, t in ms.items():
        print(f"| {name} | {t:.1f} | {ms['lstm'] / t:.2f}x |")
    if args.device == "cpu":
        print(f"\nSRU's element-wise recurrence alone, forward + backward ({shape}):\n")
        print("| implementation | ms | vs plain loop |\n|---|---:|---:|")
        ms = recurrences(args.batch, args.length, args.width, args.repeats, args.warmup, args.whole_loop)
        base = ms["plain loop (minilm)"]
        for name, t in ms.items():
            print(f"| {name} | {t:.1f} | {base / t:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
