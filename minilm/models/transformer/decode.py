"""How the Transformer family decodes (the Decoder protocol of models/family.py): a GPT over its last block_size
tokens, an encoder-decoder from the encoder's output, computed once per source; with the KV cache each step
feeds only the newest token."""

from __future__ import annotations

import torch

from minilm.models.transformer.model import KVCache


class TransformerDecoder:
    """Next-token logits for `rows` sequences. A GPT's window slides once the sequence outgrows its positions:
    positions shift, so the cache is filled again from the window, and the output always equals decoding without
    the cache. An encoder-decoder's cross-attention keys and values are cached at the first step and shared by the
    beams of a source. A GPT's prompts of different lengths are moved to the right end of the row (left padding,
    masked), so every row's newest token is in the last column and each keeps its own positions."""

    def __init__(self, model: torch.nn.Module, rows: int, use_cache: bool, source: torch.Tensor | None = None,
                 source_mask: torch.Tensor | None = None):
        self.model, self.block = model, model.cfg.block_size
        self.seq2seq = model.cfg.encoder_layers > 0
        self.max_len = self.block if self.seq2seq else None  # a decoder's positions; a GPT's window slides
        self.window = None if self.seq2seq else self.block
        self.use_cache, self.cache, self.memory, self.mask = use_cache, None, None, None
        self.keys: torch.Tensor | None = None  # (rows, cached) the real cached positions, after padded prompts
        self.positions: torch.Tensor | None = None  # (rows,) each row's next position, after padded prompts
        if use_cache and self.seq2seq:  # a GPT's is made at the start, as wide as its prompts need
            self.cache = self._new_cache(rows, self.block)
        if self.seq2seq:  # the encoder runs once per source
            self.memory = model.encode(source, source_mask)  # (B, S, C)
            if not use_cache and self.memory.size(0) != rows:  # the cache expands the keys and values itself
                self.memory = self.memory.expand(rows, -1, -1)  # (rows, S, C), a view
            if source_mask is not None:
                self.mask = source_mask.expand(rows, -1) if source_mask.size(0) != rows else source_mask

    def _new_cache(self, rows: int, slots: int) -> KVCache:
        weight = (self.model.decoder if self.seq2seq else self.model.transformer).tok_emb.weight
        return KVCache(self.model.cfg, rows, slots, weight.device, weight.dtype)

    def _logits(self, ids: torch.Tensor, cache: KVCache | None, memory: torch.Tensor | None) -> torch.Tensor:
        if self.seq2seq:
            out = self.model(attention_mask=self.mask, decoder_input_ids=ids, memory=memory, cache=cache,
                             last_only=True)
        else:
            out = self.model(ids, cache=cache, last_only=True)
        return out.logits[:, -1]  # (rows, V)

    def start(self, prefix: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        self.keys = self.positions = None
        if lengths is not None and not bool((lengths == prefix.size(1)).all()):
            return self._start_padded(prefix, lengths)
        if self.use_cache and (self.cache is None or self.cache.k.size(1) != prefix.size(0)):
            self.cache = self._new_cache(prefix.size(0), self.block)
        if self.cache is not None:
            self.cache.length = 0
            self.cache.cross.clear()
        return self._logits(prefix[:, -self.block:], self.cache, self.memory)

    def _start_padded(self, prefix: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows, T = prefix.shape
        if not self.use_cache or self.seq2seq or T > self.block:
            raise ValueError("prompts of different lengths need a GPT with its cache, each within its block_size")
        lengths = lengths.to(prefix.device)
        col = torch.arange(T, device=prefix.device)[None]  # (1, T)
        pad = (T - lengths)[:, None]  # (rows, 1) padding columns before each prompt
        ids = prefix.gather(1, (col + lengths[:, None]) % T)  # (rows, T): right padding rotated to the left
        self.keys = col >= pad  # (rows, T)
        self.positions = lengths.clone()
        # a fresh cache of the prompts' width; it grows by the tokens scored after them
        self.cache = self._new_cache(rows, T)
        out = self.model(ids, attention_mask=self.keys, position_ids=(col - pad).clamp(min=0), cache=self.cache,
                         last_only=True)
        return out.logits[:, -1]  # (rows, V)

    def step(self, seq: torch.Tensor) -> torch.Tensor:
        if self.positions is not None:  # after padded prompts: each row at its own position
            if int(self.positions.max()) >= self.block:
                raise ValueError(f"a row outgrew the block_size of {self.block} after a padded start: cut its prompt")
            self.keys = torch.cat([self.keys, self.keys.new_ones(self.keys.size(0), 1)], 1)  # (rows, cached + 1)
            out = self.model(seq[:, -1:], attention_mask=self.keys, position_ids=self.positions[:, None],
                             cache=self.cache, last_only=True)
            self.positions = self.positions + 1
            return out.logits[:, -1]
        if self.cache is None:
            return self._logits(seq[:, -self.block:], None, self.memory)
        if seq.size(1) > self.block:  # the window slid: fill the cache again
            return self.start(seq)
        return self._logits(seq[:, -1:], self.cache, None)  # cross-attention reads the cache

    def reorder(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)
        if self.positions is not None:
            self.keys, self.positions = self.keys[rows], self.positions[rows]
