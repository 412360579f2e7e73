"""Finding and reading local data files through `datasets` (text, JSON(L), CSV/TSV, parquet)."""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path

import datasets

from minilm.errors import DataError

# file extension -> datasets' packaged builder
BUILDERS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".json": "json", ".jsonl": "json",
    ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet",
}


def resolve_files(patterns: list[str], what: str = "data.train_files", formats: dict[str, str] = BUILDERS) -> list[str]:
    """Expand files, folders (recursively, the extensions `formats` knows) and globs into a sorted file list, all of
    one format."""
    files: list[str] = []
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in formats)
            if not found:
                raise DataError(
                    f"{what}: folder {pattern!r} has no {'/'.join(sorted(formats))} files: point it at your data"
                )
            files += found
        elif p.is_file():
            files.append(str(p))
        elif any(ch in pattern for ch in "*?["):
            found = sorted(f for f in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(f))
            if not found:
                raise DataError(f"{what}: pattern {pattern!r} matches no file: check the path")
            files += found
        else:
            raise DataError(f"{what}: {pattern!r} does not exist: check the path")
    builders = {formats.get(Path(f).suffix.lower()) for f in files}
    if None in builders:
        bad = next(f for f in files if Path(f).suffix.lower() not in formats)
        raise DataError(f"{what}: {bad!r} has an unknown extension; use one of {', '.join(sorted(formats))}")
    if len(builders) > 1:
        raise DataError(f"{what}: mixes formats ({', '.join(sorted(builders))}): give files of one format")
    for f in files:
        if os.path.getsize(f) == 0:
            raise DataError(f"{what}: {f!r} is empty: remove it or give a file with text")
    return files


def check_utf8(files: list[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(1 << 16)
        if b"\x00" in head:
            raise DataError(f"{f!r} looks binary (it holds NUL bytes): give a text file")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut at the read boundary
                raise DataError(f"{f!r} is not UTF-8 text (bad byte at offset {e.start}): convert it to UTF-8") from e


def load_files(files: list[str], **builder_kwargs) -> datasets.Dataset:
    """Load files of one format as a single Dataset; text files give one row per file (a document)."""
    builder = BUILDERS[Path(files[0]).suffix.lower()]
    if builder == "text":
        check_utf8(files)
        builder_kwargs.setdefault("sample_by", "document")
    if files[0].lower().endswith(".tsv"):
        builder_kwargs.setdefault("delimiter", "\t")
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own log line of a parse error: ours says it
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", **builder_kwargs)
    except Exception as e:  # datasets wraps parser errors in several exception types
        if builder == "json":
            for f in files:
                line = bad_json_line(f)
                if line is not None:
                    raise DataError(f"{f!r} line {line[0]} is not valid JSON ({line[1]}): fix or remove that "
                                    "line") from e
        raise DataError(f"could not read {files[0]!r}{' and others' if len(files) > 1 else ''}: {_short(e)}") from e
    finally:
        datasets.logging.set_verbosity(level)


def check_table_rows(files: list[str], what: str, quoted: bool) -> None:
    """Every row of a CSV/TSV file has as many fields as its header: a stray tab or comma would shift the columns
    (pandas reads an extra field as an index, a missing one as empty) and be blamed on a value far from it."""
    for f in files:
        tsv = f.lower().endswith(".tsv")
        with open(f, encoding="utf-8-sig", errors="replace", newline="") as fh:
            rows = csv.reader(fh, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
            try:
                header, seen = next(rows, []), 0
                for row in rows:
                    seen += bool(row)
                    if row and len(row) != len(header):
                        raise DataError(f"{what}: {f!r} line {rows.line_num} has {len(row)} fields but the header has "
                                        f"{len(header)} (a stray {'tab' if tsv else 'comma'}, or a missing one?): fix "
                                        "that row")
            except csv.Error as e:
                raise DataError(f"{what}: {f!r} line {rows.line_num} cannot be read as a table ({e}): fix that "
                                "row") from e
        if not seen:
            raise DataError(f"{what}: {f!r} holds {'only a header' if header else 'no rows'}: give a table with rows "
                            "under its header line")


def bad_json_line(path: str) -> tuple[int, str] | None:
    """(line number, why) of the first line of a JSON Lines file that is not a JSON object; None if all are
    (or the file is one JSON document, which its parser judges)."""
    if not path.lower().endswith(".jsonl"):
        return None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return number, e.msg
            if not isinstance(row, dict):
                return number, f"a {type(row).__name__}, not an object"
    return None


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
