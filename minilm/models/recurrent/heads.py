"""The recurrent family's task models over its stack (model.arch = rnn / lstm / gru / sru), each returning
outputs.TaskOutput with the stack's final state, which continues the sequence when passed back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.models.outputs import (HeadConfig, TaskOutput, classification_output, lm_loss, pool,
                                   token_classification_output)
from minilm.models.recurrent.config import RecurrentConfig
from minilm.models.recurrent.model import RecurrentStack, RecurrentState, last_states


class RecurrentLM(nn.Module):
    """A character- or token-level LM on a recurrent stack (model.arch): the top states, projected to the
    embedding width when they are wider or narrower, scored against the tied token embedding. The final state
    comes back with the logits: fed back with the next tokens, it continues the sequence (one cell update per
    sampled token)."""

    def __init__(self, cfg: RecurrentConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg, self.label_smoothing = cfg, heads.label_smoothing
        self.rnn = RecurrentStack(cfg)
        self.out = nn.Linear(self.rnn.width, cfg.n_embd, bias=False) if self.rnn.width != cfg.n_embd else None

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, state: RecurrentState | None = None,
                last_only: bool = False, attention_mask: torch.Tensor | None = None) -> TaskOutput:
        """attention_mask (B, T): right padding, where each row's state stops (prompts of different lengths)."""
        h, state = self.rnn(input_ids, attention_mask, state=state)  # (B, T, width)
        if last_only:  # each row's last real token
            h = h[:, -1:] if attention_mask is None else last_states(h, attention_mask, False)[:, None]  # (B, 1, width)
        if self.out is not None:
            h = self.out(h)  # (B, T, n_embd)
        logits = F.linear(h, self.rnn.tok_emb.weight)  # (B, T, vocab), tied to the embedding
        if labels is None:
            return TaskOutput(logits, state=state)
        out = lm_loss(logits, labels, self.label_smoothing, training=self.training)
        out.state = state
        return out


class RecurrentClassifier(nn.Module):
    """Sequence classification on a recurrent stack: the last states ("last"; a bidirectional stack adds its
    backward direction at the first token) or the mean / max over the real tokens -> dropout -> linear."""

    def __init__(self, cfg: RecurrentConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.pooling = heads.pooling or cfg.default_pooling()
        self.rnn = RecurrentStack(cfg)
        self.drop = nn.Dropout(heads.classifier_dropout)
        self.head = nn.Linear(self.rnn.width, heads.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        h, _ = self.rnn(input_ids, attention_mask)  # (B, T, width), right padding
        if self.pooling == "last":
            pooled = last_states(h, attention_mask, self.cfg.bidirectional)  # (B, width)
        else:
            pooled = pool(h, attention_mask, self.pooling)  # (B, width)
        logits = self.head(self.drop(pooled))  # (B, num_labels)
        return classification_output(logits, labels, self.training)


class RecurrentTagger(nn.Module):
    """Sequence labelling on a recurrent stack, the classic (bidirectional) LSTM tagger: every token's top state
    -> dropout -> linear. One direction reads the left context only; both read the whole sentence."""

    def __init__(self, cfg: RecurrentConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.rnn = RecurrentStack(cfg)
        self.drop = nn.Dropout(heads.classifier_dropout)
        self.head = nn.Linear(self.rnn.width, heads.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        h, _ = self.rnn(input_ids, attention_mask)  # (B, T, width), right padding
        return token_classification_output(self.head(self.drop(h)), labels, self.training)  # (B, T, num_labels)


@dataclass
class Encoded:
    """The source as a recurrent decoder attends to it, computed once per source."""

    states: torch.Tensor  # (B, S, E) the encoder's top states, zeros at padding
    keys: torch.Tensor  # (B, S, A) additive attention's U e (dot attention: the states themselves)
    mask: torch.Tensor | None  # (B, S) 1 = real token

    def expand(self, rows: int) -> Encoded:
        """One source's encoding for `rows` beams (a view)."""
        if self.states.size(0) == rows:
            return self
        grow = lambda t: t.expand(rows, *t.shape[1:]) if t is not None else None  # noqa: E731
        return Encoded(grow(self.states), grow(self.keys), grow(self.mask))


class RecurrentSeq2Seq(nn.Module):
    """An RNN encoder-decoder with attention: the encoder (model.encoder_layers layers of model.arch, both ways
    with model.bidirectional) reads the source; the decoder (n_layer layers, one way) reads [start] + target from
    a zero state, and each of its states attends over the encoder states (global attention after the
    recurrence, Luong et al. 2015, with their "general" dot score or Bahdanau et al.'s additive one); tanh(W
    [context; state]) is scored against the decoder's token table. Decoding carries the decoder's state.
    """

    def __init__(self, cfg: RecurrentConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg, self.label_smoothing = cfg, heads.label_smoothing
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

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Encoded:
        share = self.decoder.tok_emb if self.cfg.share_embeddings else None
        states, _ = self.encoder(input_ids, attention_mask, tok_emb=share)  # (B, S, E)
        keys = self.key(states) if self.cfg.attention == "additive" else states  # (B, S, A)
        return Encoded(states, keys, attention_mask)

    def _attend(self, h: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """Decoder states (B, T, H) -> attention-weighted encoder states (B, T, E)."""
        if self.cfg.attention == "dot":
            scores = self.query(h) @ encoded.keys.transpose(1, 2)  # (B, T, S)
        else:
            scores = self.score(torch.tanh(self.query(h)[:, :, None] + encoded.keys[:, None])).squeeze(-1)  # (B, T, S)
        if encoded.mask is not None:
            scores = scores.masked_fill(encoded.mask[:, None] == 0, float("-inf"))
        return torch.softmax(scores.float(), -1).to(h.dtype) @ encoded.states  # (B, T, E)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, encoded: Encoded | None = None, state: RecurrentState | None = None,
                last_only: bool = False) -> TaskOutput:
        """As Seq2Seq: source (B, S), decoder input (B, T) -> logits (B, T, vocab); decoding passes `encoded` and
        the decoder `state` instead (the target is right-padded, so its padding never reaches a real position)."""
        if encoded is None:
            encoded = self.encode(input_ids, attention_mask)
        h, state = self.decoder(decoder_input_ids, state=state)  # (B, T, H)
        if last_only:
            h = h[:, -1:]  # (B, 1, H)
        out = torch.tanh(self.combine(torch.cat([self._attend(h, encoded), h], -1)))  # (B, T, n_embd)
        logits = F.linear(out, self.decoder.tok_emb.weight)  # (B, T, vocab)
        if labels is None:
            return TaskOutput(logits, state=state)
        result = lm_loss(logits, labels, self.label_smoothing, training=self.training, accuracy=True)
        result.state = state
        return result
