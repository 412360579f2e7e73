"""Hugging Face interop: export runs as `transformers` folders (GPT -> GPT-2, BERT -> BertForPreTraining,
BERT classifier -> BertForSequenceClassification); import GPT-2 / BERT folders and minilm runs.

Only the file layout is involved (safetensors, json, tokenizers), so this module never imports `transformers`.
Each direction dispatches on the model kind through the `_EXPORTERS` / `_IMPORTERS` tables.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from minilm.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, load_run, read_config, read_tokenizer
from minilm.config import _BERT, ModelConfig
from minilm.errors import CheckpointError, ConfigError
from minilm.tokenizer import BERT_SPECIALS, CLS, EOT, MASK, PAD, SEP, UNK, load_tokenizer

State = dict[str, torch.Tensor]

# Our module names inside blocks.{i} -> GPT-2's inside h.{i}. GPT-2's Conv1D stores (in, out): the
# transpose of nn.Linear's (out, in) weight; LayerNorms and embeddings keep their layout.
_GPT2_BLOCK = {"norm1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
               "norm2": "ln_2", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
_CONV1D = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
_GPT2_ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are the same tanh approximation written three ways
_GPT2_ACT_IN = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved


def _gpt2_modules(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our module, GPT-2 module without the `transformer.` prefix, has a bias) for every weight GPT-2 holds."""
    out = [("transformer.tok_emb", "wte", False), ("transformer.pos_emb", "wpe", False)]
    for i in range(n_layer):
        out += [(f"transformer.blocks.{i}.{ours}", f"h.{i}.{theirs}", True) for ours, theirs in _GPT2_BLOCK.items()]
    return out + [("transformer.final_norm", "ln_f", True)]


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
# a fine-tuned BERT Classifier: our pooler and head -> BertForSequenceClassification's (it has no MLM / NSP heads)
_BERT_CLASSIFIER = [("pooler.dense", "bert.pooler.dense"), ("head", "classifier")]
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


# ---------------------------------------------------------------------------------------------
# Export


def _gpt2_check(cfg: ModelConfig) -> None:
    if cfg.norm != "pre":
        raise CheckpointError(f"model.norm={cfg.norm!r} cannot be exported: GPT-2 is pre-LN, so only "
                              "model.norm='pre' runs can be written as a GPT-2 folder")
    if cfg.embedding_norm:
        raise CheckpointError("model.embedding_norm=true cannot be exported: GPT-2 has no LayerNorm after the "
                              "embeddings, so only runs trained without it can be written as a GPT-2 folder")
    if cfg.num_labels:
        raise CheckpointError("a GPT classifier cannot be exported: GPT2ForSequenceClassification's head has no "
                              "bias and finds the last token by the pad id, unlike ours; export BERT classifiers "
                              "or GPT pretraining runs")


def _gpt2_export(cfg: ModelConfig, model: torch.nn.Module, tok: Tokenizer) -> tuple[dict[str, Any], State]:
    """GPT-2 config.json and weights equivalent to our CausalLM."""
    own = model.state_dict()
    # a sinusoidal table is a fixed wpe: writing it as GPT-2's learned table is exact for inference
    if cfg.position == "sinusoidal":
        own["transformer.pos_emb.weight"] = model.transformer.pos_table
    tensors: State = {}
    for ours, theirs, has_bias in _gpt2_modules(cfg.n_layer):
        w = own[f"{ours}.weight"]
        tensors[f"transformer.{theirs}.weight"] = (w.t() if theirs.split(".", 2)[-1] in _CONV1D else w).contiguous()
        if has_bias:  # bias=False is exactly GPT-2 with zero biases
            tensors[f"transformer.{theirs}.bias"] = own.get(f"{ours}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}  # no shared storage
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


def _bert_check(cfg: ModelConfig) -> None:
    if cfg.norm != "post":
        raise CheckpointError(f"model.norm={cfg.norm!r} cannot be exported: BERT is post-LN, so only bidirectional "
                              "runs with model.norm='post' (the bert-* presets) can be written as a BERT folder")
    if not cfg.embedding_norm:
        raise CheckpointError("model.embedding_norm=false cannot be exported: BERT has a LayerNorm after the "
                              "embeddings, so only runs trained with it (the bert-* presets) can be written as a BERT folder")


def _bert_export(cfg: ModelConfig, model: torch.nn.Module, tok: Tokenizer) -> tuple[dict[str, Any], State]:
    """BertForPreTraining config.json and weights equivalent to our MaskedLM (BertForSequenceClassification for
    a Classifier)."""
    own = model.state_dict()
    classifier = cfg.num_labels > 0
    C = cfg.n_embd
    if cfg.position == "sinusoidal":  # a fixed table is a learned one that never moved: exact for inference
        own["transformer.pos_emb.weight"] = model.transformer.pos_table
    n_types = cfg.type_vocab_size or 2
    if not cfg.type_vocab_size:  # no segment embeddings is BERT's with all-zero rows
        own["transformer.seg_emb.weight"] = torch.zeros(n_types, C)

    def bias(ours: str, n: int) -> torch.Tensor:  # bias=False is exactly BERT with zero biases
        return own.get(f"{ours}.bias", torch.zeros(n, dtype=own[f"{ours}.weight"].dtype))

    tensors: State = {}
    heads = _BERT_CLASSIFIER if classifier else [m for g in _BERT_HEADS.values() for m in g]
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
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}  # no shared storage
    arch = "BertForSequenceClassification" if classifier else "BertForPreTraining"
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
        config["classifier_dropout"] = cfg.classifier_dropout
    return config, tensors


# kind -> (check the config before loading weights, build config.json + weights)
_EXPORTERS: dict[str, tuple[Callable[[ModelConfig], None],
                            Callable[[ModelConfig, torch.nn.Module, Tokenizer], tuple[dict[str, Any], State]]]] = {
    "gpt2": (_gpt2_check, _gpt2_export),
    "bert": (_bert_check, _bert_export),
}


def _model_kind(cfg: ModelConfig) -> str:
    return "gpt2" if cfg.causal else "bert"


def _bert_normalizer(tok: Tokenizer) -> dict[str, Any]:
    """BertTokenizer's do_lower_case / strip_accents / tokenize_chinese_chars read off the tokenizer's normalizer."""
    norm = json.loads(tok.to_str()).get("normalizer") or {}
    parts = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    out = {"do_lower_case": False, "strip_accents": None, "tokenize_chinese_chars": False}
    for n in parts:
        if n.get("type") == "BertNormalizer":
            out = {"do_lower_case": bool(n.get("lowercase")), "strip_accents": n.get("strip_accents"),
                   "tokenize_chinese_chars": bool(n.get("handle_chinese_chars"))}
        elif n.get("type") == "Lowercase":
            out["do_lower_case"] = True
    return out


def _wordpiece_vocab(tok: Tokenizer) -> list[str] | None:
    """The vocabulary in id order (vocab.txt), or None when the ids are not 0..n-1 (vocab.txt cannot say that)."""
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))) or any("\n" in t or "\r" in t for t in by_id.values()):
        return None
    return [by_id[i] for i in range(len(by_id))]


def _tokenizer_config(tok: Tokenizer, block_size: int) -> dict[str, Any]:
    """What AutoTokenizer needs: BertTokenizerFast for a BERT WordPiece tokenizer, else tokenizer.json as it is."""
    if isinstance(tok.model, models.WordPiece) and all(tok.token_to_id(t) is not None for t in BERT_SPECIALS):
        return {"tokenizer_class": "BertTokenizerFast", **_bert_normalizer(tok), "model_max_length": block_size,
                "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK,
                "clean_up_tokenization_spaces": False}  # the WordPiece decoder already cleans up
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,  # otherwise decode() rewrites " ," to "," and breaks round trips
    }
    if tok.token_to_id(EOT) is not None:  # GPT-2's convention: one token is bos, eos and unk
        cfg.update(bos_token=EOT, eos_token=EOT, unk_token=EOT)
    return cfg


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"output directory {str(out_dir)!r} already exists and is not an empty directory: "
                              "choose a new directory (export never overwrites)")


def export_hf(run_dir: Path, out_dir: Path) -> None:
    """Write the run in `run_dir` as a Hugging Face folder that transformers' from_pretrained loads."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    full = read_config(run_dir)
    cfg = full.model  # refuse what cannot be exported before loading any weights
    check, build = _EXPORTERS[_model_kind(cfg)]
    check(cfg)
    _check_out_dir(out_dir)
    _, model, tok = load_run(run_dir)
    config, tensors = build(cfg, model, tok)
    if cfg.num_labels:  # label names in id order, as transformers' pipelines show them
        labels = full.classify.labels or [f"LABEL_{i}" for i in range(cfg.num_labels)]
        config.update(num_labels=cfg.num_labels, id2label={str(i): name for i, name in enumerate(labels)},
                      label2id={name: i for i, name in enumerate(labels)})

    # build everything in a sibling temp dir and rename it into place: a failure leaves no half-written folder
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})  # transformers requires the format tag
        shutil.copyfile(run_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        tok_cfg = _tokenizer_config(tok, cfg.block_size)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
        vocab = _wordpiece_vocab(tok) if tok_cfg["tokenizer_class"] == "BertTokenizerFast" else None
        if vocab is not None:  # the slow BertTokenizer (and other WordPiece readers) need vocab.txt
            (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        _check_out_dir(out_dir)  # again: something may have appeared there while we worked
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above; os.replace cannot replace a directory on every platform
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Import


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not readable JSON ({e}): restore it from its source") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object: restore it from its source")
    return raw


def _read_safetensors(path: Path) -> State:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({e}): it may be truncated") from e


def _hf_weights(folder: Path) -> State:
    """model.safetensors, or the shards an index lists; pickled weights are refused (unpickling runs code)."""
    if (folder / MODEL_FILE).is_file():
        return _read_safetensors(folder / MODEL_FILE)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        return {k: v for shard in shards for k, v in _read_safetensors(folder / shard).items()}
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(f"{str(folder)!r} holds only pickled weights ({pickles[0]}), which minilm will not "
                              "unpickle: convert it to safetensors (save_pretrained(out, safe_serialization=True))")
    raise CheckpointError(f"{str(folder)!r} has no {MODEL_FILE}: give a folder with safetensors weights")


def _special(value: Any, default: str) -> str:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with its "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


def _bert_vocab_tokenizer(folder: Path) -> Tokenizer:
    """BERT's WordPiece from vocab.txt (+ tokenizer_config.json), set up as tokenizers' BertWordPieceTokenizer."""
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointError(f"{str(folder)!r} has no tokenizer.json (nor vocab.txt): add the tokenizer files of the model")
    tc = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    specials = {name: _special(tc.get(f"{key}_token"), name)
                for key, name in (("pad", PAD), ("unk", UNK), ("cls", CLS), ("sep", SEP), ("mask", MASK))}
    try:
        tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=specials[UNK]))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise CheckpointError(f"{str(vocab)!r} could not be read ({e}): restore it") from e
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(tc.get("tokenize_chinese_chars", True)),
        strip_accents=tc.get("strip_accents"), lowercase=bool(tc.get("do_lower_case", True)))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    present = [t for t in specials.values() if tok.token_to_id(t) is not None]
    tok.add_special_tokens(present)  # never split, normalized or lowercased
    cls, sep = specials[CLS], specials[SEP]
    if tok.token_to_id(cls) is None or tok.token_to_id(sep) is None:
        raise CheckpointError(f"{str(vocab)!r} lacks {cls} or {sep}: give the vocab.txt of a BERT model")
    tok.post_processor = processors.TemplateProcessing(  # [CLS] A [SEP] B [SEP], segment ids 0 0 0 1 1
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def _hf_tokenizer(folder: Path, model_type: str) -> Tokenizer:
    if (folder / TOKENIZER_FILE).is_file():
        return load_tokenizer(folder / TOKENIZER_FILE)
    if model_type == "bert":
        return _bert_vocab_tokenizer(folder)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise CheckpointError(f"{str(folder)!r} has no tokenizer.json (nor vocab.json + merges.txt): add the tokenizer "
                              "files of the model")
    try:  # GPT-2's slow-tokenizer files: byte-level BPE with <|endoftext|> as its one special token
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise CheckpointError(f"{str(vocab)!r} / {str(merges)!r} could not be read ({e}): restore them") from e
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def _gpt2_import(raw: dict[str, Any], hf_state: State, where: Path) -> tuple[ModelConfig, State]:
    """Our ModelConfig and state dict from a GPT-2 config.json and weights (GPT2Model or GPT2LMHeadModel)."""
    act = raw.get("activation_function", "gelu_new")
    if act not in _GPT2_ACT_IN:
        raise CheckpointError(f"{str(where)!r}: activation_function={act!r} is not supported: "
                              f"minilm models use one of {', '.join(_GPT2_ACT_IN)}")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if raw.get(key, ok) != ok:
            raise CheckpointError(f"{str(where)!r}: {key}={raw[key]!r} has no minilm equivalent: "
                                  f"only GPT-2 models with {key}={ok} can be loaded")
    try:  # defaults are GPT2Config's: files saved by transformers may leave them out
        n_embd, n_inner = int(raw.get("n_embd", 768)), int(raw.get("n_inner") or 0)
        cfg = ModelConfig(vocab_size=int(raw.get("vocab_size", 50257)), block_size=int(raw.get("n_positions", 1024)),
                          n_layer=int(raw.get("n_layer", 12)), n_head=int(raw.get("n_head", 12)),
                          n_embd=n_embd, d_ff=0 if n_inner == 4 * n_embd else n_inner,  # 0 means 4 * n_embd
                          dropout=float(raw.get("resid_pdrop", 0.1)),
                          norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
                          activation=_GPT2_ACT_IN[act])
        cfg.validate()
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(where / CONFIG_FILE)!r} describes no valid GPT-2 model ({e}): restore it") from e

    # GPT2LMHeadModel prefixes `transformer.`, GPT2Model does not; the masks are buffers, not weights
    hf = {k.removeprefix("transformer."): v for k, v in hf_state.items() if not k.endswith(_GPT2_BUFFERS)}
    head = hf.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in hf and not torch.equal(head, hf["wte.weight"]):
        raise CheckpointError(f"{str(where)!r}: lm_head.weight differs from wte.weight, but minilm ties them: "
                              "only GPT-2 models with tied embeddings can be loaded")
    state: State = {}
    for ours, theirs, has_bias in _gpt2_modules(cfg.n_layer):
        for suffix in ("weight", "bias") if has_bias else ("weight",):
            t = hf.pop(f"{theirs}.{suffix}", None)
            if t is None:
                raise CheckpointError(f"{str(where)!r} lacks the weight {theirs}.{suffix}: "
                                      "the weights do not match config.json")
            conv = suffix == "weight" and theirs.split(".", 2)[-1] in _CONV1D
            state[f"{ours}.{suffix}"] = t.t().contiguous() if conv and t.dim() == 2 else t
    if hf:
        raise CheckpointError(f"{str(where)!r} has weights a plain GPT-2 lacks ({sorted(hf)[:3]}): "
                              "give a plain GPT-2 (GPT2Model / GPT2LMHeadModel) folder")
    return cfg, state


def _fresh_heads(cfg: ModelConfig, groups: list[str]) -> State:
    """Newly initialized head weights (as MaskedLM builds them; seeded, without touching the global RNG)."""
    from minilm.heads import MLMHead, Pooler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        modules = {"pooler": Pooler(cfg), "mlm": MLMHead(cfg), "nsp": torch.nn.Linear(cfg.n_embd, 2)}
    return {f"{g}.{k}": v for g in groups for k, v in modules[g].state_dict().items()}


def _bert_import(raw: dict[str, Any], hf_state: State, where: Path) -> tuple[ModelConfig, State]:
    """Our ModelConfig and MaskedLM state dict from a BERT config.json and weights.

    BertModel / BertForPreTraining / BertForMaskedLM / BertForSequenceClassification folders all load: heads the
    folder lacks (pooler, MLM, NSP) start from a fresh initialization, fine-tuning heads (classifier) are ignored.
    """
    act = raw.get("hidden_act", "gelu")
    if act not in _GPT2_ACT_IN:
        raise CheckpointError(f"{str(where)!r}: hidden_act={act!r} is not supported: "
                              f"minilm models use one of {', '.join(_GPT2_ACT_IN)}")
    for key, ok in (("position_embedding_type", "absolute"), ("is_decoder", False), ("add_cross_attention", False),
                    ("tie_word_embeddings", True)):
        if raw.get(key, ok) != ok:
            raise CheckpointError(f"{str(where)!r}: {key}={raw[key]!r} has no minilm equivalent: "
                                  f"only BERT models with {key}={ok!r} can be loaded")
    try:  # defaults are BertConfig's: files saved by transformers may leave them out
        n_embd, inner = int(raw.get("hidden_size", 768)), int(raw.get("intermediate_size", 3072))
        cfg = ModelConfig(**{**_BERT, "vocab_size": int(raw.get("vocab_size", 30522)),
                             "block_size": int(raw.get("max_position_embeddings", 512)),
                             "n_layer": int(raw.get("num_hidden_layers", 12)),
                             "n_head": int(raw.get("num_attention_heads", 12)), "n_embd": n_embd,
                             "d_ff": 0 if inner == 4 * n_embd else inner,  # 0 means 4 * n_embd
                             "dropout": float(raw.get("hidden_dropout_prob", 0.1)),
                             "norm_eps": float(raw.get("layer_norm_eps", 1e-12)),
                             "type_vocab_size": int(raw.get("type_vocab_size", 2)),
                             "activation": _GPT2_ACT_IN[act], "position": "learned"})
        cfg.validate()
        if cfg.type_vocab_size < 1:
            raise ValueError("type_vocab_size must be at least 1")
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(where / CONFIG_FILE)!r} describes no valid BERT model ({e}): restore it") from e

    # BertModel saves without the `bert.` prefix, the BertFor* models with it; TF-converted files say gamma/beta
    hf: State = {}
    for k, v in hf_state.items():
        k = k if k.startswith(("bert.", "cls.")) or k.startswith(_BERT_IGNORED) else f"bert.{k}"
        if k.endswith(".gamma") or k.endswith(".beta"):
            k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
        if not (k.startswith(_BERT_IGNORED) or k.removeprefix("bert.").endswith(_BERT_BUFFERS)):
            hf[k] = v

    def take(theirs: str) -> torch.Tensor:
        t = hf.pop(theirs, None)
        if t is None:
            raise CheckpointError(f"{str(where)!r} lacks the weight {theirs}: the weights do not match config.json")
        return t

    state: State = {}
    for ours, theirs, has_bias in _bert_modules(cfg.n_layer):
        for suffix in ("weight", "bias") if has_bias else ("weight",):
            state[f"{ours}.{suffix}"] = take(f"{theirs}.{suffix}")
    for i in range(cfg.n_layer):
        for suffix in ("weight", "bias"):
            parts = [take(f"bert.encoder.layer.{i}.attention.self.{n}.{suffix}") for n in _BERT_QKV]
            state[f"transformer.blocks.{i}.attn.qkv.{suffix}"] = torch.cat(parts)

    # the heads, each as a whole or not at all; the MLM decoder must be the (tied) word embeddings
    decoder, decoder_bias = hf.pop("cls.predictions.decoder.weight", None), hf.pop("cls.predictions.decoder.bias", None)
    if decoder is not None and not torch.equal(decoder, state["transformer.tok_emb.weight"]):
        raise CheckpointError(f"{str(where)!r}: cls.predictions.decoder.weight differs from the word embeddings, but "
                              "minilm ties them: only BERT models with tied embeddings can be loaded")
    out_bias = hf.pop("cls.predictions.bias", decoder_bias)
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
    if hf:
        raise CheckpointError(f"{str(where)!r} has weights a BERT model lacks ({sorted(hf)[:3]}): give a "
                              "BertModel / BertForPreTraining / BertForMaskedLM folder")
    if missing:
        state.update(_fresh_heads(cfg, missing))
        warnings.warn(f"{where}: no weights for the {', '.join(missing)} head(s); they start from a fresh "
                      "initialization", stacklevel=3)
    return cfg, state


# Hugging Face model_type -> importer
_IMPORTERS: dict[str, Callable[[dict[str, Any], State, Path], tuple[ModelConfig, State]]] = {
    "gpt2": _gpt2_import, "bert": _bert_import}


def _check_state(cfg: ModelConfig, state: State, where: Path) -> None:
    """Names and shapes must be exactly what build_model(cfg) expects (checked on the meta device: no memory)."""
    from minilm.heads import build_model

    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    except NotImplementedError:
        return  # no head for this kind yet: nothing to compare against
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{str(where)!r}: weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}): restore the files written together")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{str(where)!r}: {k} has shape {tuple(state[k].shape)} but the config implies "
                                  f"{shape}: restore the files written together")


def load_pretrained(path: Path) -> tuple[ModelConfig, State, Tokenizer]:
    """Config, weights (our names) and tokenizer of a minilm run directory or a local Hugging Face GPT-2 / BERT folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model.init_from={str(path)!r} is not a directory: give a minilm run directory "
                              "or a local Hugging Face GPT-2 / BERT folder")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}: give a minilm run directory or a Hugging Face "
                              "folder")
    raw = _read_json(path / CONFIG_FILE)
    if isinstance(raw.get("model"), dict):  # a minilm run: its config has sections
        cfg = read_config(path).model
        if not (path / MODEL_FILE).is_file():
            raise CheckpointError(f"{str(path)!r} has no {MODEL_FILE}: the run saved no weights (did training finish?)")
        state = _read_safetensors(path / MODEL_FILE)
        tok = read_tokenizer(path, cfg.vocab_size)
    else:
        model_type = raw.get("model_type")
        if model_type not in _IMPORTERS:
            raise CheckpointError(f"{str(path)!r} holds a model_type={model_type!r} model: "
                                  f"only {', '.join(_IMPORTERS)} Hugging Face folders (or minilm runs) can be loaded")
        cfg, state = _IMPORTERS[model_type](raw, _hf_weights(path), path)
        tok = _hf_tokenizer(path, model_type)
        if tok.get_vocab_size() > cfg.vocab_size:
            raise CheckpointError(f"{str(path)!r}: the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                                  f"{cfg.vocab_size}: use the tokenizer saved with this model")
    _check_state(cfg, state, path)
    return cfg, state, tok
