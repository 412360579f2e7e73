"""classify: a classifier over any family's stack (BERT's pooled [CLS], GPT's last token, a recurrent stack's last
states, or the mean or max of the tokens), fine-tuned or trained from scratch on labelled tables."""

from __future__ import annotations

import dataclasses
import sys

import datasets
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.classify import PadCollator, encode_table, iter_table_texts, label_names, pad_id
from minilm.data.tables import load_table, require_column, train_val_tables, tree_column
from minilm.errors import ConfigError
from minilm.models import family_of
from minilm.tasks.base import Source, Task, TaskData, choose_tokenizer, ordered, resolve_model, with_vocab


def collator(cfg: Config, tok: Tokenizer) -> PadCollator:
    return PadCollator(pad_id(tok), cfg.classify.padding_side)


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    train_tab, val_tab = train_val_tables(cfg)
    require_column(train_tab, cfg.classify.label_column, "classify.label_column", "data.train_files")
    labels = cfg.classify.labels or label_names(train_tab, cfg.classify.label_column)
    if len(labels) < 2:
        raise ConfigError(f"the training data has only the label {labels}: classification needs at least two")
    tok = choose_tokenizer(cfg, tok, source, iter_table_texts(train_tab, cfg))
    cfg = with_vocab(cfg, resolve_model(cfg, source), tok)
    pooling = choose_pooling(cfg, source)
    cfg = dataclasses.replace(cfg, classify=dataclasses.replace(cfg.classify, labels=labels, pooling=pooling))
    cfg.model.check(cfg)  # a pooling the model cannot do
    state = None
    if source is not None:  # the pretrained stack (and BERT's pooler, which a [CLS] classifier reads); heads dropped
        keep = family_of(cfg.model).backbone + (("pooler.",) if pooling == "cls" else ())
        state = {k: v for k, v in source.state.items() if k.startswith(keep)}
    train = encode_table(train_tab, tok, cfg, labels, "data.train_files")
    val = encode_table(val_tab, tok, cfg, labels, "data.val_files")
    collate = collator(cfg, tok)
    return TaskData(cfg, tok, *ordered(cfg, train, val), collate, collate, state)


def choose_pooling(cfg: Config, source: Source | None) -> str:
    """classify.pooling, else what init_from pools by (a sentence-transformers folder), else the model's own."""
    if cfg.classify.pooling:
        return cfg.classify.pooling
    if source is not None and source.pooling and source.pooling != "cls":
        print(f"minilm: note: model.init_from={cfg.model.init_from!r} pools by {source.pooling}; the classifier "
              f"does too (classify.pooling={source.pooling}; set classify.pooling=cls for a [CLS] pooler)",
              file=sys.stderr)
        return source.pooling
    return (source.model if source is not None else cfg.model).default_pooling()


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[datasets.Dataset, PadCollator]:
    table = load_table(files, "--data", cfg.data.text_column if cfg.model.reads_trees else None)
    return encode_table(table, tok, cfg, cfg.classify.labels, files[0]), collator(cfg, tok)


def encode_texts(cfg: Config, tok: Tokenizer, rows: list[tuple[str, ...]]) -> datasets.Dataset:
    """Texts (or pairs) to classify, encoded as training encoded them; no labels."""
    columns = {cfg.data.text_column: [r[0] for r in rows]}
    if cfg.classify.text_pair_column:
        columns[cfg.classify.text_pair_column] = [r[1] for r in rows]
    table = datasets.Dataset.from_dict(columns)
    if cfg.model.reads_trees:
        table = tree_column(table, cfg.data.text_column, [], "the input")
    return encode_table(table, tok, cfg, None, "the input")


def metrics(cfg: Config) -> tuple[str, ...]:
    return ("loss", "accuracy", "macro_f1", "f1", "mcc")  # f1: of label id 1, for two labels


TASK = Task("classify", prepare, eval_data, metrics, labels=lambda cfg: cfg.classify.labels)
