"""The file layer under run directories and model folders: file names, atomic writes, safetensors in and out.

Nothing here builds a model: `run.py` (training state, loading a run) and `hf/` (model folders) sit on top.
Every file is written to a temporary name, fsynced and renamed into place, so a reader sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minilm.errors import CheckpointError

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
STATE_DIR, PROGRESS_FILE, METRICS_FILE = "state", "progress.json", "metrics.jsonl"

Weights = dict[str, torch.Tensor]  # named tensors: a state dict


def check_place(path: Path, key: str, fix: str, error: type[Exception] = CheckpointError) -> None:
    """Refuse in one line, before anything is written, a folder to be written that is a file, lies under a file or
    in a folder this process cannot write to (`key` names where the path came from)."""
    if path.exists() and not path.is_dir():
        raise error(f"{key}: {str(path)!r} is a file, not a folder: {fix}")
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise error(f"{key}: {str(place)!r} is a file, so {str(path)!r} cannot be made: {fix}")
    if place != path:
        if not os.access(place, os.W_OK | os.X_OK):
            raise error(f"{key}: {str(path)!r} cannot be made ({str(place)!r} is not writable): {fix}")
    elif not os.access(path.parent, os.W_OK | os.X_OK):  # prepare's lock file, export's temporary folder go there
        raise error(f"{key}: {str(path.parent)!r} is not writable: {fix}")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
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
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON (config.json, progress.json), atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_weights(model: torch.nn.Module | Mapping[str, torch.Tensor], path: Path) -> None:
    """A model's weights (or a full state dict, e.g. gathered from FSDP shards) as safetensors, atomically."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights (first: {bad[0]}); lower train.lr or check the data")
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def read_safetensors(path: Path) -> Weights:
    """Tensors of a safetensors file (the format cannot hold code), or one clear line saying why not."""
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, not a safetensors file: give the weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {what_it_is(path)}") from e


def what_it_is(path: Path) -> str:
    """What a file that should hold safetensors holds instead, judged by its first bytes, and what to do."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":  # pickle protocol 2+, or torch.save's zip of pickles
        return ("it is a pickle (torch.save format: Python objects that can run code when loaded); it was not "
                "loaded; use weights saved as safetensors, from a source you trust")
    if len(head) < 8:
        return f"it holds only {len(head)} bytes (cut short?): restore it from the run or folder that wrote it"
    return "its header is damaged or it was cut short: restore it from the run or folder that wrote it"


def check_state(want: Mapping[str, tuple[int, ...]], got: Mapping[str, torch.Tensor], where: str, fix: str,
                ignore_missing: Callable[[str], bool] = lambda name: False) -> None:
    """`got` must hold exactly the names and shapes of `want` (names `ignore_missing` accepts may be absent)."""
    missing = sorted(k for k in set(want) - set(got) if not ignore_missing(k))
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{where}: the weights do not match the model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}): {fix}")
    for k, v in got.items():
        if tuple(v.shape) != tuple(want[k]):
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)} but the model has {tuple(want[k])}: {fix}")


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a model's state dict (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
