"""Hugging Face GPT-2 interop: export parity with transformers, import parity, refusals, and the CLI."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import randomize, write_run
import torch
from safetensors.torch import load_file, save_file

from minilm import hf
from minilm.run import load_run
from minilm.config import config_from_dict
from minilm.errors import CheckpointError
from minilm.runfiles import write_json
from minilm.errors import CheckpointError
from minilm.models.transformer.heads import CausalLM
from minilm.tokenizer import EOT, train_bpe, train_char

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox, jumps over the lazy dog.\nA second line: 123 !?\n" * 4
SAMPLE = "the lazy fox jumps, quickly.\nA dog!"
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)


def _tokenizer(kind: str):
    return train_char([TEXT]) if kind == "char" else train_bpe([TEXT], 300)


def make_run(tmp_path: Path, tok_kind: str = "char", name: str = "run", **model) -> Path:
    tok = _tokenizer(tok_kind)
    cfg = config_from_dict({"model": {**TINY, "vocab_size": tok.get_vocab_size(), **model},
                            "data": {"train_files": ["unused.txt"]}})
    torch.manual_seed(0)
    net = CausalLM(cfg.model)
    randomize(net)
    return write_run(tmp_path / name, cfg, net, tok)


def _ours(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def _theirs(folder: Path, ids: list[int]) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("tok_kind,model", [
    ("char", {}),
    ("bpe", {}),
    ("char", {"bias": False}),
    ("char", {"position": "sinusoidal", "norm_eps": 1e-6}),
    ("bpe", {"activation": "gelu", "d_ff": 48}),
], ids=["char", "bpe", "no-bias", "sinusoidal", "gelu-dff"])
def test_export_matches_transformers(tmp_path: Path, tok_kind: str, model: dict) -> None:
    run = make_run(tmp_path, tok_kind, **model)
    out = tmp_path / "hf"
    hf.export_hf(run, out)
    _, ours, tok = load_run(run)
    ids = tok.encode(SAMPLE).ids[:32]
    torch.testing.assert_close(_theirs(out, ids), _ours(ours, ids), atol=1e-5, rtol=1e-5)

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["bos_token_id"] == config["eos_token_id"] == tok.token_to_id(EOT)
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))  # tied to wte

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(SAMPLE) == tok.encode(SAMPLE).ids
    assert hf_tok.decode(hf_tok.encode(SAMPLE)) == SAMPLE
    assert hf_tok.eos_token == EOT


def test_export_then_load_pretrained_round_trips(tmp_path: Path) -> None:
    run = make_run(tmp_path, "bpe")
    hf.export_hf(run, tmp_path / "hf")
    src = hf.load_pretrained(run)  # a minilm run directory
    run_cfg, run_state, _ = src.model, src.state, src.tokenizer
    src = hf.load_pretrained(tmp_path / "hf")  # the exported Hugging Face folder
    cfg, state, tok = src.model, src.state, src.tokenizer
    assert cfg == run_cfg and sorted(state) == sorted(run_state)
    for k in state:
        torch.testing.assert_close(state[k], run_state[k], atol=0, rtol=0)
    assert tok.encode(SAMPLE).ids == load_run(run)[2].encode(SAMPLE).ids


def _hf_model(tok, **extra) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tok.token_to_id(EOT), eos_token_id=tok.token_to_id(EOT), **extra)
    model = transformers.GPT2LMHeadModel(config).eval()
    randomize(model, seed=1)
    return model


@pytest.mark.parametrize("extra", [{}, {"n_inner": 48, "activation_function": "gelu", "layer_norm_epsilon": 1e-6}],
                         ids=["default", "n_inner-gelu"])
def test_load_pretrained_matches_transformers(tmp_path: Path, extra: dict) -> None:
    tok = _tokenizer("bpe")
    model = _hf_model(tok, **extra)
    model.save_pretrained(tmp_path / "gpt2")
    tok.save(str(tmp_path / "gpt2" / "tokenizer.json"))

    src = hf.load_pretrained(tmp_path / "gpt2")
    cfg, state, tok2 = src.model, src.state, src.tokenizer
    assert cfg.d_ff == extra.get("n_inner", 0) and cfg.vocab_size == tok.get_vocab_size()
    ours = CausalLM(cfg).eval()
    ours.load_state_dict(state)  # strict: exactly our names
    ids = tok.encode(SAMPLE).ids[:32]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits
    torch.testing.assert_close(_ours(ours, ids), want, atol=1e-5, rtol=1e-5)
    assert tok2.encode(SAMPLE).ids == ids


def test_load_pretrained_hub_layout(tmp_path: Path) -> None:
    """Hub GPT-2 files: no `transformer.` prefix, mask buffers, lm_head present, vocab.json + merges.txt only."""
    tok = _tokenizer("bpe")
    model = _hf_model(tok)
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    hf_state = {k.removeprefix("transformer."): v.contiguous() for k, v in model.state_dict().items()
                if k != "lm_head.weight"}
    for i in range(2):
        hf_state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        hf_state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    hf_state["lm_head.weight"] = hf_state["wte.weight"].clone()
    save_file(hf_state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tok.model.save(str(folder))  # vocab.json + merges.txt, no tokenizer.json

    src = hf.load_pretrained(folder)
    cfg, state, tok2 = src.model, src.state, src.tokenizer
    ours = CausalLM(cfg).eval()
    ours.load_state_dict(state)
    text = SAMPLE + EOT + "fox"
    ids = tok.encode(text).ids
    assert tok2.encode(text).ids == ids and tok2.decode(ids, skip_special_tokens=False) == text
    with torch.no_grad():
        want = model(torch.tensor([ids[:32]])).logits
    torch.testing.assert_close(_ours(ours, ids[:32]), want, atol=1e-5, rtol=1e-5)


def test_export_refuses_post_ln(tmp_path: Path) -> None:
    run = make_run(tmp_path, norm="post")
    with pytest.raises(CheckpointError, match="norm"):
        hf.export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_refuses_pre_ln_bidirectional(tmp_path: Path) -> None:
    cfg = config_from_dict({"model": {**TINY, "vocab_size": 50, "causal": False, "norm": "pre", "type_vocab_size": 2},
                            "tokenizer": {"kind": "wordpiece"}, "data": {"train_files": ["unused.txt"]}})
    run = tmp_path / "bert"
    run.mkdir()
    write_json(run / "config.json", cfg.to_dict())
    with pytest.raises(CheckpointError, match="BERT is post-LN"):
        hf.export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_never_overwrites(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an empty directory"):
        hf.export_hf(run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    hf.export_hf(run, empty)  # an existing empty directory is fine
    assert (empty / "model.safetensors").is_file()


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", boom)
    with pytest.raises(CheckpointError, match="disk full"):  # one line, and nothing half-written
        hf.export_hf(run, tmp_path / "out" / "hf")
    assert list((tmp_path / "out").iterdir()) == []


def test_load_pretrained_refuses_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="convert it to safetensors"):
        hf.load_pretrained(folder)


def test_load_pretrained_refuses_mismatched_weights(tmp_path: Path) -> None:
    tok = _tokenizer("char")
    model = _hf_model(tok)
    model.save_pretrained(tmp_path / "gpt2")
    tok.save(str(tmp_path / "gpt2" / "tokenizer.json"))
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(CheckpointError, match="shape"):
        hf.load_pretrained(tmp_path / "gpt2")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "minilm.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_export(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    ok = _cli("export", str(run), str(tmp_path / "hf"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    bad = _cli("export", str(tmp_path / "missing"), str(tmp_path / "hf2"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minilm: error:") and "Traceback" not in bad.stderr
    assert not (tmp_path / "hf2").exists()


def test_import_does_not_need_transformers() -> None:
    code = "import sys, minilm.hf; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
