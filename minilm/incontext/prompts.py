"""From a task's rows to prompts: the examples and demonstrations read, one example rendered by the template,
K demonstrations drawn with the seed (never the example itself), and a prompt cut from the left to the model's
context, demonstrations first."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Tokenizer

from minilm.data.tables import load_table
from minilm.errors import DataError, UsageError
from minilm.incontext.cloze import cloze_passages, is_text, read_novels
from minilm.incontext.spec import TaskSpec
from minilm.tokenizer import unknown_chars

Row = dict[str, str]


def read_rows(spec: TaskSpec, files: list[str], what: str) -> list[Row]:
    """The rows of `files` with the columns the task reads, as stripped text; a cloze from text files is cut
    into passages (columns passage and answer)."""
    if spec.kind == "cloze" and is_text(files, f"{spec.name}: {what}"):
        other = [c for c in spec.columns() if c != "passage"]
        if other:
            raise DataError(f"task {spec.name}: template names column {other[0]!r}, but passages cut from text files "
                            "have only {passage}: write the template with {passage}")
        rows = cloze_passages(read_novels(files, f"{spec.name}: {what}"), spec.context_words)
        return [{"passage": r["passage"], spec.answer_column: r["answer"]} for r in rows]
    table = load_table(files, f"{spec.name}: {what}")
    need = spec.columns() + [spec.label_column if spec.kind == "choice" else spec.answer_column]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        key = "template" if missing[0] in spec.columns() else \
            ("label_column" if spec.kind == "choice" else "answer_column")
        raise DataError(f"task {spec.name}: {key} names column {missing[0]!r}, which {files[0]!r} lacks (columns: "
                        f"{', '.join(table.column_names)}): fix the task's {key}")
    columns = table.select_columns(list(dict.fromkeys(need))).to_dict()  # plain lists: fast to walk
    return [{c: str(v[i]).strip() for c, v in columns.items()} for i in range(table.num_rows)]


def check_labels(spec: TaskSpec, rows: list[Row], what: str) -> None:
    if spec.kind != "choice":
        return
    unknown = sorted({r[spec.label_column] for r in rows} - spec.options.keys())
    if unknown:
        raise DataError(f"task {spec.name}: the {what} has label {unknown[0]!r}, which options do not name (they "
                        f"name {', '.join(spec.options)}): add its option to the task")


def answer(spec: TaskSpec, row: Row) -> str:
    """The right continuation's text (without the target delimiter)."""
    return spec.options[row[spec.label_column]] if spec.kind == "choice" else row[spec.answer_column]


def render(spec: TaskSpec, row: Row) -> str:
    return spec.template.format_map(row)


def demonstration(spec: TaskSpec, row: Row) -> str:
    return render(spec, row) + spec.target_delimiter + answer(spec, row)


def content_free(spec: TaskSpec, text: str) -> str:
    """The template with `text` in every column (calibration's content-free input)."""
    return spec.template.format_map({c: text for c in spec.columns()})


def draw_demonstrations(spec: TaskSpec, train: list[Row], query: str, k: int, seed: int, index: int) -> list[Row]:
    """k training rows for example `index`, the same for the same seed; a row that renders as the example's own
    prompt (the example itself, or a duplicate of it) is never one of them."""
    if k == 0:
        return []
    rng = random.Random(f"{seed}:{index}")  # a string seed: the same draw on every platform and run
    picked = [j for j in rng.sample(range(len(train)), min(len(train), k + 8)) if render(spec, train[j]) != query]
    if len(picked) < k:  # few rows, many of them the example: draw from all the others
        others = [j for j in range(len(train)) if render(spec, train[j]) != query]
        if len(others) < k:
            raise UsageError(f"task {spec.name}: {k} demonstrations asked, but its training rows hold only "
                             f"{len(others)} besides the example: use fewer shots")
        picked = rng.sample(others, k)
    return [train[j] for j in picked[:k]]


def join(spec: TaskSpec, description: str, demos: list[str], query: str) -> str:
    return spec.example_delimiter.join(([description] if description else []) + demos + [query])


@dataclass
class Prompt:
    ids: list[int]
    demonstrations: int  # how many were kept
    cut: bool  # whether the example itself had to be cut (nothing else was left to drop)


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def fit(spec: TaskSpec, tok: Tokenizer, demos: list[str], query: str, budget: int | None,
        count: Callable[[str], int] | None = None) -> Prompt:
    """The prompt's ids in at most `budget` tokens (None: any length): the earliest demonstrations are dropped
    first, then the description, and only then is the example cut from the left. `count`: the tokens of a text
    (memoized by the caller: the same demonstrations recur)."""
    description = spec.description
    if budget is None:
        return Prompt(encode(tok, join(spec, description, demos, query)), len(demos), False)
    count = count or (lambda text: len(encode(tok, text)))
    # where to start, from the parts counted alone (exact for characters, close for BPE); checked on the whole below
    sep, sizes = count(spec.example_delimiter), [count(d) for d in demos]
    need = count(query) + (count(description) + sep if description else 0) + sum(sizes) + sep * len(demos)
    drop = 0
    while drop < len(demos) and need > budget:
        need -= sizes[drop] + sep
        drop += 1
    while True:
        ids = encode(tok, join(spec, description, demos[drop:], query))
        if len(ids) <= budget:
            while drop and description == spec.description:  # the estimate was high: keep what still fits
                more = encode(tok, join(spec, description, demos[drop - 1:], query))
                if len(more) > budget:
                    break
                drop, ids = drop - 1, more
            return Prompt(ids, len(demos) - drop, False)
        if drop < len(demos):
            drop += 1
        elif description:
            description = ""
        else:
            return Prompt(ids[-budget:], 0, True)


class Cleaner:
    """A character vocabulary has no id for characters it never saw: they are dropped from the data and the
    content-free inputs (counted, and said), but a task's own words (template, options, description) that it
    cannot read are refused."""

    def __init__(self, spec: TaskSpec, tok: Tokenizer):
        self.tok, self.dropped = tok, {}
        texts = [content_free(spec, ""), spec.description, spec.target_delimiter, spec.example_delimiter,
                 *spec.options.values()]
        bad = unknown_chars(tok, "".join(texts))
        if bad:
            raise UsageError(f"task {spec.name}: its template, options or delimiters have characters this model's "
                             f"tokenizer never saw ({''.join(bad)!r}): write the task in characters it knows")

    def rows(self, rows: list[Row], columns: list[str]) -> list[Row]:
        """The rows with the characters the vocabulary lacks dropped from `columns` (the text the model reads)."""
        bad = set(unknown_chars(self.tok, "".join(r[c] for r in rows for c in columns)))
        if not bad:
            return rows
        for r in rows:
            for c in columns:
                for ch in bad.intersection(r[c]):
                    self.dropped[ch] = self.dropped.get(ch, 0) + r[c].count(ch)
        return [{c: "".join(ch for ch in v if ch not in bad) if c in columns else v for c, v in r.items()}
                for r in rows]

    def texts(self, texts: list[str]) -> list[str]:
        return [r["text"] for r in self.rows([{"text": t} for t in texts], ["text"])]
