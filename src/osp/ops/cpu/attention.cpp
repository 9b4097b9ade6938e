// CPU attention: blocked flash-style (online softmax) in fp32, OpenMP over
// (batch, head, query block). Each task keeps its query block's running max / sum / output and
// streams the keys in blocks: S = Q·Kᵀ·scale (+bias), rescale, O += P·V.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OSP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OSP_CPU_CLONES
#endif

namespace osp::ops::cpu {
namespace {

constexpr int64_t kQB = 64;   // query rows per task
constexpr int64_t kKB = 128;  // keys per streamed block

// One key block for one query block.
//   qb [nq, D] (pre-scaled queries), kt [D, nk] (keys transposed), vb [nk, D]
//   bias rows (stride ldb) or null; m, l [nq]; o [nq, D]; s scratch [nq, kKB]
OSP_CPU_CLONES
void attend_block(const float* qb, int64_t nq, const float* kt, const float* vb, int64_t nk,
                  int64_t D, const float* bias, int64_t ldb, float* m, float* l, float* o,
                  float* s) {
  for (int64_t i = 0; i < nq; ++i) {
    float* si = s + i * kKB;
    for (int64_t j = 0; j < nk; ++j) si[j] = 0.f;
    const float* qi = qb + i * D;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = qi[d];
      const float* kd = kt + d * nk;
      for (int64_t j = 0; j < nk; ++j) si[j] += qd * kd[j];
    }
    if (bias) {
      const float* bi = bias + i * ldb;
      for (int64_t j = 0; j < nk; ++j) si[j] += bi[j];
    }
    float mx = m[i];
    for (int64_t j = 0; j < nk; ++j) mx = std::max(mx, si[j]);
    // exp(-inf - finite) = 0 handles the first block; an all -inf row cannot occur here.
    const float corr = std::exp(m[i] - mx);
    float sum = 0.f;
    for (int64_t j = 0; j < nk; ++j) {
      si[j] = std::exp(si[j] - mx);
      sum += si[j];
    }
    l[i] = l[i] * corr + sum;
    m[i] = mx;
    float* oi = o + i * D;
    for (int64_t d = 0; d < D; ++d) oi[d] *= corr;
    for (int64_t j = 0; j < nk; ++j) {
      const float p = si[j];
      const float* vj = vb + j * D;
      for (int64_t d = 0; d < D; ++d) oi[d] += p * vj[d];
    }
  }
}

}  // namespace

void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
               const AttentionArgs& args) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Lk = k.size(1);
  const float scale = args.scale > 0 ? args.scale : float(1.0 / std::sqrt(double(D)));
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  const float* bp = args.bias ? args.bias->data<float>() : nullptr;
  const int32_t* kvl = args.kv_lens ? args.kv_lens->data<int32_t>() : nullptr;
  const int32_t* ql = args.q_lens ? args.q_lens->data<int32_t>() : nullptr;
  float* op = out.data<float>();
  const int64_t nqb = (Lq + kQB - 1) / kQB;
  const int64_t tasks = B * H * nqb;
  const int64_t row = H * D;  // stride between tokens in [B, L, H, D]

#pragma omp parallel if (B * H * Lq * Lk * D > 256 * kParallelMin)
  {
    std::vector<float> qbuf(kQB * D), kt(D * kKB), vbuf(kKB * D), s(kQB * kKB), m(kQB), l(kQB),
        o(kQB * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t qblk = task % nqb, h = (task / nqb) % H, b = task / (nqb * H);
      const int64_t i0 = qblk * kQB, i1 = std::min(Lq, i0 + kQB);
      const int64_t qlen = ql ? std::min<int64_t>(ql[b], Lq) : Lq;
      const int64_t klen = kvl ? std::min<int64_t>(kvl[b], Lk) : Lk;
      const int64_t iend = std::min(i1, qlen);
      // Rows past q_len (or every row when no key is valid) are zero.
      for (int64_t i = std::max(i0, iend); i < i1; ++i)
        std::fill_n(op + (b * Lq + i) * row + h * D, D, 0.f);
      const int64_t nq = iend - i0;
      if (nq <= 0) continue;
      if (klen == 0) {
        for (int64_t i = i0; i < iend; ++i) std::fill_n(op + (b * Lq + i) * row + h * D, D, 0.f);
        continue;
      }
      for (int64_t i = 0; i < nq; ++i) {
        const float* src = qp + (b * Lq + i0 + i) * row + h * D;
        for (int64_t d = 0; d < D; ++d) qbuf[i * D + d] = src[d] * scale;
      }
      std::fill_n(m.data(), nq, -std::numeric_limits<float>::infinity());
      std::fill_n(l.data(), nq, 0.f);
      std::fill_n(o.data(), nq * D, 0.f);
      for (int64_t j0 = 0; j0 < klen; j0 += kKB) {
        const int64_t nk = std::min(kKB, klen - j0);
        for (int64_t j = 0; j < nk; ++j) {
          const float* kr = kp + (b * Lk + j0 + j) * row + h * D;
          const float* vr = vp + (b * Lk + j0 + j) * row + h * D;
          for (int64_t d = 0; d < D; ++d) {
            kt[d * nk + j] = kr[d];
            vbuf[j * D + d] = vr[d];
          }
        }
        const float* bias = bp ? bp + (h * Lq + i0) * Lk + j0 : nullptr;
        attend_block(qbuf.data(), nq, kt.data(), vbuf.data(), nk, D, bias, Lk, m.data(),
                     l.data(), o.data(), s.data());
      }
      for (int64_t i = 0; i < nq; ++i) {
        float* dst = op + (b * Lq + i0 + i) * row + h * D;
        const float inv = 1.f / l[i];
        for (int64_t d = 0; d < D; ++d) dst[d] = o[i * D + d] * inv;
      }
    }
  }
}

}  // namespace osp::ops::cpu
