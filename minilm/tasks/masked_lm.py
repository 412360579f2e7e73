"""masked_lm: BERT pretraining from prepared shards: NSP sentence pairs (or packed blocks), dynamic masking,
MLM + next-sentence loss."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.mlm import (MaskingCollator, build_block_datasets, build_eval_dataset, build_nsp_datasets,
                             build_streamed_block_datasets)
from minilm.data.prepared import prepared_files
from minilm.errors import ConfigError
from minilm.tasks.base import Source, Task, TaskData, prepared_text, resolve_model, streamed_text, with_vocab


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    model = resolve_model(cfg, source)  # its refusals come before any work
    if cfg.data.streaming:
        if cfg.data.nsp:
            raise ConfigError("data.streaming=true gives packed blocks (MLM only), not sentence pairs: set "
                              "data.nsp=false, or data.streaming=false for next-sentence prediction")
        data = streamed_text(cfg, tok, source)
        cfg = with_vocab(cfg, model, data.tokenizer)
        train, val = build_streamed_block_datasets(data, cfg.model.block_size)
    else:
        data = prepared_text(cfg, tok, source, sentences=cfg.data.nsp)
        cfg = with_vocab(cfg, model, data.tokenizer)
        build = build_nsp_datasets if cfg.data.nsp else build_block_datasets  # sentence pairs, or packed blocks
        train, val = build(data, cfg.data, cfg.model.block_size, cfg.train.seed)
    p = cfg.data.mlm_probability
    # training masks are drawn afresh each time; validation masks are fixed, so evaluations compare
    return TaskData(cfg, data.tokenizer, train, val, MaskingCollator(data.tokenizer, p),
                    MaskingCollator(data.tokenizer, p, fixed=True), source.state if source else None)


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[torch.utils.data.Dataset, MaskingCollator]:
    with prepared_files(cfg, tok, files, sentences=cfg.data.nsp) as data:
        examples = build_eval_dataset(data, cfg.data, cfg.model.block_size, cfg.train.seed + 1)
    return examples, MaskingCollator(tok, cfg.data.mlm_probability, fixed=True)


def metrics(cfg: Config) -> tuple[str, ...]:
    return ("mlm_loss", "mlm_acc", "nsp_acc") if cfg.data.nsp else ("mlm_loss", "mlm_acc")


TASK = Task("masked_lm", prepare, eval_data, metrics, causal=False, prepared=True)
