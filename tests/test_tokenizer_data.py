"""Tokenizers (char, byte-level BPE, WordPiece) and causal-LM data: files, token streams, packed blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minilm.config import TokenizerConfig, load_config
from minilm.data.files import load_files, resolve_files
from minilm.data.lm import PackedBlocks, build_lm_datasets
from minilm.data.pieces import sample_texts
from minilm.data.prepared import prepare
from minilm.errors import ConfigError, DataError
from minilm.tokenizer import (
    BERT_SPECIALS, CLS, EOT, SEP, eot_id, load_tokenizer, train_bpe, train_char, train_tokenizer, train_wordpiece,
    unknown_chars,
)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n"


# ---------------------------------------------------------------------------------------------
# tokenizers


def test_char_round_trip_keeps_newlines_and_spaces():
    tok = train_char([TEXT])
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    assert len(ids) == len(TEXT)  # one id per character, newlines and spaces included
    assert tok.decode(ids) == TEXT
    assert tok.get_vocab_size() == len(set(TEXT)) + 1


def test_char_vocab_is_sorted_alphabet_after_eot():
    tok = train_char(["cab\n", "bd"])
    assert eot_id(tok) == 0 and tok.token_to_id(EOT) == 0
    assert [tok.token_to_id(ch) for ch in "\nabcd"] == [1, 2, 3, 4, 5]
    # the end-of-text token is special: its text encodes to its id, and decoding skips it
    assert tok.encode(f"ab{EOT}c", add_special_tokens=False).ids == [2, 3, 0, 4]
    assert tok.decode([2, 0, 3]) == "ab"


def test_char_tokenizer_saved_and_loaded(tmp_path):
    tok = train_char([TEXT])
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)  # a run directory works as well as the file
    assert loaded.encode(TEXT).ids == tok.encode(TEXT).ids
    assert loaded.decode(loaded.encode(TEXT).ids) == TEXT


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_tokenizer(bad)


def test_unknown_chars():
    tok = train_char(["hello world\n"])
    assert unknown_chars(tok, "hello") == []
    assert unknown_chars(tok, "Hello, wörld!") == ["!", ",", "H", "ö"]
    bpe = train_bpe([TEXT], 300)
    assert unknown_chars(bpe, "日本") == []  # byte-level BPE has no unknown characters


def test_bpe_round_trip_non_ascii_and_vocab_size():
    corpus = [TEXT * 3, "naïve café — 日本語のテキスト 🙂\n\ttabs  and  spaces\n"] * 5
    tok = train_bpe(corpus, 300)
    assert 256 < tok.get_vocab_size() <= 300
    assert eot_id(tok) is not None
    for text in ["naïve café — 日本語 🙂", "  leading and trailing  \n", "Zürich\r\nΩ≈ç√", TEXT]:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    # merges were learned: frequent text takes fewer tokens than bytes
    assert len(tok.encode(TEXT).ids) < len(TEXT.encode("utf-8"))


def test_train_tokenizer_respects_vocab_size_and_kind():
    big = [TEXT * 20]
    assert train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=280), iter(big)).get_vocab_size() <= 280
    char = train_tokenizer(TokenizerConfig(kind="char", sample_bytes=5), iter(["abcdefgh", "xyz"]))
    assert sorted(char.get_vocab()) == sorted([EOT, "a", "b", "c", "d", "e"])  # only the first 5 characters seen


def test_wordpiece_specials_and_pair_template():
    corpus = ["The cat sat on the mat.", "A dog ran in the park.", "the cat and the dog"] * 20
    tok = train_wordpiece(corpus, 120, lowercase=True)
    for special in BERT_SPECIALS:
        assert tok.token_to_id(special) is not None
    assert [tok.token_to_id(s) for s in BERT_SPECIALS] == [0, 1, 2, 3, 4]
    assert eot_id(tok) is None
    enc = tok.encode("cat", "dog")
    assert enc.tokens == [CLS, "cat", SEP, "dog", SEP]
    assert enc.type_ids == [0, 0, 0, 1, 1]
    assert tok.encode("The CAT").tokens == [CLS, "the", "cat", SEP]  # lowercased, single template
    assert tok.encode("cat", add_special_tokens=False).tokens == ["cat"]
    assert tok.decode(tok.encode("the cat sat").ids) == "the cat sat"


def test_wordpiece_unknown_maps_to_unk():
    tok = train_wordpiece(["abc abc abd"] * 10, 60, lowercase=True)
    assert "[UNK]" in tok.encode("日").tokens


# ---------------------------------------------------------------------------------------------
# token streams and packed blocks


def _jsonl(tmp_path, rows):
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return f


def _stream(tmp_path, rows, tok) -> np.ndarray:
    cfg = load_config(None, [f"data.train_files={_jsonl(tmp_path, rows)}", f"data.prepared_dir={tmp_path / 'p'}"])
    s = prepare(cfg, tok, lambda texts: None, show=False).stream("train")
    return s[0:len(s)]


def test_the_stream_appends_eot_per_document(tmp_path):
    tok = train_char(["ab\nc"])
    ids = _stream(tmp_path, ["ab", "c\na", "b"], tok)
    e = eot_id(tok)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    assert ids.dtype == np.uint16
    assert ids.tolist() == enc("ab") + [e] + enc("c\na") + [e] + enc("b") + [e]


def test_the_stream_without_eot_adds_nothing(tmp_path):
    tok = train_wordpiece(["the cat sat"] * 10, 60, lowercase=True)
    ids = _stream(tmp_path, ["the cat", "sat"], tok)
    assert ids.tolist() == tok.encode("the cat", add_special_tokens=False).ids + tok.encode("sat", add_special_tokens=False).ids


def test_the_tokenizer_sample_skips_empty_documents(tmp_path):
    cfg = load_config(None, [f"data.train_files={_jsonl(tmp_path, ['a', '', 'b', None])}"])
    assert list(sample_texts(cfg)) == ["a", "b"]


def test_packed_blocks_unshuffled_are_consecutive_with_shifted_labels():
    tokens = np.arange(1000, dtype=np.int32)
    ds = PackedBlocks(tokens, 10)
    assert len(ds) == 99  # (1000 - 1) // 10
    for i in (0, 1, 50, len(ds) - 1):
        item = ds[i]
        assert item["input_ids"].dtype == torch.int64
        assert item["input_ids"].tolist() == list(range(10 * i, 10 * i + 10))
        assert item["labels"].tolist() == list(range(10 * i + 1, 10 * i + 11))
    ds.set_epoch(3)  # no shuffle: every epoch is the same
    assert ds[5]["input_ids"].tolist() == list(range(50, 60))


def test_packed_blocks_shuffled():
    tokens = np.random.default_rng(0).integers(0, 50, size=2000).astype(np.int32)
    stream = torch.from_numpy(tokens.astype(np.int64))
    ds = PackedBlocks(tokens, 16, shuffle=True, seed=7)
    assert len(ds) == (2000 - 1 - 16) // 16

    def epoch_blocks(d, epoch):
        d.set_epoch(epoch)
        return [tuple(d[i]["input_ids"].tolist()) for i in range(len(d))]

    for epoch in (0, 1):
        ds.set_epoch(epoch)
        starts = []
        for i in range(len(ds)):
            item = ds[i]
            assert item["input_ids"].shape == (16,) and item["labels"].shape == (16,)
            assert torch.equal(item["labels"][:-1], item["input_ids"][1:])  # labels = inputs shifted by one
            start = ds.offset + int(ds.order[i]) * 16
            assert torch.equal(item["input_ids"], stream[start : start + 16])
            assert torch.equal(item["labels"], stream[start + 1 : start + 17])
            starts.append(start)
        assert len(set(starts)) == len(ds)  # every block once per epoch, none past the end
        assert max(starts) + 17 <= len(tokens)
    e0, e1 = epoch_blocks(ds, 0), epoch_blocks(ds, 1)
    assert e0 != e1  # a new order (and offset) every epoch
    assert e0 != [tuple(stream[i * 16 : i * 16 + 16].tolist()) for i in range(len(ds))]  # not the plain order
    same = PackedBlocks(tokens, 16, shuffle=True, seed=7)
    assert epoch_blocks(same, 1) == e1 and epoch_blocks(same, 0) == e0  # reproducible per (seed, epoch)
    assert epoch_blocks(ds, 0) == e0  # going back to an epoch gives it again
    other = PackedBlocks(tokens, 16, shuffle=True, seed=8)
    assert epoch_blocks(other, 0) != e0


def test_packed_blocks_too_short():
    with pytest.raises(DataError, match="block"):
        PackedBlocks(np.arange(10, dtype=np.int32), 32)
    with pytest.raises(DataError):
        PackedBlocks(np.arange(10, dtype=np.int32), 10)  # needs block_size + 1 tokens
    assert len(PackedBlocks(np.arange(11, dtype=np.int32), 10)) == 1
    with pytest.raises(DataError):  # shuffling keeps one extra block of room for the offset
        PackedBlocks(np.arange(20, dtype=np.int32), 10, shuffle=True)


def test_build_lm_datasets_holds_out_unshuffled_tail(tmp_path):
    text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(3000))
    f = tmp_path / "t.txt"
    f.write_text(text)
    cfg = load_config(None, [f"data.train_files={f}", "model.block_size=16", "data.val_fraction=0.2",
                             f"data.prepared_dir={tmp_path / 'prepared'}"])
    tok = train_char([text])
    data = prepare(cfg, tok, lambda texts: None)
    train, val = build_lm_datasets(cfg, data)
    stream = np.asarray(tok.encode(text).ids + [eot_id(tok)])
    assert len(data.stream("train")) == 3001  # the text and its end-of-text token
    cut = int(len(stream) * 0.8)
    assert train.shuffle and not val.shuffle
    assert len(val) == (len(stream) - cut - 1) // 16
    val_inputs = torch.cat([val[i]["input_ids"] for i in range(len(val))])
    assert val_inputs.tolist() == stream[cut : cut + 16 * len(val)].tolist()
    for i in range(len(val) - 1):
        assert val[i + 1]["input_ids"][0] == val[i]["labels"][-1]
    # training blocks come only from the head of the stream
    assert train.tokens[0:len(train.tokens)].tolist() == stream[:cut].tolist()


# ---------------------------------------------------------------------------------------------
# files


def test_resolve_files_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        resolve_files([str(tmp_path / "nope.txt")])
    assert "data.train_files" in str(info.value)


def test_resolve_files_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        resolve_files([str(tmp_path / "empty.txt")], "data.val_files")


def test_resolve_files_folder_without_data(tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(DataError, match="folder"):
        resolve_files([str(tmp_path)])


def test_resolve_files_glob_without_match(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        resolve_files([str(tmp_path / "*.txt")])


def test_resolve_files_mixed_formats(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="mixes formats"):
        resolve_files([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])
    with pytest.raises(DataError, match="mixes formats"):
        resolve_files([str(tmp_path)])


def test_resolve_files_unknown_extension(tmp_path):
    (tmp_path / "a.docx").write_text("hello")
    with pytest.raises(DataError, match="extension"):
        resolve_files([str(tmp_path / "a.docx")])


def test_resolve_files_folder_and_glob(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "skip.bin").write_text("x")
    expected = [str(tmp_path / n) for n in ("a.txt", "b.txt", "sub/c.txt")]
    assert resolve_files([str(tmp_path)]) == expected
    assert resolve_files([str(tmp_path / "*.txt")]) == expected[:2]


def test_binary_file_is_rejected(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    with pytest.raises(DataError, match="binary"):
        load_files(resolve_files([str(tmp_path / "bin.txt")]))


def test_text_files_are_one_document_each(tmp_path):
    (tmp_path / "a.txt").write_text("line one\nline two\n")
    (tmp_path / "b.txt").write_text("other\n")
    ds = load_files(resolve_files([str(tmp_path)]))
    assert sorted(ds["text"]) == ["line one\nline two\n", "other\n"]


def _prepared_texts(cfg, tmp_path) -> dict[str, list[str]]:
    """Each split's documents as prepare reads them (a character tokenizer decodes them back exactly)."""
    tok = train_char([chr(c) for c in range(32, 127)])
    data = prepare(cfg, tok, lambda texts: None, show=False)
    out = {}
    for split in data.splits():
        stream, ends = data.stream(split), data.doc_ends(split)
        starts = [0, *ends[:-1]]
        out[split] = [tok.decode(stream[a:b - 1].tolist()) for a, b in zip(starts, ends)]  # without <|endoftext|>
    return out


def test_jsonl_text_column(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"id": i, "text": f"doc {i}"}) for i in range(3)) + "\n")
    cfg = load_config(None, [f"data.train_files={f}", f"data.prepared_dir={tmp_path / 'p'}"])
    assert _prepared_texts(cfg, tmp_path) == {"train": ["doc 0", "doc 1", "doc 2"]}


def test_csv_custom_text_column_and_val_files(tmp_path):
    train_f, val_f = tmp_path / "train.csv", tmp_path / "val.csv"
    train_f.write_text('id,body\n1,"hello, world"\n2,second row\n')
    val_f.write_text("id,body\n3,held out\n")
    cfg = load_config(None, [f"data.train_files={train_f}", f"data.val_files={val_f}", "data.text_column=body",
                             f"data.prepared_dir={tmp_path / 'p'}"])
    assert _prepared_texts(cfg, tmp_path) == {"train": ["hello, world", "second row"], "val": ["held out"]}


def test_tsv_is_tab_separated(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("label\ttext\n1\ta, b, c\n")
    ds = load_files(resolve_files([str(f)]))
    assert ds["text"] == ["a, b, c"]


def test_missing_text_column(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text('{"content": "a"}\n{"content": "b"}\n')
    cfg = load_config(None, [f"data.train_files={f}", f"data.prepared_dir={tmp_path / 'p'}"])
    with pytest.raises(DataError) as info:
        prepare(cfg, train_char(["ab"]), lambda texts: None, show=False)
    msg = str(info.value)
    assert "'text'" in msg and "content" in msg and "data.text_column" in msg