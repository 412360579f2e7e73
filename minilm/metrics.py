"""Metrics: classification (accuracy, F1, macro-F1, Matthews correlation, per label) from label ids, spans (chunks,
entities) of B-/I-/E-/S- label sequences as conlleval counts them, and sequence and token error rates of decoded
sequences (grapheme-to-phoneme conversion's word and phoneme error rates)."""

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


def per_label(m: np.ndarray) -> list[tuple[float, float, float, int]]:
    """(precision, recall, F1, support) of each label, from a confusion matrix (row = true label)."""
    tp = np.diag(m).astype(np.float64)
    predicted, true = m.sum(0), m.sum(1)
    return [(tp[i] / predicted[i] if predicted[i] else 0.0, tp[i] / true[i] if true[i] else 0.0,
             _f1(tp[i], predicted[i] - tp[i], true[i] - tp[i]), int(true[i])) for i in range(len(m))]


def format_per_label(m: np.ndarray, labels: list[str]) -> str:
    first = max(5, *(len(x) for x in labels)) + 1
    rows = [f"{'label'.ljust(first)}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}"]
    rows += [f"{name.ljust(first)}{p:>10.4f}{r:>8.4f}{f:>8.4f}{n:>9}" for name, (p, r, f, n) in zip(labels, per_label(m))]
    return "\n".join(rows)


def format_labels(m: np.ndarray, labels: list[str]) -> str:
    """The per-label table, and the confusion matrix where it fits a screen (up to 12 labels)."""
    shown = format_per_label(m, labels)
    return shown + ("\nconfusion matrix:\n" + format_confusion(m, labels) if len(labels) <= 12 else "")


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


# conlleval's chunk boundaries: a chunk of type X is B-X I-X ... (E-X), or S-X alone; an I-X or E-X that does not
# continue a chunk of type X starts one (IOB1 and sloppy BIO are read as conlleval reads them)
def _tag_type(label: str) -> tuple[str, str]:
    tag, _, kind = label.partition("-")
    return (tag, kind) if kind else ("O", "") if label == "O" else (label, "")


def _ends(prev: str, tag: str, prev_kind: str, kind: str) -> bool:
    return (prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O"))
            or (prev != "O" and prev_kind != kind))


def _starts(prev: str, tag: str, prev_kind: str, kind: str) -> bool:
    return (tag in ("B", "S") or (tag in ("I", "E") and prev in ("E", "S", "O"))
            or (tag != "O" and prev_kind != kind))


def chunks(labels: list[str]) -> set[tuple[int, int, str]]:
    """The spans (first, last, type) of one sentence's labels, as conlleval finds them."""
    found, start, prev, prev_kind = set(), None, "O", ""
    for i, label in enumerate(labels + ["O"]):  # the sentence's end closes an open chunk
        tag, kind = _tag_type(label)
        if start is not None and _ends(prev, tag, prev_kind, kind):
            found.add((start, i - 1, prev_kind))
            start = None
        if _starts(prev, tag, prev_kind, kind):
            start = i
        prev, prev_kind = tag, kind
    return found


def is_chunk_scheme(labels: list[str]) -> bool:
    """Every label is O or B-/I-/E-/S- with a type (BIO, IOB1, BIOES): labels of spans."""
    return any(x != "O" for x in labels) and all(
        x == "O" or (x[:2] in ("B-", "I-", "E-", "S-") and len(x) > 2) for x in labels)


def span_counts(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, int]:
    """Spans right (same first, last and type), predicted and gold, over sentences."""
    right = guessed = true = 0
    for p, g in zip(predicted, gold, strict=True):
        cp, cg = chunks(p), chunks(g)
        right, guessed, true = right + len(cp & cg), guessed + len(cp), true + len(cg)
    return {"right": right, "predicted": guessed, "gold": true}


def span_metrics(counts: dict[str, int]) -> dict[str, float]:
    """span_precision, span_recall, span_f1 (conlleval's, as fractions) from span_counts."""
    p = counts["right"] / counts["predicted"] if counts["predicted"] else 0.0
    r = counts["right"] / counts["gold"] if counts["gold"] else 0.0
    return {"span_precision": p, "span_recall": r, "span_f1": 2 * p * r / (p + r) if p + r else 0.0}
