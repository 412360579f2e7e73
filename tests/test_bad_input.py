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
from minilm.data.seq2seq import source_text
from minilm.hf import export_hf
from minilm.models import HeadConfig
from minilm.models.recurrent.heads import RecurrentLM
from minilm.models.transformer.heads import Classifier, MaskedLM, Seq2Seq
from minilm.tokenizer import train_char, train_word, train_wordpiece

TREC = ROOT / "data" / "trec"
FINETUNE = ROOT / "configs" / "finetune-trec.yaml"
SMALL_BERT = {"preset": "bert-tiny", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64}
G2P = [line.split("\t") for line in (ROOT / "data" / "cmudict" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:200]]


def seq2seq_run(path: Path) -> Path:
    """A random G2P encoder-decoder that reads its source one letter per token (seq2seq.source_chars)."""
    tok = train_word([source_text(w, True) for w, _ in G2P] + [p for _, p in G2P])
    cfg = config_from_dict({"model": {"encoder_layers": 1, "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 40,
                                      "norm": "post", "embedding_norm": True, "activation": "gelu",  # as BART
                                      "vocab_size": tok.get_vocab_size()},
                            "tokenizer": {"kind": "word"}, "data": {"train_files": ["unused.tsv"]},
                            "seq2seq": {"source_column": "word", "target_column": "phonemes", "source_chars": True},
                            "train": {"task": "seq2seq"}})
    torch.manual_seed(0)
    net = Seq2Seq(cfg.model)
    randomize(net)
    return write_run(path, cfg, net, tok)


def lstm_run(path: Path) -> Path:
    tok = train_char(["to be or not to be"])
    cfg = config_from_dict({"model": {"arch": "lstm", "n_layer": 1, "n_embd": 16, "block_size": 32,
                                      "vocab_size": tok.get_vocab_size()}, "data": {"train_files": ["unused.txt"]}})
    return write_run(path, cfg, RecurrentLM(cfg.model), tok)


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
    out = {"gpt": gpt, "bert": write_run(tmp / "bert", bert_cfg, bert, tok), "cls": write_run(tmp / "cls", cls_cfg, cls, tok),
           "s2s": seq2seq_run(tmp / "s2s"), "lstm": lstm_run(tmp / "lstm")}
    export_hf(gpt, tmp / "hf_gpt")
    out["hf_gpt"] = tmp / "hf_gpt"

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
        # one stray tab in the 5th line (its question holds a tab): 4 fields under a 3-field header
        "stray_tab": write("stray.tsv", "\n".join(trec[:4] + [trec[4].replace(" ", "\t", 1)] + trec[5:60]) + "\n"),
        "short_row_csv": write("short.csv", "sentence,label\ngood,1\nbad\n"),
        "header_only": write("header.tsv", "word\tphonemes\n"),
        "g2p": write("g2p.tsv", "word\tphonemes\n" + "".join(f"{w}\t{p}\n" for w, p in G2P[:40])),
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
    gpt, bert, cls, s2s = str(runs["gpt"]), str(runs["bert"]), str(runs["cls"]), str(runs["s2s"])
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
        # sizes bounded by what they can mean, or by memory, before any work
        "beams beyond the vocabulary": (("sample", gpt, "--beams", "100000"), "vocabulary"),
        "beams beyond memory (translate)": (("translate", s2s, "cat", "--beams", "10000000"), "--beams"),
        "batch of no sources": (("translate", s2s, "cat", "--batch-size", "0"), "--batch-size"),
        "eval batch of none": (("eval", cls, "--data", str(files["trec_head"]), "--batch-size", "0"), "--batch-size"),
        "eval beams beyond the vocabulary": (("eval", s2s, "--data", str(files["g2p"]), "--beams", "99999"),
                                             "vocabulary"),
        "seed beyond 64 bits": (("sample", gpt, "--seed", str(2**70)), "--seed"),
        "negative seed": (("sample", gpt, "--seed", "-1"), "--seed"),
        # meaningless values and flags that do not apply
        "nan length penalty": (("sample", gpt, "--beams", "2", "--length-penalty", "nan"), "finite"),
        "inf length penalty": (("translate", s2s, "cat", "--beams", "2", "--length-penalty", "inf"), "finite"),
        "nan temperature": (("sample", gpt, "--temperature", "nan"), "finite"),
        "-inf top-p": (("translate", s2s, "cat", "--top-p=-inf"), "finite"),
        "zero new tokens": (("sample", gpt, "--max-new-tokens", "0"), "--max-new-tokens 0"),
        "zero new tokens (translate)": (("translate", s2s, "cat", "--max-new-tokens", "0"), "--max-new-tokens 0"),
        "length penalty without beams": (("sample", gpt, "--length-penalty", "2"), "add --beams"),
        "length penalty without beams (translate)": (("translate", s2s, "cat", "--length-penalty", "0"), "add --beams"),
        "length penalty without beams (eval)": (("eval", s2s, "--data", str(files["g2p"]), "--length-penalty", "2"),
                                                "add --beams"),
        "beams on eval of a classifier": (("eval", cls, "--data", str(files["trec_head"]), "--beams", "2"), "seq2seq"),
        "beams on eval of a GPT run": (("eval", gpt, "--data", str(files["short"]), "--beams", "2"), "seq2seq"),
        "length penalty on eval of a GPT": (("eval", gpt, "--data", str(files["short"]), "--length-penalty", "1"),
                                            "seq2seq"),
        "blank source": (("translate", s2s, "   "), "empty source"),
        "mixed_precision yes": ((*TRAIN, *SMALL, "train.mixed_precision=yes", out("a")), "train.mixed_precision"),
        # places that cannot be written
        "prepared_dir is a file": ((*TRAIN, *SMALL, f"data.prepared_dir={files['short']}", out("a")), "is a file"),
        "prepared_dir under a file": ((*TRAIN, *SMALL, f"data.prepared_dir={files['short']}/p", out("a")), "is a file"),
        "export under a file": (("export", gpt, str(files["short"] / "hf")), "is a file"),
        "export onto a file": (("export", gpt, str(files["short"])), "is a file"),
        # messages that name the real problem
        "TSV row with a stray tab": (ft("a", f"data.train_files=[{files['stray_tab']}]",
                                        f"data.val_files=[{files['trec_head']}]"), "line 5 has 4 fields"),
        "TSV row with a stray tab (val)": (ft("a", f"data.train_files=[{files['trec_head']}]",
                                              f"data.val_files=[{files['stray_tab']}]"), "data.val_files"),
        "TSV row with a stray tab (eval)": (("eval", cls, "--data", str(files["stray_tab"])), "stray.tsv' line 5"),
        "CSV row missing a field": (("eval", cls, "--data", str(files["short_row_csv"]), "--text-column", "sentence"),
                                    "line 3 has 1 fields"),
        "info on a file": (("info", str(files["short"])), "is a file"),
        "export of a Hugging Face folder": (("export", str(runs["hf_gpt"]), str(tmp / "again")), "Hugging Face model folder"),
        "a Hugging Face config.json as the config": (("train", str(runs["hf_gpt"] / "config.json")), "Hugging Face gpt2"),
        "header-only table": (("eval", s2s, "--data", str(files["header_only"])), "only a header"),
        "greedy with temperature": (("sample", gpt, "--greedy", "--temperature", "2"), "--greedy"),
        "greedy samples repeat": (("sample", gpt, "--greedy", "--num-samples", "3"), "--num-samples 3"),
        "top-k under greedy translate": (("translate", s2s, "cat", "--top-k", "3"), "--temperature above 0"),
        "temperature with beams": (("translate", s2s, "cat", "--beams", "2", "--temperature", "1"), "--beams"),
        "threads beyond the CPUs": ((*TRAIN, *SMALL, "train.threads=100000", out("a")), "train.threads"),
        "model beyond memory": ((*TRAIN, *SMALL, "model.n_embd=65536", "model.n_head=1", out("a")), "GiB"),
        "presets at a negative vocabulary": (("presets", "--vocab", "-5"), "--vocab"),
        "info on a Hugging Face folder": (("info", str(runs["hf_gpt"])), "Hugging Face model folder"),
        "sample a Hugging Face folder": (("sample", str(runs["hf_gpt"])), "init_from"),
        "finetune from a seq2seq run": (ft("a", f"model.init_from={s2s}", f"data.train_files=[{files['trec_head']}]",
                                           f"data.val_files=[{files['trec_head']}]"), "holds a train.task=seq2seq"),
        "GPT from a classifier run": ((*TRAIN, *SMALL[:-1], f"model.init_from={cls}", out("a")),
                                      "holds a train.task=classify"),
        "a copied run's config.json, no resume": (("train", str(runs["gpt"] / "config.json")), "belongs to the run in"),
        "resume a run's config into another out_dir": (("train", str(runs["gpt"] / "config.json"), "train.resume=true",
                                                        f"train.out_dir={tmp / 'elsewhere'}"), "config.json of the run"),
    }


def test_bad_input_is_one_line_and_touches_nothing(runs, files, tmp_path):
    table = cases(runs, files, tmp_path)
    assert len(table) >= 80
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
    assert not (tmp_path / "elsewhere").exists()
    assert not list(files["short"].parent.glob(".*.lock"))  # no lock file beside a refused prepared_dir


def test_debug_shows_the_traceback(runs):
    proc = run_cli("--debug", "sample", str(runs["gpt"]), "--top-k", "0")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "--top-k" in proc.stderr


# ---------------------------------------------------------------------------------------------
# what is not a refusal: the output stays right, long work says what it does, a copy is resumed as itself


def test_mixed_precision_no_is_the_string_no_in_files_and_overrides(tmp_path):
    from minilm.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train_files: [x.txt]\ntrain:\n  mixed_precision: no\n  resume: off\n  compile: yes\n"
                    "log:\n  run_name: on\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.train.mixed_precision == "no" and cfg.train.resume is False and cfg.train.compile is True
    assert cfg.log.run_name == "on"  # a string option keeps the word
    cfg = load_config(None, ["data.train_files=x.txt", "train.mixed_precision=no", "model.bias=no"])
    assert cfg.train.mixed_precision == "no" and cfg.model.bias is False


def test_a_copied_run_resumes_itself_and_never_writes_to_the_original(trained_run, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(trained_run.run_dir, original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)
    proc = run_cli("train", str(copy / "config.json"), "train.resume=true", "train.max_steps=160",
                   "train.eval_interval=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming the run in" in proc.stderr and str(copy) in proc.stderr
    assert snapshot(original) == before
    steps = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 160


def test_translate_keeps_blank_lines_and_eval_shows_progress(runs, files):
    proc = run_cli("translate", str(runs["s2s"]), "--max-new-tokens", "3", input_text="cat\n\ndog\n   \nbird\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")[:-1]
    assert len(lines) == 5 and lines[1] == "" and lines[3] == ""
    alone = run_cli("translate", str(runs["s2s"]), "bird", "--max-new-tokens", "3")
    assert alone.stdout.strip() == lines[4].strip()  # the same output as the source alone
    digits = run_cli("translate", str(runs["s2s"]), "c4t", "--max-new-tokens", "3")
    assert digits.returncode == 0 and "no '4': read as [UNK]" in digits.stderr
    proc = run_cli("classify", str(runs["cls"]), input_text="what is a dog ?\n\nwho wrote it ?\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == "" and lines[2].endswith("\twho wrote it ?")
    proc = run_cli("eval", str(runs["s2s"]), "--data", str(files["g2p"]), "--beams", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "beam 2" in proc.stderr and "source" in proc.stderr  # a progress bar over the sources


def test_sampling_that_ends_says_so(tmp_path):
    from minilm.models.transformer.heads import CausalLM

    tok = train_char(["to be or not to be"])
    cfg = config_from_dict({"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
                                      "vocab_size": tok.get_vocab_size()}, "data": {"train_files": ["x.txt"]}})
    net = CausalLM(cfg.model)
    with torch.no_grad():  # every position's output is the end-of-text embedding: it always ends at once
        net.transformer.final_norm.weight.zero_()
        net.transformer.final_norm.bias.copy_(net.transformer.tok_emb.weight[0] * 10)
    run = write_run(tmp_path / "run", cfg, net, tok)
    proc = run_cli("sample", str(run), "--prompt", "to", "--greedy")
    assert proc.returncode == 0 and proc.stdout == "to\n"
    assert "ended the text (<|endoftext|>) after 0 of --max-new-tokens 200" in proc.stderr


def test_info_names_recurrent_stacks_and_character_tokenizers(runs):
    proc = run_cli("info", str(runs["lstm"]))
    assert proc.returncode == 0, proc.stderr
    assert "positions" not in proc.stdout.replace("no position table", "") and "no position table" in proc.stdout
    assert "character-level" in proc.stdout
    assert "word-level" in run_cli("info", str(runs["s2s"])).stdout


def test_exported_tokenizers_read_text_as_minilm_does(runs, tmp_path):
    from tokenizers import Tokenizer

    from minilm.run import read_tokenizer

    own = Tokenizer.from_file(str(runs["gpt"] / "tokenizer.json"))
    out = Tokenizer.from_file(str(runs["hf_gpt"] / "tokenizer.json"))
    assert out.encode("to be").ids == own.encode("to be").ids
    assert out.encode("to \u2603").ids == own.encode("to ").ids + [own.token_to_id("<|endoftext|>")]  # no raise
    export_hf(runs["s2s"], tmp_path / "hf_s2s")
    own = read_tokenizer(runs["s2s"], 10**6)
    out = Tokenizer.from_file(str(tmp_path / "hf_s2s" / "tokenizer.json"))
    for word in ("cat", "new york", " aardvark "):
        assert out.encode(word).ids == own.encode(source_text(word, True)).ids, word


def test_prepare_and_the_last_evaluation_say_what_they_do(tmp_path, small_shakespeare_file, capsys):
    from conftest import tiny_overrides
    from minilm.config import load_config
    from minilm.data.prepared import prepare
    from minilm.train import train

    overrides = tiny_overrides(small_shakespeare_file, tmp_path / "run", f"data.prepared_dir={tmp_path / 'p'}",
                               "train.max_steps=4", "train.eval_interval=2", "train.eval_batches=1",
                               "model.block_size=16", "train.batch_size=4")
    train(load_config(None, overrides))
    out = capsys.readouterr()
    assert "final evaluation: scoring the whole validation set (train.eval_batches" in out.out + out.err
    prepare(load_config(None, overrides), None, lambda texts: None)
    out = capsys.readouterr()
    assert "already prepared" in out.out + out.err


def test_unwritable_cache_is_one_line(tmp_path, files, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(files["short"] / "cache"))  # under a file: never writable
    proc = run_cli(*TRAIN, *SMALL, f"train.out_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("minilm: error: MINILM_CACHE") and not (tmp_path / "run").exists()


def test_tokenizer_training_bounds_words_and_stops_on_ctrl_c():
    import os
    import signal
    import threading
    import time

    from minilm.config import TokenizerConfig
    from minilm.tokenizer import MAX_WORD, interruptible, train_tokenizer

    word = "".join(chr(97 + (i * 7919) % 26) for i in range(1_000_000))  # 1 MB without a space
    started = time.perf_counter()
    tok = train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=400), ["to be or not to be " * 50, word])
    assert time.perf_counter() - started < 30 and tok.get_vocab_size() <= 400
    assert max(len(t) for t in tok.get_vocab()) <= MAX_WORD + 1
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        interruptible(time.sleep, 20)  # a step that does not return to Python by itself
    assert time.perf_counter() - started < 5


def test_decoding_rows_are_bounded_by_memory(monkeypatch):
    from minilm import decoding_args
    from minilm.errors import MinilmError

    cfg = config_from_dict({"model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128, "vocab_size": 50257},
                            "data": {"train_files": ["x.txt"]}})
    monkeypatch.setattr(decoding_args, "free_bytes", lambda device: 2**30)  # 1 GiB free
    decoding_args.check_rows("--beams", 4, cfg, "cpu")
    with pytest.raises(MinilmError, match=r"--beams 40000 needs about .* GiB .* give at most \d+"):
        decoding_args.check_rows("--beams", 40000, cfg, "cpu")
