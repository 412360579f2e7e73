"""The arithmetic a run trains in: train.mixed_precision, and what `auto` picks where.

`auto` decides from what the machine and the model are, not from a timed probe (a probe costs start-up time on
every run and is noisy on a shared machine): bf16 autocast on a GPU that has it; on a CPU, bf16 autocast only
where the CPU has bf16 arithmetic (Intel AMX: `amx_bf16` among its flags, where oneDNN runs bf16 products on the
tile units; or AVX-512 BF16: `avx512_bf16`) and the model is a Transformer at least BF16_MIN_WIDTH wide. Measured
on an AMX CPU (a Sapphire Rapids Xeon, 2 threads): a GPT 6 x 384 training step 2.06x faster in bf16, 4 x 256
1.61x, the default 3 x 128 character model no faster (its whole run 15 % slower). On an AMD EPYC with AVX-512 BF16
(`avx512_bf16`, no AMX): a 4 x 256 GPT training step 1.96x, bert-mini 1.88x, the 3 x 128 model's run 1.10x.
Without either (AVX2 CPUs) bf16 autocast is far slower than fp32.
Weights and optimizer state stay fp32 either way (autocast), so checkpoints do not change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from minilm.config import Config
from minilm.errors import ConfigError

BF16_MIN_WIDTH = 256  # the narrowest Transformer measured faster in bf16 on an AMX CPU (4 x 256: 1.61x)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def model_width(cfg: Config) -> int | None:
    """The Transformer's width: the model section's, or model.init_from's (its config.json), None if unknown."""
    if not cfg.model.init_from:
        return getattr(cfg.model, "n_embd", None)
    try:
        raw = json.loads((Path(cfg.model.init_from) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(raw.get("model"), dict):  # a minilm run
        return raw["model"].get("n_embd") if raw["model"].get("arch", "transformer") == "transformer" else None
    return raw.get("hidden_size") or raw.get("n_embd")  # a transformers BERT / GPT-2 folder


def choose(cfg: Config) -> tuple[str, str]:
    """(the mixed_precision accelerate gets: "no", "bf16" or "fp16", why in words) for train.mixed_precision."""
    asked = cfg.train.mixed_precision
    if asked != "auto":
        return asked, f"train.mixed_precision={asked}"
    cpu_only = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if torch.cuda.is_available() and not cpu_only:
        if torch.cuda.is_bf16_supported():
            return "bf16", "bf16 autocast: this GPU has bf16"
        return "no", "fp32: this GPU has no bf16"
    flags = cpu_flags()
    units = "AMX bf16 matrix units" if "amx_bf16" in flags else \
        "AVX-512 BF16 instructions" if "avx512_bf16" in flags else None
    if units is None:
        return "no", "fp32: this CPU has no bf16 arithmetic (AMX or AVX-512 BF16), and bf16 autocast is slower " \
                     "than fp32 without it"
    width = model_width(cfg)
    if cfg.model.arch != "transformer" and not cfg.model.init_from:
        return "no", f"fp32: bf16 autocast is measured to pay on this CPU for Transformers, not {cfg.model.arch} models"
    if width is None:
        return "no", "fp32: model.init_from's width is unknown here (bf16 autocast is chosen for known widths only)"
    if width < BF16_MIN_WIDTH:
        return "no", f"fp32: the model is {width} wide, and bf16 autocast pays on a CPU from {BF16_MIN_WIDTH} wide"
    return "bf16", f"bf16 autocast: this CPU has {units} and the model is {width} wide"


def resumed(cfg: Config, started: str | None, chosen: tuple[str, str]) -> tuple[str, str]:
    """A resumed run keeps the precision it started in (`started`, from its progress.json; None for a run saved
    before it was recorded): `auto` takes it, another explicit one is refused."""
    if started is None or started == chosen[0]:
        return chosen
    if cfg.train.mixed_precision == "auto":
        return started, f"{'fp32' if started == 'no' else started}, as the run started"
    raise ConfigError(f"this run started with mixed precision {started!r} and resumes exactly only in it: resume with "
                      f"train.mixed_precision=auto or {started}")
