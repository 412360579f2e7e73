"""Prepared pretraining data: token shards equal to encoding each document whole, reused, redone when stale,
resumed after an interruption, never read when damaged; memory-mapped streams across shards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import SHAKESPEARE
from minilm.config import load_config
from minilm.data import pieces
from minilm.data import prepared as prep
from minilm.data.lm import PackedBlocks, build_lm_datasets
from minilm.data.mlm import build_block_datasets
from minilm.data.prepared import TokenStream, prepare
from minilm.errors import DataError
from minilm.tokenizer import EOT, train_bpe, train_char, train_wordpiece


@pytest.fixture
def corpus(tmp_path):
    """Three text files (one long enough to be read in many pieces) and their texts, in file order."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    docs = {"a.txt": text[:40_000], "b.txt": "A short one.\n\n  Indented   line,\ttabs.  \n", "c.txt": text[40_000:70_000]}
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, t in docs.items():
        (folder / name).write_text(t, encoding="utf-8")
    return folder, list(docs.values())


def _cfg(tmp_path, folder, *extra):
    return load_config(None, [f"data.train_files=[{folder}]", f"data.prepared_dir={tmp_path / 'prepared'}", *extra])


def _whole(tok, texts):
    """The reference: every document encoded whole, each followed by <|endoftext|> when the tokenizer has one."""
    tail = [tok.token_to_id(EOT)] if tok.token_to_id(EOT) is not None else []
    return [i for t in texts for i in tok.encode(t, add_special_tokens=False).ids + tail]


@pytest.mark.parametrize("kind", ["bpe", "char", "wordpiece"])
def test_shards_equal_each_document_encoded_whole(tmp_path, corpus, monkeypatch, kind):
    folder, texts = corpus
    monkeypatch.setattr(pieces, "PIECE_CHARS", 2_000)  # the long files are read in dozens of pieces
    monkeypatch.setattr(prep, "BATCH_CHARS", 10_000)
    tok = {"bpe": lambda: train_bpe(texts, 500), "char": lambda: train_char(texts),
           "wordpiece": lambda: train_wordpiece(texts, 500, lowercase=True)}[kind]()
    data = prepare(_cfg(tmp_path, folder), tok, lambda texts: None, show=False)
    stream = data.stream("train")
    assert stream[0:len(stream)].tolist() == _whole(tok, texts)
    assert data.manifest["dtype"] == "uint16" and stream.parts[0].dtype == np.uint16
    lengths = [len(_whole(tok, [t])) for t in texts]
    assert data.doc_ends("train").tolist() == np.cumsum(lengths).tolist()


def test_the_tokenizer_is_trained_once_on_the_sample_and_stored(tmp_path, corpus):
    folder, texts = corpus
    seen = []

    def trainer(sample):
        seen.append(list(sample))
        return train_bpe(seen[-1], 300)

    cfg = _cfg(tmp_path, folder, "tokenizer.kind=bpe", "tokenizer.sample_bytes=50000")
    first = prepare(cfg, None, trainer, show=False)
    assert sum(len(t) for t in seen[0]) == 50_000  # the sample stops at tokenizer.sample_bytes
    again = prepare(cfg, None, trainer, show=False)
    assert len(seen) == 1  # reused with the stored tokenizer: neither trained nor tokenized again
    assert again.tokenizer.to_str() == first.tokenizer.to_str()
    assert (first.path / "tokenizer.json").is_file()


def test_reuse_then_a_changed_file_or_tokenizer_prepares_again(tmp_path, corpus, capsys):
    folder, texts = corpus
    tok = train_char(texts + ["Z"])
    cfg = _cfg(tmp_path, folder)
    data = prepare(cfg, tok, lambda texts: None)
    shard = data.path / data.manifest["splits"]["train"][0]["file"]
    stamp = shard.stat().st_mtime_ns
    prepare(cfg, tok, lambda texts: None)
    assert shard.stat().st_mtime_ns == stamp  # up to date: nothing rewritten
    (folder / "b.txt").write_text("Z changed.\n", encoding="utf-8")
    data = prepare(cfg, tok, lambda texts: None)
    assert "a source file changed" in capsys.readouterr().out
    assert data.stream("train")[0:len(data.stream("train"))].tolist() == _whole(tok, [texts[0], "Z changed.\n", texts[2]])
    other = train_char(texts + ["Z", "#"])
    data = prepare(cfg, other, lambda texts: None)
    assert "tokenizer differs" in capsys.readouterr().out
    assert data.tokenizer.to_str() == other.to_str()


@pytest.mark.parametrize("damage", ["shard", "docs", "manifest", "tokenizer"])
def test_damaged_prepared_data_is_rebuilt_never_read(tmp_path, corpus, capsys, damage):
    folder, texts = corpus
    tok = train_char(texts)
    cfg = _cfg(tmp_path, folder)
    data = prepare(cfg, tok, lambda texts: None)
    expected = _whole(tok, texts)
    first = data.manifest["splits"]["train"][0]
    target = {"shard": first["file"], "docs": first["docs"], "manifest": "manifest.json",
              "tokenizer": "tokenizer.json"}[damage]
    path = data.path / target
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut short, as a full disk leaves it
    data = prepare(cfg, None if damage == "tokenizer" else tok, lambda texts: tok)
    notice = {"shard": "bytes, the manifest says", "docs": "bytes, the manifest says",
              "manifest": "manifest is missing or unreadable", "tokenizer": "tokenizer.json is unreadable"}[damage]
    out = capsys.readouterr().out
    assert f"preparing {data.path} again: " in out and notice in out, out
    stream = data.stream("train")
    assert stream[0:len(stream)].tolist() == expected


def test_an_interrupted_prepare_resumes_at_the_first_missing_shard(tmp_path, corpus, monkeypatch):
    folder, texts = corpus
    tok = train_char(texts)
    cfg = _cfg(tmp_path, folder)
    monkeypatch.setattr(prep, "SHARD_TOKENS", 1)  # a shard per file
    real, calls = prep.pieces, []

    def crash_on_third(source, *args):
        calls.append(source["path"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third file is read
        return real(source, *args)

    monkeypatch.setattr(prep, "pieces", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tok, lambda texts: None, show=False)
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["splits"]["train"]) == 2  # two whole shards kept
    kept = (tmp_path / "prepared" / "train-00000.bin").stat().st_mtime_ns
    monkeypatch.setattr(prep, "pieces", real)
    data = prepare(cfg, tok, lambda texts: None, show=False)
    assert (tmp_path / "prepared" / "train-00000.bin").stat().st_mtime_ns == kept  # not written again
    assert len(data.manifest["splits"]["train"]) == 3 and data.manifest["complete"]
    assert data.stream("train")[0:len(data.stream("train"))].tolist() == _whole(tok, texts)


def test_streams_across_shards_slice_and_pack_like_one_array():
    whole = np.arange(1000, dtype=np.uint16)
    stream = TokenStream([whole[:300], whole[300:301], whole[301:]])
    assert stream[295:310].tolist() == whole[295:310].tolist()
    assert stream.window(250, 900)[40:60].tolist() == whole[290:310].tolist()
    assert len(stream.head(100)) == 100 and len(stream.head(0)) == 1000
    a, b = PackedBlocks(stream, 16, shuffle=True, seed=3), PackedBlocks(whole.astype(np.int32), 16, shuffle=True, seed=3)
    for epoch in (0, 1):
        a.set_epoch(epoch), b.set_epoch(epoch)
        for i in range(len(a)):
            assert torch.equal(a[i]["input_ids"], b[i]["input_ids"]) and torch.equal(a[i]["labels"], b[i]["labels"])


def test_validation_is_capped_at_val_tokens(tmp_path, corpus):
    folder, texts = corpus
    tok = train_char(texts)
    cfg = _cfg(tmp_path, folder, "model.block_size=32", "data.val_tokens=3300")
    train, val = build_lm_datasets(cfg, prepare(cfg, tok, lambda texts: None, show=False))
    assert len(val) == (3300 - 1) // 32  # not the whole held-out 10 %
    uncapped = _cfg(tmp_path, folder, "model.block_size=32", "data.val_tokens=0")
    assert len(build_lm_datasets(uncapped, prepare(uncapped, tok, lambda texts: None, show=False))[1]) > 200


def test_mlm_blocks_from_shards_hold_out_the_last_documents(tmp_path, corpus):
    folder, texts = corpus
    tok = train_wordpiece(texts, 500, lowercase=True)
    cfg = _cfg(tmp_path, folder, "data.nsp=false", "data.val_fraction=0.34", "model.block_size=34")
    train, val = build_block_datasets(prepare(cfg, tok, lambda texts: None, show=False), cfg.data, 34, 0)
    head, tail = _whole(tok, texts[:2]), _whole(tok, texts[2:])  # round(3 * 0.34) = 1 held-out document
    assert len(train) == len(head) // 32 and len(val) == len(tail) // 32
    assert val[0]["input_ids"] == [tok.token_to_id("[CLS]"), *tail[:32], tok.token_to_id("[SEP]")]
    got = sorted(tuple(train[i]["input_ids"][1:-1]) for i in range(len(train)))
    assert got == sorted(tuple(head[i * 32:(i + 1) * 32]) for i in range(len(train)))


def test_rows_of_jsonl_are_documents(tmp_path):
    f = tmp_path / "docs.jsonl"
    rows = [f"document number {i}." for i in range(5)]
    f.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(rows)) + "\n")
    tok = train_bpe(rows, 300)
    cfg = load_config(None, [f"data.train_files={f}", f"data.prepared_dir={tmp_path / 'p'}"])
    stream = prepare(cfg, tok, lambda texts: None, show=False).stream("train")
    assert stream[0:len(stream)].tolist() == _whole(tok, rows)


def test_prepare_command_then_train_reuses_the_shards(tmp_path, corpus):
    from conftest import run_cli

    folder, _ = corpus
    args = ("configs/gpt-char-tiny.yaml", f"data.train_files=[{folder}]", f"train.out_dir={tmp_path / 'run'}",
            f"data.prepared_dir={tmp_path / 'prepared'}", "train.max_steps=2", "train.eval_interval=2",
            "model.block_size=32", "train.batch_size=4")
    proc = run_cli("prepare", *args)
    assert proc.returncode == 0, proc.stderr
    assert "prepared data in" in proc.stdout and "train 7" in proc.stdout  # the token count (70,0xx)
    stamp = os.stat(tmp_path / "prepared" / "train-00000.bin").st_mtime_ns
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr
    assert os.stat(tmp_path / "prepared" / "train-00000.bin").st_mtime_ns == stamp
    assert (tmp_path / "run" / "tokenizer.json").read_text() == (tmp_path / "prepared" / "tokenizer.json").read_text()


def test_nsp_pairs_from_stored_sentence_boundaries_equal_the_in_memory_ones(tmp_path, corpus, monkeypatch):
    from conftest import nsp_pairs
    from minilm.data.mlm import PairDataset, build_nsp_datasets
    from minilm.data.sentences import split_sentences

    folder, texts = corpus
    monkeypatch.setattr(pieces, "PIECE_CHARS", 3_000)  # long documents are cut between paragraphs
    val_folder = tmp_path / "val"
    val_folder.mkdir()
    held = [texts[0][:9000], texts[2][:7000]]
    for i, t in enumerate(held):
        (val_folder / f"{i}.txt").write_text(t, encoding="utf-8")
    tok = train_wordpiece(texts, 500, lowercase=True)
    cfg = _cfg(tmp_path, folder, f"data.val_files=[{val_folder}]", "data.nsp=true", "data.val_tokens=0")
    data = prepare(cfg, tok, lambda texts: None, show=False, sentences=True)
    train, val = build_nsp_datasets(data, cfg.data, 64, seed=5)

    def reference(docs_text, seed):
        docs = [[ids for s in split_sentences(t) if (ids := tok.encode(s, add_special_tokens=False).ids)]
                for t in docs_text]
        return PairDataset(nsp_pairs([d for d in docs if d], 64, cfg.data.short_seq_prob, seed),
                           tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"))

    for got, want in ((train.data, reference(texts, 5)), (val, reference(held, 6))):
        assert len(got) == len(want) > 10
        assert [got[i] for i in range(len(got))] == [want[i] for i in range(len(want))]
    assert isinstance(train.data.stream, TokenStream)  # pairs are ranges over the memory map


def test_a_prepared_dir_holding_other_files_is_refused_not_emptied(tmp_path, corpus):
    folder, texts = corpus
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds files prepare did not write.*notes.txt"):
        prepare(_cfg(tmp_path, folder), train_char(texts), lambda texts: None, show=False)
    assert (tmp_path / "prepared" / "notes.txt").read_text() == "mine"
