"""Sequence labelling data: sentences of words with a label each, read from CoNLL-U files, JSON(L) rows or
`word<TAB>label` columns, and encoded for any tokenizer.

The words of a sentence are joined by spaces and tokenized as running text (so a pretrained model sees text as it
was pretrained on), each token is mapped back to its word by its character offsets, and the first token of each word
carries the word's label while the others carry the no-loss label (as transformers' token-classification examples
do). A sentence with more tokens than the model's positions is split at word boundaries into pieces that fit, each
tagged on its own; no word is dropped (one longer than the positions keeps its first tokens).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from minilm.config import CONLLU_COLUMNS, TagConfig
from minilm.data.batch import IGNORE, pad_examples
from minilm.data.files import check_utf8, resolve_files
from minilm.errors import DataError
from minilm.tokenizer import UNK, unknown_chars

# file extension -> how its sentences are written; any other extension is refused by resolve_files
FORMATS = {".conllu": "conllu", ".json": "json", ".jsonl": "json", ".txt": "columns", ".tsv": "columns",
           ".conll": "columns", ".bio": "columns", ".iob": "columns", ".bioes": "columns"}


@dataclass
class Sentences:
    words: list[list[str]] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)  # one per word; empty lists for text to tag
    where: list[str] = field(default_factory=list)  # "file, line N" of each sentence, for messages


def read_tagged(patterns: list[str], cfg: TagConfig, what: str) -> Sentences:
    """The labelled sentences of files (or folders, globs) of one format."""
    out = Sentences()
    for path in resolve_files(patterns, what, FORMATS):
        check_utf8([path])
        kind = FORMATS[Path(path).suffix.lower()]
        read = _conllu if kind == "conllu" else _json if kind == "json" else _columns
        for words, labels, line in read(path, cfg):
            out.words.append(words)
            out.labels.append(labels)
            out.where.append(f"{path}, line {line}")
    if not out.words:
        raise DataError(f"{what} has no sentences: give files with labelled words")
    return out


def _conllu(path: str, cfg: TagConfig):
    """(words, labels, first line) of each sentence; multi-word token lines (3-4) and empty nodes (8.1) are not
    words of the tagged sequence."""
    column, words, labels, first = CONLLU_COLUMNS[cfg.column], [], [], 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    yield words, labels, first
                words, labels = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"{path}, line {n}: a CoNLL-U word line has 10 tab-separated columns, this one has "
                                f"{len(cols)}: fix the line (or give the file another extension for word<TAB>label)")
            if "-" in cols[0] or "." in cols[0]:
                continue
            first = first if words else n
            words.append(cols[1])
            labels.append(cols[column])
    if words:
        yield words, labels, first


def _columns(path: str, cfg: TagConfig):
    """`word<TAB>label` lines (or whitespace-separated columns, the label last, as CoNLL-2003 has them), a blank
    line after each sentence; -DOCSTART- lines are document marks, not words."""
    words, labels, first = [], [], 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            cols = line.split("\t") if "\t" in line else line.split()
            if not line.strip() or cols[0] == "-DOCSTART-":
                if words:
                    yield words, labels, first
                words, labels = [], []
                continue
            if len(cols) < 2 or not cols[0].strip() or not cols[-1].strip():
                raise DataError(f"{path}, line {n}: {line.strip()!r} is not a word and its label: write "
                                "word<TAB>label, a blank line between sentences")
            first = first if words else n
            words.append(cols[0].strip())
            labels.append(cols[-1].strip())
    if words:
        yield words, labels, first


def _json(path: str, cfg: TagConfig):
    """Rows {tokens: [...], tags: [...]} (the column names are tag.tokens_column / tag.tags_column): a JSON list
    of them, or one per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
        rows = [(1, r) for r in (rows if isinstance(rows, list) else [rows])]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not valid JSON ({e.msg}): fix the line") from e
    for i, (n, row) in enumerate(rows):
        where = f"{path}, line {n}" if len(rows) == 1 or n > 1 else f"{path}, row {i + 1}"
        words = row.get(cfg.tokens_column) if isinstance(row, dict) else None
        labels = row.get(cfg.tags_column) if isinstance(row, dict) else None
        if not isinstance(words, list) or not isinstance(labels, list):
            raise DataError(f"{where}: a row needs the lists {cfg.tokens_column!r} and {cfg.tags_column!r}: set "
                            "tag.tokens_column and tag.tags_column to its keys")
        if len(words) != len(labels):
            raise DataError(f"{where}: {len(words)} words but {len(labels)} labels: give one label per word")
        if words:
            yield [str(w) for w in words], [str(t) for t in labels], n


def label_names(sentences: Sentences) -> list[str]:
    """The labels of the training data, sorted: their order defines the label ids."""
    return sorted({t for labels in sentences.labels for t in labels})


@dataclass
class Frame:
    """What a tokenizer adds around every sequence ([CLS] ... [SEP] for BERT, nothing for GPT)."""

    prefix: list[int]
    suffix: list[int]

    @classmethod
    def of(cls, tok: Tokenizer) -> Frame:
        bare = tok.encode("a", add_special_tokens=False).ids
        full = tok.encode("a").ids
        start = next(i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare)
        return cls(full[:start], full[start + len(bare):])


def encode_sentences(sentences: Sentences, tok: Tokenizer, max_len: int, labels: list[str] | None,
                     what: str) -> list[dict]:
    """One example per sentence (or per piece of a long one): input_ids, labels (the word's label id at its first
    token, IGNORE elsewhere; left out without `labels`), starts (the first token of each word) and sentence (its
    index). A label the training data never had is refused by name."""
    index = {name: i for i, name in enumerate(labels)} if labels is not None else None
    if index is not None:
        unseen = sorted({t for ts in sentences.labels for t in ts} - set(index))
        if unseen:
            raise DataError(f"{what} has labels the training data never had ({', '.join(unseen[:5])}): train on "
                            f"data with them, or use data with the labels {', '.join(labels[:10])}")
    texts = [" ".join(words) for words in sentences.words]
    bad = unknown_chars(tok, "".join(texts))
    if bad:  # a character vocabulary has no unknown token
        raise DataError(f"{what} has characters the tokenizer never saw ({''.join(bad[:10])!r}): use a tokenizer with "
                        "an unknown token (word, BPE or WordPiece)")
    frame = Frame.of(tok)
    budget = max_len - len(frame.prefix) - len(frame.suffix)
    filler = tok.token_to_id(UNK) if tok.token_to_id(UNK) is not None else 0
    out, split = [], 0
    for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
        ids, owner = _clip_words(*_by_word(sentences.words[i], enc.ids, enc.offsets, filler), budget)
        tags = [index[t] for t in sentences.labels[i]] if index is not None else None
        pieces = _pieces(owner, budget)
        split += len(pieces) > 1
        for lo, hi in pieces:
            out.append(_example(ids[lo:hi], owner[lo:hi], tags, frame, i))
    if split:
        print(f"minilm: note: {what}: {split} sentence(s) longer than the model's {max_len} positions are tagged in "
              "pieces split between words", file=sys.stderr)
    return out


def _by_word(words: list[str], ids: list[int], offsets: list[tuple[int, int]], filler: int
             ) -> tuple[list[int], list[int]]:
    """The tokens of a sentence and the word each belongs to (-1: the space between words, as a character vocabulary
    has it). A word the tokenizer gives no token (its normalizer removes every character) gets the unknown token,
    so that every word is tagged."""
    owner_of_char = []
    for w, word in enumerate(words):
        owner_of_char += [w] * len(word) + [-1]  # the word's characters, then the joining space
    owners = []
    for start, end in offsets:
        owners.append(next((owner_of_char[c] for c in range(start, end) if owner_of_char[c] >= 0), -1))
    tokens, owner, pos = [], [], 0
    for w in range(len(words)):  # words in order, each with its tokens (and the spaces before the next)
        mine = []
        while pos < len(ids) and owners[pos] in (w, -1):
            mine.append(pos)
            pos += 1
        if not any(owners[p] == w for p in mine):
            tokens.append(filler)
            owner.append(w)
        for p in mine:
            tokens.append(ids[p])
            owner.append(owners[p])
    return tokens, owner


def _clip_words(ids: list[int], owner: list[int], budget: int) -> tuple[list[int], list[int]]:
    """A word of more tokens than the model's positions (a long URL) keeps its first `budget` tokens: its label
    sits on the first, the rest carry none."""
    seen: dict[int, int] = {}
    keep = []
    for p, w in enumerate(owner):
        seen[w] = seen.get(w, 0) + 1
        if w < 0 or seen[w] <= budget:
            keep.append(p)
    return [ids[p] for p in keep], [owner[p] for p in keep]


def _pieces(owner: list[int], budget: int) -> list[tuple[int, int]]:
    """[lo, hi) token ranges of at most `budget` tokens, cut only where a word starts (or a space token
    between words, so that no word's tokens straddle a cut)."""
    if len(owner) <= budget:
        return [(0, len(owner))]
    starts = [p for p in range(len(owner)) if owner[p] >= 0 and (p == 0 or owner[p - 1] != owner[p])] + [len(owner)]
    pieces, lo = [], 0
    for a, b in zip(starts, starts[1:]):
        if b - lo > budget:
            pieces.append((lo, a))
            lo = a
    return pieces + [(lo, len(owner))]


def _example(ids: list[int], owner: list[int], tags: list[int] | None, frame: Frame, sentence: int) -> dict:
    firsts = [p for p in range(len(owner)) if owner[p] >= 0 and (p == 0 or owner[p - 1] != owner[p])]
    shift = len(frame.prefix)
    example = {"input_ids": frame.prefix + ids + frame.suffix, "starts": [shift + p for p in firsts],
               "sentence": sentence}
    if tags is not None:
        labels = [IGNORE] * len(example["input_ids"])
        for p in firsts:
            labels[shift + p] = tags[owner[p]]
        example["labels"] = labels
    return example


class TagCollator:
    """Pads each batch to its longest example on the right: input_ids, attention_mask and (when the examples have
    them) labels, padded with the no-loss label."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_examples(examples, self.pad_id)
        if "labels" in examples[0]:
            batch["labels"] = torch.nn.utils.rnn.pad_sequence(
                [torch.as_tensor(e["labels"]) for e in examples], batch_first=True, padding_value=IGNORE)  # (B, T)
        return batch
