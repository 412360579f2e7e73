"""The Transformer family's stack: embeddings -> Blocks -> final norm, the one Block every Transformer is built of.

Read bottom-up: the KV cache and the unpadded token layout, attention, Block, then the stack. GPT (causal,
pre-LN, final norm) and BERT (bidirectional, post-LN, embedding norm, segment embeddings) are the same classes
with different TransformerConfig switches; so is the original Transformer's encoder-decoder, whose decoder
Blocks add cross-attention over the encoder's output (model.encoder_layers > 0). The norm, the MLP and the
position scheme are parts chosen by name (parts.py); the task models over the stack are in heads.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minilm.models.transformer.config import TransformerConfig
from minilm.models.transformer.parts import MLPS, POSITIONS, Positions, make_norm


class KVCache:
    """Keys and values of every layer for incremental decoding: (n_layer, B, nh, max_len, hs) each."""

    def __init__(self, cfg: TransformerConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
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
        if end > self.k.size(3):  # padded prompts use more slots than positions: room for the tokens after them
            more = self.k.new_zeros(*self.k.shape[:3], max(end - self.k.size(3), 16), self.k.size(4))
            self.k, self.v = torch.cat([self.k, more], 3), torch.cat([self.v, more], 3)
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


@dataclass
class Context:
    """What every Block of one forward pass reads besides its input: the attention mask, the cache, where the
    real tokens are, the positions, and for a decoder the encoder's output."""

    mask: torch.Tensor | None  # (B or 1, 1, T, S) True = may attend, for SDPA; None: unmasked or plain causal
    is_causal: bool  # SDPA's own causal mask (no padding, nothing cached)
    positions: Positions
    position_ids: torch.Tensor  # (B or 1, T)
    cache: KVCache | None = None
    unpadded: Unpadded | None = None  # the blocks see the N real tokens only: x is (N, C)
    memory: torch.Tensor | None = None  # (B, S, C) the encoder's output (cross-attention)
    memory_mask: torch.Tensor | None = None  # (B, 1, 1, S) the source's real tokens

    def cross(self, layer: int) -> bool:
        """Whether the decoder Blocks attend to an encoder output (given now, or cached at the first step)."""
        return self.memory is not None or (self.cache is not None and layer in self.cache.cross)


class Attention(nn.Module):
    """Multi-head attention through torch's scaled_dot_product_attention (flash / memory-efficient): self-attention,
    or with `cross` the decoder's cross-attention, whose keys and values come from the encoder's output."""

    def __init__(self, cfg: TransformerConfig, cross: bool = False):
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

    def _cross_kv(self, ctx: Context, layer: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output, (rows, nh, S, hs) each: computed once per source when decoding."""
        cache = ctx.cache
        if cache is not None and layer in cache.cross:
            return cache.cross[layer]  # computed at the first step
        k, v = (self._heads(t) for t in self.kv(ctx.memory).chunk(2, dim=-1))  # (B, nh, S, hs) each
        if cache is not None:  # laid out once for attention, not copied at every step
            k, v = k.contiguous(), v.contiguous()
            cache.cross[layer] = (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))  # the beams share one copy
            return cache.cross[layer]
        return k, v

    def forward(self, x: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        """x (B, T, C), or (N, C) for the real tokens of an unpadded batch."""
        unpadded = ctx.unpadded
        if self.cross:
            q = self.q(x)  # (B, T, C) or (N, C)
            q = unpadded.pad(q) if unpadded is not None else q  # (B, T, C)
            B, T, C = q.shape
            k, v = self._cross_kv(ctx, layer, B)
            q = self._heads(q)  # (B, nh, T, hs)
            mask, is_causal = ctx.memory_mask, False
        else:
            qkv = self.qkv(x)  # (B, T, 3C), or (N, 3C) for unpadded tokens
            if unpadded is not None:
                qkv = unpadded.pad(qkv)  # (B, T, 3C)
            B, T, C = qkv.size(0), qkv.size(1), qkv.size(2) // 3
            q, k, v = (self._heads(t) for t in qkv.split(C, dim=2))  # 3 x (B, nh, T, hs)
            q, k = ctx.positions.rotate(q, k, ctx.position_ids)
            if ctx.cache is not None:
                k, v = ctx.cache.update(layer, k, v)  # (B, nh, S, hs) with S = cached + T
            mask, is_causal = ctx.mask, ctx.is_causal
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        if unpadded is not None:
            y = unpadded.unpad(y)  # (N, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Attention + MLP with residuals; a norm before each (pre-LN, GPT-2) or after each residual add (post-LN).
    In an encoder-decoder's decoder, cross-attention over the encoder output sits between the two."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        if cfg.encoder_layers:
            self.norm_cross = make_norm(cfg)
            self.cross_attn = Attention(cfg, cross=True)
        self.norm2 = make_norm(cfg)
        self.mlp = MLPS[cfg.mlp](cfg)

    def forward(self, x: torch.Tensor, ctx: Context, layer: int) -> torch.Tensor:
        cross = ctx.cross(layer)
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), ctx, layer)
            if cross:
                x = x + self.cross_attn(self.norm_cross(x), ctx, layer)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, ctx, layer))
        if cross:
            x = self.norm_cross(x + self.cross_attn(x, ctx, layer))
        return self.norm2(x + self.mlp(x))


class Transformer(nn.Module):
    """Embeddings (token [+ absolute position] [+ segment]) -> n_layer Blocks -> final norm (pre-LN only)."""

    def __init__(self, cfg: TransformerConfig, token_table: bool = True):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (the tokenizer's size) before building a model")
        self.cfg = cfg
        self.checkpointing = False  # recompute each Block in backward (train.gradient_checkpointing)
        # token_table=False: the caller passes its own table to forward (an encoder sharing the decoder's)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd) if token_table else None
        self.pos_emb = POSITIONS[cfg.position](cfg)
        self.seg_emb = nn.Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size else None
        self.emb_norm = make_norm(cfg) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg) if cfg.norm == "pre" else None
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections that write into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self.pos_emb.init_weights(cfg)

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
        # slots may outnumber positions (padded prompts in the cache): then the positions given are what counts
        if past + T > self.cfg.block_size and (position_ids is None or int(position_ids.max()) >= self.cfg.block_size):
            raise ValueError(f"sequence of {past + T} tokens exceeds the block size {self.cfg.block_size}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device)[None]  # (1, T)
        x = (tok_emb or self.tok_emb)(idx)  # (B, T, C)
        pos = self.pos_emb.embed(position_ids)
        if pos is not None:
            x = x + pos
        if self.seg_emb is not None:
            x = x + self.seg_emb(segment_ids if segment_ids is not None else torch.zeros_like(idx))
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        mask, is_causal = self._mask(attention_mask, T, past, idx.device)
        ctx = Context(mask, is_causal, self.pos_emb, position_ids, cache, memory=memory,
                      memory_mask=memory_mask.bool()[:, None, None, :] if memory_mask is not None else None)
        if attention_mask is not None and cache is None:
            unpadded = Unpadded(attention_mask.flatten().bool(), B, T)
            if len(unpadded.index) < B * T:  # padding to skip
                ctx.unpadded = unpadded
                x = unpadded.unpad(x)  # (N, C): the blocks see real tokens only
        for i, block in enumerate(self.blocks):
            if self.checkpointing and self.training:
                x = checkpoint(block, x, ctx, i, use_reentrant=False)
            else:
                x = block(x, ctx, i)
        if cache is not None:
            cache.length += T
        if self.final_norm is not None:
            x = self.final_norm(x)
        return ctx.unpadded.pad(x) if ctx.unpadded is not None else x  # (B, T, C), zeros at padding
