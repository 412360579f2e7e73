"""GPT workloads: training and KV-cached sampling, minilm CausalLM vs transformers GPT2LMHeadModel (sdpa)."""

from __future__ import annotations

import dataclasses
import statistics

import torch
from tokenizers import Tokenizer, models

from bench.common import (Result, Settings, adamw, autocast, check_same_loss, prepared, time_interleaved,
                          train_runner)
from minilm.config import Config
from minilm.models.transformer.config import TransformerConfig
from minilm.generate import generate
from minilm.models.transformer.heads import CausalLM
from minilm.models.transformer import hf_gpt2 as hf_gpt2
from minilm.models import count_params
from minilm.report import device_peak_flops, training_flops

PROMPT_TOKENS = 16
TOP_K = 50


@dataclasses.dataclass
class GPTSize:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    batch: int
    new_tokens: int  # gpt-sample: tokens generated per repetition

    def model_config(self, block_size: int | None = None) -> TransformerConfig:
        # GPT-2's architecture (pre-LN, learned positions, tanh GELU, biases); dropout 0 so both are deterministic
        cfg = TransformerConfig(vocab_size=self.vocab_size, block_size=block_size or self.block_size, n_layer=self.n_layer,
                          n_head=self.n_head, n_embd=self.n_embd, dropout=0.0)
        cfg.validate()
        return cfg

    def describe(self) -> str:
        return (f"{self.n_layer} layers, {self.n_head} heads, {self.n_embd} wide, vocab {self.vocab_size}")


DEFAULT = GPTSize(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192, batch=8, new_tokens=256)
QUICK = GPTSize(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512, batch=2, new_tokens=32)
# on a GPU: GPT-2 124M at T=1024 (the vocabulary padded from 50,257 to a multiple of 64, as nanoGPT does)
GPU = GPTSize(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, batch=16, new_tokens=256)


def _size(s: Settings) -> GPTSize:
    return QUICK if s.quick else GPU if s.cuda else DEFAULT


def _plain_tokenizer(vocab_size: int) -> Tokenizer:
    """A stand-in vocabulary of the right size with no end-of-text token, so neither side can stop early."""
    return Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))


def matched_models(cfg: TransformerConfig, s: Settings) -> tuple[CausalLM, torch.nn.Module]:
    """minilm's CausalLM with a fresh GPT-2 init, and GPT2LMHeadModel holding exactly those weights.

    The weights go through minilm.hf's own GPT-2 export (the mapping `minilm export` writes), in memory.
    """
    import transformers

    torch.manual_seed(s.seed)
    ours = CausalLM(cfg)
    hf_gpt2.check(Config(model=cfg))
    config, tensors = hf_gpt2.export(Config(model=cfg), ours, _plain_tokenizer(cfg.vocab_size))
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config, attn_implementation="sdpa"))
    missing, unexpected = theirs.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert theirs.lm_head.weight is theirs.transformer.wte.weight, "GPT2LMHeadModel must tie lm_head to wte"
    return prepared(s, ours, theirs)


def _ours_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["x"], labels=batch["y"]).loss


def _ref_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    # shift_labels: the targets are already shifted (as minilm's are), so all T positions carry a loss on both sides
    return model(input_ids=batch["x"], labels=batch["y"], shift_labels=batch["y"]).loss


def _first_losses(ours: torch.nn.Module, theirs: torch.nn.Module, batch: dict) -> tuple[float, float]:
    """fp32 (no autocast) loss of the first batch on both sides: same weights must give the same number."""
    with torch.no_grad():
        return float(_ours_loss(ours, batch)), float(_ref_loss(theirs, batch))


def _random_batches(n: int, batch: int, block: int, vocab: int, s: Settings) -> list[dict]:
    g = torch.Generator().manual_seed(s.seed + 1)
    out = []
    for _ in range(n):
        tokens = torch.randint(vocab, (batch, block + 1), generator=g).to(s.device)
        out.append({"x": tokens[:, :-1].contiguous(), "y": tokens[:, 1:].contiguous()})  # HF views them flat
    return out


def train(s: Settings) -> Result:
    """Training tokens/s: forward + backward + AdamW step on the same batches, all B x T input tokens counted."""
    size = _size(s)
    cfg = size.model_config()
    ours, theirs = matched_models(cfg, s)
    batches = _random_batches(s.steps, size.batch, cfg.block_size, cfg.vocab_size, s)
    loss_ours, loss_ref = _first_losses(ours, theirs, batches[0])
    check_same_loss("gpt-train", loss_ours, loss_ref)

    count = lambda b: b["x"].numel()  # noqa: E731
    run_ours = train_runner(s, ours, adamw(ours), batches, _ours_loss, count)
    run_ref = train_runner(s, theirs, adamw(theirs), batches, _ref_loss, count)
    rates_ours, rates_ref = time_interleaved(s, run_ours, run_ref, "gpt-train")
    notes = ["reference: GPT2LMHeadModel, attn_implementation='sdpa', activation 'gelu_new' "
             "(GPT-2's, as minilm's export writes it), loss via shift_labels so both score all T positions"]
    n_params = count_params(ours)
    T = cfg.block_size
    per_token = training_flops(cfg, n_params, torch.tensor([T])).item() / T  # as `minilm train` reports MFU
    peak = device_peak_flops() if s.cuda else None
    if peak:
        mfu = lambda rates: statistics.median(rates) * per_token / peak  # noqa: E731
        notes.append(f"MFU (6N + 12·L·C·T = {per_token / 1e9:.3f} GFLOP per token, N = {n_params / 1e6:.1f}M, "
                     f"bf16 peak {peak / 1e12:.0f} TFLOP/s): minilm {mfu(rates_ours):.1%}, "
                     f"reference {mfu(rates_ref):.1%}")
    return Result("gpt-train", rates_ours, rates_ref, loss_ours, loss_ref,
                  f"{size.describe()}, block {cfg.block_size}, batch {size.batch}, {s.steps} AdamW steps per "
                  f"repetition (lr 1e-3, same groups), {size.batch * cfg.block_size} tokens per step", notes)


def sample(s: Settings) -> Result:
    """Sampling tokens/s with a KV cache: batch 1, a 16-token prompt, top-k 50, a fixed number of new tokens."""
    size = _size(s)
    n_new = size.new_tokens
    # the position table must hold prompt + new tokens, otherwise minilm slides its window (rebuilding the
    # cache every step) and GPT-2 runs out of positions
    cfg = size.model_config(block_size=max(size.block_size, PROMPT_TOKENS + n_new))
    # never compiled: the cache grows every step, and each new shape would be compiled again
    ours, theirs = matched_models(cfg, dataclasses.replace(s, compile=False))
    ours.eval(), theirs.eval()
    check_batch = _random_batches(1, 1, PROMPT_TOKENS + n_new, cfg.vocab_size, s)[0]
    loss_ours, loss_ref = _first_losses(ours, theirs, check_batch)
    check_same_loss("gpt-sample", loss_ours, loss_ref)

    prompt = torch.randint(cfg.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(s.seed + 2))
    prompt = prompt.to(s.device)
    attention_mask = torch.ones_like(prompt)

    def run_ours() -> int:
        g = torch.Generator(s.device).manual_seed(s.seed)
        n = 0
        with autocast(s):
            for _ in generate(ours, prompt, n_new, temperature=1.0, top_k=TOP_K, eot=None, use_cache=True,
                              generator=g):
                n += 1
        assert n == n_new
        return n

    def run_ref() -> int:
        torch.manual_seed(s.seed)
        with torch.no_grad(), autocast(s):
            out = theirs.generate(prompt, attention_mask=attention_mask, do_sample=True, top_k=TOP_K,
                                  max_new_tokens=n_new, min_new_tokens=n_new, use_cache=True, pad_token_id=0)
        n = out.size(1) - prompt.size(1)
        assert n == n_new, n
        return n

    rates_ours, rates_ref = time_interleaved(s, run_ours, run_ref, "gpt-sample")
    return Result("gpt-sample", rates_ours, rates_ref, loss_ours, loss_ref,
                  f"{size.describe()}, block {cfg.block_size}, batch 1, {PROMPT_TOKENS}-token prompt, "
                  f"{n_new} new tokens per repetition (top-k {TOP_K}, temperature 1), new tokens counted",
                  ["minilm generate(eot=None) vs model.generate(do_sample=True, top_k=50, use_cache=True, "
                   f"min_new_tokens=max_new_tokens={n_new}); the time includes the prompt's prefill",
                   "loss check on one random sequence of prompt + new tokens, eval mode"])
