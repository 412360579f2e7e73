"""tag: a label for every word (part of speech, chunk, entity type), the lecture's synchronous sequence mapping, over
any family's stack: a bidirectional BERT-style encoder (from scratch, a minilm run or a Hugging Face BERT folder), a
causal GPT (left context only) or a (bidirectional) recurrent stack. Words are split into the tokenizer's tokens and
the first token of each word carries its label (minilm/data/tagging.py)."""

from __future__ import annotations

import dataclasses

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.classify import pad_id
from minilm.data.tagging import Sentences, TagCollator, encode_sentences, label_names, read_tagged
from minilm.errors import ConfigError
from minilm.metrics import is_chunk_scheme
from minilm.models import family_of
from minilm.tasks.base import Source, Task, TaskData, choose_tokenizer, ordered, resolve_model, with_vocab

SPAN_METRICS = ("span_precision", "span_recall", "span_f1")


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    if not cfg.data.val_files:
        raise ConfigError("train.task=tag evaluates on data.val_files: name the validation files (e.g. a CoNLL-U "
                          "dev file)")
    train = read_tagged(cfg.data.train_files, cfg.tag, "data.train_files")
    val = read_tagged(cfg.data.val_files, cfg.tag, "data.val_files")
    labels = cfg.tag.labels or label_names(train)
    if len(labels) < 2:
        raise ConfigError(f"the training data has only the label {labels}: tagging needs at least two")
    if cfg.tag.spans and not is_chunk_scheme(labels):
        raise ConfigError(f"tag.spans=true counts spans of B-/I-/E-/S- labels, and these labels are {labels[:5]}: "
                          "set tag.spans=false (or leave it unset)")
    cfg = dataclasses.replace(cfg, tag=dataclasses.replace(cfg.tag, labels=labels))
    if cfg.train.best_metric in {f"val_{m}" for m in SPAN_METRICS} and spans(cfg) is None:
        raise ConfigError(f"train.best_metric={cfg.train.best_metric} is a span metric, and the labels "
                          f"({', '.join(labels[:5])}) are not a B-/I-/E-/S- scheme: choose val_accuracy or val_macro_f1")
    tok = choose_tokenizer(cfg, tok, source, (" ".join(words) for words in train.words))
    cfg = with_vocab(cfg, resolve_model(cfg, source), tok)
    state = None
    if source is not None:  # the pretrained stack; its heads are dropped
        state = {k: v for k, v in source.state.items() if k.startswith(family_of(cfg.model).backbone)}
    collate = TagCollator(pad_id(tok))
    train_set = encode(cfg, tok, train, labels, "data.train_files")
    val_set = encode(cfg, tok, val, labels, "data.val_files")
    return TaskData(cfg, tok, *ordered(cfg, train_set, val_set), collate, collate, state)


def encode(cfg: Config, tok: Tokenizer, sentences: Sentences, labels: list[str] | None, what: str) -> list[dict]:
    """Examples as the model reads them: at most model.block_size tokens each (longer sentences in pieces)."""
    return encode_sentences(sentences, tok, cfg.model.block_size, labels, what)


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[list[dict], TagCollator]:
    return encode(cfg, tok, read_tagged(files, cfg.tag, "--data"), cfg.tag.labels, files[0]), TagCollator(pad_id(tok))


@torch.no_grad()
def tag_words(model: torch.nn.Module, cfg: Config, tok: Tokenizer, words: list[list[str]], device: str | torch.device,
              batch_size: int = 64) -> list[list[str]]:
    """A label for every word of each sentence: the label of its first token, the pieces of a long sentence
    tagged one by one; `batch_size` pieces at a time, so memory stays bounded however many sentences come."""
    examples = encode(cfg, tok, Sentences(words, [[] for _ in words], [f"sentence {i + 1}" for i in range(len(words))]),
                      None, "the input")
    collate, out = TagCollator(pad_id(tok)), [[] for _ in words]
    for first in range(0, len(examples), batch_size):
        chunk = examples[first:first + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        best = model(**batch).logits.argmax(-1).cpu()  # (B, T)
        for row, e in zip(best, chunk):  # pieces come in sentence order
            out[e["sentence"]] += [cfg.tag.labels[int(row[p])] for p in e["starts"]]
    return out


def spans(cfg: Config) -> list[str] | None:
    """The labels when span metrics are reported (tag.spans, or unset and the labels are a chunk scheme)."""
    wanted = cfg.tag.spans if cfg.tag.spans is not None else is_chunk_scheme(cfg.tag.labels)
    return cfg.tag.labels if wanted else None


def metrics(cfg: Config) -> tuple[str, ...]:
    # accuracy: of words; the span metrics where the labels are spans (known once the training data is read)
    return ("loss", "accuracy", "macro_f1", "mcc") + (SPAN_METRICS if cfg.tag.spans is not False else ())


TASK = Task("tag", prepare, eval_data, metrics, labels=lambda cfg: cfg.tag.labels, spans=spans)
