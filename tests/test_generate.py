"""Sampling: the KV cache changes nothing, the window slides past block_size, and each filter does its job."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from minilm.models.transformer.config import TransformerConfig
from minilm.generate import beam_search, filter_logits, generate, sample_next
from minilm.models.transformer.heads import CausalLM

V, BLOCK = 40, 16


@pytest.fixture(scope="module")
def model() -> CausalLM:
    """A tiny GPT briefly trained on a random second-order rule (x_t = table[x_t-2, x_t-1]).

    An untrained model with tied embeddings just repeats its last token; this one produces varied,
    context-dependent text, so a cache or window bug shows up in its output.
    """
    torch.manual_seed(0)
    m = CausalLM(TransformerConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
    g = torch.Generator().manual_seed(0)
    table = torch.randint(0, V, (V, V), generator=g)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(80):
        cols = list(torch.randint(0, V, (2, 32), generator=g))
        while len(cols) < BLOCK + 1:
            cols.append(table[cols[-2], cols[-1]])
        seq = torch.stack(cols, dim=1)  # (32, BLOCK + 1)
        loss = m(seq[:, :-1], labels=seq[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def prompt(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def run(model, idx, n, **kw) -> list[list[int]]:
    return torch.stack(list(generate(model, idx, n, **kw)), dim=1).tolist()


def reference_greedy(model, idx, n) -> list[list[int]]:
    """The definition: recompute the last block_size tokens from scratch for every new token."""
    seq = idx
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq[:, -BLOCK:]).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, idx.size(1):].tolist()


@pytest.mark.parametrize("T,n", [(4, 8), (5, 30), (1, 40), (40, 10)])  # within, past and far past block_size
def test_greedy_cache_equals_no_cache_equals_reference(model, T, n):
    idx = prompt(2, T)
    cached = run(model, idx, n, temperature=0.0, use_cache=True)
    plain = run(model, idx, n, temperature=0.0, use_cache=False)
    assert cached == plain == reference_greedy(model, idx, n)
    assert all(len(row) == n for row in cached)
    assert len({t for row in cached for t in row}) >= 6  # varied text, not one repeated token


@pytest.mark.parametrize("T,n", [(3, 10), (6, 35), (40, 12)])
@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.8)])
def test_seeded_sampling_cache_equals_no_cache(model, T, n, top_k, top_p):
    idx = prompt(3, T, seed=T)
    outs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(42)
        outs.append(run(model, idx, n, temperature=1.0, top_k=top_k, top_p=top_p, use_cache=use_cache, generator=gen))
    assert outs[0] == outs[1]
    again = run(model, idx, n, temperature=1.0, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(42))
    assert again == outs[0]  # same seed, same text
    other = run(model, idx, n, temperature=1.0, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(7))
    assert other != outs[0]


def test_prompt_longer_than_block_uses_last_block(model):
    long = prompt(1, 3 * BLOCK)
    tail = long[:, -BLOCK:]
    assert run(model, long, 6, temperature=0.0) == run(model, tail, 6, temperature=0.0)


def test_generation_does_not_touch_the_global_rng(model):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    run(model, prompt(1, 4), 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)


def test_stops_when_every_row_emitted_eot(model):
    idx = prompt(2, 5, seed=3)
    free = run(model, idx, 20, temperature=0.0)
    eot = free[0][3]  # the fourth token row 0 produces greedily
    k0 = free[0].index(eot)
    stopped = run(model, idx, 20, temperature=0.0, eot=eot)
    assert stopped[0][: k0 + 1] == free[0][: k0 + 1]
    if eot in free[1]:
        k1 = free[1].index(eot)
        assert len(stopped[0]) == max(k0, k1) + 1  # ends once the last row has finished
        assert stopped[1][: k1 + 1] == free[1][: k1 + 1]
    else:
        assert len(stopped[0]) == 20
    assert all(t == eot for t in stopped[0][k0:])  # a finished row keeps emitting eot

    single = run(model, idx[:1], 20, temperature=0.0, eot=eot)
    assert single == [free[0][: k0 + 1]]


def test_zero_new_tokens(model):
    assert list(generate(model, prompt(1, 3), 0)) == []


# ---------------------------------------------------------------------------------------------
# sample_next and filter_logits


def test_temperature_zero_is_argmax():
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert torch.equal(sample_next(logits, temperature=0.0, generator=gen), logits.argmax(-1))
    assert torch.equal(gen.get_state(), state)  # greedy draws nothing


def test_low_temperature_approaches_argmax():
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(1)).expand(500, V)
    draws = sample_next(logits, temperature=1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.all(draws == logits[0].argmax())


def test_top_k_never_samples_outside_the_top_k():
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(2)).expand(4000, V)
    k = 5
    top = set(torch.topk(logits[0], k).indices.tolist())
    draws = sample_next(logits, temperature=1.0, top_k=k, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == top  # only the top k, and each of them
    draws = sample_next(logits, temperature=5.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.all(draws == logits[0].argmax())


def test_top_k_at_or_above_vocab_keeps_everything():
    logits = torch.randn(2, V)
    assert torch.equal(filter_logits(logits, top_k=V), logits)
    assert torch.equal(filter_logits(logits, top_k=V + 10), logits)


def test_top_k_matches_sampling_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).expand(20000, 5)
    draws = sample_next(logits, top_k=3, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / 20000
    expected = torch.softmax(torch.tensor([3.0, 2.0, 1.0]), -1)
    assert torch.allclose(freq[:3], expected, atol=0.015)
    assert freq[3:].sum() == 0


@pytest.mark.parametrize("top_p,kept", [(0.5, {0}), (0.6, {0}), (0.7, {0, 1}), (0.88, {0, 1}), (0.9, {0, 1, 2}),
                                        (0.99, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_nucleus(top_p, kept):
    # probabilities 0.644, 0.237, 0.087, 0.032 (cumulative 0.644, 0.881, 0.968, 1.0), in shuffled order
    perm = torch.tensor([2, 0, 3, 1])
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])[perm][None]
    out = filter_logits(logits, top_p=top_p)
    assert {int(perm[i]) for i in range(4) if torch.isfinite(out[0, i])} == kept
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # kept logits untouched
    draws = sample_next(logits.expand(2000, 4), top_p=top_p, generator=torch.Generator().manual_seed(0))
    assert {int(perm[d]) for d in draws} == kept


def test_top_p_exact_boundary_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125]])  # exact in binary floating point
    logits = probs.log()
    assert torch.equal(torch.softmax(logits, -1), probs)
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[True, True, False, False]]


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).tolist() == [[True, False, False]]


def test_filters_are_per_row():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[True, True, False, False], [False, False, True, True]]
    out = filter_logits(logits, top_p=0.7)
    assert torch.isfinite(out).tolist() == [[True, True, False, False], [False, False, True, True]]


def test_top_k_and_top_p_combine():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    out = filter_logits(logits, top_k=3, top_p=0.5)  # top_p applies to the renormalized top 3: 0.44, 0.33, ...
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    assert math.isclose(torch.softmax(out, -1)[0, 0].item(), 4 / 7, rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------
# beam search


def _seq_logprob(model: CausalLM, prompt: list[int], tokens: list[int]) -> float:
    """Total log-probability of `tokens` after `prompt`, one uncached forward pass."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # (T, V)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))


def test_beam_width_one_is_greedy(model):
    prompt = [3, 17, 5]
    greedy = [int(t[0]) for t in generate(model, torch.tensor([prompt]), 12, temperature=0.0)]
    (best,) = beam_search(model, prompt, beams=1, max_new_tokens=12)
    assert best.tokens == greedy


def test_beam_search_with_every_sequence_kept_finds_the_exhaustive_optimum():
    torch.manual_seed(3)
    small = CausalLM(TransformerConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    for p in small.parameters():  # a peaked, context-dependent distribution
        p.data.normal_(0, 1.5)
    prompt, length = [1], 4
    everything = [list(seq) for seq in itertools.product(range(3), repeat=length)]
    scores = {tuple(s): _seq_logprob(small, prompt, s) for s in everything}
    optimum = max(scores, key=scores.get)
    found = beam_search(small, prompt, beams=3 ** length, max_new_tokens=length, n_best=5)
    assert found[0].tokens == list(optimum)
    assert found[0].score == pytest.approx(scores[optimum] / length, abs=1e-5)  # length penalty 1: per token
    ranked = sorted(scores, key=scores.get, reverse=True)[:5]
    assert [tuple(h.tokens) for h in found] == ranked  # the n best, in order
    narrow = beam_search(small, prompt, beams=1, max_new_tokens=length)[0]
    assert scores[tuple(narrow.tokens)] <= scores[optimum]


@pytest.mark.parametrize("prompt", [[3, 17, 5], list(range(14))])  # the second outgrows the window
def test_beam_search_cache_equals_no_cache(model, prompt):
    for eot in (None, 7):
        cached = beam_search(model, prompt, beams=4, max_new_tokens=10, eot=eot, n_best=4)
        plain = beam_search(model, prompt, beams=4, max_new_tokens=10, eot=eot, n_best=4, use_cache=False)
        assert [h.tokens for h in cached] == [h.tokens for h in plain]
        assert [h.score for h in cached] == pytest.approx([h.score for h in plain], abs=1e-4)


def test_beam_search_stops_at_end_of_text_and_scores_with_the_length_penalty(model):
    prompt = [3, 17, 5]
    greedy = [int(t[0]) for t in generate(model, torch.tensor([prompt]), 6, temperature=0.0)]
    eot = greedy[2]  # a token the search will want to choose early
    for penalty in (0.0, 1.0):
        for h in beam_search(model, prompt, beams=3, max_new_tokens=12, eot=eot, n_best=3, length_penalty=penalty):
            assert eot not in h.tokens
            n = len(h.tokens) + (len(h.tokens) < 12)  # the end-of-text token counts when it ended the search
            ended = h.tokens + [eot] if len(h.tokens) < 12 else h.tokens
            assert h.score == pytest.approx(_seq_logprob(model, prompt, ended) / n ** penalty, abs=1e-4)
