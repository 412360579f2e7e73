"""BERT pretraining: minilm MaskedLM (sparse MLM prediction) vs transformers BertForPreTraining (sdpa)."""

from __future__ import annotations

import dataclasses

import torch
from tokenizers import Tokenizer, models

from bench.common import Result, Settings, adamw, check_same_loss, prepared, time_interleaved, train_runner
from minilm.config import Config, presets
from minilm.models.transformer.config import TransformerConfig
from minilm.data.mlm import MaskingCollator
from minilm.models.transformer.heads import MaskedLM
from minilm.models.transformer import hf_bert as hf_bert
from minilm.tokenizer import BERT_SPECIALS, CLS, SEP

MLM_PROBABILITY = 0.15


@dataclasses.dataclass
class BertSize:
    preset: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    batch: int

    def model_config(self) -> TransformerConfig:
        # the bert-* preset (post-LN, embedding LayerNorm, segments, exact GELU) at this size; dropout 0 both sides
        cfg = TransformerConfig(**{**presets()[self.preset], "n_layer": self.n_layer, "n_head": self.n_head,
                             "n_embd": self.n_embd, "block_size": self.block_size,
                             "vocab_size": self.vocab_size, "dropout": 0.0})
        cfg.validate()
        return cfg


DEFAULT = BertSize("bert-mini", n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=8192, batch=16)
QUICK = BertSize("bert-tiny", n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512, batch=4)


def _wordpiece(vocab_size: int) -> Tokenizer:
    """A WordPiece vocabulary of the right size, specials first (as minilm trains them): what the collator needs."""
    words = [*BERT_SPECIALS, *(f"w{i}" for i in range(vocab_size - len(BERT_SPECIALS)))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token=BERT_SPECIALS[1]))
    tok.add_special_tokens(BERT_SPECIALS)
    assert tok.get_vocab_size() == vocab_size
    return tok


def _examples(n: int, block: int, vocab: int, tok: Tokenizer, g: torch.Generator) -> list[dict]:
    """NSP-shaped random examples: [CLS] A [SEP] B [SEP] with lengths from half the block to all of it."""
    cls, sep, first = tok.token_to_id(CLS), tok.token_to_id(SEP), len(BERT_SPECIALS)
    out = []
    for _ in range(n):
        length = int(torch.randint(block // 2, block + 1, (1,), generator=g))
        len_a = int(torch.randint(1, length - 3, (1,), generator=g))  # A and B at least one token each
        len_b = length - 3 - len_a
        a, b = (torch.randint(first, vocab, (k,), generator=g).tolist() for k in (len_a, len_b))
        out.append({"input_ids": [cls, *a, sep, *b, sep], "segment_ids": [0] * (len_a + 2) + [1] * (len_b + 1),
                    "next_sentence_label": int(torch.randint(2, (1,), generator=g))})
    return out


def make_batches(n: int, size: BertSize, tok: Tokenizer, s: Settings) -> list[dict]:
    """Batches masked once by minilm's MaskingCollator (15 %), then fed unchanged to both sides."""
    g = torch.Generator().manual_seed(s.seed + 1)
    collate = MaskingCollator(tok, MLM_PROBABILITY)
    batches = []
    with torch.random.fork_rng(devices=[]):  # the collator draws from the global RNG
        torch.manual_seed(s.seed + 2)
        for _ in range(n):
            batch = collate(_examples(size.batch, size.block_size, size.vocab_size, tok, g))
            batches.append({k: v.to(s.device) for k, v in batch.items()})
    return batches


def matched_models(cfg: TransformerConfig, tok: Tokenizer, s: Settings) -> tuple[MaskedLM, torch.nn.Module]:
    """minilm's MaskedLM with a fresh init, and BertForPreTraining holding exactly those weights (minilm.hf's export)."""
    import transformers

    torch.manual_seed(s.seed)
    ours = MaskedLM(cfg)
    hf_bert.check(Config(model=cfg))
    config, tensors = hf_bert.export(Config(model=cfg), ours, tok)
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    theirs = transformers.BertForPreTraining(transformers.BertConfig(**config, attn_implementation="sdpa"))
    missing, unexpected = theirs.load_state_dict(tensors, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    emb = theirs.bert.embeddings.word_embeddings.weight
    assert theirs.cls.predictions.decoder.weight is emb, "BertForPreTraining must tie its decoder to the embeddings"
    return prepared(s, ours, theirs)


def _ours_loss(model: torch.nn.Module, b: dict) -> torch.Tensor:
    return model(b["input_ids"], b["segment_ids"], b["attention_mask"], labels=b["labels"],
                 next_sentence_label=b["next_sentence_label"]).loss  # sparse: MLM logits at masked positions only


def _ref_loss(model: torch.nn.Module, b: dict) -> torch.Tensor:
    return model(input_ids=b["input_ids"], token_type_ids=b["segment_ids"], attention_mask=b["attention_mask"],
                 labels=b["labels"], next_sentence_label=b["next_sentence_label"]).loss


def train(s: Settings) -> Result:
    """BERT pretraining tokens/s (MLM + NSP, forward + backward + AdamW), counting real (non-pad) tokens."""
    size = QUICK if s.quick else DEFAULT
    cfg = size.model_config()
    tok = _wordpiece(cfg.vocab_size)
    ours, theirs = matched_models(cfg, tok, s)
    batches = make_batches(s.steps, size, tok, s)
    with torch.no_grad():  # fp32, train mode (dropout 0): the path that is timed
        loss_ours, loss_ref = float(_ours_loss(ours, batches[0])), float(_ref_loss(theirs, batches[0]))
    check_same_loss("bert-train", loss_ours, loss_ref)

    count = lambda b: int(b["attention_mask"].sum())  # noqa: E731
    run_ours = train_runner(s, ours, adamw(ours), batches, _ours_loss, count)
    run_ref = train_runner(s, theirs, adamw(theirs), batches, _ref_loss, count)
    rates_ours, rates_ref = time_interleaved(s, run_ours, run_ref, "bert-train")

    real = sum(count(b) for b in batches)
    slots = sum(b["input_ids"].numel() for b in batches)
    masked = sum(int((b["labels"] != -100).sum()) for b in batches)
    return Result("bert-train", rates_ours, rates_ref, loss_ours, loss_ref,
                  f"{size.preset}-shaped: {size.n_layer} layers, {size.n_head} heads, {size.n_embd} wide, "
                  f"vocab {size.vocab_size}, block {size.block_size}, batch {size.batch}, {s.steps} AdamW steps per "
                  f"repetition; real (non-pad) tokens counted",
                  [f"batches: {real} real tokens of {slots} padded slots ({1 - real / slots:.0%} padding), "
                   f"{masked} masked ({masked / real:.1%}) by minilm's MaskingCollator, NSP labels random",
                   "reference: BertForPreTraining, attn_implementation='sdpa', MLM logits over every position "
                   "(minilm: only at masked positions)"])
