"""The run directory: what `sample`, `eval` and `export` need, and the training state `resume` continues from.

    RUN_DIR/config.json        the full Config (model, tokenizer, data, train, log)
    RUN_DIR/tokenizer.json     the tokenizer
    RUN_DIR/model.safetensors  the weights (the latest, or with train.best_metric the best evaluation)
    RUN_DIR/state/             accelerate.save_state (weights, optimizer, RNG states) + progress.json (+ with
                               data.streaming, stream-position-{rank}.json: where each process's stream stands;
                               with train.tbptt, carried-state-{rank}.safetensors: each process's recurrent state)
    RUN_DIR/metrics.jsonl      one JSON record per log line and evaluation

Files are written through runfiles (temporary name, fsync, rename) and `state/` is swapped in as a whole, so a
crash in the middle of a save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from tokenizers import Tokenizer

from minilm import runfiles
from minilm.config import Config, config_from_dict, upgrade_saved
from minilm.errors import CheckpointError, ConfigError
from minilm.report import MetricsLog
from minilm.runfiles import CONFIG_FILE, METRICS_FILE, MODEL_FILE, PROGRESS_FILE, STATE_DIR, TOKENIZER_FILE
from minilm.models import build_model
from minilm.tasks import get_task
from minilm.tokenizer import check_vocab, load_tokenizer


@dataclass
class Progress:
    """Where training stands; saved with every checkpoint as state/progress.json."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the training data completed
    micro_batches: int = 0  # batches consumed (grad_accum per step): the position in the data
    best: float | None = None  # the best value of train.best_metric so far
    since_best: int = 0  # evaluations since it last improved (early stopping)
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    seconds: float = 0.0  # wall time spent training (over all sessions), up to this checkpoint
    precision: str | None = None  # the mixed precision the run trains in (accelerate's name), kept on resume

    @classmethod
    def read(cls, state: Path) -> Progress:
        path = state / PROGRESS_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**raw)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise CheckpointError(f"{str(path)!r} is unreadable ({e}): resume from an intact run") from e


def read_config(run_dir: Path) -> Config:
    check_run_dir(Path(run_dir))
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a minilm run directory (no {CONFIG_FILE}): give a run's out_dir")
    try:
        cfg = config_from_dict(upgrade_saved(json.loads(path.read_text(encoding="utf-8"))))
        get_task(cfg.train.task).check_model(cfg, cfg.model)
        return cfg
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: restore it from the run that wrote it") from e
    except ConfigError as e:
        raise CheckpointError(f"{str(path)!r}: {e}") from e


def read_tokenizer(run_dir: Path, vocab_size: int) -> Tokenizer:
    tok = load_tokenizer(Path(run_dir) / TOKENIZER_FILE)
    check_vocab(tok, vocab_size, repr(str(Path(run_dir) / TOKENIZER_FILE)),
                "use the tokenizer.json written with this model", CheckpointError)
    return tok


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights, refusing any name or shape mismatch with one clear line."""
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: the run directory holds no weights (was training finished?)")
    state = runfiles.read_safetensors(path)
    runfiles.check_state(runfiles.shapes(model), state, repr(str(path)), "use the config.json written with these weights")
    model.load_state_dict(state)


def check_run_dir(run_dir: Path) -> None:
    """Refuse, naming what it is, a path that is not a minilm run directory: missing, a file, a Hugging Face folder."""
    if run_dir.is_file() or (run_dir.exists() and not run_dir.is_dir()):
        raise CheckpointError(f"{str(run_dir)!r} is a file, not a run directory: give the out_dir of a training run "
                              f"(the folder holding {CONFIG_FILE})")
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist: give the out_dir of a training run")
    path = run_dir / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # read_config names the damage
    if isinstance(raw, dict) and "model_type" in raw and not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{str(run_dir)!r} is a Hugging Face model folder (model_type={raw['model_type']!r}), "
                              "not a minilm run: load it with transformers, or start a minilm run from it with "
                              f"model.init_from={run_dir}")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Config, torch.nn.Module, Tokenizer]:
    """The config, task model (in eval mode) and tokenizer saved in a run directory."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    model = build_model(cfg)
    load_weights(model, run_dir / MODEL_FILE)
    tok = read_tokenizer(run_dir, cfg.model.vocab_size)
    return cfg, model.to(device).eval(), tok


def run_info(run_dir: str | Path) -> dict[str, str]:
    """What a user wants to know of a run before resuming or exporting it, as label -> text."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    m = cfg.model
    with torch.device("meta"):  # count without allocating
        n_params = sum(t.numel() for t in build_model(cfg).parameters())
    tok = read_tokenizer(run_dir, m.vocab_size)
    run = RunDir(run_dir)
    progress = Progress.read(run.state_dir()) if run.has_state() else None
    records = run.metrics.read()
    vals = [r for r in records if r.get("split") == "val"]
    info = {
        "task": f"{cfg.train.task} on {m.describe()}",
        "parameters": f"{n_params / 1e6:.2f}M",
        "tokenizer": f"{_tokenizer_kind(tok)}, {tok.get_vocab_size():,} tokens",
        "step": f"{progress.step if progress else 0} of {cfg.train.max_steps}",
    }
    if vals:
        info["last evaluation"] = _metrics_line(vals[-1])
    if cfg.train.best_metric and progress is not None and progress.best is not None:
        info["best"] = f"{cfg.train.best_metric} {progress.best:.4f} (the weights in {MODEL_FILE})"
    if progress is not None:
        info["wall time"] = f"{progress.seconds / 60:.1f} min of training up to the checkpoint"
    if progress is None:
        info["resumable"] = "no: it holds no checkpoint (start it again without train.resume=true)"
    elif progress.step >= cfg.train.max_steps:
        info["resumable"] = "finished; resume with a larger train.max_steps to train on"
    else:
        info["resumable"] = f"yes: minilm train {run_dir / CONFIG_FILE} train.resume=true"
    return info


def _tokenizer_kind(tok: Tokenizer) -> str:
    """What a user configured (tokenizer.kind), not the tokenizers class behind it."""
    kind = type(tok.model).__name__
    if kind == "WordLevel":  # minilm's char tokenizer splits every character; its word tokenizer, whitespace
        splits = json.loads(tok.to_str()).get("pre_tokenizer") or {}
        return "character-level (WordLevel)" if splits.get("type") == "Split" else "word-level (WordLevel)"
    return {"BPE": "byte-level BPE", "WordPiece": "WordPiece"}.get(kind, kind)


def _metrics_line(record: dict) -> str:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_") and isinstance(v, float))
    return f"step {record['step']}: {shown}"


class RunDir:
    """A training run's directory: created once, checkpointed at evaluations, continued by resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics = MetricsLog(self.path / METRICS_FILE, enabled=False)  # enabled on the main process
        self.new = False  # created by this process and not yet holding a checkpoint
        self.restart = False  # the directory holds a start that stopped before its first checkpoint

    def has_state(self) -> bool:
        return any((self.path / name / PROGRESS_FILE).exists() for name in (STATE_DIR, f"{STATE_DIR}.old"))

    def check(self, resume: bool) -> None:
        """Before any work: a new run never reuses a directory that holds a run; resume needs one. A run that was
        killed before its first checkpoint left nothing to resume: it may be started again."""
        if resume and not ((self.path / CONFIG_FILE).exists() and self.has_state()):
            if self._no_checkpoint():
                raise CheckpointError(f"{str(self.path)!r} holds no checkpoint (its run stopped before the first "
                                      "one): start it again without train.resume=true")
            raise CheckpointError(f"train.resume=true but {str(self.path)!r} holds no saved training state: "
                                  "start without resume")
        if not resume and self.path.exists() and any(self.path.iterdir()):
            if self._no_checkpoint():
                self.restart = True  # create() clears what the stopped start left
                return
            raise CheckpointError(f"out_dir {str(self.path)!r} already exists and is not empty: pass "
                                  "train.resume=true to continue it, or choose another train.out_dir")

    def _no_checkpoint(self) -> bool:
        """Only what a start writes before its first checkpoint is here (a run killed that early)."""
        return (self.path / CONFIG_FILE).is_file() and not self.has_state() and all(
            p.name in _EARLY_FILES for p in self.path.iterdir())

    def resumed_config(self, cfg: Config) -> Config:
        """cfg with the saved run's resolved model (vocabulary, labels, init_from's architecture) and labels."""
        saved = read_config(self.path)
        if cfg.model.init_from:  # the architecture came from init_from, not from the model section
            same = saved.model.init_from == cfg.model.init_from
        else:
            same = saved.model == dataclasses.replace(cfg.model, vocab_size=saved.model.vocab_size)
        if not same or saved.train.task != cfg.train.task:
            raise ConfigError(f"the model section or train.task differs from the one saved in {str(self.path)!r}: "
                              "resume with the same config")
        return dataclasses.replace(cfg, model=saved.model, classify=saved.classify)

    def create(self, cfg: Config, tok: Tokenizer) -> None:
        """A new run's directory with its config.json and tokenizer.json (main process)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(f"cannot write to train.out_dir={str(self.path)!r} ({e.strerror or e}): "
                                  "choose a writable directory") from e
        if self.restart:
            print(f"minilm: note: starting {str(self.path)!r} again: its run stopped before its first checkpoint",
                  file=sys.stderr)
            for p in self.path.iterdir():
                if p.name not in (CONFIG_FILE, TOKENIZER_FILE):  # those two are rewritten below
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.new = True
        runfiles.write_json(self.path / CONFIG_FILE, cfg.to_dict())
        tok.save(str(self.path / TOKENIZER_FILE))

    def state_dir(self) -> Path:
        """The newest complete training state (a crash during the swap leaves only the .old one)."""
        for path in (self.path / STATE_DIR, self.path / f"{STATE_DIR}.old"):
            if (path / PROGRESS_FILE).is_file():
                return path
        raise CheckpointError(f"{str(self.path)!r} holds no complete training state: start a new run instead of resuming")

    def load_state(self, accelerator: Accelerator) -> Progress:
        """Restore weights, optimizer and RNG states; rewind metrics.jsonl to the checkpoint's step.

        accelerate reads weights from safetensors and everything else with torch.load(weights_only=True), which
        refuses to run pickled code. Each file is checked that way first: accelerate itself would silently skip
        an unreadable RNG state, and the resumed run would no longer be exact.
        """
        state = self.state_dir()
        progress = Progress.read(state)
        try:
            for path in sorted(state.iterdir()):
                if path.suffix == ".safetensors":
                    runfiles.read_safetensors(path)  # a planted pickle or a cut file is named as what it is
                elif path.suffix in (".bin", ".pkl", ".pt"):
                    accelerate_load(path, map_location="cpu")  # weights_only=True, plus accelerate's numpy allowances
            accelerator.load_state(str(state))
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{str(state)!r} holds a file that is not plain tensor data (a pickled object that "
                                  "would run code); it was not loaded: resume only from run directories you trust and "
                                  "restore the state from the run that wrote it") from e
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise CheckpointError(f"the training state in {str(state)!r} is unreadable ({str(e).splitlines()[0]}): "
                                  "resume from an intact run or start a new one") from e
        self.metrics.rewind(progress.step)  # those steps run again
        return progress

    def save(self, accelerator: Accelerator, model: torch.nn.Module, progress: Progress, weights: bool = True,
             position: dict | None = None, carry: dict[str, torch.Tensor] | None = None) -> None:
        """Weights for sample/export (the latest, or the best so far) plus the full training state, each swapped
        in atomically. Every process takes part; each saves its stream `position` when the text is streamed,
        and its carried recurrent state (`carry`, train.tbptt)."""
        accelerator.wait_for_everyone()
        tmp = self.path / f"{STATE_DIR}.tmp"
        try:
            if accelerator.is_main_process and tmp.exists():
                shutil.rmtree(tmp)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            if position is not None:
                tmp.mkdir(parents=True, exist_ok=True)
                runfiles.write_json(tmp / _position_file(accelerator.process_index),
                                    {"processes": accelerator.num_processes, "position": position})
            if carry is not None:
                tmp.mkdir(parents=True, exist_ok=True)
                runfiles.save_weights(carry, tmp / _carry_file(accelerator.process_index))
            full = accelerator.get_state_dict(model) if weights else None  # under FSDP this gathers the shards
            accelerator.wait_for_everyone()  # every process's files are written before the swap
            if accelerator.is_main_process:
                if weights:
                    runfiles.save_weights(full, self.path / MODEL_FILE)
                swap_in_state(self.path, tmp, progress)
        except OSError as e:  # a full disk or a directory made read-only: the previous checkpoint is still whole
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"could not write a checkpoint in {str(self.path)!r} ({e.strerror or e}): free disk "
                                  "space or make the directory writable, then resume; the previous checkpoint is "
                                  "intact") from e
        self.new = False  # the directory now holds a checkpoint worth keeping
        accelerator.wait_for_everyone()

    def stream_position(self, accelerator: Accelerator) -> dict:
        """Where this process's stream stood at the checkpoint (data.streaming=true)."""
        path = self.state_dir() / _position_file(accelerator.process_index)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CheckpointError(f"{str(self.path)!r} holds no stream position for process "
                                  f"{accelerator.process_index}: it was not trained with data.streaming=true on this "
                                  "many processes; resume with the data settings and processes it was started with") from e
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{str(path)!r} is unreadable ({e}): resume from an intact run") from e
        if saved.get("processes") != accelerator.num_processes:
            raise CheckpointError(f"the run streamed its text on {saved.get('processes')} process(es), this resume has "
                                  f"{accelerator.num_processes}: resume it on {saved.get('processes')}")
        return saved["position"]

    def carried_state(self, accelerator: Accelerator) -> dict[str, torch.Tensor]:
        """This process's recurrent state at the checkpoint (train.tbptt)."""
        path = self.state_dir() / _carry_file(accelerator.process_index)
        if not path.is_file():
            raise CheckpointError(f"{str(self.path)!r} holds no carried state for process {accelerator.process_index}: "
                                  "it was not trained with train.tbptt=true on this many processes; resume with the "
                                  "settings and processes it was started with")
        return runfiles.read_safetensors(path)

    def discard_if_new(self) -> None:
        """A new run that failed before its first checkpoint leaves nothing behind."""
        if self.new:
            shutil.rmtree(self.path, ignore_errors=True)


# what a run directory holds before its first checkpoint (and the leftovers of a save cut short)
_EARLY_FILES = {CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, f"{STATE_DIR}.tmp", f".{MODEL_FILE}.tmp", "wandb", "tensorboard",
                "loss.png"}


def _position_file(rank: int) -> str:
    return f"stream-position-{rank}.json"


def _carry_file(rank: int) -> str:
    return f"carried-state-{rank}.safetensors"


def swap_in_state(run_dir: Path, tmp: Path, progress: Progress) -> None:
    """Make the freshly written `tmp` the current state; keep the previous one until that is done."""
    runfiles.write_json(tmp / PROGRESS_FILE, dataclasses.asdict(progress))
    cur, old = run_dir / STATE_DIR, run_dir / f"{STATE_DIR}.old"
    if old.exists() and (cur / PROGRESS_FILE).is_file():
        shutil.rmtree(old)
    if cur.exists():
        if old.exists():
            shutil.rmtree(cur)  # cur is incomplete: old is the good one
        else:
            os.replace(cur, old)
    os.replace(tmp, cur)
    runfiles.fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)
