"""The optimizer's device-side step skip: the hook the non-finite guard stands on, checked against torch itself."""

from __future__ import annotations

import pytest
import torch

from minilm.config import TrainConfig
from minilm.optim import make_optimizer, skip_step_if


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, found_inf: float | None) -> None:
    model(torch.ones(2, 4)).square().sum().backward()
    if found_inf is not None:
        skip_step_if(opt, torch.tensor(found_inf))
    opt.step()
    opt.zero_grad(set_to_none=True)


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    state = [t.clone() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in model.parameters()] + state


def test_a_flagged_step_changes_nothing_and_a_clear_flag_steps() -> None:
    """If a torch release stops reading `found_inf` in the fused AdamW, the first assertion fails."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(model, TrainConfig(lr=0.1, min_lr=0.0))
    _step(model, opt, None)  # a normal step: moments and step counts exist
    before = _snapshot(model, opt)
    _step(model, opt, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(model, opt)))  # weights, moments, steps
    _step(model, opt, 0.0)
    after = _snapshot(model, opt)
    assert not torch.equal(before[0], after[0])  # the weights moved
    assert [float(s["step"]) for s in opt.state.values()] == [2.0, 2.0]  # the skipped step was not counted


def test_optimizers_without_the_hook_are_refused() -> None:
    model = torch.nn.Linear(4, 3)
    with pytest.raises(TypeError, match="fused Adam"):
        skip_step_if(torch.optim.SGD(model.parameters(), lr=0.1), torch.tensor(1.0))
