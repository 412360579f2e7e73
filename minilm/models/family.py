"""What a model family declares (`Family`, one registry entry in minilm/models), and the decoding protocol
(`Decoder`) through which sampling and beam search drive any family's models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tokenizers import Tokenizer

from minilm.config import Config, ModelConfig
from minilm.models.outputs import CarriedState, HeadConfig
from minilm.runfiles import Weights


class Decoder(Protocol):
    """Next-token logits, (rows, V), for `rows` sequences being decoded together (the samples of a batch, or the
    beams of one search). A family keeps what makes the next step cheap: a Transformer its keys and values, a
    recurrent stack its state."""

    max_len: int | None  # the longest output the model holds (None: no limit, or a window that slides)
    window: int | None  # the most tokens a language model reads at once (None: a state that reads any length)

    def start(self, prefix: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The prompt (or a seq2seq decoder's start token), (rows, T) -> logits for the token after it.
        A language model's prompts of different lengths come right-padded with their `lengths` (rows,) (with the
        cache only, at most `window` tokens each): the logits follow each row's last real token, and `step`
        continues each row from there (scoring several continuations of one prompt)."""
        ...

    def step(self, seq: torch.Tensor) -> torch.Tensor:
        """The sequences so far, (rows, T'), whose newest token the decoder has not read -> the next logits.
        After a start with `lengths`, only the newest token is read, at each row's own position."""
        ...

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i] (beam search keeps the best children of each beam)."""
        ...


# (task model, rows, use_cache, source (rows or 1, S) for a seq2seq model, its mask) -> a Decoder
MakeDecoder = Callable[[torch.nn.Module, int, bool, torch.Tensor | None, torch.Tensor | None], Decoder]


@dataclass(frozen=True)
class HFExport:
    """A transformers layout a run can be written as: the check before any weight is read, and the writer."""

    check: Callable[[Config], None]
    build: Callable[[Config, torch.nn.Module, Tokenizer], tuple[dict[str, Any], Weights]]


@dataclass(frozen=True)
class HFImport:
    """A transformers folder's model_type read as this family's model, for the task its weights serve."""

    load: Callable[[dict[str, Any], Weights, Path], tuple[ModelConfig, Weights]]
    task: str


@dataclass(frozen=True)
class Family:
    """A model family: everything the rest of minilm needs to know about it, declared in one place."""

    name: str
    config: type[ModelConfig]  # its model section: the shared fields and its own, validated
    archs: tuple[str, ...]  # the model.arch values it builds
    # task name -> the task model: a head over the family's stack returning outputs.TaskOutput
    tasks: dict[str, Callable[[ModelConfig, HeadConfig], torch.nn.Module]]
    backbone: tuple[str, ...]  # state-dict prefixes of the stack, which a model started from another task's keeps
    decoder: MakeDecoder | None = None  # how its language and seq2seq models decode; None: they do not
    # refuses a model this family cannot train for a task: (model, task name, whether the task reads left context only)
    check_task: Callable[[ModelConfig, str, bool | None], None] = lambda model, task, causal: None
    # the state carried between blocks (train.tbptt), rebuilt from a checkpoint's tensors; None: it carries none
    state_from_tensors: Callable[[dict[str, torch.Tensor], torch.device], CarriedState] | None = None
    checkpointing: Callable[[torch.nn.Module], None] | None = None  # turns on gradient checkpointing in a task model
    hf_export: Callable[[Config], HFExport] | None = None  # the transformers layout of a run, or a refusal
    hf_import: dict[str, HFImport] = field(default_factory=dict)  # transformers model_type -> how to read it
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # named model sections
