"""The encoder-decoder: BART as the oracle both ways, masks, decoding (greedy / beam / cached), the seq2seq task
end to end with exact resume, `minilm translate` and `minilm eval`, and the refusals."""

from __future__ import annotations

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import itertools
from pathlib import Path

import pytest
import torch
from conftest import train_stopped_after_checkpoint, randomize, read_metrics, run_cli, write_run

from minilm import hf
from minilm.cli import main
from minilm.config import config_from_dict, load_config
from minilm.errors import CheckpointError
from minilm.generate import beam_search, generate, translate
from minilm.models.transformer.heads import CausalLM, Seq2Seq
from minilm.run import load_run
from minilm.tokenizer import train_char, train_word
from minilm.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(encoder_layers=2, n_layer=2, n_head=2, n_embd=32, block_size=24, norm="post", embedding_norm=True,
            activation="gelu")
WORDS = ["the", "a", "cat", "dog", "ran", "up", "down", "red", "sat", "hat"]


def _model(vocab: int, seed: int = 0, **extra) -> Seq2Seq:
    cfg = config_from_dict({"model": {**TINY, "vocab_size": vocab, **extra}, "data": {"train_files": ["x.tsv"]},
                            "train": {"task": "seq2seq"}})
    torch.manual_seed(seed)
    net = Seq2Seq(cfg.model)
    randomize(net, seed)
    return net.eval()


def _sources() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 3, 4, 1, 1, 1]])  # (2, 6), the second padded after 3 tokens
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    return src, mask


# ---------------------------------------------------------------------------------------------
# the model


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_source_padding_and_decoder_causality(norm):
    net = _model(12, norm=norm, embedding_norm=norm == "post")
    src, mask = _sources()
    dec = torch.tensor([[0, 5, 6, 7], [0, 2, 3, 4]])
    with torch.no_grad():
        full = net(src, mask, dec).logits  # (2, 4, V)
        other_pad = net(src.masked_fill(mask == 0, 11), mask, dec).logits
        alone = net(src[1:, :3], None, dec[1:]).logits
        changed_future = net(src, mask, torch.tensor([[0, 5, 9, 9], [0, 2, 9, 9]])).logits
        other_source = net(torch.tensor([[3, 4, 5, 6, 7, 2], [9, 3, 4, 1, 1, 1]]), mask, dec).logits
    assert torch.allclose(full, other_pad, atol=1e-6)  # padding is never attended to
    assert torch.allclose(full[1], alone[0], atol=1e-5)  # a padded row equals the row alone
    assert torch.allclose(full[:, :2], changed_future[:, :2], atol=1e-6)  # the decoder is causal
    assert not torch.allclose(full[0], other_source[0], atol=1e-3)  # every position sees the whole source


def test_shared_and_separate_embeddings():
    shared, separate = _model(12), _model(12, share_embeddings=False)
    assert "encoder.tok_emb.weight" not in shared.state_dict()
    assert "encoder.tok_emb.weight" in separate.state_dict()
    n = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert n == 12 * 32


# ---------------------------------------------------------------------------------------------
# BART as the oracle

transformers = pytest.importorskip("transformers")


def _run(tmp_path: Path, name: str = "run", **extra) -> Path:
    tok = train_word([" ".join(WORDS)])
    net = _model(tok.get_vocab_size(), **extra)
    cfg = config_from_dict({"model": {**TINY, "vocab_size": tok.get_vocab_size(), **extra},
                            "data": {"train_files": ["x.tsv"]}, "train": {"task": "seq2seq"}})
    return write_run(tmp_path / name, cfg, net, tok)


@pytest.mark.parametrize("extra", [{}, {"bias": False}, {"position": "sinusoidal"}, {"activation": "gelu_tanh",
                                                                                         "d_ff": 48}],
                         ids=["plain", "no-bias", "sinusoidal", "tanh-dff"])
def test_export_matches_bart(tmp_path, extra):
    run = _run(tmp_path, **extra)
    hf.export_hf(run, tmp_path / "bart")
    theirs = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "bart").eval()
    _, ours, _ = load_run(run)
    src, mask = _sources()
    dec = torch.tensor([[2, 5, 6, 7, 8], [2, 3, 4, 9, 1]])
    with torch.no_grad():
        a = ours(src, mask, dec).logits
        b = theirs(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5


def test_import_from_bart_matches(tmp_path):
    cfg = transformers.BartConfig(vocab_size=14, d_model=32, encoder_layers=2, decoder_layers=1,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=20, pad_token_id=0, bos_token_id=0,
                                  eos_token_id=0, decoder_start_token_id=0)
    torch.manual_seed(0)
    theirs = transformers.BartForConditionalGeneration(cfg).eval()
    randomize(theirs)
    with torch.no_grad():
        theirs.final_logits_bias.zero_()
    theirs.save_pretrained(tmp_path / "bart")
    train_word([" ".join(WORDS)]).save(str(tmp_path / "bart" / "tokenizer.json"))
    source = hf.load_pretrained(tmp_path / "bart")
    assert source.task == "seq2seq" and source.model.encoder_layers == 2 and source.model.n_layer == 1
    ours = Seq2Seq(source.model).eval()
    ours.load_state_dict(source.state)
    src, mask = _sources()
    dec = torch.tensor([[0, 5, 6], [0, 3, 4]])
    with torch.no_grad():
        a = ours(src, mask, dec).logits
        b = theirs(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    assert (a - b).abs().max().item() < 1e-5


def test_export_refuses_what_bart_lacks(tmp_path):
    run = _run(tmp_path, norm="pre")
    with pytest.raises(CheckpointError, match="model.norm='pre' cannot be exported"):
        hf.export_hf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# decoding


def _peaked(vocab: int = 4, seed: int = 1) -> Seq2Seq:
    """A random model with sharp, varied next-token distributions (so greedy and beam search disagree)."""
    net = _model(vocab, seed, block_size=8)
    with torch.no_grad():
        net.decoder.tok_emb.weight.mul_(20.0)
    return net


def test_seq2seq_decoding_cached_equals_uncached_and_beam_one_is_greedy():
    net = _peaked(6)
    src, mask = _sources()
    src = src.clamp(max=5)
    start = torch.zeros(2, 1, dtype=torch.long)
    kw = dict(temperature=0.0, eot=0, source=src, source_mask=mask)
    cached = torch.stack(list(generate(net, start, 7, **kw)), 1)
    plain = torch.stack(list(generate(net, start, 7, use_cache=False, **kw)), 1)
    assert torch.equal(cached, plain)
    g = [torch.Generator().manual_seed(3) for _ in range(2)]
    sampled = [torch.stack(list(generate(net, start, 7, 1.0, eot=0, source=src, source_mask=mask, generator=gen,
                                         use_cache=c)), 1) for gen, c in zip(g, (True, False))]
    assert torch.equal(*sampled)
    for row in range(2):
        ids = src[row][mask[row].bool()].tolist()
        greedy = cached[row].tolist()
        greedy = greedy[:greedy.index(0)] if 0 in greedy else greedy
        assert beam_search(net, [0], 1, 7, eot=0, source=ids)[0].tokens == greedy
        assert translate(net, [ids], 0)[0] == greedy
        wide = [beam_search(net, [0], 4, 7, eot=0, source=ids, n_best=3, use_cache=c) for c in (True, False)]
        assert [h.tokens for h in wide[0]] == [h.tokens for h in wide[1]]
        assert [h.score for h in wide[0]] == pytest.approx([h.score for h in wide[1]], abs=1e-5)


def test_seq2seq_beam_search_finds_the_exhaustive_optimum():
    """Vocabulary 3 (token 0 ends), at most 3 new tokens: with 3**3 beams nothing is pruned."""
    net = _peaked(3, seed=4)
    source = [1, 2, 2, 1]
    src = torch.tensor([source])

    def logprob(tokens: list[int]) -> float:
        seq = [0, *tokens]
        with torch.no_grad():
            logp = torch.log_softmax(net(src, None, torch.tensor([seq])).logits[0].float(), -1)
        ends = len(tokens) < 3
        targets = tokens + ([0] if ends else [])
        return sum(logp[i, t].item() for i, t in enumerate(targets)), len(targets)

    scored = []
    for n in range(4):
        for tokens in itertools.product([1, 2], repeat=n):
            total, length = logprob(list(tokens))
            scored.append((total / length if length else total, list(tokens)))
    scored.sort(reverse=True)
    found = beam_search(net, [0], 27, 3, eot=0, source=source, n_best=5)
    assert [h.tokens for h in found] == [t for _, t in scored[:5]]
    assert [h.score for h in found] == pytest.approx([s for s, _ in scored[:5]], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# the task end to end


@pytest.fixture(scope="module")
def g2p_files(tmp_path_factory) -> tuple[Path, Path]:
    """The first 400 training words of the shipped CMUdict split and 60 of its validation words."""
    folder = tmp_path_factory.mktemp("g2p")
    for name, n in (("train", 400), ("valid", 60)):
        lines = (ROOT / "data" / "cmudict" / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[: n + 1]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "train.tsv", folder / "valid.tsv"


def _overrides(files: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return [f"data.train_files=[{files[0]}]", f"data.val_files=[{files[1]}]", f"train.out_dir={out}",
            "model.encoder_layers=1", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.dropout=0.1",
            "train.max_steps=12", "train.eval_interval=4", "train.batch_size=16", "train.warmup_steps=2",
            "log.log_interval=1", "seq2seq.decode_examples=10", "train.lr=3e-3", *extra]


def test_seq2seq_trains_reports_decoded_metrics_and_resumes_exactly(g2p_files, tmp_path, monkeypatch):
    config = str(ROOT / "configs" / "g2p-cmudict.yaml")
    final = train(load_config(config, _overrides(g2p_files, tmp_path / "a")))
    assert {"val_loss", "val_token_acc", "val_ppl", "val_seq_error", "val_token_error"} <= set(final)
    records = [r for r in read_metrics(tmp_path / "a") if r["split"] == "val"]
    assert [r["step"] for r in records] == [4, 8, 12] and all("val_seq_error" in r for r in records)
    assert 0 <= final["val_token_error"] and 0 <= final["val_seq_error"] <= 1
    losses = [r["loss"] for r in read_metrics(tmp_path / "a") if r["split"] == "train"]
    assert losses[-1] < losses[0]

    train_stopped_after_checkpoint(load_config(config, _overrides(g2p_files, tmp_path / "b")), 8, monkeypatch)
    train(load_config(config, _overrides(g2p_files, tmp_path / "b", "train.resume=true")))
    a = [r for r in read_metrics(tmp_path / "a")]
    b = [r for r in read_metrics(tmp_path / "b")]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "seconds")} for r in rs]  # noqa: E731
    assert strip(a) == strip(b)
    _, ma, _ = load_run(tmp_path / "a")
    _, mb, _ = load_run(tmp_path / "b")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k

    # the CLI on the run: translate a word and lines of stdin, n-best with scores, eval with beam search
    code = main(["translate", str(tmp_path / "a"), "cat"])
    assert code == 0
    proc = run_cli("translate", str(tmp_path / "a"), "--beams", "3", "--n-best", "2",
                   input_text="cat\ndog\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["cat", "cat", "dog", "dog"] and all(float(r[1]) <= 0 for r in rows)
    assert float(rows[0][1]) >= float(rows[1][1])
    proc = run_cli("eval", str(tmp_path / "a"), "--data", str(g2p_files[1]), "--beams", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seq_error" in proc.stdout and "token_error" in proc.stdout and "beam 2" in proc.stdout


def _one_error(capsys, code: int, needle: str) -> None:
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("minilm: error: ") and needle in lines[-1], err


def test_seq2seq_bad_input_is_refused(g2p_files, tmp_path, capsys):
    config = str(ROOT / "configs" / "g2p-cmudict.yaml")
    base = _overrides(g2p_files, tmp_path / "r")
    _one_error(capsys, main(["train", config, *base, "seq2seq.target_column=pron"]), "has no column 'pron'")
    empty = tmp_path / "empty.tsv"
    empty.write_text("word\tphonemes\nab\tEY B IY\ncd\t\n", encoding="utf-8")
    _one_error(capsys, main(["train", config, *base, f"data.train_files=[{empty}]"]),
               "row 2 of data.train_files has an empty target")
    _one_error(capsys, main(["train", config, *base, "model.block_size=8"]), "raise model.block_size to")
    _one_error(capsys, main(["train", config, *base, "model.encoder_layers=0"]), "set model.encoder_layers")
    assert not (tmp_path / "r").exists()  # nothing refused leaves a run directory


def test_commands_refuse_the_wrong_kind_of_run(tmp_path, capsys):
    s2s = _run(tmp_path, "s2s")
    tok = train_char(["hello world"])
    cfg = config_from_dict({"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
                                      "vocab_size": tok.get_vocab_size()}, "data": {"train_files": ["x.txt"]}})
    gpt = write_run(tmp_path / "gpt", cfg, CausalLM(cfg.model), tok)
    _one_error(capsys, main(["translate", str(gpt), "hello"]), "use `minilm sample` for it")
    _one_error(capsys, main(["sample", str(s2s), "--prompt", "cat"]), "use `minilm translate` for it")
    _one_error(capsys, main(["translate", str(s2s), "cat", "--beams", "0"]), "--beams 0 must be at least 1")
    _one_error(capsys, main(["translate", str(s2s), "cat", "--n-best", "2"]), "add --beams K")
    _one_error(capsys, main(["translate", str(s2s), " ".join(["cat"] * 30)]), "more than the 24 the encoder reads")
    _one_error(capsys, main(["eval", str(s2s), "--data", "x.tsv", "--beams", "0"]), "--beams 0 must be at least 1")
