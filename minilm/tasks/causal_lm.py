"""causal_lm: GPT pretraining. Documents packed into blocks, next-token loss, perplexity."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.files import load_files, resolve_files, text_column
from minilm.data.lm import PackedBlocks, build_lm_datasets, iter_texts, load_text_splits, tokenize_stream
from minilm.heads import CausalLM
from minilm.tasks.base import Source, Task, TaskData, choose_tokenizer, resolve_model, with_vocab


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    train_docs, val_docs = load_text_splits(cfg)
    tok = choose_tokenizer(cfg, tok, source, iter_texts(train_docs))
    cfg = with_vocab(cfg, resolve_model(cfg, source), tok)
    train, val = build_lm_datasets(cfg, tok, train_docs, val_docs)
    return TaskData(cfg, tok, train, val, init_state=source.state if source else None)


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[torch.utils.data.Dataset, None]:
    docs = text_column(load_files(resolve_files(files, "--data")), cfg.data.text_column, "--data")
    return PackedBlocks(tokenize_stream(docs, tok, cfg.data.num_proc), cfg.model.block_size), None


TASK = Task("causal_lm", CausalLM, prepare, eval_data, metrics=lambda cfg: ("loss", "ppl"), causal=True,
            perplexity=True)
