"""Metrics: classification (accuracy, F1, macro-F1, Matthews correlation) from label ids, and sequence and token
error rates of decoded sequences (grapheme-to-phoneme conversion's word and phoneme error rates)."""

from __future__ import annotations

import math

import numpy as np


def confusion(preds: np.ndarray, targets: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: row = true label, column = predicted label."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (targets.astype(int), preds.astype(int)), 1)
    return m


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def classification_metrics(preds: np.ndarray, targets: np.ndarray, n: int) -> dict[str, float]:
    m = confusion(preds, targets, n).astype(np.float64)
    tp = np.diag(m)
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    total = m.sum()
    present = [i for i in range(n) if tp[i] + fp[i] + fn[i]]  # labels absent from both sides do not count
    out = {"accuracy": tp.sum() / total if total else 0.0,
           "macro_f1": float(np.mean([_f1(tp[i], fp[i], fn[i]) for i in present])) if present else 0.0}
    if n == 2:  # F1 of the positive class (label id 1), as GLUE reports for MRPC
        out["f1"] = _f1(tp[1], fp[1], fn[1])
    # Matthews correlation, multi-class form (Gorodkin 2004); equals the binary MCC for two classes
    t, p = m.sum(1), m.sum(0)
    denom = math.sqrt((total**2 - (p**2).sum()) * (total**2 - (t**2).sum()))
    out["mcc"] = float((tp.sum() * total - (t * p).sum()) / denom) if denom else 0.0
    return {k: float(v) for k, v in out.items()}


def format_confusion(m: np.ndarray, labels: list[str]) -> str:
    corner = "true \\ pred"
    first = max(len(corner), *(len(x) for x in labels)) + 1
    width = max(8, len(str(int(m.max(initial=0)))) + 1, *(len(x) + 1 for x in labels))
    head = corner.ljust(first) + "".join(x.rjust(width) for x in labels)
    rows = [labels[i].ljust(first) + "".join(str(v).rjust(width) for v in row) for i, row in enumerate(m)]
    return "\n".join([head, *rows])


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def sequence_errors(predicted: list[list], references: list[list[list]]) -> dict[str, int]:
    """Sums for decoded outputs, each scored against all the targets of its source: sources, wrong (matches none
    of them), edits (edit distance to the closest) and length (of that closest target). For grapheme-to-phoneme
    conversion, error_rates of these are the word and phoneme error rates."""
    wrong = edits = length = 0
    for guess, refs in zip(predicted, references, strict=True):
        dist, n = min((edit_distance(guess, r), len(r)) for r in refs)
        wrong += dist > 0
        edits += dist
        length += n
    return {"sources": len(references), "wrong": wrong, "edits": edits, "length": length}


def error_rates(sums: dict[str, float]) -> dict[str, float]:
    """seq_error (share of sources decoded wrong) and token_error (edits over target length) from sequence_errors'
    sums (added up over processes)."""
    return {"seq_error": sums["wrong"] / max(sums["sources"], 1), "token_error": sums["edits"] / max(sums["length"], 1)}
