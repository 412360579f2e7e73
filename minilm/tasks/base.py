"""What a task is, and what every task's preparation shares: the tokenizer, the vocabulary size, init_from. A task
names its data and metrics; its model comes from the model section's family (minilm/models)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from tokenizers import Tokenizer

from minilm.config import Config, ModelConfig
from minilm.data.batch import Shuffled
from minilm.data.pieces import sample_texts
from minilm.data.prepared import Prepared, prepare
from minilm.data.seq2seq import References
from minilm.data.streaming import Streamed, open_stream
from minilm.errors import ConfigError
from minilm.models import check_task, family_of
from minilm.runfiles import Weights
from minilm.tokenizer import check_vocab, load_tokenizer, train_tokenizer

Collate = Callable[[list[dict]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Source:
    """The pretrained model model.init_from names (a minilm run or a Hugging Face folder)."""

    task: str  # the task its weights were trained for
    model: ModelConfig
    state: Weights
    tokenizer: Tokenizer
    pooling: str | None = None  # how its sentence embeddings are pooled, where the folder says (sentence-transformers)


@dataclass
class TaskData:
    cfg: Config  # with model.vocab_size (and, for classification, the labels) filled in
    tokenizer: Tokenizer
    train: torch.utils.data.Dataset  # has set_epoch(epoch): a new seeded order each epoch
    val: torch.utils.data.Dataset
    collate: Collate | None = None  # batches the training examples (None: default stacking)
    val_collate: Collate | None = None  # batches the validation examples
    init_state: Weights | None = None  # weights from model.init_from, for the parts this task keeps
    references: References | None = None  # seq2seq: the validation sources with all their targets, to decode


def ordered(cfg: Config, train: torch.utils.data.Dataset,
            val: torch.utils.data.Dataset) -> tuple[Shuffled, torch.utils.data.Dataset]:
    """The training examples in a new seeded order each epoch. With data.group_by_length both sets come in
    batches of close lengths, validation in one fixed such order (so a train.eval_batches subset is a random
    one, not the longest examples)."""
    batch = cfg.train.batch_size if cfg.data.group_by_length else 0
    return Shuffled(train, cfg.train.seed, batch), Shuffled(val, cfg.train.seed, batch) if batch else val


@dataclass(frozen=True)
class Task:
    """One entry of the registry (minilm/tasks/__init__.py): how a task's data, model and evaluation are built."""

    name: str
    # (cfg, the tokenizer to use or None to get one, init_from's model or None) -> datasets and collators
    prepare: Callable[[Config, Tokenizer | None, Source | None], TaskData]
    # (a run's cfg, its tokenizer, files) -> a dataset and collator for `minilm eval RUN --data FILES`
    eval_data: Callable[[Config, Tokenizer, list[str]], tuple[torch.utils.data.Dataset, Collate | None]]
    metrics: Callable[[Config], tuple[str, ...]]  # what an evaluation reports, without the "val_" prefix
    causal: bool | None = None  # the attention the task needs; None: either
    perplexity: bool = False  # report exp(loss): the loss is a mean over tokens
    prepared: bool = False  # pretraining text: prepared token shards (what `minilm prepare` makes ahead) or a stream
    encoder_decoder: bool = False  # the model is an encoder-decoder (model.encoder_layers > 0)
    labels: Callable[[Config], list[str]] | None = None  # classifiers and taggers: the names of the label ids
    # taggers: the labels when spans (chunks, entities) are scored too, else None
    spans: Callable[[Config], list[str] | None] = lambda cfg: None

    def check(self, cfg: Config) -> None:
        """Before any work: the config asks for something this task can do."""
        if cfg.train.best_metric is not None:
            names = [f"val_{m}" for m in self.metrics(cfg)]
            if cfg.train.best_metric not in names:
                raise ConfigError(f"train.best_metric={cfg.train.best_metric!r} is not reported by "
                                  f"train.task={self.name}: choose one of {', '.join(names)}")
        if cfg.data.streaming and not self.prepared:
            raise ConfigError(f"data.streaming=true is for pretraining text; train.task={self.name} reads its data "
                              "whole: set data.streaming=false")
        if not cfg.model.init_from:  # else the architecture comes from init_from: checked once it is loaded
            self.check_model(cfg, cfg.model)

    def check_source(self, cfg: Config, source: Source) -> None:
        """model.init_from's model is one this task can start from: said before anything about its sizes."""
        try:
            self.check_model(cfg, source.model)
        except ConfigError as e:
            raise ConfigError(f"model.init_from={cfg.model.init_from} holds a train.task={source.task} model "
                              f"({str(e).split(':')[0]}): start train.task={self.name} from another run or folder, "
                              f"or train train.task={source.task} from it") from e

    def check_model(self, cfg: Config, model: ModelConfig) -> None:
        """The model (known only once init_from is loaded, when it names one) can be trained for this task."""
        check_task(model, self.name, self.causal)  # the family has a model for it, and this one can be trained so
        if self.encoder_decoder and not model.encoder_layers:
            raise ConfigError(f"train.task={self.name} trains an encoder-decoder: set model.encoder_layers (the "
                              "encoder's depth, e.g. 3)")
        if model.encoder_layers and not self.encoder_decoder:
            raise ConfigError(f"model.encoder_layers={model.encoder_layers} builds an encoder-decoder, which "
                              f"train.task={self.name} cannot train: set train.task=seq2seq, or model.encoder_layers=0")
        family = family_of(model)
        if cfg.train.tbptt and family.state_from_tensors is None:
            raise ConfigError(f"train.tbptt carries a state from block to block, which {family.name} models "
                              f"(model.arch={model.arch}) do not have: set train.tbptt=false")
        if cfg.train.gradient_checkpointing and family.checkpointing is None:
            raise ConfigError(f"train.gradient_checkpointing is not available for {family.name} models "
                              f"(model.arch={model.arch}): set it to false")


def resolve_model(cfg: Config, source: Source | None) -> ModelConfig:
    """The model section, or with init_from the source's architecture (training settings kept from the config)."""
    if source is None:
        return cfg.model
    src = source.model
    # a block_size set beyond the source's learned position table cannot be honoured
    asked = cfg.model.block_size != ModelConfig.block_size
    if asked and src.position == "learned" and cfg.model.block_size > src.block_size:
        raise ConfigError(f"model.block_size={cfg.model.block_size} is beyond the position table of "
                          f"model.init_from ({src.block_size} positions): set model.block_size={src.block_size} "
                          "or less")
    return dataclasses.replace(src, dropout=cfg.model.dropout, init_from=cfg.model.init_from)


def given_tokenizer(cfg: Config, tok: Tokenizer | None, source: Source | None) -> Tokenizer | None:
    """The tokenizer cfg fixes, if any: the given one (resume, or the one the main process trained) >
    init_from's > tokenizer.path."""
    if tok is not None:
        return tok
    if source is not None:
        return source.tokenizer
    return load_tokenizer(cfg.tokenizer.path) if cfg.tokenizer.path else None


def choose_tokenizer(cfg: Config, tok: Tokenizer | None, source: Source | None, texts) -> Tokenizer:
    """The tokenizer cfg fixes, or one trained on (the start of) the training texts."""
    return given_tokenizer(cfg, tok, source) or train_tokenizer(cfg.tokenizer, texts)


def prepared_text(cfg: Config, tok: Tokenizer | None, source: Source | None, sentences: bool = False) -> Prepared:
    """The pretraining text as prepared token shards (made on first use): for the LM tasks."""
    return prepare(cfg, given_tokenizer(cfg, tok, source), lambda texts: train_tokenizer(cfg.tokenizer, texts),
                   sentences=sentences)


def streamed_text(cfg: Config, tok: Tokenizer | None, source: Source | None) -> Streamed:
    """The pretraining text read while training (data.streaming=true); without a tokenizer, one is trained on
    the first tokenizer.sample_bytes of it."""
    return open_stream(cfg, choose_tokenizer(cfg, tok, source, sample_texts(cfg)))


def with_vocab(cfg: Config, model: ModelConfig, tok: Tokenizer) -> Config:
    """cfg with `model` as its model section, its vocab_size taken from the tokenizer when unset (and whatever
    else the model takes from it: ModelConfig.for_tokenizer)."""
    if not model.vocab_size:
        model = dataclasses.replace(model, vocab_size=tok.get_vocab_size())
    model = model.for_tokenizer(tok.token_to_id)
    check_vocab(tok, model.vocab_size, "the tokenizer", "raise model.vocab_size or set it to 0 (take the tokenizer's)")
    return dataclasses.replace(cfg, model=model)

