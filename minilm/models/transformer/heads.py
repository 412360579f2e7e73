"""The Transformer family's task models: small heads over the stack, each returning logits and its own loss
through the shared contract (minilm/models/outputs.py)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.data.batch import IGNORE
from minilm.models.outputs import (HeadConfig, Sums, TaskOutput, classification_output, lm_loss, pool,
                                   token_classification_output)
from minilm.models.transformer.config import TransformerConfig
from minilm.models.transformer.model import KVCache, Transformer


class CausalLM(nn.Module):
    """GPT: the stack with causal attention and an LM head tied to the token embedding."""

    def __init__(self, cfg: TransformerConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg, self.label_smoothing = cfg, heads.label_smoothing
        self.transformer = Transformer(cfg)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False) -> TaskOutput:
        h = self.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        if last_only:  # generation needs only the next-token distribution
            h = h[:, -1:]  # (B, 1, C)
        logits = F.linear(h, self.transformer.tok_emb.weight)  # (B, T, vocab), weights tied to the embedding
        if labels is None:
            return TaskOutput(logits)
        return lm_loss(logits, labels, self.label_smoothing, training=self.training)


def encoder_config(cfg: TransformerConfig) -> TransformerConfig:
    """An encoder-decoder's encoder: model.encoder_layers bidirectional Blocks, otherwise the decoder's settings."""
    return dataclasses.replace(cfg, n_layer=cfg.encoder_layers, causal=False, encoder_layers=0)


class Seq2Seq(nn.Module):
    """The original Transformer: a bidirectional encoder over the source and a causal decoder whose Blocks also
    attend to the encoder output, with the output projection tied to the decoder's token embedding.

    Training is teacher-forced: the decoder reads [start] + target and predicts target + [end] (labels).
    With model.share_embeddings the encoder reads the decoder's token table (one vocabulary for both sides).
    """

    def __init__(self, cfg: TransformerConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg, self.label_smoothing = cfg, heads.label_smoothing
        self.encoder = Transformer(encoder_config(cfg), token_table=not cfg.share_embeddings)
        self.decoder = Transformer(cfg)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) -> encoder output (B, S, C), zeros at padding."""
        return self.encoder(input_ids, attention_mask=attention_mask, tok_emb=self.decoder.tok_emb
                            if self.cfg.share_embeddings else None)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False) -> TaskOutput:
        """Source (B, S) with its mask, decoder input (B, T) -> next-token logits (B, T, vocab). Decoding passes
        `memory` (the encoder output) instead of the source, and with a cache only at the first step."""
        if memory is None and (cache is None or not cache.cross):
            memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        h = self.decoder(decoder_input_ids, attention_mask=decoder_attention_mask, cache=cache, memory=memory,
                         memory_mask=attention_mask)  # (B, T, C)
        if last_only:
            h = h[:, -1:]  # (B, 1, C)
        logits = F.linear(h, self.decoder.tok_emb.weight)  # (B, T, vocab), tied to the target embedding
        if labels is None:
            return TaskOutput(logits)
        return lm_loss(logits, labels, self.label_smoothing, training=self.training, accuracy=True)


class Pooler(nn.Module):
    """BERT's sentence summary: the [CLS] hidden state -> dense -> tanh."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, C)


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the token embedding, plus an output bias."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(h), approximate=self.approximate))
        return F.linear(h, embedding, self.bias)  # (..., vocab)


class MaskedLM(nn.Module):
    """BERT pretraining: the stack with bidirectional attention, a masked-LM head and a next-sentence head.

    With labels, MLM logits are computed only at the masked positions (about 15 %), not over the whole
    vocabulary x sequence: the same loss as the dense computation at a fraction of the cost; without labels
    (fill-mask) every position gets its logits.
    """

    def __init__(self, cfg: TransformerConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)
        self.pooler = Pooler(cfg)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.n_embd, 2)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None) -> TaskOutput:
        h = self.transformer(input_ids, segment_ids, attention_mask)  # (B, T, C)
        emb = self.transformer.tok_emb.weight
        if labels is None:  # fill-mask: every position
            return TaskOutput(self.mlm(h, emb))  # (B, T, vocab)
        picked = labels != IGNORE  # (B, T)
        rows = picked.nonzero()[:, 0]  # (N,) example index of each masked position
        target = labels[picked]  # (N,)
        logits = self.mlm(h[picked], emb)  # (N, vocab)
        per_token = F.cross_entropy(logits.float(), target, reduction="none")  # (N,)
        loss = per_token.mean() if len(target) else logits.sum() * 0  # 0 keeps the graph
        out = TaskOutput(logits, loss)
        if not self.training:  # per-example sums and counts for evaluation
            zeros = torch.zeros(h.size(0), device=h.device)
            count = zeros.index_add(0, rows, torch.ones_like(per_token))
            out.metrics["mlm_loss"] = Sums(zeros.index_add(0, rows, per_token), count)
            out.metrics["mlm_acc"] = Sums(zeros.index_add(0, rows, (logits.argmax(-1) == target).float()), count)
        if next_sentence_label is not None:
            nsp_logits = self.next_sentence(h)  # (B, 2)
            out.loss = out.loss + F.cross_entropy(nsp_logits.float(), next_sentence_label)
            if not self.training:
                right = (nsp_logits.argmax(-1) == next_sentence_label).float()
                out.metrics["nsp_acc"] = Sums(right, torch.ones_like(right))
        return out

    def next_sentence(self, h: torch.Tensor) -> torch.Tensor:
        """Next-sentence logits (B, 2) from the stack's output (B, T, C): the pooled [CLS] -> linear."""
        return self.nsp(self.pooler(h))


class Classifier(nn.Module):
    """Sequence classification: a summary of the sequence -> dropout -> linear. The summary (classify.pooling) is
    BERT's pooled [CLS] ("cls", BERT's default), the hidden state of the last real token ("last", GPT-1 style,
    GPT's default) or the mean over the real tokens ("mean", as sentence-transformers pools). Positions count
    from the first real token so that left and right padding give the same result.
    """

    def __init__(self, cfg: TransformerConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.pooling = heads.pooling or cfg.default_pooling()
        self.transformer = Transformer(cfg)
        self.pooler = Pooler(cfg) if self.pooling == "cls" else None
        self.drop = nn.Dropout(heads.classifier_dropout)
        self.head = nn.Linear(cfg.n_embd, heads.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.long()
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): 0 at the first real token, whatever the padding
        h = self.transformer(input_ids, segment_ids, attention_mask, position_ids=position_ids)  # (B, T, C)
        rows = torch.arange(h.size(0), device=h.device)
        if self.pooling == "last":
            last = input_ids.size(1) - 1 - mask.flip(-1).argmax(-1)  # (B,) index of the last real token
            pooled = h[rows, last]  # (B, C)
        elif self.pooling in ("mean", "max"):
            pooled = pool(h, mask, self.pooling)  # (B, C)
        else:
            first = mask.argmax(-1)  # (B,) index of [CLS], the first real token
            pooled = self.pooler(h[rows, first][:, None])  # (B, C)
        logits = self.head(self.drop(pooled))  # (B, num_labels)
        return classification_output(logits, labels, self.training)


class Tagger(nn.Module):
    """Sequence labelling: every token's hidden state -> dropout -> linear (BertForTokenClassification's head).
    Over a bidirectional stack each token reads the whole sentence; over a causal one (GPT), its left context only."""

    def __init__(self, cfg: TransformerConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)
        self.drop = nn.Dropout(heads.classifier_dropout)
        self.head = nn.Linear(cfg.n_embd, heads.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        h = self.transformer(input_ids, segment_ids, attention_mask)  # (B, T, C), right padding
        return token_classification_output(self.head(self.drop(h)), labels, self.training)  # (B, T, num_labels)
