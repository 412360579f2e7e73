"""What every workload shares: settings, the interleaved timer, the optimizer, the loss check, the report."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from minilm.config import TrainConfig
from minilm.optim import make_optimizer

LOSS_TOLERANCE = 1e-4  # |loss_minilm - loss_reference| allowed on the first batch with matched weights


@dataclass
class Settings:
    """How every workload runs; the model sizes live with each workload (they differ for --quick)."""

    device: torch.device
    repeats: int = 5  # timed repetitions per implementation; the reported figure is their median
    warmup: int = 2  # untimed repetitions per implementation first (allocator, kernels, caches)
    steps: int = 3  # optimizer steps per repetition (training workloads)
    quick: bool = False  # tiny models and few tokens: a smoke test, not a measurement
    compile: bool = False  # torch.compile both sides' forward
    profile: int = 0  # > 0: after timing, profile one more repetition per side and keep its top ops
    seed: int = 0
    bf16: bool | None = None  # bf16 autocast on both sides; None: on a GPU only (how minilm trains by default)
    profiles: list[str] = field(default_factory=list)  # rendered profiles, in workload order

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def use_bf16(self) -> bool:
        return self.cuda if self.bf16 is None else self.bf16

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.use_bf16 else "fp32"


@dataclass
class Result:
    workload: str
    ours: list[float]  # tokens/s of each timed repetition, minilm
    ref: list[float]  # the same for the reference (transformers)
    loss_ours: float  # first-batch loss with matched weights (fp32), minilm
    loss_ref: float
    setup: str  # one line: model size, batch, what is counted
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.ref)


def autocast(s: Settings):
    """bf16 autocast where the settings ask for it (by default on a GPU only), else plain fp32."""
    return torch.autocast(s.device.type, dtype=torch.bfloat16) if s.use_bf16 else nullcontext()


def sync(s: Settings) -> None:
    """GPU work is asynchronous: wait for it before reading the clock."""
    if s.cuda:
        torch.cuda.synchronize(s.device)


def prepared(s: Settings, *models: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """On the device, in train mode, and compiled in place when asked (both sides alike)."""
    for m in models:
        m.to(s.device).train()
        if s.compile:
            m.compile()
    return models


def adamw(model: torch.nn.Module, lr: float = 1e-3) -> torch.optim.AdamW:
    """The same AdamW for both sides, minilm's own: fused (as transformers' Trainer defaults to,
    "adamw_torch_fused" from torch 2.8), decay on matrices and embeddings only. Tied weights appear once in
    model.parameters(), so both sides update the same number of tensors.
    """
    return make_optimizer(model, TrainConfig(lr=lr, min_lr=0.0))


def train_runner(s: Settings, model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[dict],
                 loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
                 count: Callable[[dict], int]) -> Callable[[], int]:
    """One repetition = one forward + backward + AdamW step per batch; returns the tokens it processed."""

    def run() -> int:
        tokens = 0
        for batch in batches:
            with autocast(s):
                loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += count(batch)
        return tokens

    return run


def check_same_loss(workload: str, ours: float, ref: float) -> None:
    """Refuse to time two models that do not compute the same function: the comparison would be meaningless."""
    if not abs(ours - ref) <= LOSS_TOLERANCE:
        raise AssertionError(f"{workload}: first-batch loss differs with matched weights: minilm {ours:.6f}, "
                             f"reference {ref:.6f} (tolerance {LOSS_TOLERANCE})")


@contextmanager
def _no_gc() -> Iterator[None]:
    """Keep Python's cyclic GC from firing inside a timed repetition."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def time_interleaved(s: Settings, ours: Callable[[], int], ref: Callable[[], int],
                     workload: str) -> tuple[list[float], list[float]]:
    """Tokens/s of each timed repetition of both sides.

    Repetitions alternate between the sides and the side that goes first alternates too (AB BA AB ...), so
    slow drift of the machine (thermal state, a neighbour's load) falls on both alike.
    """
    rates: dict[str, list[float]] = {"ours": [], "ref": []}
    sides = [("ours", ours), ("ref", ref)]
    for i in range(s.warmup + s.repeats):
        for name, fn in sides if i % 2 == 0 else sides[::-1]:
            sync(s)
            with _no_gc():
                start = time.perf_counter()
                tokens = fn()
                sync(s)
                elapsed = time.perf_counter() - start
            if i >= s.warmup:
                rates[name].append(tokens / elapsed)
    if s.profile:
        for name, fn in sides:
            side = "minilm" if name == "ours" else "reference"
            s.profiles.append(f"{workload}, {side}:\n{_profile(s, fn)}")
    return rates["ours"], rates["ref"]


def _profile(s: Settings, fn: Callable[[], int]) -> str:
    """Top operators of one repetition by self time: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.cuda else [])
    with profile(activities=activities) as prof:
        fn()
        sync(s)
    key = "self_cuda_time_total" if s.cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=s.profile, max_name_column_width=40)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(s: Settings) -> list[str]:
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.cuda.get_device_name(s.device) if s.cuda else "cpu"
    return [
        f"- CPU: {_cpu_model()}, {cores} cores available ({os.cpu_count()} online), "
        f"torch threads {torch.get_num_threads()}",
        f"- device: {device}, precision: {s.precision}" + (", torch.compile on both sides of the training workloads" if s.compile else ""),
        f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        f"- median of {s.repeats} timed repetitions after {s.warmup} warm-up, minilm and reference interleaved"
        + (" (--quick: tiny models, a smoke test, not a measurement)" if s.quick else ""),
    ]


def _rate(x: float) -> str:
    return f"{x:,.0f} tok/s"


def render(s: Settings, results: list[Result]) -> str:
    """The markdown report: the table, then each workload's setup and spread, then the machine."""
    lines = ["| workload | minilm | reference | ratio | weights matched (first-batch loss, minilm / reference) |",
             "|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.workload} | {_rate(statistics.median(r.ours))} | {_rate(statistics.median(r.ref))} | "
                     f"{r.ratio:.2f}x | yes: {r.loss_ours:.5f} / {r.loss_ref:.5f} "
                     f"(Δ {abs(r.loss_ours - r.loss_ref):.1e}) |")
    lines += ["", "ratio = minilm / reference tokens per second (> 1: minilm faster).", ""]
    for r in results:
        spread = (f"minilm {min(r.ours):,.0f}–{max(r.ours):,.0f}, "
                  f"reference {min(r.ref):,.0f}–{max(r.ref):,.0f} tok/s over the timed repetitions")
        lines.append(f"- **{r.workload}**: {r.setup}; {spread}")
        lines += [f"  - {n}" for n in r.notes]
    lines += ["", "Machine:", *machine_lines(s)]
    if s.profiles:
        lines += ["", f"Profiles (one repetition per side, top {s.profile} operators by self time):", "```",
                  *s.profiles, "```"]
    return "\n".join(lines)
