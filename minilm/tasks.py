"""What a config trains: its tokenizer, datasets, batch collation and task model, chosen in one place.

    train.task=pretrain, model.causal=true   GPT: packed blocks, next-token loss
    train.task=pretrain, model.causal=false  BERT: NSP pairs (or packed blocks), dynamic masking
    train.task=classify                      a classifier over a BERT or GPT stack, on labelled tables
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer

from minilm.config import Config, ModelConfig
from minilm.data import classify as cls_data
from minilm.data.lm import build_lm_datasets, iter_texts, load_text_splits
from minilm.data.mlm import MaskingCollator, Shuffled, build_mlm_datasets
from minilm.errors import ConfigError
from minilm.tokenizer import load_tokenizer, train_tokenizer


@dataclass
class TaskData:
    cfg: Config  # with model.vocab_size (and, for classification, the labels) filled in
    tokenizer: Tokenizer
    train: torch.utils.data.Dataset  # has set_epoch(epoch): a new seeded order each epoch
    val: torch.utils.data.Dataset
    collate: Callable | None = None  # batches the training examples (None: default stacking)
    val_collate: Callable | None = None  # batches the validation examples
    init_state: dict[str, torch.Tensor] | None = None  # weights from model.init_from


def _source_model(cfg: Config, weights: bool) -> tuple[ModelConfig | None, dict | None, Tokenizer | None]:
    """Architecture, weights and tokenizer of model.init_from (a minilm run or a Hugging Face folder)."""
    if not cfg.model.init_from:
        return None, None, None
    from minilm.hf import load_pretrained  # transformers is not needed for this, only its file layout

    src_cfg, state, tok = load_pretrained(Path(cfg.model.init_from))
    # the source's architecture wins; a block_size set beyond its learned position table cannot be honoured
    asked = cfg.model.block_size != ModelConfig.block_size
    if asked and src_cfg.position == "learned" and cfg.model.block_size > src_cfg.block_size:
        raise ConfigError(f"model.block_size={cfg.model.block_size} is beyond the position table of "
                          f"model.init_from ({src_cfg.block_size} positions): set model.block_size={src_cfg.block_size} "
                          "or less")
    keep = {f: getattr(cfg.model, f) for f in ("dropout", "gradient_checkpointing", "init_from", "classifier_dropout")}
    return dataclasses.replace(src_cfg, **keep, num_labels=0), state if weights else None, tok


def _tokenizer(cfg: Config, saved: Path | None, src_tok: Tokenizer | None, texts) -> Tokenizer:
    """The saved run's (resume) > init_from's > tokenizer.path > one trained on the training texts."""
    if saved is not None:
        return load_tokenizer(saved)
    if src_tok is not None:
        return src_tok
    if cfg.tokenizer.path:
        return load_tokenizer(cfg.tokenizer.path)
    return train_tokenizer(cfg.tokenizer, texts)


def _with_vocab(cfg: Config, model_cfg: ModelConfig, tok: Tokenizer) -> Config:
    if not model_cfg.vocab_size:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.get_vocab_size())
    if tok.get_vocab_size() > model_cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {tok.get_vocab_size()} tokens but model.vocab_size is "
                          f"{model_cfg.vocab_size}: raise model.vocab_size or set it to 0 (take the tokenizer's)")
    return dataclasses.replace(cfg, model=model_cfg)


def prepare_task(cfg: Config, saved_tokenizer: Path | None = None, init_weights: bool = True) -> TaskData:
    """Load the data, get the tokenizer, and build datasets and collators for cfg's task.

    saved_tokenizer: use this tokenizer.json (resume, or the one the main process trained) instead of training.
    """
    src_cfg, state, src_tok = _source_model(cfg, weights=init_weights)
    if cfg.train.task == "classify":
        return _prepare_classify(cfg, saved_tokenizer, src_cfg, state, src_tok)
    train_docs, val_docs = load_text_splits(cfg)
    tok = _tokenizer(cfg, saved_tokenizer, src_tok, iter_texts(train_docs))
    cfg = _with_vocab(cfg, src_cfg or cfg.model, tok)
    if cfg.model.causal:
        train, val = build_lm_datasets(cfg, tok, train_docs, val_docs)
        return TaskData(cfg, tok, train, val, None, None, state)
    train, val = build_mlm_datasets(train_docs, val_docs, tok, cfg.data, cfg.model.block_size, cfg.train.seed)
    p = cfg.data.mlm_probability
    return TaskData(cfg, tok, train, val, MaskingCollator(tok, p), MaskingCollator(tok, p, fixed=True), state)


def _prepare_classify(cfg: Config, saved_tokenizer: Path | None, src_cfg: ModelConfig | None,
                      state: dict | None, src_tok: Tokenizer | None) -> TaskData:
    train_tab = cls_data.load_table(cfg.data.train_files, "data.train_files")
    if cfg.data.val_files:
        val_tab = cls_data.load_table(cfg.data.val_files, "data.val_files")
    else:  # a seeded split of the training table
        parts = train_tab.train_test_split(test_size=cfg.data.val_fraction, seed=cfg.train.seed)
        train_tab, val_tab = parts["train"], parts["test"]
    cls_data._require(train_tab, cfg.classify.label_column, "classify.label_column", "data.train_files")
    labels = cfg.classify.labels or cls_data.label_names(train_tab, cfg.classify.label_column)
    if len(labels) < 2:
        raise ConfigError(f"the training data has only the label {labels}: classification needs at least two")
    tok = _tokenizer(cfg, saved_tokenizer, src_tok, cls_data.iter_table_texts(train_tab, cfg))
    cfg = _with_vocab(cfg, src_cfg or cfg.model, tok)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_labels=len(labels)),
                              classify=dataclasses.replace(cfg.classify, labels=labels))
    if state is not None:  # the pretrained stack (and BERT pooler); task heads of the source are dropped
        state = {k: v for k, v in state.items() if k.startswith(("transformer.", "pooler."))}
    train = cls_data.encode_table(train_tab, tok, cfg, labels, "data.train_files")
    val = cls_data.encode_table(val_tab, tok, cfg, labels, "data.val_files")
    collate = cls_data.PadCollator(cls_data.pad_id(tok), cfg.classify.padding_side)
    return TaskData(cfg, tok, Shuffled(train, cfg.train.seed), val, collate, collate, state)
