"""Shared fixtures: offline environment, a small slice of tiny Shakespeare, tiny configs, one trained run."""

from __future__ import annotations

import os

# Before anything imports datasets / huggingface_hub / wandb: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread, and the machine's cores are shared: no oversubscription
# (inherited by the CLI subprocesses too). Set OMP_NUM_THREADS yourself to change it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Prepared token shards go to a folder of this session's own (inherited by the CLI subprocesses too).
if "MINILM_CACHE" not in os.environ:
    import tempfile

    os.environ["MINILM_CACHE"] = tempfile.mkdtemp(prefix="minilm-test-cache-")

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "data" / "tinyshakespeare.txt"
TINY_YAML = ROOT / "configs" / "gpt-char-tiny.yaml"

# A tiny character-level GPT: a couple of seconds per hundred steps on one CPU core.
TINY_MODEL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]


def tiny_overrides(train_file: Path, out_dir: Path, *extra: str) -> list[str]:
    """Dotted overrides for a tiny, fast run; later entries in `extra` win. A recurrent model.arch in `extra` leaves
    out the Transformer's n_head."""
    recurrent = any(e.startswith("model.arch=") and e != "model.arch=transformer" for e in extra)
    return [
        f"data.train_files={train_file}",
        f"train.out_dir={out_dir}",
        *(o for o in TINY_MODEL if not (recurrent and o.startswith("model.n_head="))),
        "train.batch_size=16",
        "train.max_steps=20",
        "train.warmup_steps=5",
        "train.lr=1e-2",
        "train.min_lr=1e-3",
        "train.eval_interval=10",
        "log.log_interval=5",
        *extra,
    ]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _command(args: tuple[str, ...], module: bool) -> list[str]:
    """`python -m minilm.cli ARGS`, or `python SCRIPT.py ARGS` when the first argument is a script."""
    return [sys.executable, "-m", "minilm.cli", *args] if module and not args[0].endswith(".py") else [sys.executable, *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, cwd: Path = ROOT, module: bool = True, timeout: float = 300,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    """`python -m minilm.cli ARGS` (or `python ARGS` with module=False or a .py first) in a subprocess, offline;
    input_text: its standard input."""
    return subprocess.run(_command(args, module), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          input=input_text)


def run_cli_many(commands: list[tuple[str, ...]], module: bool = True, timeout: float = 300,
                 parallel: int = 0) -> list[subprocess.CompletedProcess]:
    """Several CLI invocations at once, `parallel` at a time (0: all); most of their time is importing torch."""
    if parallel and len(commands) > parallel:
        return [r for i in range(0, len(commands), parallel)
                for r in run_cli_many(commands[i : i + parallel], module, timeout)]
    procs = [subprocess.Popen(_command(args, module), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in commands]
    results = []
    for args, proc in zip(commands, procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(_command(args, module), proc.returncode, out, err))
    return results


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """The first 60k characters of tiny Shakespeare."""
    return SHAKESPEARE.read_text(encoding="utf-8")[:60_000]


@pytest.fixture(scope="session")
def shakespeare_file(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_shakespeare_file(tmp_path_factory, shakespeare_text) -> Path:
    """About 4k characters: six batches of 16 x 32 per epoch, so a dozen steps cross an epoch boundary."""
    path = tmp_path_factory.mktemp("data_small") / "small.txt"
    path.write_text(shakespeare_text[:4_000], encoding="utf-8")
    return path


@pytest.fixture
def make_cfg(shakespeare_file, tmp_path):
    """make_cfg(*overrides, out_dir=None, train_file=None) -> a validated tiny Config."""
    from minilm.config import load_config

    def make(*extra: str, out_dir: Path | None = None, train_file: Path | None = None):
        return load_config(None, tiny_overrides(train_file or shakespeare_file, out_dir or tmp_path / "run", *extra))

    return make


@dataclass
class TrainedRun:
    run_dir: Path
    result: dict
    vocab_size: int
    train_file: Path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shakespeare_file) -> TrainedRun:
    """One tiny pre-LN character GPT trained for 150 steps on 60k characters (a few seconds), shared by tests."""
    from minilm.config import load_config
    from minilm.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = load_config(None, tiny_overrides(
        shakespeare_file, run_dir, "model.n_embd=64", "train.max_steps=150", "train.eval_interval=50",
        "train.warmup_steps=10", "log.log_interval=10",
    ))
    result = train(cfg)
    vocab = json.loads((run_dir / "config.json").read_text())["model"]["vocab_size"]
    return TrainedRun(run_dir, result, vocab, shakespeare_file)


def uniform_loss(vocab_size: int) -> float:
    return math.log(vocab_size)


def randomize(module, seed: int = 0) -> None:
    """Non-trivial values everywhere (biases, LayerNorm gains) so a wrong weight mapping cannot hide behind 0s/1s."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_gain = p.dim() == 1 and ("norm" in name.lower() or "ln_" in name) and name.endswith("weight")
            p.copy_((1.0 if is_gain else 0.0) + 0.1 * torch.randn(p.shape, generator=g))


def write_run(path: Path, cfg, net, tok) -> Path:
    """A run directory as training leaves it: config.json, model.safetensors, tokenizer.json."""
    from minilm.runfiles import save_weights, write_json

    path.mkdir()
    write_json(path / "config.json", cfg.to_dict())
    save_weights(net, path / "model.safetensors")
    tok.save(str(path / "tokenizer.json"))
    return path


def train_stopped_after_checkpoint(cfg, step: int, monkeypatch) -> None:
    """Train `cfg` but stop it right after its checkpoint at `step`, as a kill would (the run dir stays)."""
    from minilm.run import RunDir
    from minilm.train import train

    class Stop(Exception):
        pass

    real_save = RunDir.save

    def save_then_stop(self, accelerator, model, progress, *args, **kwargs):
        real_save(self, accelerator, model, progress, *args, **kwargs)
        if progress.step == step:
            raise Stop

    with monkeypatch.context() as patched:
        patched.setattr(RunDir, "save", save_then_stop)
        try:
            train(cfg)
        except Stop:
            return
    raise AssertionError(f"the run never saved a checkpoint at step {step}")


def nsp_pairs(docs: list[list[list[int]]], max_len: int, short_seq_prob: float, seed: int) -> list[tuple]:
    """(A, B, is_random_next) examples from documents held as lists of sentences of token ids: the package's
    nsp_spans over the documents joined in memory, for tests that compare with it."""
    import numpy as np

    from minilm.data.mlm import nsp_spans

    lengths = [len(s) for doc in docs for s in doc]
    ends = np.cumsum(lengths, dtype=np.int64)
    starts = ends - np.asarray(lengths, dtype=np.int64)
    bounds = np.cumsum([0] + [len(doc) for doc in docs])
    stream = [t for doc in docs for s in doc for t in s]
    spans = nsp_spans(starts, ends, list(zip(bounds[:-1], bounds[1:])), max_len, short_seq_prob, seed)
    return [(stream[a0:a1], stream[b0:b1], int(r)) for a0, a1, b0, b1, r in spans]
