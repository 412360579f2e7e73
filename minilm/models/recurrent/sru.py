"""Simple Recurrent Units, one direction of one layer, batch first: (B, T, n_in) -> (B, T, H).

`SRU` is the lecture's unit (Lei, Zhang & Artzi 2017, "Training RNNs as Fast as CNNs"): its gates read x_t only,
so every matrix product of every step is one product before the loop, and what is left is a linear recurrence
in c, run by `sru_2017` either as one compiled loop (sru_kernel.cpp, forward and backward, the element-wise work
fused in) or, where that cannot be built, as a pure-torch loop of one multiply-add per step (`LinearScan`).
Both are autograd Functions whose backward is the reverse recurrence. The projections (forward and backward, three
matrix products) go through oneDNN on a CPU, as torch's own LSTM does; in float32 there a whole layer is one
Function (`_Layer`: products and compiled loop, its backward writing over u), else `OneDNNLinear` or nn.Linear
then the loop. Batch first throughout;
the backward direction of a bidirectional layer walks time from the end instead of flipping its input. `SRU2018`
is the later unit (Lei et al. 2018), whose gates also read v * c_{t-1}: kept for model.sru_version=2018 and for
runs trained with it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

NO_EXTENSIONS = "MINILM_NO_EXTENSIONS"  # =1: never build or use compiled extensions (the pure-torch path)
NO_ONEDNN = "MINILM_NO_ONEDNN"  # =1: the projections through nn.Linear (MKL) instead of oneDNN
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
            # the column loops ("control flow in loop"); it changes no value. AVX2 (8 floats) or AVX-512 (16): used
            # where torch found it, the build named after it, so that a machine without it builds its own loop
            # instead of loading one it cannot run
            isa = torch.backends.cpu.get_cpu_capability()
            simd = {"AVX2": ["-mavx2", "-mfma"], "AVX512": ["-mavx512f", "-mavx512dq", "-mavx2", "-mfma"]}.get(isa, [])
            flags = ["-O3", "-fopenmp", "-fno-trapping-math", *simd]
            _kernel = load(f"minilm_sru_{isa.lower()}" if simd else "minilm_sru",
                           [str(Path(__file__).with_name("sru_kernel.cpp"))], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no ninja, a failed build: the pure-torch path computes the same
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"minilm: note: the compiled SRU loop could not be built ({reason}); using the pure-torch path, "
                  f"which is slower (set {NO_EXTENSIONS}=1 to skip the attempt)", file=sys.stderr)
    return _kernel


@functools.cache
def _onednn_linear() -> object | None:
    """torch's oneDNN linear (the library its CPU LSTM runs on), or None where this torch has none; looked up once.
    Its `.binary` overload adds a tensor to the product in the same pass."""
    if not torch.backends.mkldnn.is_available():
        return None
    linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    return linear if linear is not None and hasattr(linear, "binary") else None


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Products through oneDNN: float32 on a CPU outside autocast, where this torch has it and MINILM_NO_ONEDNN is
    unset."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and os.environ.get(NO_ONEDNN, "") in ("", "0")
            and _onednn_linear() is not None)


class OneDNNLinear(torch.autograd.Function):
    """x @ W.T + b and its gradients as three oneDNN matrix products: (N, n_in) -> (N, out). torch's nn.Linear goes
    to MKL, which on the AMD EPYC of BENCHMARKS.md ran these products at about half oneDNN's rate; torch's LSTM
    runs on oneDNN, so the SRU's products do too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear()(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        linear = _onednn_linear()
        dx = linear(grad, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None  # grad @ W
        dw = linear(x.t(), grad.t(), None, "none", [], "").t().contiguous() if ctx.needs_input_grad[1] else None
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def project(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) for every step at once, (B, T, n_in) -> (B, T, out): through oneDNN for float32 on a CPU outside
    autocast (where this torch has it and MINILM_NO_ONEDNN is unset), else nn.Linear."""
    if use_onednn(x, layer.weight):
        return OneDNNLinear.apply(x.reshape(-1, x.size(-1)), layer.weight, layer.bias).view(*x.shape[:-1], -1)
    return layer(x)


def _walk(T: int, reverse: bool) -> list[int]:
    """The time steps in walking order."""
    return list(range(T - 1, -1, -1) if reverse else range(T))


class LinearScan(torch.autograd.Function):
    """c_t = a_t * c_{t-1} + b_t along time: a, b (B, T, H), c0 (B, H) -> every c_t (B, T, H); reverse: time walked
    from the last step to the first (c_{t+1} comes before c_t). One multiply-add per step forward; backward the
    reverse recurrence dc_t = grad_t + a_{t+1} * dc_{t+1}, whence da_t = dc_t * c_{t-1}, db_t = dc_t and
    dc0 = a_1 * dc_1 ("t + 1" and "t - 1" in walking order)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor, reverse: bool) -> torch.Tensor:
        cs = torch.empty_like(b)
        c = c0
        for t in _walk(a.size(1), reverse):
            c = torch.addcmul(b[:, t], a[:, t], c, out=cs[:, t])
        ctx.reverse = reverse
        ctx.save_for_backward(a, c0, cs)
        return cs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, c0, cs = ctx.saved_tensors
        order = _walk(a.size(1), ctx.reverse)
        dc = torch.empty_like(cs)
        dc[:, order[-1]] = grad[:, order[-1]]
        for t, after in zip(order[-2::-1], order[:0:-1]):
            torch.addcmul(grad[:, t], a[:, after], dc[:, after], out=dc[:, t])
        # (B, T, H): the state before each step in walking order
        prev = torch.cat([cs[:, 1:], c0[:, None]], 1) if ctx.reverse else torch.cat([c0[:, None], cs[:, :-1]], 1)
        return dc * prev, dc, a[:, order[0]] * dc[:, order[0]], None


class _Fused(torch.autograd.Function):
    """The compiled loop: u (B, T, 3H or 4H) pre-activations, hw (B, T, H) the highway input (empty when it is u's
    fourth chunk), c0 (B, H), keep (B, T), reverse -> h (B, T, H), last state (B, H)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, hw: torch.Tensor, c0: torch.Tensor, keep: torch.Tensor, reverse: bool):
        h, cs = kernel().forward(u, hw, c0, keep, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(u, hw, c0, keep, cs)
        return h, cs[:, 0 if reverse else -1].clone()

    @staticmethod
    def backward(ctx, dh: torch.Tensor, dc_last: torch.Tensor):
        u, hw, c0, keep, cs = ctx.saved_tensors
        u = u.contiguous()
        du = torch.empty_like(u)  # u is the caller's: the gradients go to a tensor of their own
        dhw, dc0, _ = kernel().backward(u, hw, c0, keep, cs, dh, dc_last, ctx.reverse, du)
        return du, (dhw if hw.numel() else None), dc0, None, None


class _Layer(torch.autograd.Function):
    """A whole layer on the CPU in float32: the projections of every step through oneDNN, then the compiled loop;
    x (B, T, n_in), weight (3H or 4H, n_in), bias or None, c0 (B, H), keep (B, T), reverse -> h (B, T, H), last
    state (B, H). One Function, so that its backward can write the loop's gradients over u (which nothing else
    holds), take the bias gradient from the loop's running sums, and add the highway's gradient to the input's in
    the product that makes it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, c0: torch.Tensor,
                keep: torch.Tensor, reverse: bool):
        x = x.contiguous()
        u = _onednn_linear()(x.view(-1, x.size(-1)), weight, bias, "none", [], "").view(*x.shape[:2], -1)
        h, cs = kernel().forward(u, _highway(x, u, c0), c0, keep, reverse)  # u (B, T, 3H or 4H)
        ctx.reverse, ctx.spent = reverse, False
        ctx.save_for_backward(x, weight, bias, u, c0, keep, cs)
        return h, cs[:, 0 if reverse else -1].clone()

    @staticmethod
    def backward(ctx, dh: torch.Tensor, dc_last: torch.Tensor):
        x, weight, bias, u, c0, keep, cs = ctx.saved_tensors
        linear, rows = _onednn_linear(), x.view(-1, x.size(-1))  # (B*T, n_in)
        if ctx.spent:  # a second backward (retain_graph): the first wrote its gradients over u, made again here
            u = linear(rows, weight, bias, "none", [], "").view_as(u)
        ctx.spent = True
        hw = _highway(x, u, c0)
        dhw, dc0, db = kernel().backward(u, hw, c0, keep, cs, dh, dc_last, ctx.reverse, u)
        du = u.view(-1, u.size(-1))  # (B*T, 3H or 4H): the gradients, where u was
        dx = dw = None
        if ctx.needs_input_grad[0]:  # du @ W, plus the highway's gradient when x is the highway input
            dx = (linear.binary(du, dhw.view_as(rows), weight.t(), None, "add") if hw.numel()
                  else linear(du, weight.t(), None, "none", [], "")).view_as(x)
        if ctx.needs_input_grad[1]:  # (x^T du)^T, x transposed by the kernel (torch's copy of x.t() is slower)
            dw = linear(kernel().transpose(rows), du.t(), None, "none", [], "").t().contiguous()
        db = db.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, (dc0 if ctx.needs_input_grad[3] else None), None, None


def _highway(x: torch.Tensor, u: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """The loop's separate highway input: x when u is 3H wide, else empty (u's fourth chunk is the highway)."""
    return x if u.size(-1) == 3 * c0.size(-1) else x.new_empty(0)


def use_kernel(u: torch.Tensor) -> bool:
    """The compiled loop runs float32 / float64 tensors on the CPU (elsewhere, the pure-torch path)."""
    return u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and kernel() is not None


def sru_2017(u: torch.Tensor, highway: torch.Tensor | None, c0: torch.Tensor, keep: torch.Tensor | None,
             reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The element-wise part of the 2017 SRU over all steps, batch first: u (B, T, 3H or 4H) = [W x | W_f x + b_f |
    W_r x + b_r | the highway projection when 4H], highway (B, T, H) when u is 3H (x itself), c0 (B, H), keep (B, T)
    with 0 at padding, where the state stays and the output is 0, or None; reverse: time walked from the last step
    to the first (right padding is then met first, and the state carries through it unchanged)
    -> h (B, T, H), the state after the last step walked (B, H)."""
    H = c0.size(-1)
    if use_kernel(u):
        hw = u.new_empty(0) if highway is None else highway
        return _Fused.apply(u, hw, c0, keep if keep is not None else u.new_ones(u.shape[:2]), reverse)
    x_tilde, f, r = u[..., :H], torch.sigmoid(u[..., H:2 * H]), torch.sigmoid(u[..., 2 * H:3 * H])
    hw = u[..., 3 * H:] if highway is None else highway
    a, b = f, (1 - f) * x_tilde  # c_t = f_t * c_{t-1} + (1 - f_t) * x~_t
    if keep is not None:  # padding: c_t = 1 * c_{t-1} + 0, exactly
        kept = keep[..., None] > 0  # (B, T, 1)
        a, b = torch.where(kept, a, 1.0), torch.where(kept, b, 0.0)
    cs = LinearScan.apply(a, b, c0, reverse)  # (B, T, H)
    h = torch.lerp(hw, torch.tanh(cs), r)  # r * g(c) + (1 - r) * highway
    return (h if keep is None else h * keep[..., None]), cs[:, 0 if reverse else -1]


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

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, keep: torch.Tensor | None,
                reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, n_in), c (B, H) or None, keep (B, T) or None (no padding), reverse: time walked backwards
        -> h (B, T, H) with 0 at padding, last state (B, H)."""
        if c is None:
            c = x.new_zeros(x.size(0), self.hidden)
        if use_kernel(x) and use_onednn(x, self.weight.weight):
            keep = keep if keep is not None else x.new_ones(x.shape[:2])
            return _Layer.apply(x, self.weight.weight, self.weight.bias, c, keep, reverse)
        u = project(x, self.weight)  # (B, T, 3H or 4H): every step's projections in one matmul
        return sru_2017(u, None if self.project else x, c, keep, reverse)


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

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, keep: torch.Tensor | None,
                reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, n_in), c (B, H) or None, keep (B, T) or None, reverse -> h (B, T, H) with 0 at padding, last
        state (B, H)."""
        u = project(x, self.weight)  # (B, T, 3H or 4H)
        parts = u.chunk(4 if self.project else 3, dim=-1)
        highway = parts[3] if self.project else x
        if c is None:
            c = x.new_zeros(x.size(0), self.hidden)
        keep = (x.new_ones(x.shape[:2]) if keep is None else keep)[..., None]  # (B, T, 1)

        def walk(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (T, B, C) in walking order
            return t.transpose(0, 1).flip(0) if reverse else t.transpose(0, 1)

        h, c = sru_recurrence(walk(parts[0]), walk(parts[1]), walk(parts[2]), walk(highway), self.v[0], self.v[1],
                              c, walk(keep))
        h = (h.flip(0) if reverse else h).transpose(0, 1)  # (B, T, H) in time order
        return h * keep, c
