"""What a config trains: its tokenizer, datasets, batch collation and task model, chosen in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer

from minilm.config import Config, ModelConfig
from minilm.data.lm import build_lm_datasets, iter_texts, load_text_splits
from minilm.data.mlm import MaskingCollator, build_mlm_datasets
from minilm.errors import ConfigError
from minilm.tokenizer import load_tokenizer, train_tokenizer


@dataclass
class TaskData:
    tokenizer: Tokenizer
    model_cfg: ModelConfig  # with vocab_size filled in
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    collate: Callable | None = None  # batches the training examples (None: default stacking)
    val_collate: Callable | None = None  # batches the validation examples
    init_state: dict[str, torch.Tensor] | None = None  # weights from model.init_from


def _source_model(cfg: Config) -> tuple[ModelConfig | None, dict | None, Tokenizer | None]:
    """Architecture, weights and tokenizer of model.init_from (a minilm run or a Hugging Face folder)."""
    if not cfg.model.init_from:
        return None, None, None
    from minilm.hf import load_pretrained  # transformers is not needed for this, only its file layout

    src_cfg, state, tok = load_pretrained(Path(cfg.model.init_from))
    keep = {f: getattr(cfg.model, f) for f in ("dropout", "gradient_checkpointing", "init_from")}
    return dataclasses.replace(src_cfg, **keep), state, tok


def prepare_task(cfg: Config, resume_tokenizer: Path | None = None) -> TaskData:
    """Load documents, get the tokenizer (saved run > init_from > tokenizer.path > trained), build datasets."""
    src_cfg, state, src_tok = _source_model(cfg)
    train_docs, val_docs = load_text_splits(cfg)
    if resume_tokenizer is not None:
        tok = load_tokenizer(resume_tokenizer)
    elif src_tok is not None:
        tok = src_tok
    elif cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
    else:
        tok = train_tokenizer(cfg.tokenizer, iter_texts(train_docs))
    model_cfg = src_cfg or cfg.model
    if not model_cfg.vocab_size:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.get_vocab_size())
    if tok.get_vocab_size() > model_cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {tok.get_vocab_size()} tokens but model.vocab_size is "
                          f"{model_cfg.vocab_size}: raise model.vocab_size or set it to 0 (take the tokenizer's)")
    cfg = dataclasses.replace(cfg, model=model_cfg)
    if model_cfg.causal:
        train, val = build_lm_datasets(cfg, tok, train_docs, val_docs)
        return TaskData(tok, model_cfg, train, val, None, None, state)
    train, val = build_mlm_datasets(train_docs, val_docs, tok, cfg.data, model_cfg.block_size, cfg.train.seed)
    collate, val_collate = MaskingCollator(tok, cfg.data.mlm_probability), MaskingCollator(tok, cfg.data.mlm_probability, fixed=True)
    return TaskData(tok, model_cfg, train, val, collate, val_collate, state)
