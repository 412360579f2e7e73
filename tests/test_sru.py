"""SRU: the lecture's 2017 unit and the 2018 one against their equations; the compiled loop, the pure-torch path
and a step-by-step reference give the same values and gradients (padding, length 1); model.sru_version and which
unit a saved run holds; the fallback when the compiled loop cannot be built."""

from __future__ import annotations

import json

import pytest
import torch

from minilm.config import config_from_dict, load_config
from minilm.models.recurrent import sru
from minilm.models.recurrent.config import RecurrentConfig
from minilm.models.recurrent.model import RecurrentStack
from minilm.models.recurrent.sru import SRU, SRU2018


@pytest.fixture(params=["compiled", "pure"])
def path(request, monkeypatch) -> str:
    """Each test run once with the compiled loop and once with the pure-torch path (MINILM_NO_EXTENSIONS=1)."""
    if request.param == "pure":
        monkeypatch.setenv(sru.NO_EXTENSIONS, "1")
    else:
        monkeypatch.delenv(sru.NO_EXTENSIONS, raising=False)
        if sru.kernel() is None:
            pytest.skip("the compiled SRU loop could not be built here (no C++ compiler)")
    return request.param


def _reference(u, highway, c0, keep, reverse=False):
    """The 2017 unit's element-wise equations, one step at a time (autograd through the loop), batch first; 0 out at
    padding; reverse: time walked from the last step to the first."""
    H, T = c0.size(-1), u.size(1)
    c, hs = c0, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        x_tilde, f, r = u[:, t, :H], torch.sigmoid(u[:, t, H:2 * H]), torch.sigmoid(u[:, t, 2 * H:3 * H])
        x = u[:, t, 3 * H:] if highway is None else highway[:, t]
        kept = keep[:, t, None] > 0  # (B, 1)
        c = torch.where(kept, f * c + (1 - f) * x_tilde, c)
        hs[t] = torch.where(kept, r * torch.tanh(c) + (1 - r) * x, 0.0)
    return torch.stack(hs, 1), c


def test_sru_2017_matches_its_equations(path):
    torch.manual_seed(0)
    for n_in in (6, 8):  # the highway term reads x directly, or through a projection when the widths differ
        cell = SRU(n_in, 6)
        x = torch.randn(2, 5, n_in)  # (B, T, n_in)
        with torch.no_grad():
            h, c_last = cell(x, None, None)
            W, W_f, W_r = cell.weight.weight[:18].split(6)
            b, b_f, b_r = cell.weight.bias[:18].split(6)
            c, want = torch.zeros(2, 6), []
            for t in range(5):
                x_tilde = x[:, t] @ W.T + b
                f, r = torch.sigmoid(x[:, t] @ W_f.T + b_f), torch.sigmoid(x[:, t] @ W_r.T + b_r)
                c = f * c + (1 - f) * x_tilde
                highway = cell.weight(x[:, t])[:, 18:] if n_in != 6 else x[:, t]
                want.append(r * torch.tanh(c) + (1 - r) * highway)
        assert torch.allclose(h, torch.stack(want, 1), atol=1e-5) and torch.allclose(c_last, c, atol=1e-5)


def test_sru_2018_matches_its_equations():
    torch.manual_seed(0)
    for n_in in (6, 8):
        cell = SRU2018(n_in, 6)
        x = torch.randn(2, 5, n_in)  # (B, T, n_in)
        with torch.no_grad():
            h, c_last = cell(x, None, torch.ones(2, 5))
            parts = [p.transpose(0, 1) for p in cell.weight(x).split(6, -1)]  # (T, B, 6) each
            c, want = torch.zeros(2, 6), []
            for t in range(5):
                f = torch.sigmoid(parts[1][t] + cell.v[0] * c)
                r = torch.sigmoid(parts[2][t] + cell.v[1] * c)
                c = f * c + (1 - f) * parts[0][t]
                highway = parts[3][t] if n_in != 6 else x[:, t]
                want.append(r * c + (1 - r) * highway)
        assert torch.allclose(h, torch.stack(want, 1), atol=1e-6) and torch.allclose(c_last, c, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_both_paths_give_the_step_by_step_values_and_gradients(path, seed):
    gen = torch.Generator().manual_seed(seed)
    T, B, H = [(1, 3, 5), (2, 1, 1), (7, 4, 70), (12, 3, 9), (5, 2, 130), (9, 5, 3)][seed]
    project = seed % 2 == 1  # the highway input as u's fourth chunk, or a separate tensor
    reverse = seed in (1, 2, 4)  # time walked backwards, right padding met first (the backward direction)
    u = (2 * torch.randn(B, T, (4 if project else 3) * H, generator=gen, dtype=torch.float64)).requires_grad_()
    hw = None if project else torch.randn(B, T, H, generator=gen, dtype=torch.float64).requires_grad_()
    if seed == 2:
        hw = torch.randn(T, B, H, generator=gen, dtype=torch.float64).transpose(0, 1).requires_grad_()  # strided
    c0 = torch.randn(B, H, generator=gen, dtype=torch.float64).requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    keep = (torch.arange(T)[None] < lengths[:, None]).double()  # (B, T)
    w_h, w_c = torch.randn(B, T, H, generator=gen, dtype=torch.float64), torch.randn(B, H, generator=gen,
                                                                                   dtype=torch.float64)
    inputs = [t for t in (u, hw, c0) if t is not None]
    results = []
    for fn in (sru.sru_2017, _reference):
        h, c = fn(u, hw, c0, keep, reverse)
        grads = torch.autograd.grad((h * w_h).sum() + (c * w_c).sum(), inputs)
        results.append([h, c, *grads])
    for got, want in zip(*results):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    h, c = sru.sru_2017(u, hw, c0, None, reverse)  # no padding at all
    want = _reference(u, hw, c0, torch.ones(B, T, dtype=torch.float64), reverse)
    assert torch.allclose(h, want[0], atol=1e-12) and torch.allclose(c, want[1], atol=1e-12)


def test_the_compiled_loop_and_pure_torch_agree_in_float32(monkeypatch):
    monkeypatch.delenv(sru.NO_EXTENSIONS, raising=False)
    if sru.kernel() is None:
        pytest.skip("the compiled SRU loop could not be built here (no C++ compiler)")
    torch.manual_seed(0)
    u, hw, c0 = 3 * torch.randn(4, 16, 3 * 96), torch.randn(4, 16, 96), torch.randn(4, 96)
    keep = torch.ones(4, 16)
    keep[2, 10:] = 0
    results = []
    for pure, reverse in (("", False), ("1", False), ("", True), ("1", True)):
        monkeypatch.setenv(sru.NO_EXTENSIONS, pure)
        leaves = [t.clone().requires_grad_() for t in (u, hw, c0)]
        h, c = sru.sru_2017(*leaves, keep, reverse)
        (h.sin().sum() + c.sum()).backward()
        results.append([h, c, *(t.grad for t in leaves)])
    for compiled, pure in (results[:2], results[2:]):
        for got, want in zip(compiled, pure):
            assert torch.allclose(got, want, atol=2e-6, rtol=1e-5)  # the compiled exp/tanh are within float rounding


@pytest.mark.parametrize("version", [2017, 2018])
def test_padding_is_exact_in_values_and_gradients_both_ways(path, version):
    torch.manual_seed(0)
    cfg = RecurrentConfig(arch="sru", vocab_size=11, n_layer=2, n_embd=8, hidden_size=6, bidirectional=True,
                          sru_version=version)
    stack = RecurrentStack(cfg).double()
    ids = torch.randint(1, 11, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    full, _ = stack(ids, mask)
    (full[1, :4] ** 2).sum().backward()
    padded = [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    alone, _ = stack(ids[1:, :4])
    (alone[0] ** 2).sum().backward()
    assert torch.allclose(full[1, :4], alone[0], atol=1e-12) and full[1, 4:].abs().max() == 0
    for got, want in zip(padded, (p.grad for p in stack.parameters())):
        assert torch.allclose(got, want, atol=1e-12)


def test_the_state_carries_across_blocks(path):
    torch.manual_seed(0)
    stack = RecurrentStack(RecurrentConfig(arch="sru", vocab_size=11, n_layer=2, n_embd=8)).double()
    ids = torch.randint(0, 11, (3, 9))
    whole, _ = stack(ids)
    first, state = stack(ids[:, :4])
    second, _ = stack(ids[:, 4:], state=state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# model.sru_version, and the unit a saved run holds


def test_sru_version_chooses_the_unit_and_is_checked():
    data = {"train_files": ["x.txt"]}
    for version, unit in ((None, SRU), (2017, SRU), (2018, SRU2018)):
        model = {"arch": "sru", "n_layer": 1, "n_embd": 8, "vocab_size": 5}
        if version:
            model["sru_version"] = version
        cfg = config_from_dict({"model": model, "data": data})
        assert isinstance(RecurrentStack(cfg.model).layers[0].cells[0], unit)
    with pytest.raises(Exception, match="model.sru_version=2019 is not allowed: 2017 or 2018"):
        config_from_dict({"model": {"arch": "sru", "sru_version": 2019}, "data": data})


def test_a_yaml_without_the_version_is_2017_and_a_saved_run_without_it_2018(tmp_path):
    (tmp_path / "sru.yaml").write_text("model: {arch: sru}\ndata: {train_files: [x.txt]}\n")
    assert load_config(tmp_path / "sru.yaml").model.sru_version == 2017
    new = load_config(tmp_path / "sru.yaml").to_dict()
    assert new["model"]["sru_version"] == 2017  # what a new run writes into its config.json
    del new["model"]["sru_version"]  # a config.json written when sru meant the 2018 unit
    (tmp_path / "config.json").write_text(json.dumps(new))
    assert load_config(tmp_path / "config.json").model.sru_version == 2018
    assert load_config(tmp_path / "config.json", ["model.sru_version=2017"]).model.sru_version == 2017


def test_a_failed_build_says_so_once_and_falls_back(monkeypatch, capsys):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'minilm_sru': c++: command not found")

    monkeypatch.delenv(sru.NO_EXTENSIONS, raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(sru, "_kernel", None)
    monkeypatch.setattr(sru, "_kernel_tried", False)
    u, c0 = torch.randn(2, 3, 16), torch.zeros(2, 4)  # (B, T, 4H): the highway in u
    h, c = sru.sru_2017(u, None, c0, None)
    sru.sru_2017(u, None, c0, None)
    assert torch.allclose(h, _reference(u, None, c0, torch.ones(2, 3))[0], atol=1e-6)
    err = capsys.readouterr().err
    assert err.count("minilm: note: the compiled SRU loop could not be built") == 1 and "command not found" in err


def test_the_onednn_projection_equals_nn_linear_and_steps_aside_where_it_cannot_run(monkeypatch):
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 12), torch.randn(3, 5, 8)
    if sru._onednn_linear() is None:
        pytest.skip("this torch has no oneDNN")
    monkeypatch.delenv(sru.NO_ONEDNN, raising=False)
    results = []
    for off in ("", "1"):
        monkeypatch.setenv(sru.NO_ONEDNN, off)
        inp = x.clone().requires_grad_()
        out = sru.project(inp, layer)
        assert (out.grad_fn.next_functions[0][0].name() == "OneDNNLinearBackward") == (off == "")
        results.append([out, *torch.autograd.grad(out.sin().sum(), (inp, layer.weight, layer.bias))])
    for got, want in zip(*results):
        assert torch.allclose(got, want, atol=1e-5)
    monkeypatch.delenv(sru.NO_ONEDNN)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own choice of precision stands
        assert sru.project(x, layer).dtype == torch.bfloat16
    assert sru.project(x.double(), layer.double()).dtype == torch.float64


def test_the_fused_layer_equals_projection_then_loop_and_backs_up_twice(monkeypatch):
    """On a CPU in float32 an SRU layer is one Function (oneDNN's products and the compiled loop, its backward
    writing over u): the same values and gradients as nn.Linear followed by the loop, for both highway inputs,
    both directions and padding, and again on a second backward (retain_graph)."""
    monkeypatch.delenv(sru.NO_EXTENSIONS, raising=False)
    if sru.kernel() is None or sru._onednn_linear() is None:
        pytest.skip("the compiled SRU loop or oneDNN is not available here")
    torch.manual_seed(0)
    keep = torch.ones(3, 7)
    keep[1, 4:] = 0
    for n_in, reverse in ((16, False), (16, True), (10, True)):  # x as the highway input, or u's fourth chunk
        cell, x, c0 = SRU(n_in, 16), torch.randn(3, 7, n_in), torch.randn(3, 16)
        results = []
        for off in ("", "1"):
            monkeypatch.setenv(sru.NO_ONEDNN, off)
            leaves = [x.clone().requires_grad_(), c0.clone().requires_grad_()]
            h, c = cell(leaves[0], leaves[1], keep, reverse)
            assert (h.grad_fn.name() == "_LayerBackward") == (off == "")
            loss = h.sin().sum() + (c ** 2).sum()
            inputs = (*leaves, cell.weight.weight, cell.weight.bias)
            first = torch.autograd.grad(loss, inputs, retain_graph=True)
            second = torch.autograd.grad(loss, inputs)
            for a, b in zip(first, second):
                assert torch.equal(a, b)
            results.append([h, c, *first])
        for got, want in zip(*results):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
