"""The tree family: ListOps data, bracketed trees read and refused, level batching against node-by-node
composition, and a Tree-LSTM / Tree-RNN classifier through the real loop and CLI."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from conftest import ROOT
from minilm.cli import main
from minilm.config import load_config
from minilm.data.trees import TreeError, binary_brackets
from minilm.errors import ConfigError, DataError
from minilm.models.tree.config import TreeConfig
from minilm.models.tree.model import TreeNet, compose_by_level, compose_node_by_node, schedule
from minilm.train import train

LISTOPS_TEST = ROOT / "data" / "listops" / "test_d20s.tsv"


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare", ROOT / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generator_follows_the_published_grammar():
    prep = _prepare_module()
    rows = [line.split("\t") for line in LISTOPS_TEST.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 10_000
    assert all(int(label) == prep.listops_value(expr) for label, expr in rows)  # the evaluator agrees with all labels
    seen = {expr for _, expr in rows}
    made = prep.listops_rows(random.Random(5), 300, set(seen))
    assert made == prep.listops_rows(random.Random(5), 300, set(seen))  # seeded
    assert len({expr for _, expr in made}) == 300 and not seen & {expr for _, expr in made}  # unique, none of test
    for label, expr in made:
        assert int(label) == prep.listops_value(expr) and binary_brackets(expr) == expr  # binary, as published


def test_bracketed_trees_in_both_notations():
    assert binary_brackets("( ( [MAX 2 ) 9 )") == "( ( [MAX 2 ) 9 )"
    assert binary_brackets("(3 (2 It) (4 (2 's) (3 great)))") == "( It ( 's great ) )"  # labels, preterminals
    assert binary_brackets("( (S (NP the big cat) (VP sat)) )") == "( ( ( the big ) cat ) sat )"  # folded left
    assert binary_brackets("7") == "7"
    for bad, why in [("( ( [SM 6 ) 5", "never closed"), ("( a ) )", "closes no"), ("( ( ) a )", "empty node"),
                     ("(NP)", "empty node"), ("  ", "empty")]:
        with pytest.raises(TreeError, match=why):
            binary_brackets(bad)


def test_ptb_trees_in_a_table_are_read_and_a_bad_one_named(tmp_path):
    from minilm.data.tables import load_table

    table = tmp_path / "sst.tsv"
    table.write_text("sentence\tlabel\n(3 (2 It) (4 (2 's) (3 great)))\t1\n\n(1 (2 a) (1 bore))\t0\n", encoding="utf-8")
    assert load_table([str(table)], "data.train_files", "sentence")["sentence"] == ["( It ( 's great ) )", "( a bore )"]
    table.write_text("sentence\tlabel\n(3 (2 It) (4 (2 's) (3 great)))\t1\n(1 (2 a) (1 bore)))\t0\n", encoding="utf-8")
    with pytest.raises(DataError, match="sst.tsv' line 3 is not a tree in brackets \\(a '\\)' that closes no"):
        load_table([str(table)], "data.train_files", "sentence")


def _batch(trees: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Trees as a right-padded batch of ids (0 and 1 the brackets), its mask, and the vocabulary size."""
    vocab = {"(": 0, ")": 1}
    ids = [[vocab.setdefault(t, len(vocab)) for t in binary_brackets(tree).split()] for tree in trees]
    x = torch.full((len(ids), max(map(len, ids))), 1)
    mask = torch.zeros_like(x)
    for i, row in enumerate(ids):
        x[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return x, mask, len(vocab)


TREES = ["( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )", "5", "(S (NP a b) (VP c (NP d e f)))",
         "( ( ( a b ) ( c d ) ) ( ( e f ) ( g h ) ) )", "( x y )"]


def test_a_batch_costs_as_many_steps_as_its_tallest_tree():
    x, mask, _ = _batch(TREES)
    sched = schedule(x, mask, 0, 1)
    assert sched.sizes[0] == 8 + 1 + 6 + 8 + 2  # the leaves
    assert len(sched.sizes) - 1 == 5  # the first tree's height; the balanced 8 leaves take 3 steps
    assert len(schedule(*_batch(TREES[3:4])[:2], 0, 1).sizes) - 1 == 3


@pytest.mark.parametrize("arch", ["tree_lstm", "tree_rnn", "tree_lstm_childsum"])
def test_level_batching_equals_node_by_node_composition(arch):
    torch.manual_seed(0)
    x, mask, vocab = _batch(TREES)
    net = TreeNet(TreeConfig(arch=arch, vocab_size=vocab, n_embd=12, hidden_size=10, open_id=0, close_id=1)).double()
    grads = []
    for node_by_node in (False, True):
        net.zero_grad()
        out = net(x, mask, node_by_node=node_by_node)  # (B, H)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (level, g_level), (node, g_node) = grads
    torch.testing.assert_close(level, node, rtol=1e-12, atol=1e-12)
    for name in g_level:
        torch.testing.assert_close(g_level[name], g_node[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", ["tree_lstm", "tree_rnn", "tree_lstm_childsum"])
def test_a_trees_output_does_not_depend_on_its_batch(arch):
    torch.manual_seed(0)
    x, mask, vocab = _batch(TREES)
    net = TreeNet(TreeConfig(arch=arch, vocab_size=vocab, n_embd=8, open_id=0, close_id=1)).double()
    together = net(x, mask)
    for i in range(len(TREES)):
        n = int(mask[i].sum())
        alone = net(x[i:i + 1, :n], mask[i:i + 1, :n])
        torch.testing.assert_close(alone[0], together[i], rtol=1e-12, atol=1e-12)
    leaves = net.cell.leaves(net.tok_emb(x.flatten()[schedule(x, mask, 0, 1).leaves]))
    assert compose_by_level(net.cell, leaves, schedule(x, mask, 0, 1)).shape == (len(TREES), net.cell.state_size)
    assert compose_node_by_node(net.cell, leaves, schedule(x, mask, 0, 1)).shape == (len(TREES), net.cell.state_size)


def test_child_sum_reads_its_children_unordered():
    torch.manual_seed(0)
    x, mask, vocab = _batch(["( ( a b ) c )", "( c ( b a ) )"])
    for arch, same in [("tree_lstm_childsum", True), ("tree_lstm", False)]:
        out = TreeNet(TreeConfig(arch=arch, vocab_size=vocab, n_embd=8, open_id=0, close_id=1)).double()(x, mask)
        assert torch.allclose(out[0], out[1], rtol=0, atol=1e-12) == same


def _listops_table(path, rows: int = 48):
    prep = _prepare_module()
    made = [r for r in prep.listops_rows(random.Random(1), 4 * rows, set()) if len(r[1].split()) <= 60][:rows]
    path.write_text("label\texpression\n" + "".join(f"{label}\t{expr}\n" for label, expr in made), encoding="utf-8")
    return path


def _tree_overrides(table, out_dir, *extra: str) -> list[str]:
    return [f"data.train_files=[{table}]", f"data.val_files=[{table}]", f"train.out_dir={out_dir}",
            "data.text_column=expression", "tokenizer.kind=word", "model.n_embd=16", "model.block_size=512",
            "train.batch_size=16", "train.max_steps=4", "train.eval_interval=4", "train.warmup_steps=0",
            "log.log_interval=2", *extra]


@pytest.mark.parametrize("arch", ["tree_lstm", "tree_rnn"])
def test_a_tree_classifier_trains_classifies_and_evaluates(arch, tmp_path, capsys):
    table = _listops_table(tmp_path / "listops.tsv")
    run = tmp_path / "run"
    cfg = load_config(None, _tree_overrides(table, run, f"model.arch={arch}"))
    assert cfg.train.task == "classify"  # a tree model's own task
    metrics = train(cfg)
    assert {"val_accuracy", "val_macro_f1", "val_loss"} <= set(metrics)
    assert main(["eval", str(run), "--data", str(table)]) == 0
    out = capsys.readouterr().out
    assert "48 examples" in out and "accuracy:" in out and "confusion" in out.lower()
    assert main(["classify", str(run), "( ( ( [MAX 2 ) 9 ) ] )"]) == 0
    label = capsys.readouterr().out.split("\t")[0]
    assert label in [str(d) for d in range(10)]
    assert main(["info", str(run)]) == 0
    assert "over bracketed trees" in capsys.readouterr().out


def test_what_a_tree_model_cannot_do_is_refused(tmp_path, capsys):
    table = _listops_table(tmp_path / "listops.tsv", rows=16)
    with pytest.raises(ConfigError, match="train.task=causal_lm is not something a tree model .* it can do classify"):
        train(load_config(None, _tree_overrides(table, tmp_path / "a", "model.arch=tree_lstm",
                                                "train.task=causal_lm")))
    with pytest.raises(ConfigError, match="model.bidirectional is a setting of recurrent models"):
        load_config(None, _tree_overrides(table, tmp_path / "a", "model.arch=tree_rnn", "model.bidirectional=true"))
    with pytest.raises(ConfigError, match="classify.pooling=mean .* reads its tree's root"):
        load_config(None, _tree_overrides(table, tmp_path / "a", "model.arch=tree_lstm", "classify.pooling=mean"))
    with pytest.raises(ConfigError, match="set tokenizer.kind=word"):
        load_config(None, _tree_overrides(table, tmp_path / "a", "model.arch=tree_lstm", "tokenizer.kind=bpe"))
    with pytest.raises(DataError, match="a tree of .* tokens, more than model.block_size=8, .* set model.block_size"):
        train(load_config(None, _tree_overrides(table, tmp_path / "a", "model.arch=tree_lstm",
                                                "model.block_size=8")))
    assert not (tmp_path / "a").exists()
    run = tmp_path / "run"
    train(load_config(None, _tree_overrides(table, run, "model.arch=tree_rnn", "train.max_steps=1",
                                            "train.eval_interval=1")))
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "hf")]) == 2
    assert "a tree run (model.arch=tree_rnn) has no transformers layout" in capsys.readouterr().err
    assert main(["sample", str(run), "--prompt", "("]) == 2
    assert "train.task=classify run, not a GPT language model" in capsys.readouterr().err


def test_a_malformed_tree_is_refused_naming_its_file_and_row(tmp_path):
    table = _listops_table(tmp_path / "listops.tsv", rows=6)
    lines = table.read_text(encoding="utf-8").splitlines()
    lines[4] = "3\t( ( [MAX 3 ) 2"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{table.name}' line 5 is not a tree in brackets \\(1 '\\(' never closed\\)"):
        train(load_config(None, _tree_overrides(table, tmp_path / "a", "model.arch=tree_lstm")))
    assert not (tmp_path / "a").exists()


def test_the_depth_bench_compares_heights_lengths_and_speeds(tmp_path, capsys):
    from bench.tree_depth import main as bench

    table = _listops_table(tmp_path / "listops.tsv", rows=6)
    bench(["--data", str(table), "--batch", "3", "--timed", "2", "--width", "8"])
    out = capsys.readouterr().out
    assert "2 batches of 3" in out and "tallest tree" in out and "longest row" in out
    assert "level by level:" in out and "node by node:" in out
