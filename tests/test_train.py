"""The training loop end to end on tiny Shakespeare: learning, the run directory, exact resume, refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_stopped_after_checkpoint, TINY_YAML, read_metrics, run_cli_many, snapshot, tiny_overrides
from minilm.run import load_run
from minilm.config import TrainConfig, load_config
from minilm.errors import CheckpointError, ConfigError, DataError
from minilm.optim import lr_at, make_optimizer
from minilm.tasks import prepare
from minilm.tokenizer import load_tokenizer
from minilm.train import train


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---------------------------------------------------------------------------------------------
# a short run learns and leaves a complete run directory


def test_short_run_loss_falls(trained_run):
    records = read_metrics(trained_run.run_dir)
    train_recs = [r for r in records if r["split"] == "train"]
    val_recs = [r for r in records if r["split"] == "val"]
    uniform = math.log(trained_run.vocab_size)
    assert 40 <= trained_run.vocab_size <= 80  # a character vocabulary
    final = trained_run.result["val_loss"]
    assert math.isfinite(final)
    assert final < uniform - 1.2, (final, uniform)  # clearly learned (about 2.5 vs ln(V) = 4.1 here)
    assert train_recs[0]["loss"] > final + 0.5  # the first logged training loss was much higher
    assert [r["step"] for r in val_recs] == [50, 100, 150]
    assert val_recs[-1]["val_loss"] == pytest.approx(final)
    assert val_recs[-1]["val_loss"] < val_recs[0]["val_loss"]
    assert trained_run.result["val_ppl"] == pytest.approx(math.exp(final))
    assert [r["step"] for r in train_recs] == list(range(10, 151, 10))
    for r in train_recs:
        assert r["lr"] > 0 and r["tokens_per_s"] > 0 and math.isfinite(r["loss"])


def test_run_directory_contents(trained_run):
    run = trained_run.run_dir
    for name in ("model.safetensors", "config.json", "tokenizer.json", "state/progress.json", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "state.tmp").exists() and not (run / "state.old").exists()
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["step"] == 150
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["vocab_size"] == trained_run.vocab_size > 0
    assert saved["model"]["n_embd"] == 64 and saved["train"]["max_steps"] == 150
    tok = json.loads((run / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == trained_run.vocab_size


def test_saved_model_reproduces_final_val_loss(trained_run):
    cfg, model, tok = load_run(trained_run.run_dir)
    assert not model.training
    assert tok.get_vocab_size() == cfg.model.vocab_size
    task = prepare(cfg, load_tokenizer(trained_run.run_dir / "tokenizer.json"))
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(task.val), 64):
            items = [task.val[j] for j in range(i, min(i + 64, len(task.val)))]
            x = torch.stack([it["input_ids"] for it in items])
            y = torch.stack([it["labels"] for it in items])
            total += torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    assert total / count == pytest.approx(trained_run.result["val_loss"], abs=1e-4)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_pre_and_post_ln_train(make_cfg, tmp_path, norm):
    # post-LN wants a gentler rate than the fixture's 1e-2 (it reaches about 3.3 there, 2.7 here)
    cfg = make_cfg(f"model.norm={norm}", "model.n_embd=64", "train.max_steps=150", "train.eval_interval=150",
                   "train.lr=3e-3", "train.min_lr=3e-4", "train.warmup_steps=10", "log.log_interval=5")
    result = train(cfg)
    records = read_metrics(tmp_path / "run")
    vocab = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["vocab_size"]
    assert records[0]["loss"] > result["val_loss"] + 0.5
    assert result["val_loss"] < math.log(vocab) - 1.0  # about 2.4 (pre) and 2.7 (post) against ln(V) = 4.1


# ---------------------------------------------------------------------------------------------
# exact resume

RESUME = ("model.dropout=0.1", "train.max_steps=12", "train.eval_interval=4", "log.log_interval=1",
          "train.warmup_steps=3", "train.min_lr=1e-4")

# 60k characters give about 105 batches per epoch (a dozen steps stay in epoch 0); 4k characters give
# six, so the resumed steps 9..12 start mid-epoch 1 and the checkpoint's epoch counter matters.
DATA_SIZES = [
    pytest.param("one_epoch", id="within-epoch"),
    pytest.param("epochs", id="across-epochs"),
]


@pytest.fixture
def resume_data(request, shakespeare_file, small_shakespeare_file):
    return shakespeare_file if request.param == "one_epoch" else small_shakespeare_file


@pytest.mark.parametrize("resume_data", DATA_SIZES, indirect=True)
def test_resume_after_interruption_is_exact(resume_data, tmp_path, monkeypatch):
    """A run stopped right after its step-8 checkpoint and resumed equals one that never stopped

    (dropout on, warmup then cosine decay, so the RNG, optimizer, schedule and data position must all resume).
    """
    def cfg(out, *extra):
        return load_config(None, tiny_overrides(resume_data, tmp_path / out, *RESUME, *extra))

    train(cfg("a"))

    train_stopped_after_checkpoint(cfg("b"), 8, monkeypatch)
    assert json.loads((tmp_path / "b" / "state" / "progress.json").read_text())["step"] == 8
    assert max(train_losses(tmp_path / "b")) == 8
    train(cfg("b", "train.resume=true"))

    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(a) == list(range(1, 13))
    assert sorted(b) == list(range(1, 13))  # each step logged once: no repeats after the resume
    for step in range(1, 13):
        assert a[step] == b[step], step
    val_a = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / "a") if r["split"] == "val"]
    val_b = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(tmp_path / "b") if r["split"] == "val"]
    assert val_a == val_b  # all but the wall time
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    pa = json.loads((tmp_path / "a" / "state" / "progress.json").read_text())
    pb = json.loads((tmp_path / "b" / "state" / "progress.json").read_text())
    assert pa.pop("seconds") > 0 and pb.pop("seconds") > 0  # wall time: the one field that differs
    assert pa == pb and pa["step"] == 12


@pytest.mark.parametrize("resume_data", DATA_SIZES, indirect=True)
def test_resume_with_larger_max_steps_continues_exactly(resume_data, tmp_path):
    """Train to max_steps=8, then resume with max_steps=12: equals a 12-step run when the schedule allows it.

    The cosine schedule's horizon is train.max_steps (optim.lr_at), so extending a run changes the
    learning rate from the resumed step on; with a constant rate after warmup (min_lr == lr) the
    extended run must match a run planned for 12 steps exactly.
    """
    def cfg(out, *extra):
        return load_config(None, tiny_overrides(resume_data, tmp_path / out, *RESUME, "train.lr=3e-3",
                                                "train.min_lr=3e-3", *extra))

    train(cfg("a"))
    train(cfg("b", "train.max_steps=8"))
    assert max(train_losses(tmp_path / "b")) == 8
    train(cfg("b", "train.resume=true"))
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 13))
    for step in range(1, 13):
        assert a[step] == b[step], step
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_lr_schedule_depends_on_max_steps():
    tc = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=12)
    assert [lr_at(s, tc) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(4, tc) == pytest.approx(1e-3)
    assert lr_at(12, tc) == pytest.approx(1e-4)  # cosine reaches min_lr at max_steps
    assert lr_at(8, tc) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 9e-4)
    assert lr_at(100, tc) == pytest.approx(1e-4)  # and stays there
    shorter = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=8)
    assert lr_at(6, shorter) != pytest.approx(lr_at(6, tc))  # the horizon is part of the schedule
    assert lr_at(6, shorter, total_steps=12) == pytest.approx(lr_at(6, tc))
    flat = TrainConfig(lr=1e-3, min_lr=1e-3, warmup_steps=0, max_steps=10)
    assert {lr_at(s, flat) for s in range(12)} == {1e-3}


def test_weight_decay_only_on_matrices():
    from minilm.models.transformer.config import TransformerConfig
    from minilm.models.transformer.heads import CausalLM

    model = CausalLM(TransformerConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------
# refusals


def test_new_run_into_non_empty_dir_is_refused_untouched(make_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.safetensors").write_bytes(b"not really")
    before = snapshot(out)
    with pytest.raises(CheckpointError, match="not empty"):
        train(make_cfg())
    assert snapshot(out) == before


def test_new_run_into_finished_run_is_refused_untouched(trained_run, make_cfg):
    before = snapshot(trained_run.run_dir)
    with pytest.raises(CheckpointError, match="resume"):
        train(make_cfg(out_dir=trained_run.run_dir))
    assert snapshot(trained_run.run_dir) == before


def test_resume_without_state_is_refused(make_cfg, tmp_path, trained_run):
    with pytest.raises(CheckpointError, match="no saved training state"):
        train(make_cfg("train.resume=true", out_dir=tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no saved training state"):
        train(make_cfg("train.resume=true", out_dir=empty))
    partial = tmp_path / "partial"  # a run directory whose training state was never written
    partial.mkdir()
    shutil.copy(trained_run.run_dir / "config.json", partial / "config.json")
    with pytest.raises(CheckpointError):
        train(make_cfg("train.resume=true", out_dir=partial))
    assert sorted(p.name for p in partial.iterdir()) == ["config.json"]


def test_resume_with_a_different_model_is_refused(trained_run, make_cfg, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run.run_dir, run)
    before = snapshot(run)
    with pytest.raises(ConfigError, match="model section"):
        train(make_cfg("model.n_embd=32", "train.resume=true", "train.max_steps=160", out_dir=run))
    assert snapshot(run) == before


def test_too_little_data_fails_cleanly(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("To be or not to be.\n")
    cfg = load_config(None, tiny_overrides(f, tmp_path / "run"))
    with pytest.raises(DataError, match="block"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # a failed new run leaves nothing behind


def test_batch_larger_than_data_fails_cleanly(tmp_path, shakespeare_text):
    f = tmp_path / "small.txt"
    f.write_text(shakespeare_text[:2000])
    cfg = load_config(None, tiny_overrides(f, tmp_path / "run", "train.batch_size=512"))
    with pytest.raises(ConfigError, match="batch_size"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# the command line (subprocesses)


def test_cli_train_and_train_py_entry_point(shakespeare_file, tmp_path):
    common = (f"data.train_files=[{shakespeare_file}]", "model.n_layer=1", "model.n_embd=32", "model.block_size=32",
              "train.max_steps=4", "train.batch_size=8", "train.eval_interval=2", "train.warmup_steps=1",
              "train.eval_batches=2", "log.log_interval=1")
    via_cli, via_script = run_cli_many([
        ("train", str(TINY_YAML), f"train.out_dir={tmp_path / 'cli'}", *common),
        ("train.py", str(TINY_YAML), f"train.out_dir={tmp_path / 'script'}", *common),
    ])
    for name, proc in (("cli", via_cli), ("script", via_script)):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        run = tmp_path / name
        for f in ("model.safetensors", "config.json", "tokenizer.json", "state/progress.json", "metrics.jsonl", "loss.png"):
            assert (run / f).is_file(), (name, f)
        saved = json.loads((run / "config.json").read_text())
        assert saved["model"]["preset"] == "gpt-tiny"  # from the YAML file ...
        assert saved["model"]["n_layer"] == 1 and saved["model"]["n_head"] == 2  # ... under the overrides
        assert saved["train"]["max_steps"] == 4
        assert json.loads((run / "state" / "progress.json").read_text())["step"] == 4
        assert [r["step"] for r in read_metrics(run) if r["split"] == "val"] == [2, 4]
    # the same config and seed give the same run either way
    assert_same_weights(tmp_path / "cli", tmp_path / "script")


def test_cli_train_errors_are_one_line(tmp_path, shakespeare_file, capsys):
    """User mistakes exit 2 with one `minilm: error:` line (in-process: the same main() the script runs)."""
    from minilm.cli import main

    (tmp_path / "keep.txt").write_text("x")
    cases = [
        (["train", str(tmp_path / "nope.yaml")], "nope.yaml"),
        (["train", str(TINY_YAML), "model.n_layers=3"], "model.n_layers"),
        (["train", str(TINY_YAML), "model.n_layer"], "model.n_layer"),
        (["train", str(TINY_YAML), f"data.train_files={shakespeare_file}", f"train.out_dir={tmp_path}"], "not empty"),
        (["train", str(TINY_YAML), f"data.train_files={tmp_path / 'none.txt'}", f"train.out_dir={tmp_path / 'r'}"],
         "none.txt"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("minilm: error: ") and needle in lines[0], (argv, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # nothing was created or touched
    with pytest.raises(ConfigError):  # --debug shows the exception itself
        main(["--debug", "train", str(TINY_YAML), "model.n_layers=3"])


def test_cli_sample(trained_run):
    args = ("sample", str(trained_run.run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1")
    cached, uncached = run_cli_many([args, (*args, "--no-cache")])
    for proc in (cached, uncached):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert proc.stdout.startswith("ROMEO:")
        new = proc.stdout[len("ROMEO:"):].rstrip("\n")
        assert 0 < len(new) <= 20  # one character per token, at most 20 (an end-of-text token ends early)
    assert cached.stdout == uncached.stdout  # the KV cache changes nothing
    assert len(set(cached.stdout[6:])) > 3  # a trained model writes varied text


def test_cli_sample_usage_errors(trained_run):
    run = str(trained_run.run_dir)
    cases = {
        "--top-k": ("--top-k", "0"),
        "--temperature": ("--temperature", "-1"),
        "--max-new-tokens": ("--max-new-tokens", "-1"),
        "never saw": ("--prompt", "ROMEO: \u65e5\u672c"),
    }
    results = run_cli_many([("sample", run, "--prompt", "ROMEO:", *extra) for extra in cases.values()])
    for needle, proc in zip(cases, results):
        assert proc.returncode == 2, (needle, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, needle
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (needle, proc.stderr)
        assert lines[0].startswith("minilm: error: ") and needle in lines[0], (needle, lines[0])
        assert proc.stdout == "", needle  # nothing was generated


def test_cli_sample_in_process(trained_run, capsys):
    """More sample options through main() itself (no interpreter start-up per case)."""
    from minilm.cli import main

    run = str(trained_run.run_dir)
    for argv, needle in [
        (["sample", run, "--top-p", "1.5"], "--top-p"),
        (["sample", run, "--top-k", str(trained_run.vocab_size + 1)], "--top-k"),
        (["sample", run, "--num-samples", "0"], "--num-samples"),
        (["sample", str(trained_run.run_dir.parent / "no-such-run")], "no-such-run"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and needle in err, (argv, err)
    # greedy decoding is deterministic whatever the seed; an empty prompt starts a new document
    outs = []
    for seed in ("1", "2"):
        assert main(["sample", run, "--prompt", "KING", "--greedy", "--max-new-tokens", "15", "--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("KING") and len(outs[0].rstrip("\n")) > 4
    assert main(["sample", run, "--max-new-tokens", "10", "--num-samples", "2", "--top-k", "5", "--top-p", "0.9"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2


def test_a_best_metric_the_task_does_not_report_is_refused_before_any_work(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="val_accuracy.*causal_lm.*val_loss, val_ppl"):
        train(make_cfg("train.best_metric=val_accuracy"))
    assert not (tmp_path / "run").exists()


def test_eval_scores_a_language_model_on_a_text_file(trained_run, shakespeare_text, tmp_path, capsys):
    """`minilm eval` on a GPT run: next-token loss over the file's blocks, computed here straight from the tokens."""
    from minilm.cli import main

    text = shakespeare_text[:3000]
    (tmp_path / "held.txt").write_text(text, encoding="utf-8")
    assert main(["eval", str(trained_run.run_dir), "--data", str(tmp_path / "held.txt")]) == 0
    printed = {k.strip(): v for k, v in (line.split(":") for line in capsys.readouterr().out.splitlines()[1:])}
    cfg, model, tok = load_run(trained_run.run_dir)
    ids = torch.tensor(tok.encode(text).ids + [tok.token_to_id("<|endoftext|>")])
    T = cfg.model.block_size
    n = (len(ids) - 1) // T
    x, y = ids[: n * T].view(n, T), ids[1 : n * T + 1].view(n, T)  # (n, T) each: consecutive blocks
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten()).item()
    assert float(printed["loss"]) == pytest.approx(expected, abs=1e-4)
    assert float(printed["ppl"]) == pytest.approx(math.exp(expected), rel=1e-3)


def test_a_new_task_is_one_registry_entry(make_cfg, tmp_path, monkeypatch):
    """A task registered under a new name (and its model under the family's tasks) trains, checkpoints and loads
    with no change to the loop or run code."""
    import dataclasses

    from minilm import tasks
    from minilm.models import FAMILIES
    from minilm.models.transformer.heads import CausalLM
    from minilm.tasks import causal_lm

    class OtherLM(CausalLM):
        """Stands in for the new task's own model."""

    monkeypatch.setitem(tasks.TASKS, "toy_lm", dataclasses.replace(causal_lm.TASK, name="toy_lm"))
    monkeypatch.setitem(FAMILIES["transformer"].tasks, "toy_lm", OtherLM)
    result = train(make_cfg("train.task=toy_lm", "train.max_steps=4", "train.eval_interval=2"))
    assert set(result) == {"val_loss", "val_ppl"}
    cfg, model, _ = load_run(tmp_path / "run")
    assert cfg.train.task == "toy_lm" and type(model) is OtherLM


def test_a_run_killed_before_its_first_checkpoint_starts_again(make_cfg, tmp_path, trained_run):
    early = tmp_path / "early"  # what a start killed before its first checkpoint leaves behind
    early.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(trained_run.run_dir / name, early / name)
    (early / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 9.0}\n{"spl', encoding="utf-8")
    with pytest.raises(CheckpointError, match="stopped before the first one.*without train.resume=true"):
        train(make_cfg("train.resume=true", out_dir=early))
    train(make_cfg("train.max_steps=10", out_dir=early))  # started again: the leftovers are replaced
    steps = [r["step"] for r in read_metrics(early) if r["split"] == "train"]
    assert steps == sorted(steps) and 9.0 not in [r.get("loss") for r in read_metrics(early)]
    assert (early / "state" / "progress.json").is_file()


# ---------------------------------------------------------------------------------------------
# train.mixed_precision=auto: bf16 autocast on a CPU only where it pays; a resumed run keeps its precision


@pytest.mark.parametrize("flags,arch,width,expected", [
    ({"avx2"}, "transformer", 384, "no"),  # no bf16 arithmetic: fp32 whatever the model
    ({"avx2", "avx512f", "avx512_bf16"}, "transformer", 256, "bf16"),  # AVX-512 BF16 (AMD Zen 4 and later)
    ({"avx2", "avx512f", "avx512_bf16"}, "transformer", 128, "no"),
    ({"amx_bf16", "amx_tile"}, "transformer", 384, "bf16"),
    ({"amx_bf16", "amx_tile"}, "transformer", 256, "bf16"),
    ({"amx_bf16", "amx_tile"}, "transformer", 128, "no"),  # the default character model: no faster in bf16
    ({"amx_bf16", "amx_tile"}, "lstm", 384, "no"),  # measured for Transformers only
])
def test_auto_precision_on_a_cpu(monkeypatch, flags, arch, width, expected):
    from minilm import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = [f"model.arch={arch}", f"model.n_embd={width}"] + (["model.n_head=4"] if arch == "transformer" else [])
    cfg = load_config(None, ["data.train_files=x.txt", *extra])
    chosen, why = precision.choose(cfg)
    assert chosen == expected and why.startswith("bf16" if expected == "bf16" else "fp32"), why
    forced = load_config(None, ["data.train_files=x.txt", *extra, "train.mixed_precision=bf16"])
    assert precision.choose(forced) == ("bf16", "train.mixed_precision=bf16")


def test_bf16_cpu_run_trains_resumes_exactly_and_keeps_its_precision(shakespeare_file, tmp_path):
    """In child processes: accelerate fixes a process's precision at its first Accelerator. A constant learning
    rate after warmup, so that stopping at max_steps=8 and resuming to 12 equals one 12-step run."""
    def args(out, *extra):
        constant = ("train.lr=3e-3", "train.min_lr=3e-3")
        return ("train", str(TINY_YAML), *tiny_overrides(shakespeare_file, tmp_path / out, *RESUME, *constant, *extra))

    a, b = run_cli_many([args("a", "train.mixed_precision=bf16"),
                         args("b", "train.mixed_precision=bf16", "train.max_steps=8", "train.eval_interval=4")])
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    assert "precision: train.mixed_precision=bf16" in a.stdout
    assert json.loads((tmp_path / "b" / "state" / "progress.json").read_text())["precision"] == "bf16"
    refused, resumed = run_cli_many([args("b", "train.resume=true", "train.mixed_precision=no"),
                                     args("b", "train.resume=true")], parallel=1)
    assert refused.returncode != 0 and "started with mixed precision 'bf16'" in refused.stderr
    assert resumed.returncode == 0 and "precision: bf16, as the run started" in resumed.stdout, resumed.stderr[-2000:]
    la, lb = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert la == lb and la[12] < la[1]
    assert_same_weights(tmp_path / "a", tmp_path / "b")
