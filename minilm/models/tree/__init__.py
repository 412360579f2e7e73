"""The tree family: recursive networks over bracketed trees (model.arch=tree_lstm, tree_lstm_childsum, tree_rnn),
composed level by level across the batch, classifying each tree at its root. They read trees, not sequences:
they neither generate text nor have a transformers layout, and the tasks they lack (causal_lm, masked_lm,
seq2seq) are refused by the registry in one line."""

from __future__ import annotations

from minilm.models.family import Family
from minilm.models.tree.config import ARCHS, TreeConfig
from minilm.models.tree.heads import TreeClassifier

FAMILY = Family("tree", TreeConfig, ARCHS, tasks={"classify": TreeClassifier}, backbone=("tree.",))
