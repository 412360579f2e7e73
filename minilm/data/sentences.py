"""Sentence splitting for next-sentence prediction: paragraphs at blank lines, sentences at end punctuation."""

from __future__ import annotations

import re

# a sentence ends at . ! or ? (optionally followed by a closing quote) before whitespace and a capital/quote
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019]?\s+(?=[\"'\u201c\u2018(]?[A-Z])")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Paragraphs (blank-line separated, lines unwrapped) split into sentences."""
    out = []
    for para in PARAGRAPH_BREAK.split(text):
        para = " ".join(para.split())
        if para:
            out += [s.strip() for s in _SENTENCE_END.split(para) if s.strip()]
    return out
