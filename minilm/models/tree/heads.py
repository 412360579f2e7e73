"""The tree family's task model: a classifier at the root of each row's tree."""

from __future__ import annotations

import torch
import torch.nn as nn

from minilm.models.outputs import HeadConfig, TaskOutput, classification_output
from minilm.models.tree.config import TreeConfig
from minilm.models.tree.model import TreeNet


class TreeClassifier(nn.Module):
    """The root's state (a Tree-LSTM's h) -> dropout -> linear: one label per tree."""

    def __init__(self, cfg: TreeConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.tree = TreeNet(cfg)
        self.drop = nn.Dropout(heads.classifier_dropout)
        self.head = nn.Linear(self.tree.width, heads.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                node_by_node: bool = False) -> TaskOutput:
        root = self.tree(input_ids, attention_mask, node_by_node)  # (B, H)
        logits = self.head(self.drop(root))  # (B, num_labels)
        return classification_output(logits, labels, self.training)
