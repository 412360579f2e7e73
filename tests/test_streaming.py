"""Streamed pretraining text (data.streaming=true): the ids prepare would write, each process its own share,
validation held out, and resume at exactly the next token from any saved position."""

from __future__ import annotations

import itertools

import pytest

from conftest import SHAKESPEARE, TINY_YAML, run_cli, tiny_overrides
from minilm.config import load_config
from minilm.data import pieces
from minilm.data import prepared as prep
from minilm.data.lm import build_streamed_lm_datasets
from minilm.data.prepared import prepare
from minilm.data.streaming import open_stream
from minilm.errors import ConfigError
from minilm.tokenizer import train_char

BLOCK = 32


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """Three text files read in many small pieces and encoded in small batches."""
    monkeypatch.setattr(pieces, "PIECE_CHARS", 2_000)
    monkeypatch.setattr(prep, "BATCH_CHARS", 5_000)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = [text[:20_000], "A short one.\n", text[20_000:32_000]]
    for name, t in zip(("a.txt", "b.txt", "c.txt"), texts):
        (folder / name).write_text(t, encoding="utf-8")
    (tmp_path / "val.txt").write_text(text[40_000:45_000], encoding="utf-8")
    return folder, texts, train_char([text])


def _cfg(tmp_path, folder, *extra):
    return load_config(None, [f"data.train_files=[{folder}]", "data.streaming=true", f"model.block_size={BLOCK}",
                              f"data.prepared_dir={tmp_path / 'prepared'}", "data.val_tokens=3000", *extra])


def _examples(cfg, tok, n, position=None, process=None):
    train, _ = build_streamed_lm_datasets(cfg, open_stream(cfg, tok, process))
    if position is not None:
        train.position = position
    return list(itertools.islice(iter(train), n))


def test_streamed_blocks_are_the_prepared_stream_in_order(tmp_path, corpus):
    folder, texts, tok = corpus
    cfg = _cfg(tmp_path, folder, f"data.val_files=[{tmp_path / 'val.txt'}]")
    stream = prepare(cfg, tok, lambda texts: tok, show=False).stream("train")
    n = (len(stream) - 1) // BLOCK  # the blocks of one epoch; then the stream starts again
    got = _examples(cfg, tok, n + 2)
    for i, example in enumerate(got[:n]):
        assert example["input_ids"].tolist() == stream[i * BLOCK : (i + 1) * BLOCK].tolist()
        assert example["labels"].tolist() == stream[i * BLOCK + 1 : (i + 1) * BLOCK + 1].tolist()
    assert [e["position"]["epoch"] for e in got[n - 1 :]] == [0, 1, 1]
    assert got[n]["input_ids"].tolist() == stream[0:BLOCK].tolist()


def test_validation_is_the_head_of_the_text_and_held_out_of_training(tmp_path, corpus):
    folder, texts, tok = corpus
    cfg = _cfg(tmp_path, folder)
    streamed = open_stream(cfg, tok)
    whole = tok.encode(texts[0]).ids
    assert streamed.val.tolist() == whole[:3000]
    first = _examples(cfg, tok, 1)[0]["input_ids"].tolist()
    # training starts after the whole pieces validation came from, not inside them
    start = next(i for i in range(3000, len(whole)) if whole[i : i + BLOCK] == first)
    assert start >= 3000 and first[0] == whole[start]


def test_resume_from_any_saved_position_continues_at_the_same_token(tmp_path, corpus):
    folder, texts, tok = corpus
    cfg = _cfg(tmp_path, folder, "model.block_size=512")  # about 55 blocks an epoch
    straight = _examples(cfg, tok, 70)  # past the end of the first epoch
    assert straight[-1]["position"]["epoch"] == 1
    anchors = {str(e["position"]["rows"]) for e in straight}
    assert len(anchors) > 5  # positions inside many different batches of pieces, not only the epoch's start
    for k in (0, 7, 23, 41, 54, 60):
        resumed = _examples(cfg, tok, 3, position=straight[k]["position"])
        for a, b in zip(resumed, straight[k + 1 : k + 4]):
            assert a["input_ids"].tolist() == b["input_ids"].tolist()
            assert a["position"] == b["position"]


@pytest.mark.parametrize("files", [2, 3])  # whole files per process, or every process its share of the pieces
def test_processes_read_disjoint_shares_of_the_text(tmp_path, corpus, files):
    folder, texts, tok = corpus
    if files == 2:
        (folder / "b.txt").unlink()
    cfg = _cfg(tmp_path, folder, f"data.val_files=[{tmp_path / 'val.txt'}]")
    rows = [[r["text"] for r in open_stream(cfg, tok, (rank, 2)).rows()] for rank in (0, 1)]
    alone = [r["text"] for r in open_stream(cfg, tok, (0, 1)).rows()]
    assert rows[0] and rows[1] and not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == sorted(alone)


def test_streaming_config_mistakes_are_one_line_errors(tmp_path, shakespeare_file):
    for extra, message in [(["train.epochs=2"], "train.epochs needs the data's length"),
                           (["data.val_tokens=0"], "a positive number of tokens with data.streaming=true")]:
        with pytest.raises(ConfigError, match=message):
            load_config(TINY_YAML, [f"data.train_files={shakespeare_file}", "data.streaming=true", *extra])
    out = tmp_path / "run"
    proc = run_cli("train", str(TINY_YAML), *tiny_overrides(shakespeare_file, out, "data.streaming=true",
                   "model.preset=bert-tiny", "tokenizer.kind=wordpiece", "model.block_size=32", "train.task=masked_lm"))
    assert proc.returncode == 2 and "set data.nsp=false" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    proc = run_cli("prepare", str(TINY_YAML), f"data.train_files={shakespeare_file}", "data.streaming=true")
    assert proc.returncode == 2 and "nothing to prepare" in proc.stderr, proc.stderr
