"""Sequence labelling (train.task=tag): the data formats, the first-token labelling and long sentences, span metrics
against a hand count, training both families, the CLI, and the BertForTokenClassification export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, randomize, read_metrics, write_run

from minilm import hf
from minilm.cli import main
from minilm.config import TagConfig, config_from_dict
from minilm.data.batch import IGNORE
from minilm.data.tagging import Sentences, TagCollator, encode_sentences, read_tagged
from minilm.errors import ConfigError, DataError
from minilm.metrics import chunks, per_label, span_counts, span_metrics
from minilm.models import HeadConfig, build_model
from minilm.run import load_run
from minilm.tokenizer import train_char, train_wordpiece

CONLLU = """# sent_id = 1
# text = I don't know.
1	I	I	PRON	PRP	_	3	nsubj	_	_
2-3	don't	_	_	_	_	_	_	_	_
2	do	do	AUX	VBP	_	4	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	know	know	VERB	VB	_	0	root	_	SpaceAfter=No
4.1	knows	know	VERB	VB	_	_	_	_	_
5	.	.	PUNCT	.	_	4	punct	_	_

1	Yes	yes	INTJ	UH	_	0	root	_	_
"""

# words whose label follows from the word alone (and one that follows from its neighbour), to learn in a few steps
VOCAB = {"the": "DET", "a": "DET", "cat": "NOUN", "dog": "NOUN", "sees": "VERB", "runs": "VERB", "big": "ADJ",
         "red": "ADJ", ".": "PUNCT"}


def _synthetic(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        words = [str(rng.choice(["the", "a"])), str(rng.choice(["big", "red"])), str(rng.choice(["cat", "dog"])),
                 str(rng.choice(["sees", "runs"])), "."]
        lines += [f"{w}\t{VOCAB[w]}" for w in words] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _tag_cfg(train: Path, val: Path, out: Path, model: dict, **train_extra) -> dict:
    return {"model": model, "tokenizer": {"kind": "wordpiece", "vocab_size": 200, "lowercase": False},
            "data": {"train_files": [str(train)], "val_files": [str(val)]},
            "train": {"task": "tag", "out_dir": str(out), "max_steps": 60, "eval_interval": 60, "batch_size": 16,
                      "lr": 3e-3, "warmup_steps": 5, **train_extra}}


def test_conllu_words_and_column(tmp_path):
    f = tmp_path / "a.conllu"
    f.write_text(CONLLU, encoding="utf-8")
    got = read_tagged([str(f)], TagConfig(), "data.train_files")
    assert got.words == [["I", "do", "n't", "know", "."], ["Yes"]]  # no multi-word token, no empty node
    assert got.labels == [["PRON", "AUX", "PART", "VERB", "PUNCT"], ["INTJ"]]
    assert got.where == [f"{f}, line 3", f"{f}, line 11"]
    assert read_tagged([str(f)], TagConfig(column="xpos"), "x").labels[0] == ["PRP", "VBP", "RB", "VB", "."]


def test_columns_and_json_formats(tmp_path):
    cols = tmp_path / "a.txt"
    cols.write_text("-DOCSTART- -X- O\n\nEU B-ORG\nrejects O\n\nPeter\tB-PER\nBlackburn\tI-PER\n", encoding="utf-8")
    got = read_tagged([str(cols)], TagConfig(), "x")
    assert got.words == [["EU", "rejects"], ["Peter", "Blackburn"]] and got.labels[1] == ["B-PER", "I-PER"]
    rows = tmp_path / "a.jsonl"
    rows.write_text(json.dumps({"w": ["EU", "rejects"], "t": ["B-ORG", "O"]}) + "\n", encoding="utf-8")
    got = read_tagged([str(rows)], TagConfig(tokens_column="w", tags_column="t"), "x")
    assert got.words == [["EU", "rejects"]] and got.labels == [["B-ORG", "O"]]


@pytest.mark.parametrize("name, text, says", [
    ("bad.txt", "EU B-ORG\nrejects\n", "line 2"),
    ("bad.conllu", "1\tI\tI\tPRON\n", "10 tab-separated columns"),
    ("bad.jsonl", '{"tokens": ["a", "b"], "tags": ["X"]}\n', "2 words but 1 labels"),
])
def test_malformed_files_are_refused_by_file_and_line(tmp_path, name, text, says):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=says) as e:
        read_tagged([str(f)], TagConfig(), "data.train_files")
    assert str(f) in str(e.value)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(["the dog runs . unbelievable cats sees"] * 20, 60, lowercase=False)


def test_first_subword_carries_the_label(wordpiece):
    s = Sentences([["the", "unbelable", "dog"]], [["DET", "ADJ", "NOUN"]], ["s1"])  # unbel ##able
    (ex,) = encode_sentences(s, wordpiece, 64, ["ADJ", "DET", "NOUN"], "x")
    tokens = [wordpiece.id_to_token(i) for i in ex["input_ids"]]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) > 5
    labelled = [(tokens[p], lab) for p, lab in enumerate(ex["labels"]) if lab != IGNORE]
    assert [lab for _, lab in labelled] == [1, 0, 2] and [t for t, _ in labelled] == [tokens[p] for p in ex["starts"]]
    assert labelled[1][0] != "unbelable" and not labelled[1][0].startswith("##")


def test_character_vocabulary_labels_the_first_character():
    tok = train_char(["ab cd"])
    (ex,) = encode_sentences(Sentences([["ab", "cd"]], [["X", "Y"]], ["s"]), tok, 16, ["X", "Y"], "x")
    assert [tok.id_to_token(i) for i in ex["input_ids"]] == ["a", "b", " ", "c", "d"]
    assert ex["labels"] == [0, IGNORE, IGNORE, 1, IGNORE] and ex["starts"] == [0, 3]


def test_long_sentences_are_split_between_words_and_nothing_is_lost(wordpiece, capsys):
    words = ["the", "unbelable", "dog", "runs", "."] * 6  # 36 or more tokens
    labels = ["DET", "ADJ", "NOUN", "VERB", "PUNCT"] * 6
    names = sorted(set(labels))
    pieces = encode_sentences(Sentences([words], [labels], ["s"]), wordpiece, 12, names, "x")
    assert len(pieces) >= 4 and all(len(p["input_ids"]) <= 12 for p in pieces)
    assert {p["sentence"] for p in pieces} == {0}
    got = [names[lab] for p in pieces for lab in p["labels"] if lab != IGNORE]
    assert got == labels  # every word labelled exactly once, in order
    assert "tagged in pieces" in capsys.readouterr().err
    # a word longer than the positions keeps its first tokens (and its label on the first)
    (ex,) = encode_sentences(Sentences([["unbelable"]], [["ADJ"]], ["s"]), wordpiece, 3, names, "x")
    assert len(ex["input_ids"]) == 3 and ex["labels"] == [IGNORE, 0, IGNORE]


def test_a_label_only_in_evaluation_data_is_refused_by_name(wordpiece):
    with pytest.raises(DataError, match="never had \\(INTJ\\)"):
        encode_sentences(Sentences([["the"]], [["INTJ"]], ["s"]), wordpiece, 16, ["DET"], "data.val_files")


def test_spans_against_a_hand_count():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"], ["S-MISC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "I-ORG", "O"], ["S-MISC", "O"]]
    # by hand: gold spans PER(0-1) LOC(3) | ORG(1-3) | MISC(0) = 4; predicted PER(0-1) ORG(3) | ORG(1-2) | MISC(0)
    # = 4; right: PER and MISC = 2
    assert span_counts(pred, gold) == {"right": 2, "predicted": 4, "gold": 4}
    assert span_metrics(span_counts(pred, gold)) == pytest.approx(
        {"span_precision": 0.5, "span_recall": 0.5, "span_f1": 0.5})
    # conlleval's reading of sloppy tags: an I- after O starts a span; a change of type ends one
    assert chunks(["O", "I-PER", "I-PER", "I-LOC"]) == {(1, 2, "PER"), (3, 3, "LOC")}
    assert chunks(["B-X", "E-X", "B-X"]) == {(0, 1, "X"), (2, 2, "X")}


def test_per_label_scores_from_the_confusion_matrix():
    m = np.array([[3, 1], [2, 4]])  # row = true
    (p0, r0, f0, n0), (p1, r1, f1, n1) = per_label(m)
    assert (p0, r0, n0) == (3 / 5, 3 / 4, 4) and (p1, r1, n1) == (4 / 5, 4 / 6, 6)
    assert f1 == pytest.approx(2 * p1 * r1 / (p1 + r1))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("tag")
    return _synthetic(d / "train.txt", 200, 0), _synthetic(d / "val.txt", 20, 1)


@pytest.mark.parametrize("model, steps", [
    ({"preset": "bert-tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32}, {}),
    ({"arch": "lstm", "n_layer": 1, "n_embd": 32, "hidden_size": 32, "bidirectional": True, "block_size": 32},
     {"max_steps": 200, "eval_interval": 200, "lr": 1e-2}),
], ids=["bert", "bilstm"])
def test_a_tagger_learns_and_serves_the_command_line(tmp_path, synthetic, model, steps, capsys):
    from minilm.train import train

    out = tmp_path / "run"
    result = train(config_from_dict(_tag_cfg(*synthetic, out, model, **steps)))
    assert result["val_accuracy"] > 0.95  # from 1/5 at the start: each word's label is learnable
    assert json.loads((out / "config.json").read_text())["tag"]["labels"] == ["ADJ", "DET", "NOUN", "PUNCT", "VERB"]
    capsys.readouterr()
    assert main(["tag", str(out), "the red dog runs ."]) == 0
    assert capsys.readouterr().out.split() == ["the/DET", "red/ADJ", "dog/NOUN", "runs/VERB", "./PUNCT"]
    assert main(["eval", str(out), "--data", str(synthetic[1])]) == 0
    shown = capsys.readouterr().out
    assert f"accuracy: {result['val_accuracy']:.4f}" in shown and "precision" in shown


def test_span_metrics_are_reported_for_chunk_labels(tmp_path):
    rows = [("John lives in Paris", "B-PER O O B-LOC"), ("Mary Ann went home", "B-PER I-PER O O")] * 10
    f = tmp_path / "ner.txt"
    f.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(a.split(), b.split())) for a, b in rows) + "\n")
    model = {"preset": "bert-tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32}
    from minilm.train import train

    result = train(config_from_dict(_tag_cfg(f, f, tmp_path / "run", model, max_steps=2, eval_interval=2)))
    assert {"val_span_precision", "val_span_recall", "val_span_f1"} <= set(result)
    vals = [r for r in read_metrics(tmp_path / "run") if r["split"] == "val"]
    assert vals[-1]["val_span_f1"] == pytest.approx(result["val_span_f1"])


def test_span_metric_is_refused_for_labels_without_spans(tmp_path, synthetic):
    from minilm.tasks import prepare

    model = {"preset": "bert-tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32}
    cfg = config_from_dict(_tag_cfg(*synthetic, tmp_path / "r", model, best_metric="val_span_f1"))
    with pytest.raises(ConfigError, match="not a B-/I-/E-/S- scheme"):
        prepare(cfg)


def test_causal_tagger_reads_left_context_only(wordpiece):
    cfg = config_from_dict({"model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16, "vocab_size": 60},
                            "data": {"train_files": ["unused"]}, "tag": {"labels": ["A", "B", "C"]},
                            "train": {"task": "tag"}})
    net = build_model(cfg).eval()
    a, b = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 6, 9, 10]])
    la, lb = net(a).logits, net(b).logits  # (1, 4, 3)
    assert torch.equal(la[:, :2], lb[:, :2]) and not torch.allclose(la[:, 2:], lb[:, 2:])


def test_bert_tagger_exports_as_token_classification(tmp_path, wordpiece):
    transformers = pytest.importorskip("transformers")
    labels = ["ADJ", "DET", "NOUN"]
    cfg = config_from_dict({"model": {"preset": "bert-tiny", "n_layer": 2, "n_embd": 32, "n_head": 2,
                                      "block_size": 32, "vocab_size": wordpiece.get_vocab_size()},
                            "tokenizer": {"kind": "wordpiece"}, "data": {"train_files": ["unused"]},
                            "tag": {"labels": labels}, "train": {"task": "tag"}})
    torch.manual_seed(0)
    net = build_model(cfg)
    randomize(net, seed=3)
    run = write_run(tmp_path / "run", cfg, net, wordpiece)
    hf.export_hf(run, tmp_path / "hf")
    theirs, info = transformers.BertForTokenClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert theirs.config.id2label == dict(enumerate(labels))
    _, ours, tok = load_run(run)
    s = Sentences([["the", "dog", "runs"], ["unbelievable", "cats"]], [[], []], ["a", "b"])
    batch = TagCollator(0)(encode_sentences(s, tok, 32, None, "x"))
    with torch.no_grad():
        want = theirs.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = ours(**batch).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)


def test_shipped_treebank_reads_as_published():
    got = read_tagged([str(ROOT / "data" / "ud_english_ewt" / "en_ewt-ud-test.conllu")], TagConfig(), "x")
    assert len(got.words) == 2077 and sum(map(len, got.words)) == 25094
    assert len({t for ts in got.labels for t in ts}) == 17
