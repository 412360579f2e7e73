"""minilm BERT runs <-> Hugging Face BERT folders (BertForPreTraining, BertModel, BertForMaskedLM,
BertForSequenceClassification, BertForTokenClassification)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.errors import CheckpointError, ConfigError
from minilm.hf_files import activation, refuse_parts, plain, refuse_settings, take
from minilm.runfiles import CONFIG_FILE, Weights
from minilm.models.transformer.config import TransformerConfig
from minilm.models.transformer.config import BERT_ARCH
from minilm.models.transformer.heads import MLMHead, Pooler
from minilm.tokenizer import PAD

# Our module names inside blocks.{i} -> BERT's inside encoder.layer.{i}; all nn.Linear / LayerNorm with the same
# layout. Our fused attn.qkv (out dim 3C, ordered q, k, v) is BERT's attention.self.query / key / value.
_BERT_BLOCK = {"attn.proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
               "mlp.fc": "intermediate.dense", "mlp.proj": "output.dense", "norm2": "output.LayerNorm"}


_BERT_QKV = ("query", "key", "value")


_BERT_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


# the heads: our module -> BertForPreTraining's, in groups that a BERT folder has or lacks as a whole
_BERT_HEADS = {
    "pooler": [("pooler.dense", "bert.pooler.dense")],  # BertForMaskedLM has no pooler
    "mlm": [("mlm.dense", "cls.predictions.transform.dense"), ("mlm.norm", "cls.predictions.transform.LayerNorm")],
    "nsp": [("nsp", "cls.seq_relationship")],
}


# a fine-tuned BERT Classifier: our pooler and head -> BertForSequenceClassification's (it has no MLM / NSP heads);
# a Tagger: our head -> BertForTokenClassification's (which has no pooler either)
_BERT_CLASSIFIER = [("pooler.dense", "bert.pooler.dense"), ("head", "classifier")]
_BERT_TAGGER = [("head", "classifier")]


_BERT_IGNORED = ("classifier.", "qa_outputs.")  # fine-tuning heads of BertFor{SequenceClassification,QuestionAnswering}


_BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # buffers older transformers saved


def _bert_modules(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our module, BertForPreTraining module, has a bias) for the encoder, except the split qkv."""
    out = [("transformer.tok_emb", "bert.embeddings.word_embeddings", False),
           ("transformer.pos_emb", "bert.embeddings.position_embeddings", False),
           ("transformer.seg_emb", "bert.embeddings.token_type_embeddings", False),
           ("transformer.emb_norm", "bert.embeddings.LayerNorm", True)]
    for i in range(n_layer):
        out += [(f"transformer.blocks.{i}.{ours}", f"bert.encoder.layer.{i}.{theirs}", True)
                for ours, theirs in _BERT_BLOCK.items()]
    return out


def check(full: Config) -> None:
    cfg = full.model
    refuse_parts(cfg, "BERT")
    if full.train.task == "classify" and full.classify.pooling not in (None, "cls"):
        raise CheckpointError(f"a classifier with classify.pooling={full.classify.pooling} cannot be exported: "
                              "BertForSequenceClassification reads the pooled [CLS]; fine-tune with classify.pooling=cls "
                              "to export")
    if cfg.norm != "post":
        raise CheckpointError(f"model.norm={cfg.norm!r} cannot be exported: BERT is post-LN, so only bidirectional "
                              "runs with model.norm='post' (the bert-* presets) can be written as a BERT folder")
    if not cfg.embedding_norm:
        raise CheckpointError("model.embedding_norm=false cannot be exported: BERT has a LayerNorm after the "
                              "embeddings, so only runs trained with it (the bert-* presets) can be written as a BERT folder")


def export(full: Config, model: torch.nn.Module, tok: Tokenizer) -> tuple[dict[str, Any], Weights]:
    """BertForPreTraining config.json and weights equivalent to our MaskedLM (BertForSequenceClassification for
    a Classifier, BertForTokenClassification for a Tagger, each with its label names)."""
    cfg, own = full.model, model.state_dict()
    task = full.train.task
    classifier = task in ("classify", "tag")
    C = cfg.n_embd
    if cfg.position == "sinusoidal":  # a fixed table is a learned one that never moved: exact for inference
        own["transformer.pos_emb.weight"] = model.transformer.pos_emb.table()
    n_types = cfg.type_vocab_size or 2
    if not cfg.type_vocab_size:  # no segment embeddings is BERT's with all-zero rows
        own["transformer.seg_emb.weight"] = torch.zeros(n_types, C)

    def bias(ours: str, n: int) -> torch.Tensor:  # bias=False is exactly BERT with zero biases
        return own.get(f"{ours}.bias", torch.zeros(n, dtype=own[f"{ours}.weight"].dtype))

    tensors: Weights = {}
    heads = {"classify": _BERT_CLASSIFIER, "tag": _BERT_TAGGER}.get(task) or [m for g in _BERT_HEADS.values() for m in g]
    for ours, theirs, has_bias in _bert_modules(cfg.n_layer) + [m + (True,) for m in heads]:
        w = own[f"{ours}.weight"]
        tensors[f"{theirs}.weight"] = w
        if has_bias:
            tensors[f"{theirs}.bias"] = bias(ours, w.shape[0])
    for i in range(cfg.n_layer):
        qkv = f"transformer.blocks.{i}.attn.qkv"
        for name, w, b in zip(_BERT_QKV, own[f"{qkv}.weight"].split(C), bias(qkv, 3 * C).split(C)):
            tensors[f"bert.encoder.layer.{i}.attention.self.{name}.weight"] = w
            tensors[f"bert.encoder.layer.{i}.attention.self.{name}.bias"] = b
    if not classifier:
        # the decoder is tied to the word embeddings and shares the output bias; written for loaders that do not tie
        tensors["cls.predictions.bias"] = tensors["cls.predictions.decoder.bias"] = own["mlm.bias"]
        tensors["cls.predictions.decoder.weight"] = own["transformer.tok_emb.weight"]
    tensors = plain(tensors)
    arch = {"classify": "BertForSequenceClassification", "tag": "BertForTokenClassification"}.get(task,
                                                                                                  "BertForPreTraining")
    config = {
        "model_type": "bert", "architectures": [arch],
        "vocab_size": cfg.vocab_size, "hidden_size": C, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "intermediate_size": cfg.ffn_dim, "hidden_act": _BERT_ACT_OUT[cfg.activation],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.block_size, "type_vocab_size": n_types, "layer_norm_eps": cfg.norm_eps,
        "initializer_range": 0.02, "position_embedding_type": "absolute", "is_decoder": False,
        "pad_token_id": tok.token_to_id(PAD), "tie_word_embeddings": True,
    }
    if classifier:
        config["classifier_dropout"] = full.tag.dropout if task == "tag" else full.classify.dropout
    return config, tensors


def _fresh_heads(cfg: TransformerConfig, groups: list[str]) -> Weights:
    """Newly initialized head weights (as MaskedLM builds them; seeded, without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        modules = {"pooler": Pooler(cfg), "mlm": MLMHead(cfg), "nsp": torch.nn.Linear(cfg.n_embd, 2)}
    return {f"{g}.{k}": v for g in groups for k, v in modules[g].state_dict().items()}


def _config(raw: dict[str, Any], where: Path) -> TransformerConfig:
    act = activation(raw, "hidden_act", "gelu", where)
    refuse_settings(raw, {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
                          "tie_word_embeddings": True}, "BERT", where)
    try:  # defaults are BertConfig's: files saved by transformers may leave them out
        n_embd, inner = int(raw.get("hidden_size", 768)), int(raw.get("intermediate_size", 3072))
        cfg = TransformerConfig(**{**BERT_ARCH, "vocab_size": int(raw.get("vocab_size", 30522)),
                             "block_size": int(raw.get("max_position_embeddings", 512)),
                             "n_layer": int(raw.get("num_hidden_layers", 12)),
                             "n_head": int(raw.get("num_attention_heads", 12)), "n_embd": n_embd,
                             "d_ff": 0 if inner == 4 * n_embd else inner,  # 0 means 4 * n_embd
                             "dropout": float(raw.get("hidden_dropout_prob", 0.1)),
                             "norm_eps": float(raw.get("layer_norm_eps", 1e-12)),
                             "type_vocab_size": int(raw.get("type_vocab_size", 2)),
                             "activation": act, "position": "learned"})
        cfg.validate()
        if cfg.type_vocab_size < 1:
            raise ValueError("type_vocab_size must be at least 1")
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(where / CONFIG_FILE)!r} describes no valid BERT model ({e}): restore it") from e
    return cfg


def _bert_names(hf_state: Weights) -> Weights:
    """BertForPreTraining's names: BertModel saves without the `bert.` prefix, the BertFor* models with it;
    TF-converted files say gamma/beta; fine-tuning heads and old buffers are dropped."""
    hf: Weights = {}
    for k, v in hf_state.items():
        k = k if k.startswith(("bert.", "cls.")) or k.startswith(_BERT_IGNORED) else f"bert.{k}"
        if k.endswith(".gamma") or k.endswith(".beta"):
            k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
        if not (k.startswith(_BERT_IGNORED) or k.removeprefix("bert.").endswith(_BERT_BUFFERS)):
            hf[k] = v
    return hf


def _encoder(hf: Weights, cfg: TransformerConfig, where: Path) -> Weights:
    """The stack's weights, taken out of `hf`; BERT's separate query / key / value become our fused qkv."""
    state: Weights = {}
    for ours, theirs, has_bias in _bert_modules(cfg.n_layer):
        for suffix in ("weight", "bias") if has_bias else ("weight",):
            state[f"{ours}.{suffix}"] = take(hf, f"{theirs}.{suffix}", where)
    for i in range(cfg.n_layer):
        for suffix in ("weight", "bias"):
            parts = [take(hf, f"bert.encoder.layer.{i}.attention.self.{n}.{suffix}", where) for n in _BERT_QKV]
            state[f"transformer.blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts)
    return state


def _heads(hf: Weights, embedding: torch.Tensor, where: Path) -> tuple[Weights, list[str]]:
    """The pooler, MLM and NSP heads the folder has, each as a whole or not at all, and the names of those it
    lacks; the MLM decoder must be the (tied) word embeddings."""
    decoder, decoder_bias = hf.pop("cls.predictions.decoder.weight", None), hf.pop("cls.predictions.decoder.bias", None)
    if decoder is not None and not torch.equal(decoder, embedding):
        raise CheckpointError(f"{str(where)!r}: cls.predictions.decoder.weight differs from the word embeddings, but "
                              "minilm ties them: only BERT models with tied embeddings can be loaded")
    out_bias = hf.pop("cls.predictions.bias", decoder_bias)
    state: Weights = {}
    missing = []
    for group, modules in _BERT_HEADS.items():
        names = [(f"{ours}.{s}", f"{theirs}.{s}") for ours, theirs in modules for s in ("weight", "bias")]
        if group == "mlm":
            names.append(("mlm.bias", None))
        found = {o: (out_bias if t is None else hf.pop(t, None)) for o, t in names}
        if all(v is None for v in found.values()):
            missing.append(group)
        elif any(v is None for v in found.values()):
            lacking = next(t or "cls.predictions.bias" for o, t in names if found[o] is None)
            raise CheckpointError(f"{str(where)!r} lacks the weight {lacking}: the weights do not match config.json")
        else:
            state.update(found)
    return state, missing


def load(raw: dict[str, Any], hf_state: Weights, where: Path) -> tuple[TransformerConfig, Weights]:
    """Our TransformerConfig and MaskedLM state dict from a BERT config.json and weights.

    BertModel / BertForPreTraining / BertForMaskedLM / BertForSequenceClassification folders all load: heads the
    folder lacks (pooler, MLM, NSP) start from a fresh initialization, fine-tuning heads (classifier) are ignored.
    """
    cfg = _config(raw, where)
    hf = _bert_names(hf_state)
    state = _encoder(hf, cfg, where)
    heads, missing = _heads(hf, state["transformer.tok_emb.weight"], where)
    state.update(heads)
    if hf:
        raise CheckpointError(f"{str(where)!r} has weights a BERT model lacks ({sorted(hf)[:3]}): give a "
                              "BertModel / BertForPreTraining / BertForMaskedLM folder")
    if missing:
        state.update(_fresh_heads(cfg, missing))
        warnings.warn(f"{where}: no weights for the {', '.join(missing)} head(s); they start from a fresh "
                      "initialization", stacklevel=3)
    return cfg, state
