"""The Transformer's parts chosen by name (models/transformer/parts.py): each against its equations, and the seam:
a new norm or MLP is one class in a registry, picked by the config and refused by the exports."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.config import Config, config_from_dict
from minilm.errors import CheckpointError, ConfigError
from minilm.models.transformer import hf_gpt2, parts
from minilm.models.transformer.config import TransformerConfig
from minilm.models.transformer.heads import CausalLM


def _cfg(**kw) -> TransformerConfig:
    return TransformerConfig(**{"vocab_size": 30, "block_size": 12, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw})


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_normalizes_then_scales_and_shifts(bias):
    norm = parts.LayerNorm(_cfg(bias=bias, norm_eps=1e-3))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if bias:
            norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 16)
    z = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-3)
    torch.testing.assert_close(norm(x), z * norm.weight + (norm.bias if bias else 0), atol=1e-5, rtol=1e-5)
    assert (norm.bias is not None) == bias


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_standard_mlp_is_fc_gelu_proj(activation):
    mlp = parts.StandardMLP(_cfg(activation=activation, d_ff=24)).eval()
    x = torch.randn(2, 4, 16)
    h = x @ mlp.fc.weight.T + mlp.fc.bias  # (2, 4, 24)
    gelu = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5)) if activation == "gelu" else \
        0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3)))
    torch.testing.assert_close(mlp(x), gelu @ mlp.proj.weight.T + mlp.proj.bias, atol=1e-5, rtol=1e-5)


def test_position_schemes_add_their_table():
    ids = torch.tensor([[0, 3, 11]])
    learned = parts.LearnedPositions(_cfg())
    torch.testing.assert_close(learned.embed(ids), learned.weight[ids])
    assert learned.table() is learned.weight and set(learned.state_dict()) == {"weight"}
    fixed = parts.SinusoidalPositions(_cfg())
    torch.testing.assert_close(fixed.embed(ids), parts.sinusoidal_table(12, 16)[ids])
    assert not fixed.state_dict()  # nothing to learn, nothing saved
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    assert all(a is b for a, b in zip(fixed.rotate(q, k, ids), (q, k)))  # absolute schemes leave q and k alone


def test_learned_positions_can_start_from_the_sinusoidal_table():
    torch.manual_seed(0)
    pos = parts.LearnedPositions(_cfg(position_init="sinusoidal"))
    pos.init_weights(_cfg(position_init="sinusoidal"))
    table = parts.sinusoidal_table(12, 16)
    torch.testing.assert_close(pos.weight, table * (0.02 / table.pow(2).mean().sqrt()))


class RMSNorm(nn.Module):
    """A norm minilm does not ship: x / rms(x) * weight."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.eps, self.weight = cfg.norm_eps, nn.Parameter(torch.ones(cfg.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GatedMLP(nn.Module):
    """An MLP minilm does not ship: (silu(x W1) * x W3) W2."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.w1, self.w3 = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False), nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def test_a_new_norm_and_mlp_are_one_class_and_one_registry_entry(monkeypatch):
    with pytest.raises(ConfigError, match="model.norm_type='rmsnorm' is not allowed: 'layernorm'"):
        config_from_dict({"model": {"norm_type": "rmsnorm"}, "data": {"train_files": ["x.txt"]}})
    monkeypatch.setitem(parts.NORMS, "rmsnorm", RMSNorm)
    monkeypatch.setitem(parts.MLPS, "gated", GatedMLP)
    cfg = config_from_dict({"model": {"norm_type": "rmsnorm", "mlp": "gated", "vocab_size": 30, "n_layer": 2,
                                      "n_head": 2, "n_embd": 16, "block_size": 12},
                            "data": {"train_files": ["x.txt"]}})
    torch.manual_seed(0)
    model = CausalLM(cfg.model)
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 2 * 2 + 1 and not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert sum(isinstance(m, GatedMLP) for m in model.modules()) == 2
    x = torch.randint(0, 30, (2, 12))
    loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    with pytest.raises(CheckpointError, match="model.norm_type='rmsnorm' cannot be exported"):
        hf_gpt2.check(Config(model=cfg.model))
