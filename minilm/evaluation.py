"""Evaluation: run a task model over a loader and turn what its head reports into metrics.

A head reports `Sums` (per-example totals and counts, averaged over the whole set here) and, for classifiers,
(predictions, targets), which become accuracy, F1, macro-F1, MCC and a confusion matrix; targets equal to IGNORE
(a token that carries no label) are left out, so a task that labels every word reuses them, and where its labels
are spans (B-/I-/E-/S-) each sentence's labels are also scored as spans. Seq2seq runs are also
scored on what they decode (`decoded_metrics`), not only on the teacher-forced loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator

from minilm.data.seq2seq import References
from minilm.generate import translate
from minilm.data.batch import IGNORE
from minilm.models.outputs import TaskOutput
from minilm.metrics import (classification_metrics, confusion, error_rates, sequence_errors, span_counts,
                            span_metrics)


@dataclass
class Evaluation:
    metrics: dict[str, float]  # "val_"-prefixed, as logged
    confusion: np.ndarray | None = None  # classifiers: (num_labels, num_labels), row = true label


class Accumulator:
    """Sums over an evaluation, gathered across processes (accelerate drops the samples repeated to even out
    the last batch)."""

    def __init__(self, accelerator: Accelerator, spans: list[str] | None = None):
        self.accelerator, self.spans = accelerator, spans
        self.totals: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.num_labels = 0  # the classes predictions are counted over: the width of the head's logits
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []  # spans: each sentence's labelled predictions, targets

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather_for_metrics(t.detach())

    def add(self, out: TaskOutput) -> None:
        for name, s in out.metrics.items():
            self.totals[name] = self.totals.get(name, 0.0) + self._gather(s.total).float().sum().item()
            self.counts[name] = self.counts.get(name, 0.0) + self._gather(s.count).float().sum().item()
        if out.predictions is not None:
            preds, targets = out.predictions
            if preds.dim() == 2 and self.accelerator.num_processes > 1:  # per token: lengths differ by process
                preds = self.accelerator.pad_across_processes(preds, dim=1)
                targets = self.accelerator.pad_across_processes(targets, dim=1, pad_index=IGNORE)
            preds, targets = self._gather(preds).cpu(), self._gather(targets).cpu()
            if self.spans is not None:
                for p, t in zip(preds.numpy(), targets.numpy()):
                    self.rows.append((p[t != IGNORE], t[t != IGNORE]))
            preds, targets = preds.flatten(), targets.flatten()
            labelled = targets != IGNORE
            self.preds.append(preds[labelled])
            self.targets.append(targets[labelled])
            self.num_labels = out.logits.size(-1)

    def result(self, perplexity: bool) -> Evaluation:
        values = {k: self.totals[k] / max(self.counts[k], 1.0) for k in self.totals}
        matrix = None
        if self.preds:
            preds, targets = torch.cat(self.preds).numpy(), torch.cat(self.targets).numpy()
            values.update(classification_metrics(preds, targets, self.num_labels))
            matrix = confusion(preds, targets, self.num_labels)
        if self.spans is not None:
            names = lambda ids: [self.spans[i] for i in ids]  # noqa: E731
            values.update(span_metrics(span_counts([names(p) for p, _ in self.rows], [names(t) for _, t in self.rows])))
        if perplexity and "loss" in values:
            values["ppl"] = math.exp(min(values["loss"], 50.0))
        return Evaluation({f"val_{k}": v for k, v in values.items()}, matrix)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator, max_batches: int = 0,
             perplexity: bool = False, spans: list[str] | None = None) -> Evaluation:
    """Metrics over `loader` (its first `max_batches` batches when that is > 0); the model is left in train mode.

    perplexity: also report exp(loss), for language models whose loss is a mean over tokens.
    spans: the label names, to score each example's labels as spans (chunks, entities) too.
    """
    model.eval()
    acc = Accumulator(accelerator, spans)
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        acc.add(model(**batch))
    model.train()
    return acc.result(perplexity)


def decoded_metrics(model: torch.nn.Module, refs: References, accelerator: Accelerator, limit: int = 0,
                    beams: int = 1, length_penalty: float = 1.0, batch_size: int = 64,
                    progress: bool = False) -> dict[str, float]:
    """val_seq_error and val_token_error of decoding the first `limit` sources of `refs` (0: all), greedily or by
    beam search; each process decodes its share. The model's train/eval mode is kept."""
    model = accelerator.unwrap_model(model)
    training = model.training
    model.eval()
    n = min(limit, len(refs.sources)) if limit else len(refs.sources)
    mine = range(accelerator.process_index, n, accelerator.num_processes)
    outputs = translate(model, [refs.sources[i] for i in mine], refs.end, beams, length_penalty, batch_size,
                        progress=progress and accelerator.is_main_process)
    sums = sequence_errors(outputs, [refs.targets[i] for i in mine])
    keys = list(sums)
    totals = torch.tensor([float(sums[k]) for k in keys], device=accelerator.device)
    totals = accelerator.reduce(totals, "sum") if accelerator.num_processes > 1 else totals
    model.train(training)
    return {f"val_{k}": v for k, v in error_rates(dict(zip(keys, totals.tolist()))).items()}
