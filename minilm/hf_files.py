"""Reading Hugging Face model folders: config.json, safetensors weights (never pickles) and tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from minilm.errors import CheckpointError
from minilm.runfiles import MODEL_FILE, TOKENIZER_FILE, Weights, read_safetensors
from minilm.tokenizer import BERT_SPECIALS, CLS, EOT, MASK, PAD, SEP, UNK, bert_post_processor, load_tokenizer

# Hugging Face activation names -> ours: "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are the same tanh approximation
ACT_IN = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def activation(raw: dict[str, Any], key: str, default: str, where: Path) -> str:
    """Our activation for a config's `key`, refused with one line when minilm has none like it."""
    act = raw.get(key, default)
    if act not in ACT_IN:
        raise CheckpointError(f"{str(where)!r}: {key}={act!r} is not supported: minilm models use one of "
                              f"{', '.join(ACT_IN)}")
    return ACT_IN[act]


def refuse_settings(raw: dict[str, Any], required: dict[str, Any], family: str, where: Path) -> None:
    """Settings minilm has no equivalent for must keep the value that matches ours."""
    for key, ok in required.items():
        if raw.get(key, ok) != ok:
            raise CheckpointError(f"{str(where)!r}: {key}={raw[key]!r} has no minilm equivalent: "
                                  f"only {family} models with {key}={ok!r} can be loaded")


def refuse_parts(cfg: Any, layout: str) -> None:
    """A Transformer part chosen by name (model.norm_type, model.mlp) that a transformers layout lacks cannot be
    written as one."""
    for key, standard in (("norm_type", "layernorm"), ("mlp", "standard")):
        if getattr(cfg, key) != standard:
            raise CheckpointError(f"model.{key}={getattr(cfg, key)!r} cannot be exported: a {layout} folder has the "
                                  f"{standard!r} one; such runs are read by minilm itself")


def take(weights: Weights, name: str, where: Path) -> torch.Tensor:
    """Remove and return a weight the config says the folder must hold."""
    t = weights.pop(name, None)
    if t is None:
        raise CheckpointError(f"{str(where)!r} lacks the weight {name}: the weights do not match config.json")
    return t


def plain(tensors: Weights) -> Weights:
    """Detached CPU copies that share no storage (safetensors refuses shared tensors)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}


def read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not readable JSON ({e}): restore it from its source") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object: restore it from its source")
    return raw


def read_weights(folder: Path) -> Weights:
    """model.safetensors, or the shards an index lists; pickled weights are refused (unpickling runs code)."""
    if (folder / MODEL_FILE).is_file():
        return read_safetensors(folder / MODEL_FILE)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        return {k: v for shard in shards for k, v in read_safetensors(folder / shard).items()}
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
    tc = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
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
    tok.post_processor = bert_post_processor(tok, cls, sep)
    return tok


def hf_tokenizer(folder: Path, model_type: str) -> Tokenizer:
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


def wordpiece_vocab(tok: Tokenizer) -> list[str] | None:
    """The vocabulary in id order (vocab.txt), or None when the ids are not 0..n-1 (vocab.txt cannot say that)."""
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))) or any("\n" in t or "\r" in t for t in by_id.values()):
        return None
    return [by_id[i] for i in range(len(by_id))]


def exported_tokenizer(tok: Tokenizer, source_chars: bool) -> Tokenizer:
    """The run's tokenizer as transformers should use it: the same ids, and what minilm does before encoding done by
    the tokenizer itself. A character vocabulary maps a character its text lacked to <|endoftext|> (declared the
    unk token too, GPT-2's convention) where tokenizers would raise; with seq2seq.source_chars the input is split
    one character per token, whitespace as "▁", as minilm feeds sources."""
    raw = json.loads(tok.to_str())
    model = raw["model"]
    if model["type"] == "WordLevel" and model.get("unk_token") not in model["vocab"] and EOT in model["vocab"]:
        model["unk_token"] = EOT
    out = Tokenizer.from_str(json.dumps(raw))
    if source_chars:
        out.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(r"\s"), "▁")])
        out.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return out


def tokenizer_config(tok: Tokenizer, block_size: int) -> dict[str, Any]:
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
