"""`python -m bench.recurrent`: time of one recurrent layer, forward + backward, at each shape asked for
(default 32 x 128 x 256 and 32 x 512 x 512, batch x length x width): the lecture's SRU (2017) with its compiled
loop, with the pure-torch path and with its projections through nn.Linear instead of oneDNN, the 2018 SRU,
torch's LSTM and GRU, and "a simple LSTM" (nn.LSTMCell stepped in a Python loop, the lecture's comparison).
Interleaved, median of the timed repetitions; prints markdown."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from minilm.models.recurrent import sru
from minilm.models.recurrent.model import RecurrentLayer


def _median_ms(fns: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        order = list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]  # interleaved, alternating first
        for name, fn in order:
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


class SimpleLSTM(nn.Module):
    """The lecture's "simple LSTM implementation": one nn.LSTMCell called once per step from Python."""

    def __init__(self, width: int):
        super().__init__()
        self.cell = nn.LSTMCell(width, width)

    def forward(self, x: torch.Tensor, lengths: None, state: None) -> tuple[torch.Tensor, None]:
        h = c = x.new_zeros(x.size(0), self.cell.hidden_size)
        hs = []
        for t in range(x.size(1)):
            h, c = self.cell(x[:, t], (h, c))
            hs.append(h)
        return torch.stack(hs, 1), None  # (B, T, H)


def _with(variable: str, fn: Callable[[], None]) -> Callable[[], None]:
    """fn with the environment variable set to 1 (sru reads MINILM_NO_EXTENSIONS and MINILM_NO_ONEDNN on every
    call)."""
    def run() -> None:
        os.environ[variable] = "1"
        try:
            fn()
        finally:
            del os.environ[variable]
    return run


def layers(batch: int, length: int, width: int, repeats: int, warmup: int,
           device: torch.device) -> dict[str, float]:
    """ms per forward + backward of one layer of each kind on (batch, length, width) inputs."""
    torch.manual_seed(0)
    x = torch.randn(batch, length, width, device=device)

    def step(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            inp = x.clone().requires_grad_(True)
            out, _ = layer(inp, None, None)
            out.sum().backward()
        return run

    sru_2017 = step(RecurrentLayer("sru", width, width, False, 2017).to(device))
    fns = {"SRU (2017), compiled loop": sru_2017, "SRU (2017), pure torch": _with(sru.NO_EXTENSIONS, sru_2017),
           "SRU (2017), compiled loop, projections by nn.Linear": _with(sru.NO_ONEDNN, sru_2017),
           "SRU (2018)": step(RecurrentLayer("sru", width, width, False, 2018).to(device)),
           "LSTM (torch)": step(RecurrentLayer("lstm", width, width, False).to(device)),
           "GRU (torch)": step(RecurrentLayer("gru", width, width, False).to(device)),
           "simple LSTM (LSTMCell loop)": step(SimpleLSTM(width).to(device))}
    if device.type != "cpu" or sru.kernel() is None:
        for name in ("SRU (2017), compiled loop", "SRU (2017), compiled loop, projections by nn.Linear"):
            del fns[name]  # the compiled loop is for the CPU (where it could be built)
    return _median_ms(fns, repeats, warmup)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recurrent", description=__doc__)
    p.add_argument("--shapes", nargs="+", default=["32x128x256", "32x512x512"], help="batch x length x width")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sru.kernel()  # built (or loaded) before any timing
    for shape in args.shapes:
        batch, length, width = (int(n) for n in shape.split("x"))
        print(f"\nOne layer, forward + backward (batch {batch}, length {length}, width {width}, {args.device}, "
              f"{torch.get_num_threads()} threads, median of {args.repeats} after {args.warmup} warm-up, "
              "interleaved):\n")
        print("| layer | ms | speed vs torch LSTM | vs simple LSTM |\n|---|---:|---:|---:|")
        ms = layers(batch, length, width, args.repeats, args.warmup, device)
        lstm, simple = ms["LSTM (torch)"], ms["simple LSTM (LSTMCell loop)"]
        for name, t in ms.items():
            print(f"| {name} | {t:.1f} | {lstm / t:.2f}x | {simple / t:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
