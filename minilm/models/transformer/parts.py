"""The Transformer's swappable parts, each chosen by name from a small registry: the norm layer
(model.norm_type), the MLP (model.mlp) and the position scheme (model.position). A new part (RMSNorm, a gated
MLP, rotary positions) is one class taking the model config, and one entry in its registry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from minilm.models.transformer.config import TransformerConfig


class LayerNorm(nn.LayerNorm):
    """Normalize over the width, then scale (and shift, with model.bias)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


class StandardMLP(nn.Module):
    """fc -> GELU (exact, or GPT-2's tanh approximation) -> proj -> dropout, as GPT-2 and BERT have it."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=cfg.bias)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The original Transformer's fixed position encodings: sin on even, cos on odd channels."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (n_pos, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table  # (n_pos, dim)


class Positions:
    """What a position scheme does: absolute schemes add a vector per position to the token embeddings (`embed`);
    relative ones (rotary) would turn each layer's queries and keys instead (`rotate`). Each does nothing unless
    the scheme overrides it."""

    def embed(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """(B or 1, T) positions -> (B or 1, T, C) added to the token embeddings, or None."""
        return None

    def rotate(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention's q (B, nh, T, hs) and k (B, nh, T, hs) at these positions, as attention reads them."""
        return q, k

    def table(self) -> torch.Tensor | None:
        """The absolute positions as a (block_size, C) table (what a learned-table export writes), or None."""
        return None

    def init_weights(self, cfg: TransformerConfig) -> None:
        """Anything the scheme initializes after the stack's own init."""


class LearnedPositions(nn.Embedding, Positions):
    """A learned vector per position, block_size of them (GPT-2, BERT)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg.block_size, cfg.n_embd)

    def embed(self, position_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(position_ids)

    def table(self) -> torch.Tensor:
        return self.weight

    def init_weights(self, cfg: TransformerConfig) -> None:
        if cfg.position_init == "sinusoidal":
            table = sinusoidal_table(cfg.block_size, cfg.n_embd)  # (block_size, C), rms 1/sqrt(2)
            with torch.no_grad():  # same rms as the token embeddings (std 0.02)
                self.weight.copy_(table * (0.02 / table.pow(2).mean().sqrt()))


class SinusoidalPositions(nn.Module, Positions):
    """The original Transformer's fixed sin/cos table: nothing to learn, nothing saved."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.register_buffer("fixed", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)

    def embed(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.fixed[position_ids]

    def table(self) -> torch.Tensor:
        return self.fixed


NORMS: dict[str, Callable[[TransformerConfig], nn.Module]] = {"layernorm": LayerNorm}
MLPS: dict[str, Callable[[TransformerConfig], nn.Module]] = {"standard": StandardMLP}
POSITIONS: dict[str, Callable[[TransformerConfig], Positions]] = {"learned": LearnedPositions,
                                                                  "sinusoidal": SinusoidalPositions}


def make_norm(cfg: TransformerConfig) -> nn.Module:
    return NORMS[cfg.norm_type](cfg)
