// CUDA implementations of ops/vae_backward.h (F32; arguments validated by ops/vae_backward.cpp).
//  * conv3d_backward: per chunk of whole output frames, or per band of output rows of one frame
//    when a frame's columns exceed the cap (conv_chunking, as the forward, ops/cuda/conv3d.cu):
//    im2col + cuBLAS GEMM dw += dy·colᵀ; dcol = wᵀ·dy + a gather col2im (every thread owns one
//    dx element: no atomics, deterministic); db by a per-channel block reduction.
//    GEMMs in TF32 unless OSP_VAE_FP32=1 (the forward's switch).
//  * channel_rms_norm_backward: one thread per position for dx (norms kept in scratch), then one
//    block per channel for dgamma (fixed-order reduction: deterministic).
//  * spatial_attention_backward: per frame and query block, P recomputed with cuBLAS (FP32
//    math, as the forward), a row kernel for softmax and dS = P∘(dP − Σ P·dP), then the dq, dk,
//    dv GEMMs.
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>

#include "osp/ops/cuda/conv_blas.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/vae_backward.h"

namespace osp::ops::cuda {
namespace {

#define OSP_VB_GRID_STRIDE(i, n)                                               \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// Row-major C[M, N] = alpha·op(A)·op(B) + beta·C with op(A) [M, K], op(B) [K, N]; A stored
// row-major [M, K] (or [K, M] when ta) with row stride lda, likewise B.
void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
             int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
             bool tf32) {
  // Column-major view: Cᵀ[N, M] = op(B)ᵀ · op(A)ᵀ.
  OSP_CUBLAS_CHECK(cublasGemmEx(conv_cublas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B,
                                CUDA_R_32F, int(ldb), A, CUDA_R_32F, int(lda), &beta, C,
                                CUDA_R_32F, int(ldc),
                                tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
}

// Block-wide sum (blockDim.x a multiple of 32, ≤ 1024); the result is valid in every thread.
__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // red may still be read from a previous call
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
    if (threadIdx.x == 0) red[0] = w;
  }
  __syncthreads();
  return red[0];
}
__device__ float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) w = fmaxf(w, __shfl_xor_sync(0xffffffffu, w, o));
    if (threadIdx.x == 0) red[0] = w;
  }
  __syncthreads();
  return red[0];
}

// ---------------------------------------------------------------- conv3d

// dx[ti, ci, iy, ix] += Σ_{f, ta, b, c} dcol[((ci·kt + ta)·kh + b)·kw + c, f·nb + (oy − y0)·Wo + ox]
// over the chunk's nf output frames (frame f's tap ta reads input frame t0 + f·st + ta) and the
// taps whose output (oy, ox) lies in rows [y0, y1); nb = (y1 − y0)·Wo.  One thread per input
// element of frames [tlo, thi): every dx element has one writer per launch.
__global__ void vb_col2im_kernel(const float* __restrict__ dcol, float* __restrict__ dx,
                                 int64_t tlo, int64_t thi, int64_t Cin, int64_t H, int64_t W,
                                 int kt, int kh, int kw, int64_t t0, int st, int64_t nf, int sh,
                                 int sw, int pt, int pl, int64_t y0, int64_t y1, int64_t Wo) {
  const int64_t nb = (y1 - y0) * Wo, row = nf * nb;
  OSP_VB_GRID_STRIDE(idx, (thi - tlo) * Cin * H * W) {
    const int64_t ix = idx % W, iy = (idx / W) % H, ci = (idx / (H * W)) % Cin;
    const int64_t ti = tlo + idx / (H * W * Cin);
    // Frames f with 0 <= ti − t0 − f·st < kt.
    const int64_t rel = ti - t0;
    const int64_t f_hi = std::min<int64_t>(nf - 1, rel / st);
    int64_t f_lo = rel - (kt - 1) <= 0 ? 0 : (rel - (kt - 1) + st - 1) / st;
    float acc = 0.f;
    for (int64_t f = f_lo; f <= f_hi; ++f) {
      const int ta = int(rel - f * st);
      for (int b = 0; b < kh; ++b) {
        const int64_t ny = iy + pt - b;
        if (ny < 0 || ny % sh) continue;
        const int64_t oy = ny / sh;
        if (oy < y0 || oy >= y1) continue;
        for (int c = 0; c < kw; ++c) {
          const int64_t nx = ix + pl - c;
          if (nx < 0 || nx % sw) continue;
          const int64_t ox = nx / sw;
          if (ox >= Wo) continue;
          const int64_t k = ((ci * kt + ta) * kh + b) * kw + c;
          acc += dcol[k * row + f * nb + (oy - y0) * Wo + ox];
        }
      }
    }
    dx[((ti * Cin + ci) * H + iy) * W + ix] += acc;
  }
}

// dyc[co, f·nb + p] = dy[f0 + f, co, y0·Wo + p] for f < nf, p < nb: the chunk's output gradient
// as one [Cout, nf·nb] matrix matching im2col's column order.
__global__ void vb_gather_dy_kernel(const float* __restrict__ dy, float* __restrict__ dyc,
                                    int64_t Cout, int64_t HWo, int64_t f0, int64_t nf, int64_t y0,
                                    int64_t nb, int64_t Wo) {
  const int64_t row = nf * nb;
  OSP_VB_GRID_STRIDE(idx, Cout * row) {
    const int64_t co = idx / row, q = idx % row, f = q / nb, p = q % nb;
    dyc[idx] = dy[((f0 + f) * Cout + co) * HWo + y0 * Wo + p];
  }
}

// db[co] += Σ_{t, p} dy[t, co, p]: one block per output channel.
__global__ void vb_bias_grad_kernel(const float* __restrict__ dy, float* __restrict__ db,
                                    int64_t To, int64_t Cout, int64_t HWo) {
  __shared__ float red[32];
  const int64_t co = blockIdx.x;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < To * HWo; i += blockDim.x) {
    const int64_t t = i / HWo, p = i % HWo;
    s += dy[(t * Cout + co) * HWo + p];
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) db[co] += s;
}

// ---------------------------------------------------------------- channel RMS norm

// One thread per position (n, s): dx and the clamped inverse norm (inv_out).
__global__ void vb_norm_dx_kernel(const float* __restrict__ x, const float* __restrict__ g,
                                  const float* __restrict__ dy, float* __restrict__ dx,
                                  float* __restrict__ inv_out, int64_t N, int64_t C, int64_t S,
                                  float scale, bool silu) {
  OSP_VB_GRID_STRIDE(idx, N * S) {
    const int64_t n = idx / S, s = idx % S;
    const float* xn = x + n * C * S + s;
    const float* gn = dy + n * C * S + s;
    float* dn = dx + n * C * S + s;
    float ss = 0.f;
    for (int64_t c = 0; c < C; ++c) ss += xn[c * S] * xn[c * S];
    const float nrm = sqrtf(ss);
    const bool clamped = !(nrm > 1e-12f);
    const float inv = 1.f / fmaxf(nrm, 1e-12f);
    inv_out[idx] = inv;
    float dot = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      float du = gn[c * S];
      if (silu) {
        const float u = xn[c * S] * inv * scale * g[c];
        const float sg = 1.f / (1.f + expf(-u));
        du *= sg * (1.f + u * (1.f - sg));
      }
      const float a = du * g[c] * scale;
      dn[c * S] = a;
      dot += a * xn[c * S];
    }
    const float corr = clamped ? 0.f : inv * inv * inv * dot;
    for (int64_t c = 0; c < C; ++c) dn[c * S] = inv * dn[c * S] - xn[c * S] * corr;
  }
}

// dgamma[c] += Σ_{n, s} du · x·inv·sqrt(C): one block per channel.
__global__ void vb_norm_dgamma_kernel(const float* __restrict__ x, const float* __restrict__ g,
                                      const float* __restrict__ dy, const float* __restrict__ inv,
                                      float* __restrict__ dgamma, int64_t N, int64_t C, int64_t S,
                                      float scale, bool silu) {
  __shared__ float red[32];
  const int64_t c = blockIdx.x;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < N * S; i += blockDim.x) {
    const int64_t n = i / S, s = i % S;
    const int64_t e = (n * C + c) * S + s;
    const float xh = x[e] * inv[i] * scale;
    float du = dy[e];
    if (silu) {
      const float u = xh * g[c];
      const float sg = 1.f / (1.f + expf(-u));
      du *= sg * (1.f + u * (1.f - sg));
    }
    acc += du * xh;
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) dgamma[c] += acc;
}

// ---------------------------------------------------------------- resampling

__global__ void vb_upsample_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dx,
                                       int64_t NC, int64_t H, int64_t W) {
  OSP_VB_GRID_STRIDE(i, NC * H * W) {
    const int64_t xx = i % W, y = (i / W) % H, nc = i / (H * W);
    const float* a = dy + (nc * 2 * H + 2 * y) * 2 * W + 2 * xx;
    const float* b = a + 2 * W;
    dx[i] = (a[0] + a[1]) + (b[0] + b[1]);
  }
}

// ---------------------------------------------------------------- attention

// Row i of p (scores, scaled) → softmax P in place; row i of dp (dP) → dS = P∘(dP − Σ_j P·dP).
__global__ void vb_attn_rows_kernel(float* __restrict__ p, float* __restrict__ dp, int64_t L) {
  __shared__ float red[32];
  float* r = p + blockIdx.x * L;
  float* d = dp + blockIdx.x * L;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) mx = fmaxf(mx, r[j]);
  mx = block_max(mx, red);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const float e = expf(r[j] - mx);
    r[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  const float inv = 1.f / sum;
  float dsum = 0.f;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const float pv = r[j] * inv;
    r[j] = pv;
    dsum += pv * d[j];
  }
  dsum = block_sum(dsum, red);
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) d[j] = r[j] * (d[j] - dsum);
}

}  // namespace

void conv3d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv3dArgs& a,
                     Tensor* dx, Tensor* dw, Tensor* db) {
  const int64_t T = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  const int64_t To = dy.size(0), Ho = dy.size(2), Wo = dy.size(3);
  const int64_t K = Cin * kt * kh * kw, HWo = Ho * Wo, HW = H * W;
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx ? dx->data<float>() : nullptr;
  float* dwp = dw ? dw->data<float>() : nullptr;
  const bool tf32 = conv_use_tf32();
  log_once("conv3d_backward", tf32 ? "conv3d_backward: im2col/col2im + cuBLAS TF32 GEMMs"
                                   : "conv3d_backward: im2col/col2im + cuBLAS FP32 GEMMs");
  if (dx && dx->numel())
    OSP_CUDA_CHECK(cudaMemsetAsync(dxp, 0, dx->nbytes(), stream()));
  if (db && Cout > 0 && To * HWo > 0) {
    vb_bias_grad_kernel<<<unsigned(Cout), 256, 0, stream()>>>(gp, db->data<float>(), To, Cout, HWo);
    OSP_CUDA_LAUNCH_CHECK("vb_bias_grad_kernel");
  }
  if ((!dx && !dw) || To * HWo == 0 || K == 0) return;
  const bool pointwise = kt == 1 && kh == 1 && kw == 1 && a.stride_h == 1 && a.stride_w == 1 &&
                         a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 && a.pad_right == 0;
  if (pointwise) {
    for (int64_t to = 0; to < To; ++to) {
      const float* g = gp + to * Cout * HWo;
      const int64_t t0 = to * a.stride_t - a.pad_front;
      if (t0 < 0) continue;
      const float* xt = xp + t0 * Cin * HW;
      if (dw)  // dw[Cout, Cin] += dy_t[Cout, HW] · x_t[Cin, HW]ᵀ
        gemm_rm(false, true, Cout, Cin, HW, 1.f, g, HWo, xt, HW, 1.f, dwp, Cin, tf32);
      if (dx)  // dx_t[Cin, HW] += w[Cout, Cin]ᵀ · dy_t[Cout, HW]
        gemm_rm(true, false, Cin, HW, Cout, 1.f, wp, Cin, g, HWo, 1.f, dxp + t0 * Cin * HW, HW, tf32);
    }
    return;
  }
  const ConvChunking ch = conv_chunking(K, To, Ho, Wo, int64_t(128) << 20);
  const size_t buf = size_t(K * ch.frames * ch.rows * Wo);
  // col, dcol [K, nf·nb]; dyc [Cout, nf·nb] (only when a chunk holds several frames).
  float* col = static_cast<float*>(
      scratch((2 * buf + size_t(ch.frames > 1 ? Cout * ch.frames * ch.rows * Wo : 0)) * sizeof(float)));
  float* dcol = col + buf;
  float* dyc = dcol + buf;
  for (int64_t f0 = 0; f0 < To; f0 += ch.frames) {
    const int64_t nf = std::min(ch.frames, To - f0);
    const int64_t t0 = f0 * a.stride_t - a.pad_front;
    for (int64_t y0 = 0; y0 < Ho; y0 += ch.rows) {
      const int64_t nrows = std::min(ch.rows, Ho - y0), nb = nrows * Wo;
      // The chunk's dy as [Cout, nf·nb] with row stride ldg.
      const float* g = gp + f0 * Cout * HWo + y0 * Wo;
      int64_t ldg = HWo;
      if (nf > 1) {
        vb_gather_dy_kernel<<<grid_for(Cout * nf * nb), 256, 0, stream()>>>(gp, dyc, Cout, HWo, f0,
                                                                            nf, y0, nb, Wo);
        OSP_CUDA_LAUNCH_CHECK("vb_gather_dy_kernel");
        g = dyc;
        ldg = nf * nb;
      }
      if (dw) {
        im2col_f32(xp, col, T, Cin, H, W, int(kt), int(kh), int(kw), t0, a.stride_t, nf,
                   a.stride_h, a.stride_w, a.pad_top, a.pad_left, y0, nrows, Wo);
        // dw[Cout, K] += dy_chunk[Cout, nf·nb] · col[K, nf·nb]ᵀ
        gemm_rm(false, true, Cout, K, nf * nb, 1.f, g, ldg, col, nf * nb, 1.f, dwp, K, tf32);
      }
      if (dx) {
        // dcol[K, nf·nb] = w[Cout, K]ᵀ · dy_chunk[Cout, nf·nb]
        gemm_rm(true, false, K, nf * nb, Cout, 1.f, wp, K, g, ldg, 0.f, dcol, nf * nb, tf32);
        const int64_t tlo = std::max<int64_t>(0, t0);
        const int64_t thi = std::min<int64_t>(T, t0 + (nf - 1) * a.stride_t + kt);
        if (thi > tlo) {
          vb_col2im_kernel<<<grid_for((thi - tlo) * Cin * HW), 256, 0, stream()>>>(
              dcol, dxp, tlo, thi, Cin, H, W, int(kt), int(kh), int(kw), t0, a.stride_t, nf,
              a.stride_h, a.stride_w, a.pad_top, a.pad_left, y0, y0 + nrows, Wo);
          OSP_CUDA_LAUNCH_CHECK("vb_col2im_kernel");
        }
      }
    }
  }
}

void channel_rms_norm_backward(const Tensor& x, const Tensor& gamma, bool silu, const Tensor& dy,
                               Tensor& dx, Tensor* dgamma) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  if (N * S == 0) return;
  const float scale = std::sqrt(float(C));
  float* inv = static_cast<float*>(scratch(size_t(N * S) * sizeof(float)));
  vb_norm_dx_kernel<<<grid_for(N * S), 256, 0, stream()>>>(
      x.data<float>(), gamma.data<float>(), dy.data<float>(), dx.data<float>(), inv, N, C, S,
      scale, silu);
  OSP_CUDA_LAUNCH_CHECK("vb_norm_dx_kernel");
  if (dgamma) {
    vb_norm_dgamma_kernel<<<unsigned(C), 256, 0, stream()>>>(
        x.data<float>(), gamma.data<float>(), dy.data<float>(), inv, dgamma->data<float>(), N, C,
        S, scale, silu);
    OSP_CUDA_LAUNCH_CHECK("vb_norm_dgamma_kernel");
  }
}

void upsample_nearest2x_backward(const Tensor& dy, Tensor& dx) {
  const int64_t NC = dx.size(0) * dx.size(1), H = dx.size(2), W = dx.size(3);
  if (NC * H * W == 0) return;
  vb_upsample_bwd_kernel<<<grid_for(NC * H * W), 256, 0, stream()>>>(dy.data<float>(),
                                                                      dx.data<float>(), NC, H, W);
  OSP_CUDA_LAUNCH_CHECK("vb_upsample_bwd_kernel");
}

void spatial_attention_backward(const Tensor& qkv, const Tensor& dout, Tensor& dqkv) {
  const int64_t N = qkv.size(0), C = qkv.size(1) / 3, L = qkv.size(2);
  if (N * C * L == 0) return;
  const float scale = 1.f / std::sqrt(float(C));
  const int64_t qb = std::clamp<int64_t>((int64_t(16) << 20) / std::max<int64_t>(L, 1), 1, L);
  float* p = static_cast<float*>(scratch(size_t(2 * qb * L) * sizeof(float)));
  float* dp = p + qb * L;
  OSP_CUDA_CHECK(cudaMemsetAsync(dqkv.data<float>(), 0, dqkv.nbytes(), stream()));
  for (int64_t n = 0; n < N; ++n) {
    const float* q = qkv.data<float>() + n * 3 * C * L;
    const float* k = q + C * L;
    const float* v = k + C * L;
    const float* go = dout.data<float>() + n * C * L;
    float* dq = dqkv.data<float>() + n * 3 * C * L;
    float* dk = dq + C * L;
    float* dv = dk + C * L;
    for (int64_t i0 = 0; i0 < L; i0 += qb) {
      const int64_t m = std::min(qb, L - i0);
      // S[m, L] = scale · q[:, blk]ᵀ · k ;  dP[m, L] = dout[:, blk]ᵀ · v
      gemm_rm(true, false, m, L, C, scale, q + i0, L, k, L, 0.f, p, L, false);
      gemm_rm(true, false, m, L, C, 1.f, go + i0, L, v, L, 0.f, dp, L, false);
      vb_attn_rows_kernel<<<unsigned(m), 256, 0, stream()>>>(p, dp, L);
      OSP_CUDA_LAUNCH_CHECK("vb_attn_rows_kernel");
      // dv[C, L] += dout[:, blk] · P ;  dq[:, blk] = scale · k · dSᵀ ;  dk += scale · q[:, blk] · dS
      gemm_rm(false, false, C, L, m, 1.f, go + i0, L, p, L, 1.f, dv, L, false);
      gemm_rm(false, true, C, m, L, scale, k, L, dp, L, 0.f, dq + i0, L, false);
      gemm_rm(false, false, C, L, m, scale, q + i0, L, dp, L, 1.f, dk, L, false);
    }
  }
}

}  // namespace osp::ops::cuda
