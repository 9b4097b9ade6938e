// CPU attention: blocked flash-style (online softmax) in fp32, OpenMP over
// (batch, head, query block). Each task keeps its query block's running max / sum / output and
// streams the keys in blocks: S = Q·Kᵀ·scale (+bias), rescale, O += P·V. K (transposed per
// block) and V are packed once per call and shared by all query blocks. On AVX2+FMA machines
// (checked at run time) the two products use 4×16 register-tiled micro-kernels and the softmax
// a vectorised exp; elsewhere plain loops. Packed sequences (args.seq_lens) are handled here, one
// problem per (sample, head, sequence, query block); attention_forward_lse also writes the rows'
// log-sum-exp for the backward (cpu/backward.cpp).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "osp/ops/cpu/cpu_backward.h"
#include "osp/ops/cpu/cpu_kernels.h"
#include "osp/ops/cpu/cpu_ops.h"
#include "osp/ops/cpu/simd_avx2.h"

namespace osp::ops::cpu {
namespace {

constexpr int64_t kQB = 64;   // query rows per task
constexpr int64_t kKB = 128;  // keys per streamed block

// Softmax update of one query row: si[0..nk) holds the logits on entry and the probabilities
// (unnormalised, relative to the new max) on exit; returns the correction factor for the row's
// accumulated output.
inline float softmax_update(float* si, int64_t nk, float& m, float& l) {
  float mx = m;
  for (int64_t j = 0; j < nk; ++j) mx = std::max(mx, si[j]);
  const float corr = std::exp(m - mx);
  float sum = 0.f;
  for (int64_t j = 0; j < nk; ++j) {
    si[j] = std::exp(si[j] - mx);
    sum += si[j];
  }
  l = l * corr + sum;
  m = mx;
  return corr;
}

// One key block for one query block.
//   qb [nq, D] (pre-scaled queries), kt [D, ldk] (keys transposed, nk ≤ ldk used), vb [nk, D]
//   bias rows (stride ldb) or null; m, l [nq]; o [nq, D]; s scratch [nq, kKB]
OSP_CPU_CLONES
void attend_block(const float* qb, int64_t nq, const float* kt, int64_t ldk, const float* vb,
                  int64_t nk, int64_t D, const float* bias, int64_t ldb, float* m, float* l,
                  float* o, float* s) {
  for (int64_t i = 0; i < nq; ++i) {
    float* si = s + i * kKB;
    for (int64_t j = 0; j < nk; ++j) si[j] = 0.f;
    const float* qi = qb + i * D;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = qi[d];
      const float* kd = kt + d * ldk;
      for (int64_t j = 0; j < nk; ++j) si[j] += qd * kd[j];
    }
    if (bias) {
      const float* bi = bias + i * ldb;
      for (int64_t j = 0; j < nk; ++j) si[j] += bi[j];
    }
    const float corr = softmax_update(si, nk, m[i], l[i]);
    float* oi = o + i * D;
    for (int64_t d = 0; d < D; ++d) oi[d] *= corr;
    for (int64_t j = 0; j < nk; ++j) {
      const float p = si[j];
      const float* vj = vb + j * D;
      for (int64_t d = 0; d < D; ++d) oi[d] += p * vj[d];
    }
  }
}


#ifdef OSP_HAVE_AVX2_KERNEL
// softmax_update with 8-lane max, exp and sum.
__attribute__((target("avx2,fma"))) inline float softmax_update_avx2(float* si, int64_t nk,
                                                                     float& m, float& l) {
  const int64_t nk8 = nk & ~int64_t(7);
  float mx = m;
  if (nk8) {
    __m256 vm = _mm256_loadu_ps(si);
    for (int64_t j = 8; j < nk8; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(si + j));
    mx = std::max(mx, hmax8(vm));
  }
  for (int64_t j = nk8; j < nk; ++j) mx = std::max(mx, si[j]);
  const float corr = std::exp(m - mx);
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 vs = _mm256_setzero_ps();
  for (int64_t j = 0; j < nk8; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(si + j), vmx));
    _mm256_storeu_ps(si + j, e);
    vs = _mm256_add_ps(vs, e);
  }
  float sum = hsum8(vs);
  for (int64_t j = nk8; j < nk; ++j) {
    si[j] = std::exp(si[j] - mx);
    sum += si[j];
  }
  l = l * corr + sum;
  m = mx;
  return corr;
}

// Same contract as attend_block, with register-tiled AVX2/FMA micro-kernels: S in 4×16 tiles
// (8 accumulators, K-loop over D) and O += P·V in 4×16 tiles (K-loop over the keys).
__attribute__((target("avx2,fma"))) void attend_block_avx2(
    const float* qb, int64_t nq, const float* kt, int64_t ldk, const float* vb, int64_t nk,
    int64_t D, const float* bias, int64_t ldb, float* m, float* l, float* o, float* s) {
  const int64_t nk16 = nk & ~int64_t(15), nq4 = nq & ~int64_t(3), D16 = D & ~int64_t(15);
  // ---- S = Q·Kᵀ
  for (int64_t i0 = 0; i0 < nq4; i0 += 4) {
    for (int64_t j0 = 0; j0 < nk16; j0 += 16) {
      __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(),
             a11 = _mm256_setzero_ps(), a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(),
             a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
      const float* q0 = qb + i0 * D;
      for (int64_t d = 0; d < D; ++d) {
        const __m256 k0 = _mm256_loadu_ps(kt + d * ldk + j0);
        const __m256 k1 = _mm256_loadu_ps(kt + d * ldk + j0 + 8);
        __m256 b = _mm256_broadcast_ss(q0 + d);
        a00 = _mm256_fmadd_ps(b, k0, a00), a01 = _mm256_fmadd_ps(b, k1, a01);
        b = _mm256_broadcast_ss(q0 + D + d);
        a10 = _mm256_fmadd_ps(b, k0, a10), a11 = _mm256_fmadd_ps(b, k1, a11);
        b = _mm256_broadcast_ss(q0 + 2 * D + d);
        a20 = _mm256_fmadd_ps(b, k0, a20), a21 = _mm256_fmadd_ps(b, k1, a21);
        b = _mm256_broadcast_ss(q0 + 3 * D + d);
        a30 = _mm256_fmadd_ps(b, k0, a30), a31 = _mm256_fmadd_ps(b, k1, a31);
      }
      float* s0 = s + i0 * kKB + j0;
      _mm256_storeu_ps(s0, a00), _mm256_storeu_ps(s0 + 8, a01);
      _mm256_storeu_ps(s0 + kKB, a10), _mm256_storeu_ps(s0 + kKB + 8, a11);
      _mm256_storeu_ps(s0 + 2 * kKB, a20), _mm256_storeu_ps(s0 + 2 * kKB + 8, a21);
      _mm256_storeu_ps(s0 + 3 * kKB, a30), _mm256_storeu_ps(s0 + 3 * kKB + 8, a31);
    }
  }
  // ragged edges (rows past nq4, columns past nk16): plain loops
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t jstart = i < nq4 ? nk16 : 0;
    if (jstart >= nk) continue;
    float* si = s + i * kKB;
    for (int64_t j = jstart; j < nk; ++j) si[j] = 0.f;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = qb[i * D + d];
      const float* kd = kt + d * ldk;
      for (int64_t j = jstart; j < nk; ++j) si[j] += qd * kd[j];
    }
  }
  // ---- bias, online softmax, rescale O
  for (int64_t i = 0; i < nq; ++i) {
    float* si = s + i * kKB;
    if (bias) {
      const float* bi = bias + i * ldb;
      for (int64_t j = 0; j < nk; ++j) si[j] += bi[j];
    }
    const float corr = softmax_update_avx2(si, nk, m[i], l[i]);
    float* oi = o + i * D;
    for (int64_t d = 0; d < D; ++d) oi[d] *= corr;
  }
  // ---- O += P·V
  for (int64_t i0 = 0; i0 < nq4; i0 += 4) {
    const float* p0 = s + i0 * kKB;
    for (int64_t d0 = 0; d0 < D16; d0 += 16) {
      float* o0 = o + i0 * D + d0;
      __m256 a00 = _mm256_loadu_ps(o0), a01 = _mm256_loadu_ps(o0 + 8);
      __m256 a10 = _mm256_loadu_ps(o0 + D), a11 = _mm256_loadu_ps(o0 + D + 8);
      __m256 a20 = _mm256_loadu_ps(o0 + 2 * D), a21 = _mm256_loadu_ps(o0 + 2 * D + 8);
      __m256 a30 = _mm256_loadu_ps(o0 + 3 * D), a31 = _mm256_loadu_ps(o0 + 3 * D + 8);
      for (int64_t j = 0; j < nk; ++j) {
        const __m256 v0 = _mm256_loadu_ps(vb + j * D + d0);
        const __m256 v1 = _mm256_loadu_ps(vb + j * D + d0 + 8);
        __m256 b = _mm256_broadcast_ss(p0 + j);
        a00 = _mm256_fmadd_ps(b, v0, a00), a01 = _mm256_fmadd_ps(b, v1, a01);
        b = _mm256_broadcast_ss(p0 + kKB + j);
        a10 = _mm256_fmadd_ps(b, v0, a10), a11 = _mm256_fmadd_ps(b, v1, a11);
        b = _mm256_broadcast_ss(p0 + 2 * kKB + j);
        a20 = _mm256_fmadd_ps(b, v0, a20), a21 = _mm256_fmadd_ps(b, v1, a21);
        b = _mm256_broadcast_ss(p0 + 3 * kKB + j);
        a30 = _mm256_fmadd_ps(b, v0, a30), a31 = _mm256_fmadd_ps(b, v1, a31);
      }
      _mm256_storeu_ps(o0, a00), _mm256_storeu_ps(o0 + 8, a01);
      _mm256_storeu_ps(o0 + D, a10), _mm256_storeu_ps(o0 + D + 8, a11);
      _mm256_storeu_ps(o0 + 2 * D, a20), _mm256_storeu_ps(o0 + 2 * D + 8, a21);
      _mm256_storeu_ps(o0 + 3 * D, a30), _mm256_storeu_ps(o0 + 3 * D + 8, a31);
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t dstart = i < nq4 ? D16 : 0;
    if (dstart >= D) continue;
    float* oi = o + i * D;
    const float* pi = s + i * kKB;
    for (int64_t j = 0; j < nk; ++j) {
      const float p = pi[j];
      const float* vj = vb + j * D;
      for (int64_t d = dstart; d < D; ++d) oi[d] += p * vj[d];
    }
  }
}

#endif

std::atomic<bool> g_simd_enabled{true};

#ifdef OSP_HAVE_AVX2_KERNEL
bool use_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && g_simd_enabled.load(std::memory_order_relaxed);
}
#endif

}  // namespace

void set_simd_enabled(bool on) { g_simd_enabled.store(on); }
bool simd_enabled() {
#ifdef OSP_HAVE_AVX2_KERNEL
  return use_avx2();
#else
  return false;
#endif
}

namespace {

// The forward on every (sample, head, packed sequence, query block): a sequence is a range of
// query rows and the range of keys it attends (the whole Lq × Lk without seq_lens; the same row
// range on both sides with seq_lens). Key blocks start at each sequence's first key, so a packed
// sequence gives the same bits as a separate call on that sequence alone.
// lse (optional): [B, H, Lq] receives m + log(l), the natural log-sum-exp of the scaled logits.
void attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, float* lsep,
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
  const int64_t row = H * D;  // stride between tokens in [B, L, H, D]

  // Sequences (first row, rows); the keys of a sequence: the same rows with seq_lens, else all.
  std::vector<AttnSeq> seqs = attention_sequences(args.seq_lens, Lq, Lk);
  // Query blocks and key blocks of every sequence: (sequence, first row).
  std::vector<std::pair<int64_t, int64_t>> qblocks, kblocks;
  for (int64_t si = 0; si < int64_t(seqs.size()); ++si) {
    const AttnSeq& sq = seqs[size_t(si)];
    for (int64_t i0 = sq.q0; i0 < sq.q0 + sq.nq; i0 += kQB) qblocks.push_back({si, i0});
    for (int64_t j0 = sq.k0; j0 < sq.k0 + sq.nk; j0 += kKB) kblocks.push_back({si, j0});
  }
  const int64_t nqb = int64_t(qblocks.size()), nkb = int64_t(kblocks.size());
  const int64_t tasks = B * H * nqb;

  // Pack K transposed per key block ([B, H, block][D][kb], kb = keys in the block) and V
  // contiguous per head ([B, H][Lk][D]) once, shared by every query block.
  std::vector<float> kpack(size_t(B * H * Lk * D)), vpack(size_t(B * H * Lk * D));
  int64_t work = 0;
  for (const AttnSeq& sq : seqs) work += sq.nq * sq.nk;
  const bool par = B * H * work * D > 256 * kParallelMin;
#pragma omp parallel for collapse(2) schedule(static) if (par)
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const AttnSeq& sq = seqs[size_t(kblocks[kb].first)];
      const int64_t b = bh / H, h = bh % H, j0 = kblocks[kb].second;
      const int64_t nk = std::min(kKB, sq.k0 + sq.nk - j0);
      float* kt = kpack.data() + (bh * Lk + j0) * D;  // block base: [D][nk]
      float* vv = vpack.data() + (bh * Lk + j0) * D;
      for (int64_t j = 0; j < nk; ++j) {
        const float* kr = kp + (b * Lk + j0 + j) * row + h * D;
        const float* vr = vp + (b * Lk + j0 + j) * row + h * D;
        for (int64_t d = 0; d < D; ++d) kt[d * nk + j] = kr[d];
        std::copy(vr, vr + D, vv + j * D);
      }
    }

#pragma omp parallel if (par)
  {
    std::vector<float> qbuf(kQB * D), s(kQB * kKB), m(kQB), l(kQB), o(kQB * D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t qi = task % nqb, h = (task / nqb) % H, b = task / (nqb * H);
      const AttnSeq& sq = seqs[size_t(qblocks[qi].first)];
      const int64_t i0 = qblocks[qi].second, i1 = std::min(sq.q0 + sq.nq, i0 + kQB);
      const int64_t qlen = ql ? std::min<int64_t>(ql[b], Lq) : Lq;
      const int64_t kend = kvl ? std::min<int64_t>(kvl[b], sq.k0 + sq.nk) : sq.k0 + sq.nk;
      const int64_t iend = std::min(i1, qlen);
      // Rows past q_len (or every row when no key is valid) are zero.
      for (int64_t i = std::max(i0, iend); i < i1; ++i)
        std::fill_n(op + (b * Lq + i) * row + h * D, D, 0.f);
      const int64_t nq = iend - i0;
      if (nq <= 0) continue;
      if (kend <= sq.k0) {
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
      const int64_t bh = b * H + h;
      for (int64_t j0 = sq.k0; j0 < kend; j0 += kKB) {
        const int64_t nk = std::min(kKB, kend - j0), ldk = std::min(kKB, sq.k0 + sq.nk - j0);
        const float* kt = kpack.data() + (bh * Lk + j0) * D;
        const float* vb = vpack.data() + (bh * Lk + j0) * D;
        const float* bias = bp ? bp + (h * Lq + i0) * Lk + j0 : nullptr;
#ifdef OSP_HAVE_AVX2_KERNEL
        if (use_avx2()) {
          attend_block_avx2(qbuf.data(), nq, kt, ldk, vb, nk, D, bias, Lk, m.data(), l.data(),
                            o.data(), s.data());
          continue;
        }
#endif
        attend_block(qbuf.data(), nq, kt, ldk, vb, nk, D, bias, Lk, m.data(), l.data(), o.data(),
                     s.data());
      }
      for (int64_t i = 0; i < nq; ++i) {
        float* dst = op + (b * Lq + i0 + i) * row + h * D;
        const float inv = 1.f / l[i];
        for (int64_t d = 0; d < D; ++d) dst[d] = o[i * D + d] * inv;
      }
      if (lsep)
        for (int64_t i = 0; i < nq; ++i) lsep[bh * Lq + i0 + i] = m[i] + std::log(l[i]);
    }
  }
}

}  // namespace

std::vector<AttnSeq> attention_sequences(const Tensor* seq_lens, int64_t Lq, int64_t Lk) {
  std::vector<AttnSeq> seqs;
  if (!seq_lens) {
    if (Lq > 0) seqs.push_back({0, Lq, 0, Lk});
    return seqs;
  }
  const int32_t* lp = seq_lens->data<int32_t>();
  int64_t off = 0;
  for (int64_t r = 0; r < seq_lens->numel(); ++r) {
    if (lp[r] > 0) seqs.push_back({off, lp[r], off, lp[r]});
    off += lp[r];
  }
  return seqs;
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
               const AttentionArgs& args) {
  attention_impl(q, k, v, out, nullptr, args);
}

void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                           Tensor& lse, const AttentionArgs& args) {
  attention_impl(q, k, v, out, lse.data<float>(), args);
}

}  // namespace osp::ops::cpu
