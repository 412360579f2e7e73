"""Recurrent stacks: token embedding -> n_layer recurrent layers (dropout between, optional residuals) -> states.

The recurrent family's stack (model.arch): Elman RNN (tanh), LSTM and GRU on torch's own
modules, one layer per module so that dropout and residuals sit between layers as configured, and SRU
(sru.py: the 2017 unit, or the 2018 one with model.sru_version=2018). Read bottom-up: one layer of any kind,
the stack. Padding is handled exactly: torch's modules run each row only up to its length (on a GPU as packed
sequences; on a CPU one kernel call per distinct length, the backward direction over each row reversed), SRU
carries its state through padded steps, so a padded row gives what the row alone gives, in both directions.
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
        if x.is_cuda:  # cuDNN reads packed sequences in one call
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed, state)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
            return out, state  # (B, T, dirs * H), zeros at padding
        # torch's CPU kernel for packed sequences takes time quadratic in their length (a 400-step batch: 30x the
        # unpacked time): each direction runs the unpacked kernel once per distinct length instead
        parts = [self._direction(d, x if d == 0 else reverse_rows(x, lengths), lengths, state) for d in range(self.dirs)]
        outs = [out if d == 0 else reverse_rows(out, lengths) for d, (out, _) in enumerate(parts)]
        finals = [final for _, final in parts]  # per direction: (h, c) or h, each (1, B, H)
        joined = tuple(torch.cat(f, 0) for f in zip(*finals)) if self.arch == "lstm" else torch.cat(finals, 0)
        return torch.cat(outs, -1), joined  # (B, T, dirs * H) zeros at padding, state (dirs, B, H)

    def _direction(self, d: int, x: torch.Tensor, lengths: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """Direction d of the layer over right-padded rows: the rows sorted longest first, then one kernel call per
        stretch of time in which the same rows are still running, the state handed on to the rows that go on
        (what a packed sequence does, in as many calls as there are distinct lengths)."""
        B, T, _ = x.shape
        rnn, suffix = self.rnn, "_reverse" if d else ""
        weights = [getattr(rnn, f"{kind}_l0{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        run = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}[self.arch]
        order = torch.argsort(lengths, descending=True, stable=True)
        ends = lengths[order].tolist()  # each sorted row's length, longest first
        lstm = self.arch == "lstm"
        if state is None:
            zeros = x.new_zeros(1, B, rnn.hidden_size)
            hx = (zeros, zeros) if lstm else zeros
        else:  # this direction's part, its rows in the sorted order: (1, B, H)
            hx = tuple(t[d:d + 1, order] for t in state) if lstm else state[d:d + 1, order]
        stops = sorted(set(ends))  # the distinct lengths, shortest first
        # one split into stretches (a slice of the whole would cost a whole-size gradient buffer per stretch)
        stretches = x[order].split([b - a for a, b in zip([0, *stops], stops)] + [T - stops[-1]], dim=1)
        pieces, finished, start = [], [], 0
        for stop, xs in zip(stops, stretches):  # xs (B, stop - start, n_in)
            rows = sum(1 for e in ends if e > start)  # the rows still running from `start`: a prefix
            hx = tuple(t[:, :rows] for t in hx) if lstm else hx[:, :rows]
            result = run(xs[:rows], hx, weights, True, 1, 0.0, self.training, False, True)
            out, hx = (result[0], result[1:]) if lstm else result  # an LSTM's: output, h, c
            pieces.append(torch.nn.functional.pad(out, (0, 0, 0, 0, 0, B - rows)))  # (B, stop - start, H)
            done = sum(1 for e in ends if e == stop)  # the last `done` running rows end here
            finished.append(tuple(t[:, rows - done:rows] for t in hx) if lstm else hx[:, rows - done:rows])
            start = stop
        out = torch.cat(pieces, 1)  # (B, longest, H)
        out = torch.nn.functional.pad(out, (0, 0, 0, T - out.size(1)))  # (B, T, H)
        finals = [torch.cat(f[::-1], 1) for f in zip(*finished)] if lstm else torch.cat(finished[::-1], 1)
        back = torch.argsort(order)  # sorted position of each original row
        if lstm:
            return out[back], tuple(f[:, back] for f in finals)
        return out[back], finals[:, back]

    def _sru(self, x: torch.Tensor, lengths: torch.Tensor | None, state) -> tuple[torch.Tensor, torch.Tensor]:
        T = x.size(1)
        keep = None if lengths is None else (torch.arange(T, device=x.device)[None] < lengths.to(x.device)[:, None]
                                             ).to(x.dtype)  # (B, T)
        # the backward direction walks time from the end: padding comes first then, and the state carries through it
        outs, last = zip(*(cell(x, state[d] if state is not None else None, keep, reverse=d == 1)
                           for d, cell in enumerate(self.cells)))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        return out, torch.stack(last)  # (B, T, dirs * H) zeros at padding, (dirs, B, H)


def reverse_rows(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first lengths[b] steps in reverse order, its padding left where it is: (B, T, C) -> (B, T, C).
    Its own inverse."""
    T = x.size(1)
    t = torch.arange(T, device=x.device)[None]  # (1, T)
    n = lengths.to(x.device)[:, None]  # (B, 1)
    index = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, index[..., None].expand_as(x))

class RecurrentStack(nn.Module):
    """Token embedding -> dropout -> n_layer RecurrentLayers, each output normalized with model.layer_norm, dropout
    between them and, with model.residual, x + layer(x) wherever the widths agree. Returns the last layer's states
    (B, T, dirs * H), zeros at padding, and each layer's final state, which continues the sequence when passed back
    (sampling, truncated BPTT)."""

    def __init__(self, cfg: RecurrentConfig, token_table: bool = True):
        super().__init__()
        self.cfg = cfg
        H, dirs = cfg.rnn_hidden, 2 if cfg.bidirectional else 1
        # token_table=False: the caller passes its own table to forward (an encoder sharing the decoder's)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd) if token_table else None
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(RecurrentLayer(cfg.arch, cfg.n_embd if i == 0 else dirs * H, H, cfg.bidirectional,
                                                   cfg.sru_version) for i in range(cfg.n_layer))
        self.norms = nn.ModuleList(nn.LayerNorm(dirs * H) for _ in range(cfg.n_layer)) if cfg.layer_norm else None
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
        # (B, T, 1), only where a norm would give padding its bias: padding stays zero
        real = None if lengths is None or self.norms is None else attention_mask[..., None].to(x.dtype)
        new_state = []
        for i, layer in enumerate(self.layers):
            y, s = layer(x, lengths, state[i] if state is not None else None)
            if self.norms is not None:
                y = self.norms[i](y)
                y = y if real is None else y * real
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
