"""Recurrent stacks: token embedding -> n_layer recurrent layers (dropout between, optional residuals) -> states.

The recurrent family's stack (model.arch): Elman RNN (tanh), LSTM and GRU on torch's own
modules, one layer per module so that dropout and residuals sit between layers as configured, and SRU
(sru.py: the 2017 unit, or the 2018 one with model.sru_version=2018). Read bottom-up: one layer of any kind,
the stack. Padding is handled exactly: torch's modules read packed sequences, SRU carries its state through
padded steps, so a padded row gives what the row alone gives, in both directions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from minilm.models.recurrent.config import RecurrentConfig
from minilm.models.recurrent.sru import SRU, SRU2018


class RecurrentState:
    """The state a recurrent stack ended in, one entry per layer: (h, c) for an LSTM, h for an RNN or GRU, c for an
    SRU, each (dirs, B, H). Passed back with the next tokens it continues the sequence (sampling, truncated BPTT)."""

    def __init__(self, layers: list):
        self.layers = layers

    def __getitem__(self, layer: int):
        return self.layers[layer]

    def _map(self, fn) -> RecurrentState:
        return RecurrentState([tuple(fn(t) for t in s) if isinstance(s, tuple) else fn(s) for s in self.layers])

    def detach(self) -> RecurrentState:
        """The state without its history (truncated BPTT: gradients stop at the block boundary)."""
        return self._map(torch.Tensor.detach)

    def reorder(self, rows: torch.Tensor) -> RecurrentState:
        """Row rows[i] of every layer's state as row i (beam search)."""
        return self._map(lambda t: t.index_select(1, rows))  # (dirs, B, H)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as named tensors ("layer.part"), for a checkpoint."""
        out = {}
        for i, s in enumerate(self.layers):
            for j, t in enumerate(s if isinstance(s, tuple) else (s,)):
                out[f"{i}.{j}"] = t.detach().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], device: torch.device) -> RecurrentState | None:
        """The inverse of tensors(): an LSTM layer's two parts become (h, c) again; no tensors (no state yet): None."""
        if not tensors:
            return None
        layers: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for name, t in tensors.items():
            i, j = map(int, name.split("."))
            layers.setdefault(i, []).append((j, t.to(device)))
        parts = [[t for _, t in sorted(layers[i])] for i in sorted(layers)]
        return cls([tuple(p) if len(p) > 1 else p[0] for p in parts])


_TORCH = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentLayer(nn.Module):
    """One layer of model.arch, one or two directions: (B, T, n_in) -> (B, T, dirs * H)."""

    def __init__(self, arch: str, n_in: int, hidden: int, bidirectional: bool, sru_version: int = 2017):
        super().__init__()
        self.arch, self.dirs = arch, 2 if bidirectional else 1
        if arch == "sru":
            unit = SRU if sru_version == 2017 else SRU2018
            self.cells = nn.ModuleList(unit(n_in, hidden) for _ in range(self.dirs))
        else:
            kw = {"nonlinearity": "tanh"} if arch == "rnn" else {}
            self.rnn = _TORCH[arch](n_in, hidden, batch_first=True, bidirectional=bidirectional, **kw)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, state) -> tuple[torch.Tensor, object]:
        if self.arch == "sru":
            return self._sru(x, lengths, state)
        if lengths is None:
            return self.rnn(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out, state  # (B, T, dirs * H), zeros at padding

    def _sru(self, x: torch.Tensor, lengths: torch.Tensor | None, state) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        if lengths is None:
            keep = None
        else:
            keep = (torch.arange(T, device=x.device)[:, None] < lengths.to(x.device)[None]).to(x.dtype)[..., None]
        xt = x.transpose(0, 1)  # (T, B, n_in): time first for the recurrence
        outs, last = [], []
        for d, cell in enumerate(self.cells):
            if d == 0:
                h, c = cell(xt, state[0] if state is not None else None, keep)
            else:  # backward: padding comes first once reversed, and the state carries through it unchanged
                h, c = cell(xt.flip(0), state[1] if state is not None else None,
                            keep.flip(0) if keep is not None else None)
                h = h.flip(0)
            outs.append(h * keep if keep is not None else h)
            last.append(c)
        return torch.cat(outs, -1).transpose(0, 1), torch.stack(last)  # (B, T, dirs * H), (dirs, B, H)


class RecurrentStack(nn.Module):
    """Token embedding -> dropout -> n_layer RecurrentLayers with dropout between them and, with model.residual,
    x + layer(x) wherever the widths agree. Returns the last layer's states (B, T, dirs * H) and each layer's
    final state, which continues the sequence when passed back (sampling, truncated BPTT)."""

    def __init__(self, cfg: RecurrentConfig, token_table: bool = True):
        super().__init__()
        self.cfg = cfg
        H, dirs = cfg.rnn_hidden, 2 if cfg.bidirectional else 1
        # token_table=False: the caller passes its own table to forward (an encoder sharing the decoder's)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd) if token_table else None
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(RecurrentLayer(cfg.arch, cfg.n_embd if i == 0 else dirs * H, H, cfg.bidirectional,
                                                   cfg.sru_version) for i in range(cfg.n_layer))
        if self.tok_emb is not None:
            nn.init.normal_(self.tok_emb.weight, std=0.02)

    @property
    def width(self) -> int:
        return self.cfg.rnn_hidden * (2 if self.cfg.bidirectional else 1)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: RecurrentState | None = None,
                tok_emb: nn.Embedding | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """idx (B, T), attention_mask (B, T) with right padding (1 = real token) -> (B, T, width), state."""
        lengths = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.sum(-1)
        x = self.drop((tok_emb or self.tok_emb)(idx))  # (B, T, n_embd)
        new_state = []
        for i, layer in enumerate(self.layers):
            y, s = layer(x, lengths, state[i] if state is not None else None)
            y = self.drop(y)
            x = x + y if self.cfg.residual and y.shape == x.shape else y
            new_state.append(s)
        return x, RecurrentState(new_state)


def last_states(h: torch.Tensor, attention_mask: torch.Tensor | None, bidirectional: bool) -> torch.Tensor:
    """A sequence summary from the top layer: the forward direction at the last real token, joined (for a
    bidirectional stack) by the backward direction at the first token, which has read the whole sequence."""
    B, T, W = h.shape
    last = (attention_mask.long().sum(-1) - 1) if attention_mask is not None else torch.full((B,), T - 1)
    rows = torch.arange(B, device=h.device)
    if not bidirectional:
        return h[rows, last.to(h.device)]  # (B, W)
    half = W // 2
    return torch.cat([h[rows, last.to(h.device), :half], h[:, 0, half:]], -1)  # (B, W)
