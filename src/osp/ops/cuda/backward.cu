// Backward kernels on CUDA (backward.h): norms, activations, gated residual, RoPE, row sums,
// scatter-add and the patch permutations. Storage f32 or bf16 per tensor, math fp32.
//
// Parameter gradients (dw, db, dshift, dscale, dgate, sum_rows) are column sums over many rows.
// They use a deterministic two-stage reduction, never atomics: stage 1 splits the rows into G
// chunks (G ≈ 2 blocks per SM) and writes one partial row per chunk into scratch [G, C];
// stage 2 sums the G partials of every column and adds them to the F32 gradient (+=).
// Row norms: one warp per row by default (rows up to kWarpRowMaxC elements: the statistics and
// gradient means are warp shuffles, no block barriers per row), else — longer rows, or
// OSP_NORM_BACKWARD=block — one block per row; either way each thread always owns the same columns, so it accumulates its columns'
// partials in shared memory without atomics, and the block sums them in a fixed order.
#include <cuda_bf16.h>

#include <algorithm>

#include "osp/core/settings.h"
#include "osp/ops/cuda/bf16_convert.cuh"
#include "osp/ops/cuda/cuda_backward.h"
#include "osp/ops/cuda/cuda_context.h"

namespace osp::ops::cuda {
namespace {

// Sum over the block (blockDim.x a multiple of 32). All threads get the result.
__device__ float block_sum(float v, float* red /* [33] shared */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    float s = lane < nw ? red[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) red[32] = s;
  }
  __syncthreads();
  const float r = red[32];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------- two-stage column sums
// Stage 2: out[c] += Σ_g part[g, c].
__global__ void reduce_partials_kernel(const float* __restrict__ part, int64_t G, int64_t C,
                                       float* __restrict__ out) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t g = 0; g < G; ++g) s += part[g * C + c];
    out[c] += s;
  }
}

// Number of row chunks for stage 1: about 2 blocks per SM, never more than the rows.
int64_t row_chunks(int64_t rows) {
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  const int sms = cuda_sm_count(dev);
  return std::max<int64_t>(1, std::min<int64_t>(rows, 2 * int64_t(sms)));
}

void reduce_partials(const float* part, int64_t G, int64_t C, float* out) {
  reduce_partials_kernel<<<unsigned((C + 255) / 256), 256, 0, stream()>>>(part, G, C, out);
  OSP_CUDA_LAUNCH_CHECK("reduce_partials_kernel");
}

// Stage 1 of a column sum over x[rows, C], optionally weighted and with a per-element side
// output. MODE 0: part = Σ x (sum_rows). MODE 1 (add_gated): part = Σ dx·y and
// dy = dx·gate written when dyo != null. Grid: (column blocks, G row chunks).
template <typename TA, typename TB, typename TO, int MODE>
__global__ void column_partials_kernel(const TA* __restrict__ a, const TB* __restrict__ b,
                                       const float* __restrict__ gate, TO* __restrict__ dyo,
                                       int64_t rows, int64_t C, float* __restrict__ part) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t G = gridDim.y, g = blockIdx.y;
  const int64_t r0 = rows * g / G, r1 = rows * (g + 1) / G;
  const float gc = (MODE == 1 && gate) ? gate[c] : 0.f;
  float s = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const float av = to_f(a[r * C + c]);
    if (MODE == 0) {
      s += av;
    } else {
      if (dyo) dyo[r * C + c] = from_f<TO>(av * gc);
      if (part) s += av * to_f(b[r * C + c]);
    }
  }
  if (part) part[g * C + c] = s;
}

// ---------------------------------------------------------------- row norms
// MODE 0: LayerNorm, optional affine w (g = dy·w), partial A = Σ dy·x̂ (dw), B = Σ dy (db).
// MODE 1: LayerNorm modulate, g = dy·(1 + scale), A = Σ dy·x̂ (dscale), B = Σ dy (dshift).
// MODE 2: RMSNorm, g = dy·w, A = Σ dy·x̂ (dw).
// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) for LayerNorm, rstd·(g − x̂·mean(g·x̂)) for RMSNorm.
//
// One row r of a norm backward, computed by a team of threads (a whole block, or one warp):
// lane `t` of `n` owns columns t, t + n, …; Team::sum(v) gives every member the team's sum.
// accA/accB (when part is set): this member's columns' parameter-gradient partials.
template <typename Team, typename TX, typename TD, typename TO, int MODE>
__device__ __forceinline__ void norm_backward_row(const Team& team, const TX* __restrict__ xr,
                                                  const TD* __restrict__ dr, TO* __restrict__ orow,
                                                  int64_t C, float eps, const float* __restrict__ w,
                                                  float* accA, float* accB) {
  const int64_t t0 = team.first, step = team.size;
  const float invC = 1.f / float(C);
  float mean = 0.f, rstd;
  if (MODE == 2) {
    float s = 0.f;
#pragma unroll 4
    for (int64_t c = t0; c < C; c += step) {
      const float v = to_f(xr[c]);
      s += v * v;
    }
    rstd = rsqrtf(team.sum(s) * invC + eps);
  } else {
    float s = 0.f;
#pragma unroll 4
    for (int64_t c = t0; c < C; c += step) s += to_f(xr[c]);
    mean = team.sum(s) * invC;
    float v2 = 0.f;
#pragma unroll 4
    for (int64_t c = t0; c < C; c += step) {
      const float d = to_f(xr[c]) - mean;
      v2 += d * d;
    }
    rstd = rsqrtf(team.sum(v2) * invC + eps);
  }
  float sg = 0.f, sgx = 0.f;
#pragma unroll 4
  for (int64_t c = t0; c < C; c += step) {
    const float xh = (to_f(xr[c]) - mean) * rstd;
    const float d = to_f(dr[c]);
    const float g = MODE == 1 ? d * (1.f + w[c]) : (w ? d * w[c] : d);
    sg += g;
    sgx += g * xh;
    if (accA) {
      accA[c] += d * xh;
      if (accB) accB[c] += d;
    }
  }
  const float mg = MODE == 2 ? 0.f : team.sum(sg) * invC;
  const float mgx = team.sum(sgx) * invC;
#pragma unroll 4
  for (int64_t c = t0; c < C; c += step) {
    const float xh = (to_f(xr[c]) - mean) * rstd;
    const float d = to_f(dr[c]);
    const float g = MODE == 1 ? d * (1.f + w[c]) : (w ? d * w[c] : d);
    orow[c] = from_f<TO>(rstd * (g - mg - xh * mgx));
  }
}

struct BlockTeam {
  int64_t first, size;
  float* red;  // [33] shared
  __device__ float sum(float v) const { return block_sum(v, red); }
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
struct WarpTeam {
  int64_t first, size;
  __device__ float sum(float v) const { return warp_sum(v); }
};

// One block per row (grid-stride over rows). Dynamic shared memory: [C] for A and [C] for B when
// `part` is set.
template <typename TX, typename TD, typename TO, int MODE>
__global__ void norm_backward_kernel(const TX* __restrict__ x, const TD* __restrict__ dy,
                                     TO* __restrict__ dx, int64_t rows, int64_t C, float eps,
                                     const float* __restrict__ w, float* __restrict__ part,
                                     bool want_b) {
  extern __shared__ float acc[];  // [C] A, then [C] B
  __shared__ float red[33];
  if (part)
    for (int64_t c = threadIdx.x; c < 2 * C; c += blockDim.x) acc[c] = 0.f;
  const BlockTeam team{threadIdx.x, blockDim.x, red};
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    norm_backward_row<BlockTeam, TX, TD, TO, MODE>(team, x + r * C, dy + r * C, dx + r * C, C, eps, w,
                                                   part ? acc : nullptr, part && want_b ? acc + C : nullptr);
  if (part) {
    float* pA = part + int64_t(blockIdx.x) * C;
    float* pB = part + int64_t(gridDim.x + blockIdx.x) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      pA[c] = acc[c];
      if (want_b) pB[c] = acc[C + c];
    }
  }
}

// The same backward with one warp per row: rows r = blockIdx.x·kNormWarps + warp, stride
// gridDim.x·kNormWarps. Dynamic shared memory (when `part` is set): [kNormWarps][2][C] — each warp's
// A and B partials; at the end the block sums its warps' in warp order into part[blockIdx.x] (A)
// and part[gridDim.x + blockIdx.x] (B).
constexpr int kNormWarps = 4;
constexpr int64_t kWarpRowMaxC = 6144;  // [4][2][C] F32 = 192 KiB of shared memory at most
int g_norm_warp = -1;  // set_norm_backward_warp
bool use_warp_rows() { return g_norm_warp >= 0 ? g_norm_warp == 1 : engine_settings().norm_backward == "warp"; }

template <typename TX, typename TD, typename TO, int MODE>
__global__ void __launch_bounds__(kNormWarps * 32)
    norm_backward_warp_kernel(const TX* __restrict__ x, const TD* __restrict__ dy, TO* __restrict__ dx,
                              int64_t rows, int64_t C, float eps, const float* __restrict__ w,
                              float* __restrict__ part, bool want_b) {
  extern __shared__ float acc[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* accA = acc + int64_t(warp) * 2 * C;
  if (part) {
    for (int64_t c = threadIdx.x; c < int64_t(kNormWarps) * 2 * C; c += blockDim.x) acc[c] = 0.f;
    __syncthreads();
  }
  const WarpTeam team{lane, 32};
  for (int64_t r = int64_t(blockIdx.x) * kNormWarps + warp; r < rows; r += int64_t(gridDim.x) * kNormWarps)
    norm_backward_row<WarpTeam, TX, TD, TO, MODE>(team, x + r * C, dy + r * C, dx + r * C, C, eps, w,
                                                  part ? accA : nullptr, part && want_b ? accA + C : nullptr);
  if (part) {
    __syncthreads();
    float* pA = part + int64_t(blockIdx.x) * C;
    float* pB = part + int64_t(gridDim.x + blockIdx.x) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      float a = 0.f, b = 0.f;
      for (int k = 0; k < kNormWarps; ++k) {
        a += acc[int64_t(k) * 2 * C + c];
        b += acc[int64_t(k) * 2 * C + C + c];
      }
      pA[c] = a;
      if (want_b) pB[c] = b;
    }
  }
}

// ---------------------------------------------------------------- elementwise
__device__ __forceinline__ float gelu_tanh_grad(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  const float t = tanhf(k0 * (x + k1 * x * x * x));
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * k0 * (1.f + 3.f * k1 * x * x);
}
__device__ __forceinline__ float silu_grad(float x) {
  const float s = 1.f / (1.f + expf(-x));
  return s * (1.f + x * (1.f - s));
}

template <typename TX, typename TD, typename TO, int ACT>
__global__ void act_backward_kernel(const TX* __restrict__ x, const TD* dy, TO* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f(x[i]);
    const float g = ACT == 0 ? gelu_tanh_grad(v) : silu_grad(v);
    dx[i] = from_f<TO>(to_f(dy[i]) * g);
  }
}

// Inverse rotation: dx0 = dy0·c + dy1·s, dx1 = −dy0·s + dy1·c. One thread per pair (in place ok).
// IDX: the index type — 32-bit when the pairs fit (the DiT's 25M pairs: 64-bit division is
// emulated and dominated this memory-bound kernel), else 64-bit.
template <typename TI, typename TO, typename IDX>
__global__ void rope_backward_kernel(const TI* dy, TO* dx, const float* __restrict__ cs, IDX R,
                                     IDX L, IDX H, IDX half, IDX Rt) {
  const IDX n = R * L * H * half;
  for (IDX i = blockIdx.x * IDX(blockDim.x) + threadIdx.x; i < n; i += IDX(gridDim.x) * blockDim.x) {
    const IDX p = i % half, rest = i / half;
    const IDX lr = rest / H, l = lr % L, r = lr / L;
    const float2 t = *reinterpret_cast<const float2*>(cs + ((int64_t(r % Rt) * L + l) * half + p) * 2);
    const float a = to_f(dy[2 * int64_t(i)]), b = to_f(dy[2 * int64_t(i) + 1]);
    dx[2 * int64_t(i)] = from_f<TO>(a * t.x + b * t.y);
    dx[2 * int64_t(i) + 1] = from_f<TO>(b * t.x - a * t.y);
  }
}

// out[index[i], :] += src[i, :] (index < 0 or >= N skipped). One block-row per source row.
template <typename TS>
__global__ void scatter_add_rows_kernel(const TS* __restrict__ src, const int32_t* __restrict__ index,
                                        float* __restrict__ out, int64_t M, int64_t N, int64_t C) {
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const int32_t d = index[row];
    if (d < 0 || d >= N) continue;
    const TS* s = src + row * C;
    float* o = out + int64_t(d) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(o + c, to_f(s[c]));
  }
}

// dz [C, T, H, W] ← dpatches [T·(H/ph)·(W/pw), C·ph·pw] (K ordered (c, q, r)); one thread per dz.
template <typename TI, typename TO>
__global__ void patchify_backward_kernel(const TI* __restrict__ dp, TO* __restrict__ dz, int64_t C,
                                         int64_t T, int64_t H, int64_t W, int ph, int pw) {
  const int64_t n = C * T * H * W, hh = H / ph, ww = W / pw, K = C * ph * pw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % W, y = (i / W) % H, f = (i / (W * H)) % T, c = i / (W * H * T);
    const int64_t tok = (f * hh + y / ph) * ww + x / pw;
    const int64_t k = (c * ph + y % ph) * pw + x % pw;
    dz[i] = from_f<TO>(to_f(dp[tok * K + k]));
  }
}

// dy [T·h·w, ph·pw·C] (c fastest) ← dout [C, T, h·ph, w·pw]; one thread per dy element.
template <typename TI, typename TO>
__global__ void unpatchify_backward_kernel(const TI* __restrict__ dout, TO* __restrict__ dy,
                                           int64_t C, int64_t T, int64_t h, int64_t w, int ph,
                                           int pw) {
  const int64_t K = int64_t(ph) * pw * C, n = T * h * w * K, HH = h * ph, WW = w * pw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % K, tok = i / K;
    const int64_t c = k % C, qr = k / C, r = qr % pw, q = qr / pw;
    const int64_t j = tok % w, ii = (tok / w) % h, f = tok / (w * h);
    dy[i] = from_f<TO>(to_f(dout[((c * T + f) * HH + ii * ph + q) * WW + j * pw + r]));
  }
}

// ---------------------------------------------------------------- host helpers
template <typename F>
void dispatch2(DType a, DType b, const char* op, F&& f) {
  if (a == DType::F32 && b == DType::F32) return f.template operator()<float, float>();
  if (a == DType::F32 && b == DType::BF16) return f.template operator()<float, bf16>();
  if (a == DType::BF16 && b == DType::F32) return f.template operator()<bf16, float>();
  if (a == DType::BF16 && b == DType::BF16) return f.template operator()<bf16, bf16>();
  fail(str("cuda::", op, ": dtypes ", dtype_name(a), ", ", dtype_name(b),
           " are not supported (f32 or bf16 only)"));
}
template <typename F>
void dispatch3(DType a, DType b, DType c, const char* op, F&& f) {
  dispatch2(a, b, op, [&]<typename A, typename B>() {
    if (c == DType::F32) return f.template operator()<A, B, float>();
    if (c == DType::BF16) return f.template operator()<A, B, bf16>();
    fail(str("cuda::", op, ": output dtype ", dtype_name(c), " is not supported (f32 or bf16)"));
  });
}

void check_t(const Tensor& t, const char* op, const char* what) {
  require_cuda(t, op, what);
  require_contiguous(t, op, what);
  require_float(t, op, what);
}
float* grad_ptr(Tensor* t, int64_t C, const char* op, const char* what) {
  if (!t) return nullptr;
  require_cuda(*t, op, what);
  require_contiguous(*t, op, what);
  OSP_CHECK(t->dtype() == DType::F32 && t->numel() == C, "cuda::", op, ": ", what,
            " must be f32 with ", C, " elements, got ", t->desc());
  return t->data<float>();
}
const float* vec_ptr(const Tensor* t, int64_t C, const char* op, const char* what) {
  return grad_ptr(const_cast<Tensor*>(t), C, op, what);
}

int norm_threads(int64_t C) {
  if (C >= 2048) return 512;
  if (C >= 512) return 256;
  if (C >= 128) return 128;
  return 32;
}

// Runs one norm backward (MODE as the kernel) and the parameter-gradient stage 2.
template <int MODE>
void norm_backward(const Tensor& x, const float* w, float eps, const Tensor& dy, Tensor& dx,
                   float* gA, float* gB, const char* op) {
  check_t(x, op, "x");
  check_t(dy, op, "dy");
  check_t(dx, op, "dx");
  const int64_t C = x.size(-1), rows = C > 0 ? x.numel() / C : 0;
  OSP_CHECK(dy.numel() == x.numel() && dx.numel() == x.numel(), "cuda::", op,
            ": x, dy and dx must have the same size, got ", x.desc(), ", ", dy.desc(), ", ",
            dx.desc());
  if (rows == 0 || C == 0) return;
  const bool params = gA || gB;
  // One warp per row: about 4 blocks per SM when reducing parameter gradients (their shared
  // partials cap the blocks per SM anyway), else enough blocks for every row. One block per row:
  // about 2 blocks per SM when reducing.
  const bool warp = C <= kWarpRowMaxC && use_warp_rows();
  const int64_t units = warp ? (rows + kNormWarps - 1) / kNormWarps : rows;  // warps or blocks needed
  const int64_t G = std::min<int64_t>(units, params ? (warp ? 2 : 1) * row_chunks(rows) : 65535 * 8);
  float* part = params ? static_cast<float*>(scratch(size_t(2 * G * C) * 4)) : nullptr;
  const size_t smem = params ? size_t(warp ? kNormWarps : 1) * 2 * size_t(C) * 4 : 0;
  OSP_CHECK(smem <= size_t(200) << 10, "cuda::", op, ": rows of ", C,
            " elements are too long for the parameter-gradient reduction (at most 25600)");
  const int threads = warp ? kNormWarps * 32 : norm_threads(C);
  dispatch3(x.dtype(), dy.dtype(), dx.dtype(), op, [&]<typename TX, typename TD, typename TO>() {
    auto k = warp ? norm_backward_warp_kernel<TX, TD, TO, MODE> : norm_backward_kernel<TX, TD, TO, MODE>;
    if (smem > 48 * 1024)
      OSP_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    k<<<unsigned(G), threads, smem, stream()>>>(x.data<TX>(), dy.data<TD>(), dx.data<TO>(), rows,
                                                C, eps, w, part, gB != nullptr);
  });
  OSP_CUDA_LAUNCH_CHECK("norm_backward_kernel");
  if (gA) reduce_partials(part, G, C, gA);
  if (gB) reduce_partials(part + G * C, G, C, gB);
}
}  // namespace

namespace {
__global__ void add_f32_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] += src[i];
}
}  // namespace

// dst[i] += src[i] (f32, device); used by linear_backward for the BGRADB bias gradient.
void add_f32(const float* src, float* dst, int64_t n) {
  if (n <= 0) return;
  add_f32_kernel<<<grid_for(n), 256, 0, stream()>>>(src, dst, n);
  OSP_CUDA_LAUNCH_CHECK("add_f32_kernel");
}

// ---------------------------------------------------------------- norms
void set_norm_backward_warp(int mode) {
  OSP_CHECK(mode >= -1 && mode <= 1, "set_norm_backward_warp: mode must be -1, 0 or 1, got ", mode);
  g_norm_warp = mode;
}

void layer_norm_backward(const Tensor& x, const Tensor* w, float eps, const Tensor& dy,
                         Tensor& dx, Tensor* dw, Tensor* db) {
  const char* op = "layer_norm_backward";
  const int64_t C = x.size(-1);
  OSP_CHECK(w || (!dw && !db), "cuda::", op, ": dw/db need the affine weight w");
  norm_backward<0>(x, vec_ptr(w, C, op, "w"), eps, dy, dx, grad_ptr(dw, C, op, "dw"),
                   grad_ptr(db, C, op, "db"), op);
}

void layer_norm_modulate_backward(const Tensor& x, const Tensor& scale, float eps,
                                  const Tensor& dy, Tensor& dx, Tensor* dshift, Tensor* dscale) {
  const char* op = "layer_norm_modulate_backward";
  const int64_t C = x.size(-1);
  norm_backward<1>(x, vec_ptr(&scale, C, op, "scale"), eps, dy, dx, grad_ptr(dscale, C, op, "dscale"),
                   grad_ptr(dshift, C, op, "dshift"), op);
}

void rms_norm_backward(const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor& dx,
                       Tensor* dw) {
  const char* op = "rms_norm_backward";
  const int64_t C = x.size(-1);
  norm_backward<2>(x, vec_ptr(&w, C, op, "w"), eps, dy, dx, grad_ptr(dw, C, op, "dw"), nullptr, op);
}

// ---------------------------------------------------------------- elementwise
namespace {
template <int ACT>
void act_backward(const Tensor& x, const Tensor& dy, Tensor& dx, const char* op) {
  check_t(x, op, "x");
  check_t(dy, op, "dy");
  check_t(dx, op, "dx");
  OSP_CHECK(dy.numel() == x.numel() && dx.numel() == x.numel(), "cuda::", op,
            ": x, dy and dx must have the same size, got ", x.desc(), ", ", dy.desc(), ", ",
            dx.desc());
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch3(x.dtype(), dy.dtype(), dx.dtype(), op, [&]<typename TX, typename TD, typename TO>() {
    act_backward_kernel<TX, TD, TO, ACT><<<grid_for(n), 256, 0, stream()>>>(
        x.data<TX>(), dy.data<TD>(), dx.data<TO>(), n);
  });
  OSP_CUDA_LAUNCH_CHECK("act_backward_kernel");
}
}  // namespace

void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  act_backward<0>(x, dy, dx, "gelu_tanh_backward");
}
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  act_backward<1>(x, dy, dx, "silu_backward");
}

void add_gated_backward(const Tensor& dx, const Tensor& y, const Tensor& gate, Tensor& dy,
                        Tensor* dgate) {
  const char* op = "add_gated_backward";
  check_t(dx, op, "dx");
  check_t(y, op, "y");
  check_t(dy, op, "dy");
  OSP_CHECK(dx.dtype() == DType::F32, "cuda::", op, ": dx (the residual stream's gradient) must be f32, got ",
            dx.desc());
  const int64_t C = dx.size(-1), rows = C > 0 ? dx.numel() / C : 0;
  OSP_CHECK(y.numel() == dx.numel() && dy.numel() == dx.numel(), "cuda::", op,
            ": dx, y and dy must have the same size, got ", dx.desc(), ", ", y.desc(), ", ", dy.desc());
  const float* g = vec_ptr(&gate, C, op, "gate");
  float* dg = grad_ptr(dgate, C, op, "dgate");
  if (rows == 0 || C == 0) return;
  const int64_t G = dg ? row_chunks(rows) : std::min<int64_t>(rows, 65535);
  float* part = dg ? static_cast<float*>(scratch(size_t(G * C) * 4)) : nullptr;
  dim3 grid(unsigned((C + 127) / 128), unsigned(G));
  dispatch2(y.dtype(), dy.dtype(), op, [&]<typename TY, typename TO>() {
    column_partials_kernel<float, TY, TO, 1><<<grid, 128, 0, stream()>>>(
        dx.data<float>(), y.data<TY>(), g, dy.data<TO>(), rows, C, part);
  });
  OSP_CUDA_LAUNCH_CHECK("column_partials_kernel");
  if (dg) reduce_partials(part, G, C, dg);
}

void sum_rows(const Tensor& x, Tensor& out) {
  const char* op = "sum_rows";
  check_t(x, op, "x");
  const int64_t C = x.size(-1), rows = C > 0 ? x.numel() / C : 0;
  float* o = grad_ptr(&out, C, op, "out");
  if (rows == 0 || C == 0) return;
  const int64_t G = row_chunks(rows);
  float* part = static_cast<float*>(scratch(size_t(G * C) * 4));
  dim3 grid(unsigned((C + 127) / 128), unsigned(G));
  if (x.dtype() == DType::F32)
    column_partials_kernel<float, float, float, 0><<<grid, 128, 0, stream()>>>(
        x.data<float>(), nullptr, nullptr, nullptr, rows, C, part);
  else
    column_partials_kernel<bf16, float, float, 0><<<grid, 128, 0, stream()>>>(
        x.data<bf16>(), nullptr, nullptr, nullptr, rows, C, part);
  OSP_CUDA_LAUNCH_CHECK("column_partials_kernel");
  reduce_partials(part, G, C, o);
}

// ---------------------------------------------------------------- RoPE
void rope_backward(const Tensor& dy, const Tensor& cos_sin, Tensor& dx) {
  const char* op = "rope_backward";
  check_t(dy, op, "dy");
  check_t(dx, op, "dx");
  OSP_CHECK(dy.dim() == 4 && dy.size(3) % 2 == 0 && dx.numel() == dy.numel(), "cuda::", op,
            ": dy must be [R, L, H, D] with D even and dx of its size, got ", dy.desc(), ", ", dx.desc());
  require_cuda(cos_sin, op, "cos_sin");
  require_contiguous(cos_sin, op, "cos_sin");
  const int64_t R = dy.size(0), L = dy.size(1), H = dy.size(2), half = dy.size(3) / 2;
  OSP_CHECK(cos_sin.dtype() == DType::F32 && cos_sin.dim() == 4 && cos_sin.size(1) == L &&
                cos_sin.size(2) == half && cos_sin.size(3) == 2 && cos_sin.size(0) >= 1,
            "cuda::", op, ": cos_sin must be f32 [Rt, ", L, ", ", half, ", 2], got ", cos_sin.desc());
  const int64_t n = R * L * H * half;
  if (n == 0) return;
  dispatch2(dy.dtype(), dx.dtype(), op, [&]<typename TI, typename TO>() {
    if (n < (int64_t(1) << 31))
      rope_backward_kernel<TI, TO, uint32_t><<<grid_for(n), 256, 0, stream()>>>(
          dy.data<TI>(), dx.data<TO>(), cos_sin.data<float>(), uint32_t(R), uint32_t(L), uint32_t(H),
          uint32_t(half), uint32_t(cos_sin.size(0)));
    else
      rope_backward_kernel<TI, TO, int64_t><<<grid_for(n), 256, 0, stream()>>>(
          dy.data<TI>(), dx.data<TO>(), cos_sin.data<float>(), R, L, H, half, cos_sin.size(0));
  });
  OSP_CUDA_LAUNCH_CHECK("rope_backward_kernel");
}

// ---------------------------------------------------------------- data movement
void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  const char* op = "scatter_add_rows";
  check_t(src, op, "src");
  require_cuda(index, op, "index");
  require_contiguous(index, op, "index");
  require_cuda(out, op, "out");
  require_contiguous(out, op, "out");
  OSP_CHECK(index.dtype() == DType::I32 && index.dim() == 1 && src.dim() == 2 &&
                src.size(0) == index.size(0) && out.dim() == 2 && out.size(1) == src.size(1),
            "cuda::", op, ": expected src [M, C], index i32 [M], out [N, C]; got ", src.desc(), ", ",
            index.desc(), ", ", out.desc());
  OSP_CHECK(out.dtype() == DType::F32, "cuda::", op, ": out must be f32 (it accumulates), got ",
            out.desc());
  const int64_t M = src.size(0), C = src.size(1), N = out.size(0);
  if (M == 0 || C == 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(M, 65535 * 4));
  const int threads = C >= 256 ? 256 : 64;
  if (src.dtype() == DType::F32)
    scatter_add_rows_kernel<float><<<grid, threads, 0, stream()>>>(
        src.data<float>(), index.data<int32_t>(), out.data<float>(), M, N, C);
  else
    scatter_add_rows_kernel<bf16><<<grid, threads, 0, stream()>>>(
        src.data<bf16>(), index.data<int32_t>(), out.data<float>(), M, N, C);
  OSP_CUDA_LAUNCH_CHECK("scatter_add_rows_kernel");
}

void patchify_backward(const Tensor& dpatches, int pt, int ph, int pw, Tensor& dz) {
  const char* op = "patchify_backward";
  check_t(dpatches, op, "dpatches");
  check_t(dz, op, "dz");
  OSP_CHECK(pt == 1, "cuda::", op, ": pt must be 1, got ", pt);
  OSP_CHECK(dz.dim() == 4 && ph > 0 && pw > 0 && dz.size(2) % ph == 0 && dz.size(3) % pw == 0,
            "cuda::", op, ": dz must be [C, T, H, W] with H % ", ph, " == 0 and W % ", pw,
            " == 0, got ", dz.desc());
  const int64_t C = dz.size(0), T = dz.size(1), H = dz.size(2), W = dz.size(3);
  OSP_CHECK(dpatches.dim() == 2 && dpatches.size(0) == T * (H / ph) * (W / pw) &&
                dpatches.size(1) == C * ph * pw,
            "cuda::", op, ": dpatches must be [", T * (H / ph) * (W / pw), ", ", C * ph * pw,
            "], got ", dpatches.desc());
  const int64_t n = dz.numel();
  if (n == 0) return;
  dispatch2(dpatches.dtype(), dz.dtype(), op, [&]<typename TI, typename TO>() {
    patchify_backward_kernel<TI, TO><<<grid_for(n), 256, 0, stream()>>>(
        dpatches.data<TI>(), dz.data<TO>(), C, T, H, W, ph, pw);
  });
  OSP_CUDA_LAUNCH_CHECK("patchify_backward_kernel");
}

void unpatchify_backward(const Tensor& dout, int64_t T, int64_t h, int64_t w, int pt, int ph,
                         int pw, Tensor& dy) {
  const char* op = "unpatchify_backward";
  check_t(dout, op, "dout");
  check_t(dy, op, "dy");
  OSP_CHECK(pt == 1, "cuda::", op, ": pt must be 1, got ", pt);
  OSP_CHECK(dout.dim() == 4 && dout.size(1) == T && dout.size(2) == h * ph && dout.size(3) == w * pw,
            "cuda::", op, ": dout must be [C, ", T, ", ", h * ph, ", ", w * pw, "], got ", dout.desc());
  const int64_t C = dout.size(0);
  OSP_CHECK(dy.dim() == 2 && dy.size(0) == T * h * w && dy.size(1) == int64_t(ph) * pw * C,
            "cuda::", op, ": dy must be [", T * h * w, ", ", int64_t(ph) * pw * C, "], got ", dy.desc());
  const int64_t n = dy.numel();
  if (n == 0) return;
  dispatch2(dout.dtype(), dy.dtype(), op, [&]<typename TI, typename TO>() {
    unpatchify_backward_kernel<TI, TO><<<grid_for(n), 256, 0, stream()>>>(
        dout.data<TI>(), dy.data<TO>(), C, T, h, w, ph, pw);
  });
  OSP_CUDA_LAUNCH_CHECK("unpatchify_backward_kernel");
}

}  // namespace osp::ops::cuda
