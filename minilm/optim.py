"""AdamW parameter groups and the learning-rate schedule (a pure function of the step, so resume is exact)."""

from __future__ import annotations

import math

import torch

from minilm.config import TrainConfig


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """Fused AdamW with weight decay on matrices and embeddings only (p.dim() >= 2), never on biases or norms.

    The fused kernel (CPU and GPU) is the fastest, and it can skip a step on the device (`skip_step_if`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True)


def skip_step_if(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Make the next optimizer.step() a no-op when `found_inf` (a 0-d float tensor) is nonzero, decided on the
    device without a host sync: weights, moments and step counts stay as they were.

    This is the hook torch's GradScaler uses: the fused Adam/AdamW kernels read `found_inf` from the
    optimizer object. tests/test_optim.py fails if a torch release stops honouring it.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    if not (isinstance(inner, torch.optim.Adam | torch.optim.AdamW) and inner.defaults.get("fused")):
        raise TypeError(f"skip_step_if needs a fused Adam/AdamW optimizer, not {type(inner).__name__}")
    inner.found_inf = found_inf


def lr_at(step: int, tc: TrainConfig, total_steps: int | None = None) -> float:
    """Linear warmup to tc.lr, then cosine decay to tc.min_lr at the last step."""
    total = total_steps or tc.max_steps
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total - tc.warmup_steps))
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)
