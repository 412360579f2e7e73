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
The outputs are committed; rerunning reproduces them byte for byte.
"""

import random
import re
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


if __name__ == "__main__":
    trec()
    rt_polarity()
    cmudict()
