"""Recursive networks over bracketed trees, composed level by level, bottom-up: the schedule read from the
brackets, the cells (Tree-RNN, binary Tree-LSTM, Child-Sum Tree-LSTM), the composition, and the network (token
embeddings at the leaves -> the cell, height by height -> the roots).

Why the trees come as brackets in the token stream, not as tensors from the collator: the bracketed text says
the whole tree, and a word-level tokenizer keeps each bracket a token, so the classify data path (tables,
encoding, padding, `minilm classify`, `minilm eval`) stays what every family uses, the sequence models read the
very same ids (brackets as symbols), and everything about composing a tree stays in this package. The price is
one pass in Python over each batch's tokens (`schedule`): on ListOps batches of 128 on a CPU, about a sixth of
what the training step's forward and backward take.

Batched by level: a node's height is 1 + its taller child's (leaves 0). All nodes of one height, across the whole
batch, are composed in one matrix product, so a batch costs as many sequential steps as its tallest tree
(O(log n) for a balanced tree of n leaves, O(n) for a chain). `TreeNet(..., node_by_node=True)` composes one
node at a time instead: the same values and gradients (the tests compare them), for measuring what batching buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from minilm.models.tree.config import TreeConfig


@dataclass
class Schedule:
    """A batch of trees as nodes numbered leaves first, then by height (node i's children come before it; the nodes
    of one height are consecutive), and how each height's states reach the height that reads them."""

    leaves: torch.Tensor  # (L,) flat positions (row * T + t) of the leaf tokens: nodes 0 .. L-1
    sizes: list[int]  # nodes per height 0 (the leaves), 1, 2, ...
    left: torch.Tensor  # (N - L,) the children of the inner nodes L .. N-1
    right: torch.Tensor
    roots: torch.Tensor  # (B,) each row's root
    # Every node is read once, by its parent (a root by the output). Height s's states leave in one gather,
    # sends[s] = (order, piece sizes, the height each piece goes to: 0 = the output); height h reads its pieces,
    # concatenated, in the order takes[h] ((2n,): the left children, then the right ones; takes[0]: the roots).
    # Each state is thus copied once forward and once backward, where gathering every height's children from
    # one buffer of all states would cost a buffer-sized gradient per height.
    sends: list[tuple[torch.Tensor, list[int], list[int]]]
    takes: list[torch.Tensor]

    def to(self, device: torch.device) -> Schedule:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Schedule(move(self.leaves), self.sizes, move(self.left), move(self.right), move(self.roots),
                        [(move(order), sizes, to) for order, sizes, to in self.sends], [move(t) for t in self.takes])


def schedule(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, open_id: int, close_id: int) -> Schedule:
    """Read each row's tree from its brackets (the data side has checked them and written them binary; a node of
    more children is folded to the left all the same)."""
    B, T = input_ids.shape
    ids = input_ids.tolist()
    real = attention_mask.tolist() if attention_mask is not None else [[1] * T] * B
    height: list[int] = []  # per node, in the order read
    kids: list[tuple[int, int]] = []  # per node, its children ((-1, -1) for a leaf)
    position: list[int] = []  # per node, its token's flat position (-1 for an inner node)

    def fold(children: list[int]) -> int:
        tree = children[0]
        for child in children[1:]:
            height.append(1 + max(height[tree], height[child]))
            kids.append((tree, child))
            position.append(-1)
            tree = len(height) - 1
        return tree

    roots = []
    for row in range(B):
        stack: list[list[int]] = [[]]  # the children of each node still open
        for t, (token, keep) in enumerate(zip(ids[row], real[row])):
            if not keep:
                continue
            if token == open_id:
                stack.append([])
            elif token == close_id:
                if len(stack) == 1 or not stack[-1]:
                    raise ValueError(f"row {row} of the batch is not a tree in brackets (an unmatched or empty ')')")
                stack[-2].append(fold(stack.pop()))
            else:
                height.append(0)
                kids.append((-1, -1))
                position.append(row * T + t)
                stack[-1].append(len(height) - 1)
        if len(stack) != 1 or not stack[0]:
            raise ValueError(f"row {row} of the batch is not a tree in brackets (a '(' never closed, or no token)")
        roots.append(fold(stack[0]))
    return _routes(np.array(height), np.array(kids).reshape(-1, 2), np.array(position), np.array(roots))


def _routes(height: np.ndarray, kids: np.ndarray, position: np.ndarray, roots: np.ndarray) -> Schedule:
    """The schedule of nodes read in any order (children before parents): numbered by height, and routed."""
    order = np.argsort(height, kind="stable")  # leaves first, each height together, reading order within
    number = np.empty_like(order)
    number[order] = np.arange(len(order))  # node as read -> its number
    sizes = np.bincount(height)
    first = np.concatenate([[0], np.cumsum(sizes)])  # each height's first node
    n_leaves = int(sizes[0])
    left, right = number[kids[order[n_leaves:], 0]], number[kids[order[n_leaves:], 1]]  # (N - L,) each
    # who reads each node, and where: its parent's height and the slot among that height's inputs
    reader = np.zeros(len(order), dtype=np.int64)  # 0: the output
    slot = np.empty(len(order), dtype=np.int64)
    parents = np.arange(n_leaves, len(order))
    parent_height = height[order[parents]]
    k = parents - first[parent_height]  # the parent's place within its height
    reader[left], slot[left] = parent_height, k
    reader[right], slot[right] = parent_height, k + sizes[parent_height]
    root = number[roots]
    reader[root], slot[root] = 0, np.arange(len(roots))
    sends, arriving = [], [[] for _ in sizes]  # arriving[h]: the slots of height h's inputs, in arrival order
    for h in range(len(sizes)):
        span = np.arange(first[h], first[h + 1])
        by_reader = span[np.lexsort((slot[span], reader[span]))]  # by the height reading them, then slot
        to, count = np.unique(reader[by_reader], return_counts=True)
        sends.append((torch.from_numpy(by_reader - first[h]), count.tolist(), to.tolist()))
        for r, slots in zip(to.tolist(), np.split(slot[by_reader], np.cumsum(count)[:-1])):
            arriving[r].append(slots)
    takes = [torch.from_numpy(np.argsort(np.concatenate(a)) if a else np.zeros(0, dtype=np.int64))
             for a in arriving]
    return Schedule(torch.from_numpy(position[order[:n_leaves]]), sizes.tolist(), torch.from_numpy(left),
                    torch.from_numpy(right), torch.from_numpy(root), sends, takes)


class TreeRNNCell(nn.Module):
    """Socher et al.'s recursive network: parent = tanh(W [left; right] + b). The leaves are the token embeddings
    (projected when model.hidden_size differs from n_embd)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.hidden = self.state_size = hidden
        self.leaf = nn.Linear(n_embd, hidden) if n_embd != hidden else None
        self.node = nn.Linear(2 * hidden, hidden)

    def leaves(self, x: torch.Tensor) -> torch.Tensor:
        return self.leaf(x) if self.leaf is not None else x  # (L, E) -> (L, H)

    def compose(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.node(torch.cat([left, right], -1)))  # (n, H), (n, H) -> (n, H)

    def output(self, state: torch.Tensor) -> torch.Tensor:
        return state


class TreeLSTMCell(nn.Module):
    """Tai et al.'s binary (N-ary, N = 2) Tree-LSTM for constituency trees: a leaf reads its token, c = i * u,
    h = o * tanh(c); an inner node reads only its children, with a forget gate for each,
    c = i * u + f_l * c_l + f_r * c_r, h = o * tanh(c). A node's state is [h; c]."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.hidden, self.state_size = hidden, 2 * hidden
        self.leaf = nn.Linear(n_embd, 3 * hidden)  # i, o, u from the token
        self.node = nn.Linear(2 * hidden, 5 * hidden)  # i, f_left, f_right, o, u from [h_left; h_right]
        with torch.no_grad():  # forget gates start open: ListOps' left-branching lists make chains of ~100 nodes
            self.node.bias[hidden:3 * hidden].fill_(1.0)

    def _state(self, i: torch.Tensor, o: torch.Tensor, u: torch.Tensor, carried: torch.Tensor | float) -> torch.Tensor:
        c = torch.sigmoid(i) * torch.tanh(u) + carried
        return torch.cat([torch.sigmoid(o) * torch.tanh(c), c], -1)  # (n, 2H)

    def leaves(self, x: torch.Tensor) -> torch.Tensor:
        i, o, u = self.leaf(x).chunk(3, -1)  # 3 x (L, H)
        return self._state(i, o, u, 0.0)  # (L, 2H)

    def compose(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        H = self.hidden
        i, f_l, f_r, o, u = self.node(torch.cat([left[:, :H], right[:, :H]], -1)).chunk(5, -1)  # 5 x (n, H)
        carried = torch.sigmoid(f_l) * left[:, H:] + torch.sigmoid(f_r) * right[:, H:]  # (n, H)
        return self._state(i, o, u, carried)  # (n, 2H)

    def output(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, :self.hidden]  # h of [h; c]


class ChildSumTreeLSTMCell(TreeLSTMCell):
    """Tai et al.'s Child-Sum Tree-LSTM: the gates read the sum of the children's h, so the children are unordered,
    and each child's forget gate reads that child's own h (one matrix shared by all children)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__(n_embd, hidden)
        self.node = nn.Linear(hidden, 3 * hidden)  # i, o, u from h_left + h_right
        self.forget = nn.Linear(hidden, hidden)  # f_k from h_k
        with torch.no_grad():
            self.forget.bias.fill_(1.0)

    def compose(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        H, n = self.hidden, len(left)
        i, o, u = self.node(left[:, :H] + right[:, :H]).chunk(3, -1)  # 3 x (n, H)
        f = torch.sigmoid(self.forget(torch.cat([left[:, :H], right[:, :H]])))  # (2n, H): the left children's first
        return self._state(i, o, u, f[:n] * left[:, H:] + f[n:] * right[:, H:])  # (n, 2H)


CELLS = {"tree_rnn": TreeRNNCell, "tree_lstm": TreeLSTMCell, "tree_lstm_childsum": ChildSumTreeLSTMCell}


def compose_by_level(cell: nn.Module, leaves: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """The roots' states, (B, S): one cell step per height for all the batch's nodes of that height, each height's
    states sent on to the heights that read them (Schedule.sends)."""
    arrived: list[list[torch.Tensor]] = [[] for _ in sched.sizes]

    def send(h: int, states: torch.Tensor) -> None:
        order, sizes, to = sched.sends[h]
        for reader, piece in zip(to, states.index_select(0, order).split(sizes)):
            arrived[reader].append(piece)

    send(0, leaves)
    for h in range(1, len(sched.sizes)):
        inputs = torch.cat(arrived[h]).index_select(0, sched.takes[h])  # (2n, S): left children, then right
        n = sched.sizes[h]
        send(h, cell.compose(inputs[:n], inputs[n:]))  # (n, S)
    return torch.cat(arrived[0]).index_select(0, sched.takes[0])  # (B, S)


def compose_node_by_node(cell: nn.Module, leaves: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """The same roots' states, (B, S), one node at a time (the recursion as written): the reference for the
    tests, and the baseline level batching is measured against."""
    states = list(leaves.unbind(0))
    for a, b in zip(sched.left.tolist(), sched.right.tolist()):
        states.append(cell.compose(states[a][None], states[b][None])[0])
    return torch.stack([states[r] for r in sched.roots.tolist()])


class TreeNet(nn.Module):
    """Token embeddings at the leaves -> dropout -> the cell composed bottom-up -> each row's root, (B, H)."""

    def __init__(self, cfg: TreeConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.cell = CELLS[cfg.arch](cfg.n_embd, cfg.tree_hidden)
        self.width = cfg.tree_hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                node_by_node: bool = False) -> torch.Tensor:
        sched = schedule(input_ids, attention_mask, self.cfg.open_id, self.cfg.close_id).to(input_ids.device)
        x = self.drop(self.tok_emb(input_ids.flatten()[sched.leaves]))  # (L, E)
        compose = compose_node_by_node if node_by_node else compose_by_level
        return self.cell.output(compose(self.cell, self.cell.leaves(x), sched))  # (B, H)
