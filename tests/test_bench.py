"""The benchmark entry point runs every workload end to end (tiny sizes); the FLOP count behind MFU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.__main__ import main
from minilm.config import presets
from minilm.models.transformer.config import TransformerConfig
from minilm.models.transformer.heads import CausalLM
from minilm.models import count_params
from minilm.report import training_flops


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_quick_bench_prints_a_row_per_workload_with_matched_weights(precision, capsys) -> None:
    assert main(["--quick", "--repeats", "1", "--warmup", "0", "--steps", "1", "--threads", "1",
                 "--precision", precision]) == 0
    table = capsys.readouterr().out
    assert f"precision: {'bf16 autocast' if precision == 'bf16' else 'fp32'}" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "tok/s" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["gpt-train", "gpt-sample", "bert-train", "s2s-greedy", "s2s-beam5"]
    for row in rows:
        ratio = row.split("|")[4].strip()
        assert "yes:" in row and ratio.endswith("x") and float(ratio[:-1]) > 0  # losses matched, a measured ratio


def test_bench_refuses_unknown_workloads() -> None:
    with pytest.raises(SystemExit):
        main(["--only", "gpt-train,nonsense"])


def test_gpt2_small_is_124m_at_0_86_gflop_per_token() -> None:
    cfg = TransformerConfig(**presets()["gpt2-small"], vocab_size=50304)
    n = count_params(CausalLM(cfg))
    assert n == 124_475_904  # GPT-2 124M with the vocabulary padded to 50,304
    # about 0.86 GFLOP per token at T=1024, the figure MFU estimates for GPT-2 small use
    assert training_flops(cfg, n, torch.tensor([1024])).item() / 1024 == pytest.approx(0.86e9, rel=0.01)


@pytest.mark.parametrize("lengths", [[64, 64], [8, 8, 8, 8]], ids=["full-blocks", "short"])
def test_training_flops_agree_with_torch_flop_counter(lengths) -> None:
    """The attention term follows each sequence's own length (not block_size); the whole count is within the
    few percent that 6N spends on parameters without matmuls (positions, norms, biases)."""
    cfg = TransformerConfig(vocab_size=96, n_layer=2, n_head=2, n_embd=64, block_size=64)
    model = CausalLM(cfg)
    x = torch.randint(0, 96, (len(lengths), lengths[0]))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as countable bmm
        model(x, labels=x).loss.backward()
    counted = counter.get_flop_counts()["Global"]
    real = torch.tensor(lengths)
    assert training_flops(cfg, 0, real).item() == counted[torch.ops.aten.bmm]  # attention alone: exact
    assert training_flops(cfg, count_params(model), real).item() == pytest.approx(counter.get_total_flops(), rel=0.06)


def test_the_recurrent_bench_times_every_layer(capsys) -> None:
    from bench.recurrent import main as recurrent

    assert recurrent(["--shapes", "2x3x8", "--repeats", "1", "--warmup", "0", "--threads", "1"]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert {"SRU (2017), pure torch", "SRU (2018)", "LSTM (torch)", "GRU (torch)",
            "simple LSTM (LSTMCell loop)"} <= set(rows)


def test_sampling_bench_times_each_run_at_each_batch(trained_run, capsys) -> None:
    from bench import sampling

    sampling.main([str(trained_run.run_dir), "--new-tokens", "4", "--batches", "1", "2", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {trained_run.run_dir}")]
    assert len(rows) == 1 and "GPT" in rows[0]
    assert all(float(cell.replace(",", "")) > 0 for cell in rows[0].split("|")[4:6])


def test_equal_time_bench_sizes_the_run_from_its_probe(shakespeare_file, tmp_path, capsys) -> None:
    from bench import equal_time
    from conftest import TINY_YAML, read_metrics

    tiny = f"{TINY_YAML}:data.train_files=[{shakespeare_file}],model.n_layer=1,model.n_embd=32,model.block_size=16"
    equal_time.main([tiny, "--seconds", "0.5", "--out", str(tmp_path), "--probe-rounds", "2"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {TINY_YAML}"))
    rate, steps = float(row.split("|")[2]), int(row.split("|")[3].replace(",", ""))
    assert steps == max(int(rate * 0.5), 60)  # the probes' median steps/s x the budget, at least a probe's own
    assert (tmp_path / "0-probe-0").is_dir() and (tmp_path / "0-probe-1").is_dir()  # two rounds of probes
    assert [r["step"] for r in read_metrics(tmp_path / "0-run") if r["split"] == "val"] == [steps]


def test_equal_time_bench_refuses_no_probes_in_one_line(capsys) -> None:
    from bench import equal_time

    with pytest.raises(SystemExit) as exit_:
        equal_time.main(["configs/shakespeare-lstm.yaml", "--probe-rounds", "0"])
    assert exit_.value.code == 2 and "--probe-rounds must be at least 1" in capsys.readouterr().err
