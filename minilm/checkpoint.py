"""The run directory: what `sample` and `export` need, and the training state that `resume` continues from.

    RUN_DIR/config.json        the full Config (model, tokenizer, data, train, log)
    RUN_DIR/tokenizer.json     the tokenizer
    RUN_DIR/model.safetensors  the weights (the latest, or the best for fine-tuning)
    RUN_DIR/state/             accelerate.save_state (weights, optimizer, scheduler, RNG) + progress.json

Every file is written to a temporary name and renamed into place, and `state/` is swapped as a whole,
so a crash in the middle of a save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from minilm.config import Config, config_from_dict
from minilm.errors import CheckpointError, ConfigError
from minilm.tokenizer import load_tokenizer

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
STATE_DIR, PROGRESS_FILE = "state", "progress.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_weights(model: torch.nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    """A model's weights (or a full state dict, e.g. gathered from FSDP shards) as safetensors, atomically."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights (first: {bad[0]}); lower train.lr or check the data")
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights, refusing any name or shape mismatch with one clear line."""
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: the run directory holds no weights (was training finished?)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({e}): it may be truncated") from e
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "use the config.json written with these weights"
        )
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(
                f"{str(path)!r}: {k} has shape {tuple(v.shape)} but config.json implies {tuple(own[k].shape)}: "
                "use the config.json written with these weights"
            )
    model.load_state_dict(state)


def read_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a minilm run directory (no {CONFIG_FILE}): give a run's out_dir")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return config_from_dict(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: restore it from the run that wrote it") from e
    except ConfigError as e:
        raise CheckpointError(f"{str(path)!r}: {e}") from e


def read_tokenizer(run_dir: Path, vocab_size: int) -> Tokenizer:
    tok = load_tokenizer(run_dir / TOKENIZER_FILE)
    if tok.get_vocab_size() > vocab_size:
        raise CheckpointError(
            f"{str(run_dir / TOKENIZER_FILE)!r} has {tok.get_vocab_size()} tokens but the model only {vocab_size}: "
            "use the tokenizer.json written with this model"
        )
    return tok


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """A new run never reuses a directory that holds a run; resume needs one."""
    has_run = (out_dir / CONFIG_FILE).exists()
    has_state = (out_dir / STATE_DIR / PROGRESS_FILE).exists() or (out_dir / f"{STATE_DIR}.old" / PROGRESS_FILE).exists()
    if resume and not (has_run and has_state):
        raise CheckpointError(f"train.resume=true but {str(out_dir)!r} holds no saved training state: start without resume")
    if not resume and out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(
            f"out_dir {str(out_dir)!r} already exists and is not empty: pass train.resume=true to continue it, "
            "or choose another train.out_dir"
        )


def state_dir(out_dir: Path) -> Path:
    """The newest complete training state (a crash during the swap leaves only the .old one)."""
    cur, old = out_dir / STATE_DIR, out_dir / f"{STATE_DIR}.old"
    if (cur / PROGRESS_FILE).is_file():
        return cur
    if (old / PROGRESS_FILE).is_file():
        return old
    raise CheckpointError(f"{str(out_dir)!r} holds no complete training state: start a new run instead of resuming")


def swap_in_state(out_dir: Path, tmp: Path, progress: dict) -> None:
    """Make the freshly written `tmp` the current state; keep the previous one until that is done."""
    write_text(tmp / PROGRESS_FILE, json.dumps(progress, indent=2))
    cur, old = out_dir / STATE_DIR, out_dir / f"{STATE_DIR}.old"
    if old.exists() and (cur / PROGRESS_FILE).is_file():
        shutil.rmtree(old)
    if cur.exists():
        if old.exists():
            shutil.rmtree(cur)  # cur is incomplete: old is the good one
        else:
            os.replace(cur, old)
    os.replace(tmp, cur)
    _fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_progress(path: Path) -> dict:
    try:
        return json.loads((path / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path / PROGRESS_FILE)!r} is unreadable ({e}): resume from an intact run") from e


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Config, torch.nn.Module, Tokenizer]:
    """The config, model (in eval mode) and tokenizer saved in a run directory."""
    from minilm.heads import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist: give the out_dir of a training run")
    cfg = read_config(run_dir)
    model = build_model(cfg.model)
    load_weights(model, run_dir / MODEL_FILE)
    tok = read_tokenizer(run_dir, cfg.model.vocab_size)
    return cfg, model.to(device).eval(), tok
