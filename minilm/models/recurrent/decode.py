"""How the recurrent family decodes (the Decoder protocol of models/family.py): the state is the cache."""

from __future__ import annotations

import torch

from minilm.models.recurrent.model import RecurrentState


class RecurrentDecoder:
    """Next-token logits for `rows` sequences of a recurrent LM or encoder-decoder. With the cache each step feeds
    the newest token to the state the last step left (one cell update per token; no positions, no window);
    without it, the whole sequence again from a zero state. An encoder-decoder encodes its source once."""

    def __init__(self, model: torch.nn.Module, rows: int, use_cache: bool, source: torch.Tensor | None = None,
                 source_mask: torch.Tensor | None = None):
        self.model, self.use_cache = model, use_cache
        self.seq2seq = model.cfg.encoder_layers > 0
        self.max_len = model.cfg.block_size if self.seq2seq else None
        self.window = None  # the state reads any length
        self.encoded = model.encode(source, source_mask).expand(rows) if self.seq2seq else None
        self.state: RecurrentState | None = None

    def _logits(self, ids: torch.Tensor, state: RecurrentState | None) -> torch.Tensor:
        if self.seq2seq:
            out = self.model(decoder_input_ids=ids, encoded=self.encoded, state=state, last_only=True)
        else:
            out = self.model(ids, state=state, last_only=True)
        if self.use_cache:
            self.state = out.state
        return out.logits[:, -1]  # (rows, V)

    def start(self, prefix: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None or bool((lengths == prefix.size(1)).all()):
            return self._logits(prefix, None)
        if not self.use_cache or self.seq2seq:
            raise ValueError("prompts of different lengths need a language model with its cache")
        # right padding: each row's state stops at its last real token, where its logits are taken
        mask = torch.arange(prefix.size(1), device=prefix.device)[None] < lengths.to(prefix.device)[:, None]
        out = self.model(prefix, state=None, last_only=True, attention_mask=mask)
        self.state = out.state
        return out.logits[:, -1]  # (rows, V)

    def step(self, seq: torch.Tensor) -> torch.Tensor:
        return self._logits(seq[:, -1:], self.state) if self.use_cache else self._logits(seq, None)

    def reorder(self, rows: torch.Tensor) -> None:
        if self.state is not None:
            self.state = self.state.reorder(rows)
