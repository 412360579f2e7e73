"""The command line's decoding options (`sample`, `translate`, `eval --beams`): declared once, and checked
before any work, each against what it can mean and against memory."""

from __future__ import annotations

import argparse
import math
import os

from minilm.errors import UsageError


def add_decoding_options(c: argparse.ArgumentParser, temperature: float, max_new_tokens: int, what: str) -> None:
    """What `sample` and `translate` share: sampling settings, beam search, the cache, the device."""
    c.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    c.add_argument("--temperature", type=finite, default=None, help=f"0: greedy (default {temperature})")
    c.set_defaults(default_temperature=temperature)
    c.add_argument("--top-k", type=int, default=None)
    c.add_argument("--top-p", type=finite, default=None)
    c.add_argument("--seed", type=int, default=1337)
    c.add_argument("--no-cache", action="store_true", help="recompute the whole output each step (slower)")
    c.add_argument("--beams", type=int, default=None, help="beam search with this many beams instead of sampling")
    c.add_argument("--n-best", type=int, default=1, help=f"with --beams: print this many best {what}, with scores")
    c.add_argument("--length-penalty", type=finite, default=None,
                   help="with --beams (default 1): score = log-probability / length ** this (0: total log-probability)")
    c.add_argument("--device", default="cpu")


def finite(text: str) -> float:
    """argparse type of every float option: nan and inf mean nothing as a temperature, probability or penalty."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number: give one such as 1.0")
    return value


def free_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_rows(flag: str, rows: int, cfg, device: str) -> None:
    """A size that many rows are decoded at once: at least 1, and fitting in half the free memory."""
    if rows < 1:
        raise UsageError(f"{flag} {rows} must be at least 1")
    need, free = rows * cfg.model.decode_row_bytes(), free_bytes(device)
    if need > free // 2:
        fits = max(1, free // 2 // cfg.model.decode_row_bytes())
        raise UsageError(f"{flag} {rows} needs about {need / 2**30:.1f} GiB for this model, more than half the "
                         f"{free / 2**30:.1f} GiB free on {device}: give at most {fits}")


def check_decoding(args: argparse.Namespace, cfg) -> None:
    """What `sample` and `translate` are told about decoding, checked before any work."""
    vocab = cfg.model.vocab_size
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} generates nothing: give 1 or more")
    if args.temperature is not None and args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature} is negative: give 0 (greedy) or more")
    if getattr(args, "greedy", False) and args.temperature is not None:
        raise UsageError(f"--greedy always takes the most likely token, so --temperature {args.temperature} does not "
                         "apply: drop one of them")
    if args.beams is not None and args.temperature is not None:
        raise UsageError(f"--beams searches for the most probable text; --temperature {args.temperature} is for "
                         "sampling: drop it, or drop --beams")
    if args.temperature is None:
        args.temperature = 0.0 if getattr(args, "greedy", False) else args.default_temperature
    if args.beams is None and args.temperature == 0 and (args.top_k is not None or args.top_p is not None):
        raise UsageError("--top-k and --top-p narrow what is sampled; greedy decoding (temperature 0) samples "
                         "nothing: give --temperature above 0, or drop them")
    if args.beams is None and args.temperature == 0 and getattr(args, "num_samples", 1) > 1:
        raise UsageError(f"greedy decoding gives the same text each time, so --num-samples {args.num_samples} "
                         "would repeat it: give --temperature above 0, or drop --num-samples")
    if args.top_k is not None and not 1 <= args.top_k <= vocab:
        raise UsageError(f"--top-k {args.top_k} is outside 1..{vocab} (the vocabulary size): choose a value in range")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p {args.top_p} is outside (0, 1]: choose a value such as 0.9")
    samples = getattr(args, "num_samples", 1)
    if samples < 1:
        raise UsageError(f"--num-samples {samples} must be at least 1")
    if args.beams is None and args.n_best != 1:
        raise UsageError(f"--n-best {args.n_best} ranks the hypotheses of a beam search: add --beams K (K >= "
                         f"{max(args.n_best, 1)})")
    check_beams(args, cfg)
    if args.beams is not None:
        if not 1 <= args.n_best <= args.beams:
            raise UsageError(f"--n-best {args.n_best} is outside 1..{args.beams} (--beams): the search keeps only "
                             "that many")
        if args.top_k is not None or args.top_p is not None or samples > 1:
            raise UsageError("--beams searches for the most probable text; --top-k, --top-p and --num-samples are "
                             "for sampling: drop them, or drop --beams")
    if getattr(args, "batch_size", 1) < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    if not 0 <= getattr(args, "seed", 0) < 2**64:
        raise UsageError(f"--seed {args.seed} is outside 0..2**64-1: give a smaller non-negative number")


def check_beams(args: argparse.Namespace, cfg) -> None:
    """--beams within what it can mean (one hypothesis per token of the vocabulary at the first step) and memory;
    --length-penalty only with it."""
    if args.beams is None:
        if args.length_penalty is not None:
            raise UsageError(f"--length-penalty {args.length_penalty} scores the hypotheses of a beam search: add "
                             "--beams K, or drop it")
        return
    if args.beams < 1:
        raise UsageError(f"--beams {args.beams} must be at least 1 (1 is greedy decoding)")
    if args.beams > cfg.model.vocab_size:
        raise UsageError(f"--beams {args.beams} is more than the {cfg.model.vocab_size} tokens of the vocabulary (a "
                         "search that wide keeps every continuation): give at most that many")
    check_rows("--beams", args.beams, cfg, args.device)
    if args.length_penalty is None:
        args.length_penalty = 1.0
