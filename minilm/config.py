"""Typed configuration: one dataclass per concern, named presets, YAML + dotted overrides.

Precedence, lowest first: dataclass defaults -> `model.preset` -> YAML file -> `key=value` overrides.
Every field is checked when the config is built; a mistake raises ConfigError with one line that
names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minilm.errors import ConfigError


def _check(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


POOLINGS = ("cls", "mean", "last", "max")
ARCHS = ("transformer", "rnn", "lstm", "gru", "sru")


@dataclass
class ModelConfig:
    """The shared Transformer stack. GPT and BERT differ only in these switches and their heads."""

    preset: str | None = None  # a name from PRESETS; its values sit under anything set explicitly
    # the model family: "transformer", or a recurrent stack of "rnn" (Elman, tanh), "lstm", "gru" or "sru"
    # (n_layer layers of hidden_size, dropout between them; n_head, block positions and norms do not apply)
    arch: str = "transformer"
    vocab_size: int = 0  # 0: take it from the tokenizer
    block_size: int = 256  # context length = size of the position table
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    d_ff: int = 0  # MLP width; 0 means 4 * n_embd
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers
    norm: str = "pre"  # "pre": GPT-2 (final LayerNorm after the blocks); "post": original Transformer / BERT
    norm_eps: float = 1e-5
    embedding_norm: bool = False  # LayerNorm right after the embeddings (BERT)
    position: str = "learned"  # "learned" table or the original Transformer's "sinusoidal" one
    # start a learned table from the sinusoidal one (at the token embeddings' scale): attention can tell near
    # from far positions from step 0, which shortens a masked LM's unigram plateau; still a plain learned table
    position_init: str = "random"
    causal: bool = True  # causal (decoder) or bidirectional (encoder) attention
    type_vocab_size: int = 0  # segment embeddings (BERT uses 2); 0 disables them
    activation: str = "gelu_tanh"  # GPT-2 uses the tanh approximation, BERT the exact "gelu"
    init_from: str | None = None  # a minilm run directory or a local Hugging Face GPT-2/BERT folder
    gradient_checkpointing: bool = False  # recompute block activations in backward to save memory
    num_labels: int = 0  # > 0: a sequence classifier over the stack (set by fine-tuning from the labels)
    classifier_dropout: float = 0.1
    # what a classifier reads (filled in from classify.pooling): "cls" (BERT's pooled [CLS]), "mean" (of the real
    # tokens, as sentence-transformers pools), "max" or "last" (the last real token, GPT's); "": the model's own
    pooling: str = ""
    # > 0: an encoder-decoder (the original Transformer): an encoder of this many bidirectional Blocks, and the
    # n_layer causal Blocks as the decoder, each with cross-attention over the encoder's output (train.task=seq2seq)
    encoder_layers: int = 0
    share_embeddings: bool = True  # encoder-decoder: the encoder reads the decoder's token table (one vocabulary)
    label_smoothing: float = 0.0  # training loss of the LM and seq2seq tasks (the original Transformer used 0.1)
    # recurrent stacks (model.arch != transformer):
    hidden_size: int = 0  # the state's width; 0: n_embd
    bidirectional: bool = False  # a second direction reading right to left (encoders and classifiers, not LMs)
    residual: bool = False  # x + layer(x) between stacked layers (where the widths agree)
    # a recurrent encoder-decoder's attention score between a decoder state and the encoder states: "dot"
    # (Luong's general score, h W e) or "additive" (Bahdanau's, v . tanh(W h + U e))
    attention: str = "dot"

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.n_embd

    @property
    def recurrent(self) -> bool:
        return self.arch != "transformer"

    @property
    def rnn_hidden(self) -> int:
        return self.hidden_size or self.n_embd

    def validate(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            _check(getattr(self, name) > 0, f"model.{name}", "a positive integer", getattr(self, name))
        _check(self.vocab_size >= 0, "model.vocab_size", "0 (from the tokenizer) or a positive integer", self.vocab_size)
        _check(self.d_ff >= 0, "model.d_ff", "0 (4 * n_embd) or a positive integer", self.d_ff)
        _check(self.type_vocab_size >= 0, "model.type_vocab_size", "0 or a positive integer", self.type_vocab_size)
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "a number in [0, 1)", self.dropout)
        _check(0.0 <= self.classifier_dropout < 1.0, "model.classifier_dropout", "a number in [0, 1)", self.classifier_dropout)
        _check(self.num_labels >= 0, "model.num_labels", "0 or a positive integer", self.num_labels)
        _check(self.encoder_layers >= 0, "model.encoder_layers", "0 (no encoder) or a positive integer",
               self.encoder_layers)
        _check(0.0 <= self.label_smoothing < 1.0, "model.label_smoothing", "a number in [0, 1)", self.label_smoothing)
        if self.encoder_layers and not self.causal:
            raise ConfigError("model.encoder_layers > 0 builds an encoder-decoder, whose decoder is causal: set "
                              "model.causal=true (the encoder is bidirectional by itself)")
        _check(self.norm_eps > 0, "model.norm_eps", "a positive number", self.norm_eps)
        _check(self.norm in ("pre", "post"), "model.norm", "'pre' or 'post'", self.norm)
        _check(self.position in ("learned", "sinusoidal"), "model.position", "'learned' or 'sinusoidal'", self.position)
        _check(self.position_init in ("random", "sinusoidal"), "model.position_init", "'random' or 'sinusoidal'",
               self.position_init)
        _check(self.activation in ("gelu_tanh", "gelu"), "model.activation", "'gelu_tanh' or 'gelu'", self.activation)
        _check(self.pooling in POOLINGS + ("",), "model.pooling", "'cls', 'mean', 'last', 'max' or '' (the model's own)",
               self.pooling)
        _check(self.arch in ARCHS, "model.arch", "'transformer', 'rnn', 'lstm', 'gru' or 'sru'", self.arch)
        _check(self.hidden_size >= 0, "model.hidden_size", "0 (n_embd) or a positive integer", self.hidden_size)
        if self.recurrent and self.pooling == "cls":
            raise ConfigError(f"classify.pooling=cls reads a [CLS] pooler, which a model.arch={self.arch} stack has not: "
                              "use classify.pooling=last, mean or max")
        if not self.recurrent and (self.bidirectional or self.residual or self.hidden_size):
            raise ConfigError("model.bidirectional, model.residual and model.hidden_size are for recurrent stacks "
                              "(model.arch=rnn, lstm, gru or sru); a Transformer reads both ways with model.causal=false")
        _check(self.attention in ("dot", "additive"), "model.attention", "'dot' or 'additive'", self.attention)
        if self.pooling == "cls" and self.causal:
            raise ConfigError("classify.pooling=cls reads the first token, which a causal (GPT) model cannot let see "
                              "the others: use classify.pooling=last or mean")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                "choose n_embd as a multiple of n_head"
            )


@dataclass
class TokenizerConfig:
    # "char", "word" (whitespace-separated symbols, e.g. phonemes), "bpe" (GPT-2 style byte-level BPE) or
    # "wordpiece" (BERT)
    kind: str = "char"
    vocab_size: int = 8192  # for bpe / wordpiece training; char vocabularies are as large as the alphabet
    path: str | None = None  # an existing tokenizer.json to use instead of training one
    lowercase: bool = True  # wordpiece only
    sample_bytes: int = 50_000_000  # train the tokenizer on at most this much text

    def validate(self) -> None:
        _check(self.kind in ("char", "word", "bpe", "wordpiece"), "tokenizer.kind", "'char', 'word', 'bpe' or 'wordpiece'",
               self.kind)
        _check(self.vocab_size > 0, "tokenizer.vocab_size", "a positive integer", self.vocab_size)
        _check(self.sample_bytes > 0, "tokenizer.sample_bytes", "a positive integer", self.sample_bytes)


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # files, folders or globs; .txt .json .jsonl .csv .tsv .parquet
    val_files: list[str] = field(default_factory=list)  # empty: hold out the last val_fraction of the training stream
    val_fraction: float = 0.1
    dataset: str | None = None  # a Hugging Face hub dataset name (needs a network)
    text_column: str = "text"  # the text (for classification: the first text of each example)
    # read so that older configs load, not used: prepare encodes with the tokenizer's own threads
    num_proc: int = 1
    # Pretraining text is tokenized once into memory-mapped token shards (`minilm prepare`, or the first
    # `minilm train`), kept here; None: a folder under $MINILM_CACHE (default ~/.cache/minilm) named after
    # the sources and the tokenizer settings
    prepared_dir: str | None = None
    val_tokens: int = 1 << 20  # evaluate on at most this many validation tokens (the first ones); 0: all
    # Read the text while training instead of preparing it: streamed by datasets from the files (or the hub),
    # tokenized on the fly, each process reading its own share, in file order; resumes at the saved position.
    # Validation: the first val_tokens of data.val_files, or else of the training text (then held out of it).
    streaming: bool = False
    # BERT pretraining (bidirectional models) only:
    mlm_probability: float = 0.15  # share of real tokens chosen for prediction (80 % [MASK], 10 % random, 10 % kept)
    nsp: bool = True  # sentence pairs with next-sentence prediction; false: plain packed blocks, MLM only
    short_seq_prob: float = 0.1  # share of NSP examples built shorter than the block, as BERT's data builder does

    def validate(self) -> None:
        _check(0.0 < self.mlm_probability < 1.0, "data.mlm_probability", "a number strictly between 0 and 1", self.mlm_probability)
        _check(0.0 <= self.short_seq_prob <= 1.0, "data.short_seq_prob", "a number in [0, 1]", self.short_seq_prob)
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", "a number strictly between 0 and 1", self.val_fraction)
        _check(self.num_proc > 0, "data.num_proc", "a positive integer", self.num_proc)
        _check(self.val_tokens >= 0, "data.val_tokens", "0 (all) or a positive integer", self.val_tokens)
        _check(not self.streaming or self.val_tokens > 0, "data.val_tokens",
               "a positive number of tokens with data.streaming=true (a stream has no end to read to)", self.val_tokens)
        if not self.train_files and not self.dataset:
            raise ConfigError("data.train_files is empty: name the training files (or set data.dataset)")


@dataclass
class ClassifyConfig:
    """Fine-tuning on text classification (used when train.task is "classify")."""

    text_pair_column: str | None = None  # the second text of a pair (MRPC); None for single sentences
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # label names in id order; filled from the training data
    padding_side: str = "right"  # GPT runs classify the last real token under either side
    # the classifier reads "cls" (BERT's pooled [CLS]), "mean" or "max" (over the real tokens) or "last" (the last
    # real token; for a bidirectional recurrent stack also the backward direction at the first); None: what
    # model.init_from pools by (a sentence-transformers folder says), else cls for BERT and last for GPT and
    # recurrent stacks
    pooling: str | None = None

    def validate(self) -> None:
        _check(self.padding_side in ("left", "right"), "classify.padding_side", "'left' or 'right'", self.padding_side)
        _check(self.pooling in POOLINGS + (None,), "classify.pooling", "'cls', 'mean', 'last' or 'max'", self.pooling)


@dataclass
class Seq2SeqConfig:
    """Sequence-to-sequence pairs (train.task=seq2seq): one source and one target text per row of a table. A source
    with several targets (alternative pronunciations, translations) counts as right if the output matches any."""

    source_column: str = "source"
    target_column: str = "target"
    # feed the source one character per token (joined by spaces for the tokenizer; whitespace becomes "▁"):
    # with tokenizer.kind=word, letters in and symbols out, as grapheme-to-phoneme conversion needs
    source_chars: bool = False
    # greedy-decode this many validation sources at each evaluation for the decoded metrics (seq_error: share
    # of sources whose output matches none of their targets; token_error: edit distance / target length);
    # all of them at the last evaluation. 0: only at the last
    decode_examples: int = 500

    def validate(self) -> None:
        _check(bool(self.source_column) and bool(self.target_column), "seq2seq.source_column/target_column",
               "column names", (self.source_column, self.target_column))
        _check(self.decode_examples >= 0, "seq2seq.decode_examples", "0 or a positive integer", self.decode_examples)


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    # what is trained, a name from the registry in minilm/tasks: "causal_lm" (GPT), "masked_lm" (BERT
    # pretraining) or "classify" (fine-tuning). Unset (or "pretrain", its older name): the model's own
    # pretraining task, causal_lm or masked_lm by model.causal; "seq2seq" trains an encoder-decoder
    # (model.encoder_layers > 0) on source/target pairs. A loaded config always names its task.
    task: str | None = None
    epochs: int = 0  # > 0: train this many passes over the data (sets max_steps) and evaluate after each
    seed: int = 1337
    batch_size: int = 32  # sequences per process per micro-step
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # A step whose loss or gradient is not finite is skipped (no weight or optimizer change, checked on the
    # device without a host sync); the run stops with an error once more than this many were skipped (0: at the first).
    max_skipped_steps: int = 20
    eval_interval: int = 250  # steps between evaluations and checkpoints
    save_interval: int = 0  # also checkpoint every this many steps without evaluating (0: only at evaluations)
    eval_batches: int = 0  # batches per evaluation; 0 means the whole validation set
    mixed_precision: str = "auto"  # "auto" (bf16 on a GPU that has it, else fp32), "no", "bf16", "fp16"
    compile: bool = False  # torch.compile the model
    resume: bool = False  # continue the run in out_dir exactly where it stopped
    best_metric: str | None = None  # e.g. "val_accuracy" or "val_loss": model.safetensors keeps the best evaluation
    early_stopping: int = 0  # stop after this many evaluations without improving best_metric (0: never)
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # truncated backpropagation through time, for recurrent LMs: the training stream is cut into batch_size
    # contiguous lanes per process, walked in order, and each block starts from the state (detached) the
    # previous block ended with; false: independent blocks in a seeded order, each from a zero state
    tbptt: bool = False

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval"):
            _check(getattr(self, name) > 0, f"train.{name}", "a positive integer", getattr(self, name))
        _check(self.best_metric is None or self.best_metric.startswith("val_"), "train.best_metric",
               "a validation metric such as 'val_accuracy', 'val_f1', 'val_mcc' or 'val_loss'", self.best_metric)
        _check(not self.early_stopping or self.best_metric, "train.early_stopping", "only with train.best_metric set",
               self.early_stopping)
        for name in ("warmup_steps", "eval_batches", "threads", "epochs", "early_stopping", "max_skipped_steps",
                     "save_interval"):
            _check(getattr(self, name) >= 0, f"train.{name}", "zero or a positive integer", getattr(self, name))
        _check(self.lr > 0, "train.lr", "a positive number", self.lr)
        _check(0 <= self.min_lr <= self.lr, "train.min_lr", f"a number between 0 and train.lr={self.lr}", self.min_lr)
        _check(self.weight_decay >= 0, "train.weight_decay", "zero or a positive number", self.weight_decay)
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2", "numbers in [0, 1)", (self.beta1, self.beta2))
        _check(self.grad_clip >= 0, "train.grad_clip", "zero (off) or a positive number", self.grad_clip)
        _check(
            self.mixed_precision in ("auto", "no", "bf16", "fp16"),
            "train.mixed_precision", "'auto', 'no', 'bf16' or 'fp16'", self.mixed_precision,
        )
        _check(bool(self.out_dir), "train.out_dir", "a directory path", self.out_dir)


@dataclass
class LogConfig:
    wandb: str = "disabled"  # "online", "offline" (no login, no network) or "disabled"
    project: str = "minilm"
    run_name: str | None = None
    log_interval: int = 10  # steps between progress-bar / tracker updates
    tensorboard: bool = False  # also log to TensorBoard, in RUN_DIR/tensorboard (needs the tensorboard package)

    def validate(self) -> None:
        _check(self.wandb in ("online", "offline", "disabled"), "log.wandb", "'online', 'offline' or 'disabled'", self.wandb)
        _check(self.log_interval > 0, "log.log_interval", "a positive integer", self.log_interval)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        for section in SECTIONS:
            getattr(self, section).validate()
        if not (self.model.causal or self.tokenizer.kind == "wordpiece" or self.tokenizer.path or self.model.init_from):
            raise ConfigError(f"tokenizer.kind={self.tokenizer.kind!r} cannot build BERT inputs ([CLS], [SEP], [MASK]): "
                              "set tokenizer.kind=wordpiece for a bidirectional model")
        if self.data.streaming and self.train.epochs:
            raise ConfigError("train.epochs needs the data's length, which a stream does not have: set train.max_steps "
                              "instead, or data.streaming=false")
        if self.train.tbptt and not (self.model.recurrent and self.train.task == "causal_lm" and not self.data.streaming):
            raise ConfigError("train.tbptt carries a recurrent LM's state from block to block: it needs "
                              "train.task=causal_lm, a recurrent model.arch (rnn, lstm, gru or sru) and data.streaming=false")
        if self.model.causal and self.model.type_vocab_size:
            raise ConfigError("model.type_vocab_size is for bidirectional (BERT) models: set it to 0 or model.causal=false")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config)]

# Named architectures. Parameter counts (with GPT-2's 50,257-token vocabulary unless noted) come
# from `minilm presets`, which builds each model and counts.
PRESETS: dict[str, dict[str, Any]] = {
    # A few seconds per hundred steps on a laptop CPU; for smoke tests and the embedded default.
    "gpt-tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    # nanoGPT's config/train_shakespeare_char.py (10.7M parameters at a 65-character vocabulary).
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 355M
}
# BERT: bidirectional, post-LN with an embedding LayerNorm, segment embeddings, exact GELU (Devlin et al.; the
# small sizes are Turc et al. 2019). Counts at BERT's 30,522-token vocabulary, with pooler and MLM/NSP heads.
BERT_ARCH = dict(block_size=512, causal=False, norm="post", norm_eps=1e-12, embedding_norm=True, type_vocab_size=2,
             activation="gelu")
PRESETS.update({
    "bert-tiny": dict(BERT_ARCH, n_layer=2, n_head=2, n_embd=128),  # 4.4M
    "bert-mini": dict(BERT_ARCH, n_layer=4, n_head=4, n_embd=256),  # 11.3M
    "bert-small": dict(BERT_ARCH, n_layer=4, n_head=8, n_embd=512),  # 29.1M
    "bert-medium": dict(BERT_ARCH, n_layer=8, n_head=8, n_embd=512),  # 41.7M
    "bert-base": dict(BERT_ARCH, n_layer=12, n_head=12, n_embd=768),  # 110.1M
})


def preset_names() -> list[str]:
    return sorted(PRESETS)


# ---------------------------------------------------------------------------------------------
# Building a Config from nested dicts, with type checks


class _Loader(yaml.SafeLoader):
    """YAML with only true/false as booleans (YAML 1.2): YAML 1.1 also reads yes/no/on/off so, and a documented
    string value such as train.mixed_precision=no would arrive as False. Boolean keys still take them (_coerce)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "None")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; accept ints and numeric strings for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single path is a one-element list
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            return int(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")


def _build_section(section: str, cls: type, values: dict) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key {section}.{key}; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(raw: dict, config_cls: type = Config) -> Config:
    """Build and validate a config from nested dicts (`{"model": {...}, "train": {...}}`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    hints = typing.get_type_hints(config_cls)
    sections = [f.name for f in dataclasses.fields(config_cls)]
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section {name!r}; valid sections: {', '.join(sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"section {name!r} must be a mapping of keys, got {values!r}")
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown model.preset {preset!r}; choose one of: {', '.join(preset_names())}")
        model_raw = {**PRESETS[preset], **model_raw}
    raw = {**raw, "model": model_raw}
    built = {name: _build_section(name, hints[name], raw.get(name) or {}) for name in sections}
    if config_cls is Config and built["train"].task in (None, "pretrain"):
        task = "seq2seq" if built["model"].encoder_layers else "causal_lm" if built["model"].causal else "masked_lm"
        built["train"] = dataclasses.replace(built["train"], task=task)
    cfg = config_cls(**built)
    cfg.validate()
    return cfg


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ["model.n_layer=4", "data.train_files=[a.txt,b.txt]"] into a nested dict."""
    out: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. model.n_layer=4)")
        try:
            value = yaml.load(text, Loader=_Loader) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory: pass the path of a YAML file in it (see configs/), "
                          "or a run's config.json")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist: pass the path of a YAML file (see configs/)")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{at}: fix its syntax") from e
    return raw or {}


def load_config(path: str | Path | None, overrides: list[str] = (), config_cls: type = Config) -> Config:
    raw = read_yaml(path) if path is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (model:, train:, ...)")
    if "model_type" in raw and not isinstance(raw.get("model"), dict):
        raise ConfigError(f"{str(path)!r} is the config of a Hugging Face {raw['model_type']} model, not a minilm "
                          f"config: train from it with a YAML config (see configs/) and model.init_from="
                          f"{Path(path).parent}")
    given = parse_overrides(list(overrides))
    # train.epochs sets max_steps; a max_steps given on the command line means this many steps, so it wins
    # over the file's epochs (a 30-step try of a fine-tuning config stays 30 steps)
    file_train, cli_train = raw.get("train") or {}, given.get("train", {})
    if isinstance(file_train, dict) and file_train.get("epochs") and "max_steps" in cli_train and "epochs" not in cli_train:
        given["train"]["epochs"] = 0
    return config_from_dict(_deep_merge(raw, given), config_cls)

