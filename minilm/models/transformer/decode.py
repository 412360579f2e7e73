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
    beams of a source."""

    def __init__(self, model: torch.nn.Module, rows: int, use_cache: bool, source: torch.Tensor | None = None,
                 source_mask: torch.Tensor | None = None):
        self.model, self.block = model, model.cfg.block_size
        self.seq2seq = model.cfg.encoder_layers > 0
        self.max_len = self.block if self.seq2seq else None  # a decoder's positions; a GPT's window slides
        self.cache, self.memory, self.mask = None, None, None
        if use_cache:
            weight = (model.decoder if self.seq2seq else model.transformer).tok_emb.weight
            self.cache = KVCache(model.cfg, rows, self.block, weight.device, weight.dtype)
        if self.seq2seq:  # the encoder runs once per source
            self.memory = model.encode(source, source_mask)  # (B, S, C)
            if self.cache is None and self.memory.size(0) != rows:  # the cache expands the keys and values itself
                self.memory = self.memory.expand(rows, -1, -1)  # (rows, S, C), a view
            if source_mask is not None:
                self.mask = source_mask.expand(rows, -1) if source_mask.size(0) != rows else source_mask

    def _logits(self, ids: torch.Tensor, cache: KVCache | None, memory: torch.Tensor | None) -> torch.Tensor:
        if self.seq2seq:
            out = self.model(attention_mask=self.mask, decoder_input_ids=ids, memory=memory, cache=cache,
                             last_only=True)
        else:
            out = self.model(ids, cache=cache, last_only=True)
        return out.logits[:, -1]  # (rows, V)

    def start(self, prefix: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            self.cache.length = 0
            self.cache.cross.clear()
        return self._logits(prefix[:, -self.block:], self.cache, self.memory)

    def step(self, seq: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self._logits(seq[:, -self.block:], None, self.memory)
        if seq.size(1) > self.block:  # the window slid: fill the cache again
            return self.start(seq)
        return self._logits(seq[:, -1:], self.cache, None)  # cross-attention reads the cache

    def reorder(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)
