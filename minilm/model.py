"""The one Transformer stack every minilm model is built on: embeddings -> Blocks -> final norm.

Read bottom-up: attention, MLP, Block, then the stack. GPT (causal, pre-LN, final LayerNorm) and
BERT (bidirectional, post-LN, embedding LayerNorm, segment embeddings) are the same classes with
different ModelConfig switches; so is the original Transformer's encoder-decoder, whose decoder Blocks add
cross-attention over the encoder's output (model.encoder_layers > 0). Task heads live in heads.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minilm.config import ModelConfig


class KVCache:
    """Keys and values of every layer for incremental decoding: (n_layer, B, nh, max_len, hs) each."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        hs = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions already cached
        # cross-attention keys and values per layer, computed from the encoder's output once per source
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v of shape (B, nh, T, hs) after the cached positions; return all keys and values so far."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, end, hs)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep row rows[i] of the cache as row i (beam search: each beam continues its parent's cache). The
        cross-attention keys and values stay: the beams of one source share them."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)


class Unpadded:
    """Where the real tokens of a padded (B, T) batch sit. Everything but attention is per token, so the
    blocks run on the N real tokens alone and no work is spent on padding; attention re-pads its q, k, v."""

    def __init__(self, keep: torch.Tensor, B: int, T: int):
        self.index = keep.nonzero()[:, 0]  # (N,) flat positions of the real tokens in B * T
        self.B, self.T = B, T

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D) with zeros at padding."""
        flat = x.new_zeros(self.B * self.T, x.size(-1)).index_copy(0, self.index, x)  # (B * T, D)
        return flat.view(self.B, self.T, -1)  # (B, T, D)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D): the real tokens only."""
        return x.reshape(self.B * self.T, -1)[self.index]  # (N, D)


class Attention(nn.Module):
    """Multi-head attention through torch's scaled_dot_product_attention (flash / memory-efficient): self-attention,
    or with `cross` the decoder's cross-attention, whose keys and values come from the encoder's output."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.cross = cross
        if cross:
            self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
            self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)  # k, v of the encoder output in one matmul
        else:
            self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0, unpadded: Unpadded | None = None,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), or (N, C) for unpadded tokens; memory (B, S, C): the encoder output (cross-attention)."""
        if self.cross:
            q = self.q(x)  # (B, T, C) or (N, C)
            q = unpadded.pad(q) if unpadded is not None else q  # (B, T, C)
            if cache is not None and layer in cache.cross:
                k, v = cache.cross[layer]  # (B, nh, S, hs) each: computed at the first step
            else:
                k, v = (self._heads(t) for t in self.kv(memory).chunk(2, dim=-1))  # (B, nh, S, hs) each
                if cache is not None:  # laid out once for attention, not copied at every step
                    k, v = k.contiguous(), v.contiguous()
                    cache.cross[layer] = (k.expand(q.size(0), -1, -1, -1), v.expand(q.size(0), -1, -1, -1))
                    k, v = cache.cross[layer]  # the beams of one source share one copy
            B, T, C = q.shape
            q = self._heads(q)  # (B, nh, T, hs)
        else:
            qkv = self.qkv(x)  # (B, T, 3C), or (N, 3C) for unpadded tokens
            if unpadded is not None:
                qkv = unpadded.pad(qkv)  # (B, T, 3C)
            B, T, C = qkv.size(0), qkv.size(1), qkv.size(2) // 3
            q, k, v = (self._heads(t) for t in qkv.split(C, dim=2))  # 3 x (B, nh, T, hs)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, nh, S, hs) with S = cached + T
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        if unpadded is not None:
            y = unpadded.unpad(y)  # (N, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=cfg.bias)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Attention + MLP with residuals; LayerNorm before each (pre-LN, GPT-2) or after each residual add (post-LN).
    In an encoder-decoder's decoder, cross-attention over the encoder output sits between the two."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg)
        if cfg.encoder_layers:
            self.norm_cross = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
            self.cross_attn = Attention(cfg, cross=True)
        self.norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0, unpadded: Unpadded | None = None,
                memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        cross = memory is not None or (cache is not None and layer in cache.cross)
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), mask, is_causal, cache, layer, unpadded)
            if cross:
                x = x + self.cross_attn(self.norm_cross(x), memory_mask, False, cache, layer, unpadded, memory)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, mask, is_causal, cache, layer, unpadded))
        if cross:
            x = self.norm_cross(x + self.cross_attn(x, memory_mask, False, cache, layer, unpadded, memory))
        return self.norm2(x + self.mlp(x))


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The original Transformer's fixed position encodings: sin on even, cos on odd channels."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (n_pos, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table  # (n_pos, dim)


class Transformer(nn.Module):
    """Embeddings (token + position [+ segment]) -> n_layer Blocks -> final LayerNorm (pre-LN only)."""

    def __init__(self, cfg: ModelConfig, token_table: bool = True):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the tokenizer's size) before building a model")
        self.cfg = cfg
        # token_table=False: the caller passes its own table to forward (an encoder sharing the decoder's)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd) if token_table else None
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.pos_emb = None
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.seg_emb = nn.Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size else None
        self.emb_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias) if cfg.norm == "pre" else None
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections that write into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if self.pos_emb is not None and cfg.position_init == "sinusoidal":
            table = sinusoidal_table(cfg.block_size, cfg.n_embd)  # (block_size, C), rms 1/sqrt(2)
            with torch.no_grad():  # same rms as the token embeddings (std 0.02)
                self.pos_emb.weight.copy_(table * (0.02 / table.pow(2).mean().sqrt()))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _mask(self, attention_mask: torch.Tensor | None, T: int, past: int,
              device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for SDPA. Plain causal or unmasked cases take the fast kernels."""
        causal = self.cfg.causal
        if attention_mask is None and (not causal or T == 1):
            return None, False
        if attention_mask is None and past == 0:
            return None, True
        q = torch.arange(past, past + T, device=device)[:, None]  # (T, 1)
        k = torch.arange(past + T, device=q.device)[None, :]  # (1, S)
        allowed = (k <= q) if causal else torch.ones(T, past + T, dtype=torch.bool, device=q.device)
        allowed = allowed[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, S)
            # a padding query may have no real key to its left; let it see itself so softmax stays finite
            allowed = allowed | (k == q)[None, None]
        return allowed, False

    def forward(self, idx: torch.Tensor, segment_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, tok_emb: nn.Embedding | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> hidden states (B, T, n_embd). attention_mask (B, past + T): 1 = real token;
        without a cache, the blocks skip padding entirely and its hidden states come back as zeros.
        A decoder also takes the encoder output `memory` (B, S, n_embd) and its mask (B, S); with a cache, only
        at the first step (the cache keeps what cross-attention needs). tok_emb: a table of the caller's."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds the block size {self.cfg.block_size}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device)[None]  # (1, T)
        pos = self.pos_emb(position_ids) if self.pos_emb is not None else self.pos_table[position_ids]
        x = (tok_emb or self.tok_emb)(idx) + pos  # (B, T, C)
        if self.seg_emb is not None:
            x = x + self.seg_emb(segment_ids if segment_ids is not None else torch.zeros_like(idx))
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        mask, is_causal = self._mask(attention_mask, T, past, idx.device)
        if memory_mask is not None:
            memory_mask = memory_mask.bool()[:, None, None, :]  # (B, 1, 1, S): padding keys masked for every query
        unpadded = None
        if attention_mask is not None and cache is None:
            unpadded = Unpadded(attention_mask.flatten().bool(), B, T)
            if len(unpadded.index) == B * T:
                unpadded = None  # no padding to skip
            else:
                x = unpadded.unpad(x)  # (N, C): the blocks see real tokens only
        for i, block in enumerate(self.blocks):
            if self.cfg.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, is_causal, None, i, unpadded, memory, memory_mask, use_reentrant=False)
            else:
                x = block(x, mask, is_causal, cache, i, unpadded, memory, memory_mask)
        if cache is not None:
            cache.length += T
        if self.final_norm is not None:
            x = self.final_norm(x)
        return unpadded.pad(x) if unpadded is not None else x  # (B, T, C), zeros at padding


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
