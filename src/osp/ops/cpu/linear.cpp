// CPU linear: OpenBLAS sgemm, then bias and activation fused in one OpenMP pass.
#include <cblas.h>

#include <cmath>

#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"

namespace osp::ops::cpu {

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Act act) {
  const int64_t K = x.size(-1), N = w.size(0);
  const int64_t M = K == 0 ? out.numel() / (N ? N : 1) : x.numel() / K;
  float* o = out.data<float>();
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) o[i] = 0.f;
  } else {
    // out[M,N] = x[M,K] · w[N,K]ᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.f,
                x.data<float>(), int(K), w.data<float>(), int(K), 0.f, o, int(N));
  }
  const float* b = bias ? bias->data<float>() : nullptr;
  if (!b && act == Act::None) return;
#pragma omp parallel for schedule(static) if (M * N > kParallelMin)
  for (int64_t i = 0; i < M; ++i) {
    float* row = o + i * N;
    if (b)
      for (int64_t j = 0; j < N; ++j) row[j] += b[j];
    if (act == Act::GeluTanh)
      for (int64_t j = 0; j < N; ++j) row[j] = gelu_tanh_scalar(row[j]);
    else if (act == Act::Silu)
      for (int64_t j = 0; j < N; ++j) row[j] = silu_scalar(row[j]);
  }
}

}  // namespace osp::ops::cpu
