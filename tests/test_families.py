"""A model family is one registry entry: a toy family defined here (a bag of embeddings) trains a language model and
a classifier through the real loop and CLI, samples through the decoding protocol and is refused what it lacks,
without a line of the package knowing it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import TINY_YAML, tiny_overrides, uniform_loss
from minilm import config as config_mod
from minilm import models
from minilm.cli import main
from minilm.config import ModelConfig, check_field, load_config
from minilm.errors import ConfigError
from minilm.generate import generate
from minilm.models import Family, HeadConfig
from minilm.models.outputs import TaskOutput, classification_output, lm_loss, pool
from minilm.run import load_run
from minilm.train import train


@dataclass
class BagConfig(ModelConfig):
    """model.arch=bag: a token's next-token logits from the mean embedding of the tokens up to it."""

    family: ClassVar[str] = "bag"
    arch: str = "bag"
    scale: float = 1.0  # the family's own field

    def validate(self) -> None:
        super().validate()
        check_field(self.scale > 0, "model.scale", "a positive number", self.scale)


class BagLM(nn.Module):
    def __init__(self, cfg: BagConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg, self.label_smoothing = cfg, heads.label_smoothing
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> TaskOutput:
        x = self.emb(input_ids).cumsum(1)  # (B, T, C)
        x = x / torch.arange(1, x.size(1) + 1, device=x.device)[None, :, None] * self.cfg.scale  # running means
        logits = F.linear(x, self.emb.weight)  # (B, T, V)
        return TaskOutput(logits) if labels is None else lm_loss(logits, labels, self.label_smoothing, self.training)


class BagClassifier(nn.Module):
    def __init__(self, cfg: BagConfig, heads: HeadConfig = HeadConfig()):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, heads.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> TaskOutput:
        logits = self.head(pool(self.emb(input_ids), attention_mask, "mean"))  # (B, num_labels)
        return classification_output(logits, labels, self.training)


class BagDecoder:
    """No cache: every step reads the whole sequence again (after prompts of different lengths, each row's own
    tokens: its prompt without the padding, then what followed)."""

    max_len = None
    window = None

    def __init__(self, model: BagLM, rows: int, use_cache: bool, source=None, source_mask=None):
        self.model, self.lengths, self.width = model, None, 0

    def start(self, prefix: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        self.lengths, self.width = lengths, prefix.size(1)
        return self.step(prefix)

    def step(self, seq: torch.Tensor) -> torch.Tensor:
        if self.lengths is None:
            return self.model(seq).logits[:, -1]
        rows = [torch.cat([s[:n], s[self.width:]]) for s, n in zip(seq, self.lengths.tolist())]
        return torch.stack([self.model(r[None]).logits[0, -1] for r in rows])  # (rows, V)

    def reorder(self, rows: torch.Tensor) -> None:
        if self.lengths is not None:
            self.lengths = self.lengths[rows]


BAG = Family("bag", BagConfig, ("bag",), tasks={"causal_lm": BagLM, "classify": BagClassifier}, backbone=("emb.",),
             decoder=BagDecoder)


@pytest.fixture
def bag_family():
    models.register(BAG)
    yield BAG
    del models.FAMILIES["bag"], config_mod.MODEL_CONFIGS["bag"]


def test_a_toy_family_trains_samples_and_classifies_through_the_cli(bag_family, shakespeare_file, tmp_path, capsys):
    lm = tmp_path / "lm"
    cfg = load_config(None, tiny_overrides(shakespeare_file, lm, "model.arch=bag", "model.scale=2.0",
                                           "train.max_steps=6", "train.eval_interval=6"))
    assert type(cfg.model) is BagConfig and cfg.model.scale == 2.0
    metrics = train(cfg)
    capsys.readouterr()
    saved, model, _ = load_run(lm)
    assert type(model) is BagLM and type(saved.model) is BagConfig and saved.model.scale == 2.0
    assert set(metrics) == {"val_loss", "val_ppl"} and metrics["val_loss"] < uniform_loss(saved.model.vocab_size)
    assert main(["sample", str(lm), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    prompt = torch.tensor([[1, 2, 3]])
    greedy = torch.stack(list(generate(model, prompt, 5, temperature=0)), 1)  # (1, 5) through BagDecoder
    seq = prompt
    for _ in range(5):  # the same, step by step from the model itself
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq[:, 3:])
    assert main(["sample", str(lm), "--prompt", "ROMEO:", "--max-new-tokens", "6", "--beams", "3",
                 "--n-best", "2"]) == 0
    assert capsys.readouterr().out.count("] ROMEO:") == 2  # the two best, with their scores

    table = tmp_path / "t.tsv"
    rows = [f"{w} {w} good\tpos" for w in "abcdefgh"] + [f"{w} bad {w}\tneg" for w in "abcdefgh"]
    table.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    cls = tmp_path / "cls"
    assert main(["finetune", str(TINY_YAML),
                 f"data.train_files=[{table}]", f"data.val_files=[{table}]", f"train.out_dir={cls}",
                 "model.arch=bag", "model.n_embd=16", "train.max_steps=40", "train.eval_interval=40",
                 "train.batch_size=8", "train.lr=5e-2", "train.warmup_steps=0"]) == 0
    assert main(["classify", str(cls), "a bad a"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("neg\t")
    assert main(["eval", str(cls), "--data", str(table)]) == 0
    assert "accuracy: 1.0000" in capsys.readouterr().out


def test_a_toy_family_is_refused_what_it_lacks(bag_family, shakespeare_file, tmp_path, capsys):
    with pytest.raises(ConfigError, match="train.task=masked_lm is not something a bag model .* it can do "
                                          "causal_lm, classify: choose a transformer model.arch"):
        train(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "a", "model.arch=bag",
                                               "train.task=masked_lm", "tokenizer.kind=wordpiece")))
    with pytest.raises(ConfigError, match="model.scale is a setting of bag models"):
        load_config(None, tiny_overrides(shakespeare_file, tmp_path / "a", "model.scale=2.0"))
    with pytest.raises(ConfigError, match="model.n_head is a setting of transformer models"):
        load_config(None, [f"data.train_files=[{shakespeare_file}]", "model.arch=bag", "model.n_head=2"])
    with pytest.raises(ConfigError, match="train.tbptt carries a state .* bag models"):
        train(load_config(None, tiny_overrides(shakespeare_file, tmp_path / "a", "model.arch=bag",
                                               "train.tbptt=true")))
    assert not (tmp_path / "a").exists()
    lm = tmp_path / "lm"
    train(load_config(None, tiny_overrides(shakespeare_file, lm, "model.arch=bag", "train.max_steps=2",
                                           "train.eval_interval=2")))
    assert main(["export", str(lm), str(tmp_path / "hf")]) == 2
    assert "a bag run (model.arch=bag) has no transformers layout" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_a_toy_family_is_evaluated_zero_and_few_shot_through_its_decoder(bag_family, tmp_path, capsys):
    """In-context scoring reads a family only through its decoder: the shared-prompt path and reading each option
    whole give the same table."""
    from conftest import write_run
    from minilm.config import config_from_dict
    from minilm.tokenizer import train_char

    rows = [(f"{w} good", "1") for w in "abcdef"] + [(f"{w} bad", "0") for w in "abcdef"]
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    (tmp_path / "task.yaml").write_text('kind: choice\ntest_files: [t.tsv]\ntrain_files: [t.tsv]\n'
                                        'template: "Text: {text}\\nIt is"\noptions: {0: bad, 1: good}\n'
                                        'content_free: [""]\n', encoding="utf-8")
    tok = train_char(["Text: It is good bad abcdef\n"])
    cfg = config_from_dict({"model": {"arch": "bag", "n_embd": 8, "vocab_size": tok.get_vocab_size()},
                            "data": {"train_files": ["unused.txt"]}})
    torch.manual_seed(0)
    lm = BagLM(cfg.model)
    nn.init.normal_(lm.emb.weight, std=1.0)  # options far from ties, which float rounding could flip
    run = write_run(tmp_path / "bag", cfg, lm, tok)
    tables = []
    for extra in ([], ["--no-cache"]):
        assert main(["eval", str(run), "--task", str(tmp_path / "task.yaml"), "--shots", "0,3", *extra]) == 0
        tables.append([line for line in capsys.readouterr().out.splitlines() if line.lstrip()[:1].isdigit()])
    assert len(tables[0]) == 2 and [t.rsplit(None, 1)[0] for t in tables[0]] == [t.rsplit(None, 1)[0] for t in tables[1]]
