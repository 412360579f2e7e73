"""Decoding a language model or a seq2seq model of any family: sampling (greedy, temperature, top-k, top-p) and
beam search. Each family decodes through the Decoder protocol (minilm/models/family.py): a Transformer with its
KV cache, a recurrent stack with its state, an encoder-decoder with its encoder run once per source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from minilm.data.batch import pad_examples
from minilm.models import decoder


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
def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eot: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None, source: torch.Tensor | None = None,
             source_mask: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each row, (B,), up to max_new_tokens or until every row has emitted `eot`.

    A causal LM continues idx (B, T) over its last block_size tokens; once the sequence outgrows the position
    table the window slides, positions shift and the cache is rebuilt, so the output always equals generation
    without the cache. A seq2seq model decodes from idx (the start token) for the `source` (B, S) rows and
    its mask, up to its block_size positions.
    """
    dec = decoder(model, idx.size(0), use_cache, source, source_mask)
    if dec.max_len is not None:
        max_new_tokens = min(max_new_tokens, dec.max_len - idx.size(1))
    seq = idx
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for i in range(max_new_tokens):
        logits = dec.start(seq) if i == 0 else dec.step(seq)  # (B, V)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
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


@torch.inference_mode()
def beam_search(model: torch.nn.Module, prompt: list[int], beams: int, max_new_tokens: int,
                eot: int | None = None, length_penalty: float = 1.0, n_best: int = 1, use_cache: bool = True,
                source: list[int] | None = None) -> list[Hypothesis]:
    """The n_best continuations of `prompt` found by keeping the `beams` most probable partial sequences
    at every step, best first. A hypothesis ends when it chooses `eot`; the search stops once `beams`
    have ended and no live one can still beat them, or after max_new_tokens (live beams then count too).
    A seq2seq model decodes `source` from `prompt` (its start token); the encoder runs once for all beams.
    """
    device = next(model.parameters()).device
    src = torch.tensor([source], device=device) if source is not None else None  # (1, S)
    dec = decoder(model, beams, use_cache, src)
    if dec.max_len is not None:
        max_new_tokens = min(max_new_tokens, dec.max_len - len(prompt))
    seq = torch.tensor([prompt] * beams, device=device)  # (k, T): every beam starts as the prompt
    scores = torch.full((beams,), float("-inf"), device=device)
    scores[0] = 0.0  # one live beam at first, so the first step picks the k best distinct tokens
    finished: list[Hypothesis] = []
    norm = lambda total, n: total / n ** length_penalty  # noqa: E731
    settled = False  # stopped because the ended hypotheses cannot be beaten
    for step in range(1, max_new_tokens + 1):
        logp = torch.log_softmax((dec.start(seq) if step == 1 else dec.step(seq)).float(), -1)  # (k, V)
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
        dec.reorder(rows)
        ended = sorted(h.score for h in finished)[-beams:]
        if len(ended) >= beams and norm(max(keep), step) < ended[0]:
            settled = True  # no live beam can still rank among the best ended ones (at this length)
            break
    live = [] if settled else [Hypothesis(seq[i, len(prompt):].tolist(), norm(t, seq.size(1) - len(prompt)))
                               for i, t in enumerate(scores.tolist()) if t != float("-inf")]
    return sorted(finished + live, key=lambda h: h.score, reverse=True)[:n_best]


@torch.inference_mode()
def translate(model: torch.nn.Module, sources: list[list[int]], end: int, beams: int = 1,
              length_penalty: float = 1.0, batch_size: int = 64, temperature: float = 0.0, top_k: int | None = None,
              top_p: float | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
              max_new_tokens: int | None = None, progress: bool = False) -> list[list[int]]:
    """The decoded target of each source (its token ids, without the end token): greedy or sampled in batches
    of similar length, or by beam search one source at a time (beams > 1); `progress`: a bar on stderr."""
    limit = model.cfg.block_size if max_new_tokens is None else max_new_tokens
    if beams > 1:
        return [beam_search(model, [end], beams, limit, end, length_penalty, use_cache=use_cache, source=s)[0].tokens
                for s in tqdm(sources, desc=f"beam {beams}", unit="source", disable=not progress)]
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # little padding per batch
    out: list[list[int]] = [[] for _ in sources]
    for first in tqdm(range(0, len(order), batch_size), desc="decoding", unit="batch", disable=not progress):
        rows = order[first:first + batch_size]
        batch = pad_examples([{"input_ids": sources[i]} for i in rows], end)  # right-padded (B, S)
        src, mask = batch["input_ids"], batch["attention_mask"]
        start = torch.full((len(rows), 1), end, dtype=torch.long, device=device)  # (B, 1)
        new = generate(model, start, limit, temperature, top_k, top_p, end, use_cache, generator,
                       src.to(device), mask.to(device) if not mask.all() else None)
        tokens = torch.stack(list(new), 1).tolist() if limit else [[] for _ in rows]  # (B, T)
        for r, i in enumerate(rows):
            out[i] = tokens[r][:tokens[r].index(end)] if end in tokens[r] else tokens[r]
    return out
