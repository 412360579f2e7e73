"""Task models: small heads over the shared Transformer stack, each returning logits and its own loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.config import ModelConfig
from minilm.model import KVCache, Transformer

IGNORE = -100  # label value that carries no loss


@dataclass
class TaskOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # per-batch extras to log (sums and counts)


class CausalLM(nn.Module):
    """GPT: the stack with causal attention and an LM head tied to the token embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False) -> TaskOutput:
        h = self.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        if last_only:  # generation needs only the next-token distribution
            h = h[:, -1:]  # (B, 1, C)
        logits = F.linear(h, self.transformer.tok_emb.weight)  # (B, T, vocab), weights tied to the embedding
        if labels is None:
            return TaskOutput(logits)
        return lm_loss(logits, labels, "loss", with_metrics=not self.training)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, name: str, with_metrics: bool) -> TaskOutput:
    """Mean cross-entropy over labelled positions; for evaluation also per-example sums and counts."""
    flat = logits.reshape(-1, logits.size(-1)).float()  # (N, vocab)
    if not with_metrics:
        return TaskOutput(logits, F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE))
    per_token = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="none").view(labels.shape)
    count = (labels != IGNORE).sum(-1)  # (B,)
    loss = per_token.sum() / count.sum().clamp(min=1)
    return TaskOutput(logits, loss, {name: per_token.sum(-1), f"{name}_n": count})


def build_model(cfg: ModelConfig) -> nn.Module:
    """The task model a model config describes."""
    if cfg.causal:
        return CausalLM(cfg)
    raise NotImplementedError("bidirectional pretraining arrives with the BERT heads")
