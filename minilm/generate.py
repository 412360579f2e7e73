"""Sampling from a causal LM: greedy, temperature, top-k, top-p, with a KV cache."""

from __future__ import annotations

from collections.abc import Iterator

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
