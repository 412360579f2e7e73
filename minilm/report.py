"""What a run reports: metrics.jsonl, throughput and MFU, peak memory, the loss-curve PNG, and which experiment
trackers (wandb, TensorBoard) get it."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from minilm.config import Config, ModelConfig
from minilm.errors import ConfigError
from minilm.runfiles import atomic_write

# Dense bf16/fp16 tensor-core peaks in FLOP/s, matched against torch.cuda.get_device_name().
GPU_PEAK_FLOPS = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("A10G", 125e12), ("A10", 125e12), ("L40S", 362e12), ("L4", 121e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def device_peak_flops() -> float | None:
    """The current GPU's dense half-precision peak, or None (CPU, unknown GPU): MFU is then not reported."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in GPU_PEAK_FLOPS if key in name), None)


def training_flops(cfg: ModelConfig, n_params: int, lengths: torch.Tensor) -> torch.Tensor:
    """Training FLOPs (forward + backward) of sequences of these real lengths T_i: per token, 6N for the
    weights plus 12 * L * C * T_i for attention over its own sequence (PaLM, appendix B). Padding is not
    model work, so it does not count."""
    lengths = lengths.double()  # (B,)
    return ((6 * n_params + 12 * cfg.n_layer * cfg.n_embd * lengths) * lengths).sum()


def peak_memory_mb() -> float:
    """Peak GPU memory allocated, or the process's peak resident set on CPU, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def read(self) -> list[dict]:
        """The records; a line cut short by a crash mid-write is left out."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def rewind(self, step: int) -> None:
        """On resume: drop what was logged after the checkpoint at `step` (those steps run again)."""
        if self.enabled and self.path.is_file():
            kept = "".join(json.dumps(r) + "\n" for r in self.read() if r.get("step", 0) <= step)
            atomic_write(self.path, lambda tmp: tmp.write_text(kept, encoding="utf-8"))


def plot_losses(records: list[dict], path: Path) -> None:
    """Training and validation loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train"]
    key = next((k for k in ("val_loss", "val_mlm_loss") if any(k in r for r in records)), "val_loss")
    val = [(r["step"], r[key]) for r in records if r.get("split") == "val" and key in r]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def trackers(cfg: Config) -> list[str]:
    """The experiment trackers the log section asks for, through accelerate."""
    names = ["wandb"] if cfg.log.wandb != "disabled" else []
    if cfg.log.tensorboard:
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("log.tensorboard=true needs the tensorboard package: pip install tensorboard (or "
                              "minilm[tensorboard]), or set log.tensorboard=false")
        names.append("tensorboard")
    return names


def flat_config(cfg: Config) -> dict[str, int | float | str | bool]:
    """The config as "section.key" -> value (lists as text): what every tracker can store as hyperparameters."""
    return {f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
            for section, values in cfg.to_dict().items() for key, value in values.items()}
