"""causal_lm: GPT pretraining. Prepared token shards (or streamed text) cut into blocks, next-token loss,
perplexity."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.batch import this_process
from minilm.data.lm import PackedBlocks, build_lm_datasets, build_streamed_lm_datasets
from minilm.data.prepared import prepared_files
from minilm.tasks.base import Source, Task, TaskData, prepared_text, resolve_model, streamed_text, with_vocab


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    model = resolve_model(cfg, source)  # its refusals come before any work
    if cfg.data.streaming:
        data = streamed_text(cfg, tok, source)
        cfg = with_vocab(cfg, model, data.tokenizer)
        train, val = build_streamed_lm_datasets(cfg, data)
    else:
        data = prepared_text(cfg, tok, source)
        cfg = with_vocab(cfg, model, data.tokenizer)
        train, val = build_lm_datasets(cfg, data, this_process())
    return TaskData(cfg, data.tokenizer, train, val, init_state=source.state if source else None)


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[torch.utils.data.Dataset, None]:
    with prepared_files(cfg, tok, files) as data:
        return PackedBlocks(data.stream("train"), cfg.model.block_size), None


TASK = Task("causal_lm", prepare, eval_data, metrics=lambda cfg: ("loss", "ppl"),
            causal=True, perplexity=True, prepared=True)
