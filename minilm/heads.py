"""Task models: small heads over the shared Transformer stack, each returning logits and its own loss."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.config import ModelConfig
from minilm.data.batch import IGNORE
from minilm.model import KVCache, Transformer
from minilm.recurrent import RecurrentStack, last_states, pool


@dataclass
class Sums:
    """One evaluation metric as per-example sums and counts: its value is sum(total) / sum(count) over the set."""

    total: torch.Tensor  # (B,)
    count: torch.Tensor  # (B,)


@dataclass
class TaskOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    metrics: dict[str, Sums] = field(default_factory=dict)  # evaluation only
    predictions: tuple[torch.Tensor, torch.Tensor] | None = None  # evaluation of classifiers: (preds, targets), (B,) each
    aux_logits: torch.Tensor | None = None  # a second head's output (BERT: next-sentence logits)
    state: list | None = None  # a recurrent stack's final state per layer (it continues the sequence)


class CausalLM(nn.Module):
    """GPT: the stack with causal attention and an LM head tied to the token embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
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
        return lm_loss(logits, labels, self.cfg.label_smoothing, training=self.training)


class RecurrentLM(nn.Module):
    """A character- or token-level LM on a recurrent stack (model.arch): the top states, projected to the
    embedding width when they are wider or narrower, scored against the tied token embedding. The final state
    comes back with the logits: fed back with the next tokens, it continues the sequence (one cell update per
    sampled token)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.rnn = RecurrentStack(cfg)
        self.out = nn.Linear(self.rnn.width, cfg.n_embd, bias=False) if self.rnn.width != cfg.n_embd else None

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, state: list | None = None,
                last_only: bool = False) -> TaskOutput:
        h, state = self.rnn(input_ids, state=state)  # (B, T, width)
        if last_only:
            h = h[:, -1:]  # (B, 1, width)
        if self.out is not None:
            h = self.out(h)  # (B, T, n_embd)
        logits = F.linear(h, self.rnn.tok_emb.weight)  # (B, T, vocab), tied to the embedding
        if labels is None:
            return TaskOutput(logits, state=state)
        out = lm_loss(logits, labels, self.cfg.label_smoothing, training=self.training)
        out.state = state
        return out


def language_model(cfg: ModelConfig) -> nn.Module:
    """The causal LM of model.arch: GPT for a Transformer, RecurrentLM for the recurrent family."""
    return RecurrentLM(cfg) if cfg.recurrent else CausalLM(cfg)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, training: bool,
            accuracy: bool = False) -> TaskOutput:
    """Mean cross-entropy over labelled positions (label-smoothed in training); for evaluation the plain
    cross-entropy as per-example sums and counts, and with `accuracy` the share of tokens predicted right."""
    flat = logits.reshape(-1, logits.size(-1)).float()  # (N, vocab)
    if training:
        return TaskOutput(logits, F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE,
                                                  label_smoothing=label_smoothing))
    per_token = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction="none").view(labels.shape)
    count = (labels != IGNORE).sum(-1)  # (B,)
    loss = per_token.sum() / count.sum().clamp(min=1)
    out = TaskOutput(logits, loss, {"loss": Sums(per_token.sum(-1), count)})
    if accuracy:
        right = (logits.argmax(-1) == labels) & (labels != IGNORE)  # (B, T)
        out.metrics["token_acc"] = Sums(right.sum(-1).float(), count)
    return out


def encoder_config(cfg: ModelConfig) -> ModelConfig:
    """An encoder-decoder's encoder: model.encoder_layers bidirectional Blocks, otherwise the decoder's settings."""
    return dataclasses.replace(cfg, n_layer=cfg.encoder_layers, causal=False, encoder_layers=0)


class RecurrentClassifier(nn.Module):
    """Sequence classification on a recurrent stack: the last states ("last"; a bidirectional stack adds its
    backward direction at the first token) or the mean / max over the real tokens -> dropout -> linear."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.pooling = cfg.pooling or "last"
        self.rnn = RecurrentStack(cfg)
        self.drop = nn.Dropout(cfg.classifier_dropout)
        self.head = nn.Linear(self.rnn.width, cfg.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        h, _ = self.rnn(input_ids, attention_mask)  # (B, T, width), right padding
        if self.pooling == "last":
            pooled = last_states(h, attention_mask, self.cfg.bidirectional)  # (B, width)
        else:
            pooled = pool(h, attention_mask, self.pooling)  # (B, width)
        logits = self.head(self.drop(pooled))  # (B, num_labels)
        return classification_output(logits, labels, self.training)


def classifier(cfg: ModelConfig) -> nn.Module:
    """The classifier of model.arch."""
    return RecurrentClassifier(cfg) if cfg.recurrent else Classifier(cfg)


class Seq2Seq(nn.Module):
    """The original Transformer: a bidirectional encoder over the source and a causal decoder whose Blocks also
    attend to the encoder output, with the output projection tied to the decoder's token embedding.

    Training is teacher-forced: the decoder reads [start] + target and predicts target + [end] (labels).
    With model.share_embeddings the encoder reads the decoder's token table (one vocabulary for both sides).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
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
        return lm_loss(logits, labels, self.cfg.label_smoothing, training=self.training, accuracy=True)


class Pooler(nn.Module):
    """BERT's sentence summary: the [CLS] hidden state -> dense -> tanh."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, C)


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the token embedding, plus an output bias."""

    def __init__(self, cfg: ModelConfig):
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

    def __init__(self, cfg: ModelConfig):
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
        nsp_logits = self.nsp(self.pooler(h))  # (B, 2)
        emb = self.transformer.tok_emb.weight
        if labels is None:  # fill-mask: every position
            return TaskOutput(self.mlm(h, emb), aux_logits=nsp_logits)  # (B, T, vocab)
        picked = labels != IGNORE  # (B, T)
        rows = picked.nonzero()[:, 0]  # (N,) example index of each masked position
        target = labels[picked]  # (N,)
        logits = self.mlm(h[picked], emb)  # (N, vocab)
        per_token = F.cross_entropy(logits.float(), target, reduction="none")  # (N,)
        loss = per_token.mean() if len(target) else logits.sum() * 0  # 0 keeps the graph
        out = TaskOutput(logits, loss, aux_logits=nsp_logits)
        if not self.training:  # per-example sums and counts for evaluation
            zeros = torch.zeros(h.size(0), device=h.device)
            count = zeros.index_add(0, rows, torch.ones_like(per_token))
            out.metrics["mlm_loss"] = Sums(zeros.index_add(0, rows, per_token), count)
            out.metrics["mlm_acc"] = Sums(zeros.index_add(0, rows, (logits.argmax(-1) == target).float()), count)
        if next_sentence_label is not None:
            out.loss = out.loss + F.cross_entropy(nsp_logits.float(), next_sentence_label)
            if not self.training:
                right = (nsp_logits.argmax(-1) == next_sentence_label).float()
                out.metrics["nsp_acc"] = Sums(right, torch.ones_like(right))
        return out


class Classifier(nn.Module):
    """Sequence classification: a summary of the sequence -> dropout -> linear. The summary (model.pooling) is
    BERT's pooled [CLS] ("cls", BERT's default), the hidden state of the last real token ("last", GPT-1 style,
    GPT's default) or the mean over the real tokens ("mean", as sentence-transformers pools). Positions count
    from the first real token so that left and right padding give the same result.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.pooling = cfg.pooling or ("last" if cfg.causal else "cls")
        self.transformer = Transformer(cfg)
        self.pooler = Pooler(cfg) if self.pooling == "cls" else None
        self.drop = nn.Dropout(cfg.classifier_dropout)
        self.head = nn.Linear(cfg.n_embd, cfg.num_labels)

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


def classification_output(logits: torch.Tensor, labels: torch.Tensor | None, training: bool) -> TaskOutput:
    """Cross-entropy over the labels; for evaluation also per-example losses and the predictions."""
    if labels is None:
        return TaskOutput(logits)
    per_example = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    out = TaskOutput(logits, per_example.mean())
    if not training:
        out.metrics["loss"] = Sums(per_example, torch.ones_like(per_example))
        out.predictions = (logits.argmax(-1), labels)
    return out



@dataclass
class Memory:
    """What a recurrent decoder attends to, computed once per source."""

    states: torch.Tensor  # (B, S, E) the encoder's top states, zeros at padding
    keys: torch.Tensor  # (B, S, A) additive attention's U e (dot attention: the states themselves)
    mask: torch.Tensor | None  # (B, S) 1 = real token

    def expand(self, rows: int) -> Memory:
        """One source's memory for `rows` beams (a view)."""
        if self.states.size(0) == rows:
            return self
        grow = lambda t: t.expand(rows, *t.shape[1:]) if t is not None else None  # noqa: E731
        return Memory(grow(self.states), grow(self.keys), grow(self.mask))


class RecurrentSeq2Seq(nn.Module):
    """An RNN encoder-decoder with attention: the encoder (model.encoder_layers layers of model.arch, both ways
    with model.bidirectional) reads the source; the decoder (n_layer layers, one way) reads [start] + target from
    a zero state, and each of its states attends over the encoder states (global attention after the
    recurrence, Luong et al. 2015, with their "general" dot score or Bahdanau et al.'s additive one); tanh(W
    [context; state]) is scored against the decoder's token table. Decoding carries the decoder's state.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = RecurrentStack(dataclasses.replace(cfg, n_layer=cfg.encoder_layers, encoder_layers=0),
                                      token_table=not cfg.share_embeddings)
        self.decoder = RecurrentStack(dataclasses.replace(cfg, bidirectional=False, encoder_layers=0))
        H, E = self.decoder.width, self.encoder.width
        if cfg.attention == "dot":
            self.query = nn.Linear(H, E, bias=False)  # h W e
        else:
            self.query, self.key = nn.Linear(H, H), nn.Linear(E, H, bias=False)  # v . tanh(W h + U e)
            self.score = nn.Linear(H, 1, bias=False)
        self.combine = nn.Linear(E + H, cfg.n_embd)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Memory:
        share = self.decoder.tok_emb if self.cfg.share_embeddings else None
        states, _ = self.encoder(input_ids, attention_mask, tok_emb=share)  # (B, S, E)
        keys = self.key(states) if self.cfg.attention == "additive" else states  # (B, S, A)
        return Memory(states, keys, attention_mask)

    def _attend(self, h: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Decoder states (B, T, H) -> attention-weighted encoder states (B, T, E)."""
        if self.cfg.attention == "dot":
            scores = self.query(h) @ memory.keys.transpose(1, 2)  # (B, T, S)
        else:
            scores = self.score(torch.tanh(self.query(h)[:, :, None] + memory.keys[:, None])).squeeze(-1)  # (B, T, S)
        if memory.mask is not None:
            scores = scores.masked_fill(memory.mask[:, None] == 0, float("-inf"))
        return torch.softmax(scores.float(), -1).to(h.dtype) @ memory.states  # (B, T, E)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, memory: Memory | None = None, state: list | None = None,
                last_only: bool = False) -> TaskOutput:
        """As Seq2Seq: source (B, S), decoder input (B, T) -> logits (B, T, vocab); decoding passes `memory` and
        the decoder `state` instead (the target is right-padded, so its padding never reaches a real position)."""
        if memory is None:
            memory = self.encode(input_ids, attention_mask)
        h, state = self.decoder(decoder_input_ids, state=state)  # (B, T, H)
        if last_only:
            h = h[:, -1:]  # (B, 1, H)
        out = torch.tanh(self.combine(torch.cat([self._attend(h, memory), h], -1)))  # (B, T, n_embd)
        logits = F.linear(out, self.decoder.tok_emb.weight)  # (B, T, vocab)
        if labels is None:
            return TaskOutput(logits, state=state)
        result = lm_loss(logits, labels, self.cfg.label_smoothing, training=self.training, accuracy=True)
        result.state = state
        return result


def encoder_decoder(cfg: ModelConfig) -> nn.Module:
    """The encoder-decoder of model.arch: the Transformer's, or the recurrent one with attention."""
    return RecurrentSeq2Seq(cfg) if cfg.recurrent else Seq2Seq(cfg)
