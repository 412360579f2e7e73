"""Bad input through the real command line (subprocesses): every case exits 2 with ONE line on stderr that names
the problem, prints no traceback, and leaves every existing run directory exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_YAML, randomize, run_cli, run_cli_many, snapshot, write_run
from minilm.config import config_from_dict
from minilm.models import HeadConfig
from minilm.models.transformer.heads import Classifier, MaskedLM
from minilm.tokenizer import train_wordpiece

TREC = ROOT / "data" / "trec"
FINETUNE = ROOT / "configs" / "finetune-trec.yaml"
SMALL_BERT = {"preset": "bert-tiny", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run) -> dict[str, Path]:
    """Run directories the cases point at (and must leave alone): a GPT run, a BERT run, a classifier, broken ones."""
    tmp = tmp_path_factory.mktemp("bad_input")
    gpt = tmp / "gpt"
    shutil.copytree(trained_run.run_dir, gpt)
    questions = [line.split("\t")[2] for line in (TREC / "train.tsv").read_text(encoding="utf-8").splitlines()[1:800]]
    tok = train_wordpiece(questions, 300, lowercase=True)
    bert_cfg = config_from_dict({"model": {**SMALL_BERT, "vocab_size": tok.get_vocab_size()},
                                 "tokenizer": {"kind": "wordpiece"}, "data": {"train_files": ["unused.txt"]}})
    torch.manual_seed(0)
    bert = MaskedLM(bert_cfg.model)
    randomize(bert)
    cls_cfg = config_from_dict({"model": {**SMALL_BERT, "vocab_size": tok.get_vocab_size()},
                                "tokenizer": {"kind": "wordpiece"}, "data": {"train_files": ["unused.tsv"]},
                                "classify": {"labels": ["neg", "pos"]}, "train": {"task": "classify"}})
    cls = Classifier(cls_cfg.model, HeadConfig.of(cls_cfg))
    randomize(cls)
    out = {"gpt": gpt, "bert": write_run(tmp / "bert", bert_cfg, bert, tok), "cls": write_run(tmp / "cls", cls_cfg, cls, tok)}

    def broken(name: str, damage) -> None:
        out[name] = tmp / name
        shutil.copytree(gpt, out[name])
        damage(out[name])

    broken("no_weights", lambda d: (d / "model.safetensors").unlink())
    broken("truncated", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]))

    def wider(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"]["n_embd"] *= 2
        (d / "config.json").write_text(json.dumps(cfg))

    broken("shape_mismatch", wider)
    broken("bad_json", lambda d: (d / "config.json").write_text("{not json"))
    broken("pickled", lambda d: torch.save({"w": torch.zeros(2)}, d / "model.safetensors"))
    broken("big_vocab", lambda d: shutil.copy(out["bert"] / "tokenizer.json", d / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad_files")

    def write(name: str, data: str | bytes) -> Path:
        path = tmp / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path

    trec = (TREC / "train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp / "no_text_here").mkdir()
    write("no_text_here/scan.pdf", b"%PDF-1.4 not a format minilm reads")
    return {
        "malformed": write("malformed.yaml", "model:\n  n_layer: [4\n"),
        "not_mapping": write("list.yaml", "- model\n- train\n"),
        "empty": write("empty.txt", ""),
        "binary": write("binary.txt", bytes(range(256)) * 40),
        "latin1": write("latin1.txt", ("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade. " * 300
                                       ).encode("latin-1")),  # not UTF-8
        "short": write("short.txt", "To be, or not to be."),
        "no_text_dir": tmp / "no_text_here",
        "trec_head": write("trec.tsv", "\n".join(trec[:200]) + "\n"),
        "no_label_col": write("nolabel.tsv", "\n".join(line.replace("label\t", "kind\t", 1) if i == 0 else line
                                                       for i, line in enumerate(trec[:200])) + "\n"),
        "unseen_label": write("unseen.tsv", trec[0] + "\nSARCASM\tx\tIs this a new label ?\n"),
        "broken_jsonl": write("broken.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n'
                                              '{"sentence": "oops", "label": \n{"sentence": "ok", "label": 1}\n'),
    }


TRAIN = ("train", str(TINY_YAML))
SMALL = ("model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "train.max_steps=2")


def cases(runs: dict[str, Path], files: dict[str, Path], tmp: Path) -> dict[str, tuple[tuple[str, ...], str]]:
    """name -> (arguments, a phrase the one error line must contain)."""
    out = lambda name: f"train.out_dir={tmp / name}"  # noqa: E731
    data = lambda path: f"data.train_files={path}"  # noqa: E731
    ft = lambda name, *extra: ("finetune", str(FINETUNE), *SMALL, out(name), "model.preset=bert-tiny",  # noqa: E731
                               "tokenizer.vocab_size=500", *extra)
    gpt, bert, cls = str(runs["gpt"]), str(runs["bert"]), str(runs["cls"])
    return {
        # configuration
        "malformed yaml": (("train", str(files["malformed"])), "malformed.yaml"),
        "yaml not a mapping": (("train", str(files["not_mapping"])), "list.yaml"),
        "missing config": (("train", str(tmp / "nope.yaml")), "nope.yaml"),
        "unknown key": ((*TRAIN, "model.n_layers=3", out("a")), "model.n_layers"),
        "unknown section": ((*TRAIN, "optim.lr=3", out("a")), "optim"),
        "wrong type": ((*TRAIN, "model.n_layer=four", out("a")), "model.n_layer"),
        "negative size": ((*TRAIN, "model.n_embd=-8", out("a")), "model.n_embd"),
        "zero size": ((*TRAIN, "train.batch_size=0", out("a")), "train.batch_size"),
        "heads do not divide width": ((*TRAIN, "model.n_embd=30", "model.n_head=4", out("a")), "divisible"),
        "unknown preset": ((*TRAIN, "model.preset=gpt-huge", out("a")), "gpt-huge"),
        "override without =": ((*TRAIN, "model.n_layer"), "model.n_layer"),
        "min_lr above lr": ((*TRAIN, "train.lr=1e-4", "train.min_lr=1e-3", out("a")), "train.min_lr"),
        "unknown task": ((*TRAIN, "train.task=translate", out("a")), "causal_lm, masked_lm, classify"),
        "task contradicts the model": ((*TRAIN, "train.task=masked_lm", out("a")), "model.causal=false"),
        "best_metric the task lacks": ((*TRAIN, "train.best_metric=val_accuracy", out("a")), "val_loss, val_ppl"),
        "block beyond position table": ((*TRAIN, *SMALL, f"model.init_from={gpt}", "model.block_size=4096", out("a")),
                                        "block_size"),
        "out_dir holds a run": ((*TRAIN, *SMALL, f"train.out_dir={gpt}"), "not empty"),
        "resume without state": ((*TRAIN, *SMALL, out("fresh"), "train.resume=true"), "resume"),
        # data
        "missing data path": ((*TRAIN, *SMALL, data(tmp / "nothing.txt"), out("a")), "nothing.txt"),
        "empty file": ((*TRAIN, *SMALL, data(files["empty"]), out("a")), "empty.txt"),
        "binary file": ((*TRAIN, *SMALL, data(files["binary"]), out("a")), "binary.txt"),
        "non-UTF-8 text": ((*TRAIN, *SMALL, data(files["latin1"]), out("a")), "UTF-8"),
        "no matching files": ((*TRAIN, *SMALL, data(files["no_text_dir"]), out("a")), "no_text_here"),
        "shorter than one block": ((*TRAIN, *SMALL, data(files["short"]), out("a")), "block"),
        "missing text column": (ft("a", f"data.train_files=[{files['trec_head']}]", f"data.val_files=[{files['trec_head']}]",
                                   "data.text_column=sentence"), "sentence"),
        "missing label column": (ft("a", f"data.train_files=[{files['no_label_col']}]",
                                    f"data.val_files=[{files['trec_head']}]"), "label"),
        "label unseen in training": (ft("a", f"data.train_files=[{files['trec_head']}]",
                                        f"data.val_files=[{files['unseen_label']}]"), "SARCASM"),
        "eval file missing": (("eval", cls, "--data", str(tmp / "dev.tsv")), "dev.tsv"),
        # checkpoints
        "run dir missing": (("sample", str(tmp / "no-run")), "no-run"),
        "weights missing": (("sample", str(runs["no_weights"])), "model.safetensors"),
        "weights truncated": (("sample", str(runs["truncated"])), "cut short"),
        "pickle planted as weights": (("sample", str(runs["pickled"])), "is a pickle"),
        "directory as config": (("train", str(tmp)), "is a directory"),
        "JSONL with a broken line": (ft("a", f"data.train_files=[{files['broken_jsonl']}]",
                                        f"data.val_files=[{files['broken_jsonl']}]", "data.text_column=sentence"),
                                     "line 3"),
        "config/weights shape mismatch": (("sample", str(runs["shape_mismatch"])), "shape"),
        "config.json not JSON": (("sample", str(runs["bad_json"])), "JSON"),
        "tokenizer larger than model": (("sample", str(runs["big_vocab"])), "tokenizer.json"),
        "BERT run to sample": (("sample", bert), "fill-mask"),
        "GPT run to fill-mask": (("fill-mask", gpt, "to be [MASK]"), "BERT"),
        "pretraining run to classify": (("classify", gpt, "hello"), "classifier"),
        "classifier run to sample": (("sample", cls), "GPT language model"),
        "classifier run to fill-mask": (("fill-mask", cls, "a [MASK] day"), "BERT pretraining"),
        "export to a non-empty folder": (("export", bert, str(runs["gpt"])), "not an empty"),
        # command-line values
        "top-k zero": (("sample", gpt, "--top-k", "0"), "--top-k"),
        "top-k above vocabulary": (("sample", gpt, "--top-k", "100000"), "--top-k"),
        "negative temperature": (("sample", gpt, "--temperature", "-0.5"), "--temperature"),
        "negative max-new-tokens": (("sample", gpt, "--max-new-tokens", "-3"), "--max-new-tokens"),
        "top-p above one": (("sample", gpt, "--top-p", "1.5"), "--top-p"),
        "zero beams": (("sample", gpt, "--beams", "0"), "--beams"),
        "more n-best than beams": (("sample", gpt, "--beams", "2", "--n-best", "3"), "--n-best"),
        "prompt with unseen characters": (("sample", gpt, "--prompt", "ROMEO: \u00bfqu\u00e9 \u2603?"), "never saw"),
        "not a number": (("sample", gpt, "--max-new-tokens", "lots"), "--max-new-tokens"),
        "no [MASK] in text": (("fill-mask", bert, "the old man walked"), "[MASK]"),
        "--pair for a single-text classifier": (("classify", cls, "good", "--pair", "bad"), "--pair"),
        "unknown command": (("pretrain", "x.yaml"), "pretrain"),
        "prepare for fine-tuning": (("prepare", str(FINETUNE)), "nothing to prepare"),
    }


def test_bad_input_is_one_line_and_touches_nothing(runs, files, tmp_path):
    table = cases(runs, files, tmp_path)
    assert len(table) >= 30
    before = {name: snapshot(path) for name, path in runs.items()}
    results = run_cli_many([args for args, _ in table.values()], parallel=4)
    failures = []
    for (name, (args, needle)), proc in zip(table.items(), results):
        lines = proc.stderr.strip().splitlines()
        ok = (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("minilm: error: ")
              and needle.lower() in lines[0].lower() and "Traceback" not in proc.stderr)
        if not ok:
            failures.append(f"{name}: exit {proc.returncode}, stderr {proc.stderr.strip()[-600:]!r}")
    assert not failures, "\n".join(failures)
    for name, path in runs.items():
        assert snapshot(path) == before[name], name  # no run directory was modified
    assert not (tmp_path / "a").exists() and not (tmp_path / "fresh").exists()  # failed runs left nothing


def test_debug_shows_the_traceback(runs):
    proc = run_cli("--debug", "sample", str(runs["gpt"]), "--top-k", "0")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "--top-k" in proc.stderr
