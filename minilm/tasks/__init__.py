"""The task registry: what `train.task` can name. A task is one entry here plus its module, which says how its
data, collators and evaluation are built (see tasks/base.py for the Task record); its model is the one the model
section's family registers under the task's name (minilm/models).

    causal_lm   GPT pretraining: packed blocks, next-token loss, perplexity
    masked_lm   BERT pretraining: NSP sentence pairs (or packed blocks), dynamic masking
    classify    a classifier over any family's stack, on labelled tables
    seq2seq     an encoder-decoder on source/target pairs, scored on what it decodes
    tag         a label for every word (parts of speech, chunks, entities), on CoNLL-U, JSON(L) or column files
"""

from __future__ import annotations

from tokenizers import Tokenizer

from minilm.config import Config
from minilm.errors import ConfigError
from minilm.tasks import causal_lm, classify, masked_lm, seq2seq, tag
from minilm.tasks.base import Source, Task, TaskData

TASKS: dict[str, Task] = {t.TASK.name: t.TASK for t in (causal_lm, masked_lm, classify, seq2seq, tag)}

__all__ = ["TASKS", "Source", "Task", "TaskData", "get_task", "prepare"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"train.task={name!r} is not a task; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def prepare(cfg: Config, tok: Tokenizer | None = None, source: Source | None = None) -> TaskData:
    """The data side of cfg's task: tokenizer (given, or got as the task does), datasets and collators."""
    return get_task(cfg.train.task).prepare(cfg, tok, source)
