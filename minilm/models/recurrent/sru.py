"""Simple Recurrent Units, one direction of one layer, time first: (T, B, n_in) -> (T, B, H).

`SRU` is the lecture's unit (Lei, Zhang & Artzi 2017, "Training RNNs as Fast as CNNs"): its gates read x_t only,
so every matrix product of every step is one product before the loop, and what is left is a linear recurrence
in c, run by `sru_2017` either as one compiled loop (sru_kernel.cpp, forward and backward, the element-wise work
fused in) or, where that cannot be built, as a pure-torch loop of one multiply-add per step (`LinearScan`).
Both are autograd Functions whose backward is the reverse recurrence. `SRU2018` is the later unit (Lei et al.
2018), whose gates also read v * c_{t-1}: kept for model.sru_version=2018 and for runs trained with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

NO_EXTENSIONS = "MINILM_NO_EXTENSIONS"  # =1: never build or use compiled extensions (the pure-torch path)
_kernel: object | None = None
_kernel_tried = False


def kernel():
    """The compiled loop, built on first use (a minute) and cached in torch's extension directory (the next process
    loads it at once); None when MINILM_NO_EXTENSIONS=1 or it cannot be built, which is said once on stderr."""
    global _kernel, _kernel_tried
    if os.environ.get(NO_EXTENSIONS, "") not in ("", "0"):
        return None
    if not _kernel_tried:
        _kernel_tried = True
        try:
            from torch.utils.cpp_extension import load

            # -fopenmp: at::parallel_for's threads and the column loops' `omp simd`. -fno-trapping-math: without
            # it GCC 12 keeps exp_f's clamps (float compares, which may trap) as branches and vectorizes none of
            # the column loops ("control flow in loop"); it changes no value. AVX2 (8 floats, blends): used where
            # torch found it, under its own name, so a machine without it builds the plain loop instead of loading
            # one it cannot run
            avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            flags = ["-O3", "-fopenmp", "-fno-trapping-math", *(["-mavx2", "-mfma"] if avx2 else [])]
            _kernel = load("minilm_sru_avx2" if avx2 else "minilm_sru", [str(Path(__file__).with_name("sru_kernel.cpp"))],
                           extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no ninja, a failed build: the pure-torch path computes the same
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"minilm: note: the compiled SRU loop could not be built ({reason}); using the pure-torch path, "
                  f"which is slower (set {NO_EXTENSIONS}=1 to skip the attempt)", file=sys.stderr)
    return _kernel


class LinearScan(torch.autograd.Function):
    """c_t = a_t * c_{t-1} + b_t for every step: a (T, B, H), b (T, B, H), c0 (B, H) -> every c_t (T, B, H).
    One multiply-add per step forward; backward the reverse recurrence dc_t = grad_t + a_{t+1} * dc_{t+1}, whence
    da_t = dc_t * c_{t-1}, db_t = dc_t and dc0 = a_1 * dc_1."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        cs = torch.empty_like(b)
        c = c0
        for t in range(a.size(0)):
            c = torch.addcmul(b[t], a[t], c, out=cs[t])
        ctx.save_for_backward(a, c0, cs)
        return cs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, c0, cs = ctx.saved_tensors
        dc = torch.empty_like(cs)
        dc[-1] = grad[-1]
        for t in range(a.size(0) - 2, -1, -1):
            torch.addcmul(grad[t], a[t + 1], dc[t + 1], out=dc[t])
        prev = torch.cat([c0[None], cs[:-1]])  # (T, B, H): c_{t-1}
        return dc * prev, dc, a[0] * dc[0]


class _Fused(torch.autograd.Function):
    """The compiled loop: u (T, B, 3H or 4H) pre-activations, hw (T, B, H) the highway input (empty when it is u's
    fourth chunk), c0 (B, H), keep (T, B) -> h (T, B, H), last state (B, H)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, hw: torch.Tensor, c0: torch.Tensor, keep: torch.Tensor):
        h, cs = kernel().forward(u, hw, c0, keep)
        ctx.save_for_backward(u, hw, c0, keep, cs)
        return h, cs[-1].clone()

    @staticmethod
    def backward(ctx, dh: torch.Tensor, dc_last: torch.Tensor):
        u, hw, c0, keep, cs = ctx.saved_tensors
        du, dhw, dc0 = kernel().backward(u, hw, c0, keep, cs, dh, dc_last)
        return du, (dhw if hw.numel() else None), dc0, None


def use_kernel(u: torch.Tensor) -> bool:
    """The compiled loop runs float32 / float64 tensors on the CPU (elsewhere, the pure-torch path)."""
    return u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and kernel() is not None


def sru_2017(u: torch.Tensor, highway: torch.Tensor | None, c0: torch.Tensor,
             keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The element-wise part of the 2017 SRU over all steps: u (T, B, 3H or 4H) = [W x | W_f x + b_f | W_r x + b_r
    | the highway projection when 4H], highway (T, B, H) when u is 3H (x itself), c0 (B, H), keep (T, B, 1) with 0
    at padding, where the state stays, or None -> h (T, B, H), the last state (B, H)."""
    H = c0.size(-1)
    if use_kernel(u):
        hw = u.new_empty(0) if highway is None else highway
        k = keep[..., 0] if keep is not None else u.new_ones(u.shape[:2])  # (T, B)
        return _Fused.apply(u, hw, c0, k)
    x_tilde, f, r = u[..., :H], torch.sigmoid(u[..., H:2 * H]), torch.sigmoid(u[..., 2 * H:3 * H])
    hw = u[..., 3 * H:] if highway is None else highway
    a, b = f, (1 - f) * x_tilde  # c_t = f_t * c_{t-1} + (1 - f_t) * x~_t
    if keep is not None:  # padding: c_t = 1 * c_{t-1} + 0, exactly
        a, b = torch.where(keep > 0, a, 1.0), torch.where(keep > 0, b, 0.0)
    cs = LinearScan.apply(a, b, c0)  # (T, B, H)
    return torch.lerp(hw, torch.tanh(cs), r), cs[-1]  # r * g(c) + (1 - r) * highway


class SRU(nn.Module):
    """One direction of the lecture's SRU layer (2017):

        x~_t = W x_t,  f_t = sigmoid(W_f x_t + b_f),  r_t = sigmoid(W_r x_t + b_r)
        c_t = f_t * c_{t-1} + (1 - f_t) * x~_t,  h_t = r_t * g(c_t) + (1 - r_t) * x_t

    with g = tanh. The paper leaves g as "an activation function"; the code released with it (taolei87/sru,
    `use_tanh=1`) made tanh the default, which bounds the state's contribution to h like an LSTM's tanh(c) does.
    The 2018 revision dropped g. W, W_f, W_r (and a projection of x for the highway term when the input is not as
    wide as the state) are one matrix product over all steps."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.project = n_in != hidden  # the highway term needs x at the state's width
        self.weight = nn.Linear(n_in, (4 if self.project else 3) * hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None,
                keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, B, n_in), c (B, H) or None, keep (T, B, 1) or None (no padding) -> h (T, B, H), last state (B, H)."""
        u = self.weight(x)  # (T, B, 3H or 4H): every step's projections in one matmul
        if c is None:
            c = u.new_zeros(x.size(1), self.hidden)
        return sru_2017(u, None if self.project else x, c, keep)


def sru_recurrence(x_tilde: torch.Tensor, f_in: torch.Tensor, r_in: torch.Tensor, highway: torch.Tensor,
                   v_f: torch.Tensor, v_r: torch.Tensor, c: torch.Tensor, keep: torch.Tensor):
    """The 2018 unit's element-wise part over time: inputs (T, B, H) each (the projections of all steps), c (B, H)
    the state before the first step, keep (T, B, 1): 0 at padding, where the state stays. Returns h (T, B, H) and
    the last state (B, H). Its gates read c_{t-1}, so it runs step by step, as a plain loop."""
    hs = []
    for t in range(x_tilde.size(0)):
        f = torch.sigmoid(f_in[t] + v_f * c)
        r = torch.sigmoid(r_in[t] + v_r * c)
        new = f * c + (1 - f) * x_tilde[t]
        c = torch.where(keep[t] > 0, new, c)
        hs.append(r * c + (1 - r) * highway[t])
    return torch.stack(hs), c


class SRU2018(nn.Module):
    """One direction of the 2018 SRU (Lei et al., "Simple Recurrent Units for Highly Parallelizable Recurrence"):

        f_t = sigmoid(W_f x_t + v_f * c_{t-1} + b_f),  r_t = sigmoid(W_r x_t + v_r * c_{t-1} + b_r)
        c_t = f_t * c_{t-1} + (1 - f_t) * W x_t,  h_t = r_t * c_t + (1 - r_t) * x_t

    model.sru_version=2018, and what model.arch=sru trained before the 2017 unit came (same parameter names)."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.project = n_in != hidden
        self.weight = nn.Linear(n_in, (4 if self.project else 3) * hidden)
        self.v = nn.Parameter(torch.zeros(2, hidden))  # v_f, v_r
        nn.init.uniform_(self.v, -0.5, 0.5)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None,
                keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, B, n_in), c (B, H) or None, keep (T, B, 1) or None -> h (T, B, H), last state (B, H)."""
        u = self.weight(x)  # (T, B, 3H or 4H)
        parts = u.chunk(4 if self.project else 3, dim=-1)
        highway = parts[3] if self.project else x
        if c is None:
            c = x.new_zeros(x.size(1), self.hidden)
        if keep is None:
            keep = x.new_ones(x.size(0), x.size(1), 1)
        return sru_recurrence(parts[0], parts[1], parts[2], highway, self.v[0], self.v[1], c, keep)
