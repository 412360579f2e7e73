"""minilm encoder-decoder (seq2seq) runs <-> Hugging Face BART folders (BartForConditionalGeneration).

BART is the post-LN encoder-decoder with a LayerNorm after each side's embeddings, learned positions (its table
starts with two extra rows: position p is row p + 2), one token table for both sides tied to the output, and
GELU. Runs with those settings map onto it exactly; our fused projections are its separate q / k / v.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.seq2seq import end_id
from minilm.errors import CheckpointError, ConfigError
from minilm.hf_files import activation, refuse_parts, plain, refuse_settings, take
from minilm.runfiles import CONFIG_FILE, Weights
from minilm.models.transformer.config import TransformerConfig

_OFFSET = 2  # BartLearnedPositionalEmbedding reads row position + 2
_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_EPS = 1e-5  # BART's LayerNorms use torch's default eps, which it does not let a config change

# inside a layer, ours -> BART's (nn.Linear / LayerNorm with the same layout)
_LAYER = {"attn.proj": "self_attn.out_proj", "norm1": "self_attn_layer_norm", "mlp.fc": "fc1", "mlp.proj": "fc2",
          "norm2": "final_layer_norm"}
_CROSS = {"cross_attn.q": "encoder_attn.q_proj", "cross_attn.proj": "encoder_attn.out_proj",
          "norm_cross": "encoder_attn_layer_norm"}
# fused projections: ours -> BART's parts, in the order they are stacked
_FUSED = {"attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "cross_attn.kv": ("encoder_attn.k_proj", "encoder_attn.v_proj")}
_TIED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")


def check(full: Config) -> None:
    cfg = full.model
    refuse_parts(cfg, "BART")
    wanted = {"norm": "post", "embedding_norm": True, "share_embeddings": True, "norm_eps": _EPS}
    for key, ok in wanted.items():
        if getattr(cfg, key) != ok:
            raise CheckpointError(f"model.{key}={getattr(cfg, key)!r} cannot be exported: BART has {key}={ok!r}, so "
                                  "only encoder-decoders trained with it (as configs/g2p-cmudict.yaml is) can be "
                                  "written as a BART folder")


def _modules(cfg: TransformerConfig) -> list[tuple[str, str]]:
    """(our module, BART's) for everything but the token table, the position tables and the fused projections."""
    out = [("encoder.emb_norm", "model.encoder.layernorm_embedding"),
           ("decoder.emb_norm", "model.decoder.layernorm_embedding")]
    for side, n, names in (("encoder", cfg.encoder_layers, _LAYER), ("decoder", cfg.n_layer, {**_LAYER, **_CROSS})):
        out += [(f"{side}.blocks.{i}.{ours}", f"model.{side}.layers.{i}.{theirs}")
                for i in range(n) for ours, theirs in names.items()]
    return out


def _fused(cfg: TransformerConfig) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.n_layer)):
        for i in range(n):
            for ours, parts in _FUSED.items():
                if side == "decoder" or ours == "attn.qkv":
                    out.append((f"{side}.blocks.{i}.{ours}", tuple(f"model.{side}.layers.{i}.{p}" for p in parts)))
    return out


def export(full: Config, model: torch.nn.Module, tok: Tokenizer) -> tuple[dict[str, Any], Weights]:
    """BartForConditionalGeneration config.json and weights equivalent to our Seq2Seq."""
    cfg, own = full.model, model.state_dict()
    C = cfg.n_embd

    def weight_bias(ours: str) -> tuple[torch.Tensor, torch.Tensor]:  # bias=False is BART with zero biases
        w = own[f"{ours}.weight"]
        return w, own.get(f"{ours}.bias", torch.zeros(w.shape[0], dtype=w.dtype))

    tensors: Weights = {}
    for ours, theirs in _modules(cfg):
        tensors[f"{theirs}.weight"], tensors[f"{theirs}.bias"] = weight_bias(ours)
    for ours, parts in _fused(cfg):
        w, b = weight_bias(ours)
        for name, pw, pb in zip(parts, w.split(C), b.split(C)):
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = pw, pb
    for side in ("encoder", "decoder"):
        stack = getattr(model, side)
        table = stack.pos_emb.table()  # a fixed (sinusoidal) table is a learned one that never moved
        tensors[f"model.{side}.embed_positions.weight"] = torch.cat([table.new_zeros(_OFFSET, C), table])
    emb = own["decoder.tok_emb.weight"]
    tensors["model.shared.weight"] = emb
    for name in _TIED:  # tied in BART too; written for loaders that do not tie
        tensors[name] = emb
    tensors["final_logits_bias"] = emb.new_zeros(1, cfg.vocab_size)
    end = end_id(tok)
    config = {
        "model_type": "bart", "architectures": ["BartForConditionalGeneration"], "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size, "d_model": C, "max_position_embeddings": cfg.block_size,
        "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.n_layer,
        "encoder_attention_heads": cfg.n_head, "decoder_attention_heads": cfg.n_head,
        "encoder_ffn_dim": cfg.ffn_dim, "decoder_ffn_dim": cfg.ffn_dim, "activation_function": _ACT_OUT[cfg.activation],
        "dropout": cfg.dropout, "attention_dropout": cfg.dropout, "activation_dropout": 0.0,
        "scale_embedding": False, "init_std": 0.02, "tie_word_embeddings": True,
        # the decoder starts from and ends with our one end token; padding reuses it (masked everywhere)
        "bos_token_id": end, "eos_token_id": end, "pad_token_id": end, "decoder_start_token_id": end,
        "forced_bos_token_id": None, "forced_eos_token_id": None,
    }
    return config, plain(tensors)


def _config(raw: dict[str, Any], where: Path) -> TransformerConfig:
    act = activation(raw, "activation_function", "gelu", where)
    refuse_settings(raw, {"scale_embedding": False, "normalize_before": False, "add_final_layer_norm": False,
                          "normalize_embedding": True, "static_position_embeddings": False,
                          "tie_word_embeddings": True}, "BART", where)
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if raw.get(a, 16 if "heads" in a else 4096) != raw.get(b, 16 if "heads" in b else 4096):
            raise CheckpointError(f"{str(where)!r}: {a} and {b} differ, but minilm's encoder and decoder share them: "
                                  "only BART models with equal ones can be loaded")
    try:  # defaults are BartConfig's
        d, ffn = int(raw.get("d_model", 1024)), int(raw.get("encoder_ffn_dim", 4096))
        cfg = TransformerConfig(vocab_size=int(raw.get("vocab_size", 50265)),
                                block_size=int(raw.get("max_position_embeddings", 1024)),
                                n_layer=int(raw.get("decoder_layers", 12)),
                                encoder_layers=int(raw.get("encoder_layers", 12)),
                                n_head=int(raw.get("encoder_attention_heads", 16)), n_embd=d,
                                d_ff=0 if ffn == 4 * d else ffn, dropout=float(raw.get("dropout", 0.1)), norm="post",
                                norm_eps=_EPS, embedding_norm=True, activation=act, causal=True)
        cfg.validate()
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(where / CONFIG_FILE)!r} describes no valid BART model ({e}): restore it") from e
    return cfg


def load(raw: dict[str, Any], hf_state: Weights, where: Path) -> tuple[TransformerConfig, Weights]:
    """Our TransformerConfig and state dict from a BART config.json and weights (BartForConditionalGeneration)."""
    cfg = _config(raw, where)
    hf = dict(hf_state)
    bias = hf.pop("final_logits_bias", None)
    if bias is not None and bias.any():
        raise CheckpointError(f"{str(where)!r}: final_logits_bias is not zero, and minilm's output has no bias: only "
                              "BART models with a zero final_logits_bias can be loaded")
    emb = take(hf, "model.shared.weight", where)
    for name in _TIED:
        t = hf.pop(name, None)
        if t is not None and not torch.equal(t, emb):
            raise CheckpointError(f"{str(where)!r}: {name} differs from model.shared.weight, but minilm ties them: "
                                  "only BART models with tied embeddings can be loaded")
    state: Weights = {"decoder.tok_emb.weight": emb}
    for side in ("encoder", "decoder"):
        table = take(hf, f"model.{side}.embed_positions.weight", where)
        state[f"{side}.pos_emb.weight"] = table[_OFFSET:_OFFSET + cfg.block_size]
    for ours, theirs in _modules(cfg):
        for suffix in ("weight", "bias"):
            state[f"{ours}.{suffix}"] = take(hf, f"{theirs}.{suffix}", where)
    for ours, parts in _fused(cfg):
        for suffix in ("weight", "bias"):
            state[f"{ours}.{suffix}"] = torch.cat([take(hf, f"{p}.{suffix}", where) for p in parts])
    if hf:
        raise CheckpointError(f"{str(where)!r} has weights a plain BART lacks ({sorted(hf)[:3]}): give a "
                              "BartForConditionalGeneration folder")
    return cfg, state
