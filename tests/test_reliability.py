"""Faults during training: non-finite steps, a full disk, an unwritable out_dir, a crash inside a checkpoint
swap, and a planted pickle payload. (Killing real training processes: test_crash.py.)"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minilm.run as run_mod
import minilm.runfiles as runfiles
from conftest import TINY_YAML, read_metrics, run_cli, snapshot, tiny_overrides
from minilm.run import Progress, RunDir, load_run
from minilm.errors import CheckpointError, TrainingError
from minilm.models.transformer.heads import CausalLM
from minilm.train import train


def poison(monkeypatch, calls: set[int] | None = None, after: int | None = None) -> None:
    """Make the training loss NaN on the given training forward calls (1-based), or on every call after `after`."""
    real = CausalLM.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if torch.is_grad_enabled() and out.loss is not None:
            count["n"] += 1
            n = count["n"]
            if (calls and n in calls) or (after is not None and n > after):
                out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(CausalLM, "forward", forward)


def optimizer_steps(run_dir: Path) -> int:
    """The AdamW step count saved in the training state (read without unpickling code)."""
    state = torch.load(run_dir / "state" / "optimizer.bin", weights_only=True)
    return int(next(iter(state["state"].values()))["step"])


def assert_finite(run_dir: Path) -> None:
    for k, v in load_file(str(run_dir / "model.safetensors")).items():
        assert torch.isfinite(v).all(), k


# ---------------------------------------------------------------------------------------------
# non-finite loss or gradient


def test_nonfinite_steps_are_skipped_and_counted(make_cfg, tmp_path, monkeypatch):
    poison(monkeypatch, calls={5, 6})
    train(make_cfg("train.max_steps=12", "train.eval_interval=6", "log.log_interval=1"))
    run = tmp_path / "run"
    recs = {r["step"]: r for r in read_metrics(run) if r["split"] == "train"}
    assert [recs[s]["skipped_steps"] for s in range(1, 13)] == [0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in recs.values())  # the logged loss leaves the NaN out
    assert json.loads((run / "state" / "progress.json").read_text())["skipped"] == 2
    assert optimizer_steps(run) == 10  # two updates never happened: no moment or step-count change either
    assert_finite(run)


def test_skipped_step_leaves_weights_and_optimizer_untouched(make_cfg, tmp_path, monkeypatch):
    """Poisoning the 3rd of 3 steps leaves the model exactly as step 2 left it."""
    train(make_cfg("train.max_steps=3", "train.eval_interval=2", "log.log_interval=1", "train.lr=5e-3",
                   "train.min_lr=5e-3", out_dir=tmp_path / "clean"))
    poison(monkeypatch, calls={3})
    train(make_cfg("train.max_steps=3", "train.eval_interval=2", "log.log_interval=1", "train.lr=5e-3",
                   "train.min_lr=5e-3", out_dir=tmp_path / "poisoned"))
    # the poisoned run's final weights are its step-2 weights; compare with the clean run's step-2 evaluation loss
    val_clean = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "clean") if r["split"] == "val"}
    val_poisoned = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "poisoned") if r["split"] == "val"}
    assert val_poisoned[2] == val_clean[2]
    assert val_poisoned[3] == val_poisoned[2]  # step 3 changed nothing
    assert val_clean[3] != val_clean[2]  # whereas a real step 3 does change the model
    assert optimizer_steps(tmp_path / "poisoned") == 2


def test_too_many_nonfinite_steps_stop_the_run_and_keep_the_checkpoint(make_cfg, tmp_path, monkeypatch):
    poison(monkeypatch, after=10)  # every step from 11 on
    with pytest.raises(TrainingError, match="max_skipped_steps=3"):
        train(make_cfg("train.max_steps=40", "train.eval_interval=10", "log.log_interval=5",
                       "train.max_skipped_steps=3"))
    run = tmp_path / "run"
    assert json.loads((run / "state" / "progress.json").read_text())["step"] == 10
    assert max(r["step"] for r in read_metrics(run)) == 15  # stopped at the first check after the limit
    assert_finite(run)
    load_run(run)  # the last good checkpoint still loads


def test_first_nonfinite_step_stops_with_limit_zero(make_cfg, tmp_path, monkeypatch):
    poison(monkeypatch, calls={12})
    with pytest.raises(TrainingError, match="step 12"):
        train(make_cfg("train.max_steps=20", "train.eval_interval=10", "log.log_interval=1",
                       "train.max_skipped_steps=0"))
    assert json.loads((tmp_path / "run" / "state" / "progress.json").read_text())["step"] == 10


def state_dir(run: Path) -> Path:
    return RunDir(run).state_dir()


# ---------------------------------------------------------------------------------------------
# the disk: full, unwritable


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(make_cfg, tmp_path, monkeypatch):
    real = runfiles.save_weights
    saves = {"n": 0}

    def save_weights(model, path):
        saves["n"] += 1
        if saves["n"] == 2:
            path.with_name(f".{path.name}.tmp").write_bytes(b"partial")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, path)

    monkeypatch.setattr(runfiles, "save_weights", save_weights)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        train(make_cfg("train.max_steps=20", "train.eval_interval=10"))
    run = tmp_path / "run"
    assert json.loads((state_dir(run) / "progress.json").read_text())["step"] == 10
    assert not (run / "state.tmp").exists()
    load_run(run)
    monkeypatch.setattr(runfiles, "save_weights", real)
    train(make_cfg("train.max_steps=20", "train.eval_interval=10", "train.resume=true"))  # space is back: resume
    assert json.loads((run / "state" / "progress.json").read_text())["step"] == 20


def test_unwritable_out_dir_is_a_one_line_error(shakespeare_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("train", str(TINY_YAML), *tiny_overrides(shakespeare_file, blocker / "run"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write to train.out_dir" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert blocker.read_text() == "not a directory"


# ---------------------------------------------------------------------------------------------
# a crash inside the state swap (every point at which it can stop)


@pytest.fixture
def finished_run(trained_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    return run


def test_crash_at_any_point_of_the_state_swap_leaves_a_loadable_state(finished_run, monkeypatch):
    """Crash at the 1st, 2nd, ... file operation of the swap until a swap gets through without crashing."""
    class Crash(Exception):
        pass

    before = json.loads((finished_run / "state" / "progress.json").read_text())
    crashes = 0
    for crash_at in range(1, 20):
        calls = {"n": 0}

        def crashing(real):
            def op(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == crash_at:
                    raise Crash
                return real(*args, **kwargs)
            return op

        tmp = finished_run / "state.tmp"
        shutil.copytree(state_dir(finished_run), tmp)
        crashed = False
        with monkeypatch.context() as m:
            m.setattr(run_mod.os, "replace", crashing(os.replace))
            m.setattr(run_mod.shutil, "rmtree", crashing(shutil.rmtree))
            try:
                run_mod.swap_in_state(finished_run, tmp, Progress(**{**before, "step": before["step"] + crash_at}))
            except Crash:
                crashed = True
        assert crashed == (calls["n"] >= crash_at), crash_at  # the crash fired wherever there was an operation
        crashes += crashed
        state = state_dir(finished_run)
        progress = json.loads((state / "progress.json").read_text())
        assert progress["step"] in (before["step"], before["step"] + crash_at), crash_at
        assert load_file(str(state / "model.safetensors")), crash_at  # weights in the state are whole
        shutil.rmtree(finished_run / "state.tmp", ignore_errors=True)
        if not crashed:  # this swap completed: every earlier operation was a crash point
            assert progress["step"] == before["step"] + crash_at and not (finished_run / "state.old").exists()
            break
        before = progress
    assert crashes >= 3, crashes  # progress.json's rename, state -> state.old, state.tmp -> state


# ---------------------------------------------------------------------------------------------
# untrusted files


class Payload:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("planted", ["optimizer.bin", "random_states_0.pkl"])
def test_planted_pickle_payload_in_the_state_is_refused(finished_run, tmp_path, planted):
    marker = tmp_path / "code-ran"
    torch.save({"state": Payload(marker)}, finished_run / "state" / planted)
    before = snapshot(finished_run)
    proc = run_cli("train", str(finished_run / "config.json"), "train.resume=true", "train.max_steps=200",
                   f"train.out_dir={finished_run}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not plain tensor data" in lines[0], proc.stderr
    assert not marker.exists()
    assert snapshot(finished_run) == before


def test_planted_pickle_in_place_of_the_weights_is_refused(finished_run, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save(Payload(marker), finished_run / "model.safetensors")
    proc = run_cli("sample", str(finished_run), "--max-new-tokens", "5")
    assert proc.returncode == 2
    assert "not a readable safetensors file" in proc.stderr and not marker.exists(), proc.stderr
