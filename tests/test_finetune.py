"""Fine-tuning: label mapping, the shipped tables' quirks, pair encoding, pooling under padding, classification
metrics, a short fine-tune on real TREC questions (best checkpoint, early stopping), model.init_from a pretraining
run, Hugging Face parity of an exported classifier, and the finetune / eval / classify commands."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import ROOT, randomize, read_metrics, run_cli, write_run
from safetensors.torch import load_file

from minilm import hf
from minilm.run import load_run, read_config
from minilm.config import config_from_dict
from minilm.data import classify as cls_data
from minilm.data import tables
from minilm.errors import CheckpointError, ConfigError, DataError
from minilm.models.transformer.heads import CausalLM, Classifier, MaskedLM
from minilm.metrics import classification_metrics, confusion, format_confusion
from minilm.models import HeadConfig, build_model
from minilm.tasks import prepare
from minilm.tokenizer import CLS, EOT, SEP, train_bpe, train_char, train_wordpiece

datasets.disable_progress_bars()

TREC, SST2, MRPC = ROOT / "data" / "trec", ROOT / "data" / "sst2", ROOT / "data" / "mrpc"
TREC_LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
TINY_BERT = {"preset": "bert-tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32}
TINY_GPT = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32}
PAIRS = [("The cat sat on the mat .", "A cat was sitting on a mat ."),
         ("Who wrote the novel Emma ?", "Jane Austen wrote it in 1815 ."),
         ("What is the capital of France ?", "Paris")]
THREE = ["a", "b", "c"]  # a classifier's labels
SINGLES = ["How far is it from Denver to Aspen ?", "Who was Galileo ?", "What is an atom ?",
           "What county is Modesto , California in ?"]


def _lines(path: Path, rows: int) -> list[str]:
    """The header and the first `rows` data lines of a shipped table, byte for byte."""
    return path.read_text(encoding="utf-8").splitlines(keepends=True)[: rows + 1]


def _slice(src: Path, dst: Path, rows: int) -> Path:
    dst.write_text("".join(_lines(src, rows)), encoding="utf-8")
    return dst


def _tsv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _cfg(model: dict | None = None, classify: dict | None = None, data: dict | None = None,
         train: dict | None = None, tokenizer: dict | None = None):
    return config_from_dict({
        "model": {**TINY_BERT, **(model or {})},
        "tokenizer": {"kind": "wordpiece", **(tokenizer or {})},
        "data": {"train_files": ["unused.tsv"], **(data or {})},
        "classify": classify or {},
        "train": {"task": "classify", **(train or {})},
    })


def _gpt_cfg(**sections):
    return _cfg(model={"preset": None, "causal": True, "norm": "pre", "embedding_norm": False,
                       "type_vocab_size": 0, "activation": "gelu_tanh", "norm_eps": 1e-5, **TINY_GPT,
                       **sections.pop("model", {})},
                tokenizer=sections.pop("tokenizer", {"kind": "bpe"}), **sections)


@pytest.fixture(scope="module")
def trec_text() -> list[str]:
    return [line.split("\t")[2].strip() for line in _lines(TREC / "train.tsv", 1500)[1:]]


@pytest.fixture(scope="module")
def wp_tok(trec_text):
    return train_wordpiece(trec_text + [a + " " + b for a, b in PAIRS], 600, lowercase=True)


@pytest.fixture(scope="module")
def bpe_tok(trec_text):
    return train_bpe(trec_text + [a + " " + b for a, b in PAIRS], 400)


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory, wp_tok) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    wp_tok.save(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# label mapping


def test_integer_labels_sort_numerically(tmp_path, tok_file):
    train = _tsv(tmp_path / "train.tsv", "sentence\tlabel", "a\t10", "b\t2", "c\t-1", "d\t2", "e\t10")
    dev = _tsv(tmp_path / "dev.tsv", "sentence\tlabel", "f\t2", "g\t-1")
    task = prepare(_cfg(data={"train_files": [str(train)], "val_files": [str(dev)], "text_column": "sentence"},
                             tokenizer={"path": str(tok_file)}))
    assert task.cfg.classify.labels == ["-1", "2", "10"]  # numerically, not "-1" < "10" < "2"
    assert [task.train.data[i]["label_id"] for i in range(5)] == [2, 1, 0, 1, 2]
    assert [task.val[i]["label_id"] for i in range(2)] == [1, 0]
    saved = json.loads(json.dumps(task.cfg.to_dict()))  # what config.json holds: strings
    assert saved["classify"]["labels"] == ["-1", "2", "10"] and "num_labels" not in saved["model"]


def test_string_labels_sort_as_strings(tmp_path, tok_file):
    train = _tsv(tmp_path / "train.tsv", "text\tlabel", "a\tpos", "b\tneutral", "c\tneg", "d\tpos")
    task = prepare(_cfg(data={"train_files": [str(train)], "val_files": [str(train)]},
                             tokenizer={"path": str(tok_file)}))
    assert task.cfg.classify.labels == ["neg", "neutral", "pos"]
    assert [task.val[i]["label_id"] for i in range(4)] == [2, 1, 0, 2]


def test_labels_differing_only_in_spaces_are_one_label():
    ds = datasets.Dataset.from_dict({"label": ["pos", "pos ", "neg", " neg"]})
    assert cls_data.label_names(ds, "label") == ["neg", "pos"]


def test_unseen_validation_label_is_named(tmp_path, tok_file):
    train = _tsv(tmp_path / "train.tsv", "text\tlabel", "a\t0", "b\t1")
    dev = _tsv(tmp_path / "dev.tsv", "text\tlabel", "c\t1", "d\t7", "e\t0")
    cfg = _cfg(data={"train_files": [str(train)], "val_files": [str(dev)]}, tokenizer={"path": str(tok_file)})
    with pytest.raises(DataError, match=r"data\.val_files has labels the training data never had \(7\)") as e:
        prepare(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("train_header,dev_header,classify,key", [
    ("text\tlab", "text\tlabel", {}, "classify.label_column"),  # the training table lacks it
    ("text\tlabel", "text\tlab", {}, "classify.label_column"),  # only the validation table lacks it
    ("sentence\tlabel", "sentence\tlabel", {}, "data.text_column"),  # data.text_column is "text"
    ("text\tlabel", "sentence\tlabel", {}, "data.text_column"),
    ("text\tlabel", "text\tlabel", {"text_pair_column": "second"}, "classify.text_pair_column"),
], ids=["label-train", "label-val", "text-train", "text-val", "pair"])
def test_missing_column_names_the_config_key(tmp_path, tok_file, train_header, dev_header, classify, key):
    train = _tsv(tmp_path / "train.tsv", train_header, "a\t0", "b\t1")
    dev = _tsv(tmp_path / "dev.tsv", dev_header, "c\t1", "d\t0")
    cfg = _cfg(data={"train_files": [str(train)], "val_files": [str(dev)]}, classify=classify,
               tokenizer={"path": str(tok_file)})
    with pytest.raises(DataError, match=re.escape(f"set {key}")) as e:
        prepare(cfg)
    assert "has no column" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# loading the shipped tables' quirks


def test_mrpc_bom_header_and_raw_quotes(tmp_path):
    raw = _lines(MRPC / "dev.tsv", 6)
    assert raw[0].startswith("\ufeffQuality") and any('"' in line for line in raw[1:])  # the quirks are there
    path = tmp_path / "mrpc.tsv"
    path.write_text("".join(raw), encoding="utf-8")
    ds = tables.load_table([str(path)], "data.train_files")
    assert ds.column_names == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]  # no BOM in the first name
    assert len(ds) == 6
    for line, row in zip(raw[1:], ds):
        fields = line.rstrip("\n").split("\t")
        assert [str(row[c]) for c in ds.column_names] == fields  # quotes kept verbatim, nothing merged
    assert ds[0]["#2 String"].startswith('"The foodservice pie')  # an unbalanced quote opens the field
    assert cls_data.label_names(ds, "Quality") == ["0", "1"]


def test_sst2_space_before_tab_is_stripped(tmp_path):
    raw = _lines(SST2 / "dev.tsv", 4)
    path = tmp_path / "sst2.tsv"
    path.write_text("".join(raw), encoding="utf-8")
    ds = tables.load_table([str(path)], "data.train_files")
    texts = [line.split("\t")[0] for line in raw[1:]]
    assert all(t.endswith(" ") for t in texts) and ds["sentence"] == texts  # loaded as written ...
    tok = train_char(texts)  # a space is a token here: a kept trailing space would show
    cfg = _gpt_cfg(data={"text_column": "sentence"}, tokenizer={"kind": "char"})
    enc = cls_data.encode_table(ds, tok, cfg, ["0", "1"], "data.train_files")
    for t, row in zip(texts, enc):  # ... and encoded stripped (block_size 32 keeps the first 32 characters)
        assert row["input_ids"] == tok.encode(t.strip(), add_special_tokens=False).ids[:32]
    assert enc[1]["input_ids"] == tok.encode("unflinchingly bleak and desperate", add_special_tokens=False).ids[:32]
    assert [r["label_id"] for r in enc] == [int(line.split("\t")[1]) for line in raw[1:]]


def test_na_and_null_stay_text(tmp_path, wp_tok):
    path = _tsv(tmp_path / "t.tsv", "sentence\tlabel", "NA\t1", "null\t0", "nan\tNA", "None\t1", "N/A\tnull", "\t0")
    ds = tables.load_table([str(path)], "data.train_files")
    assert ds["sentence"] == ["NA", "null", "nan", "None", "N/A", ""]
    assert ds["label"] == ["1", "0", "NA", "1", "null", "0"]
    labels = cls_data.label_names(ds, "label")
    assert labels == ["0", "1", "NA", "null"]
    enc = cls_data.encode_table(ds, wp_tok, _cfg(data={"text_column": "sentence"}), labels, "t")
    assert enc[0]["input_ids"] == wp_tok.encode("NA").ids and enc[5]["input_ids"] == wp_tok.encode("").ids


# ---------------------------------------------------------------------------------------------
# pair encoding


WORDS = "what who the a cat sat on mat paris capital of france is was novel wrote it".split()


def _words(n: int, seed: int) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, n))


def test_bert_pair_encoding_and_truncation(wp_tok):
    cfg = _cfg(classify={"text_pair_column": "b"})
    long = [(_words(40, 1), _words(45, 2)), (_words(3, 3), _words(60, 4)), (_words(50, 5), _words(2, 6))]
    rows = PAIRS + long
    ds = datasets.Dataset.from_dict({"text": [a for a, _ in rows], "b": [b for _, b in rows],
                                     "label": ["x"] * len(rows)})
    enc = cls_data.encode_table(ds, wp_tok, cfg, ["x"], "t")
    cls, sep = wp_tok.token_to_id(CLS), wp_tok.token_to_id(SEP)
    for (a, b), row in zip(rows, enc):
        ids, seg = row["input_ids"], row["segment_ids"]
        ea = wp_tok.encode(a, add_special_tokens=False).ids
        eb = wp_tok.encode(b, add_special_tokens=False).ids
        assert len(ids) == len(seg) <= 32
        assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 2
        cut = ids.index(sep)
        na, nb = cut - 1, len(ids) - cut - 2
        assert seg == [0] * (na + 2) + [1] * (nb + 1)
        assert ids[1:cut] == ea[:na] and ids[cut + 1:-1] == eb[:nb]  # each segment keeps its start
        if len(ea) + len(eb) + 3 <= 32:
            assert (na, nb) == (len(ea), len(eb))  # short pairs are whole
        else:
            assert len(ids) == 32 and na >= 1 and nb >= 1  # both segments survive truncation
            assert min(na, nb) == min(len(ea), len(eb), 29 // 2)  # longest first: the shorter keeps its share
    # single sentences: [CLS] A [SEP], all segment 0, truncated the same way
    single = datasets.Dataset.from_dict({"text": [SINGLES[0], _words(60, 7)], "label": ["x", "x"]})
    enc = cls_data.encode_table(single, wp_tok, _cfg(), ["x"], "t")
    assert enc[0]["input_ids"] == wp_tok.encode(SINGLES[0]).ids and set(enc[0]["segment_ids"]) == {0}
    assert len(enc[1]["input_ids"]) == 32 and enc[1]["input_ids"][-1] == sep


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_gpt_pair_encoding_never_exceeds_block(kind, bpe_tok):
    texts = [t for pair in PAIRS for t in pair] + [" ".join(WORDS)]
    tok = train_char(texts) if kind == "char" else bpe_tok
    eot = tok.token_to_id(EOT)
    cfg = _gpt_cfg(classify={"text_pair_column": "b"}, tokenizer={"kind": kind})
    rows = list(PAIRS)
    for n_a, n_b in [(1, 60), (60, 1), (30, 30), (8, 9), (0, 0), (0, 40)]:
        rows.append((_words(n_a, n_a), _words(n_b, n_b + 100)))
    ds = datasets.Dataset.from_dict({"text": [a for a, _ in rows], "b": [b for _, b in rows],
                                     "label": ["x"] * len(rows)})
    enc = cls_data.encode_table(ds, tok, cfg, ["x"], "t")
    for (a, b), row in zip(rows, enc):
        ids = row["input_ids"]
        ea = tok.encode(a, add_special_tokens=False).ids
        eb = tok.encode(b, add_special_tokens=False).ids
        assert len(ids) <= 32 and row["segment_ids"] == [0] * len(ids)
        assert ids.count(eot) == 1
        cut = ids.index(eot)
        assert ids[:cut] == ea[:cut] and ids[cut + 1:] == eb[:len(ids) - cut - 1]  # A <|endoftext|> B, prefixes
        if len(ea) + len(eb) + 1 <= 32:
            assert ids == ea + [eot] + eb
        else:
            assert len(ids) == 32 and (cut >= 1 or not ea) and (len(ids) - cut - 1 >= 1 or not eb)
            assert min(cut, 31 - cut) == min(len(ea), len(eb), 31 // 2)  # the longer text is shortened first
    single = datasets.Dataset.from_dict({"text": [_words(60, 9), ""], "label": ["x", "x"]})
    enc = cls_data.encode_table(single, tok, _gpt_cfg(tokenizer={"kind": kind}), ["x"], "t")
    assert enc[0]["input_ids"] == tok.encode(_words(60, 9), add_special_tokens=False).ids[:32]
    assert enc[1]["input_ids"] == [eot]  # an empty text is still one token to classify


# ---------------------------------------------------------------------------------------------
# pooling under padding


def _examples(tok, cfg, rows) -> list[dict]:
    """Encoded rows (texts, or (a, b) pairs for a pair config), all labelled with the config's first label."""
    pair, label = cfg.classify.text_pair_column, (cfg.classify.labels or ["x"])[0]
    cols = {cfg.data.text_column: [r[0] if pair else r for r in rows], cfg.classify.label_column: [label] * len(rows)}
    if pair:
        cols[pair] = [r[1] for r in rows]
    table = datasets.Dataset.from_dict(cols)
    return list(cls_data.encode_table(table, tok, cfg, cfg.classify.labels or ["x"], "t"))


def _logits(model, tok, examples, side: str) -> torch.Tensor:
    batch = cls_data.PadCollator(cls_data.pad_id(tok), side)(examples)
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits


def _pooling_model(cfg, seed: int):
    torch.manual_seed(seed)
    model = Classifier(cfg.model, HeadConfig.of(cfg))
    randomize(model, seed=seed)
    return model.eval()


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_gpt_last_token_pooling_ignores_padding(bpe_tok, pair):
    cfg = _gpt_cfg(model={"vocab_size": bpe_tok.get_vocab_size(), "dropout": 0.1},
                   classify={"labels": THREE, **({"text_pair_column": "b"} if pair else {})})
    model = _pooling_model(cfg, 11)
    examples = _examples(bpe_tok, cfg, PAIRS if pair else SINGLES)
    lengths = [len(e["input_ids"]) for e in examples]
    assert len(set(lengths)) > 1  # really padded
    right, left = _logits(model, bpe_tok, examples, "right"), _logits(model, bpe_tok, examples, "left")
    alone = torch.cat([_logits(model, bpe_tok, [e], "right") for e in examples])
    assert alone.std() > 0.05  # the randomized model gives distinct logits
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_bert_cls_pooling_ignores_right_padding(wp_tok, pair):
    cfg = _cfg(model={"vocab_size": wp_tok.get_vocab_size()},
               classify={"labels": THREE, **({"text_pair_column": "b"} if pair else {})})
    model = _pooling_model(cfg, 12)
    examples = _examples(wp_tok, cfg, PAIRS if pair else SINGLES)
    assert len({len(e["input_ids"]) for e in examples}) > 1
    batch = cls_data.PadCollator(cls_data.pad_id(wp_tok))(examples)
    assert ("segment_ids" in batch) == pair
    padded = _logits(model, wp_tok, examples, "right")
    alone = torch.cat([_logits(model, wp_tok, [e], "right") for e in examples])
    assert alone.std() > 0.05
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_bert_classifier_under_left_padding(wp_tok):
    cfg = _cfg(model={"vocab_size": wp_tok.get_vocab_size()}, classify={"labels": THREE, "padding_side": "left"})
    model = _pooling_model(cfg, 13)
    examples = _examples(wp_tok, cfg, SINGLES)
    alone = torch.cat([_logits(model, wp_tok, [e], "left") for e in examples])
    torch.testing.assert_close(_logits(model, wp_tok, examples, "left"), alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# metrics


def test_binary_metrics_by_hand():
    # tp 3, fn 1, fp 2, tn 4 (positive = label id 1)
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    m = classification_metrics(preds, targets, 2)
    assert set(m) == {"accuracy", "f1", "macro_f1", "mcc"} and all(type(v) is float for v in m.values())
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # 0.667
    assert m["macro_f1"] == pytest.approx((6 / 9 + 8 / 11) / 2)  # negative class: tp 4, fp 1, fn 2
    assert m["mcc"] == pytest.approx((3 * 4 - 2 * 1) / math.sqrt(5 * 4 * 6 * 5))  # 0.408
    swapped = classification_metrics(1 - preds, 1 - targets, 2)  # F1 follows label id 1, MCC is symmetric
    assert swapped["f1"] == pytest.approx(8 / 11) and swapped["mcc"] == pytest.approx(m["mcc"])
    assert confusion(preds, targets, 2).tolist() == [[4, 2], [1, 3]]  # row = true, column = predicted
    # degenerate cases: all right; a constant prediction (MCC 0, not NaN); the opposite of the truth
    assert classification_metrics(targets, targets, 2) == {"accuracy": 1.0, "macro_f1": 1.0, "f1": 1.0, "mcc": 1.0}
    const = classification_metrics(np.zeros(10), targets, 2)
    assert const["mcc"] == 0.0 and const["f1"] == 0.0 and const["accuracy"] == pytest.approx(0.6)
    assert classification_metrics(1 - targets, targets, 2)["mcc"] == pytest.approx(-1.0)


def test_multiclass_metrics_by_hand():
    m = np.array([[3, 1, 0], [1, 2, 1], [0, 1, 3]])  # row = true label, column = predicted
    targets = np.repeat(np.arange(3), m.sum(1))
    preds = np.concatenate([np.repeat(np.arange(3), row) for row in m])
    assert confusion(preds, targets, 3).tolist() == m.tolist()
    got = classification_metrics(preds, targets, 3)
    assert "f1" not in got  # binary F1 only for two labels
    assert got["accuracy"] == pytest.approx(8 / 12)
    assert got["macro_f1"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)
    # Gorodkin's R_K: (8 * 12 - sum t_k p_k) / sqrt((12^2 - sum p_k^2)(12^2 - sum t_k^2)) = (96 - 48) / 96
    assert got["mcc"] == pytest.approx(0.5)
    # and as the correlation of the one-hot vectors, computed independently
    x, y = np.eye(3)[preds], np.eye(3)[targets]
    cov = lambda u, v: ((u - u.mean(0)) * (v - v.mean(0))).sum()  # noqa: E731
    assert got["mcc"] == pytest.approx(cov(x, y) / math.sqrt(cov(x, x) * cov(y, y)))
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    p[:120] = t[:120]
    x, y = np.eye(4)[p], np.eye(4)[t]
    assert classification_metrics(p, t, 4)["mcc"] == pytest.approx(cov(x, y) / math.sqrt(cov(x, x) * cov(y, y)))


def test_macro_f1_ignores_labels_absent_from_data_and_predictions():
    targets = np.array([0, 1, 0, 1])
    assert classification_metrics(targets, targets, 3)["macro_f1"] == 1.0


def test_format_confusion_content():
    m = np.array([[5, 0, 1], [2, 12, 0], [0, 3, 100]])
    labels = ["neg", "neutral", "pos"]
    lines = format_confusion(m, labels).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("true \\ pred") and lines[0].split()[-3:] == labels
    for label, row, line in zip(labels, m, lines[1:]):
        assert line.startswith(label) and [int(v) for v in line.split()[1:]] == row.tolist()
    assert len({len(line) for line in lines[1:]}) == 1  # the rows are a rectangle


def test_format_confusion_columns_line_up():
    m = np.array([[5, 0, 1], [2, 12, 0], [0, 3, 100]])
    lines = format_confusion(m, ["neg", "neutral", "pos"]).splitlines()
    ends = lambda line: [mt.end() for mt in re.finditer(r"\S+", line)][-3:]  # noqa: E731
    for line in lines[1:]:
        assert ends(line) == ends(lines[0]), "\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# a short fine-tune on real data: TREC questions (6 labels; majority ~28 %)


@pytest.fixture(scope="module")
def trec_files(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("trec")
    return _slice(TREC / "train.tsv", tmp / "train.tsv", 1500), _slice(TREC / "test.tsv", tmp / "dev.tsv", 300)


def _trec_cfg(out: Path, train: Path, dev: Path, **train_over):
    return config_from_dict({
        "model": TINY_BERT,
        "tokenizer": {"kind": "wordpiece", "vocab_size": 1000},
        "data": {"train_files": [str(train)], "val_files": [str(dev)], "text_column": "question"},
        "classify": {"label_column": "label"},
        "train": {"task": "classify", "out_dir": str(out), "epochs": 4, "batch_size": 32, "lr": 3e-3,
                  "min_lr": 3e-4, "warmup_steps": 10, "weight_decay": 0.01, "best_metric": "val_accuracy",
                  **train_over},
        "log": {"log_interval": 20},
    })


@pytest.fixture(scope="module")
def trec_run(tmp_path_factory, trec_files) -> tuple[Path, dict]:
    from minilm.train import train

    run = tmp_path_factory.mktemp("trec_run") / "run"
    result = train(_trec_cfg(run, *trec_files))
    return run, result


def test_finetune_beats_majority(trec_run, trec_files):
    run, result = trec_run
    labels = [line.split("\t")[0] for line in trec_files[1].read_text(encoding="utf-8").splitlines()[1:]]
    majority = max(labels.count(x) for x in set(labels)) / len(labels)
    assert 0.2 < majority < 0.35
    assert result["val_accuracy"] > majority + 0.2, (result, majority)  # ~0.68 in practice
    assert result["val_mcc"] > 0.3 and "val_f1" not in result  # no binary F1 for six labels
    saved = json.loads((run / "config.json").read_text())
    assert saved["classify"]["labels"] == TREC_LABELS 
    assert saved["train"]["task"] == "classify" and not saved["model"]["causal"]
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [46, 92, 138, 184]  # one evaluation per epoch: 1500 // 32 = 46 steps
    assert all(set(r) >= {"val_loss", "val_accuracy", "val_macro_f1", "val_mcc"} for r in val)


def test_saved_weights_are_the_best_evaluation(trec_run, trec_files):
    """model.safetensors reproduces the first evaluation with the highest val_accuracy, not merely the last."""
    from accelerate import Accelerator

    from minilm.evaluation import evaluate

    run, _ = trec_run
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    best = max(val, key=lambda r: r["val_accuracy"])  # max() keeps the first of equals, as training does
    cfg, model, tok = load_run(run)
    dev = tables.load_table([str(trec_files[1])], "dev")
    table = cls_data.encode_table(dev, tok, cfg, cfg.classify.labels, "dev")
    loader = torch.utils.data.DataLoader(table, batch_size=32, collate_fn=cls_data.PadCollator(cls_data.pad_id(tok)))
    ev = evaluate(model, loader, Accelerator(cpu=True))
    got, matrix = ev.metrics, ev.confusion
    assert got["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)
    assert got["val_loss"] == pytest.approx(best["val_loss"], abs=1e-5)
    assert matrix.shape == (6, 6) and matrix.sum() == 300


def test_grouped_order_is_a_seeded_permutation_of_close_lengths():
    from minilm.data.batch import Shuffled

    rng = np.random.default_rng(0)
    rows = [{"input_ids": [1] * int(n)} for n in rng.integers(1, 400, size=1000)]
    lengths = np.array([len(r["input_ids"]) for r in rows])
    plain = Shuffled(rows, seed=3)
    assert (plain.order == np.random.default_rng([3, 0]).permutation(1000)).all()  # unchanged without grouping

    def padded(order: np.ndarray) -> int:  # tokens a batch of 16 pads to, summed over the whole batches
        return sum(int(lengths[b].max()) * 16 for b in order[:992].reshape(-1, 16))

    grouped = Shuffled(rows, seed=3, batch=16)
    first = grouped.order.copy()
    assert sorted(first) == list(range(1000))  # every example once
    real = lambda order: int(lengths[order[:992]].sum())  # noqa: E731
    assert padded(first) < 1.1 * real(first) and padded(plain.order) > 1.5 * real(plain.order)  # padding: ~4 %, ~85 %
    assert (Shuffled(rows, seed=3, batch=16).order == first).all()  # the same (seed, epoch), the same order
    grouped.set_epoch(1)
    assert sorted(grouped.order) == list(range(1000)) and (grouped.order != first).any()
    starts = [int(lengths[first[i * 16]]) for i in range(62)]
    assert starts != sorted(starts, reverse=True)  # the batches are shuffled, not longest first


def test_group_by_length_trains_and_times_its_evaluations(tmp_path, trec_files):
    from minilm.train import train

    cfg = _trec_cfg(tmp_path / "run", *trec_files, epochs=2, eval_batches=3)
    result = train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, group_by_length=True)))
    assert result["val_accuracy"] > 0.4  # majority ~0.29
    val = [r for r in read_metrics(tmp_path / "run") if r["split"] == "val"]
    assert [r["step"] for r in val] == [46, 92] and 0 < val[0]["seconds"] < val[1]["seconds"]
    with pytest.raises(ConfigError, match="data.group_by_length"):
        config_from_dict({"data": {"train_files": ["x.txt"], "group_by_length": True}, "train": {"task": "causal_lm"}})


def test_early_stopping_stops_when_nothing_improves(tmp_path, trec_files, capsys):
    """With a learning rate of 1e-12 the weights never move: val_accuracy cannot improve after the first
    evaluation, so patience 1 stops after the second of six epochs."""
    from minilm.train import train

    train_file = _slice(trec_files[0], tmp_path / "train.tsv", 320)
    dev_file = _slice(trec_files[1], tmp_path / "dev.tsv", 64)
    run = tmp_path / "run"
    result = train(_trec_cfg(run, train_file, dev_file, epochs=6, lr=1e-12, min_lr=0.0, warmup_steps=0,
                             early_stopping=1))
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20]  # 2 evaluations of 6 epochs
    assert val[0]["val_accuracy"] == val[1]["val_accuracy"] == result["val_accuracy"]
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["step"] == 20 and progress["since_best"] == 1
    assert "early stop" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# model.init_from a pretraining run


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_init_from_pretraining_run(tmp_path, trec_files, wp_tok, bpe_tok, kind):
    from accelerate.utils import set_seed

    from minilm.train import train

    tok = wp_tok if kind == "bert" else bpe_tok
    make = _cfg if kind == "bert" else _gpt_cfg
    src_cfg = make(model={"vocab_size": tok.get_vocab_size()}, train={"task": "pretrain"})
    torch.manual_seed(0)
    net = MaskedLM(src_cfg.model) if kind == "bert" else CausalLM(src_cfg.model)
    randomize(net, seed=5)
    pre = write_run(tmp_path / "pre", src_cfg, net, tok)

    run = tmp_path / "ft"
    cfg = config_from_dict({
        "model": {"init_from": str(pre)},  # architecture and tokenizer come from the run
        "data": {"train_files": [str(_slice(trec_files[0], tmp_path / "train.tsv", 48))],
                 "val_files": [str(_slice(trec_files[1], tmp_path / "dev.tsv", 16))], "text_column": "question"},
        "classify": {"label_column": "label"},
        "train": {"task": "classify", "out_dir": str(run), "max_steps": 1, "eval_interval": 1, "batch_size": 16,
                  "lr": 1e-12, "min_lr": 0.0, "warmup_steps": 0},
    })
    train(cfg)
    saved_cfg = read_config(run)
    assert saved_cfg.model.causal == (kind == "gpt") and saved_cfg.model.n_embd == 32
    assert saved_cfg.model.vocab_size == tok.get_vocab_size() and len(saved_cfg.classify.labels) >= 2
    assert (run / "tokenizer.json").read_text() == (pre / "tokenizer.json").read_text()

    src, got = load_file(str(pre / "model.safetensors")), load_file(str(run / "model.safetensors"))
    kept = {k for k in src if k.startswith(("transformer.", "pooler."))}
    assert any(k.startswith("pooler.") for k in kept) == (kind == "bert")
    assert set(got) == kept | {"head.weight", "head.bias"}  # no MLM / NSP head carried over
    for k in kept:  # one step at lr 1e-12: the loaded weights, unchanged
        torch.testing.assert_close(got[k], src[k], atol=1e-9, rtol=0, msg=k)
    set_seed(saved_cfg.train.seed)  # training builds the model right after seeding: a fresh head is this one
    fresh = build_model(saved_cfg).state_dict()
    assert got["head.weight"].shape == (len(saved_cfg.classify.labels), 32)
    for k in ("head.weight", "head.bias"):
        torch.testing.assert_close(got[k], fresh[k], atol=1e-9, rtol=0)
    assert not torch.allclose(fresh["transformer.tok_emb.weight"], src["transformer.tok_emb.weight"])


# ---------------------------------------------------------------------------------------------
# Hugging Face parity of an exported classifier


def _classifier_run(tmp_path: Path, tok, name: str = "cls", pair: bool = True, gpt: bool = False) -> Path:
    sections = dict(model={"vocab_size": tok.get_vocab_size()},
                    classify={"labels": ["neg", "neutral", "pos"], "dropout": 0.2,
                              **({"text_pair_column": "b"} if pair else {})})
    cfg = _gpt_cfg(**sections) if gpt else _cfg(**sections)
    torch.manual_seed(0)
    net = Classifier(cfg.model, HeadConfig.of(cfg))
    randomize(net, seed=6)
    return write_run(tmp_path / name, cfg, net, tok)


def _check_hf_parity(run: Path, out: Path, rows: list) -> None:
    transformers = pytest.importorskip("transformers")
    cfg, ours, tok = load_run(run)
    theirs, info = transformers.BertForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    config = json.loads((out / "config.json").read_text())
    labels = cfg.classify.labels
    assert config["architectures"] == ["BertForSequenceClassification"] and config["num_labels"] == len(labels)
    assert theirs.config.id2label == dict(enumerate(labels))
    assert theirs.config.label2id == {name: i for i, name in enumerate(labels)}
    examples = _examples(tok, cfg, rows)
    batch = cls_data.PadCollator(cls_data.pad_id(tok))(examples)
    batch.pop("labels")
    with torch.no_grad():
        want = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch.get("segment_ids")).logits
        got = ours(**batch).logits
    assert want.std() > 0.01
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # their tokenizer, loaded from the folder, builds the same inputs
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    pair = bool(cfg.classify.text_pair_column)
    enc = hf_tok([r[0] for r in rows] if pair else rows, [r[1] for r in rows] if pair else None,
                 padding=True, truncation=True, max_length=cfg.model.block_size, return_tensors="pt")
    assert torch.equal(enc["input_ids"], batch["input_ids"])
    assert torch.equal(enc["attention_mask"], batch["attention_mask"])


def test_export_randomized_pair_classifier_matches_transformers(tmp_path, wp_tok, capsys):
    from minilm.cli import main

    run = _classifier_run(tmp_path, wp_tok)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert not any(k.startswith("cls.") for k in load_file(str(tmp_path / "hf" / "model.safetensors")))
    _check_hf_parity(run, tmp_path / "hf", PAIRS)
    # our importer reads the folder back as a BERT stack: the classifier is dropped, MLM / NSP heads start fresh
    with pytest.warns(UserWarning, match="fresh initialization"):
        src = hf.load_pretrained(tmp_path / "hf")
        _, state, _ = src.model, src.state, src.tokenizer
    own = load_file(str(run / "model.safetensors"))
    for k in [k for k in own if k.startswith(("transformer.", "pooler."))]:
        torch.testing.assert_close(state[k], own[k], atol=0, rtol=0)


def test_export_finetuned_trec_run_matches_transformers(tmp_path, trec_run):
    run, _ = trec_run
    hf.export_hf(run, tmp_path / "hf")
    _check_hf_parity(run, tmp_path / "hf", SINGLES + ["What does NASA stand for ?"])


def test_export_refuses_gpt_classifier(tmp_path, bpe_tok):
    run = _classifier_run(tmp_path, bpe_tok, gpt=True, pair=False)
    with pytest.raises(CheckpointError, match="GPT classifier") as e:
        hf.export_hf(run, tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------------------------
# the commands


def _classify_lines(out: str, labels: list[str]) -> list[tuple[str, dict[str, float], str]]:
    rows = []
    for line in out.strip().splitlines():
        label, probs, text = line.split("\t", 2)  # a pair's texts are tab-separated too
        parts = probs.split()
        shown = {name: float(p) for name, p in zip(parts[::2], parts[1::2])}
        assert label in labels and list(shown) == labels, line
        assert sum(shown.values()) == pytest.approx(1.0, abs=0.005) and all(0 <= p <= 1 for p in shown.values())
        assert shown[label] == max(shown.values())  # the printed label is the most likely one
        rows.append((label, shown, text))
    return rows


def test_cli_classify_text_and_stdin(trec_run, capsys, monkeypatch):
    from minilm.cli import main

    run, _ = trec_run
    capsys.readouterr()
    assert main(["classify", str(run), "How far is it from Denver to Aspen ?"]) == 0
    [(label, _, text)] = _classify_lines(capsys.readouterr().out, TREC_LABELS)
    assert text == "How far is it from Denver to Aspen ?"
    lines = "Who was Galileo ?\n\nWhat is an atom ?\r\nHow many feet in a mile ?\n"  # a blank line, a CRLF
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["classify", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[1] == ""  # a blank line in, a blank line out: the outputs align with the inputs
    rows = _classify_lines("\n".join(line for line in out if line), TREC_LABELS)
    assert [t.strip() for _, _, t in rows] == ["Who was Galileo ?", "What is an atom ?", "How many feet in a mile ?"]
    assert rows[0][0] == "HUM"  # an easy one for a model at ~70 %


def test_cli_classify_pairs(tmp_path, wp_tok, capsys, monkeypatch):
    from minilm.cli import main

    run = _classifier_run(tmp_path, wp_tok)
    labels = ["neg", "neutral", "pos"]
    a, b = PAIRS[1]
    capsys.readouterr()
    assert main(["classify", str(run), a, "--pair", b]) == 0
    [(_, shown, _)] = _classify_lines(capsys.readouterr().out, labels)
    _, model, _ = load_run(run)  # the printed probabilities are the model's for this pair
    cfg = read_config(run)
    batch = cls_data.PadCollator(cls_data.pad_id(wp_tok))(_examples(wp_tok, cfg, [(a, b)]))
    batch.pop("labels")
    with torch.no_grad():
        probs = torch.softmax(model(**batch).logits, -1)[0].tolist()
    assert list(shown.values()) == pytest.approx(probs, abs=6e-4)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{x}\t{y}\n" for x, y in PAIRS)))
    assert main(["classify", str(run)]) == 0
    assert len(_classify_lines(capsys.readouterr().out, labels)) == len(PAIRS)
    monkeypatch.setattr(sys, "stdin", io.StringIO("no tab on this line\n"))
    assert main(["classify", str(run)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "--pair" in err


def test_cli_classify_pair_on_single_sentence_run_is_refused(tmp_path, wp_tok, capsys):
    from minilm.cli import main

    run = _classifier_run(tmp_path, wp_tok, pair=False)
    assert main(["classify", str(run), "first text", "--pair", "second text"]) == 2


def test_cli_eval_prints_metrics_and_confusion(trec_run, trec_files, capsys):
    from minilm.cli import main

    run, _ = trec_run
    best = max((r for r in read_metrics(run) if r["split"] == "val"), key=lambda r: r["val_accuracy"])
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(trec_files[1]), "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"300 examples from {trec_files[1]}"
    shown = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s*(\w+): ([-\d.]+)$", out, re.M)}
    assert set(shown) == {"loss", "accuracy", "macro_f1", "mcc"}
    assert shown["accuracy"] == pytest.approx(best["val_accuracy"], abs=6e-5)
    head = next(i for i, line in enumerate(lines) if line.startswith("true \\ pred"))
    assert lines[head].split()[-6:] == TREC_LABELS and len(lines) == head + 7
    counts = [[int(v) for v in line.split()[1:]] for line in lines[head + 1:]]
    assert [line.split()[0] for line in lines[head + 1:]] == TREC_LABELS
    assert sum(map(sum, counts)) == 300
    assert sum(counts[i][i] for i in range(6)) == round(shown["accuracy"] * 300)


def _one_error_line(stderr: str, needle: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minilm: error: ") and needle in lines[0], stderr
    return lines[0]


def test_cli_classify_pretraining_run_is_refused(tmp_path, wp_tok):
    """A subprocess, as a user runs it: exit 2, one `minilm: error:` line that says what to do, no traceback."""
    src_cfg = _cfg(model={"vocab_size": wp_tok.get_vocab_size()}, train={"task": "pretrain"})
    torch.manual_seed(0)
    pre = write_run(tmp_path / "pre", src_cfg, MaskedLM(src_cfg.model), wp_tok)
    proc = run_cli("classify", str(pre), "Who was Galileo ?")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    assert "minilm finetune" in _one_error_line(proc.stderr, "not a classifier")


def test_cli_finetune_unseen_label_is_one_line(tmp_path, trec_files, capsys):
    from minilm.cli import main

    train = _slice(trec_files[0], tmp_path / "train.tsv", 100)
    dev = tmp_path / "dev.tsv"
    dev.write_text("".join(_lines(trec_files[1], 5)) + "WHAT\tother\tWhat is this ?\n", encoding="utf-8")
    capsys.readouterr()
    code = main(["finetune", str(ROOT / "configs" / "finetune-trec.yaml"), f"data.train_files={train}",
                 f"data.val_files={dev}", f"train.out_dir={tmp_path / 'ft'}", "model.preset=bert-tiny",
                 "model.n_layer=1", "tokenizer.vocab_size=500"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    _one_error_line(err, "data.val_files has labels the training data never had (WHAT)")
    assert not (tmp_path / "ft").exists()  # a refused fine-tune leaves no run directory


def test_edit_distance_and_sequence_errors_by_hand():
    from minilm.metrics import edit_distance, error_rates, sequence_errors

    assert edit_distance("kitten", "sitting") == 3 and edit_distance([], list("abc")) == 3
    assert edit_distance(list("abc"), list("abc")) == 0 and edit_distance(list("ab"), list("ba")) == 2
    refs = [[["IY", "DH", "ER"], ["AY", "DH", "ER"]], [["K", "AE", "T"]], [["AH"], ["EY"]]]  # either, cat, a
    got = error_rates(sequence_errors([["AY", "DH", "ER"], ["K", "AH", "T", "S"], ["EH"]], refs))
    # either matches its second pronunciation; cat: 1 substitution + 1 insertion over 3; a: 1 substitution over 1
    assert got["seq_error"] == pytest.approx(2 / 3)
    assert got["token_error"] == pytest.approx((0 + 2 + 1) / (3 + 3 + 1))
