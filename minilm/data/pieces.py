"""Pretraining text read in bounded pieces: the sources of a config, each document as pieces of ~256 KB
(cut where every tokenizer of ours splits anyway), and the sample a tokenizer is trained on."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from minilm.config import Config
from minilm.data.files import BUILDERS, bad_json_line, check_utf8, resolve_files
from minilm.data.sentences import PARAGRAPH_BREAK
from minilm.errors import DataError
from minilm.tokenizer import limit_text

PIECE_CHARS = 1 << 18  # text read and encoded per piece
# A piece of a long document ends just before the last character of a whitespace run between two non-space
# characters. Our pre-tokenizers (GPT-2's byte-level regex, BERT's whitespace/punctuation split, characters)
# split such a run there anyway, so the pieces' ids equal the ids of the document encoded whole.
_SAFE_CUT = re.compile(r"(?<=\S)\s+(?=\S)")


def list_sources(cfg: Config) -> dict[str, list[dict]]:
    """Per split, each source: a file (path, size, mtime: what a manifest compares) or a hub dataset split."""
    d = cfg.data
    if d.dataset:
        return {"train": [{"dataset": d.dataset, "split": "train"}]}
    out = {"train": resolve_files(d.train_files, "data.train_files")}
    if d.val_files:
        out["val"] = resolve_files(d.val_files, "data.val_files")
    for split, files in out.items():
        if BUILDERS[Path(files[0]).suffix.lower()] == "text":
            check_utf8(files)
    return {split: [{"path": str(Path(f).resolve()), "size": os.path.getsize(f), "mtime_ns": os.stat(f).st_mtime_ns}
                    for f in files] for split, files in out.items()}


def _text_pieces(path: str, cut_at: re.Pattern, back: int) -> Iterator[tuple[str, bool]]:
    """A text file (one document) as pieces of about PIECE_CHARS, each cut `back` characters before the end of
    a `cut_at` match; newlines are read as datasets' text loader reads them (universal newlines)."""
    try:
        with open(path, encoding="utf-8") as fh:
            buf = ""
            while True:
                more = fh.read(PIECE_CHARS)
                buf += more
                if not more:
                    yield buf, True
                    return
                while len(buf) > PIECE_CHARS:
                    cut = None
                    for m in cut_at.finditer(buf, PIECE_CHARS // 2, len(buf) - 1):
                        cut = m.end() - back
                        break
                    if cut is None:
                        break  # no safe place yet: read on (a text without such newlines stays whole)
                    yield buf[:cut], False
                    buf = buf[cut:]
    except UnicodeDecodeError as e:
        raise DataError(f"{path!r} is not UTF-8 text (bad byte near offset {e.start}): convert it to UTF-8") from e


def _row_pieces(path: str, column: str) -> Iterator[tuple[str, bool]]:
    """Rows of a JSON(L) / CSV / TSV / parquet file, each a document, streamed by datasets."""
    import datasets

    kw = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
    ds = datasets.load_dataset(BUILDERS[Path(path).suffix.lower()], data_files=[path], split="train",
                               streaming=True, **kw)
    try:
        for batch in ds.iter(batch_size=1000):
            if column not in batch:
                raise DataError(f"{path!r} has no column {column!r} (columns: {', '.join(batch)}): "
                                "set data.text_column")
            for text in batch[column]:
                yield str(text) if text is not None else "", True
    except DataError:
        raise
    except Exception as e:  # datasets wraps parser errors in several exception types
        line = bad_json_line(path)
        if line is not None:
            raise DataError(f"{path!r} line {line[0]} is not valid JSON ({line[1]}): fix or remove that line") from e
        raise DataError(f"could not read {path!r}: {str(e).strip().splitlines()[0][:200]}") from e


def _hub_pieces(name: str, split: str, column: str) -> Iterator[tuple[str, bool]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        raise DataError(f"could not load hub dataset {name!r} ({str(e).splitlines()[0][:200]}): check the name and "
                        "the network") from e
    for batch in ds.iter(batch_size=1000):
        if column not in batch:
            raise DataError(f"hub dataset {name!r} has no column {column!r}: set data.text_column")
        for text in batch[column]:
            yield str(text) if text is not None else "", True


def pieces(source: dict, column: str, sentences: bool = False) -> Iterator[tuple[str, bool]]:
    """(text, ends_a_document) for one source; with `sentences`, long documents are cut between paragraphs
    only, so that splitting each piece into sentences splits the document the same way."""
    if "dataset" in source:
        return _hub_pieces(source["dataset"], source["split"], column)
    if BUILDERS[Path(source["path"]).suffix.lower()] == "text":
        return _text_pieces(source["path"], *((PARAGRAPH_BREAK, 0) if sentences else (_SAFE_CUT, 1)))
    return _row_pieces(source["path"], column)


def sample_texts(cfg: Config) -> Iterator[str]:
    """The first tokenizer.sample_bytes of the training text, in pieces: what the tokenizer is trained on."""

    def texts() -> Iterator[str]:
        for source in list_sources(cfg)["train"]:
            for text, _ in pieces(source, cfg.data.text_column):
                if text:
                    yield text

    return limit_text(texts(), cfg.tokenizer.sample_bytes)
