"""Decoding a causal LM: sampling (greedy, temperature, top-k, top-p) and beam search, with a KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from minilm.heads import CausalLM
from minilm.model import KVCache


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top k, or outside the smallest set holding top_p of the mass, to -inf. (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p; keeps the first
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from next-token logits (B, V); temperature 0 is greedy. Returns (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        # draw among the k candidates only: the same distribution as masking the rest to -inf, without a
        # softmax and a draw over the whole vocabulary (a measurable share of a small model's decode step)
        values, candidates = torch.topk(logits, top_k, dim=-1)  # (B, k) each
        pick = torch.multinomial(torch.softmax(filter_logits(values, top_p=top_p), -1), 1, generator=generator)
        return candidates.gather(-1, pick).squeeze(-1)  # (B,)
    logits = filter_logits(logits, top_p=top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()  # lighter than no_grad: no version counters or views tracked for autograd
def generate(model: CausalLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eot: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each row, (B,), up to max_new_tokens or until every row has emitted `eot`.

    The context is the last block_size tokens. With the cache, a step feeds only the newest token; once the
    sequence outgrows the position table the window slides, positions shift and the cache is rebuilt, so
    the output always equals generation without the cache.
    """
    cfg, block = model.cfg, model.cfg.block_size
    B = idx.size(0)
    seq = idx
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    cache = KVCache(cfg, B, block, idx.device, model.transformer.tok_emb.weight.dtype) if use_cache else None
    for i in range(max_new_tokens):
        if cache is None:
            logits = model(seq[:, -block:], last_only=True).logits
        elif i == 0 or seq.size(1) > block:  # fill (or refill after the window slid) the cache
            cache.length = 0
            logits = model(seq[:, -block:], cache=cache, last_only=True).logits
        else:
            logits = model(seq[:, -1:], cache=cache, last_only=True).logits
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B,)
        if eot is not None:
            nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
            done |= nxt == eot
        seq = torch.cat([seq, nxt[:, None]], dim=1)  # (B, T + 1)
        yield nxt
        if eot is not None and bool(done.all()):
            return


@dataclass
class Hypothesis:
    tokens: list[int]  # the generated tokens (the end-of-text token, where it was chosen, not included)
    score: float  # total log-probability / (generated tokens, end-of-text included) ** length_penalty


def _next_logits(model: CausalLM, seq: torch.Tensor, cache: KVCache | None, first: bool) -> torch.Tensor:
    """Next-token logits (B, V) of every row of seq (B, T), over its last block_size tokens; with the cache,
    only the newest token is fed unless the cache must be (re)filled."""
    block = model.cfg.block_size
    if cache is None:
        return model(seq[:, -block:], last_only=True).logits[:, -1]
    if first or seq.size(1) > block:  # fill, or refill once the window slid (positions shift)
        cache.length = 0
        return model(seq[:, -block:], cache=cache, last_only=True).logits[:, -1]
    return model(seq[:, -1:], cache=cache, last_only=True).logits[:, -1]


@torch.inference_mode()
def beam_search(model: CausalLM, prompt: list[int], beams: int, max_new_tokens: int, eot: int | None = None,
                length_penalty: float = 1.0, n_best: int = 1, use_cache: bool = True) -> list[Hypothesis]:
    """The n_best continuations of `prompt` found by keeping the `beams` most probable partial sequences
    at every step, best first. A hypothesis ends when it chooses `eot`; the search stops once `beams`
    have ended and no live one can still beat them, or after max_new_tokens (live beams then count too).
    """
    device = model.transformer.tok_emb.weight.device
    seq = torch.tensor([prompt] * beams, device=device)  # (k, T): every beam starts as the prompt
    scores = torch.full((beams,), float("-inf"), device=device)
    scores[0] = 0.0  # one live beam at first, so the first step picks the k best distinct tokens
    cache = KVCache(model.cfg, beams, model.cfg.block_size, device, model.transformer.tok_emb.weight.dtype) \
        if use_cache else None
    finished: list[Hypothesis] = []
    norm = lambda total, n: total / n ** length_penalty  # noqa: E731
    settled = False  # stopped because the ended hypotheses cannot be beaten
    for step in range(1, max_new_tokens + 1):
        logp = torch.log_softmax(_next_logits(model, seq, cache, step == 1).float(), -1)  # (k, V)
        V = logp.size(-1)
        top, flat = (scores[:, None] + logp).view(-1).topk(min(2 * beams, beams * V))  # (2k,) candidates
        parents, tokens, keep = [], [], []
        for total, index in zip(top.tolist(), flat.tolist()):
            if total == float("-inf"):
                break
            parent, token = divmod(index, V)
            if token == eot:  # an ended hypothesis; only those ranked among the k best live ones count
                if len(parents) < beams:
                    finished.append(Hypothesis(seq[parent, len(prompt):].tolist(), norm(total, step)))
                continue
            parents.append(parent)
            tokens.append(token)
            keep.append(total)
            if len(parents) == beams:
                break
        if not parents:
            settled = True
            break
        while len(parents) < beams:  # fewer live candidates than beams (a tiny vocabulary): pad with dead rows
            parents.append(parents[0])
            tokens.append(tokens[0])
            keep.append(float("-inf"))
        rows = torch.tensor(parents, device=device)
        seq = torch.cat([seq[rows], torch.tensor(tokens, device=device)[:, None]], dim=1)  # (k, T + 1)
        scores = torch.tensor(keep, device=device)
        if cache is not None:
            cache.reorder(rows)
        ended = sorted(h.score for h in finished)[-beams:]
        if len(ended) >= beams and norm(max(keep), step) < ended[0]:
            settled = True  # no live beam can still rank among the best ended ones (at this length)
            break
    live = [] if settled else [Hypothesis(seq[i, len(prompt):].tolist(), norm(t, seq.size(1) - len(prompt)))
                               for i, t in enumerate(scores.tolist()) if t != float("-inf")]
    return sorted(finished + live, key=lambda h: h.score, reverse=True)[:n_best]
