"""Bracketed trees in a text column, checked and written the one way tree models read them.

Two notations are read:

    ( ( [MAX 2 ) 9 )                 ListOps: a bare "(" opens a node, whose children follow
    (S (NP the cat) (VP sat))        PTB-style s-expressions: a "(" glued to a symbol opens a node with that label

and written as plain binary brackets, `( left right )` with spaces around every bracket: a label is dropped, a
node of one child is that child (a PTB preterminal `(DT the)` is the word), and a node of k > 2 children is
folded to the left, `( ( a b ) c )`, as ListOps writes its lists. Leaves outside any bracket are the children of
an implicit root. The output is the token stream every model reads (a word-level tokenizer keeps the brackets
as tokens): sequence models see the brackets as symbols, tree models compose along them.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "(", ")"
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_GLUED = re.compile(r"[()][^\s()]|[^\s()][()]")  # a bracket touching a symbol: the text needs the regex


class TreeError(ValueError):
    """What is wrong with a tree, in a few words (the caller names the file and row)."""


def binary_brackets(text: str) -> str:
    """The tree `text` as binary brackets; TreeError if its brackets do not make one tree (unbalanced, or a node
    without children)."""
    if _GLUED.search(text) is None:
        tokens = text.split()  # ListOps' spacing: every bracket stands alone
        if _is_binary(tokens):
            return " ".join(tokens)  # already as the models read it (the published ListOps rows are)
    stack: list[list[str]] = [[]]  # the children, as binary-bracket texts, of each node still open
    label_next = False
    for m in _TOKEN.finditer(text):
        token = m.group()
        if label_next and token not in (OPEN, CLOSE):
            label_next = False
            continue  # a PTB label: the tree models compose the words, not the labels
        label_next = False
        if token == OPEN:
            stack.append([])
            label_next = m.end() < len(text) and text[m.end()] not in " \t\n\r()"  # "(LABEL"
        elif token == CLOSE:
            if len(stack) == 1:
                raise TreeError("a ')' that closes no '('")
            children = stack.pop()
            if not children:
                raise TreeError("an empty node '( )'")
            stack[-1].append(_fold(children))
        else:
            stack[-1].append(token)
    if len(stack) > 1:
        raise TreeError(f"{len(stack) - 1} '(' never closed")
    if not stack[0]:
        raise TreeError("no tree (the text is empty)")
    return _fold(stack[0])


def _is_binary(tokens: list[str]) -> bool:
    """Whether whitespace-split tokens already are one binary tree (a cheap count of each open node's children);
    anything else, mistakes included, is left to the full reading, which names the mistake."""
    children = [0]
    for token in tokens:
        if token == OPEN:
            children.append(0)
        elif token == CLOSE:
            if len(children) == 1 or children.pop() != 2:
                return False
            children[-1] += 1
        else:
            children[-1] += 1
    return children == [1]


def _fold(children: list[str]) -> str:
    """One node's children as a left-branching binary tree (a single child is itself)."""
    tree = children[0]
    for child in children[1:]:
        tree = f"{OPEN} {tree} {child} {CLOSE}"
    return tree
