"""The Transformer family's model section: GPT, BERT and the encoder-decoder are the same stack with different
switches. Its parts (norm, MLP, position scheme) are chosen by name from the registries in parts.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from minilm.config import Config, ModelConfig, check_field
from minilm.errors import ConfigError
from minilm.models.transformer.parts import MLPS, NORMS, POSITIONS


@dataclass
class TransformerConfig(ModelConfig):
    """model.arch=transformer: embeddings -> n_layer Blocks (attention + MLP) -> final norm."""

    family: ClassVar[str] = "transformer"

    n_head: int = 4
    d_ff: int = 0  # MLP width; 0 means 4 * n_embd
    bias: bool = True  # biases in Linear and norm layers
    norm: str = "pre"  # "pre": GPT-2 (final norm after the blocks); "post": original Transformer / BERT
    norm_eps: float = 1e-5
    norm_type: str = "layernorm"  # the norm layer, by name (parts.NORMS)
    mlp: str = "standard"  # the MLP, by name (parts.MLPS): "standard" is fc -> activation -> proj
    embedding_norm: bool = False  # a norm right after the embeddings (BERT)
    position: str = "learned"  # the position scheme, by name (parts.POSITIONS): "learned" or "sinusoidal"
    # start a learned table from the sinusoidal one (at the token embeddings' scale): attention can tell near
    # from far positions from step 0, which shortens a masked LM's unigram plateau; still a plain learned table
    position_init: str = "random"
    causal: bool = True  # causal (decoder) or bidirectional (encoder) attention
    type_vocab_size: int = 0  # segment embeddings (BERT uses 2); 0 disables them
    activation: str = "gelu_tanh"  # GPT-2 uses the tanh approximation, BERT the exact "gelu"

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.n_embd

    def validate(self) -> None:
        super().validate()
        check_field(self.n_head > 0, "model.n_head", "a positive integer", self.n_head)
        check_field(self.d_ff >= 0, "model.d_ff", "0 (4 * n_embd) or a positive integer", self.d_ff)
        check_field(self.type_vocab_size >= 0, "model.type_vocab_size", "0 or a positive integer", self.type_vocab_size)
        if self.encoder_layers and not self.causal:
            raise ConfigError("model.encoder_layers > 0 builds an encoder-decoder, whose decoder is causal: set "
                              "model.causal=true (the encoder is bidirectional by itself)")
        check_field(self.norm_eps > 0, "model.norm_eps", "a positive number", self.norm_eps)
        check_field(self.norm in ("pre", "post"), "model.norm", "'pre' or 'post'", self.norm)
        for key, names in (("norm_type", NORMS), ("mlp", MLPS), ("position", POSITIONS)):
            check_field(getattr(self, key) in names, f"model.{key}", " or ".join(map(repr, names)), getattr(self, key))
        check_field(self.position_init in ("random", "sinusoidal"), "model.position_init", "'random' or 'sinusoidal'",
                    self.position_init)
        check_field(self.activation in ("gelu_tanh", "gelu"), "model.activation", "'gelu_tanh' or 'gelu'",
                    self.activation)
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                              "choose n_embd as a multiple of n_head")

    def check(self, cfg: Config) -> None:
        if not (self.causal or cfg.tokenizer.kind == "wordpiece" or cfg.tokenizer.path or self.init_from):
            raise ConfigError(f"tokenizer.kind={cfg.tokenizer.kind!r} cannot build BERT inputs ([CLS], [SEP], [MASK]): "
                              "set tokenizer.kind=wordpiece for a bidirectional model")
        if self.causal and self.type_vocab_size:
            raise ConfigError("model.type_vocab_size is for bidirectional (BERT) models: set it to 0 or "
                              "model.causal=false")
        if cfg.classify.pooling == "cls" and self.causal:
            raise ConfigError("classify.pooling=cls reads the first token, which a causal (GPT) model cannot let see "
                              "the others: use classify.pooling=last or mean")

    def default_task(self) -> str:
        return "seq2seq" if self.encoder_layers else "causal_lm" if self.causal else "masked_lm"

    def default_pooling(self) -> str:
        return "last" if self.causal else "cls"

    def decode_row_bytes(self, width: int = 0, attention: int = 0) -> int:
        return super().decode_row_bytes(attention=self.n_head * self.block_size)  # the scores of a full window

    def describe(self) -> str:
        kind = "an encoder-decoder" if self.encoder_layers else "a GPT (causal)" if self.causal else \
            "a BERT (bidirectional)"
        layers = f"{self.encoder_layers} + {self.n_layer}" if self.encoder_layers else f"{self.n_layer}"
        return f"{kind} Transformer, {layers} layers x {self.n_embd} wide, {self.block_size} positions"


# Named architectures. Parameter counts (with GPT-2's 50,257-token vocabulary unless noted) come from
# `minilm presets`, which builds each model and counts.
PRESETS: dict[str, dict[str, Any]] = {
    # A few seconds per hundred steps on a laptop CPU; for smoke tests and the embedded default.
    "gpt-tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    # nanoGPT's config/train_shakespeare_char.py (10.7M parameters at a 65-character vocabulary).
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 355M
}
# BERT: bidirectional, post-LN with an embedding LayerNorm, segment embeddings, exact GELU (Devlin et al.; the
# small sizes are Turc et al. 2019). Counts at BERT's 30,522-token vocabulary, with pooler and MLM/NSP heads.
BERT_ARCH = dict(block_size=512, causal=False, norm="post", norm_eps=1e-12, embedding_norm=True, type_vocab_size=2,
                 activation="gelu")
PRESETS.update({
    "bert-tiny": dict(BERT_ARCH, n_layer=2, n_head=2, n_embd=128),  # 4.4M
    "bert-mini": dict(BERT_ARCH, n_layer=4, n_head=4, n_embd=256),  # 11.3M
    "bert-small": dict(BERT_ARCH, n_layer=4, n_head=8, n_embd=512),  # 29.1M
    "bert-medium": dict(BERT_ARCH, n_layer=8, n_head=8, n_embd=512),  # 41.7M
    "bert-base": dict(BERT_ARCH, n_layer=12, n_head=12, n_embd=768),  # 110.1M
})
