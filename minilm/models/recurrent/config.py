"""The recurrent family's model section: a stack of RNN, LSTM, GRU or SRU layers (model.arch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minilm.config import Config, ModelConfig, check_field
from minilm.errors import ConfigError

ARCHS = ("rnn", "lstm", "gru", "sru")
SRU_VERSIONS = (2017, 2018)


@dataclass
class RecurrentConfig(ModelConfig):
    """model.arch=rnn (Elman, tanh), lstm, gru or sru: n_layer layers of hidden_size, dropout between them. Nothing
    has positions: block_size is the length of a training block (and of an encoder-decoder's longest output)."""

    family: ClassVar[str] = "recurrent"

    arch: str = "lstm"
    hidden_size: int = 0  # the state's width; 0: n_embd
    bidirectional: bool = False  # a second direction reading right to left (encoders and classifiers, not LMs)
    residual: bool = False  # x + layer(x) between stacked layers (where the widths agree)
    # a LayerNorm over each layer's output (before dropout and the residual): the option the SRU's reference code
    # offers for deep stacks, whose gates read only their input; measured to help a deep SRU, not a 2-layer LSTM
    layer_norm: bool = False
    # an encoder-decoder's attention score between a decoder state and the encoder states: "dot" (Luong's general
    # score, h W e) or "additive" (Bahdanau's, v . tanh(W h + U e))
    attention: str = "dot"
    # model.arch=sru: 2017, the lecture's unit (Lei et al., "Training RNNs as Fast as CNNs"; gates from x_t only,
    # so the recurrence is linear and the loop compiled), or 2018 (gates also read the state, a step-by-step
    # loop). A run's config.json without this field was written when sru meant the 2018 unit, and reads as 2018.
    sru_version: int = 2017

    @property
    def rnn_hidden(self) -> int:
        return self.hidden_size or self.n_embd

    def validate(self) -> None:
        super().validate()
        check_field(self.arch in ARCHS, "model.arch", ", ".join(map(repr, ARCHS)), self.arch)
        check_field(self.hidden_size >= 0, "model.hidden_size", "0 (n_embd) or a positive integer", self.hidden_size)
        check_field(self.attention in ("dot", "additive"), "model.attention", "'dot' or 'additive'", self.attention)
        check_field(self.sru_version in SRU_VERSIONS, "model.sru_version", "2017 or 2018", self.sru_version)

    def check(self, cfg: Config) -> None:
        if cfg.classify.pooling == "cls":
            raise ConfigError(f"classify.pooling=cls reads a [CLS] pooler, which a model.arch={self.arch} stack has "
                              "not: use classify.pooling=last, mean or max")

    def decode_row_bytes(self, width: int = 0, attention: int = 0) -> int:
        return super().decode_row_bytes(width=self.rnn_hidden)

    def describe(self) -> str:
        way = "bidirectional " if self.bidirectional else ""
        layers = f"{self.encoder_layers} + {self.n_layer}" if self.encoder_layers else f"{self.n_layer}"
        cell = f"SRU ({self.sru_version})" if self.arch == "sru" else self.arch.upper()
        # no position table: block_size is only the length of its training blocks
        norm = ", each layer's output layer-normalized" if self.layer_norm else ""
        return (f"a recurrent {way}{cell} stack, {layers} layers x {self.rnn_hidden} wide{norm}, no position table "
                f"(trained on {self.block_size}-token blocks)")
