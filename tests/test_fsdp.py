"""FSDP (accelerate's FSDP2, each Block sharded) with two CPU processes (gloo): the same training as one
process, weights gathered for the run directory, an exact resume, and an export that transformers loads."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, tiny_overrides
from test_distributed import COMMON, assert_same_as_one_process, launch, train_losses

FSDP = ("--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "Block", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
        "--fsdp_reshard_after_forward", "true")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, shakespeare_file):
    tmp = tmp_path_factory.mktemp("fsdp")
    launch(tmp / "rec", tiny_overrides(shakespeare_file, tmp / "run", *COMMON), launcher=FSDP)
    return tmp


def test_fsdp_on_two_processes_equals_one_process(fsdp_run, shakespeare_file):
    assert_same_as_one_process(fsdp_run, shakespeare_file)  # the weights gathered whole from both ranks


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
