"""Log-probabilities of continuations after prompts, for a causal language model of any family.

With the cache (the default) a batch of prompts is read once, each through the family's Decoder (a Transformer
keeps its keys and values, a recurrent stack its state); every continuation of a prompt then continues from that
prompt's cache, one token at a time, all continuations of the batch together. Without it, each prompt and
continuation is read whole, once per continuation (what scoring each option alone costs); the two agree
(tests/test_incontext.py). A prompt with a single continuation (a cloze) is read whole with it either way."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from minilm.models import decoder


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]  # token ids, at most the model's window (minus the longest continuation but one)
    continuations: tuple[tuple[int, ...], ...]  # each at least one token


@dataclass(frozen=True)
class Scored:
    logprob: float  # the continuation's total log-probability after the prompt
    greedy: bool  # each of its tokens was the most probable one: greedy decoding would write it


def _pad(seqs: list[tuple[int, ...]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and which are real (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    real = torch.arange(width)[None] < torch.tensor([len(s) for s in seqs])[:, None]
    return ids.to(device), real.to(device)


def _sums(logp: torch.Tensor, target: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the log-probability of `target` where real, and whether it was the argmax (or not real)."""
    lp = logp.gather(-1, target[..., None])[..., 0]  # (R,) or (R, L)
    return torch.where(real, lp, torch.zeros_like(lp)), (logp.argmax(-1) == target) | ~real


@torch.inference_mode()
def _cached(model: torch.nn.Module, batch: list[Request]) -> list[list[Scored]]:
    device = next(model.parameters()).device
    prefix, real_prefix = _pad([r.prompt for r in batch], device)  # (B, T)
    dec = decoder(model, len(batch), use_cache=True)
    first = torch.log_softmax(dec.start(prefix, real_prefix.sum(-1)).float(), -1)  # (B, V) after each prompt
    owner = torch.tensor([b for b, r in enumerate(batch) for _ in r.continuations], device=device)  # (R,)
    tokens, real = _pad([c for r in batch for c in r.continuations], device)  # (R, L)
    dec.reorder(owner)  # every continuation starts from its own prompt's cache
    seq, logp = prefix[owner], first[owner]  # (R, T), (R, V)
    total = torch.zeros(len(owner), device=device)
    greedy = torch.ones(len(owner), dtype=torch.bool, device=device)
    left, alive = real.sum(-1), torch.arange(len(owner), device=device)  # (R,) tokens to score; rows still going
    for j in range(tokens.size(1)):
        if j:
            keep = (left[alive] > j).nonzero()[:, 0]  # a finished row leaves: it would only outgrow its window
            if len(keep) < len(alive):
                dec.reorder(keep)
                seq, alive = seq[keep], alive[keep]
            seq = torch.cat([seq, tokens[alive, j - 1 : j]], 1)  # (rows, T + j)
            logp = torch.log_softmax(dec.step(seq).float(), -1)  # (rows, V): the newest token read at its position
        lp, best = _sums(logp, tokens[alive, j], real[alive, j])
        total[alive] += lp
        greedy[alive] &= best
    return _split(batch, total.tolist(), greedy.tolist())


# logits of at most this many floats per forward pass without the cache (a GPT-2 vocabulary is 50,257 wide)
_SCRATCH_FLOATS = 1 << 27


@torch.inference_mode()
def _scratch(model: torch.nn.Module, batch: list[Request]) -> list[list[Scored]]:
    device = next(model.parameters()).device
    rows = [(r.prompt, c) for r in batch for c in r.continuations]
    total, greedy = [], []
    width = max(len(p) + len(c) - 1 for p, c in rows)
    step = max(1, _SCRATCH_FLOATS // (width * model.cfg.vocab_size))
    for first in range(0, len(rows), step):
        part = rows[first : first + step]
        ids, _ = _pad([(p + c)[:-1] for p, c in part], device)  # (R, T): right padding never reaches a real token
        logits = model(ids).logits  # (R, T, V)
        tokens, real = _pad([c for _, c in part], device)  # (R, L)
        where = torch.tensor([len(p) - 1 for p, _ in part], device=device)[:, None] + torch.arange(
            tokens.size(1), device=device)[None]  # (R, L) the positions that predict each continuation token
        where = where.clamp(max=ids.size(1) - 1)
        picked = logits.gather(1, where[..., None].expand(-1, -1, logits.size(-1)))  # (R, L, V)
        lp, best = _sums(torch.log_softmax(picked.float(), -1), tokens, real)
        total += lp.sum(-1).tolist()
        greedy += best.all(-1).tolist()
    return _split(batch, total, greedy)


def _split(batch: list[Request], total: list[float], greedy: list[bool]) -> list[list[Scored]]:
    out, i = [], 0
    for r in batch:
        n = len(r.continuations)
        out.append([Scored(t, g) for t, g in zip(total[i : i + n], greedy[i : i + n])])
        i += n
    return out


def window(model: torch.nn.Module) -> int | None:
    """The most tokens the model reads at once (None: any number), from its family's decoder."""
    return decoder(model, 1, use_cache=False).window


def score(model: torch.nn.Module, requests: list[Request], batch_size: int = 32, use_cache: bool = True,
          desc: str | None = None) -> list[list[Scored]]:
    """Each request's continuations scored after its prompt. Identical requests are scored once (a zero-shot
    calibration prompt is the same for every example), prompts of similar length are batched together.
    `desc`: a progress bar with this label on stderr."""
    unique = list(dict.fromkeys(requests))
    order = sorted(range(len(unique)), key=lambda i: len(unique[i].prompt), reverse=True)  # little padding
    found: dict[Request, list[Scored]] = {}
    for first in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=desc is None, leave=False):
        batch = [unique[i] for i in order[first : first + batch_size]]
        # one continuation per prompt (a cloze): read whole, the prompt is read once anyway, in one pass
        shared = use_cache and any(len(r.continuations) > 1 for r in batch)
        for r, s in zip(batch, (_cached if shared else _scratch)(model, batch)):
            found[r] = s
    return [found[r] for r in requests]
