"""The tree family's model section: a recursive network over bracketed trees (model.arch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

from minilm.config import Config, ModelConfig, check_field
from minilm.errors import ConfigError

ARCHS = ("tree_lstm", "tree_rnn", "tree_lstm_childsum")
# the brackets as minilm/data/trees.py writes every tree, each its own token under a word-level tokenizer
OPEN, CLOSE = "(", ")"


@dataclass
class TreeConfig(ModelConfig):
    """model.arch=tree_lstm (Tai et al. 2015, the binary constituency Tree-LSTM), tree_lstm_childsum (their
    Child-Sum Tree-LSTM, children unordered) or tree_rnn (Socher et al.'s recursive network, parent =
    tanh(W [left; right] + b)): token embeddings at the leaves of each row's tree,
    composed bottom-up to its root, which the classifier reads. The trees come as brackets in the token stream
    (data.text_column holds them; a word-level tokenizer keeps each bracket a token). n_layer is not used: a
    tree's depth is its data's. block_size is the longest tree, in tokens with its brackets (none is cut)."""

    family: ClassVar[str] = "tree"
    reads_trees: ClassVar[bool] = True

    arch: str = "tree_lstm"
    hidden_size: int = 0  # the width of a node's state; 0: n_embd
    # the tokenizer's ids of "(" and ")", which the model builds each tree from; filled in from the tokenizer
    open_id: int = -1
    close_id: int = -1

    @property
    def tree_hidden(self) -> int:
        return self.hidden_size or self.n_embd

    def validate(self) -> None:
        super().validate()
        check_field(self.arch in ARCHS, "model.arch", ", ".join(map(repr, ARCHS)), self.arch)
        check_field(self.hidden_size >= 0, "model.hidden_size", "0 (n_embd) or a positive integer", self.hidden_size)
        check_field(self.encoder_layers == 0, "model.encoder_layers", "0: a tree model is no encoder-decoder",
                    self.encoder_layers)

    def check(self, cfg: Config) -> None:
        if cfg.classify.pooling not in (None, "last"):
            raise ConfigError(f"classify.pooling={cfg.classify.pooling} is not how a model.arch={self.arch} "
                              "classifies: it reads its tree's root (the last node composed); drop classify.pooling")
        if cfg.classify.text_pair_column:
            raise ConfigError(f"model.arch={self.arch} reads one tree per row, not pairs: drop "
                              "classify.text_pair_column")
        if cfg.tokenizer.kind != "word" and not cfg.tokenizer.path:
            raise ConfigError(f"tokenizer.kind={cfg.tokenizer.kind} would not keep each bracket and word of a tree "
                              f"one token, as model.arch={self.arch} reads them: set tokenizer.kind=word")

    def for_tokenizer(self, token_id: Callable[[str], int | None]) -> TreeConfig:
        ids = token_id(OPEN), token_id(CLOSE)
        if None in ids:
            raise ConfigError(f"the tokenizer has no {OPEN!r} or {CLOSE!r} token, which model.arch={self.arch} "
                              "builds its trees from: train a tokenizer.kind=word tokenizer on the bracketed trees")
        return dataclasses.replace(self, open_id=ids[0], close_id=ids[1])

    def default_task(self) -> str:
        return "classify"

    def describe(self) -> str:
        cell = {"tree_lstm": "binary Tree-LSTM", "tree_lstm_childsum": "Child-Sum Tree-LSTM",
                "tree_rnn": "recursive network (tanh)"}[self.arch]
        return (f"a {cell} over bracketed trees, nodes {self.tree_hidden} wide, leaves {self.n_embd}-wide token "
                f"embeddings (trees of up to {self.block_size} tokens)")
