"""masked_lm: BERT pretraining. Sentence pairs (or packed blocks from prepared shards), dynamic masking,
MLM + next-sentence loss."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.files import load_files, resolve_files, text_column
from minilm.data.lm import iter_texts, load_text_splits
from minilm.data.mlm import MaskingCollator, build_block_datasets, build_mlm_dataset, build_mlm_datasets
from minilm.heads import MaskedLM
from minilm.tasks.base import Source, Task, TaskData, choose_tokenizer, prepared_text, resolve_model, with_vocab


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    model = resolve_model(cfg, source)  # its refusals come before any work
    if cfg.data.nsp:  # sentence pairs are built from the documents in memory
        train_docs, val_docs = load_text_splits(cfg)
        tok = choose_tokenizer(cfg, tok, source, iter_texts(train_docs))
        cfg = with_vocab(cfg, model, tok)
        train, val = build_mlm_datasets(train_docs, val_docs, tok, cfg.data, cfg.model.block_size, cfg.train.seed)
    else:  # MLM only: packed blocks straight from the prepared shards
        data = prepared_text(cfg, tok, source)
        tok = data.tokenizer
        cfg = with_vocab(cfg, model, tok)
        train, val = build_block_datasets(data, cfg.data, cfg.model.block_size, cfg.train.seed)
    p = cfg.data.mlm_probability
    # training masks are drawn afresh each time; validation masks are fixed, so evaluations compare
    return TaskData(cfg, tok, train, val, MaskingCollator(tok, p), MaskingCollator(tok, p, fixed=True),
                    source.state if source else None)


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[torch.utils.data.Dataset, MaskingCollator]:
    docs = text_column(load_files(resolve_files(files, "--data")), cfg.data.text_column, "--data")
    data = build_mlm_dataset(docs, tok, cfg.data, cfg.model.block_size, cfg.train.seed + 1)
    return data, MaskingCollator(tok, cfg.data.mlm_probability, fixed=True)


def metrics(cfg: Config) -> tuple[str, ...]:
    return ("mlm_loss", "mlm_acc", "nsp_acc") if cfg.data.nsp else ("mlm_loss", "mlm_acc")


TASK = Task("masked_lm", MaskedLM, prepare, eval_data, metrics, causal=False,
            reads_prepared=lambda cfg: not cfg.data.nsp)
