"""minilm GPT runs <-> Hugging Face GPT-2 (GPT2LMHeadModel / GPT2Model) folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.errors import CheckpointError, ConfigError
from minilm.hf_files import activation, refuse_parts, plain, refuse_settings, take
from minilm.runfiles import CONFIG_FILE, Weights
from minilm.models.transformer.config import TransformerConfig
from minilm.tokenizer import EOT

# Our module names inside blocks.{i} -> GPT-2's inside h.{i}. GPT-2's Conv1D stores (in, out): the
# transpose of nn.Linear's (out, in) weight; LayerNorms and embeddings keep their layout.
_GPT2_BLOCK = {"norm1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
               "norm2": "ln_2", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


_CONV1D = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}


_GPT2_ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved


def _gpt2_modules(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our module, GPT-2 module without the `transformer.` prefix, has a bias) for every weight GPT-2 holds."""
    out = [("transformer.tok_emb", "wte", False), ("transformer.pos_emb", "wpe", False)]
    for i in range(n_layer):
        out += [(f"transformer.blocks.{i}.{ours}", f"h.{i}.{theirs}", True) for ours, theirs in _GPT2_BLOCK.items()]
    return out + [("transformer.final_norm", "ln_f", True)]


def check(full: Config) -> None:
    cfg = full.model
    refuse_parts(cfg, "GPT-2")
    if cfg.norm != "pre":
        raise CheckpointError(f"model.norm={cfg.norm!r} cannot be exported: GPT-2 is pre-LN, so only "
                              "model.norm='pre' runs can be written as a GPT-2 folder")
    if cfg.embedding_norm:
        raise CheckpointError("model.embedding_norm=true cannot be exported: GPT-2 has no LayerNorm after the "
                              "embeddings, so only runs trained without it can be written as a GPT-2 folder")
    if full.train.task == "classify":
        raise CheckpointError("a GPT classifier cannot be exported: GPT2ForSequenceClassification's head has no "
                              "bias and finds the last token by the pad id, unlike ours; export BERT classifiers "
                              "or GPT pretraining runs")
    if full.train.task == "tag":
        raise CheckpointError("a GPT tagger cannot be exported: only BERT taggers are written (as "
                              "BertForTokenClassification); export a bidirectional tagger or a GPT pretraining run")


def export(full: Config, model: torch.nn.Module, tok: Tokenizer) -> tuple[dict[str, Any], Weights]:
    """GPT-2 config.json and weights equivalent to our CausalLM."""
    cfg, own = full.model, model.state_dict()
    # a sinusoidal table is a fixed wpe: writing it as GPT-2's learned table is exact for inference
    if cfg.position == "sinusoidal":
        own["transformer.pos_emb.weight"] = model.transformer.pos_emb.table()
    tensors: Weights = {}
    for ours, theirs, has_bias in _gpt2_modules(cfg.n_layer):
        w = own[f"{ours}.weight"]
        tensors[f"transformer.{theirs}.weight"] = (w.t() if theirs.split(".", 2)[-1] in _CONV1D else w).contiguous()
        if has_bias:  # bias=False is exactly GPT-2 with zero biases
            tensors[f"transformer.{theirs}.bias"] = own.get(f"{ours}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    tensors = plain(tensors)
    eot = tok.token_to_id(EOT)
    config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff or None,  # None: 4 * n_embd, as ours
        "activation_function": _GPT2_ACT_OUT[cfg.activation], "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
        # written even when None: GPT2Config's default 50256 would point outside a small vocabulary
        "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
    }
    return config, tensors


def _config(raw: dict[str, Any], where: Path) -> TransformerConfig:
    act = activation(raw, "activation_function", "gelu_new", where)
    refuse_settings(raw, {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                          "add_cross_attention": False, "tie_word_embeddings": True}, "GPT-2", where)
    try:  # defaults are GPT2Config's: files saved by transformers may leave them out
        n_embd, n_inner = int(raw.get("n_embd", 768)), int(raw.get("n_inner") or 0)
        cfg = TransformerConfig(vocab_size=int(raw.get("vocab_size", 50257)),
                                block_size=int(raw.get("n_positions", 1024)),
                                n_layer=int(raw.get("n_layer", 12)), n_head=int(raw.get("n_head", 12)),
                                n_embd=n_embd, d_ff=0 if n_inner == 4 * n_embd else n_inner,  # 0 means 4 * n_embd
                                dropout=float(raw.get("resid_pdrop", 0.1)),
                                norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)), activation=act)
        cfg.validate()
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(where / CONFIG_FILE)!r} describes no valid GPT-2 model ({e}): restore it") from e
    return cfg


def load(raw: dict[str, Any], hf_state: Weights, where: Path) -> tuple[TransformerConfig, Weights]:
    """Our TransformerConfig and state dict from a GPT-2 config.json and weights (GPT2Model or GPT2LMHeadModel)."""
    cfg = _config(raw, where)
    # GPT2LMHeadModel prefixes `transformer.`, GPT2Model does not; the masks are buffers, not weights
    hf = {k.removeprefix("transformer."): v for k, v in hf_state.items() if not k.endswith(_GPT2_BUFFERS)}
    head = hf.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in hf and not torch.equal(head, hf["wte.weight"]):
        raise CheckpointError(f"{str(where)!r}: lm_head.weight differs from wte.weight, but minilm ties them: "
                              "only GPT-2 models with tied embeddings can be loaded")
    state: Weights = {}
    for ours, theirs, has_bias in _gpt2_modules(cfg.n_layer):
        for suffix in ("weight", "bias") if has_bias else ("weight",):
            t = take(hf, f"{theirs}.{suffix}", where)
            conv = suffix == "weight" and theirs.split(".", 2)[-1] in _CONV1D
            state[f"{ours}.{suffix}"] = t.t().contiguous() if conv and t.dim() == 2 else t
    if hf:
        raise CheckpointError(f"{str(where)!r} has weights a plain GPT-2 lacks ({sorted(hf)[:3]}): "
                              "give a plain GPT-2 (GPT2Model / GPT2LMHeadModel) folder")
    return cfg, state
