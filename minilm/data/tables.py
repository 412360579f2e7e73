"""Tables of examples (classification rows, source/target pairs): loading, their columns, the validation split."""

from __future__ import annotations

import datasets

from minilm.config import Config
from minilm.data.files import check_table_rows, load_files, resolve_files
from minilm.errors import DataError


def load_table(patterns: list[str], what: str) -> datasets.Dataset:
    files = resolve_files(patterns, what)
    if files[0].lower().endswith((".csv", ".tsv")):
        # BOMs are dropped; TSV fields are never quoted (MRPC has raw quotes); "NA" or "null" stay text
        kw = dict(encoding="utf-8-sig", keep_default_na=False, na_filter=False)
        if files[0].lower().endswith(".tsv"):
            kw["quoting"] = 3  # csv.QUOTE_NONE
        check_table_rows(files, what, quoted="quoting" not in kw)
        return load_files(files, **kw)
    return load_files(files)


def train_val_tables(cfg: Config) -> tuple[datasets.Dataset, datasets.Dataset]:
    """data.train_files and data.val_files, or a seeded data.val_fraction of the training rows held out."""
    train = load_table(cfg.data.train_files, "data.train_files")
    if cfg.data.val_files:
        return train, load_table(cfg.data.val_files, "data.val_files")
    parts = train.train_test_split(test_size=cfg.data.val_fraction, seed=cfg.train.seed)
    return parts["train"], parts["test"]


def require_column(ds: datasets.Dataset, column: str | None, key: str, what: str) -> None:
    if column is not None and column not in ds.column_names:
        raise DataError(f"{what} has no column {column!r} (columns: {', '.join(ds.column_names)}): set {key}")
