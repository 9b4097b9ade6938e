// CPU fp32 backward (vector-Jacobian products) of the ops in backward.h. OpenBLAS for the GEMMs,
// OpenMP over rows elsewhere. Column sums (parameter gradients) are deterministic: rows are cut
// into a fixed number of chunks that depends only on the row count (not on the thread count),
// each chunk sums in double, and the chunks are added in order.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "osp/ops/cpu/cpu_backward.h"
#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"
#include "osp/ops/cpu/simd_avx2.h"

namespace osp::ops::cpu {
namespace {

// Leading-dims product ("rows") of a tensor whose last dim is C.
int64_t rows_of(const Tensor& t) {
  int64_t r = 1;
  for (int d = 0; d + 1 < t.dim(); ++d) r *= t.size(d);
  return r;
}

// Row loop with up to kSums column sums: row_fn(r, acc) handles row r (writing its per-row
// outputs) and, when acc is non-null, adds its contributions to acc[k·C + c] (double) for every
// wanted sum k. Afterwards outs[k][c] += Σ_r (in that fixed chunk order); null outs[k] are
// skipped. With no wanted sum row_fn gets acc = null.
constexpr int kSums = 2;
template <class RowFn>
void rows_with_column_sums(int64_t R, int64_t C, float* const (&outs)[kSums], RowFn row_fn) {
  const bool want = outs[0] || outs[1];
  const bool par = R * C > kParallelMin;
  if (!want) {
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < R; ++r) row_fn(r, static_cast<double*>(nullptr));
    return;
  }
  const int64_t chunk = std::max<int64_t>(16, (R + 63) / 64);
  const int64_t nchunks = (R + chunk - 1) / chunk;
  std::vector<double> part(size_t(nchunks * kSums * C), 0.0);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    double* acc = part.data() + ch * kSums * C;
    for (int64_t r = ch * chunk, r1 = std::min(R, r + chunk); r < r1; ++r) row_fn(r, acc);
  }
  for (int k = 0; k < kSums; ++k) {
    float* o = outs[k];
    if (!o) continue;
#pragma omp parallel for schedule(static) if (nchunks * C > kParallelMin)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t ch = 0; ch < nchunks; ++ch) s += part[size_t((ch * kSums + k) * C + c)];
      o[c] = float(double(o[c]) + s);
    }
  }
}

float* ptr(Tensor* t) { return t ? t->data<float>() : nullptr; }

// LayerNorm backward with a per-column multiplier wm (null: 1) on the normalised row:
//   y = x̂·wm + b, x̂ = (x − mean)·rstd.  dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·wm;
//   outs[0] += Σ dy·x̂ (dw / dscale), outs[1] += Σ dy (db / dshift).
void ln_backward(const Tensor& x, const float* wm, float eps, const Tensor& dy, Tensor& dx,
                 float* dwm, float* dbias) {
  const int64_t C = x.size(-1), R = rows_of(x);
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx.data<float>();
  float* const outs[kSums] = {dwm, dbias};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* xr = xp + r * C;
    const float* gr = gp + r * C;
    float* dr = dxp + r * C;
    float mean, rstd;
    row_stats(xr, C, eps, mean, rstd);
    double sg = 0, sgx = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xh = double((xr[c] - mean) * rstd);
      const double g = double(gr[c]) * (wm ? double(wm[c]) : 1.0);
      sg += g;
      sgx += g * xh;
    }
    const float a = float(sg / double(C)), b = float(sgx / double(C));
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - mean) * rstd;
      const float g = wm ? gr[c] * wm[c] : gr[c];
      dr[c] = rstd * (g - a - xh * b);
    }
    if (!acc) return;
    if (dwm)
      for (int64_t c = 0; c < C; ++c) acc[c] += double(gr[c]) * double((xr[c] - mean) * rstd);
    if (dbias)
      for (int64_t c = 0; c < C; ++c) acc[C + c] += gr[c];
  });
}

}  // namespace

// ---------------------------------------------------------------- GEMM
void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* db) {
  const int64_t K = x.size(-1), N = w.size(0), M = rows_of(x);
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = dy.data<float>();
  if (dx && M > 0 && K > 0) {
    if (N > 0)  // dx[M,K] = dy[M,N] · w[N,K]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(K), int(N), 1.f, gp,
                  int(N), wp, int(K), 0.f, dx->data<float>(), int(K));
    else
      dx->zero_();
  }
  if (dw && M > 0 && N > 0 && K > 0)  // dw[N,K] += dy[M,N]ᵀ · x[M,K]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(N), int(K), int(M), 1.f, gp, int(N),
                xp, int(K), 1.f, dw->data<float>(), int(K));
  if (db && M > 0 && N > 0) {
    float* const outs[kSums] = {db->data<float>(), nullptr};
    rows_with_column_sums(M, N, outs, [&](int64_t r, double* acc) {
      const float* gr = gp + r * N;
      for (int64_t c = 0; c < N; ++c) acc[c] += gr[c];
    });
  }
}

void sum_rows(const Tensor& x, Tensor& out) {
  const int64_t C = x.size(-1), R = rows_of(x);
  if (R == 0 || C == 0) return;
  const float* xp = x.data<float>();
  float* const outs[kSums] = {out.data<float>(), nullptr};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* xr = xp + r * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += xr[c];
  });
}

// ---------------------------------------------------------------- norms
void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy,
                         Tensor& dx, Tensor* dw, Tensor* db) {
  ln_backward(x, w ? w->data<float>() : nullptr, eps, dy, dx, ptr(dw), ptr(db));
}

void layer_norm_modulate_backward(const Tensor& x, const Tensor& scale, float eps,
                                  const Tensor& dy, Tensor& dx, Tensor* dshift, Tensor* dscale) {
  const int64_t C = x.size(-1);
  const float* sc = scale.data<float>();
  std::vector<float> w1(static_cast<size_t>(C));  // the forward's multiplier (1 + scale), in fp32
  for (int64_t c = 0; c < C; ++c) w1[c] = 1.f + sc[c];
  ln_backward(x, w1.data(), eps, dy, dx, ptr(dscale), ptr(dshift));
}

// y = x·rr·w, rr = 1/sqrt(mean(x²) + eps):  dx = rr·g − x·rr³·mean(g·x), g = dy·w;
// dw += Σ dy·x·rr.
void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx,
                       Tensor* dw) {
  const int64_t C = x.size(-1), R = rows_of(x);
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx.data<float>();
  float* const outs[kSums] = {ptr(dw), nullptr};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* xr = xp + r * C;
    const float* gr = gp + r * C;
    float* dr = dxp + r * C;
    double ss = 0, sgx = 0;
    for (int64_t c = 0; c < C; ++c) {
      ss += double(xr[c]) * double(xr[c]);
      sgx += double(gr[c]) * double(wp[c]) * double(xr[c]);
    }
    const double rrd = 1.0 / std::sqrt(ss / double(C) + double(eps));
    const float rr = float(rrd), k = float(rrd * rrd * rrd * sgx / double(C));
    for (int64_t c = 0; c < C; ++c) dr[c] = rr * gr[c] * wp[c] - xr[c] * k;
    if (acc)
      for (int64_t c = 0; c < C; ++c) acc[c] += double(gr[c]) * double(xr[c]) * rrd;
  });
}

// ---------------------------------------------------------------- elementwise
// gelu_tanh'(x) = 0.5·(1 + t) + 0.5·x·(1 − t²)·k·(1 + 3a·x²), t = tanh(k·(x + a·x³)).
void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const int64_t n = x.numel();
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* o = dx.data<float>();
  const float k = 0.7978845608028654f, a = 0.044715f;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float v = xp[i], v2 = v * v;
    const float t = std::tanh(k * (v + a * v2 * v));
    o[i] = gp[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * k * (1.f + 3.f * a * v2));
  }
}

// silu'(x) = s·(1 + x·(1 − s)), s = sigmoid(x).
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  const int64_t n = x.numel();
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* o = dx.data<float>();
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.f / (1.f + std::exp(-xp[i]));
    o[i] = gp[i] * s * (1.f + xp[i] * (1.f - s));
  }
}

void add_gated_backward(const Tensor& dx, const Tensor& y, const Tensor& gate, Tensor& dy,
                        Tensor* dgate) {
  const int64_t C = dx.size(-1), R = rows_of(dx);
  const float* gp = dx.data<float>();
  const float* yp = y.data<float>();
  const float* g = gate.data<float>();
  float* o = dy.data<float>();
  float* const outs[kSums] = {ptr(dgate), nullptr};
  rows_with_column_sums(R, C, outs, [&](int64_t r, double* acc) {
    const float* gr = gp + r * C;
    float* orow = o + r * C;
    for (int64_t c = 0; c < C; ++c) orow[c] = gr[c] * g[c];
    if (!acc) return;
    const float* yr = yp + r * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += double(gr[c]) * double(yr[c]);
  });
}

// ---------------------------------------------------------------- RoPE
// The forward rotates each pair by θ; the adjoint (= inverse) rotates by −θ. Each pair is read
// before it is written, so dx may be dy.
void rope_backward(const Tensor& dy, const Tensor& cos_sin, Tensor& dx) { rope_inverse(dy, cos_sin, dx); }

// ---------------------------------------------------------------- attention
namespace {

constexpr int64_t kBQ = 64;  // query rows per block of the attention backward
constexpr int64_t kBK = 64;  // keys per block

// One (query block, key block) pair of the attention backward, with P recomputed from lse:
//   S = Qs·Kᵀ (Qs = q·scale), P = exp(S − lse), dP = dO·Vᵀ, dS = P ⊙ (dP − delta),
//   dv[nk][D] += Pᵀ·dO, dk[nk][D] += dSᵀ·Qs (already scaled), dq rows += dS·K (unscaled).
//   qs [nq][D]; dO rows at dO + i·ld; lse, delta [nq]; kt, vt [D][nk] (K, V transposed);
//   kr: key rows (stride ld); s, dp: scratch [nq][kBK]; dv/dk null to skip them, dq null too.
OSP_CPU_CLONES
void attn_bwd_block(const float* qs, int64_t nq, int64_t D, const float* dO, int64_t ld,
                    const float* lse, const float* delta, const float* kt, const float* vt,
                    int64_t nk, const float* kr, float* s, float* dp, float* dv, float* dk,
                    float* dq, int64_t ldq) {
  for (int64_t i = 0; i < nq; ++i) {
    float* si = s + i * kBK;
    float* pi = dp + i * kBK;
    for (int64_t j = 0; j < nk; ++j) si[j] = 0.f, pi[j] = 0.f;
    const float* qi = qs + i * D;
    const float* gi = dO + i * ld;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = qi[d], gd = gi[d];
      const float* kd = kt + d * nk;
      const float* vd = vt + d * nk;
      for (int64_t j = 0; j < nk; ++j) {
        si[j] += qd * kd[j];
        pi[j] += gd * vd[j];
      }
    }
    const float li = lse[i], di = delta[i];
    for (int64_t j = 0; j < nk; ++j) {
      const float p = std::exp(si[j] - li);
      si[j] = p;
      pi[j] = p * (pi[j] - di);
    }
  }
  if (dv)
    for (int64_t j = 0; j < nk; ++j) {
      float* dvj = dv + j * D;
      float* dkj = dk + j * D;
      for (int64_t i = 0; i < nq; ++i) {
        const float p = s[i * kBK + j], ds = dp[i * kBK + j];
        const float* gi = dO + i * ld;
        const float* qi = qs + i * D;
        for (int64_t d = 0; d < D; ++d) {
          dvj[d] += p * gi[d];
          dkj[d] += ds * qi[d];
        }
      }
    }
  if (dq)
    for (int64_t i = 0; i < nq; ++i) {
      float* dqi = dq + i * ldq;
      const float* dsi = dp + i * kBK;
      for (int64_t j = 0; j < nk; ++j) {
        const float ds = dsi[j];
        const float* kj = kr + j * ld;
        for (int64_t d = 0; d < D; ++d) dqi[d] += ds * kj[d];
      }
    }
}

#ifdef OSP_HAVE_AVX2_KERNEL
// C[m][n] = (acc ? C[m][n] : 0) + Σ_k A[m·sam + k·sak] · B[k·ldb + n] for m < M, n < N, k < K:
// one register-tiled kernel (4 × 16 tiles, 8 accumulators, k innermost) for every product of
// the attention backward (A's strides make it Q·Kᵀ with packed Kᵀ, Pᵀ·dO, dSᵀ·Q or dS·K).
// The ragged edges (m past a multiple of 4, n past a multiple of 16) use plain loops.
__attribute__((target("avx2,fma"))) void gemm_tile_avx2(int64_t M, int64_t N, int64_t K,
                                                        const float* A, int64_t sam, int64_t sak,
                                                        const float* B, int64_t ldb, float* C,
                                                        int64_t ldc, bool acc) {
  const int64_t M4 = M & ~int64_t(3), N16 = N & ~int64_t(15);
  for (int64_t m0 = 0; m0 < M4; m0 += 4) {
    const float* a0 = A + m0 * sam;
    const float* a1 = a0 + sam;
    const float* a2 = a1 + sam;
    const float* a3 = a2 + sam;
    for (int64_t n0 = 0; n0 < N16; n0 += 16) {
      float* c0 = C + m0 * ldc + n0;
      __m256 c00, c01, c10, c11, c20, c21, c30, c31;
      if (acc) {
        c00 = _mm256_loadu_ps(c0), c01 = _mm256_loadu_ps(c0 + 8);
        c10 = _mm256_loadu_ps(c0 + ldc), c11 = _mm256_loadu_ps(c0 + ldc + 8);
        c20 = _mm256_loadu_ps(c0 + 2 * ldc), c21 = _mm256_loadu_ps(c0 + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c0 + 3 * ldc), c31 = _mm256_loadu_ps(c0 + 3 * ldc + 8);
      } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm256_setzero_ps();
      }
      const float* b = B + n0;
      for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
        __m256 x = _mm256_broadcast_ss(a0 + k * sak);
        c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + k * sak);
        c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + k * sak);
        c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + k * sak);
        c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
      }
      _mm256_storeu_ps(c0, c00), _mm256_storeu_ps(c0 + 8, c01);
      _mm256_storeu_ps(c0 + ldc, c10), _mm256_storeu_ps(c0 + ldc + 8, c11);
      _mm256_storeu_ps(c0 + 2 * ldc, c20), _mm256_storeu_ps(c0 + 2 * ldc + 8, c21);
      _mm256_storeu_ps(c0 + 3 * ldc, c30), _mm256_storeu_ps(c0 + 3 * ldc + 8, c31);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    const int64_t nstart = m < M4 ? N16 : 0;
    if (nstart >= N) continue;
    float* cm = C + m * ldc;
    if (!acc)
      for (int64_t n = nstart; n < N; ++n) cm[n] = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      const float a = A[m * sam + k * sak];
      const float* bk = B + k * ldb;
      for (int64_t n = nstart; n < N; ++n) cm[n] += a * bk[n];
    }
  }
}

// attn_bwd_block with the AVX2 products and an 8-lane exp (same contract).
__attribute__((target("avx2,fma"))) void attn_bwd_block_avx2(
    const float* qs, int64_t nq, int64_t D, const float* dO, int64_t ld, const float* lse,
    const float* delta, const float* kt, const float* vt, int64_t nk, const float* kr, float* s,
    float* dp, float* dv, float* dk, float* dq, int64_t ldq) {
  gemm_tile_avx2(nq, nk, D, qs, D, 1, kt, nk, s, kBK, false);  // S = Qs·Kᵀ
  gemm_tile_avx2(nq, nk, D, dO, ld, 1, vt, nk, dp, kBK, false);  // dP = dO·Vᵀ
  const int64_t nk8 = nk & ~int64_t(7);
  for (int64_t i = 0; i < nq; ++i) {
    float* si = s + i * kBK;
    float* pi = dp + i * kBK;
    const __m256 l8 = _mm256_set1_ps(lse[i]), d8 = _mm256_set1_ps(delta[i]);
    for (int64_t j = 0; j < nk8; j += 8) {
      const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(si + j), l8));
      _mm256_storeu_ps(si + j, p);
      _mm256_storeu_ps(pi + j, _mm256_mul_ps(p, _mm256_sub_ps(_mm256_loadu_ps(pi + j), d8)));
    }
    for (int64_t j = nk8; j < nk; ++j) {
      const float p = std::exp(si[j] - lse[i]);
      si[j] = p;
      pi[j] = p * (pi[j] - delta[i]);
    }
  }
  if (dv) {
    gemm_tile_avx2(nk, D, nq, s, 1, kBK, dO, ld, dv, D, true);   // dV += Pᵀ·dO
    gemm_tile_avx2(nk, D, nq, dp, 1, kBK, qs, D, dk, D, true);   // dK += dSᵀ·Qs
  }
  if (dq) gemm_tile_avx2(nq, D, nk, dp, kBK, 1, kr, ld, dq, ldq, true);  // dQ += dS·K
}
#endif

// Transposes rows [j0, j0 + nk) of one head (stride ld) into dst [D][nk].
void pack_transposed(const float* src, int64_t ld, int64_t nk, int64_t D, float* dst) {
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t d = 0; d < D; ++d) dst[d * nk + j] = src[j * ld + d];
}

}  // namespace

// FlashAttention-2-style backward on the CPU (delta = rowsum(dO ⊙ O) per query row): per key block
// dK, dV accumulate over the query blocks and dQ over the key blocks, P recomputed from lse —
// never more than a block pair of logits in memory. One task per (sample, head, sequence) when
// they balance over the threads (dQ rows are then owned by the task); otherwise two passes, one
// task per key block (dK, dV) and one per query block (dQ), recomputing the block pairs. Both
// layouts add the same terms in the same order: the results are identical, whatever the thread
// count.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionArgs& args) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Lk = k.size(1), row = H * D;
  const float scale = args.scale > 0 ? args.scale : float(1.0 / std::sqrt(double(D)));
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  const float* op = out.data<float>();
  const float* lp = lse.data<float>();
  const float* gp = dout.data<float>();
  float* dqp = dq.data<float>();
  float* dkp = dk.data<float>();
  float* dvp = dv.data<float>();
  const std::vector<AttnSeq> seqs = attention_sequences(args.seq_lens, Lq, Lk);
  if (seqs.empty()) {  // no query rows: nothing flows back to the keys
    dq.zero_(), dk.zero_(), dv.zero_();
    return;
  }
  int64_t work = 0;
  for (const AttnSeq& sq : seqs) work += sq.nq * sq.nk;
  // Parallel above ~2.5x the forward's threshold in work·D (the backward does ~2.5x its flops):
  // on a busy machine a short parallel region costs more than it saves.
  const bool par = B * H * work * D > 100 * kParallelMin;
  const int threads = par ? omp_get_max_threads() : 1;

  auto block = attn_bwd_block;
#ifdef OSP_HAVE_AVX2_KERNEL
  if (simd_enabled()) block = attn_bwd_block_avx2;
#endif

  // Per-thread scratch.
  struct Scratch {
    std::vector<float> qs, delta, kt, vt, s, dp, dkacc, dvacc, dqacc;
    explicit Scratch(int64_t D)
        : qs(kBQ * D), delta(kBQ), kt(kBK * D), vt(kBK * D), s(kBQ * kBK), dp(kBQ * kBK),
          dkacc(kBK * D), dvacc(kBK * D), dqacc(kBQ * D) {}
  };
  const int64_t nseq = int64_t(seqs.size());
  auto head = [&](const float* base, int64_t b, int64_t h, int64_t i, int64_t L) {
    return base + (b * L + i) * row + h * D;
  };
  // Query block [i0, i0 + nq): qs = q·scale and delta = Σ_d dO·O per row (recomputed for every
  // key block that needs it: nq·D work against the pair's ~10·nq·nk·D, and no [B, H, Lq]
  // buffer or extra parallel pass).
  auto pack_q = [&](Scratch& w, int64_t b, int64_t h, int64_t i0, int64_t nq) {
    for (int64_t i = 0; i < nq; ++i) {
      const float* src = head(qp, b, h, i0 + i, Lq);
      for (int64_t d = 0; d < D; ++d) w.qs[size_t(i * D + d)] = src[d] * scale;
      const float* oi = head(op, b, h, i0 + i, Lq);
      const float* gi = head(gp, b, h, i0 + i, Lq);
      double sum = 0;
      for (int64_t d = 0; d < D; ++d) sum += double(oi[d]) * double(gi[d]);
      w.delta[size_t(i)] = float(sum);
    }
  };
  auto pack_kv = [&](Scratch& w, int64_t b, int64_t h, int64_t j0, int64_t nk) {
    pack_transposed(head(kp, b, h, j0, Lk), row, nk, D, w.kt.data());
    pack_transposed(head(vp, b, h, j0, Lk), row, nk, D, w.vt.data());
  };
  // dK, dV of key block [j0, j0 + nk) of sequence sq, over all its query blocks; with dq_rows,
  // dQ (unscaled) is accumulated into the output rows too.
  auto key_block = [&](Scratch& w, int64_t b, int64_t h, const AttnSeq& sq, int64_t j0,
                       int64_t nk, bool with_dq) {
    const int64_t bh = b * H + h;
    pack_kv(w, b, h, j0, nk);
    std::fill(w.dkacc.begin(), w.dkacc.end(), 0.f);
    std::fill(w.dvacc.begin(), w.dvacc.end(), 0.f);
    for (int64_t i0 = sq.q0; i0 < sq.q0 + sq.nq; i0 += kBQ) {
      const int64_t nq = std::min(kBQ, sq.q0 + sq.nq - i0);
      pack_q(w, b, h, i0, nq);
      block(w.qs.data(), nq, D, head(gp, b, h, i0, Lq), row, lp + bh * Lq + i0,
            w.delta.data(), w.kt.data(), w.vt.data(), nk, head(kp, b, h, j0, Lk),
            w.s.data(), w.dp.data(), w.dvacc.data(), w.dkacc.data(),
            with_dq ? dqp + (b * Lq + i0) * row + h * D : nullptr, row);
    }
    for (int64_t j = 0; j < nk; ++j) {
      std::copy_n(w.dkacc.data() + j * D, D, dkp + (b * Lk + j0 + j) * row + h * D);
      std::copy_n(w.dvacc.data() + j * D, D, dvp + (b * Lk + j0 + j) * row + h * D);
    }
  };
  auto scale_rows = [&](float* base, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) base[i * row + d] *= scale;
  };

  // Layout choice (it changes the speed, not the bits): one task per (sample, head, sequence)
  // unless its load balance over the threads is worse than the two-pass layout's ~7/5 extra
  // work (the two passes recompute S and dP). Makespans in query·key pairs per thread.
  int64_t max_work = 0;
  for (const AttnSeq& sq : seqs) max_work = std::max(max_work, sq.nq * sq.nk);
  const int64_t ntasks = B * H * nseq;
  const double total = double(B * H) * double(work);
  const double fused_span = std::max(double(max_work), double((ntasks + threads - 1) / threads) *
                                                           total / double(ntasks));
  const double split_span = 1.4 * total / threads;
  if (fused_span <= split_span) {
    // One task per (sample, head, sequence).
#pragma omp parallel if (par)
    {
      Scratch w(D);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < B * H * nseq; ++t) {
        const int64_t si = t % nseq, h = (t / nseq) % H, b = t / (nseq * H);
        const AttnSeq& sq = seqs[size_t(si)];
        float* dq0 = dqp + (b * Lq + sq.q0) * row + h * D;
        for (int64_t i = 0; i < sq.nq; ++i) std::fill_n(dq0 + i * row, D, 0.f);
        for (int64_t j0 = sq.k0; j0 < sq.k0 + sq.nk; j0 += kBK)
          key_block(w, b, h, sq, j0, std::min(kBK, sq.k0 + sq.nk - j0), true);
        scale_rows(dq0, sq.nq);
      }
    }
  } else {
    // Pass 1: one task per key block (dK, dV). Pass 2: one task per query block (dQ).
    std::vector<std::pair<int64_t, int64_t>> kblocks, qblocks;  // (sequence, first row)
    for (int64_t si = 0; si < nseq; ++si) {
      for (int64_t j0 = seqs[si].k0; j0 < seqs[si].k0 + seqs[si].nk; j0 += kBK)
        kblocks.push_back({si, j0});
      for (int64_t i0 = seqs[si].q0; i0 < seqs[si].q0 + seqs[si].nq; i0 += kBQ)
        qblocks.push_back({si, i0});
    }
    const int64_t nkb = int64_t(kblocks.size()), nqb = int64_t(qblocks.size());
#pragma omp parallel if (par)
    {
      Scratch w(D);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < B * H * nkb; ++t) {
        const int64_t kb = t % nkb, h = (t / nkb) % H, b = t / (nkb * H);
        const AttnSeq& sq = seqs[size_t(kblocks[kb].first)];
        const int64_t j0 = kblocks[kb].second;
        key_block(w, b, h, sq, j0, std::min(kBK, sq.k0 + sq.nk - j0), false);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < B * H * nqb; ++t) {
        const int64_t qb = t % nqb, h = (t / nqb) % H, b = t / (nqb * H), bh = b * H + h;
        const AttnSeq& sq = seqs[size_t(qblocks[qb].first)];
        const int64_t i0 = qblocks[qb].second, nq = std::min(kBQ, sq.q0 + sq.nq - i0);
        pack_q(w, b, h, i0, nq);
        std::fill(w.dqacc.begin(), w.dqacc.end(), 0.f);
        for (int64_t j0 = sq.k0; j0 < sq.k0 + sq.nk; j0 += kBK) {
          const int64_t nk = std::min(kBK, sq.k0 + sq.nk - j0);
          pack_kv(w, b, h, j0, nk);
          block(w.qs.data(), nq, D, head(gp, b, h, i0, Lq), row, lp + bh * Lq + i0,
                w.delta.data(), w.kt.data(), w.vt.data(), nk, head(kp, b, h, j0, Lk),
                w.s.data(), w.dp.data(), nullptr, nullptr, w.dqacc.data(), D);
        }
        for (int64_t i = 0; i < nq; ++i) {
          float* dst = dqp + (b * Lq + i0 + i) * row + h * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = w.dqacc[size_t(i * D + d)] * scale;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- data movement
// out[index[i], :] += src[i, :]. An index may repeat, so threads split the columns (each
// thread adds every row of its columns, in row order): no races, and the same bits for any
// thread count.
void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const int64_t M = src.size(0), C = src.size(1);
  const float* sp = src.data<float>();
  const int32_t* ip = index.data<int32_t>();
  float* op = out.data<float>();
  constexpr int64_t kCols = 64;
  const int64_t nchunks = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (M * C > kParallelMin && nchunks > 1)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t c0 = ch * kCols, c1 = std::min(C, c0 + kCols);
    for (int64_t i = 0; i < M; ++i) {
      if (ip[i] < 0) continue;
      float* orow = op + int64_t(ip[i]) * C;
      const float* srow = sp + i * C;
      for (int64_t c = c0; c < c1; ++c) orow[c] += srow[c];
    }
  }
}

// Adjoint of patchify (a permutation): dz[c, f, i·ph + q, j·pw + r] =
// dpatches[(f·hh + i)·ww + j, (c·ph + q)·pw + r].
void patchify_backward(const Tensor& dpatches, int pt, int ph, int pw, Tensor& dz) {
  const int64_t C = dz.size(0), T = dz.size(1), H = dz.size(2), W = dz.size(3);
  const int64_t hh = H / ph, ww = W / pw, K = C * ph * pw;
  const float* g = dpatches.data<float>();
  float* o = dz.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (dz.numel() > kParallelMin)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t f = 0; f < T; ++f)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const int64_t i = y / ph, q = y % ph, j = x / pw, r = x % pw;
          o[((c * T + f) * H + y) * W + x] = g[((f * hh + i) * ww + j) * K + (c * ph + q) * pw + r];
        }
}

// Adjoint of unpatchify (a permutation): dy[(f·h + i)·w + j, (q·pw + r)·C + c] =
// dout[c, f, i·ph + q, j·pw + r].
void unpatchify_backward(const Tensor& dout, int64_t T, int64_t h, int64_t w, int pt, int ph,
                         int pw, Tensor& dy) {
  const int64_t C = dout.size(0), H = h * ph, W = w * pw, K = dy.size(1);
  const float* g = dout.data<float>();
  float* o = dy.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (dy.numel() > kParallelMin)
  for (int64_t f = 0; f < T; ++f)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) {
        float* row = o + ((f * h + i) * w + j) * K;
        for (int q = 0; q < ph; ++q)
          for (int r = 0; r < pw; ++r)
            for (int64_t c = 0; c < C; ++c)
              row[(q * pw + r) * C + c] = g[((c * T + f) * H + i * ph + q) * W + j * pw + r];
      }
}

}  // namespace osp::ops::cpu
