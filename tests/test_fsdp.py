"""FSDP (accelerate's FSDP2, each Block sharded) with two CPU processes (gloo): the same training as one
process, weights gathered for the run directory, an exact resume, and an export that transformers loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_overrides
from minilm.config import load_config
from minilm.train import train
from test_distributed import COMMON, launch, train_losses

FSDP = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "Block", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
        "--fsdp_reshard_after_forward", "true")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, shakespeare_file):
    tmp = tmp_path_factory.mktemp("fsdp")
    launch(tmp / "rec", tiny_overrides(shakespeare_file, tmp / "run", *COMMON), launcher=FSDP)
    return tmp


def test_fsdp_on_two_processes_equals_one_process(fsdp_run, shakespeare_file):
    tmp = fsdp_run
    train(load_config(None, tiny_overrides(shakespeare_file, tmp / "one", *COMMON, "train.grad_accum=2")))
    one, two = train_losses(tmp / "one"), train_losses(tmp / "run")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    w1, w2 = load_file(str(tmp / "one" / "model.safetensors")), load_file(str(tmp / "run" / "model.safetensors"))
    assert w1.keys() == w2.keys()  # full, unsharded weights gathered from both ranks
    for k in w1:
        assert w1[k].shape == w2[k].shape and torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), k


def test_fsdp_resumes_exactly_and_exports(fsdp_run, shakespeare_file, tmp_path):
    tmp = fsdp_run
    overrides = tiny_overrides(shakespeare_file, tmp / "resumed", *COMMON)
    launch(tmp / "rec_a", overrides, "--exit-after-save", "4", launcher=FSDP)
    assert json.loads((tmp / "resumed" / "state" / "progress.json").read_text())["step"] == 4
    launch(tmp / "rec_b", [*overrides, "train.resume=true"], launcher=FSDP)
    full, resumed = train_losses(tmp / "run"), train_losses(tmp / "resumed")
    assert sorted(resumed) == list(range(1, 9))
    for step in full:
        assert resumed[step] == full[step], step
    proc = run_cli("export", str(tmp / "resumed"), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert model.config.n_embd == 32 and model.config.n_layer == 2  # conftest's tiny model, whole
