"""Pretraining text prepared once: tokenized, streaming, into uint16/uint32 token shards read back by memory map.

    PREPARED/manifest.json        the sources (path, size, mtime), the tokenizer's hash, each shard's token and
                                  document counts; "complete" once every split is written
    PREPARED/tokenizer.json       the tokenizer the shards hold ids of (trained on tokenizer.sample_bytes of text)
    PREPARED/{split}-{i:05d}.bin  token ids of a group of source files, each document followed by <|endoftext|>
    PREPARED/{split}-{i:05d}.docs uint64: where each document ends, counted within the shard
    PREPARED/{split}-{i:05d}.sents uint64: where each sentence ends (for next-sentence prediction only: then
                                  the shards hold each document's sentences, split and encoded one by one)

PREPARED is data.prepared_dir, or a folder under $MINILM_CACHE (default ~/.cache/minilm) named after the
sources and the tokenizer settings. A shard is written under a temporary name and renamed when whole; the
manifest lists it only then, so an interrupted prepare resumes at the first missing shard. A changed source
file or tokenizer, or a shard whose size does not match the manifest, makes prepare start that folder over.
Memory stays flat at any corpus size: files are read in bounded pieces (pieces.py), and training maps the
shards.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from minilm.config import Config
from minilm.data.files import resolve_files
from minilm.data.pieces import PIECE_CHARS, list_sources, pieces, sample_texts
from minilm.data.sentences import split_sentences
from minilm.errors import DataError
from minilm.runfiles import check_place
from minilm.tokenizer import encode_texts, eot_id

VERSION = 1
SHARD_TOKENS = 1 << 27  # a shard closes at a source-file boundary past this many tokens (256 MiB of uint16)
# text per encode_batch call: a few pieces for every tokenizer thread, few enough that the encodings of one
# batch (offsets and token strings besides the ids) stay small
BATCH_CHARS = PIECE_CHARS * max(4, 2 * (os.cpu_count() or 1))


class TokenStream:
    """The token ids of one split as one sequence over its shards, memory-mapped: nothing is read until sliced."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.ends = list(np.cumsum([len(p) for p in self.parts]))

    def __len__(self) -> int:
        return int(self.ends[-1]) if self.ends else 0

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, _ = s.indices(len(self))
        if stop <= start:
            return np.zeros(0, self.parts[0].dtype if self.parts else np.int64)
        i = bisect.bisect_right(self.ends, start)
        out, pos = [], start
        while pos < stop:
            begin = self.ends[i - 1] if i else 0
            take = self.parts[i][pos - begin : min(stop, self.ends[i]) - begin]
            out.append(take)
            pos += len(take)
            i += 1
        return out[0] if len(out) == 1 else np.concatenate(out)

    def head(self, n: int) -> TokenStream:
        """The first n tokens (all of them when n is 0)."""
        return self.window(0, n) if n and len(self) > n else self

    def window(self, start: int, stop: int) -> TokenStream:
        """Tokens [start, stop) as a stream of their own (views: no copy)."""
        parts, begin = [], 0
        for p, end in zip(self.parts, self.ends):
            lo, hi = max(start, begin), min(stop, end)
            if lo < hi:
                parts.append(p[lo - begin : hi - begin])
            begin = end
        return TokenStream(parts)


@dataclass
class Prepared:
    """A complete prepared folder: the tokenizer and, per split, the token stream and document ends."""

    path: Path
    tokenizer: Tokenizer
    manifest: dict

    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def stream(self, split: str) -> TokenStream:
        dtype = np.dtype(self.manifest["dtype"])
        return TokenStream([np.memmap(self.path / s["file"], dtype=dtype, mode="r") if s["tokens"] else
                            np.zeros(0, dtype) for s in self.manifest["splits"][split]])

    def doc_ends(self, split: str) -> np.ndarray:
        """(n_docs,) where each document of the split ends, as offsets into its stream."""
        return self._ends(split, "docs")

    def sentence_ends(self, split: str) -> np.ndarray:
        """(n_sentences,) where each sentence ends (folders prepared for next-sentence prediction)."""
        return self._ends(split, "sents")

    def _ends(self, split: str, kind: str) -> np.ndarray:
        out, base = [], 0
        for s in self.manifest["splits"][split]:
            out.append(np.fromfile(self.path / s[kind], dtype=np.uint64).astype(np.int64) + base)
            base += s["tokens"]
        return np.concatenate(out) if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# where, and whether it is up to date


def cache_root() -> Path:
    return Path(os.environ.get("MINILM_CACHE") or Path.home() / ".cache" / "minilm")


def _spec(cfg: Config, sentences: bool) -> dict:
    """What decides the folder: the sources and how their text becomes ids (not training settings)."""
    d, t = cfg.data, cfg.tokenizer
    return {"version": VERSION, "train": [str(Path(p).expanduser().resolve()) for p in d.train_files],
            "val": [str(Path(p).expanduser().resolve()) for p in d.val_files], "dataset": d.dataset,
            "text_column": d.text_column, "tokenizer": {**vars(t), "path": str(Path(t.path).resolve()) if t.path else None},
            "init_from": str(Path(cfg.model.init_from).resolve()) if cfg.model.init_from else None,
            "sentences": sentences}


def prepared_dir(cfg: Config, sentences: bool = False) -> Path:
    if cfg.data.prepared_dir:
        return Path(cfg.data.prepared_dir)
    key = hashlib.sha256(json.dumps(_spec(cfg, sentences), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "prepared" / key


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def _read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        return manifest if isinstance(manifest, dict) and manifest.get("version") == VERSION else None
    except (OSError, ValueError):
        return None


def _damage(path: Path, manifest: dict) -> str | None:
    """Why the listed shards cannot be used as they are, or None."""
    item = np.dtype(manifest["dtype"]).itemsize
    for shards in manifest["splits"].values():
        for s in shards:
            files = [(s["file"], s["tokens"] * item), (s["docs"], s["docs_count"] * 8)]
            if "sents" in s:
                files.append((s["sents"], s["sents_count"] * 8))
            for name, size in files:
                f = path / name
                if not f.is_file() or f.stat().st_size != size:
                    have = f.stat().st_size if f.is_file() else "no"
                    return f"{name} has {have} bytes, the manifest says {size}"
    return None


# ---------------------------------------------------------------------------------------------
# writing


class _Encoder:
    """Encodes pieces in batches (the tokenizer's own threads share each batch) and appends their ids,
    <|endoftext|> after each document, to the open shard. With `sentences`, each piece is split into
    sentences that are encoded one by one, and where each (non-empty) sentence ends is recorded."""

    def __init__(self, tok: Tokenizer, dtype: np.dtype, bar: tqdm, sentences: bool):
        self.tok, self.dtype, self.bar, self.sentences = tok, dtype, bar, sentences
        self.tail = [eot_id(tok)] if eot_id(tok) is not None and not sentences else []
        self.pending: list[tuple[str | None, bool]] = []  # (text, ends a document); None: a document ends here
        self.chars = self.bytes = 0
        self.out = None
        self.tokens = 0
        self.doc_ends: list[int] = []
        self.sentence_ends: list[int] = []

    def add(self, text: str, doc_end: bool) -> None:
        if self.sentences:
            self.pending += [(s, False) for s in split_sentences(text)] + ([(None, True)] if doc_end else [])
        else:
            self.pending.append((text, doc_end))
        self.chars += len(text)
        self.bytes += len(text.encode("utf-8"))
        if self.chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        encs = iter(encode_texts(self.tok, [t for t, _ in self.pending if t is not None]))
        parts = []
        for text, doc_end in self.pending:
            ids = next(encs).ids if text is not None else []
            ids = ids + self.tail if doc_end else ids
            parts.append(np.asarray(ids, dtype=self.dtype))
            self.tokens += len(ids)
            if text is not None and ids and self.sentences:
                self.sentence_ends.append(self.tokens)
            if doc_end:
                self.doc_ends.append(self.tokens)
        self.out.write(np.concatenate(parts).tobytes())
        self.bar.update(self.bytes)
        self.pending, self.chars, self.bytes = [], 0, 0


def _write_split(path: Path, split: str, sources: list[dict], tok: Tokenizer, manifest: dict, column: str,
                 bar: tqdm) -> None:
    """Write the split's shards after those the manifest already lists (a resumed prepare), saving the
    manifest after each."""
    sentences = manifest["sentences"]
    dtype = np.dtype(manifest["dtype"])
    shards = manifest["splits"].setdefault(split, [])
    first = shards[-1]["sources"][1] if shards else 0
    bar.update(sum(s.get("size", 0) for s in sources[:first]))
    i = first
    while i < len(sources):
        name = f"{split}-{len(shards):05d}"
        enc = _Encoder(tok, dtype, bar, sentences)
        start = i
        with open(path / f"{name}.bin.tmp", "wb") as enc.out:
            # whole source files per shard, so that a resumed prepare restarts at a file boundary
            while i < len(sources) and (i == start or enc.tokens + enc.chars // 4 < SHARD_TOKENS):
                for text, doc_end in pieces(sources[i], column, sentences):
                    enc.add(text, doc_end)
                i += 1
            enc.flush()
            enc.out.flush()
            os.fsync(enc.out.fileno())
        np.asarray(enc.doc_ends, dtype=np.uint64).tofile(path / f"{name}.docs")
        shard = {"file": f"{name}.bin", "docs": f"{name}.docs", "tokens": enc.tokens, "docs_count": len(enc.doc_ends),
                 "sources": [start, i]}
        if sentences:
            np.asarray(enc.sentence_ends, dtype=np.uint64).tofile(path / f"{name}.sents")
            shard.update(sents=f"{name}.sents", sents_count=len(enc.sentence_ends))
        os.replace(path / f"{name}.bin.tmp", path / f"{name}.bin")
        shards.append(shard)
        _write_manifest(path, manifest)


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path / "manifest.json")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One prepare at a time per folder (two runs started on the same data wait for each other)."""
    try:  # _check_place said why not, except where only trying tells (a read-only file system, root's access)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.parent / f".{path.name}.lock", "w")
    except OSError as e:
        raise DataError(f"cannot write the prepared data in {str(path)!r} ({e.strerror or e}): give "
                        "data.prepared_dir (or MINILM_CACHE) a folder you can write to") from e
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(cfg: Config, given: Tokenizer | None, train_tokenizer: Callable[[Iterator[str]], Tokenizer],
            show: bool = True, sentences: bool = False) -> Prepared:
    """The prepared folder of cfg's pretraining text, made (or finished, or remade) if it is not up to date.

    given: the tokenizer the ids must come from (resume, init_from, tokenizer.path), or None to use the one
    stored with the folder, or else to train one with `train_tokenizer` on the start of the training text.
    sentences: also split documents into sentences and record their ends (next-sentence prediction).
    """
    path = prepared_dir(cfg, sentences)
    sources = list_sources(cfg)
    # before the lock file is made beside it
    key = "data.prepared_dir" if cfg.data.prepared_dir else "MINILM_CACHE"
    check_place(path, key, f"give {key} a folder you can write to", DataError)
    try:
        with _locked(path):
            manifest = _read_manifest(path)
            reason = _stale(path, manifest, sources, given, sentences)
            if manifest is not None and manifest.get("complete") and reason is None:
                done = Prepared(path, _stored_tokenizer(path, given), manifest)
                if show:
                    tqdm.write(describe(done) + ": already prepared, up to date with its sources")
                return done
            if reason is not None and show:
                tqdm.write(f"preparing {path} again: {reason}")
            if reason is not None or manifest is None:
                _clear(path)
                (given or train_tokenizer(sample_texts(cfg))).save(str(path / "tokenizer.json"))
                tok = _stored_tokenizer(path, None)  # hashed as every later reader sees it: read back from the file
                manifest = {"version": VERSION, "tokenizer": tokenizer_hash(tok), "sources": sources, "sentences": sentences,
                            "dtype": "uint16" if tok.get_vocab_size() <= 1 << 16 else "uint32", "splits": {},
                            "complete": False}
                _write_manifest(path, manifest)
            tok = _stored_tokenizer(path, None)
            total = sum(s.get("size", 0) for split in sources.values() for s in split)
            started = time.perf_counter()
            # MB/s and ETA on a terminal; nothing on a log file or pipe, where the summary line below says it all
            with tqdm(total=total or None, unit="B", unit_scale=True, desc="preparing", disable=None if show else True,
                      dynamic_ncols=True) as bar:
                for split, split_sources in sources.items():
                    _write_split(path, split, split_sources, tok, manifest, cfg.data.text_column, bar)
            manifest["complete"] = True
            _write_manifest(path, manifest)
            seconds = time.perf_counter() - started
    except OSError as e:  # a full disk, a read-only folder: the shards written so far are kept, the next prepare continues
        raise DataError(f"could not write prepared data in {str(path)!r} ({e.strerror or e}): free disk space or give "
                        f"{key} a writable folder on a larger disk, then run again") from e
    if show:
        tqdm.write(describe(Prepared(path, tok, manifest)) + f"; {total / 1e6:,.1f} MB tokenized in {seconds:.1f} s "
                   f"({total / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return Prepared(path, tok, manifest)


@contextlib.contextmanager
def prepared_files(cfg: Config, tok: Tokenizer, files: list[str], sentences: bool = False) -> Iterator[Prepared]:
    """`files` prepared with `tok` in a temporary folder, as split "train" (what `minilm eval` reads): the ids
    training gets. Datasets built inside the block keep working after it (their shards stay mapped)."""
    resolve_files(files, "--data")  # a missing or unreadable file is named as the flag that gave it
    with tempfile.TemporaryDirectory() as tmp:
        data = dataclasses.replace(cfg.data, train_files=list(files), val_files=[], dataset=None,
                                   prepared_dir=str(Path(tmp) / "prepared"))
        yield prepare(dataclasses.replace(cfg, data=data), tok, lambda texts: tok, show=False, sentences=sentences)


def describe(p: Prepared) -> str:
    item = np.dtype(p.manifest["dtype"]).itemsize
    parts = []
    for split, shards in p.manifest["splits"].items():
        tokens = sum(s["tokens"] for s in shards)
        parts.append(f"{split} {tokens:,} tokens in {len(shards)} shard(s) of {tokens * item / 2**20:,.1f} MiB")
    return f"prepared data in {p.path}: " + "; ".join(parts) + f" ({p.manifest['dtype']})"


_OURS = re.compile(r"(manifest\.json|tokenizer\.json|(train|val)-\d{5}\.(bin|docs|sents)|.*\.tmp)")


def _clear(path: Path) -> None:
    """An empty folder at `path`, removing only what prepare writes (never a user's own files)."""
    if path.exists():
        if not path.is_dir():
            raise DataError(f"data.prepared_dir={str(path)!r} is a file: give a folder for the prepared data")
        others = [f.name for f in path.iterdir() if not _OURS.fullmatch(f.name)]
        if others:
            raise DataError(f"data.prepared_dir={str(path)!r} holds files prepare did not write ({others[0]!r}): "
                            "give an empty or new folder")
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _stale(path: Path, manifest: dict | None, sources: dict, given: Tokenizer | None, sentences: bool) -> str | None:
    """Why the folder's contents cannot be used or resumed, or None."""
    if manifest is None:
        return "its manifest is missing or unreadable" if path.exists() and any(path.iterdir()) else None
    if manifest.get("sentences") != sentences:
        return "it was prepared with" + ("out" if sentences else "") + " sentence boundaries"
    if manifest.get("sources") != sources:
        return "a source file changed"
    if given is not None and tokenizer_hash(given) != manifest.get("tokenizer"):
        return "the tokenizer differs from the one the data was prepared with"
    try:
        stored = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception:  # tokenizers raises a bare Exception on malformed JSON
        return "its tokenizer.json is unreadable"
    if tokenizer_hash(stored) != manifest.get("tokenizer"):
        return "its tokenizer.json differs from the one the shards were made with"
    return _damage(path, manifest)


def _stored_tokenizer(path: Path, given: Tokenizer | None) -> Tokenizer:
    return given or Tokenizer.from_file(str(path / "tokenizer.json"))
