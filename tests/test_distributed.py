"""Two processes on CPU through `accelerate launch` (gloo): the same training as one process, sharded data,
one writer, and resume. Each launch gets its own port and a timeout, so a broken rendezvous fails, not hangs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, read_metrics, tiny_overrides
from minilm.config import load_config
from minilm.data.lm import PackedBlocks
from minilm.train import train

WORKER = Path(__file__).with_name("dist_worker.py")
# dropout 0: the two processes' dropout masks could not match the single process's
COMMON = ("model.dropout=0.0", "train.batch_size=8", "train.max_steps=8", "train.eval_interval=4",
          "train.eval_batches=0", "log.log_interval=1", "train.warmup_steps=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(record_dir: Path, overrides: list[str], *worker_args: str,
           launcher: tuple[str, ...] = ("--multi_gpu",)) -> subprocess.CompletedProcess:
    """Two CPU processes of dist_worker.py; `launcher`: accelerate's flags for the kind of distribution."""
    record_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(WORKER), str(record_dir), *worker_args, *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def ranks(record_dir: Path) -> list[dict]:
    return [json.loads((record_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory, shakespeare_file):
    """One 2-process run of 8 steps (batch 8 per process) and its records."""
    tmp = tmp_path_factory.mktemp("dist")
    proc = launch(tmp / "rec", tiny_overrides(shakespeare_file, tmp / "run", *COMMON))
    return tmp, proc


def test_parameters_stay_identical_across_ranks(two_procs):
    tmp, _ = two_procs
    for step in (4, 8):
        a = load_file(str(tmp / "rec" / f"rank0_step{step}.safetensors"))
        b = load_file(str(tmp / "rec" / f"rank1_step{step}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)


def assert_same_as_one_process(tmp: Path, shakespeare_file: Path) -> None:
    """tmp/run (two processes) against tmp/one, one process with the same global batch (2 x 8 = 8 x 2
    accumulated): every step's loss and the final (full) weights agree within 1e-5."""
    train(load_config(None, tiny_overrides(shakespeare_file, tmp / "one", *COMMON, "train.grad_accum=2")))
    one, two = train_losses(tmp / "one"), train_losses(tmp / "run")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    w1, w2 = load_file(str(tmp / "one" / "model.safetensors")), load_file(str(tmp / "run" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert w1[k].shape == w2[k].shape and torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), k


def test_two_processes_equal_one_process_with_gradient_accumulation(two_procs, shakespeare_file):
    tmp, proc = two_procs
    assert "2 process(es)" in proc.stdout
    assert_same_as_one_process(tmp, shakespeare_file)
    v1 = [r for r in read_metrics(tmp / "one") if r["split"] == "val"]
    v2 = [r for r in read_metrics(tmp / "run") if r["split"] == "val"]
    assert [r["step"] for r in v1] == [r["step"] for r in v2] == [4, 8]
    for a, b in zip(v1, v2):  # the whole validation set, gathered from both processes, counted once
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5


def test_each_rank_sees_a_distinct_shard(two_procs):
    tmp, _ = two_procs
    r0, r1 = (set(map(tuple, r["seen"])) for r in ranks(tmp / "rec"))
    # 8 steps x batch 8 each (plus the one batch the loader fetches ahead), each example once
    assert len(r0) == len(r1) and len(r0) in (64, 72)
    assert not r0 & r1
    assert {e for e, _ in r0 | r1} == {0}  # all in the first epoch


def test_only_the_main_process_writes(two_procs):
    tmp, _ = two_procs
    main, other = ranks(tmp / "rec")
    assert other["writes"] == [] and other["bar_shown"] == [False]
    assert main["bar_shown"] == [True]
    assert main["writes"].count("save_weights") == 2 and main["writes"].count("swap_in_state") == 2
    assert "metrics" in main["writes"]
    steps = [r["step"] for r in read_metrics(tmp / "run") if r["split"] == "train"]
    assert steps == list(range(1, 9))  # one writer: every step logged exactly once


def test_resume_with_two_processes(two_procs, shakespeare_file):
    """Stopped abruptly after the step-4 checkpoint and resumed on 2 processes: the same run as never stopping."""
    tmp, _ = two_procs
    overrides = tiny_overrides(shakespeare_file, tmp / "resumed", *COMMON)
    launch(tmp / "rec_a", overrides, "--exit-after-save", "4")
    assert json.loads((tmp / "resumed" / "state" / "progress.json").read_text())["step"] == 4
    launch(tmp / "rec_b", [*overrides, "train.resume=true"])
    full, resumed = train_losses(tmp / "run"), train_losses(tmp / "resumed")
    assert sorted(resumed) == list(range(1, 9))
    for step in full:
        assert resumed[step] == full[step], step
    a, b = load_file(str(tmp / "run" / "model.safetensors")), load_file(str(tmp / "resumed" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed processes carried on with their own shards
    seen = [set(map(tuple, r["seen"])) for r in ranks(tmp / "rec_b")]
    assert len(seen[0]) == len(seen[1]) and len(seen[0]) in (32, 40) and not seen[0] & seen[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    expected = {"single-gpu": "NO", "multi-gpu-ddp": "MULTI_GPU", "fsdp": "FSDP", "multi-node": "MULTI_GPU",
                "cpu-2proc": "MULTI_GPU"}[path.stem]
    assert cfg.distributed_type.value == expected
    assert (cfg.num_machines > 1) == (path.stem == "multi-node")
    if path.stem == "fsdp":  # wraps our one Block class
        assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"


def test_an_epoch_on_two_processes_is_one_pass_over_the_data(tmp_path, small_shakespeare_file):
    """train.epochs counts passes over the data, not over each process's share: 2 processes take half the steps
    and never start a second pass."""
    overrides = tiny_overrides(small_shakespeare_file, tmp_path / "run", "model.dropout=0.0", "train.batch_size=8",
                               "train.epochs=1", "log.log_interval=1", "train.warmup_steps=1")
    launch(tmp_path / "rec", overrides)
    steps = sorted(train_losses(tmp_path / "run"))
    seen = set().union(*(set(map(tuple, r["seen"])) for r in ranks(tmp_path / "rec")))
    # the training 90 % of the file's 4,000 characters + EOT, in blocks of 32: 13 batches of 8, and accelerate
    # deals whole rounds of 2 (drop_last): 6 per process (one process would take 13 steps)
    blocks = len(PackedBlocks(np.zeros(int(4001 * 0.9), np.int32), 32, shuffle=True))
    assert steps == list(range(1, (blocks // 8) // 2 + 1))
    assert {e for e, _ in seen} == {0}  # nothing from a second pass
