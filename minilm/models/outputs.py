"""The contract between every family's task models and the rest of minilm: what a task model returns
(`TaskOutput`, with evaluation `Sums`), the settings its head takes from outside the model section (`HeadConfig`),
and the losses and pooling that heads of all families share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from minilm.config import Config
from minilm.data.batch import IGNORE


@dataclass
class Sums:
    """One evaluation metric as per-example sums and counts: its value is sum(total) / sum(count) over the set."""

    total: torch.Tensor  # (B,)
    count: torch.Tensor  # (B,)


class CarriedState(Protocol):
    """What a family carries from one block of a sequence to the next (a recurrent stack's hidden states): truncated
    BPTT detaches it between blocks and saves it with each checkpoint; beam search reorders its rows."""

    def detach(self) -> CarriedState: ...

    def reorder(self, rows: torch.Tensor) -> CarriedState: ...

    def tensors(self) -> dict[str, torch.Tensor]: ...


@dataclass
class TaskOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    metrics: dict[str, Sums] = field(default_factory=dict)  # evaluation only
    # evaluation of classifiers and taggers: (predictions, targets) of the same shape; targets equal to IGNORE
    # (the no-loss label) are left out of the metrics
    predictions: tuple[torch.Tensor, torch.Tensor] | None = None
    state: CarriedState | None = None  # the state the sequence ended in, where the family carries one


@dataclass(frozen=True)
class HeadConfig:
    """What a task model's head takes from the task's sections of the config rather than the model's."""

    num_labels: int = 0  # classifiers and taggers: the number of labels
    pooling: str | None = None  # classifiers: what the head reads (classify.pooling); None: the model's default
    classifier_dropout: float = 0.1
    label_smoothing: float = 0.0  # the LM and seq2seq training loss

    @classmethod
    def of(cls, cfg: Config) -> HeadConfig:
        if cfg.train.task == "tag":  # a label per word: the tagging section's labels and dropout
            return cls(len(cfg.tag.labels), None, cfg.tag.dropout, cfg.train.label_smoothing)
        return cls(len(cfg.classify.labels), cfg.classify.pooling, cfg.classify.dropout, cfg.train.label_smoothing)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, training: bool,
            accuracy: bool = False) -> TaskOutput:
    """Mean cross-entropy over labelled positions (label-smoothed in training); for evaluation the plain
    cross-entropy as per-example sums and counts, and with `accuracy` the share of tokens predicted right."""
    flat = logits.reshape(-1, logits.size(-1)).float()  # (N, vocab)
    if training:
        return TaskOutput(logits, F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE,
                                                  label_smoothing=label_smoothing))
    per_token = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="none").view(labels.shape)
    count = (labels != IGNORE).sum(-1)  # (B,)
    loss = per_token.sum() / count.sum().clamp(min=1)
    out = TaskOutput(logits, loss, {"loss": Sums(per_token.sum(-1), count)})
    if accuracy:
        right = (logits.argmax(-1) == labels) & (labels != IGNORE)  # (B, T)
        out.metrics["token_acc"] = Sums(right.sum(-1).float(), count)
    return out


def classification_output(logits: torch.Tensor, labels: torch.Tensor | None, training: bool) -> TaskOutput:
    """Cross-entropy over the labels; for evaluation also per-example losses and the predictions."""
    if labels is None:
        return TaskOutput(logits)
    per_example = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    out = TaskOutput(logits, per_example.mean())
    if not training:
        out.metrics["loss"] = Sums(per_example, torch.ones_like(per_example))
        out.predictions = (logits.argmax(-1), labels)
    return out


def token_classification_output(logits: torch.Tensor, labels: torch.Tensor | None, training: bool) -> TaskOutput:
    """A label per token (B, T, labels): cross-entropy over the labelled tokens (IGNORE elsewhere), as lm_loss
    computes it; for evaluation also the predictions at every position."""
    if labels is None:
        return TaskOutput(logits)
    out = lm_loss(logits, labels, 0.0, training)
    if not training:
        out.predictions = (logits.argmax(-1), labels)  # (B, T) each
    return out


def pool(h: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """mean or max over the real tokens, (B, T, W) -> (B, W)."""
    mask = (attention_mask if attention_mask is not None else h.new_ones(h.shape[:2])).to(h.dtype)[..., None]
    if how == "max":
        return h.masked_fill(mask == 0, float("-inf")).amax(1)
    return (h * mask).sum(1) / mask.sum(1).clamp(min=1)
