// CPU elementwise ops and RoPE (fp32, OpenMP).
#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"

namespace osp::ops::cpu {

void gelu_tanh(const Tensor& x, Tensor& out) {
  const int64_t n = x.numel();
  const float* a = x.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = gelu_tanh_scalar(a[i]);
}

void silu(const Tensor& x, Tensor& out) {
  const int64_t n = x.numel();
  const float* a = x.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = silu_scalar(a[i]);
}

void add_gated_(Tensor& x, const Tensor& y, const Tensor* gate) {
  const int64_t C = x.size(-1), R = C ? x.numel() / C : 0;
  float* xp = x.data<float>();
  const float* yp = y.data<float>();
  const float* g = gate ? gate->data<float>() : nullptr;
#pragma omp parallel for schedule(static) if (R * C > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    float* xr = xp + r * C;
    const float* yr = yp + r * C;
    if (g)
      for (int64_t c = 0; c < C; ++c) xr[c] += yr[c] * g[c];
    else
      for (int64_t c = 0; c < C; ++c) xr[c] += yr[c];
  }
}

void axpby(float a, const Tensor& x, float b, const Tensor& y, Tensor& out) {
  const int64_t n = x.numel();
  const float* xp = x.data<float>();
  const float* yp = y.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = a * xp[i] + b * yp[i];
}

namespace {

// Rotates each (even, odd) pair of the last dim by θ from the table (kInverse: by −θ, the
// adjoint used by rope_backward). Each pair is read before it is written, so out may be x.
template <bool kInverse>
void rope_rotate(const Tensor& x, const Tensor& cos_sin, Tensor& out) {
  const int64_t R = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t Rt = cos_sin.size(0), P = D / 2;
  const float* xp = x.data<float>();
  const float* cs = cos_sin.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (x.numel() > kParallelMin)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t l = 0; l < L; ++l) {
      const float* tab = cs + ((r % Rt) * L + l) * P * 2;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = ((r * L + l) * H + h) * D;
        for (int64_t p = 0; p < P; ++p) {
          const float c = tab[2 * p], s = tab[2 * p + 1];
          const float x0 = xp[base + 2 * p], x1 = xp[base + 2 * p + 1];
          if constexpr (kInverse) {
            o[base + 2 * p] = x0 * c + x1 * s;
            o[base + 2 * p + 1] = x1 * c - x0 * s;
          } else {
            o[base + 2 * p] = x0 * c - x1 * s;
            o[base + 2 * p + 1] = x0 * s + x1 * c;
          }
        }
      }
    }
}

}  // namespace

void rope(const Tensor& x, const Tensor& cos_sin, Tensor& out) { rope_rotate<false>(x, cos_sin, out); }

void rope_inverse(const Tensor& x, const Tensor& cos_sin, Tensor& out) { rope_rotate<true>(x, cos_sin, out); }

}  // namespace osp::ops::cpu
