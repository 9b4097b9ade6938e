// CPU (fp32 reference) implementations of ops/t5_vae_ops.h.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "osp/ops/t5_vae_ops.h"

namespace osp::ops::cpu {

namespace {
template <typename F>
void elementwise(Tensor& x, const Tensor& y, F f) {
  const int64_t n = x.numel();
  if (x.dtype() == DType::F32) {
    float* a = x.data<float>();
    const float* b = y.data<float>();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) a[i] = f(a[i], b[i]);
  } else {  // BF16
    uint16_t* a = x.data<uint16_t>();
    const uint16_t* b = y.data<uint16_t>();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) a[i] = f32_to_bf16(f(bf16_to_f32(a[i]), bf16_to_f32(b[i])));
  }
}
}  // namespace

void relative_bias(const Tensor& table, const Tensor& bucket, Tensor& out) {
  const int64_t NB = table.size(0), H = table.size(1), LL = bucket.numel();
  const float* t = table.data<float>();
  const int32_t* b = bucket.data<int32_t>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < LL; ++i)
    OSP_CHECK(b[i] >= 0 && b[i] < NB, "relative_bias: bucket ", b[i], " outside [0, ", NB, ")");
#pragma omp parallel for schedule(static) if (H * LL > (1 << 16))
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < LL; ++i) o[h * LL + i] = t[b[i] * H + h];
}

void add_(Tensor& x, const Tensor& y) {
  elementwise(x, y, [](float a, float b) { return a + b; });
}
void mul_(Tensor& x, const Tensor& y) {
  elementwise(x, y, [](float a, float b) { return a * b; });
}

void channel_rms_norm(const Tensor& x, const Tensor& gamma, bool silu, Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const float* xp = x.data<float>();
  const float* g = gamma.data<float>();
  float* op = out.data<float>();
  const float scale = std::sqrt(float(C));
  const int64_t blk = 256;
  const int64_t nblk = (S + blk - 1) / blk;
#pragma omp parallel for schedule(static) if (N * S * C > (1 << 16))
  for (int64_t job = 0; job < N * nblk; ++job) {
    const int64_t n = job / nblk, s0 = (job % nblk) * blk, s1 = std::min(S, s0 + blk);
    float inv[256];
    for (int64_t s = s0; s < s1; ++s) inv[s - s0] = 0.f;
    const float* xn = xp + n * C * S;
    float* on = op + n * C * S;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = s0; s < s1; ++s) inv[s - s0] += xn[c * S + s] * xn[c * S + s];
    for (int64_t s = s0; s < s1; ++s) inv[s - s0] = 1.f / std::max(std::sqrt(inv[s - s0]), 1e-12f);
    for (int64_t c = 0; c < C; ++c) {
      const float gs = g[c];
      for (int64_t s = s0; s < s1; ++s) {
        float y = xn[c * S + s] * inv[s - s0] * scale * gs;
        if (silu) y = y / (1.f + std::exp(-y));
        on[c * S + s] = y;
      }
    }
  }
}

void upsample_nearest2x(const Tensor& x, Tensor& out) {
  const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const float* xp = x.data<float>();
  float* op = out.data<float>();
#pragma omp parallel for schedule(static) if (NC * H * W > (1 << 16))
  for (int64_t r = 0; r < NC * 2 * H; ++r) {
    const int64_t nc = r / (2 * H), y = r % (2 * H);
    const float* src = xp + (nc * H + y / 2) * W;
    float* dst = op + r * 2 * W;
    for (int64_t xx = 0; xx < W; ++xx) dst[2 * xx] = dst[2 * xx + 1] = src[xx];
  }
}

void spatial_attention(const Tensor& qkv, Tensor& out) {
  const int64_t N = qkv.size(0), C = qkv.size(1) / 3, L = qkv.size(2);
  const float scale = 1.f / std::sqrt(float(C));
  // Query block so the score buffer [qb, L] stays ≤ 64 MiB.
  const int64_t qb = std::clamp<int64_t>((int64_t(16) << 20) / std::max<int64_t>(L, 1), 1, L);
  std::vector<float> s(size_t(qb * L));
  for (int64_t n = 0; n < N; ++n) {
    const float* q = qkv.data<float>() + n * 3 * C * L;
    const float* k = q + C * L;
    const float* v = k + C * L;
    float* o = out.data<float>() + n * C * L;
    for (int64_t i0 = 0; i0 < L; i0 += qb) {
      const int64_t m = std::min(qb, L - i0);
      // s[m, L] = q[:, i0:i0+m]ᵀ · k   (q is [C, L] row-major)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(m), int(L), int(C), scale, q + i0,
                  int(L), k, int(L), 0.f, s.data(), int(L));
#pragma omp parallel for schedule(static) if (m * L > (1 << 16))
      for (int64_t i = 0; i < m; ++i) {
        float* r = s.data() + i * L;
        float mx = r[0];
        for (int64_t j = 1; j < L; ++j) mx = std::max(mx, r[j]);
        double sum = 0;
        for (int64_t j = 0; j < L; ++j) {
          r[j] = std::exp(r[j] - mx);
          sum += r[j];
        }
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j < L; ++j) r[j] *= inv;
      }
      // o[:, i0:i0+m] = v[C, L] · s[m, L]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(C), int(m), int(L), 1.f, v, int(L),
                  s.data(), int(L), 0.f, o + i0, int(L));
    }
  }
}

void biased_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                      const std::vector<int32_t>& kv_lens, Tensor& out) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  const float* bp = bias.data<float>();
  float* op = out.data<float>();
#pragma omp parallel for schedule(static) if (B * H * L * L * D > (1 << 18))
  for (int64_t job = 0; job < B * H * L; ++job) {
    const int64_t b = job / (H * L), h = (job / L) % H, i = job % L;
    const int64_t n = kv_lens[size_t(b)];
    float* o = op + ((b * L + i) * H + h) * D;
    std::fill(o, o + D, 0.f);
    if (n == 0) continue;
    std::vector<double> s(static_cast<size_t>(n));
    const float* qi = qp + ((b * L + i) * H + h) * D;
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* kj = kp + ((b * L + j) * H + h) * D;
      double acc = 0;
      for (int64_t d = 0; d < D; ++d) acc += double(qi[d]) * kj[d];
      s[size_t(j)] = acc + bp[(h * L + i) * L + j];
      mx = std::max(mx, s[size_t(j)]);
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (s[size_t(j)] = std::exp(s[size_t(j)] - mx));
    std::vector<double> acc(size_t(D), 0.0);
    for (int64_t j = 0; j < n; ++j) {
      const float* vj = vp + ((b * L + j) * H + h) * D;
      const double p = s[size_t(j)] / sum;
      for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += p * vj[d];
    }
    for (int64_t d = 0; d < D; ++d) o[d] = float(acc[size_t(d)]);
  }
}

}  // namespace osp::ops::cpu
