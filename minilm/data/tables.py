"""Tables of examples (classification rows, source/target pairs): loading, their columns, the validation split."""

from __future__ import annotations

import datasets

from minilm.config import Config
from minilm.data.files import check_table_rows, load_files, resolve_files
from minilm.data.trees import TreeError, binary_brackets
from minilm.errors import DataError


def load_table(patterns: list[str], what: str, trees: str | None = None) -> datasets.Dataset:
    """The rows of the files; `trees`: a column of bracketed trees, checked (a mistake named by file and row) and
    written as binary brackets (data/trees.py), before any split moves the rows."""
    files = resolve_files(patterns, what)
    if files[0].lower().endswith((".csv", ".tsv")):
        # BOMs are dropped; TSV fields are never quoted (MRPC has raw quotes); "NA" or "null" stay text
        kw = dict(encoding="utf-8-sig", keep_default_na=False, na_filter=False)
        if files[0].lower().endswith(".tsv"):
            kw["quoting"] = 3  # csv.QUOTE_NONE
        check_table_rows(files, what, quoted="quoting" not in kw)
        table = load_files(files, **kw)
    else:
        table = load_files(files)
    return tree_column(table, trees, files, what) if trees else table


def tree_column(table: datasets.Dataset, column: str, files: list[str], what: str) -> datasets.Dataset:
    """`column` of the table as binary-bracket trees; a malformed one is refused naming its file and row."""
    require_column(table, column, "data.text_column", what)
    trees = []
    for row, text in enumerate(table[column]):
        try:
            trees.append(binary_brackets(str(text)))
        except TreeError as e:
            raise DataError(f"{what}: {_where(files, row)} is not a tree in brackets ({e}): fix its brackets") from e
    # added beside the old column before it goes: a table of that column alone would be left with no rows
    return table.add_column(f"{column}.tree", trees).remove_columns(column).rename_column(f"{column}.tree", column)


def _where(files: list[str], row: int) -> str:
    """Row `row` of the files' concatenation as a file and line where the files hold one row a line (CSV/TSV
    after their header, JSON Lines), else as a row number."""
    if files and all(f.lower().endswith((".csv", ".tsv", ".jsonl")) for f in files):
        left = row
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                lines = [n for n, line in enumerate(fh, 1) if line.strip()][int(not f.lower().endswith(".jsonl")):]
            if left < len(lines):
                return f"{f!r} line {lines[left]}"
            left -= len(lines)
    if len(files) == 1:
        return f"{files[0]!r} row {row + 1}"
    return f"row {row + 1}" + (f" of {', '.join(map(repr, files))}" if files else "")


def train_val_tables(cfg: Config) -> tuple[datasets.Dataset, datasets.Dataset]:
    """data.train_files and data.val_files, or a seeded data.val_fraction of the training rows held out. A model
    that reads trees (model.arch=tree_*) gets data.text_column's trees checked and written as binary brackets."""
    trees = cfg.data.text_column if cfg.model.reads_trees else None
    train = load_table(cfg.data.train_files, "data.train_files", trees)
    if cfg.data.val_files:
        return train, load_table(cfg.data.val_files, "data.val_files", trees)
    parts = train.train_test_split(test_size=cfg.data.val_fraction, seed=cfg.train.seed)
    return parts["train"], parts["test"]


def require_column(ds: datasets.Dataset, column: str | None, key: str, what: str) -> None:
    if column is not None and column not in ds.column_names:
        raise DataError(f"{what} has no column {column!r} (columns: {', '.join(ds.column_names)}): set {key}")
