"""THE FAMILY REGISTRY: each model family is one package here, registered under its name; `model.arch` picks one.

    transformer   GPT, BERT and the encoder-decoder: one Block, embeddings -> blocks -> final norm
    recurrent     RNN / LSTM / GRU / SRU stacks, one or two directions, with attention encoder-decoders
    tree          recursive networks (Tree-RNN, Tree-LSTM) over bracketed trees, composed level by level

A family declares its config, task models, decoding, carried state and Hugging Face adapters in one `Family`
record (models/family.py). Everything outside a family's package reaches it through the functions below, never
by its class names; a family never imports another. `register` adds a family from outside the package.
"""

from __future__ import annotations

import torch

from minilm.config import Config, ModelConfig, register_model_config
from minilm.errors import ConfigError
from minilm.models.family import Decoder, Family, HFExport, HFImport
from minilm.models.outputs import HeadConfig

FAMILIES: dict[str, Family] = {}

__all__ = ["FAMILIES", "Decoder", "Family", "HFExport", "HFImport", "HeadConfig", "build_model", "check_task",
           "count_params", "decoder", "family_of", "register", "task_model"]


def register(family: Family) -> None:
    """Add a family: its model.arch values, config class and presets become known to the config loader."""
    taken = [a for a in family.archs for f in FAMILIES.values() if a in f.archs and f.name != family.name]
    if taken:
        raise ValueError(f"model.arch={taken[0]!r} already belongs to another family")
    FAMILIES[family.name] = family
    register_model_config(family.config, family.archs, family.presets)


def family_of(model: ModelConfig) -> Family:
    for family in FAMILIES.values():
        if model.arch in family.archs:
            return family
    raise ConfigError(f"model.arch={model.arch!r} belongs to no registered model family")


def check_task(model: ModelConfig, task: str, causal: bool | None = None) -> None:
    """Refuse, in one line and before any work, a task the model's family has no model for or cannot train this
    model for (`causal`: whether the task reads left context only; None: either)."""
    family = family_of(model)
    if task not in family.tasks:
        others = [f.name for f in FAMILIES.values() if task in f.tasks]
        raise ConfigError(f"train.task={task} is not something a {family.name} model (model.arch={model.arch}) can be "
                          f"trained for; it can do {', '.join(family.tasks)}"
                          + (f": choose a {' or '.join(others)} model.arch for {task}" if others else ""))
    family.check_task(model, task, causal)


def task_model(model: ModelConfig, task: str, heads: HeadConfig = HeadConfig()) -> torch.nn.Module:
    """The task model of `task` over the family's stack (untrained)."""
    check_task(model, task)
    return family_of(model).tasks[task](model, heads)


def build_model(cfg: Config) -> torch.nn.Module:
    """The task model cfg trains: train.task over the model section's family, with the heads' settings."""
    return task_model(cfg.model, cfg.train.task, HeadConfig.of(cfg))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def decoder(model: torch.nn.Module, rows: int, use_cache: bool = True, source: torch.Tensor | None = None,
            source_mask: torch.Tensor | None = None) -> Decoder:
    """The family's decoder for a language or seq2seq task model (`model.cfg` names its arch)."""
    family = family_of(model.cfg)
    if family.decoder is None:
        raise ConfigError(f"{family.name} models (model.arch={model.cfg.arch}) do not generate text")
    return family.decoder(model, rows, use_cache, source, source_mask)


from minilm.models import recurrent, transformer, tree  # noqa: E402  (the families use the records above)

for _family in (transformer.FAMILY, recurrent.FAMILY, tree.FAMILY):
    register(_family)
