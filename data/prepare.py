"""Derive the table files minilm's fine-tuning configs read from the original files beside them.

    python data/prepare.py

TREC: `COARSE:fine question` lines (latin-1; one 0xF0 byte in the training file) -> trec/{train,test}.tsv
with columns label (coarse, 6 classes), fine_label, question.
RT polarity: rt-polarity.{pos,neg} (one snippet per line, no official split) -> rt_polarity/{train,test}.tsv
with columns sentence, label (1 = positive), split 90/10 by a shuffle seeded with 1234.
CMUdict: cmudict/cmudict.dict (`word PH1 PH2 ...`, alternates as `word(2)`, a few `# comments`) ->
cmudict/{train,valid,test}.tsv with columns word, phonemes (ARPAbet, stress digits removed: the 39 phonemes
grapheme-to-phoneme results are reported on), one row per pronunciation. Only words of letters and
apostrophes are kept. The split is by word, so that all pronunciations of a word land in one split: a word
goes to test if crc32("cmudict-split:" + word) % 100 < 5, to valid if < 10, else to train.
ListOps: listops/test_d20s.tsv (the published test set, `label \t expression`, no header) -> listops/test.tsv
with columns label, expression; and listops/{train,valid}.tsv generated from the same grammar (see
generate_listops), seeded, deduplicated against the test set and each other.
The outputs are committed; rerunning reproduces them byte for byte (`python data/prepare.py listops` writes only
ListOps', in a few seconds).
"""

import random
import re
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).parent


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(header) + "\n")
        for row in rows:
            fh.write("\t".join(cell.replace("\t", " ") for cell in row) + "\n")


def trec() -> None:
    for src, dst in (("train_5500.label", "train.tsv"), ("TREC_10.label", "test.tsv")):
        rows = []
        for line in (HERE / "trec" / src).read_text(encoding="latin-1").splitlines():
            if line.strip():
                label, question = line.split(" ", 1)
                coarse, _, fine = label.partition(":")
                rows.append([coarse, fine, question.strip()])
        write_tsv(HERE / "trec" / dst, ["label", "fine_label", "question"], rows)


def rt_polarity() -> None:
    rows = []
    for name, label in (("rt-polarity.neg", "0"), ("rt-polarity.pos", "1")):
        for line in (HERE / "rt_polarity" / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append([line.strip(), label])
    random.Random(1234).shuffle(rows)
    cut = int(len(rows) * 0.9)
    write_tsv(HERE / "rt_polarity" / "train.tsv", ["sentence", "label"], rows[:cut])
    write_tsv(HERE / "rt_polarity" / "test.tsv", ["sentence", "label"], rows[cut:])


def cmudict() -> None:
    prons: dict[str, list[str]] = {}
    for line in (HERE / "cmudict" / "cmudict.dict").read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].split()
        if not entry:
            continue
        word = re.sub(r"\(\d+\)$", "", entry[0])
        if re.fullmatch(r"[a-z][a-z']*", word):
            phones = " ".join(re.sub(r"\d", "", ph) for ph in entry[1:])
            if phones not in prons.setdefault(word, []):  # two stressings of one pronunciation are one here
                prons[word].append(phones)
    splits: dict[str, list[list[str]]] = {"train": [], "valid": [], "test": []}
    for word in sorted(prons):
        bucket = zlib.crc32(f"cmudict-split:{word}".encode()) % 100
        split = "test" if bucket < 5 else "valid" if bucket < 10 else "train"
        splits[split] += [[word, phones] for phones in prons[word]]
    for split, rows in splits.items():
        write_tsv(HERE / "cmudict" / f"{split}.tsv", ["word", "phonemes"], rows)


# ListOps (Nangia & Bowman 2018): a list is an operator over 2-5 arguments, each a digit (probability 0.75) or,
# below the depth limit, another list; its value is the operator applied to its arguments' values. Written as the
# published files write it: each list as a left-branching binary tree over its tokens, `[OP a1 ... ak ]` ->
# `( ( ... ( ( [OP a1 ) a2 ) ... ak ) ] )`, which is the gold parse a tree model follows.
def _median(values: list[int]) -> int:
    """The median, rounded down (of an even count: the mean of the middle two)."""
    s, n = sorted(values), len(values)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


LISTOPS_OPS = {"[MIN": min, "[MAX": max, "[MED": _median, "[SM": lambda values: sum(values) % 10}
LISTOPS_VALUE_P, LISTOPS_MAX_ARGS, LISTOPS_MAX_DEPTH = 0.75, 5, 20
# 90,000 training rows, as many as the published training file (which is not shipped): results compare with the
# paper's. 2,000 validation rows estimate accuracy to about +-1 % for choosing checkpoints while an evaluation
# stays a few seconds on a CPU.
LISTOPS_SIZES = {"train": 90_000, "valid": 2_000}


def listops_expression(rng: random.Random, depth: int = 1) -> tuple[str, int]:
    """(bracketed text, value) of a random argument at `depth`: a digit, or a list (always a list at depth 1, since
    a lone digit is no exercise)."""
    if depth > 1 and (depth >= LISTOPS_MAX_DEPTH or rng.random() < LISTOPS_VALUE_P):
        digit = rng.randrange(10)
        return str(digit), digit
    op = rng.choice(list(LISTOPS_OPS))
    args = [listops_expression(rng, depth + 1) for _ in range(rng.randint(2, LISTOPS_MAX_ARGS))]
    text = f"( {op} {args[0][0]} )"
    for arg, _ in args[1:]:
        text = f"( {text} {arg} )"
    return f"( {text} ] )", LISTOPS_OPS[op]([value for _, value in args])


def listops_value(expression: str) -> int:
    """The value of a bracketed ListOps expression (brackets ignored: the list markers say it all)."""
    stack: list[list] = [[]]
    for token in expression.split():
        if token in LISTOPS_OPS:
            stack.append([token])
        elif token == "]":
            op, *args = stack.pop()
            stack[-1].append(LISTOPS_OPS[op](args))
        elif token not in "()":
            stack[-1].append(int(token))
    return stack[0][0]


def listops_rows(rng: random.Random, size: int, seen: set[str]) -> list[list[str]]:
    """`size` rows (label, expression) of expressions not in `seen`, which takes them in: no row is in two splits."""
    rows = []
    while len(rows) < size:
        text, value = listops_expression(rng)
        if text not in seen:
            seen.add(text)
            rows.append([str(value), text])
    return rows


def listops(seed: int = 20181) -> None:
    test = [line.split("\t") for line in (HERE / "listops" / "test_d20s.tsv").read_text(encoding="utf-8").splitlines()]
    write_tsv(HERE / "listops" / "test.tsv", ["label", "expression"], test)
    seen = {expression for _, expression in test}  # no test row is trained or validated on
    rng = random.Random(seed)
    for split, size in LISTOPS_SIZES.items():
        write_tsv(HERE / "listops" / f"{split}.tsv", ["label", "expression"], listops_rows(rng, size, seen))


if __name__ == "__main__":
    jobs = {"trec": trec, "rt_polarity": rt_polarity, "cmudict": cmudict, "listops": listops}
    for name in sys.argv[1:] or jobs:
        jobs[name]()
