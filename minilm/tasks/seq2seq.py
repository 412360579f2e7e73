"""seq2seq: an encoder-decoder trained on source/target pairs from tables (teacher forcing, optional label
smoothing), scored by the teacher-forced loss and token accuracy and by what it decodes (sequence and token
error rates against all the targets of each source)."""

from __future__ import annotations

import datasets
from tokenizers import Tokenizer

from minilm.config import Config
from minilm.data.tables import load_table, train_val_tables
from minilm.data.seq2seq import PairCollator, References, encode_pairs, end_id, table_texts
from minilm.errors import ConfigError
from minilm.tasks.base import Source, Task, TaskData, choose_tokenizer, ordered, resolve_model, with_vocab


def prepare(cfg: Config, tok: Tokenizer | None, source: Source | None) -> TaskData:
    if source is not None and source.task != "seq2seq":
        raise ConfigError(f"model.init_from={cfg.model.init_from!r} is a {source.task} model: a seq2seq run starts "
                          "from another seq2seq run (or from scratch: unset model.init_from)")
    model = resolve_model(cfg, source)
    train_tab, val_tab = train_val_tables(cfg)
    tok = choose_tokenizer(cfg, tok, source, table_texts(train_tab, cfg))
    cfg = with_vocab(cfg, model, tok)
    train = encode_pairs(train_tab, tok, cfg, "data.train_files")
    val = encode_pairs(val_tab, tok, cfg, "data.val_files" if cfg.data.val_files else "the validation rows")
    collate = PairCollator(end_id(tok))
    return TaskData(cfg, tok, *ordered(cfg, train, val), collate, collate,
                    source.state if source else None, references=References.of(val, end_id(tok)))


def eval_data(cfg: Config, tok: Tokenizer, files: list[str]) -> tuple[datasets.Dataset, PairCollator]:
    return encode_pairs(load_table(files, "--data"), tok, cfg, files[0]), PairCollator(end_id(tok))


TASK = Task("seq2seq", prepare, eval_data,
            metrics=lambda cfg: ("loss", "ppl", "token_acc", "seq_error", "token_error"), causal=True, perplexity=True,
            encoder_decoder=True)
