"""classify: fine-tuning a classifier (BERT's pooled [CLS] or GPT's last token) on labelled tables."""

from __future__ import annotations

import dataclasses

import datasets
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.batch import Shuffled
from minilm.data.classify import (PadCollator, encode_table, iter_table_texts, label_names, load_table, pad_id,
                                  require_column)
from minilm.errors import ConfigError
from minilm.heads import Classifier
from minilm.tasks.base import Source, Task, TaskData, choose_tokenizer, resolve_model, with_vocab


def collator(cfg: Config, tok: Tokenizer) -> PadCollator:
    return PadCollator(pad_id(tok), cfg.classify.padding_side)


def _tables(cfg: Config) -> tuple[datasets.Dataset, datasets.Dataset]:
    train = load_table(cfg.data.train_files, "data.train_files")
    if cfg.data.val_files:
        return train, load_table(cfg.data.val_files, "data.val_files")
    parts = train.train_test_split(test_size=cfg.data.val_fraction, seed=cfg.train.seed)  # a seeded split
    return parts["train"], parts["test"]


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    train_tab, val_tab = _tables(cfg)
    require_column(train_tab, cfg.classify.label_column, "classify.label_column", "data.train_files")
    labels = cfg.classify.labels or label_names(train_tab, cfg.classify.label_column)
    if len(labels) < 2:
        raise ConfigError(f"the training data has only the label {labels}: classification needs at least two")
    tok = choose_tokenizer(cfg, tok, source, iter_table_texts(train_tab, cfg))
    cfg = with_vocab(cfg, resolve_model(cfg, source), tok)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_labels=len(labels)),
                              classify=dataclasses.replace(cfg.classify, labels=labels))
    state = None
    if source is not None:  # the pretrained stack (and BERT pooler); the source's task heads are dropped
        state = {k: v for k, v in source.state.items() if k.startswith(("transformer.", "pooler."))}
    train = encode_table(train_tab, tok, cfg, labels, "data.train_files")
    val = encode_table(val_tab, tok, cfg, labels, "data.val_files")
    collate = collator(cfg, tok)
    return TaskData(cfg, tok, Shuffled(train, cfg.train.seed), val, collate, collate, state)


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[datasets.Dataset, PadCollator]:
    return encode_table(load_table(files, "--data"), tok, cfg, cfg.classify.labels, files[0]), collator(cfg, tok)


def encode_texts(cfg: Config, tok: Tokenizer, rows: list[tuple[str, ...]]) -> datasets.Dataset:
    """Texts (or pairs) to classify, encoded as training encoded them; no labels."""
    columns = {cfg.data.text_column: [r[0] for r in rows]}
    if cfg.classify.text_pair_column:
        columns[cfg.classify.text_pair_column] = [r[1] for r in rows]
    return encode_table(datasets.Dataset.from_dict(columns), tok, cfg, None, "the input")


def metrics(cfg: Config) -> tuple[str, ...]:
    return ("loss", "accuracy", "macro_f1", "f1", "mcc")  # f1: of label id 1, for two labels


TASK = Task("classify", Classifier, prepare, eval_data, metrics)
