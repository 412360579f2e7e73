"""Hugging Face interop: export runs as `transformers` folders (GPT -> GPT-2, BERT -> BertForPreTraining,
BERT classifier -> BertForSequenceClassification, encoder-decoder -> BartForConditionalGeneration); import
GPT-2 / BERT / BART folders and minilm runs.

Only the file layout is involved (safetensors, json, tokenizers), so this module never imports `transformers`.
The layouts themselves are declared by the model families (`Family.hf_export`, `Family.hf_import`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from minilm.errors import CheckpointError
from minilm.hf_files import exported_tokenizer, hf_tokenizer, read_json, read_weights, tokenizer_config, wordpiece_vocab
from minilm.models import FAMILIES, HFImport, build_model, family_of, task_model
from minilm.run import load_run, read_config, read_tokenizer
from minilm.runfiles import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, check_place, check_state, read_safetensors, shapes
from minilm.tasks import Source
from minilm.tokenizer import check_vocab


def _check_out_dir(out_dir: Path) -> None:
    check_place(out_dir, "export", "choose a folder you can write to")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"output directory {str(out_dir)!r} already exists and is not an empty directory: "
                              "choose a new directory (export never overwrites)")


def export_hf(run_dir: Path, out_dir: Path) -> None:
    """Write the run in `run_dir` as a Hugging Face folder that transformers' from_pretrained loads."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    full = read_config(run_dir)
    cfg = full.model  # refuse what cannot be exported before loading any weights
    family = family_of(cfg)
    if family.hf_export is None:
        raise CheckpointError(f"a {family.name} run (model.arch={cfg.arch}) has no transformers layout to export to: "
                              f"its weights are {MODEL_FILE} (safetensors) in {str(run_dir)!r}, read by `minilm` "
                              "itself")
    layout = family.hf_export(full)
    layout.check(full)
    _check_out_dir(out_dir)
    _, model, tok = load_run(run_dir)
    config, tensors = layout.build(full, model, tok)
    labels = {"classify": full.classify.labels, "tag": full.tag.labels}.get(full.train.task, [])
    if labels:  # label names in id order, as transformers' pipelines show them
        config.update(num_labels=len(labels), id2label={str(i): name for i, name in enumerate(labels)},
                      label2id={name: i for i, name in enumerate(labels)})

    # build everything in a sibling temp dir and rename it into place: a failure leaves no half-written folder
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:  # what check_place cannot see: a read-only file system
        raise CheckpointError(f"cannot write {str(out_dir)!r} ({e.strerror or e}): choose a folder you can write "
                              "to") from e
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})  # transformers requires the format tag
        exported_tokenizer(tok, full.seq2seq.source_chars).save(str(tmp / TOKENIZER_FILE))
        tok_cfg = tokenizer_config(tok, cfg.block_size)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
        vocab = wordpiece_vocab(tok) if tok_cfg["tokenizer_class"] == "BertTokenizerFast" else None
        if vocab is not None:  # the slow BertTokenizer (and other WordPiece readers) need vocab.txt
            (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        _check_out_dir(out_dir)  # again: something may have appeared there while we worked
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above; os.replace cannot replace a directory on every platform
        os.replace(tmp, out_dir)
    except OSError as e:  # a full disk: nothing half-written is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {str(out_dir)!r} ({e.strerror or e}): free disk space or choose "
                              "another folder") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _importers() -> dict[str, HFImport]:
    """Hugging Face model_type -> how a family reads it."""
    return {model_type: imp for family in FAMILIES.values() for model_type, imp in family.hf_import.items()}


def sentence_pooling(path: Path) -> str | None:
    """How a sentence-transformers folder (modules.json + a Pooling module's config.json) pools: "cls",
    "mean", or None (no such folder, or a pooling minilm does not have, such as max)."""
    if not (path / "modules.json").is_file():
        return None
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path / 'modules.json')!r} is not readable JSON ({e}): restore it") from e
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            pooling = read_json(path / module.get("path", "") / CONFIG_FILE)
            for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean")):
                if pooling.get(key):
                    return name
    return None


def load_pretrained(path: str | Path) -> Source:
    """Config, weights (our names) and tokenizer of a minilm run directory or a local Hugging Face GPT-2 / BERT /
    BART folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model.init_from={str(path)!r} is not a directory: give a minilm run directory "
                              "or a local Hugging Face GPT-2 / BERT folder")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}: give a minilm run directory or a Hugging Face "
                              "folder")
    raw = read_json(path / CONFIG_FILE)
    pooling, run_cfg = None, None
    if isinstance(raw.get("model"), dict):  # a minilm run: its config has sections
        run_cfg = read_config(path)
        cfg, task = run_cfg.model, run_cfg.train.task
        pooling = run_cfg.classify.pooling if task == "classify" else None
        if not (path / MODEL_FILE).is_file():
            raise CheckpointError(f"{str(path)!r} has no {MODEL_FILE}: the run saved no weights (did training finish?)")
        state = read_safetensors(path / MODEL_FILE)
        tok = read_tokenizer(path, cfg.vocab_size)
    else:
        model_type, importers = raw.get("model_type"), _importers()
        if model_type not in importers:
            raise CheckpointError(f"{str(path)!r} holds a model_type={model_type!r} model: "
                                  f"only {', '.join(importers)} Hugging Face folders (or minilm runs) can be loaded")
        task = importers[model_type].task
        cfg, state = importers[model_type].load(raw, read_weights(path), path)
        tok = hf_tokenizer(path, model_type)
        check_vocab(tok, cfg.vocab_size, f"{str(path)!r}: the tokenizer", "use the tokenizer saved with this model",
                    CheckpointError)
    with torch.device("meta"):  # the names and shapes the task model expects, without allocating
        want = shapes(build_model(run_cfg) if run_cfg is not None else task_model(cfg, task))
    check_state(want, state, repr(str(path)), "restore the files written together")
    return Source(task, cfg, state, tok, pooling=pooling or sentence_pooling(path))
