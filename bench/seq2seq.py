"""Encoder-decoder decoding: minilm Seq2Seq (greedy generate / beam_search, KV cache, encoder run once) vs
transformers BartForConditionalGeneration.generate on the same weights (minilm's own BART export, in memory)."""

from __future__ import annotations

import dataclasses

import torch
from tokenizers import Tokenizer, models

from bench.common import Result, Settings, autocast, check_same_loss, time_interleaved
from minilm.config import Config
from minilm.models.transformer.config import TransformerConfig
from minilm.generate import beam_search, generate
from minilm.models.transformer.heads import Seq2Seq
from minilm.models.transformer import hf_bart as hf_bart

END = 0  # the start / end token; never allowed to end a sequence early here, so both sides do the same work


@dataclasses.dataclass
class Seq2SeqSize:
    encoder_layers: int
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    source_len: int
    new_tokens: int
    batch: int  # greedy: sources decoded together
    beam_sources: int  # beam search: sources decoded one after another

    def model_config(self) -> TransformerConfig:
        # configs/g2p-cmudict.yaml's architecture (post-LN, embedding LayerNorm, exact GELU), dropout 0
        cfg = TransformerConfig(vocab_size=self.vocab_size, block_size=self.new_tokens + 8, n_layer=self.n_layer,
                          encoder_layers=self.encoder_layers, n_head=self.n_head, n_embd=self.n_embd, dropout=0.0,
                          norm="post", embedding_norm=True, activation="gelu")
        cfg.validate()
        return cfg

    def describe(self) -> str:
        return (f"{self.encoder_layers}+{self.n_layer} layers, {self.n_head} heads, {self.n_embd} wide, vocab "
                f"{self.vocab_size}, {self.source_len}-token sources, {self.new_tokens} new tokens each")


DEFAULT = Seq2SeqSize(3, 3, 4, 256, 128, source_len=12, new_tokens=24, batch=32, beam_sources=4)
QUICK = Seq2SeqSize(1, 1, 2, 32, 64, source_len=6, new_tokens=6, batch=4, beam_sources=2)
GPU = Seq2SeqSize(6, 6, 8, 512, 8192, source_len=32, new_tokens=64, batch=64, beam_sources=8)
BEAMS = 5


def _size(s: Settings) -> Seq2SeqSize:
    return QUICK if s.quick else GPU if s.cuda else DEFAULT


def matched_models(cfg: TransformerConfig, s: Settings) -> tuple[Seq2Seq, torch.nn.Module]:
    import transformers

    torch.manual_seed(s.seed)
    ours = Seq2Seq(cfg)
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": END, **{f"t{i}": i for i in range(1, cfg.vocab_size)}},
                                     unk_token="t1"))
    hf_bart.check(Config(model=cfg))
    config, tensors = hf_bart.export(Config(model=cfg), ours, tok)
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    theirs = transformers.BartForConditionalGeneration(transformers.BartConfig(**config, attn_implementation="sdpa"))
    missing, unexpected = theirs.load_state_dict(tensors, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return ours.to(s.device).eval(), theirs.to(s.device).eval()


def _sources(size: Seq2SeqSize, n: int, s: Settings) -> torch.Tensor:
    g = torch.Generator().manual_seed(s.seed + 1)
    return torch.randint(1, size.vocab_size, (n, size.source_len), generator=g).to(s.device)  # (n, S)


def _losses(ours: Seq2Seq, theirs: torch.nn.Module, src: torch.Tensor, s: Settings) -> tuple[float, float]:
    """Teacher-forced loss of random targets on both sides, fp32: same weights must give the same number."""
    tgt = torch.randint(1, ours.cfg.vocab_size, (src.size(0), 9), generator=torch.Generator().manual_seed(s.seed + 2))
    tgt = tgt.to(s.device)
    dec = torch.cat([torch.full_like(tgt[:, :1], END), tgt[:, :-1]], 1)
    with torch.no_grad():
        a = ours(src, None, dec, labels=tgt).loss
        b = theirs(input_ids=src, decoder_input_ids=dec, labels=tgt).loss
    return float(a), float(b)


def _hf_kwargs(n: int) -> dict:
    # no end token, no forced tokens: exactly n new tokens on both sides
    return dict(max_new_tokens=n, min_new_tokens=n, use_cache=True, eos_token_id=None, forced_eos_token_id=None,
                forced_bos_token_id=None, decoder_start_token_id=END, pad_token_id=END, no_repeat_ngram_size=0,
                repetition_penalty=1.0, length_penalty=1.0)


def greedy(s: Settings) -> Result:
    """Greedy decoding tokens/s of a batch of sources (new tokens of all rows counted)."""
    size = _size(s)
    ours, theirs = matched_models(size.model_config(), s)
    src = _sources(size, size.batch, s)
    loss_ours, loss_ref = _losses(ours, theirs, src, s)
    check_same_loss("s2s-greedy", loss_ours, loss_ref)
    start = torch.full((size.batch, 1), END, dtype=torch.long, device=s.device)
    n = size.new_tokens

    def run_ours() -> int:
        with autocast(s):
            return sum(t.numel() for t in generate(ours, start, n, temperature=0.0, eot=None, source=src))

    def run_ref() -> int:
        with torch.no_grad(), autocast(s):
            out = theirs.generate(src, do_sample=False, num_beams=1, **_hf_kwargs(n))
        return (out.size(1) - 1) * out.size(0)  # without the start token

    rates_ours, rates_ref = time_interleaved(s, run_ours, run_ref, "s2s-greedy")
    return Result("s2s-greedy", rates_ours, rates_ref, loss_ours, loss_ref,
                  f"{size.describe()}, batch {size.batch}", [
                      "minilm generate(temperature=0, source=...) vs BartForConditionalGeneration.generate("
                      "num_beams=1, do_sample=False, min_new_tokens=max_new_tokens, no end token); both run the "
                      "encoder once and cache the decoder's keys and values",
                      "loss check: teacher-forced loss of random targets, same weights (minilm's BART export)"])


def beam5(s: Settings) -> Result:
    """Beam search (5 beams) tokens/s, one source at a time (the output's tokens counted, not the beams')."""
    size = _size(s)
    ours, theirs = matched_models(size.model_config(), s)
    src = _sources(size, size.beam_sources, s)
    loss_ours, loss_ref = _losses(ours, theirs, src, s)
    check_same_loss("s2s-beam5", loss_ours, loss_ref)
    n = size.new_tokens
    rows = [row.tolist() for row in src]

    def run_ours() -> int:
        with autocast(s):
            return sum(len(beam_search(ours, [END], BEAMS, n, eot=None, source=row)[0].tokens) for row in rows)

    def run_ref() -> int:
        total = 0
        with torch.no_grad(), autocast(s):
            for i in range(src.size(0)):
                out = theirs.generate(src[i:i + 1], do_sample=False, num_beams=BEAMS, early_stopping=False,
                                      **_hf_kwargs(n))
                total += out.size(1) - 1
        return total

    rates_ours, rates_ref = time_interleaved(s, run_ours, run_ref, "s2s-beam5")
    return Result("s2s-beam5", rates_ours, rates_ref, loss_ours, loss_ref,
                  f"{size.describe()}, {size.beam_sources} sources one at a time, {BEAMS} beams", [
                      "minilm beam_search(beams=5, source=...) vs generate(num_beams=5, length_penalty=1, no end "
                      "token); output tokens counted"])
