"""The Transformer stack and the causal LM head: shapes, masking, tying, init, norms, checkpointing."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from minilm.config import ClassifyConfig, Config, TrainConfig
from minilm.models.transformer.config import TransformerConfig
from minilm.models.transformer.heads import CausalLM, Classifier, MaskedLM
from minilm.models import count_params
from minilm.models.transformer.model import KVCache, Transformer
from minilm.models.transformer.parts import sinusoidal_table
from minilm.models import build_model, family_of

V = 50


def tiny(**kw) -> TransformerConfig:
    base = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return TransformerConfig(**{**base, **kw})


def lm(seed: int = 0, **kw) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(tiny(**kw)).eval()


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# shapes and loss


def test_output_shapes_and_loss():
    model = lm()
    x = ids(3, 10)
    out = model(x)
    assert out.logits.shape == (3, 10, V) and out.loss is None
    assert model(x, last_only=True).logits.shape == (3, 1, V)
    assert torch.allclose(model(x, last_only=True).logits[:, 0], out.logits[:, -1], atol=1e-6)
    assert model.transformer(x).shape == (3, 10, 32)
    labels = ids(3, 10, seed=2)
    loss = model(x, labels=labels).loss
    assert loss.shape == () and torch.isclose(loss, F.cross_entropy(out.logits.reshape(-1, V), labels.reshape(-1)))
    # at init the distribution is close to uniform
    assert abs(loss.item() - math.log(V)) < 0.1


def test_ignored_labels_carry_no_loss():
    model = lm()
    x, labels = ids(2, 8), ids(2, 8, seed=3)
    masked = labels.clone()
    masked[:, :4] = -100
    logits = model(x).logits
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, V), labels[:, 4:].reshape(-1))
    assert torch.isclose(model(x, labels=masked).loss, expected, atol=1e-6)
    model.train()
    assert torch.isclose(model(x, labels=masked).loss, expected, atol=1e-6)  # no dropout: same loss in train mode


def test_eval_metrics_are_per_example_sums_and_counts():
    model = lm()
    x, labels = ids(2, 8), ids(2, 8, seed=3)
    labels[1, :3] = -100
    out = model(x, labels=labels)
    assert out.metrics["loss"].count.tolist() == [8, 5]
    assert torch.isclose(out.metrics["loss"].total.sum() / 13, out.loss, atol=1e-6)


def test_sequence_longer_than_block_is_refused():
    model = lm()
    with pytest.raises(ValueError, match="block size"):
        model(ids(1, 17))


def test_vocab_size_must_be_set():
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(tiny(vocab_size=0))


# ---------------------------------------------------------------------------------------------
# attention masks


@pytest.mark.parametrize("norm,position", [("pre", "learned"), ("post", "sinusoidal")])
def test_causal_later_tokens_never_change_earlier_logits(norm, position):
    model = lm(norm=norm, position=position)
    x = ids(2, 12)
    base = model(x).logits
    for t in (0, 5, 11):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % V
        changed = model(y).logits
        assert torch.allclose(changed[:, :t], base[:, :t], atol=1e-6), t
        assert not torch.allclose(changed[:, t:], base[:, t:], atol=1e-4), t


def test_bidirectional_later_tokens_change_earlier_states():
    torch.manual_seed(0)
    model = Transformer(tiny(causal=False)).eval()
    x = ids(2, 12)
    base = model(x)
    y = x.clone()
    y[:, 11] = (y[:, 11] + 1) % V
    changed = model(y)
    for t in (0, 5, 10):
        assert not torch.allclose(changed[:, t], base[:, t], atol=1e-5), t


def test_causal_right_padding_keeps_real_positions():
    model = lm()
    real = ids(1, 9)
    padded = torch.cat([real, torch.full((1, 5), 7)], dim=1)  # (1, 14) with 5 pad tokens on the right
    other = ids(1, 14, seed=5)
    batch = torch.cat([padded, other])
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[0, 9:] = 0
    out = model(batch, attention_mask=mask).logits
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, :9], model(real).logits[0], atol=1e-5)
    assert torch.allclose(out[1], model(other).logits[0], atol=1e-5)  # an all-ones row is plain causal attention


def test_causal_left_padding_with_positions_keeps_real_positions():
    model = lm()
    real = ids(1, 9)
    padded = torch.cat([torch.full((1, 4), 3), real], dim=1)  # (1, 13): pads first
    mask = torch.tensor([[0] * 4 + [1] * 9])
    pos = torch.tensor([[0] * 4 + list(range(9))])
    out = model(padded, attention_mask=mask, position_ids=pos).logits
    assert torch.isfinite(out).all()  # a padding query with no real key before it still gets a finite softmax
    assert torch.allclose(out[0, 4:], model(real).logits[0], atol=1e-5)
    unmasked = model(padded, position_ids=pos).logits
    assert not torch.allclose(unmasked[0, 4:], out[0, 4:], atol=1e-4)  # the mask is what hides the pads


def test_bidirectional_padding_keeps_real_positions():
    torch.manual_seed(0)
    model = Transformer(tiny(causal=False, norm="post", embedding_norm=True, type_vocab_size=2)).eval()
    real = ids(1, 8)
    padded = torch.cat([real, torch.full((1, 6), 0)], dim=1)
    mask = torch.tensor([[1] * 8 + [0] * 6])
    out = model(padded, attention_mask=mask)
    assert torch.allclose(out[0, :8], model(real)[0], atol=1e-5)
    assert not torch.allclose(model(padded)[0, :8], model(real)[0], atol=1e-4)  # without the mask pads are seen


def test_kv_cache_forward_matches_full_forward():
    model = lm()
    x = ids(2, 12)
    full = model(x).logits
    cache = KVCache(model.cfg, 2, model.cfg.block_size, x.device, torch.float32)
    parts = [model(x[:, :5], cache=cache).logits]
    assert cache.length == 5
    for t in range(5, 12):
        parts.append(model(x[:, t : t + 1], cache=cache).logits)
    assert cache.length == 12
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="block size"):
        model(ids(2, 5), cache=cache)  # 12 cached + 5 > 16


# ---------------------------------------------------------------------------------------------
# weights


def test_lm_head_is_tied_to_token_embedding():
    model = lm()
    W = model.transformer.tok_emb.weight
    assert W.shape == (V, 32)
    assert [n for n, p in model.named_parameters() if p.shape == (V, 32)] == ["transformer.tok_emb.weight"]
    x = ids(2, 6)
    h = model.transformer(x)
    assert torch.allclose(model(x).logits, h @ W.T, atol=1e-6)
    # the head sends gradient into embedding rows of tokens that never appear in the input
    x = torch.randint(0, 10, (2, 6))
    model.train()
    model(x, labels=torch.randint(10, V, (2, 6))).loss.backward()
    assert W.grad[10:].abs().sum() > 0
    # and a change to the embedding is a change to the head
    with torch.no_grad():
        W[20] += 1.0
    model.eval()
    assert torch.allclose(model(x).logits[..., 20], model.transformer(x) @ W[20], atol=1e-5)
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert count_params(model) == n_unique


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = tiny(n_layer=8, n_embd=64, n_head=4, block_size=64)
    model = Transformer(cfg)
    resid_std = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            assert p.std().item() == pytest.approx(resid_std, rel=0.1), name
        elif name.endswith(("qkv.weight", "fc.weight")) or name in ("tok_emb.weight", "pos_emb.weight"):
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name
            assert p.mean().abs().item() < 0.002, name
        elif "norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name


def test_no_bias_option_removes_biases():
    model = lm(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_d_ff_sets_mlp_width():
    model = lm(d_ff=48)
    assert model.transformer.blocks[0].mlp.fc.weight.shape == (48, 32)
    assert lm().transformer.blocks[0].mlp.fc.weight.shape == (128, 32)


# ---------------------------------------------------------------------------------------------
# architecture switches


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_variants_run_forward_and_backward(norm, position):
    torch.manual_seed(0)
    model = CausalLM(tiny(norm=norm, position=position, dropout=0.1, activation="gelu"))
    model.train()
    x = ids(2, 16)
    loss = model(x, labels=ids(2, 16, seed=9)).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    t = model.transformer
    assert (t.final_norm is not None) == (norm == "pre")
    assert ("transformer.pos_emb.weight" in model.state_dict()) == (position == "learned")  # a fixed table: not saved


def test_post_ln_normalizes_each_block_output():
    torch.manual_seed(0)
    t = Transformer(tiny(norm="post")).eval()
    h = t(ids(2, 10))
    assert torch.allclose(h.mean(-1), torch.zeros(2, 10), atol=1e-5)  # LayerNorm output (unit gain, zero bias)
    assert torch.allclose(h.std(-1, unbiased=False), torch.ones(2, 10), atol=1e-3)


def test_sinusoidal_table_values():
    table = sinusoidal_table(20, 8)
    pos = torch.arange(20, dtype=torch.float32)
    assert table.shape == (20, 8)
    assert torch.allclose(table[:, 0], torch.sin(pos), atol=1e-6)
    assert torch.allclose(table[:, 1], torch.cos(pos), atol=1e-6)
    assert torch.allclose(table[:, 2], torch.sin(pos / 10000 ** (2 / 8)), atol=1e-6)
    assert torch.allclose(table[:, 7], torch.cos(pos / 10000 ** (6 / 8)), atol=1e-6)
    assert sinusoidal_table(5, 7).shape == (5, 7)  # odd widths work


def test_position_init_sinusoidal_starts_the_learned_table_from_the_sinusoidal_one():
    torch.manual_seed(0)
    table = Transformer(tiny(position_init="sinusoidal")).pos_emb.weight
    assert isinstance(table, torch.nn.Parameter) and table.requires_grad  # still learned, still exportable
    assert table.pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=1e-4)  # the token embeddings' scale
    expected = sinusoidal_table(16, 32)
    assert torch.allclose(table / table[0, 1], expected / expected[0, 1], atol=1e-5)  # the same table, rescaled
    # nearby positions are more alike than distant ones from the first step
    sims = table @ table[8]
    assert sims[7] > sims[2] and sims[9] > sims[14]


def test_padding_is_skipped_with_the_same_loss_and_gradients():
    """A padded batch runs the blocks on real tokens only; loss and gradients equal each sequence run alone."""
    torch.manual_seed(0)
    model = MaskedLM(tiny(causal=False, norm="post", embedding_norm=True, type_vocab_size=2))
    model.train()
    lengths = [16, 9, 5]
    x, labels = ids(3, 16), ids(3, 16, seed=2)
    mask = torch.tensor([[1] * n + [0] * (16 - n) for n in lengths])
    labels = labels.masked_fill(torch.rand(3, 16, generator=torch.Generator().manual_seed(3)) > 0.3, -100)
    labels = labels.masked_fill(mask == 0, -100)
    model(x, attention_mask=mask, labels=labels).loss.backward()
    padded = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}  # no NSP label: no pooler
    model.zero_grad()
    n_labels = (labels != -100).sum()
    for i, n in enumerate(lengths):  # each sequence alone, no mask, weighted like the batch mean
        loss = model(x[i : i + 1, :n], labels=labels[i : i + 1, :n]).loss
        (loss * (labels[i] != -100).sum() / n_labels).backward()
    assert padded.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(padded[name], p.grad, atol=1e-6, rtol=1e-4), name
    h = model.transformer(x, attention_mask=mask)
    assert torch.all(h[mask == 0] == 0)  # padding never went through the blocks


def test_segment_embeddings_change_the_output():
    torch.manual_seed(0)
    t = Transformer(tiny(causal=False, type_vocab_size=2)).eval()
    x = ids(1, 8)
    seg = torch.tensor([[0] * 4 + [1] * 4])
    assert torch.allclose(t(x), t(x, segment_ids=torch.zeros_like(x)))
    assert not torch.allclose(t(x, segment_ids=seg), t(x), atol=1e-5)


def test_dropout_is_active_only_in_training():
    model = lm(dropout=0.2)
    x = ids(2, 8)
    assert torch.equal(model(x).logits, model(x).logits)
    model.train()
    assert not torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradient_checkpointing_gives_same_loss_and_grads(dropout):
    torch.manual_seed(0)
    a = CausalLM(tiny(dropout=dropout))
    b = CausalLM(a.cfg)
    family_of(b.cfg).checkpointing(b)  # what train.gradient_checkpointing turns on
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    x, y = ids(4, 16), ids(4, 16, seed=4)
    losses = []
    for model in (a, b):
        torch.manual_seed(123)  # same dropout masks: checkpointing must replay them in the recompute
        loss = model(x, labels=y).loss
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6, rtol=1e-5), name
    # checkpointing only applies in training; evaluation is the plain forward
    a.eval(), b.eval()
    assert torch.allclose(a(x).logits, b(x).logits, atol=1e-6)


@pytest.mark.parametrize("task,kind", [("causal_lm", CausalLM), ("masked_lm", MaskedLM), ("classify", Classifier)])
def test_train_task_alone_picks_the_task_model(task, kind):
    cfg = Config(model=tiny(causal=kind is CausalLM), classify=ClassifyConfig(labels=["a", "b", "c"]),
                 train=TrainConfig(task=task))
    assert type(build_model(cfg)) is kind
