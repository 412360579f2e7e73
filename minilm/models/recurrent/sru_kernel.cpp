// The 2017 SRU's element-wise work over all time steps, forward and backward, as one compiled loop (CPU).
// Built on first use by minilm/models/recurrent/sru.py (torch.utils.cpp_extension.load) and cached.
//
// Inputs, time first: u (T, B, k*H) = [x~ | f | r | highway when k == 4] pre-activations from the one matrix
// product; hw (T, B, H) the highway input when k == 3 (x itself); c0 (B, H); keep (T, B), 0 at padding, where
// the state stays. Every (batch row, block of columns) is independent: at::parallel_for hands them to torch's
// threads, and each walks time with the columns innermost (contiguous, so the compiler vectorizes them).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // columns per task: a cache-friendly run that still splits small batches

// exp for float without a library call, so the column loops vectorize: 2^n * e^r with |r| <= ln2/2 and a
// degree-7 Taylor polynomial for e^r (truncation < 1e-8 relative, below float's rounding). The argument is
// clamped to [-87, 88] so 2^n stays a normal float: the sigmoid and tanh built on it saturate the same way.
inline float exp_f(float x) {
  x = x < -87.0f ? -87.0f : x;  // plain value selects (not std::min/max's references): GCC turns them into blends
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln2) by the 1.5 * 2^23 trick
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;     // ln2 in two parts: r exact to float
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);  // the bit cast, which GCC vectorizes as a plain reinterpret
  return p * scale;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + exp_f(-z)); }
inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// tanh(c) = (1 - e^{-2|c|}) / (1 + e^{-2|c|}) with c's sign: absolute error about 1e-7 in float
inline float tanh_(float c) {
  const float a = c < 0.0f ? -c : c;
  const float e = exp_f(-2.0f * a);
  const float t = (1.0f - e) / (1.0f + e);
  return c < 0.0f ? -t : t;
}
inline double tanh_(double c) { return std::tanh(c); }

struct Layout {  // (T, B, H) views, the last dimension contiguous: element (t, b, j) at t * st + b * sb + j
  int64_t T, B, H;
  int64_t u_st, u_sb, hw_st, hw_sb;
  bool hw_in_u;  // the highway input is u's fourth chunk (a projection of x), else the separate hw
};

// One time step over n contiguous columns, in functions of their own with __restrict__ pointers (no store can
// alias a load) and the padding test hoisted out: GCC vectorizes these column loops (8 floats with AVX2) only so.
// xt, fz, rz: x~ and the gates' pre-activations; x the highway input; c the state, updated in place when kept.
template <typename scalar_t>
void forward_step(int64_t n, bool kept, const scalar_t* __restrict__ xt, const scalar_t* __restrict__ fz,
                  const scalar_t* __restrict__ rz, const scalar_t* __restrict__ x, scalar_t* __restrict__ c,
                  scalar_t* __restrict__ cs, scalar_t* __restrict__ h) {
  if (kept) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t f = sigmoid(fz[j]), r = sigmoid(rz[j]);
      const scalar_t cj = f * c[j] + (1 - f) * xt[j];
      c[j] = cj;
      cs[j] = cj;
      h[j] = r * tanh_(cj) + (1 - r) * x[j];
    }
  } else {  // at padding the state stays exactly: f * c + (1 - f) * x~ is not formed there
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t r = sigmoid(rz[j]), cj = c[j];
      cs[j] = cj;
      h[j] = r * tanh_(cj) + (1 - r) * x[j];
    }
  }
}

// dc the running dL/dc (from step t + 1 in, to step t - 1 out); c this step's state, prev the one before; dxt, dfz,
// drz, dx the gradients written for this step
template <typename scalar_t>
void backward_step(int64_t n, bool kept, const scalar_t* __restrict__ xt, const scalar_t* __restrict__ fz,
                   const scalar_t* __restrict__ rz, const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                   const scalar_t* __restrict__ prev, const scalar_t* __restrict__ dh, scalar_t* __restrict__ dc,
                   scalar_t* __restrict__ dxt, scalar_t* __restrict__ dfz, scalar_t* __restrict__ drz,
                   scalar_t* __restrict__ dx) {
  if (kept) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t f = sigmoid(fz[j]), r = sigmoid(rz[j]);
      const scalar_t g = tanh_(c[j]), d = dh[j];
      dx[j] = d * (1 - r);
      drz[j] = d * (g - x[j]) * r * (1 - r);
      const scalar_t total = dc[j] + d * r * (1 - g * g);  // dL/dc_t
      dxt[j] = total * (1 - f);
      dfz[j] = total * (prev[j] - xt[j]) * f * (1 - f);
      dc[j] = total * f;
    }
  } else {  // a padded step passes dc through, and x~, f get no gradient
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t r = sigmoid(rz[j]);
      const scalar_t g = tanh_(c[j]), d = dh[j];
      dx[j] = d * (1 - r);
      drz[j] = d * (g - x[j]) * r * (1 - r);
      dc[j] = dc[j] + d * r * (1 - g * g);
      dxt[j] = 0;
      dfz[j] = 0;
    }
  }
}

template <typename scalar_t>
void forward_kernel(const Layout& L, const scalar_t* u, const scalar_t* hw, const scalar_t* c0, const scalar_t* keep,
                    scalar_t* h, scalar_t* cs) {
  const int64_t blocks = (L.H + kBlock - 1) / kBlock;
  at::parallel_for(0, L.B * blocks, 1, [&](int64_t begin, int64_t end) {
    scalar_t c[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, j0 = (task % blocks) * kBlock, n = std::min(kBlock, L.H - j0);
      std::copy(c0 + b * L.H + j0, c0 + b * L.H + j0 + n, c);
      for (int64_t t = 0; t < L.T; ++t) {
        const scalar_t* ut = u + t * L.u_st + b * L.u_sb + j0;  // x~ at ut[j], f at ut[H + j], r at ut[2H + j]
        const scalar_t* x = L.hw_in_u ? ut + 3 * L.H : hw + t * L.hw_st + b * L.hw_sb + j0;
        const int64_t o = (t * L.B + b) * L.H + j0;
        forward_step<scalar_t>(n, keep[t * L.B + b] != 0, ut, ut + L.H, ut + 2 * L.H, x, c, cs + o, h + o);
      }
    }
  });
}

// The reverse recurrence: dc_t = dh_t * r_t * g'(c_t) + f_{t+1} * dc_{t+1} (a padded step passes dc through),
// and from it the gradients of the pre-activations, the highway input and the initial state.
template <typename scalar_t>
void backward_kernel(const Layout& L, const scalar_t* u, const scalar_t* hw, const scalar_t* c0, const scalar_t* keep,
                     const scalar_t* cs, const scalar_t* dh, const scalar_t* dc_last, scalar_t* du, scalar_t* dhw,
                     scalar_t* dc0) {
  const int64_t blocks = (L.H + kBlock - 1) / kBlock;
  const int64_t K = L.hw_in_u ? 4 : 3;
  at::parallel_for(0, L.B * blocks, 1, [&](int64_t begin, int64_t end) {
    scalar_t dc[kBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, j0 = (task % blocks) * kBlock, n = std::min(kBlock, L.H - j0);
      std::copy(dc_last + b * L.H + j0, dc_last + b * L.H + j0 + n, dc);
      for (int64_t t = L.T - 1; t >= 0; --t) {
        const scalar_t* ut = u + t * L.u_st + b * L.u_sb + j0;
        const scalar_t* x = L.hw_in_u ? ut + 3 * L.H : hw + t * L.hw_st + b * L.hw_sb + j0;
        scalar_t* dut = du + (t * L.B + b) * K * L.H + j0;  // du is contiguous (T, B, K*H)
        scalar_t* dx = L.hw_in_u ? dut + 3 * L.H : dhw + (t * L.B + b) * L.H + j0;
        const int64_t o = (t * L.B + b) * L.H + j0;
        const scalar_t* prev = t > 0 ? cs + o - L.B * L.H : c0 + b * L.H + j0;
        backward_step<scalar_t>(n, keep[t * L.B + b] != 0, ut, ut + L.H, ut + 2 * L.H, x, cs + o, prev, dh + o, dc,
                                dut, dut + L.H, dut + 2 * L.H, dx);
      }
      std::copy(dc, dc + n, dc0 + b * L.H + j0);
    }
  });
}

Layout layout(const at::Tensor& u, const at::Tensor& hw, int64_t H) {
  TORCH_CHECK(u.dim() == 3 && u.stride(2) == 1, "u must be (T, B, k*H) with its last dimension contiguous");
  const bool in_u = u.size(2) == 4 * H;
  TORCH_CHECK(in_u || (u.size(2) == 3 * H && hw.defined() && hw.stride(2) == 1), "u is (T, B, 3H) with hw, or 4H");
  return {u.size(0), u.size(1), H, u.stride(0), u.stride(1), in_u ? 0 : hw.stride(0), in_u ? 0 : hw.stride(1), in_u};
}

}  // namespace

// -> h (T, B, H), every state c (T, B, H), both contiguous
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& hw, const at::Tensor& c0, const at::Tensor& keep) {
  const int64_t H = c0.size(1);
  const Layout L = layout(u, hw, H);
  auto c0c = c0.contiguous(), keepc = keep.to(u.scalar_type()).contiguous();
  auto h = at::empty({L.T, L.B, H}, u.options()), cs = at::empty({L.T, L.B, H}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "sru_forward", [&] {
    forward_kernel<scalar_t>(L, u.data_ptr<scalar_t>(), L.hw_in_u ? nullptr : hw.data_ptr<scalar_t>(),
                             c0c.data_ptr<scalar_t>(), keepc.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                             cs.data_ptr<scalar_t>());
  });
  return {h, cs};
}

// -> du (T, B, k*H), d hw (T, B, H; empty when the highway is in u), d c0 (B, H)
std::vector<at::Tensor> backward(const at::Tensor& u, const at::Tensor& hw, const at::Tensor& c0, const at::Tensor& keep,
                                 const at::Tensor& cs, const at::Tensor& dh, const at::Tensor& dc_last) {
  const int64_t H = c0.size(1);
  const Layout L = layout(u, hw, H);
  auto c0c = c0.contiguous(), keepc = keep.to(u.scalar_type()).contiguous();
  auto dhc = dh.contiguous(), dcl = dc_last.contiguous();
  auto du = at::empty({L.T, L.B, u.size(2)}, u.options());
  auto dhw = L.hw_in_u ? at::Tensor() : at::empty({L.T, L.B, H}, u.options());
  auto dc0 = at::empty({L.B, H}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "sru_backward", [&] {
    backward_kernel<scalar_t>(L, u.data_ptr<scalar_t>(), L.hw_in_u ? nullptr : hw.data_ptr<scalar_t>(),
                              c0c.data_ptr<scalar_t>(), keepc.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                              dhc.data_ptr<scalar_t>(), dcl.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(),
                              L.hw_in_u ? nullptr : dhw.data_ptr<scalar_t>(), dc0.data_ptr<scalar_t>());
  });
  return {du, dhw, dc0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "SRU (2017) forward over all steps");
  m.def("backward", &backward, "SRU (2017) backward, the reverse recurrence");
}
