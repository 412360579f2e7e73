"""Derive the table files minilm's fine-tuning configs read from the original files beside them.

    python data/prepare.py

TREC: `COARSE:fine question` lines (latin-1; one 0xF0 byte in the training file) -> trec/{train,test}.tsv
with columns label (coarse, 6 classes), fine_label, question.
RT polarity: rt-polarity.{pos,neg} (one snippet per line, no official split) -> rt_polarity/{train,test}.tsv
with columns sentence, label (1 = positive), split 90/10 by a shuffle seeded with 1234.
The outputs are committed; rerunning reproduces them byte for byte.
"""

import random
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


if __name__ == "__main__":
    trec()
    rt_polarity()
