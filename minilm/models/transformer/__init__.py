"""The Transformer family: GPT (causal LM), BERT (masked LM + next sentence) and the original encoder-decoder,
all one stack of one Block; classifiers and taggers over GPT or BERT; GPT-2, BERT and BART folders in and out."""

from __future__ import annotations

import torch

from minilm.config import Config
from minilm.errors import ConfigError
from minilm.models.family import Family, HFExport, HFImport
from minilm.models.transformer import hf_bart, hf_bert, hf_gpt2
from minilm.models.transformer.config import PRESETS, TransformerConfig
from minilm.models.transformer.decode import TransformerDecoder
from minilm.models.transformer.heads import CausalLM, Classifier, MaskedLM, Seq2Seq, Tagger
from minilm.models.transformer.model import Transformer


def _check_task(model: TransformerConfig, task: str, causal: bool | None) -> None:
    if causal is not None and model.causal != causal:
        other = "causal_lm" if model.causal else "masked_lm"
        raise ConfigError(f"train.task={task} needs model.causal={str(causal).lower()}; this model is "
                          f"{'causal (GPT)' if model.causal else 'bidirectional (BERT)'}: set train.task={other} "
                          "or classify")


def _checkpointing(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Transformer):
            module.checkpointing = True


def _hf_export(cfg: Config) -> HFExport:
    """A GPT run is written as GPT-2, an encoder-decoder as BART, a BERT (or BERT classifier) as BERT."""
    layout = hf_bart if cfg.model.encoder_layers else hf_gpt2 if cfg.model.causal else hf_bert
    return HFExport(layout.check, layout.export)


FAMILY = Family(
    "transformer", TransformerConfig, ("transformer",),
    tasks={"causal_lm": CausalLM, "masked_lm": MaskedLM, "classify": Classifier, "seq2seq": Seq2Seq, "tag": Tagger},
    backbone=("transformer.",), decoder=TransformerDecoder, check_task=_check_task, checkpointing=_checkpointing,
    hf_export=_hf_export,
    hf_import={"gpt2": HFImport(hf_gpt2.load, "causal_lm"), "bert": HFImport(hf_bert.load, "masked_lm"),
               "bart": HFImport(hf_bart.load, "seq2seq")},
    presets=PRESETS,
)
