"""Typed configuration: one dataclass per concern, named presets, YAML + dotted overrides.

Precedence, lowest first: dataclass defaults -> `model.preset` -> YAML file -> `key=value` overrides.
Every field is checked when the config is built; a mistake raises ConfigError with one line that
names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import yaml

from minilm.errors import ConfigError


def check_field(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


POOLINGS = ("cls", "mean", "last", "max")


@dataclass
class ModelConfig:
    """What every model family shares. `arch` picks the family (and the cell within it); each family's own settings
    live in its subclass, in its package under minilm/models/, and are refused on a model of another family."""

    preset: str | None = None  # a name from a family's presets; its values sit under anything set explicitly
    # the family: "transformer", a recurrent stack of "rnn", "lstm", "gru" or "sru", or a tree-structured network,
    # "tree_lstm", "tree_lstm_childsum" or "tree_rnn"
    arch: str = "transformer"
    vocab_size: int = 0  # 0: take it from the tokenizer
    # the longest sequence read in one piece: a Transformer's position table; the training block of the others
    block_size: int = 256
    n_layer: int = 4
    n_embd: int = 128  # the token embedding's width
    dropout: float = 0.0
    # > 0: an encoder-decoder (train.task=seq2seq): an encoder of this many layers reads the source, and the
    # n_layer layers decode the target, reading the encoder's output
    encoder_layers: int = 0
    share_embeddings: bool = True  # encoder-decoder: the encoder reads the decoder's token table (one vocabulary)
    init_from: str | None = None  # a minilm run directory or a local Hugging Face GPT-2/BERT/BART folder

    family: ClassVar[str] = ""  # the family's name, set by each subclass
    # the model reads data.text_column as bracketed trees (the tree family): the data side checks each row's
    # brackets, naming the file and row of a malformed one, writes them as binary brackets, and cuts none
    reads_trees: ClassVar[bool] = False

    def validate(self) -> None:
        for name in ("block_size", "n_layer", "n_embd"):
            check_field(getattr(self, name) > 0, f"model.{name}", "a positive integer", getattr(self, name))
        check_field(self.vocab_size >= 0, "model.vocab_size", "0 (from the tokenizer) or a positive integer", self.vocab_size)
        check_field(0.0 <= self.dropout < 1.0, "model.dropout", "a number in [0, 1)", self.dropout)
        check_field(self.encoder_layers >= 0, "model.encoder_layers", "0 (no encoder) or a positive integer",
                    self.encoder_layers)

    def check(self, cfg: Config) -> None:
        """What this model needs of the other sections (a family adds its own checks)."""

    def for_tokenizer(self, token_id: Callable[[str], int | None]) -> ModelConfig:
        """The section with what it takes from the run's tokenizer (`token_id`: a token's id, or None) besides
        vocab_size: nothing, unless a family reads some tokens itself (the tree family, its brackets)."""
        return self

    def default_task(self) -> str:
        """The task a config that names none trains: the model's own pretraining."""
        return "seq2seq" if self.encoder_layers else "causal_lm"

    def default_pooling(self) -> str:
        """What a classifier over this model reads unless classify.pooling says otherwise."""
        return "last"

    def decode_row_bytes(self, width: int = 0, attention: int = 0) -> int:
        """About what decoding one row (a beam, a source of a batch) holds, fp32: keys and values (or states) of
        `width` (default n_embd) at every position of every layer, `attention` more floats per position and layer,
        a few rows of logits. A family passes its own width and attention."""
        per_position = (self.n_layer + self.encoder_layers) * (6 * (width or self.n_embd) + attention)
        return 4 * (self.block_size * per_position + 4 * self.vocab_size)

    def describe(self) -> str:
        """The model in a few words, for `minilm info`."""
        layers = f"{self.encoder_layers} + {self.n_layer}" if self.encoder_layers else f"{self.n_layer}"
        return f"a {self.arch} stack, {layers} layers x {self.n_embd} wide"


# model.arch -> its family's config class, and the families' named presets: filled by each family when
# minilm.models is imported (families import this module, never the other way round)
MODEL_CONFIGS: dict[str, type[ModelConfig]] = {}
_PRESETS: dict[str, dict[str, Any]] = {}  # name -> a model section (with its arch)


def _families() -> None:
    """Load the model families, which register here: once, on the first need of a model section (not at import,
    so that the command line's --help does not wait for torch)."""
    import minilm.models  # noqa: F401


def presets() -> dict[str, dict[str, Any]]:
    """The named model sections of every family."""
    _families()
    return _PRESETS


def register_model_config(cls: type[ModelConfig], archs: tuple[str, ...],
                          presets: dict[str, dict[str, Any]] | None = None) -> None:
    for arch in archs:
        MODEL_CONFIGS[arch] = cls
    for name, values in (presets or {}).items():
        _PRESETS[name] = {"arch": archs[0], **values}


def model_config_class(arch: Any) -> type[ModelConfig]:
    _families()
    if arch not in MODEL_CONFIGS:
        raise ConfigError(f"model.arch={arch!r} is not allowed: choose one of {', '.join(map(repr, MODEL_CONFIGS))}")
    return MODEL_CONFIGS[arch]


def model_field_owner(key: str) -> str | None:
    """The family whose config has the field `key` (for naming it when it is set on another)."""
    return next((cls.family for cls in MODEL_CONFIGS.values() if key in {f.name for f in dataclasses.fields(cls)}),
                None)


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
        check_field(self.kind in ("char", "word", "bpe", "wordpiece"), "tokenizer.kind", "'char', 'word', 'bpe' or 'wordpiece'",
                    self.kind)
        check_field(self.vocab_size > 0, "tokenizer.vocab_size", "a positive integer", self.vocab_size)
        check_field(self.sample_bytes > 0, "tokenizer.sample_bytes", "a positive integer", self.sample_bytes)


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # files, folders or globs; .txt .json .jsonl .csv .tsv .parquet
    val_files: list[str] = field(default_factory=list)  # empty: hold out the last val_fraction of the training stream
    val_fraction: float = 0.1
    dataset: str | None = None  # a Hugging Face hub dataset name (needs a network)
    text_column: str = "text"  # the text (for classification: the first text of each example)
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
    # classify / tag / seq2seq: batches of examples of close lengths (sorted within windows of 64 shuffled
    # batches, the batches then shuffled), so little of a batch is padding: far faster where lengths vary widely
    group_by_length: bool = False

    def validate(self) -> None:
        check_field(0.0 < self.mlm_probability < 1.0, "data.mlm_probability", "a number strictly between 0 and 1", self.mlm_probability)
        check_field(0.0 <= self.short_seq_prob <= 1.0, "data.short_seq_prob", "a number in [0, 1]", self.short_seq_prob)
        check_field(0.0 < self.val_fraction < 1.0, "data.val_fraction", "a number strictly between 0 and 1", self.val_fraction)
        check_field(self.val_tokens >= 0, "data.val_tokens", "0 (all) or a positive integer", self.val_tokens)
        check_field(not self.streaming or self.val_tokens > 0, "data.val_tokens",
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
    dropout: float = 0.1  # before the classifier's linear layer

    def validate(self) -> None:
        check_field(self.padding_side in ("left", "right"), "classify.padding_side", "'left' or 'right'", self.padding_side)
        check_field(0.0 <= self.dropout < 1.0, "classify.dropout", "a number in [0, 1)", self.dropout)
        check_field(self.pooling in POOLINGS + (None,), "classify.pooling", "'cls', 'mean', 'last' or 'max'", self.pooling)


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
        check_field(bool(self.source_column) and bool(self.target_column), "seq2seq.source_column/target_column",
                    "column names", (self.source_column, self.target_column))
        check_field(self.decode_examples >= 0, "seq2seq.decode_examples", "0 or a positive integer", self.decode_examples)


@dataclass
class TagConfig:
    """Sequence labelling (train.task=tag): a label for every word. The data are CoNLL-U files (.conllu), JSON(L) rows
    with a list of words and a list of labels, or columns of `word<TAB>label` (any other extension; the label is the
    last column, a blank line ends a sentence)."""

    column: str = "upos"  # CoNLL-U: the column the labels come from (upos, xpos, deprel, feats or lemma)
    tokens_column: str = "tokens"  # JSON(L): the list of words of a row
    tags_column: str = "tags"  # JSON(L): the list of labels of a row, one per word
    labels: list[str] = field(default_factory=list)  # label names in id order; filled from the training data
    # span (chunk, entity) precision/recall/F1 as conlleval counts them, for B-/I-/E-/S- label schemes;
    # None: when every label is O or of that form
    spans: bool | None = None
    dropout: float = 0.1  # before the tagger's linear layer

    def validate(self) -> None:
        check_field(0.0 <= self.dropout < 1.0, "tag.dropout", "a number in [0, 1)", self.dropout)
        check_field(self.column in CONLLU_COLUMNS, "tag.column", ", ".join(map(repr, CONLLU_COLUMNS)), self.column)
        check_field(bool(self.tokens_column) and bool(self.tags_column), "tag.tokens_column/tags_column",
                    "column names", (self.tokens_column, self.tags_column))


# CoNLL-U's columns that can label a word -> their index (ID, FORM, LEMMA, UPOS, XPOS, FEATS, HEAD, DEPREL, DEPS, MISC)
CONLLU_COLUMNS = {"upos": 3, "xpos": 4, "deprel": 7, "feats": 5, "lemma": 2}


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    # what is trained, a name from the registry in minilm/tasks: "causal_lm" (GPT), "masked_lm" (BERT
    # pretraining) or "classify" (fine-tuning). Unset (or "pretrain", its older name): the model's own
    # pretraining task, causal_lm or masked_lm by model.causal; "seq2seq" trains an encoder-decoder
    # (model.encoder_layers > 0) on source/target pairs; "tag" labels every word. A loaded config always names its task.
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
    mixed_precision: str = "auto"  # "auto" (bf16 where it pays: minilm/precision.py), "no", "bf16", "fp16"
    compile: bool = False  # torch.compile the model
    resume: bool = False  # continue the run in out_dir exactly where it stopped
    best_metric: str | None = None  # e.g. "val_accuracy" or "val_loss": model.safetensors keeps the best evaluation
    early_stopping: int = 0  # stop after this many evaluations without improving best_metric (0: never)
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # truncated backpropagation through time, for recurrent LMs: the training stream is cut into batch_size
    # contiguous lanes per process, walked in order, and each block starts from the state (detached) the
    # previous block ended with; false: independent blocks in a seeded order, each from a zero state
    tbptt: bool = False
    label_smoothing: float = 0.0  # training loss of the LM and seq2seq tasks (the original Transformer used 0.1)
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward to save memory

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval"):
            check_field(getattr(self, name) > 0, f"train.{name}", "a positive integer", getattr(self, name))
        check_field(self.best_metric is None or self.best_metric.startswith("val_"), "train.best_metric",
                    "a validation metric such as 'val_accuracy', 'val_f1', 'val_mcc' or 'val_loss'", self.best_metric)
        check_field(not self.early_stopping or self.best_metric, "train.early_stopping", "only with train.best_metric set",
                    self.early_stopping)
        for name in ("warmup_steps", "eval_batches", "threads", "epochs", "early_stopping", "max_skipped_steps",
                     "save_interval"):
            check_field(getattr(self, name) >= 0, f"train.{name}", "zero or a positive integer", getattr(self, name))
        check_field(self.lr > 0, "train.lr", "a positive number", self.lr)
        check_field(0 <= self.min_lr <= self.lr, "train.min_lr", f"a number between 0 and train.lr={self.lr}", self.min_lr)
        check_field(self.weight_decay >= 0, "train.weight_decay", "zero or a positive number", self.weight_decay)
        check_field(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2", "numbers in [0, 1)", (self.beta1, self.beta2))
        check_field(self.grad_clip >= 0, "train.grad_clip", "zero (off) or a positive number", self.grad_clip)
        check_field(
            self.mixed_precision in ("auto", "no", "bf16", "fp16"),
            "train.mixed_precision", "'auto', 'no', 'bf16' or 'fp16'", self.mixed_precision,
        )
        check_field(bool(self.out_dir), "train.out_dir", "a directory path", self.out_dir)
        check_field(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "a number in [0, 1)", self.label_smoothing)


@dataclass
class LogConfig:
    wandb: str = "disabled"  # "online", "offline" (no login, no network) or "disabled"
    project: str = "minilm"
    run_name: str | None = None
    log_interval: int = 10  # steps between progress-bar / tracker updates
    tensorboard: bool = False  # also log to TensorBoard, in RUN_DIR/tensorboard (needs the tensorboard package)

    def validate(self) -> None:
        check_field(self.wandb in ("online", "offline", "disabled"), "log.wandb", "'online', 'offline' or 'disabled'", self.wandb)
        check_field(self.log_interval > 0, "log.log_interval", "a positive integer", self.log_interval)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    tag: TagConfig = field(default_factory=TagConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.data.streaming and self.train.epochs:
            raise ConfigError("train.epochs needs the data's length, which a stream does not have: set train.max_steps "
                              "instead, or data.streaming=false")
        if self.data.group_by_length and self.train.task in ("causal_lm", "masked_lm"):
            raise ConfigError(f"data.group_by_length groups examples of different lengths, and train.task="
                              f"{self.train.task} trains on blocks of one length: set it to false")
        if self.train.tbptt and (self.train.task != "causal_lm" or self.data.streaming):
            raise ConfigError("train.tbptt carries a recurrent LM's state from block to block: it needs "
                              "train.task=causal_lm and data.streaming=false")
        self.model.check(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config)]

def preset_names() -> list[str]:
    return sorted(presets())


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
    if origin is dict:  # str keys (a YAML key 0 is the string "0"), checked values
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, item) for k, v in value.items()}
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


def build_section(section: str, cls: type, values: dict) -> Any:
    """A dataclass from a mapping: an unknown key is refused naming the valid ones, each value checked by its type."""
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


# model keys of earlier versions that now live elsewhere -> where (a config.json written then is upgraded by
# upgrade_saved; a YAML file that still sets one is told where it went)
MOVED = {"pooling": "classify.pooling", "classifier_dropout": "classify.dropout",
         "label_smoothing": "train.label_smoothing", "gradient_checkpointing": "train.gradient_checkpointing",
         "num_labels": "classify.labels (their number)"}


def _model_section(values: dict) -> ModelConfig:
    """The model section as its family's config class, chosen by model.arch (a preset's values underneath)."""
    preset = values.get("preset")
    if preset is not None:
        if preset not in presets():
            raise ConfigError(f"unknown model.preset {preset!r}; choose one of: {', '.join(preset_names())}")
        arch = presets()[preset]["arch"]
        if values.get("arch", arch) != arch:
            raise ConfigError(f"model.preset={preset} is a model.arch={arch} preset, not {values['arch']}: drop one")
        values = {**presets()[preset], **values}
    cls = model_config_class(values.get("arch", ModelConfig.arch))
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key in MOVED:
            raise ConfigError(f"model.{key} is now {MOVED[key]}: set that instead")
        owner = model_field_owner(key)
        if key not in names and owner is not None:
            raise ConfigError(f"model.{key} is a setting of {owner} models, and model.arch={values.get('arch', cls.arch)} "
                              f"is a {cls.family} model: drop it (or choose a {owner} model.arch)")
    return build_section("model", cls, values)


def config_from_dict(raw: dict) -> Config:
    """Build and validate a config from nested dicts (`{"model": {...}, "train": {...}}`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    hints = typing.get_type_hints(Config)
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}; valid sections: {', '.join(SECTIONS)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"section {name!r} must be a mapping of keys, got {values!r}")
    built = {name: build_section(name, hints[name], raw.get(name) or {}) for name in SECTIONS if name != "model"}
    built["model"] = _model_section(dict(raw.get("model") or {}))
    if built["train"].task in (None, "pretrain"):
        built["train"] = dataclasses.replace(built["train"], task=built["model"].default_task())
    cfg = Config(**built)
    cfg.validate()
    return cfg


def upgrade_saved(raw: dict) -> dict:
    """A run's config.json as this version reads it. Those written before model families had their own settings
    hold every field of every family, and the classifier's and training settings that have since moved: each
    goes where it lives now, and the fields of other families (ignored by the model then) are dropped. One
    written when model.arch=sru was the 2018 unit (no model.sru_version then) says so."""
    raw = _flat_layout(raw)
    model = raw.get("model")
    if isinstance(model, dict) and model.get("arch") == "sru" and "sru_version" not in model:
        raw = {**raw, "model": {**model, "sru_version": 2018}}  # every run written since names its version
    return raw


def _flat_layout(raw: dict) -> dict:
    """A config.json written before model families had their own settings, in today's sections."""
    model = raw.get("model")
    if not isinstance(model, dict) or "num_labels" not in model:  # written by a later version
        return raw
    model, out = dict(model), {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    classify, train = out.setdefault("classify", {}), out.setdefault("train", {})
    classify.setdefault("dropout", model.pop("classifier_dropout", 0.1))
    train.setdefault("label_smoothing", model.pop("label_smoothing", 0.0))
    train.setdefault("gradient_checkpointing", model.pop("gradient_checkpointing", False))
    pooling = model.pop("pooling", "")
    if classify.get("pooling") is None and pooling:
        classify["pooling"] = pooling
    model.pop("num_labels", None)
    out.get("data", {}).pop("num_proc", None)
    arch = model.get("arch", ModelConfig.arch)
    names = {f.name for f in dataclasses.fields(model_config_class(arch))}
    if presets().get(model.get("preset"), {}).get("arch", arch) != arch:
        names.discard("preset")  # another family's preset, whose values were all written out
    out["model"] = {k: v for k, v in model.items() if k in names}
    return out


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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    raw = read_yaml(path) if path is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (model:, train:, ...)")
    if "model_type" in raw and not isinstance(raw.get("model"), dict):
        raise ConfigError(f"{str(path)!r} is the config of a Hugging Face {raw['model_type']} model, not a minilm "
                          f"config: train from it with a YAML config (see configs/) and model.init_from="
                          f"{Path(path).parent}")
    if Path(path or "").suffix == ".json":  # a run's config.json (the documented resume command); configs are YAML
        raw = upgrade_saved(raw)
    given = parse_overrides(list(overrides))
    # train.epochs sets max_steps; a max_steps given on the command line means this many steps, so it wins
    # over the file's epochs (a 30-step try of a fine-tuning config stays 30 steps)
    file_train, cli_train = raw.get("train") or {}, given.get("train", {})
    if isinstance(file_train, dict) and file_train.get("epochs") and "max_steps" in cli_train and "epochs" not in cli_train:
        given["train"]["epochs"] = 0
    if isinstance(raw.get("model"), dict) and "arch" in given.get("model", {}):
        raw = {**raw, "model": _for_arch(raw["model"], given["model"]["arch"], str(path))}
    return config_from_dict(_deep_merge(raw, given))


def _for_arch(model: dict, arch: Any, path: str) -> dict:
    """A file's model section when the command line switches model.arch to another family: its preset's and its own
    shared settings (depth, width, block, dropout) stay; those of the file's family are dropped, with a note."""
    _families()
    if arch not in MODEL_CONFIGS or model_config_class(arch) is _section_class(model):
        return model  # the same family (or an unknown arch, refused by name later)
    preset = presets().get(model.get("preset"), {})
    values = {k: v for k, v in {**preset, **model}.items() if k not in ("preset", "arch")}
    names = {f.name for f in dataclasses.fields(model_config_class(arch))}
    dropped = [k for k in values if k not in names and model_field_owner(k) is not None]
    if dropped:
        print(f"minilm: note: model.arch={arch} leaves out {path}'s {', '.join(f'model.{k}' for k in dropped)} "
              f"({_section_class(model).family} settings)", file=sys.stderr)
    return {k: v for k, v in values.items() if k not in dropped}


def _section_class(model: dict) -> type[ModelConfig] | None:
    arch = model.get("arch", presets().get(model.get("preset"), {}).get("arch", ModelConfig.arch))
    return MODEL_CONFIGS.get(arch)

