"""Recurrent stacks (model.arch = rnn / lstm / gru / sru): each cell against its equations, torch's weight layout,
exact padding, bidirectional reading, state-cached sampling, the LM and classifier tasks, and the refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import train_stopped_after_checkpoint, read_metrics, tiny_overrides, write_run

from minilm import hf
from minilm.config import config_from_dict, load_config
from minilm.models.recurrent.config import RecurrentConfig
from minilm.errors import CheckpointError, ConfigError
from minilm.generate import beam_search, generate
from minilm.models.recurrent.heads import RecurrentLM
from minilm.models.recurrent.model import RecurrentStack
from minilm.tokenizer import train_char
from minilm.train import train

ARCHS = ["rnn", "lstm", "gru", "sru"]


def _cfg(arch: str, **extra) -> RecurrentConfig:
    cfg = RecurrentConfig(arch=arch, vocab_size=11, n_layer=2, n_embd=8, hidden_size=6, **extra)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# the cells against their equations


def _lstm_ref(x, w_ih, w_hh, b_ih, b_hh, H):
    h, c, out = torch.zeros(x.size(0), H), torch.zeros(x.size(0), H), []
    for t in range(x.size(1)):
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).split(H, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 1)


def _gru_ref(x, w_ih, w_hh, b_ih, b_hh, H):
    h, out = torch.zeros(x.size(0), H), []
    for t in range(x.size(1)):
        xr, xz, xn = (x[:, t] @ w_ih.T + b_ih).split(H, -1)
        hr, hz, hn = (h @ w_hh.T + b_hh).split(H, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        out.append(h)
    return torch.stack(out, 1)


def _rnn_ref(x, w_ih, w_hh, b_ih, b_hh, H):
    h, out = torch.zeros(x.size(0), H), []
    for t in range(x.size(1)):
        h = torch.tanh(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("arch,ref", [("lstm", _lstm_ref), ("gru", _gru_ref), ("rnn", _rnn_ref)])
def test_torch_cells_match_their_equations_and_torch_layout(arch, ref):
    torch.manual_seed(0)
    stack = RecurrentStack(_cfg(arch)).eval()
    x = torch.randn(3, 5, 8)
    layer = stack.layers[0].rnn
    with torch.no_grad():
        ours, _ = stack.layers[0](x, None, None)
        want = ref(x, layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0, 6)
    assert torch.allclose(ours, want, atol=1e-5)
    # our two one-layer modules are torch's two-layer module with the same weights (dropout 0)
    deep = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[arch](8, 6, num_layers=2, batch_first=True)
    with torch.no_grad():
        for i in range(2):
            for name, p in stack.layers[i].rnn.named_parameters():
                getattr(deep, name.replace("_l0", f"_l{i}")).copy_(p)
        ids = torch.randint(0, 11, (3, 5))
        ours, _ = stack(ids)
        theirs, _ = deep(stack.tok_emb(ids))
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_is_exact_and_bidirectional_stacks_see_the_future(arch):
    torch.manual_seed(0)
    uni, bi = RecurrentStack(_cfg(arch)).eval(), RecurrentStack(_cfg(arch, bidirectional=True)).eval()
    normed = RecurrentStack(_cfg(arch, bidirectional=True, layer_norm=True)).eval()
    ids = torch.randint(1, 11, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    later = ids.clone()
    later[:, 3] = (ids[:, 3] % 10) + 1  # a different token at position 3
    with torch.no_grad():
        for stack in (uni, bi, normed):
            full, _ = stack(ids, mask)
            alone, _ = stack(ids[1:, :4])
            assert torch.allclose(full[1, :4], alone[0], atol=1e-5)  # padding changes nothing, in both directions
            assert full[1, 4:].abs().max() == 0
        u0, b0 = uni(ids)[0][:, 0], bi(ids)[0][:, 0]
        u1, b1 = uni(later)[0][:, 0], bi(later)[0][:, 0]
    assert torch.equal(u0, u1)  # left to right: position 0 cannot know position 3
    assert not torch.allclose(b0, b1)  # the backward direction has read it


@pytest.mark.parametrize("arch", ["lstm", "sru"])
def test_layer_norm_normalizes_each_layers_output(arch):
    torch.manual_seed(0)
    stack = RecurrentStack(_cfg(arch, layer_norm=True, residual=True)).eval()
    with torch.no_grad():
        for norm in stack.norms:  # not the identity LayerNorm starts as
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        ids = torch.randint(0, 11, (3, 5))
        ours, _ = stack(ids)
        x = stack.tok_emb(ids)
        for layer, norm in zip(stack.layers, stack.norms):  # each output normalized, then the residual (6 to 6)
            y, _ = layer(x, None, None)
            y = torch.nn.functional.layer_norm(y, (6,), norm.weight, norm.bias)
            x = x + y if x.shape == y.shape else y
    assert torch.allclose(ours, x, atol=1e-6)
    plain = RecurrentStack(_cfg(arch, residual=True))
    assert sum(p.numel() for p in stack.parameters()) == sum(p.numel() for p in plain.parameters()) + 2 * 2 * 6


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_padded_rows_on_cpu_equal_torch_packed_sequences(arch):
    """The CPU path (one unpacked kernel call per distinct length, the backward direction on reversed rows) gives
    torch's packed-sequence outputs, final states and gradients, from a given state too."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from minilm.models.recurrent.model import RecurrentLayer

    torch.manual_seed(0)
    layer = RecurrentLayer(arch, 5, 6, bidirectional=True)
    lengths = torch.tensor([3, 9, 1, 9, 4, 3])
    x = torch.randn(6, 9, 5, requires_grad=True)
    h0 = torch.randn(2, 6, 6)
    for state in (None, (h0, h0.flip(0)) if arch == "lstm" else h0):
        ours, our_state = layer(x, lengths, state)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        theirs, their_state = layer.rnn(packed, state)
        theirs, _ = pad_packed_sequence(theirs, batch_first=True, total_length=9)
        flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
        assert torch.allclose(ours, theirs, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(flat(our_state), flat(their_state)))
        weight = torch.randn_like(ours)
        loss = lambda out, st: (out * weight).sum() + sum(t.sum() for t in flat(st))  # noqa: E731
        g_ours = torch.autograd.grad(loss(ours, our_state), [x, *layer.parameters()])
        g_theirs = torch.autograd.grad(loss(theirs, their_state), [x, *layer.parameters()])
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ours, g_theirs))


# ---------------------------------------------------------------------------------------------
# sampling with the state as the cache


@pytest.mark.parametrize("arch", ARCHS)
def test_state_cached_sampling_equals_reading_the_whole_prefix(arch):
    torch.manual_seed(0)
    model = RecurrentLM(_cfg(arch, residual=True)).eval()
    with torch.no_grad():
        model.rnn.tok_emb.weight.mul_(50)  # sharp distributions: any difference would show
    prompt = torch.randint(0, 11, (2, 4))
    runs = [torch.stack(list(generate(model, prompt, 80, 1.0, generator=torch.Generator().manual_seed(1),
                                      use_cache=c)), 1) for c in (True, False)]
    assert torch.equal(*runs)  # 84 tokens: past block_size (256 is not involved: a recurrent LM has no window)
    greedy = torch.stack(list(generate(model, prompt[:1], 6, 0.0)), 1)[0].tolist()
    assert beam_search(model, prompt[0].tolist(), 1, 6)[0].tokens == greedy
    wide = [beam_search(model, prompt[0].tolist(), 4, 6, n_best=3, use_cache=c) for c in (True, False)]
    assert [h.tokens for h in wide[0]] == [h.tokens for h in wide[1]]


# ---------------------------------------------------------------------------------------------
# the tasks


def test_lstm_language_model_trains_samples_and_resumes_exactly(shakespeare_file, tmp_path, monkeypatch):
    extra = ("model.arch=lstm", "model.n_layer=2", "model.hidden_size=48", "model.dropout=0.1",
             "train.max_steps=12", "train.eval_interval=4", "log.log_interval=1")
    train(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "a", *extra)))
    losses = [r["loss"] for r in read_metrics(tmp_path / "a") if r["split"] == "train"]
    assert losses[-1] < losses[0]

    train_stopped_after_checkpoint(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "b", *extra)), 8, monkeypatch)
    train(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "b", *extra, "train.resume=true")))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "seconds")} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))
    with pytest.raises(CheckpointError, match="no transformers layout"):
        hf.export_hf(tmp_path / "a", tmp_path / "hf")


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_bidirectional_classifier_trains(tmp_path, pooling):
    rows = ["text\tlabel"] + [f"{w} {w} good\tpos" for w in "abcdefgh"] + [f"{w} bad {w}\tneg" for w in "abcdefgh"]
    table = tmp_path / "t.tsv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = config_from_dict({"model": {"arch": "gru", "n_layer": 1, "n_embd": 16, "bidirectional": True},
                            "data": {"train_files": [str(table)], "val_files": [str(table)]},
                            "classify": {"pooling": pooling},
                            "train": {"task": "classify", "out_dir": str(tmp_path / "run"), "max_steps": 30,
                                      "batch_size": 8, "lr": 1e-2, "warmup_steps": 0, "eval_interval": 30}})
    metrics = train(cfg)
    assert metrics["val_accuracy"] == 1.0


def test_recurrent_refusals(tmp_path):
    with pytest.raises(ConfigError, match="model.bidirectional=false"):
        train(config_from_dict({"model": {"arch": "lstm", "bidirectional": True}, "data": {"train_files": ["x.txt"]},
                                "train": {"task": "causal_lm", "out_dir": str(tmp_path / "r")}}))
    with pytest.raises(ConfigError, match="train.task=masked_lm is not something a recurrent model .* choose a "
                                          "transformer model.arch"):
        train(config_from_dict({"model": {"arch": "lstm"}, "tokenizer": {"kind": "wordpiece"},
                                "data": {"train_files": ["x.txt"]}, "train": {"task": "masked_lm",
                                                                            "out_dir": str(tmp_path / "r")}}))
    data = {"train_files": ["x.txt"]}
    with pytest.raises(ConfigError, match="classify.pooling=cls"):
        config_from_dict({"model": {"arch": "gru"}, "classify": {"pooling": "cls"}, "data": data})
    with pytest.raises(ConfigError, match="model.arch"):
        config_from_dict({"model": {"arch": "transformers"}, "data": data})
    with pytest.raises(ConfigError, match="model.bidirectional is a setting of recurrent models"):
        config_from_dict({"model": {"bidirectional": True}, "data": data})
    with pytest.raises(ConfigError, match="model.n_head is a setting of transformer models"):
        config_from_dict({"model": {"arch": "lstm", "n_head": 4}, "data": data})
    assert not (tmp_path / "r").exists()


def test_recurrent_run_samples_from_the_cli(tmp_path, capsys):
    from minilm.cli import main

    tok = train_char(["hello world"])
    cfg = config_from_dict({"model": {"arch": "sru", "n_layer": 1, "n_embd": 16, "vocab_size": tok.get_vocab_size()},
                            "data": {"train_files": ["x.txt"]}})
    run = write_run(tmp_path / "sru", cfg, RecurrentLM(cfg.model), tok)
    assert main(["sample", str(run), "--prompt", "hel", "--max-new-tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("hel")
    assert main(["sample", str(run), "--prompt", "hel", "--max-new-tokens", "5", "--beams", "2"]) == 0


# ---------------------------------------------------------------------------------------------
# truncated backpropagation through time


def test_tbptt_lanes_continue_from_batch_to_batch():
    import numpy as np

    from minilm.data.lm import ContiguousLanes
    from minilm.data.prepared import TokenStream

    tokens = TokenStream([np.arange(1000, dtype=np.uint16)])
    lanes = [ContiguousLanes(tokens, 8, lanes=3, rank=r, processes=2) for r in range(2)]
    assert lanes[0].lane_len == 166 and len(lanes[0]) == 20 * 3  # 1000 tokens / 6 lanes; (166 - 1) // 8 steps
    for data in lanes:
        for i in range(len(data) - data.lanes):
            now, nxt = data[i], data[i + data.lanes]  # the same lane in the next batch
            assert int(nxt["input_ids"][0]) == int(now["input_ids"][-1]) + 1
    starts = {int(d[lane]["input_ids"][0]) for d in lanes for lane in range(3)}
    assert starts == {0, 166, 332, 498, 664, 830}  # six lanes, each read by exactly one process


def test_tbptt_resumes_exactly_after_sigkill(tmp_path):
    from bench.crash import kill_and_resume
    from conftest import SHAKESPEARE

    report = kill_and_resume(tmp_path, trials=2, steps=30, save_every=2, seed=2, data=SHAKESPEARE,
                             extra=("model.arch=gru", "model.n_layer=2", "train.tbptt=true", "model.dropout=0.1"))
    assert len(report.kills) == 2, report
    assert report.steps_equal and report.weights_equal, report


def test_tbptt_carries_the_state(shakespeare_file, tmp_path, monkeypatch):
    """Every block after a lane's first starts from the state the previous one ended with."""
    from minilm import train as loop

    extra = ("model.arch=lstm", "model.n_layer=1", "train.max_steps=3", "train.eval_interval=3",
             "log.log_interval=1", "train.tbptt=true")
    seen = []
    real = loop.train_step

    def spy(s, batch):
        seen.append(s.carry is not None)
        return real(s, batch)

    monkeypatch.setattr(loop, "train_step", spy)
    train(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "a", *extra)))
    assert seen == [False, True, True]  # a zero state only for the first block of each lane
    with pytest.raises(ConfigError, match="train.tbptt carries a state .* transformer models"):
        train(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "b", "train.tbptt=true")))
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# recurrent encoder-decoders with attention


@pytest.mark.parametrize("arch,attention", [("lstm", "dot"), ("gru", "additive"), ("sru", "dot")])
def test_recurrent_encoder_decoder_masks_and_decodes_the_same_cached_or_not(arch, attention):
    from minilm.models.recurrent.heads import RecurrentSeq2Seq
    from minilm.generate import translate

    cfg = _cfg(arch, encoder_layers=2, bidirectional=True, attention=attention, block_size=10)
    torch.manual_seed(0)
    model = RecurrentSeq2Seq(cfg).eval()
    with torch.no_grad():
        model.decoder.tok_emb.weight.mul_(30)
    src = torch.randint(1, 11, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    dec = torch.randint(1, 11, (2, 5))
    with torch.no_grad():
        full = model(src, mask, dec).logits
        alone = model(src[1:, :4], None, dec[1:]).logits
        other = model(src.masked_fill(mask == 0, 3), mask, dec).logits
    assert torch.allclose(full[1], alone[0], atol=1e-5) and torch.allclose(full, other, atol=1e-6)
    start = torch.zeros(2, 1, dtype=torch.long)
    runs = [torch.stack(list(generate(model, start, 9, 0.0, eot=0, source=src, source_mask=mask, use_cache=c)), 1)
            for c in (True, False)]
    assert torch.equal(*runs)
    ids = src[1, :4].tolist()
    greedy = translate(model, [ids], 0)[0]
    assert beam_search(model, [0], 1, 9, eot=0, source=ids)[0].tokens == greedy
    wide = [beam_search(model, [0], 3, 9, eot=0, source=ids, n_best=3, use_cache=c) for c in (True, False)]
    assert [h.tokens for h in wide[0]] == [h.tokens for h in wide[1]]


def test_lstm_grapheme_to_phoneme_trains(tmp_path):
    from conftest import ROOT

    folder = tmp_path / "g2p"
    folder.mkdir()
    for name, n in (("train", 300), ("valid", 40)):
        lines = (ROOT / "data" / "cmudict" / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[: n + 1]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(str(ROOT / "configs" / "g2p-cmudict.yaml"), [
        f"data.train_files=[{folder / 'train.tsv'}]", f"data.val_files=[{folder / 'valid.tsv'}]",
        f"train.out_dir={tmp_path / 'run'}", "model.arch=lstm", "model.bidirectional=true",
        "model.encoder_layers=1", "model.n_layer=1", "model.n_embd=32", "model.attention=additive",
        "train.max_steps=8", "train.eval_interval=4", "train.batch_size=16", "seq2seq.decode_examples=8"])
    metrics = train(cfg)
    assert {"val_loss", "val_token_acc", "val_seq_error", "val_token_error"} <= set(metrics)
