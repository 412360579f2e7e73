"""The benchmark entry point runs every workload end to end (tiny sizes); the FLOP count behind MFU."""

from __future__ import annotations

import pytest

from bench.__main__ import main
from minilm.config import PRESETS, ModelConfig
from minilm.heads import CausalLM
from minilm.model import count_params
from minilm.report import flops_per_token


def test_quick_bench_prints_a_row_per_workload_with_matched_weights(capsys) -> None:
    assert main(["--quick", "--repeats", "1", "--warmup", "0", "--steps", "1", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "tok/s" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["gpt-train", "gpt-sample", "bert-train"]
    for row in rows:
        assert "yes:" in row and row.split("|")[4].strip().endswith("x")  # losses matched, a ratio printed
    assert "torch threads 1" in table


def test_bench_refuses_unknown_workloads() -> None:
    with pytest.raises(SystemExit):
        main(["--only", "gpt-train,nonsense"])


def test_flops_per_token_is_6n_plus_attention() -> None:
    cfg = ModelConfig(**PRESETS["gpt2-small"], vocab_size=50304)
    n = count_params(CausalLM(cfg))
    assert n == 124_475_904  # GPT-2 124M with the vocabulary padded to 50,304
    # about 0.86 GFLOP per token at T=1024, the figure MFU estimates for GPT-2 small use
    assert flops_per_token(cfg, n) == 6 * n + 12 * 12 * 768 * 1024 == pytest.approx(0.86e9, rel=0.01)
