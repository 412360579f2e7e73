"""Tokenizers through the `tokenizers` library: character-level, word-level (whitespace-separated symbols such as
phonemes), GPT-2 style byte-level BPE, BERT WordPiece.

A tokenizer is a plain `tokenizers.Tokenizer`; it is saved with each run as `tokenizer.json`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from minilm.config import TokenizerConfig
from minilm.errors import ConfigError, DataError

T = TypeVar("T")
EOT = "<|endoftext|>"  # separates documents for causal LMs (GPT-2's name for it)
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
BERT_SPECIALS = [PAD, UNK, CLS, SEP, MASK]


def limit_text(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    seen = 0
    for text in texts:
        if seen >= max_bytes:
            return
        yield text[: max_bytes - seen]
        seen += len(text)


def train_char(texts: Iterable[str]) -> Tokenizer:
    # A character vocabulary is just the sorted alphabet (as nanoGPT builds it); no trainer needed.
    alphabet = sorted(set().union(*(set(t) for t in texts)) - {""})
    vocab = {EOT: 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character, newlines too
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOT])
    return tok


def train_word(texts: Iterable[str]) -> Tokenizer:
    """Every whitespace-separated symbol is one token (phoneme strings, pre-split text); unseen ones are [UNK]."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[EOT, UNK], show_progress=False))
    return tok  # no decoder: decoding joins the tokens with spaces


# tokenizers' ready-made ByteLevelBPETokenizer and BertWordPieceTokenizer assemble these same pipelines, but hand
# back a wrapper whose Tokenizer is private (`_tokenizer`); minilm passes plain Tokenizer objects everywhere (saved
# as tokenizer.json, read back with Tokenizer.from_file), so it assembles them from the library's own parts.
def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def bert_post_processor(tok: Tokenizer, cls: str = CLS, sep: str = SEP) -> processors.TemplateProcessing:
    """[CLS] A [SEP] B [SEP] with segment ids 0 0 0 1 1 (`cls` and `sep` name the tokens if a vocabulary differs)."""
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = bert_post_processor(tok)
    return tok


# The BPE and WordPiece trainers slow down much faster than linearly with a word's length (a 1 MB line without
# spaces ran for minutes): they see longer runs of non-space characters cut into pieces of this many.
MAX_WORD = 100
_LONG_WORD = re.compile(r"\S{%d}" % MAX_WORD)


def bounded_words(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield _LONG_WORD.sub(lambda m: m.group(0) + " ", text)


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """Train the configured kind of tokenizer on (at most cfg.sample_bytes of) `texts`."""
    texts = limit_text(texts, cfg.sample_bytes)
    if cfg.kind == "char":
        return train_char(texts)
    if cfg.kind == "word":
        return train_word(texts)
    if cfg.kind == "bpe":
        return interruptible(train_bpe, bounded_words(texts), cfg.vocab_size)
    return interruptible(train_wordpiece, bounded_words(texts), cfg.vocab_size, cfg.lowercase)


def interruptible(work: Callable[..., T], *args) -> T:
    """work(*args) in a thread while the main thread waits: the trainers run in Rust without returning to Python,
    where Ctrl-C would be noticed; waiting here it is, and the (daemon) thread ends with the process."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = work(*args)
        except BaseException as e:  # handed to the caller
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="tokenizer-trainer")
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in out:
        raise out["error"]
    return out["value"]


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(f"tokenizer file {str(p)!r} does not exist: give the path of a tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise ConfigError(f"tokenizer file {str(p)!r} could not be read ({e}): give a valid tokenizer.json") from e
    # Many saved tokenizers pad (or truncate) every text to a fixed length. minilm pads each batch to its
    # longest example and truncates to the model's positions itself; a fixed padding would make [PAD]
    # look like real tokens to the collators (attended to, and several times the compute).
    fixed = [name for name, setting in (("padding", tok.padding), ("truncation", tok.truncation)) if setting]
    if fixed:
        tok.no_padding()
        tok.no_truncation()
        print(f"minilm: note: {str(p)!r} sets {' and '.join(fixed)}; ignored (minilm pads each batch and truncates "
              "to the model's positions itself)", file=sys.stderr)
    return tok


def check_vocab(tok: Tokenizer, vocab_size: int, what: str, fix: str, error: type[Exception] = ConfigError) -> None:
    """A model with `vocab_size` embeddings cannot take a tokenizer with more ids."""
    if tok.get_vocab_size() > vocab_size:
        raise error(f"{what} has {tok.get_vocab_size()} tokens but the model only {vocab_size}: {fix}")


def eot_id(tok: Tokenizer) -> int | None:
    """The end-of-text id of a causal-LM tokenizer, or None (e.g. WordPiece)."""
    return tok.token_to_id(EOT)


def unknown_chars(tok: Tokenizer, text: str) -> list[str]:
    """Characters of `text` that a character-level tokenizer has no id for (empty for other kinds)."""
    if not isinstance(tok.model, models.WordLevel) or tok.token_to_id(UNK) is not None:
        return []  # only a character vocabulary lacks an [UNK] for what it never saw
    vocab = tok.get_vocab()
    return sorted({ch for ch in text if ch not in vocab})


def encode_texts(tok: Tokenizer, texts: list[str]) -> list:
    """The encodings of `texts` (no special tokens), computed by the tokenizer's own threads."""
    try:
        # the _fast variant (tokenizers >= 0.21) skips the character offsets we never use
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        with tokenizer_threads():
            return encode(texts, add_special_tokens=False)
    except Exception as e:  # a character vocabulary has no [UNK]: name the characters it lacks
        if "Missing [UNK]" not in str(e):
            raise
        bad = sorted({c for t in texts for c in unknown_chars(tok, t)})
        raise DataError(f"the text has characters the tokenizer never saw ({''.join(bad[:20])!r}): remove them, "
                        "or train a new tokenizer on this data (tokenizer.kind=bpe handles any text)") from e


@contextlib.contextmanager
def tokenizer_threads() -> Iterator[None]:
    """The tokenizer's own threads for a batch (the CLI turns them off so that datasets' worker processes fork
    cleanly; nothing forks while prepare encodes)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
