"""Run directories written by an earlier minilm (tests/fixtures/legacy_runs) load, sample the same text, evaluate to
the same numbers and resume to the same loss as the commit that wrote them (an SRU run as the 2018 unit it holds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minilm.cli import main
from minilm.run import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_runs"


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy of the fixtures (resume writes into its run directory)."""
    shutil.copytree(FIXTURES, tmp_path / "runs")
    return tmp_path / "runs"


def _out(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("run", ["gpt-char", "lstm-char"])
def test_a_legacy_language_model_samples_what_it_sampled(legacy, capsys, run):
    expected = {  # what commit 5780016 printed
        "gpt-char": ("ROMEO:YIgh?!xi UllhHoote:rPNL:", "[-3.2385] ROMEO:    eeee\n[-3.2388] ROMEO:        \n"),
        "lstm-char": ("ROMEO:YRgM?!x? UClhHooS-:jPNL:", "[-3.9342] ROMEO:        \n[-3.9354] ROMEO:i       \n"),
    }[run]
    path = str(legacy / run)
    assert _out(capsys, "sample", path, "--greedy", "--prompt", "ROMEO:", "--max-new-tokens", "24") == \
        "ROMEO:" + " " * 24 + "\n"
    assert _out(capsys, "sample", path, "--prompt", "ROMEO:", "--max-new-tokens", "24", "--seed", "3") == \
        expected[0] + "\n"
    assert _out(capsys, "sample", path, "--prompt", "ROMEO:", "--beams", "3", "--n-best", "2",
                "--max-new-tokens", "8") == expected[1]


def test_a_legacy_classifier_evaluates_as_it_did(legacy, capsys):
    cfg, model, tok = load_run(legacy / "cls-mean")
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode("a charming journey").ids])).logits
    assert logits[0].tolist() == pytest.approx([1.1308172941207886, -1.0099073648452759], abs=1e-6)
    out = _out(capsys, "eval", str(legacy / "cls-mean"), "--data", str(legacy / "cls_dev.tsv"))
    assert "loss: 1.2648" in out and "accuracy: 0.4800" in out


def test_a_legacy_run_resumes_to_the_same_loss(legacy, monkeypatch, capsys):
    monkeypatch.chdir(legacy)  # its config names its data relative to where it was trained
    run = legacy / "gpt-char"
    assert main(["train", str(run / "config.json"), "train.resume=true", f"train.out_dir={run}"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6 and last["val_loss"] == pytest.approx(3.402478946152554, rel=1e-6)
    info = _out(capsys, "info", str(run))
    assert "step:" in info and "6 of 6" in info


def test_a_2018_sru_run_samples_evaluates_and_resumes_as_the_2018_unit(legacy, monkeypatch, capsys):
    """sru-char was trained when model.arch=sru meant the 2018 unit (its config.json has no model.sru_version)."""
    run = legacy / "sru-char"
    cfg, model, tok = load_run(run)
    assert cfg.model.sru_version == 2018 and type(model.rnn.layers[0].cells[0]).__name__ == "SRU2018"
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode("ROMEO: what light").ids])).logits
    assert logits[0, -1, :6].tolist() == pytest.approx(  # what commit 6b7906a computed
        [-0.10872795432806015, 0.08857924491167068, 0.11075523495674133, -0.08788784593343735,
         -0.1239330917596817, -0.05599327012896538], abs=1e-6)
    assert logits.sum().item() == pytest.approx(-35.490482330322266, abs=1e-4)
    path = str(run)
    assert _out(capsys, "sample", path, "--greedy", "--prompt", "ROMEO:", "--max-new-tokens", "24") == \
        "ROMEO:" + "e" * 24 + "\n"
    assert _out(capsys, "sample", path, "--prompt", "ROMEO:", "--max-new-tokens", "24", "--seed", "3") == \
        "ROMEO:YRgM?!x? UClhHooS-:jPNL:\n"
    assert _out(capsys, "sample", path, "--prompt", "ROMEO:", "--beams", "3", "--n-best", "2",
                "--max-new-tokens", "8") == "[-3.9163] ROMEO:ieeeeeee\n[-3.9163] ROMEO:eieeeeee\n"
    monkeypatch.chdir(legacy)  # its config names its data relative to where it was trained
    assert main(["train", str(run / "config.json"), "train.resume=true", f"train.out_dir={run}"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6 and last["val_loss"] == pytest.approx(3.770257806265226, rel=1e-6)
    assert load_run(run)[0].model.sru_version == 2018  # and still reads as the unit it was trained with
