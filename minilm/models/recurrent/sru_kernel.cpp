// The 2017 SRU's element-wise work over all time steps, forward and backward, as one compiled loop (CPU).
// Built on first use by minilm/models/recurrent/sru.py (torch.utils.cpp_extension.load) and cached.
//
// Inputs, batch first: u (B, T, k*H) = [x~ | f | r | highway when k == 4] pre-activations from the one matrix
// product; hw (B, T, H) the highway input when k == 3 (x itself); c0 (B, H); keep (B, T), 0 at padding, where
// the state stays and the output is 0; reverse: time walked backwards. Every (batch row, block of columns) is
// independent: at::parallel_for hands them to torch's threads, and each walks time with the columns innermost
// (contiguous, so the compiler vectorizes them).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// columns per task: a whole row of the state up to this width, so that one task walks one batch row's memory
// from the first step to the last (two tasks per row at 1024: still enough tasks for the threads at small batches)
constexpr int64_t kBlock = 512;

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

struct Layout {  // (B, T, C) views, the last dimension contiguous: element (b, t, j) at b * sb + t * st + j
  int64_t B, T, H;
  int64_t u_sb, u_st, hw_sb, hw_st;
  bool hw_in_u;  // the highway input is u's fourth chunk (a projection of x), else the separate hw
  bool reverse;  // walk time from the last step to the first (the backward direction of a bidirectional layer)
};

// One time step over n contiguous columns, in functions of their own with __restrict__ pointers (no store can
// alias a load) and the padding test hoisted out: GCC vectorizes these column loops only so.
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
  } else {  // padding: the state stays exactly (f * c + (1 - f) * x~ is not formed) and the output is 0
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      cs[j] = c[j];
      h[j] = 0;
    }
  }
}

// dc the running dL/dc (from the step after in walking order in, to the step before out); c this step's state,
// prev the one before; ut this step's pre-activations [x~ | f | r | highway when it is u's], dut their gradients,
// which may be ut itself (written over it: a column's loads come before its stores, and no column reads another's,
// which `omp simd` vectorizes as it stands); x the highway input, dx its gradient (u's fourth chunk, or hw and dhw);
// sum the running sums of the gradients over the steps (the bias gradient), a chunk every kBlock
template <typename scalar_t>
void backward_step(int64_t n, int64_t H, bool kept, const scalar_t* ut, scalar_t* dut, const scalar_t* x,
                   scalar_t* dx, const scalar_t* __restrict__ c, const scalar_t* __restrict__ prev,
                   const scalar_t* __restrict__ dh, scalar_t* __restrict__ dc, scalar_t* __restrict__ sum) {
  if (!kept) {  // a padded step passes dc through, and nothing else gets a gradient from it
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      dut[j] = 0;
      dut[H + j] = 0;
      dut[2 * H + j] = 0;
      dx[j] = 0;
    }
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t xt = ut[j], f = sigmoid(ut[H + j]), r = sigmoid(ut[2 * H + j]), xj = x[j];
    const scalar_t g = tanh_(c[j]), d = dh[j];
    const scalar_t total = dc[j] + d * r * (1 - g * g);  // dL/dc_t
    const scalar_t dxt = total * (1 - f), dfz = total * (prev[j] - xt) * f * (1 - f);
    const scalar_t drz = d * (g - xj) * r * (1 - r), dxj = d * (1 - r);
    dut[j] = dxt;
    dut[H + j] = dfz;
    dut[2 * H + j] = drz;
    dx[j] = dxj;
    dc[j] = total * f;
    sum[j] += dxt;
    sum[kBlock + j] += dfz;
    sum[2 * kBlock + j] += drz;
    sum[3 * kBlock + j] += dxj;  // the highway chunk's bias when it is u's (else unused)
  }
}

// Every batch row is independent; within a row, columns in blocks of up to kBlock, walked through time. With the
// batch first, one row's steps lie one after another in memory, which the caches and prefetchers follow.
template <typename F>
void for_each_block(const Layout& L, const F& fn) {
  const int64_t blocks = (L.H + kBlock - 1) / kBlock;
  at::parallel_for(0, L.B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j0 = (task % blocks) * kBlock;
      fn(task / blocks, j0, std::min(kBlock, L.H - j0));
    }
  });
}

template <typename scalar_t>
void forward_kernel(const Layout& L, const scalar_t* u, const scalar_t* hw, const scalar_t* c0, const scalar_t* keep,
                    scalar_t* h, scalar_t* cs) {
  for_each_block(L, [&](int64_t b, int64_t j0, int64_t n) {
    scalar_t c[kBlock];
    std::copy(c0 + b * L.H + j0, c0 + b * L.H + j0 + n, c);
    for (int64_t s = 0; s < L.T; ++s) {
      const int64_t t = L.reverse ? L.T - 1 - s : s;
      const scalar_t* ut = u + b * L.u_sb + t * L.u_st + j0;  // x~ at ut[j], f at ut[H + j], r at ut[2H + j]
      const scalar_t* x = L.hw_in_u ? ut + 3 * L.H : hw + b * L.hw_sb + t * L.hw_st + j0;
      const int64_t o = (b * L.T + t) * L.H + j0;
      forward_step<scalar_t>(n, keep[b * L.T + t] != 0, ut, ut + L.H, ut + 2 * L.H, x, c, cs + o, h + o);
    }
  });
}

// The reverse recurrence: dc_t = dh_t * r_t * g'(c_t) + f_{t+1} * dc_{t+1} (a padded step passes dc through),
// and from it the gradients of the pre-activations (du, laid out as u; u itself to write over it), the highway
// input, the initial state, and each batch row's sums of du over time (db (B, k*H): the bias gradient's parts).
template <typename scalar_t>
void backward_kernel(const Layout& L, const scalar_t* u, const scalar_t* hw, const scalar_t* c0, const scalar_t* keep,
                     const scalar_t* cs, const scalar_t* dh, const scalar_t* dc_last, scalar_t* du, scalar_t* dhw,
                     scalar_t* dc0, scalar_t* db) {
  const int64_t K = L.hw_in_u ? 4 : 3;
  for_each_block(L, [&](int64_t b, int64_t j0, int64_t n) {
    scalar_t dc[kBlock], sum[4 * kBlock] = {};
    std::copy(dc_last + b * L.H + j0, dc_last + b * L.H + j0 + n, dc);
    for (int64_t s = L.T - 1; s >= 0; --s) {
      const int64_t t = L.reverse ? L.T - 1 - s : s, before = L.reverse ? t + 1 : t - 1;
      const int64_t at_u = b * L.u_sb + t * L.u_st + j0;  // x~ at at_u + j, f at + H, r at + 2H
      const scalar_t* x = L.hw_in_u ? u + at_u + 3 * L.H : hw + b * L.hw_sb + t * L.hw_st + j0;
      scalar_t* dx = L.hw_in_u ? du + at_u + 3 * L.H : dhw + (b * L.T + t) * L.H + j0;
      const int64_t o = (b * L.T + t) * L.H + j0;
      const scalar_t* prev = s > 0 ? cs + (b * L.T + before) * L.H + j0 : c0 + b * L.H + j0;
      backward_step<scalar_t>(n, L.H, keep[b * L.T + t] != 0, u + at_u, du + at_u, x, dx, cs + o, prev, dh + o, dc,
                              sum);
    }
    std::copy(dc, dc + n, dc0 + b * L.H + j0);
    for (int64_t k = 0; k < K; ++k) std::copy(sum + k * kBlock, sum + k * kBlock + n, db + (b * K + k) * L.H + j0);
  });
}

// out (n, N) = x (N, n) transposed, in tiles that keep the reads in cache and the writes contiguous (the weight
// gradient's product wants x transposed; torch's own copy of a transposed view runs at a fraction of this rate)
template <typename scalar_t>
void transpose_kernel(const scalar_t* x, int64_t N, int64_t n, scalar_t* out) {
  constexpr int64_t kRows = 64, kCols = 16;
  at::parallel_for(0, (n + kCols - 1) / kCols, 1, [&](int64_t begin, int64_t end) {
    for (int64_t jb = begin; jb < end; ++jb) {
      const int64_t j0 = jb * kCols, j1 = std::min(j0 + kCols, n);
      for (int64_t i0 = 0; i0 < N; i0 += kRows) {
        const int64_t i1 = std::min(i0 + kRows, N);
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < i1; ++i) out[j * N + i] = x[i * n + j];
      }
    }
  });
}

Layout layout(const at::Tensor& u, const at::Tensor& hw, int64_t H, bool reverse) {
  TORCH_CHECK(u.dim() == 3 && u.stride(2) == 1, "u must be (B, T, k*H) with its last dimension contiguous");
  const bool in_u = u.size(2) == 4 * H;
  TORCH_CHECK(in_u || (u.size(2) == 3 * H && hw.defined() && hw.stride(2) == 1), "u is (B, T, 3H) with hw, or 4H");
  return {u.size(0), u.size(1), H, u.stride(0), u.stride(1), in_u ? 0 : hw.stride(0), in_u ? 0 : hw.stride(1), in_u,
          reverse};
}

}  // namespace

// -> h (B, T, H) with 0 at padding, every state c (B, T, H), both contiguous
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& hw, const at::Tensor& c0, const at::Tensor& keep,
                                bool reverse) {
  const int64_t H = c0.size(1);
  const Layout L = layout(u, hw, H, reverse);
  auto c0c = c0.contiguous(), keepc = keep.to(u.scalar_type()).contiguous();
  auto h = at::empty({L.B, L.T, H}, u.options()), cs = at::empty({L.B, L.T, H}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "sru_forward", [&] {
    forward_kernel<scalar_t>(L, u.data_ptr<scalar_t>(), L.hw_in_u ? nullptr : hw.data_ptr<scalar_t>(),
                             c0c.data_ptr<scalar_t>(), keepc.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                             cs.data_ptr<scalar_t>());
  });
  return {h, cs};
}

// -> d hw (B, T, H; empty when the highway is in u), d c0 (B, H), db (B, k*H) to sum over rows; du (B, T, k*H),
// contiguous and laid out as u, is written (u itself when the caller lets it go)
std::vector<at::Tensor> backward(const at::Tensor& u, const at::Tensor& hw, const at::Tensor& c0, const at::Tensor& keep,
                                 const at::Tensor& cs, const at::Tensor& dh, const at::Tensor& dc_last, bool reverse,
                                 at::Tensor& du) {
  const int64_t H = c0.size(1);
  const Layout L = layout(u, hw, H, reverse);
  TORCH_CHECK(u.is_contiguous() && du.is_contiguous() && du.sizes() == u.sizes(), "u and du must be contiguous alike");
  auto c0c = c0.contiguous(), keepc = keep.to(u.scalar_type()).contiguous();
  auto dhc = dh.contiguous(), dcl = dc_last.contiguous();
  auto dhw = L.hw_in_u ? at::Tensor() : at::empty({L.B, L.T, H}, u.options());
  auto dc0 = at::empty({L.B, H}, u.options()), db = at::empty({L.B, u.size(2)}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "sru_backward", [&] {
    backward_kernel<scalar_t>(L, u.data_ptr<scalar_t>(), L.hw_in_u ? nullptr : hw.data_ptr<scalar_t>(),
                              c0c.data_ptr<scalar_t>(), keepc.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                              dhc.data_ptr<scalar_t>(), dcl.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(),
                              L.hw_in_u ? nullptr : dhw.data_ptr<scalar_t>(), dc0.data_ptr<scalar_t>(),
                              db.data_ptr<scalar_t>());
  });
  return {dhw, dc0, db};
}

// x (N, n) -> x transposed (n, N), contiguous
at::Tensor transpose(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D");
  auto xc = x.contiguous();
  auto out = at::empty({x.size(1), x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sru_transpose", [&] {
    transpose_kernel<scalar_t>(xc.data_ptr<scalar_t>(), x.size(0), x.size(1), out.data_ptr<scalar_t>());
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "SRU (2017) forward over all steps");
  m.def("backward", &backward, "SRU (2017) backward, the reverse recurrence");
  m.def("transpose", &transpose, "a matrix transposed, contiguous");
}
