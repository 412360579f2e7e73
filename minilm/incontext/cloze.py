"""A LAMBADA-style cloze cut from novels: passages whose last word is to be predicted.

How passages are chosen (deterministic, in reading order, no two overlapping): the novels are split into
sentences (paragraphs at blank lines, sentences at end punctuation, minilm.data.sentences). A sentence can close
a passage when it ends in a word of at least three letters followed by . ! or ?; its passage is that sentence
up to the word, after as many whole preceding sentences as make at least `context_words` words. It is kept only
if the word (in any case) already occurs in the passage: the context carries what predicts it, as it does for
most of LAMBADA's words, whose passages people chose as guessable from the whole passage but not from the last
sentence alone. The final punctuation is dropped, as in LAMBADA. The next passage starts after this one.
"""

from __future__ import annotations

import re
from pathlib import Path

from minilm.data.files import check_utf8, resolve_files
from minilm.data.sentences import split_sentences

# the sentence's last word (letters only, at least three) and its end punctuation
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})[.!?]+$")
_WORD = re.compile(r"[A-Za-z]+")


def cloze_passages(texts: list[str], context_words: int) -> list[dict[str, str]]:
    """Rows {"passage", "answer"}: the passage without its last word, and that word."""
    rows = []
    for text in texts:
        sentences = split_sentences(text)
        first = 0  # where the next passage may start
        for i, sentence in enumerate(sentences):
            m = _LAST_WORD.match(sentence)
            if m is None:
                continue
            head, word = m.group(1), m.group(2)
            context, j = [head], i
            while sum(len(s.split()) for s in context) < context_words and j > first:
                j -= 1
                context.insert(0, sentences[j])
            passage = " ".join(context)
            if len(passage.split()) < context_words:
                continue
            if word.lower() not in {w.lower() for w in _WORD.findall(passage)}:
                continue
            rows.append({"passage": passage, "answer": word})
            first = i + 1
    return rows


def read_novels(patterns: list[str], what: str) -> list[str]:
    files = resolve_files(patterns, what)
    check_utf8(files)
    return [Path(f).read_text(encoding="utf-8") for f in files]


def is_text(patterns: list[str], what: str) -> bool:
    """Whether the files are plain text (passages are cut from them) rather than a table."""
    return all(f.lower().endswith((".txt", ".text", ".md")) for f in resolve_files(patterns, what))
