"""BERT: Hugging Face parity both ways, masking and NSP data statistics, padding invariance, sparse = dense MLM,
a short pretraining run that learns, and `minilm export` of a BERT run."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import dataclasses
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import nsp_pairs, randomize, write_run
import torch
from safetensors.torch import load_file, save_file

from minilm import hf
from minilm.run import load_run
from minilm.config import config_from_dict
from minilm.data.mlm import MaskingCollator, PairDataset
from minilm.data.sentences import split_sentences
from minilm.errors import CheckpointError
from minilm.data.batch import IGNORE
from minilm.models.transformer.heads import MaskedLM
from minilm.tokenizer import BERT_SPECIALS, CLS, MASK, PAD, SEP, train_wordpiece

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT / "data" / "gutenberg"
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64)
PAIRS = [("Emma Woodhouse, handsome, clever, and rich, had lived nearly twenty-one years.",
          "She was the youngest of the two daughters of a most affectionate father."),
         ("It was a truth universally acknowledged.", "Mr. Bennet was so odd a mixture!")]
SINGLE = "The garden was quiet; nobody had walked there for ten years."


def _book(name: str, chars: int, split: str = "train") -> str:
    return (BOOKS / split / name).read_text(encoding="utf-8")[:chars]


@pytest.fixture(scope="module")
def text() -> str:
    return _book("austen_emma.txt", 30_000) + "\n\n" + _book("austen_pride_and_prejudice.txt", 20_000)


@pytest.fixture(scope="module")
def tok(text):
    return train_wordpiece([text], 400, lowercase=True)


def _bert_cfg(vocab: int, **model):
    return config_from_dict({"model": {"preset": "bert-tiny", **TINY, "vocab_size": vocab, **model},
                             "tokenizer": {"kind": "wordpiece"}, "data": {"train_files": ["unused.txt"]}})



def assert_same_pretraining_logits(ours, theirs, tok) -> None:
    """MLM logits at real positions and NSP logits agree with a transformers BertForPreTraining."""
    ids, seg, mask = _batch(tok, [*PAIRS, SINGLE])
    mlm, nsp = _ours(ours, ids, seg, mask)
    with torch.no_grad():
        want = theirs(input_ids=ids, token_type_ids=seg, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(mlm[real], want.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, want.seq_relationship_logits, atol=1e-5, rtol=1e-5)

def make_run(tmp_path: Path, tok, name: str = "run", **model) -> Path:
    cfg = _bert_cfg(tok.get_vocab_size(), **model)
    torch.manual_seed(0)
    net = MaskedLM(cfg.model)
    randomize(net)
    return write_run(tmp_path / name, cfg, net, tok)


def _batch(tok, items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, segment ids, attention mask) of single texts or (a, b) pairs, with [CLS]/[SEP]."""
    encs = [tok.encode(*item) if isinstance(item, tuple) else tok.encode(item) for item in items]
    T = max(len(e.ids) for e in encs)
    ids = torch.full((len(encs), T), tok.token_to_id(PAD), dtype=torch.long)
    seg, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        seg[i, : len(e.ids)] = torch.tensor(e.type_ids)
        mask[i, : len(e.ids)] = 1
    assert mask.sum(1).min() < T  # really padded
    return ids, seg, mask


def _ours(model: MaskedLM, ids, seg, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLM logits (B, T, V), NSP logits (B, 2)) of our model."""
    with torch.no_grad():
        out = model(ids, seg, mask)  # without labels: MLM logits at every position
        return out.logits, model.next_sentence(model.transformer(ids, seg, mask))


transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------------
# Export: our run -> transformers


@pytest.mark.parametrize("model", [
    {},
    {"activation": "gelu_tanh", "d_ff": 48},
    {"bias": False},
    {"position": "sinusoidal", "norm_eps": 1e-6},
    {"type_vocab_size": 0},
], ids=["default", "gelu_tanh-dff", "no-bias", "sinusoidal", "no-segments"])
def test_export_matches_transformers(tmp_path: Path, tok, model: dict) -> None:
    run = make_run(tmp_path, tok, **model)
    out = tmp_path / "hf"
    hf.export_hf(run, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json", "vocab.txt"]
    _, ours, _ = load_run(run)
    theirs, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    assert_same_pretraining_logits(ours, theirs, tok)

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForPreTraining"]
    assert config["max_position_embeddings"] == 64 and config["pad_token_id"] == tok.token_to_id(PAD)
    assert config["hidden_act"] == ("gelu_pytorch_tanh" if model.get("activation") == "gelu_tanh" else "gelu")


def test_exported_tokenizer_matches_ours(tmp_path: Path, tok) -> None:
    run = make_run(tmp_path, tok)
    out = tmp_path / "hf"
    hf.export_hf(run, out)
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    assert vocab[:5] == BERT_SPECIALS
    no_json = tmp_path / "vocab-only"  # what the slow-tokenizer file set gives: vocab.txt + tokenizer_config.json
    shutil.copytree(out, no_json)
    (no_json / "tokenizer.json").unlink()
    for folder in (out, no_json):
        for cls in (transformers.BertTokenizerFast, transformers.AutoTokenizer):
            theirs = cls.from_pretrained(folder)
            assert theirs.mask_token == MASK and theirs.pad_token_id == tok.token_to_id(PAD)
            for a, b in PAIRS:
                want = tok.encode(a, b)
                got = theirs(a, b)
                assert got["input_ids"] == want.ids and got["token_type_ids"] == want.type_ids
                assert theirs.decode(got["input_ids"], skip_special_tokens=True) == tok.decode(want.ids)
            assert theirs(SINGLE)["input_ids"] == tok.encode(SINGLE).ids


def test_exported_cased_tokenizer(tmp_path: Path, text) -> None:
    cased = train_wordpiece([text], 400, lowercase=False)
    run = make_run(tmp_path, cased)
    hf.export_hf(run, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["do_lower_case"] is False
    (tmp_path / "hf" / "tokenizer.json").unlink()  # BertTokenizerFast must rebuild it from vocab.txt + config
    theirs = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
    a, b = PAIRS[0]
    assert theirs(a, b)["input_ids"] == cased.encode(a, b).ids
    src = hf.load_pretrained(tmp_path / "hf")  # and so must we
    _, _, back = src.model, src.state, src.tokenizer
    assert back.encode(a, b).ids == cased.encode(a, b).ids


def test_export_then_load_pretrained_round_trips(tmp_path: Path, tok) -> None:
    run = make_run(tmp_path, tok)
    hf.export_hf(run, tmp_path / "hf")
    src = hf.load_pretrained(run)
    run_cfg, run_state, _ = src.model, src.state, src.tokenizer
    src = hf.load_pretrained(tmp_path / "hf")
    cfg, state, tok2 = src.model, src.state, src.tokenizer
    assert cfg == dataclasses.replace(run_cfg, preset=None) and sorted(state) == sorted(run_state)
    for k in state:
        torch.testing.assert_close(state[k], run_state[k], atol=0, rtol=0)
    a, b = PAIRS[0]
    assert tok2.encode(a, b).ids == tok.encode(a, b).ids and tok2.encode(a, b).type_ids == tok.encode(a, b).type_ids


@pytest.mark.parametrize("model,match", [
    ({"norm": "pre", "embedding_norm": False}, "model.norm='pre'"),
    ({"embedding_norm": False}, "embedding_norm"),
], ids=["pre-ln", "no-embedding-norm"])
def test_export_refuses_mismatched_bert(tmp_path: Path, tok, model: dict, match: str) -> None:
    run = make_run(tmp_path, tok, **model)
    with pytest.raises(CheckpointError, match=match) as e:
        hf.export_hf(run, tmp_path / "hf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


# ---------------------------------------------------------------------------------------------
# Import: transformers folder -> our MaskedLM


def _hf_config(tok, **extra):
    return transformers.BertConfig(**{
        "vocab_size": tok.get_vocab_size(), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 64, "pad_token_id": tok.token_to_id(PAD), **extra})


def _write_vocab(tok, folder: Path, **tok_cfg) -> None:
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", **tok_cfg}))


def _load_ours(folder: Path) -> tuple[MaskedLM, object]:
    src = hf.load_pretrained(folder)
    cfg, state, tok = src.model, src.state, src.tokenizer
    model = MaskedLM(cfg).eval()
    model.load_state_dict(state)  # strict: exactly our names
    return model, tok


@pytest.mark.parametrize("extra", [{}, {"hidden_act": "gelu_new", "intermediate_size": 48, "layer_norm_eps": 1e-6}],
                         ids=["default", "gelu_new-inner"])
def test_load_pretrained_matches_transformers(tmp_path: Path, tok, extra: dict) -> None:
    theirs = transformers.BertForPreTraining(_hf_config(tok, **extra)).eval()
    randomize(theirs, seed=1)
    theirs.save_pretrained(tmp_path / "bert")
    tok.save(str(tmp_path / "bert" / "tokenizer.json"))

    ours, tok2 = _load_ours(tmp_path / "bert")
    assert ours.cfg.d_ff == extra.get("intermediate_size", 0) and not ours.cfg.causal and ours.cfg.norm == "post"
    assert_same_pretraining_logits(ours, theirs, tok)
    assert tok2.encode(*PAIRS[0]).ids == tok.encode(*PAIRS[0]).ids


@pytest.mark.parametrize("arch", [
    "BertModel",  # encoder + pooler, no cls.* heads
    "BertForMaskedLM",  # MLM head, no pooler, no NSP head
    "BertForSequenceClassification",  # encoder + pooler + classifier.* (ignored)
])
def test_load_pretrained_partial_heads(tmp_path: Path, tok, arch: str) -> None:
    """Encoder-only and fine-tuned folders load: missing heads start fresh, a classifier is ignored.
    Also the slow-tokenizer file set: vocab.txt + tokenizer_config.json, no tokenizer.json."""
    theirs = getattr(transformers, arch)(_hf_config(tok)).eval()
    randomize(theirs, seed=2)
    folder = tmp_path / arch
    theirs.save_pretrained(folder)
    _write_vocab(tok, folder, do_lower_case=True)
    with pytest.warns(UserWarning, match="fresh initialization"):
        ours, tok2 = _load_ours(folder)
    for item in [*PAIRS, SINGLE]:
        want = tok.encode(*item) if isinstance(item, tuple) else tok.encode(item)
        got = tok2.encode(*item) if isinstance(item, tuple) else tok2.encode(item)
        assert got.ids == want.ids and got.type_ids == want.type_ids
    ids, seg, mask = _batch(tok, [*PAIRS, SINGLE])
    bert = theirs if arch == "BertModel" else theirs.bert
    with torch.no_grad():
        want = bert(input_ids=ids, token_type_ids=seg, attention_mask=mask)
        h = ours.transformer(ids, seg, mask)
    real = mask.bool()
    torch.testing.assert_close(h[real], want.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    if arch == "BertForMaskedLM":
        with torch.no_grad():
            mlm = theirs(input_ids=ids, token_type_ids=seg, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, seg, mask).logits[real], mlm[real], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(ours.pooler(h), want.pooler_output, atol=1e-5, rtol=1e-5)


def test_load_pretrained_hub_layout(tmp_path: Path, tok) -> None:
    """Old hub files: TF-style gamma/beta LayerNorm names, a saved position_ids buffer, the tied decoder written out."""
    theirs = transformers.BertForPreTraining(_hf_config(tok)).eval()
    randomize(theirs, seed=3)
    folder = tmp_path / "bert"
    theirs.save_pretrained(folder)
    state = {}
    for k, v in theirs.state_dict().items():
        if "LayerNorm" in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        state[k] = v.detach().clone().contiguous()
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    assert "cls.predictions.decoder.weight" in state
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_vocab(tok, folder)

    ours, _ = _load_ours(folder)
    assert_same_pretraining_logits(ours, theirs, tok)


def test_load_pretrained_refusals(tmp_path: Path, tok) -> None:
    theirs = transformers.BertForPreTraining(_hf_config(tok)).eval()
    folder = tmp_path / "bert"
    theirs.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))

    (folder / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    with pytest.raises(CheckpointError, match="position_embedding_type"):
        hf.load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act"):
        hf.load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="shape"):
        hf.load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))

    untied = {**state, "cls.predictions.decoder.weight": torch.randn_like(state["bert.embeddings.word_embeddings.weight"])}
    save_file(untied, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="tied"):
        hf.load_pretrained(folder)
    half_head = {k: v for k, v in state.items() if k != "cls.predictions.transform.dense.bias"}
    save_file(half_head, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="cls.predictions.transform.dense.bias"):
        hf.load_pretrained(folder)
    no_layer = {k: v for k, v in state.items() if ".layer.1.attention.self.key." not in k}
    save_file(no_layer, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks the weight"):
        hf.load_pretrained(folder)
    extra = {**state, "lm_head.weight": torch.zeros(3)}
    save_file(extra, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        hf.load_pretrained(folder)


def test_init_from_hf_bert_trains(tmp_path: Path, tok, text) -> None:
    """model.init_from a Hugging Face BERT folder: its config, weights and tokenizer drive a (MLM-only) run."""
    from minilm.train import train

    run = make_run(tmp_path, tok)
    hf.export_hf(run, tmp_path / "hf")
    (tmp_path / "a.txt").write_text(text[:15_000])
    (tmp_path / "b.txt").write_text(text[15_000:25_000])
    cfg = config_from_dict({
        "model": {"causal": False, "init_from": str(tmp_path / "hf")},
        "data": {"train_files": [str(tmp_path / "a.txt")], "val_files": [str(tmp_path / "b.txt")], "nsp": False},
        "train": {"out_dir": str(tmp_path / "ft"), "batch_size": 8, "max_steps": 2, "eval_interval": 2,
                  "warmup_steps": 1},
    })
    result = train(cfg)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())["model"]
    assert saved["n_embd"] == 32 and saved["vocab_size"] == tok.get_vocab_size() and saved["norm"] == "post"
    assert math.isfinite(result["val_mlm_loss"])


# ---------------------------------------------------------------------------------------------
# Our model: NSP logits, padding invariance, sparse = dense


@pytest.fixture
def model(tok) -> MaskedLM:
    torch.manual_seed(0)
    net = MaskedLM(_bert_cfg(tok.get_vocab_size()).model)
    randomize(net, seed=4)
    return net.eval()


def test_nsp_logits_without_labels(tok, model) -> None:
    ids, seg, mask = _batch(tok, PAIRS)
    with torch.no_grad():
        nsp = model.next_sentence(model.transformer(ids, seg, mask))
    assert nsp.shape == (2, 2)


def test_padding_never_changes_real_positions(tok, model) -> None:
    short, long = PAIRS[1], PAIRS[0]
    ids, seg, mask = _batch(tok, [short, long])
    n = int(mask[0].sum())
    alone = tok.encode(*short)
    assert n < ids.size(1) and len(alone.ids) == n
    mlm, nsp = _ours(model, ids, seg, mask)
    a_ids, a_seg = torch.tensor([alone.ids]), torch.tensor([alone.type_ids])
    mlm1, nsp1 = _ours(model, a_ids, a_seg, torch.ones_like(a_ids))
    mlm0, nsp0 = _ours(model, a_ids, a_seg, None)  # no mask at all: the same
    torch.testing.assert_close(mlm[0, :n], mlm1[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp[0], nsp1[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mlm1, mlm0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(nsp1, nsp0, atol=1e-6, rtol=1e-6)
    # what sits in the padding (its ids, its segment) is irrelevant too
    ids2, seg2 = ids.clone(), seg.clone()
    ids2[0, n:], seg2[0, n:] = tok.token_to_id(MASK), 1
    mlm2, nsp2 = _ours(model, ids2, seg2, mask)
    torch.testing.assert_close(mlm2[0, :n], mlm[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp2, nsp, atol=1e-5, rtol=1e-5)


def test_sparse_mlm_equals_dense(tok, model) -> None:
    examples = [{"input_ids": tok.encode(a, b).ids, "segment_ids": tok.encode(a, b).type_ids,
                 "next_sentence_label": i % 2} for i, (a, b) in enumerate(PAIRS * 3)]
    torch.manual_seed(1)
    batch = MaskingCollator(tok, 0.3)(examples)
    assert (batch["labels"] != IGNORE).sum() > 5
    model.train()  # dropout is 0: the training path without evaluation metrics
    grads = []
    for dense in (False, True):
        model.zero_grad()
        if dense:  # logits at every position, loss written out here
            out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
            mlm = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), batch["labels"].flatten(),
                                                    ignore_index=IGNORE)
            nsp = model.next_sentence(model.transformer(batch["input_ids"], batch["segment_ids"], batch["attention_mask"]))
            loss = dense_loss = mlm + torch.nn.functional.cross_entropy(nsp, batch["next_sentence_label"])
        else:
            loss = sparse_loss = model(**batch).loss
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(sparse_loss, dense_loss, atol=1e-6, rtol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5, msg=k)
    # evaluation: per-example sums / counts give the same mean MLM loss
    model.eval()
    with torch.no_grad():
        ev = model(**batch)
        h = model.transformer(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
        nsp = torch.nn.functional.cross_entropy(model.next_sentence(h), batch["next_sentence_label"])
    mlm_mean = ev.metrics["mlm_loss"].total.sum() / ev.metrics["mlm_loss"].count.sum()
    torch.testing.assert_close(mlm_mean + nsp, dense_loss.detach(), atol=1e-6, rtol=1e-6)
    assert ev.metrics["mlm_loss"].count.sum() == (batch["labels"] != IGNORE).sum()


# ---------------------------------------------------------------------------------------------
# Data: masking statistics, NSP pairs


@pytest.fixture(scope="module")
def pair_examples(tok, text) -> list[dict]:
    parts = [text[i : i + 8_000] for i in range(0, len(text), 8_000)]  # one document each
    docs = [[ids for s in split_sentences(part) if (ids := tok.encode(s, add_special_tokens=False).ids)]
            for part in parts]
    assert len(docs) >= 5
    ds = PairDataset(nsp_pairs(docs, 64, 0.1, seed=0), tok.token_to_id(CLS), tok.token_to_id(SEP))
    return [ds[i] for i in range(len(ds))]


def test_masking_statistics(tok, pair_examples) -> None:
    coll = MaskingCollator(tok, 0.15)
    specials = torch.tensor([tok.token_to_id(t) for t in BERT_SPECIALS])
    n_cand = n_chosen = n_mask = n_random = n_kept = 0
    torch.manual_seed(0)
    for _ in range(10):
        for start in range(0, len(pair_examples), 32):
            examples = pair_examples[start : start + 32]
            b = coll(examples)
            T = b["input_ids"].size(1)
            orig = torch.full_like(b["input_ids"], tok.token_to_id(PAD))
            for i, e in enumerate(examples):
                orig[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            real = b["attention_mask"].bool()
            assert torch.equal(real, orig != tok.token_to_id(PAD)) and T == real.sum(1).max()
            candidates = real & ~torch.isin(orig, specials)
            chosen = b["labels"] != IGNORE
            assert not (chosen & ~candidates).any()  # never a special token or padding
            assert torch.equal(b["labels"][chosen], orig[chosen])
            assert torch.equal(b["input_ids"][~chosen], orig[~chosen])  # unchosen: untouched, labelled -100
            assert torch.equal(b["segment_ids"] * (~real), torch.zeros_like(orig))
            new = b["input_ids"][chosen]
            was = orig[chosen]
            is_mask = new == tok.token_to_id(MASK)
            is_random = ~is_mask & (new != was)
            assert not torch.isin(new[is_random], specials).any()  # random replacements are real tokens
            n_cand += int(candidates.sum())
            n_chosen += int(chosen.sum())
            n_mask += int(is_mask.sum())
            n_random += int(is_random.sum())
            n_kept += int((new == was).sum())
    assert n_cand > 100_000
    assert abs(n_chosen / n_cand - 0.15) < 0.01, n_chosen / n_cand
    assert abs(n_mask / n_chosen - 0.8) < 0.02, n_mask / n_chosen
    assert abs(n_random / n_chosen - 0.1) < 0.02, n_random / n_chosen
    assert abs(n_kept / n_chosen - 0.1) < 0.02, n_kept / n_chosen


def test_masks_are_fresh_each_call(tok, pair_examples) -> None:
    coll = MaskingCollator(tok, 0.15)
    examples = pair_examples[:16]
    a, b = coll(examples), coll(examples)
    assert not torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])


def test_fixed_masks_are_repeatable(tok, pair_examples) -> None:
    coll = MaskingCollator(tok, 0.15, fixed=True)
    examples = pair_examples[:16]
    torch.manual_seed(0)
    a = coll(examples)
    torch.manual_seed(1)
    b = coll(examples)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (a["labels"] != IGNORE).any()


def test_fixed_masks_ignore_batch_composition(tok, pair_examples) -> None:
    coll = MaskingCollator(tok, 0.5, fixed=True)
    short = sorted(pair_examples, key=lambda e: len(e["input_ids"]))[:8]
    longest = max(pair_examples, key=lambda e: len(e["input_ids"]))
    alone = [coll([e]) for e in short]
    together = coll([*short, longest])
    assert together["input_ids"].size(1) > max(x["input_ids"].size(1) for x in alone)  # more padding
    for i, x in enumerate(alone):
        n = x["input_ids"].size(1)
        for k in ("input_ids", "labels"):
            assert torch.equal(together[k][i, :n], x[k][0]), k
        assert (together["labels"][i, n:] == IGNORE).all()


def test_nsp_pairs_balance_and_lengths(tok) -> None:
    rng = random.Random(0)
    docs = [[[rng.randrange(5, 400) for _ in range(rng.randint(3, 25))] for _ in range(1500)] for _ in range(8)]
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    labels = []
    for seed in range(3):
        pairs = nsp_pairs(docs, 64, 0.1, seed)
        for a, b, is_random in pairs:
            assert a and b and len(a) + len(b) <= 64 - 3
            labels.append(is_random)
        ds = PairDataset(pairs, cls_id, sep_id)
        for i in range(0, len(ds), 97):
            a, b, is_random = pairs[i]
            ex = ds[i]
            assert ex["input_ids"] == [cls_id, *a, sep_id, *b, sep_id] and len(ex["input_ids"]) <= 64
            assert ex["segment_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
            assert ex["next_sentence_label"] == is_random
    assert len(labels) > 5000
    assert abs(sum(labels) / len(labels) - 0.5) < 0.05, sum(labels) / len(labels)
    # without short targets the only bias (a one-sentence chunk always gets a random B) is small
    pairs = nsp_pairs(docs, 64, 0.0, 0)
    assert abs(sum(p[2] for p in pairs) / len(pairs) - 0.5) < 0.05


def test_nsp_pairs_real_text_fit(tok, pair_examples) -> None:
    assert len(pair_examples) > 50
    for e in pair_examples:
        ids, seg = e["input_ids"], e["segment_ids"]
        assert len(ids) <= 64 and ids[0] == tok.token_to_id(CLS) and ids[-1] == tok.token_to_id(SEP)
        n_a = seg.index(1)
        assert ids[n_a - 1] == tok.token_to_id(SEP) and seg == [0] * n_a + [1] * (len(ids) - n_a)
        assert ids.count(tok.token_to_id(SEP)) == 2 and ids.count(tok.token_to_id(CLS)) == 1
    labels = [e["next_sentence_label"] for e in pair_examples]
    assert 0 < sum(labels) < len(labels)


# ---------------------------------------------------------------------------------------------
# Training and the CLI


TRAIN_BOOKS = ["austen_emma.txt", "doyle_a_study_in_scarlet.txt", "carroll_alices_adventures_in_wonderland.txt",
               "wells_the_time_machine.txt"]
VAL_BOOKS = ["austen_persuasion.txt", "wells_the_war_of_the_worlds.txt"]


def _train_cfg(tmp: Path, out: str, *, nsp: bool = True, **train):
    data = tmp / "data"
    if not data.exists():
        data.mkdir()
        for name in TRAIN_BOOKS:
            (data / f"train_{name}").write_text(_book(name, 30_000), encoding="utf-8")
        for name in VAL_BOOKS:
            (data / f"val_{name}").write_text(_book(name, 15_000, "valid"), encoding="utf-8")
    return config_from_dict({
        "model": {"preset": "bert-tiny", "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 64},
        "tokenizer": {"kind": "wordpiece", "vocab_size": 500},
        "data": {"train_files": sorted(str(p) for p in data.glob("train_*")),
                 "val_files": sorted(str(p) for p in data.glob("val_*")), "nsp": nsp},
        "train": {"out_dir": str(tmp / out), "batch_size": 16, "max_steps": 60, "lr": 2e-3, "min_lr": 2e-4,
                  "warmup_steps": 5, "eval_interval": 10, **train},
        "log": {"log_interval": 10},
    })


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory) -> Path:
    from minilm.train import train

    tmp = tmp_path_factory.mktemp("bert_train")
    train(_train_cfg(tmp, "run"))
    return tmp / "run"


def test_training_lowers_mlm_loss(bert_run: Path) -> None:
    val = [r for r in _records(bert_run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20, 30, 40, 50, 60]
    first, last = val[0]["val_mlm_loss"], val[-1]["val_mlm_loss"]
    assert all(math.isfinite(r["val_mlm_loss"]) and 0 <= r["val_nsp_acc"] <= 1 for r in val)
    assert last < first - 0.25, (first, last)  # about 6.1 -> 5.7 in practice
    assert last < math.log(500) - 0.3  # below the uniform guess (6.2)
    cfg = json.loads((bert_run / "config.json").read_text())["model"]
    assert not cfg["causal"] and cfg["norm"] == "post" and cfg["n_embd"] == 32


def test_mlm_only_training_runs(tmp_path: Path) -> None:
    from minilm.train import train

    result = train(_train_cfg(tmp_path, "mlm", nsp=False, max_steps=10, eval_interval=5))
    assert math.isfinite(result["val_mlm_loss"]) and "val_nsp_acc" not in result
    assert [r["step"] for r in _records(tmp_path / "mlm") if r["split"] == "val"] == [5, 10]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "minilm.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_export_bert(tmp_path: Path, bert_run: Path, tok) -> None:
    out = tmp_path / "hf"
    ok = _cli("export", str(bert_run), str(out))
    assert ok.returncode == 0, ok.stderr
    _, ours, run_tok = load_run(bert_run)
    theirs = transformers.BertForPreTraining.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = hf_tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    ids, seg, mask = _batch(run_tok, PAIRS)
    assert torch.equal(enc["input_ids"], ids) and torch.equal(enc["token_type_ids"], seg)
    mlm, nsp = _ours(ours, ids, seg, mask)
    with torch.no_grad():
        want = theirs(**enc)
    real = mask.bool()
    torch.testing.assert_close(mlm[real], want.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, want.seq_relationship_logits, atol=1e-5, rtol=1e-5)

    pre = make_run(tmp_path, tok, name="pre", norm="pre")
    bad = _cli("export", str(pre), str(tmp_path / "hf2"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minilm: error:") and "model.norm='pre'" in lines[0]
    assert not (tmp_path / "hf2").exists()


def test_long_single_sentences_are_split_not_repeated() -> None:
    # every "sentence" is longer than the block: each becomes one pair, A = its head, B = its tail or another text
    docs = [[list(range(100 * d + 1, 100 * d + 61))] for d in range(6)]
    pairs = nsp_pairs(docs, max_len=32, short_seq_prob=0.0, seed=3)
    assert len(pairs) == len(docs)
    heads = [a[0] for a, _, _ in pairs]
    assert len(set(heads)) == len(heads)  # no sentence used twice as the start of A
    for a, b, is_random in pairs:
        assert len(a) + len(b) <= 29
        if not is_random:
            assert a[-1] < b[0] and b[0] - a[0] < 100  # B continues A's own sentence


@pytest.mark.parametrize("nsp", [True, False])
def test_eval_scores_a_bert_run_on_a_text_file(tmp_path: Path, tok, text, capsys, nsp) -> None:
    """`minilm eval` on a BERT run: as many examples as the in-memory builders make from the file's documents."""
    from minilm.cli import main

    run = make_run(tmp_path, tok)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["nsp"] = nsp
    (run / "config.json").write_text(json.dumps(cfg))
    docs = [text[:20_000], text[30_000:]]
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "held").mkdir()
    for i in range(2):
        (tmp_path / f"{i}.txt").rename(tmp_path / "held" / f"{i}.txt")
    assert main(["eval", str(run), "--data", str(tmp_path / "held")]) == 0
    out = capsys.readouterr().out
    n = int(out.split()[0])
    if nsp:
        sents = [[ids for s in split_sentences(d) if (ids := tok.encode(s, add_special_tokens=False).ids)] for d in docs]
        assert n == len(nsp_pairs(sents, cfg["model"]["block_size"], 0.1, cfg["train"]["seed"] + 1)) > 10
        assert "nsp_acc" in out
    else:
        stream = [i for d in docs for i in tok.encode(d, add_special_tokens=False).ids]
        assert n == len(stream) // (cfg["model"]["block_size"] - 2) and "nsp_acc" not in out
    assert "mlm_loss" in out and "mlm_acc" in out
