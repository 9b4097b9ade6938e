// The own tensor-core attention backward (attention_paths.h: attention_flash_backward):
// FlashAttention-2's algorithm on mma.sync m16n8k16 (bf16 operands, fp32 accumulate), with the
// probabilities recomputed from the forward's log-sum-exp. Deterministic: two kernels and no
// atomics (FlashAttention-2 adds dQ across key blocks with atomics, whose order varies).
//
//   1. dq kernel — a CTA of 4 warps per (64 query rows, head, batch), 16 rows per warp. First
//      Δ_i = Σ_d dO_id·O_id of its rows (also written to `delta` for kernel 2); then over the keys
//      in tiles of 64 (K and V double-buffered with cp.async): S = Q·Kᵀ, P = exp(scale·S − lse),
//      dP = dO·Vᵀ, dS = P ∘ (dP − Δ), dQ += dS·K; dQ·scale stored once.
//   2. dkdv kernel — a CTA of 4 warps per (64 keys, head, batch), 16 keys per warp; over the
//      queries in tiles of 64 (Q and dO double-buffered, their lse and Δ beside them): Sᵀ = K·Qᵀ,
//      Pᵀ, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − Δ), dV += Pᵀ·dO, dK += dSᵀ·Q; dK·scale and dV stored.
// Seven 64×64×D GEMMs per (query tile, key tile) instead of the five of an atomic dQ. P and dS
// are rounded to bf16 as GEMM operands (as cuDNN's and FlashAttention's backward do).
// Partial tiles: rows past Lq / Lk load as zeros; keys past Lk get P = 0 in kernel 1 and queries
// past Lq an lse of +inf (P = 0) in kernel 2; nothing past the ends is stored.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/mma_sync.cuh"

namespace osp::ops::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kRows = 64;  // query rows (dq kernel) or keys (dkdv kernel) per CTA, 16 per warp
constexpr int kTile = 64;  // keys (dq kernel) or queries (dkdv kernel) per streamed tile
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

struct BwdParams {
  const bf16 *q, *k, *v, *o, *dout;
  bf16 *dq, *dk, *dv;
  const float* lse;  // [B, H, Lq], natural log
  float* delta;      // [B, H, Lq]: written by the dq kernel, read by the dkdv kernel
  int64_t Lq, Lk, H;
  float scale, scale_log2;
};

// Σ_d a_d·b_d over n bf16 pairs read as 16-byte vectors (n a multiple of 8).
__device__ __forceinline__ float dot_bf16(const bf16* a, const bf16* b, int n) {
  const uint4* a4 = reinterpret_cast<const uint4*>(a);
  const uint4* b4 = reinterpret_cast<const uint4*>(b);
  float s = 0.f;
  for (int c = 0; c < n / 8; ++c) {
    uint4 x = a4[c], y = b4[c];
    const __nv_bfloat162* xh = reinterpret_cast<const __nv_bfloat162*>(&x);
    const __nv_bfloat162* yh = reinterpret_cast<const __nv_bfloat162*>(&y);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 fx = __bfloat1622float2(xh[e]), fy = __bfloat1622float2(yh[e]);
      s += fx.x * fy.x + fx.y * fy.y;
    }
  }
  return s;
}

// Stores a warp's 16 × D accumulator rows (row0 + g, row0 + g + 8) times `mul` as bf16, rows < limit.
template <int D>
__device__ __forceinline__ void store_rows(bf16* base, int64_t rs, int64_t row0, int64_t limit,
                                           const float (&acc)[D / 8][4], float mul, int g, int t) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t row = row0 + g + hr * 8;
    if (row >= limit) continue;
    bf16* dst = base + row * rs;
#pragma unroll
    for (int d = 0; d < D / 8; ++d)
      *reinterpret_cast<uint32_t*>(dst + d * 8 + 2 * t) = pack_bf16(acc[d][2 * hr] * mul, acc[d][2 * hr + 1] * mul);
  }
}

// c1 = A1·B1ᵀ and c2 = A2·B2ᵀ, 16 × kTile each, k = D: A1/A2 are this warp's 16 rows (from r0) of
// the [rows][D] tiles sA1/sA2, B1/B2 all kTile rows of sB1/sB2 (each GEMM's A fragment is loaded
// once per k step and meets every B fragment).
template <int D>
__device__ __forceinline__ void two_scores(float (&c1)[kTile / 8][4], float (&c2)[kTile / 8][4], uint32_t sA1,
                                           uint32_t sA2, uint32_t sB1, uint32_t sB2, int r0, int lane) {
#pragma unroll
  for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) c1[n][e] = c2[n][e] = 0.f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t a1[4], a2[4];
    ldsm_x4(a_rows<D>(sA1, r0, ks, lane), a1[0], a1[1], a1[2], a1[3]);
    ldsm_x4(a_rows<D>(sA2, r0, ks, lane), a2[0], a2[1], a2[2], a2[3]);
#pragma unroll
    for (int np = 0; np < kTile / 16; ++np) {
      uint32_t b0, b1, b2, b3;
      ldsm_x4(b_rows<D>(sB1, np * 16, ks, lane), b0, b1, b2, b3);
      mma_bf16(c1[2 * np], a1, b0, b1);
      mma_bf16(c1[2 * np + 1], a1, b2, b3);
      ldsm_x4(b_rows<D>(sB2, np * 16, ks, lane), b0, b1, b2, b3);
      mma_bf16(c2[2 * np], a2, b0, b1);
      mma_bf16(c2[2 * np + 1], a2, b2, b3);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, 2) flash_bwd_dq_kernel(BwdParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float s_lse2[kRows], s_delta[kRows];
  constexpr int TILE = kRows * D * 2;  // bytes of one 64 × D tile
  const uint32_t sQ = smem_u32(smem), sdO = sQ + TILE;
  const uint32_t sK0 = sQ + 2 * TILE, sV0 = sQ + 4 * TILE;  // 2 stages each

  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t m0 = int64_t(blockIdx.x) * kRows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t rs = p.H * D;
  const int64_t qoff = int64_t(b) * p.Lq * rs + h * D, koff = int64_t(b) * p.Lk * rs + h * D;
  const int64_t soff = (int64_t(b) * p.H + h) * p.Lq;  // lse / Δ row 0 of this (b, h)
  const int ntiles = int((p.Lk + kTile - 1) / kTile);

  load_tile<D, kRows, kThreads>(sQ, p.q + qoff, rs, m0, p.Lq);
  load_tile<D, kRows, kThreads>(sdO, p.dout + qoff, rs, m0, p.Lq);
  if (ntiles > 0) {
    load_tile<D, kTile, kThreads>(sK0, p.k + koff, rs, 0, p.Lk);
    load_tile<D, kTile, kThreads>(sV0, p.v + koff, rs, 0, p.Lk);
  }
  cp_async_commit();

  {  // Δ of this CTA's rows: two threads per row, half of D each
    const int r = threadIdx.x >> 1, half = threadIdx.x & 1;
    const int64_t row = m0 + r;
    float acc = 0.f;
    if (row < p.Lq) {
      const int64_t e0 = qoff + row * rs + half * (D / 2);
      acc = dot_bf16(p.o + e0, p.dout + e0, D / 2);
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    if (half == 0) {
      s_delta[r] = acc;
      s_lse2[r] = row < p.Lq ? p.lse[soff + row] * kLog2e : 0.f;
      if (row < p.Lq) p.delta[soff + row] = acc;
    }
  }

  float dq[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.f;
  const int r_lo = warp * 16 + g;  // this thread's rows in the CTA: r_lo, r_lo + 8

  for (int j = 0; j < ntiles; ++j) {
    const int st = j & 1;
    if (j + 1 < ntiles) {
      load_tile<D, kTile, kThreads>(sK0 + (st ^ 1) * TILE, p.k + koff, rs, int64_t(j + 1) * kTile, p.Lk);
      load_tile<D, kTile, kThreads>(sV0 + (st ^ 1) * TILE, p.v + koff, rs, int64_t(j + 1) * kTile, p.Lk);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const float lse2[2] = {s_lse2[r_lo], s_lse2[r_lo + 8]};
    const float dl[2] = {s_delta[r_lo], s_delta[r_lo + 8]};
    const uint32_t sK = sK0 + st * TILE, sV = sV0 + st * TILE;

    // S = Q·Kᵀ and dP = dO·Vᵀ: 16 rows × 64 keys per warp
    float s[kTile / 8][4], dp[kTile / 8][4];
    two_scores<D>(s, dp, sQ, sdO, sK, sV, warp * 16, lane);
    // dS = P ∘ (dP − Δ), in s
    const int64_t n0 = int64_t(j) * kTile;
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + n * 8 + 2 * t + (e & 1);
        const float pr = key < p.Lk ? exp2f(s[n][e] * p.scale_log2 - lse2[e >> 1]) : 0.f;
        s[n][e] = pr * (dp[n][e] - dl[e >> 1]);
      }
    accumulate<D, kTile>(dq, s, sK, lane);  // dQ += dS·K
    __syncthreads();  // the next iteration's prefetch refills this stage
  }
  store_rows<D>(p.dq + qoff, rs, m0 + warp * 16, p.Lq, dq, p.scale, g, t);
}

template <int D>
__global__ void __launch_bounds__(kThreads, 2) flash_bwd_dkdv_kernel(BwdParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float s_lse2[2][kTile], s_delta[2][kTile];
  constexpr int TILE = kRows * D * 2;
  const uint32_t sK = smem_u32(smem), sV = sK + TILE;
  const uint32_t sQ0 = sK + 2 * TILE, sdO0 = sK + 4 * TILE;  // 2 stages each

  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t n0 = int64_t(blockIdx.x) * kRows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t rs = p.H * D;
  const int64_t qoff = int64_t(b) * p.Lq * rs + h * D, koff = int64_t(b) * p.Lk * rs + h * D;
  const int64_t soff = (int64_t(b) * p.H + h) * p.Lq;
  const int ntiles = int((p.Lq + kTile - 1) / kTile);

  // lse (base 2; +inf past Lq, so P = 0 there) and Δ of query tile i into stage st
  auto stats = [&](int i, int st) {
    if (threadIdx.x < kTile) {
      const int64_t row = int64_t(i) * kTile + threadIdx.x;
      s_lse2[st][threadIdx.x] = row < p.Lq ? p.lse[soff + row] * kLog2e : INFINITY;
      s_delta[st][threadIdx.x] = row < p.Lq ? p.delta[soff + row] : 0.f;
    }
  };
  load_tile<D, kRows, kThreads>(sK, p.k + koff, rs, n0, p.Lk);
  load_tile<D, kRows, kThreads>(sV, p.v + koff, rs, n0, p.Lk);
  if (ntiles > 0) {
    load_tile<D, kTile, kThreads>(sQ0, p.q + qoff, rs, 0, p.Lq);
    load_tile<D, kTile, kThreads>(sdO0, p.dout + qoff, rs, 0, p.Lq);
    stats(0, 0);
  }
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] = dv[d][e] = 0.f;

  for (int i = 0; i < ntiles; ++i) {
    const int st = i & 1;
    if (i + 1 < ntiles) {
      load_tile<D, kTile, kThreads>(sQ0 + (st ^ 1) * TILE, p.q + qoff, rs, int64_t(i + 1) * kTile, p.Lq);
      load_tile<D, kTile, kThreads>(sdO0 + (st ^ 1) * TILE, p.dout + qoff, rs, int64_t(i + 1) * kTile, p.Lq);
      cp_async_commit();
      stats(i + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint32_t sQ = sQ0 + st * TILE, sdO = sdO0 + st * TILE;

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: 16 keys × 64 queries per warp
    float s[kTile / 8][4], dp[kTile / 8][4];
    two_scores<D>(s, dp, sK, sV, sQ, sdO, warp * 16, lane);
    // Pᵀ in s, dSᵀ = Pᵀ ∘ (dPᵀ − Δ) in dp (Δ and lse per query: the column)
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + 2 * t + (e & 1);
        const float pr = exp2f(s[n][e] * p.scale_log2 - s_lse2[st][c]);
        s[n][e] = pr;
        dp[n][e] = pr * (dp[n][e] - s_delta[st][c]);
      }
    accumulate<D, kTile>(dv, s, sdO, lane);  // dV += Pᵀ·dO
    accumulate<D, kTile>(dk, dp, sQ, lane);  // dK += dSᵀ·Q
    __syncthreads();  // this stage (tiles and statistics) is refilled in the next iteration
  }
  store_rows<D>(p.dk + koff, rs, n0 + warp * 16, p.Lk, dk, p.scale, g, t);
  store_rows<D>(p.dv + koff, rs, n0 + warp * 16, p.Lk, dv, 1.f, g, t);
}

}  // namespace

void attention_flash_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const float* lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                              float scale, float* delta) {
  for (auto [t, n] : {std::pair<const Tensor*, const char*>{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"},
                      {&dout, "dout"}, {&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}}) {
    require_bthd(*t, "attention_flash_backward", n);
    require_aligned16(*t, "attention_flash_backward", n);
  }
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  OSP_CHECK(D == 64 || D == 128, "cuda::attention_flash_backward: head dim must be 64 or 128, got ", D);
  OSP_CHECK(k.shape() == Shape({B, Lk, H, D}) && v.shape() == k.shape() && dk.shape() == k.shape() &&
                dv.shape() == k.shape() && out.shape() == q.shape() && dout.shape() == q.shape() &&
                dq.shape() == q.shape(),
            "cuda::attention_flash_backward: q/out/dout/dq must be [B, Lq, H, D] and k/v/dk/dv [B, Lk, H, D]");
  OSP_CHECK(H <= 65535 && B <= 65535, "cuda::attention_flash_backward: H and B must be <= 65535");
  OSP_CHECK(Lq == 0 || (lse && delta), "cuda::attention_flash_backward: lse and delta are required");
  BwdParams p{};
  p.q = q.data<bf16>();
  p.k = k.data<bf16>();
  p.v = v.data<bf16>();
  p.o = out.data<bf16>();
  p.dout = dout.data<bf16>();
  p.dq = dq.data<bf16>();
  p.dk = dk.data<bf16>();
  p.dv = dv.data<bf16>();
  p.lse = lse;
  p.delta = delta;
  p.Lq = Lq;
  p.Lk = Lk;
  p.H = H;
  p.scale = scale;
  p.scale_log2 = scale * kLog2e;
  const size_t smem = size_t(6) * kRows * D * 2;
  auto launch = [&](auto kernel, int64_t rows) {
    if (rows <= 0 || B == 0 || H == 0) return;
    OSP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<dim3(unsigned((rows + kRows - 1) / kRows), unsigned(H), unsigned(B)), kThreads, smem, stream()>>>(p);
    OSP_CUDA_LAUNCH_CHECK("flash attention backward");
  };
  // the dq kernel first: it writes Δ, which the dkdv kernel reads
  if (D == 128) {
    launch(flash_bwd_dq_kernel<128>, Lq);
    launch(flash_bwd_dkdv_kernel<128>, Lk);
  } else {
    launch(flash_bwd_dq_kernel<64>, Lq);
    launch(flash_bwd_dkdv_kernel<64>, Lk);
  }
}

}  // namespace osp::ops::cuda
