// Norms, activations, residual updates, RoPE and data movement on CUDA.
// Storage is f32 or bf16 (per tensor); all math is fp32. One thread block per row for the
// row reductions (LayerNorm, RMSNorm), grid-stride loops for the elementwise ops.
#include <cuda_bf16.h>

#include "osp/core/settings.h"
#include "osp/ops/cuda/bf16_convert.cuh"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cuda_ops.h"

namespace osp::ops::cuda {
namespace {

// Sum over the block (blockDim.x a multiple of 32, at most 1024). All threads get the result.
__device__ float block_sum(float v) {
  __shared__ float warp_part[32];
  __shared__ float total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int nw = blockDim.x >> 5;
    float s = lane < nw ? warp_part[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) total = s;
  }
  __syncthreads();
  float r = total;
  __syncthreads();  // total may be rewritten by the next call
  return r;
}

// LayerNorm over the last dim. mode 0: optional affine (w, b); mode 1: modulate with
// (1 + scale) and shift, optionally rounding LN(x) to bf16 first.
template <typename TI, typename TO>
__global__ void layer_norm_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t C,
                                  float eps, const float* __restrict__ w,
                                  const float* __restrict__ b, int mode,
                                  const float* __restrict__ shift,
                                  const float* __restrict__ scale, bool round_bf16) {
  const TI* xr = x + blockIdx.x * C;
  TO* orow = out + blockIdx.x * C;
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += to_f(xr[c]);
  float mean = block_sum(s) / float(C);
  float v = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float d = to_f(xr[c]) - mean;
    v += d * d;
  }
  float rstd = rsqrtf(block_sum(v) / float(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float y = (to_f(xr[c]) - mean) * rstd;
    if (mode == 0) {
      if (w) y = y * w[c] + b[c];
    } else {
      if (round_bf16) y = __bfloat162float(__float2bfloat16_rn(y));
      y = y * (1.f + scale[c]) + shift[c];
    }
    orow[c] = from_f<TO>(y);
  }
}

template <typename TI, typename TO>
__global__ void rms_norm_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t C,
                                float eps, const float* __restrict__ w) {
  const TI* xr = x + blockIdx.x * C;
  TO* orow = out + blockIdx.x * C;
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float a = to_f(xr[c]);
    s += a * a;
  }
  float r = rsqrtf(block_sum(s) / float(C) + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) orow[c] = from_f<TO>(to_f(xr[c]) * r * w[c]);
}

__device__ __forceinline__ float gelu_tanh_f(float x) {
  const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + tanhf(k0 * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float silu_f(float x) { return x / (1.f + expf(-x)); }

template <typename TI, typename TO, int ACT>
__global__ void unary_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = to_f(x[i]);
    out[i] = from_f<TO>(ACT == 0 ? gelu_tanh_f(v) : silu_f(v));
  }
}

template <typename TY>
__global__ void add_gated_kernel(float* __restrict__ x, const TY* __restrict__ y,
                                 const float* __restrict__ gate, int64_t n, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = to_f(y[i]);
    if (gate) v *= gate[i % C];
    x[i] += v;
  }
}

__global__ void axpby_kernel(float a, const float* __restrict__ x, float b,
                             const float* __restrict__ y, float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a * x[i] + b * y[i];
}

// x [R, L, H, D]: one thread per (r, l, h, pair). Table [Rt, L, D/2, 2].
template <typename TI, typename TO>
__global__ void rope_kernel(const TI* x, TO* out, const float* __restrict__ cs, int64_t R,
                            int64_t L, int64_t H, int64_t half, int64_t Rt) {
  int64_t n = R * L * H * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t p = i % half;
    int64_t rest = i / half;  // (r, l, h)
    int64_t l = (rest / H) % L;
    int64_t r = rest / (H * L);
    const float* t = cs + (((r % Rt) * L + l) * half + p) * 2;
    float c = t[0], s = t[1];
    float x0 = to_f(x[2 * i]), x1 = to_f(x[2 * i + 1]);
    out[2 * i] = from_f<TO>(x0 * c - x1 * s);
    out[2 * i + 1] = from_f<TO>(x0 * s + x1 * c);
  }
}

// out[i, :] = src[index[i], :] (zeros where index < 0 or >= N). One block row per output row,
// W words of type V per row.
template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ src, const int32_t* __restrict__ index,
                                   V* __restrict__ out, int64_t M, int64_t N, int64_t W) {
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    int32_t s = index[row];
    V* o = out + row * W;
    if (s < 0 || s >= N) {
      V z;
      memset(&z, 0, sizeof(V));
      for (int64_t c = threadIdx.x; c < W; c += blockDim.x) o[c] = z;
    } else {
      const V* in = src + int64_t(s) * W;
      for (int64_t c = threadIdx.x; c < W; c += blockDim.x) o[c] = in[c];
    }
  }
}

// z [C, T, H, W] → out [T·(H/ph)·(W/pw), C·ph·pw], K ordered (c, q, r).
template <typename TI, typename TO>
__global__ void patchify_kernel(const TI* __restrict__ z, TO* __restrict__ out, int64_t C,
                                int64_t T, int64_t H, int64_t W, int ph, int pw) {
  int64_t hh = H / ph, ww = W / pw, K = C * ph * pw;
  int64_t n = T * hh * ww * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t k = i % K, tok = i / K;
    int64_t r = k % pw, q = (k / pw) % ph, c = k / (pw * ph);
    int64_t j = tok % ww, ii = (tok / ww) % hh, f = tok / (ww * hh);
    out[i] = from_f<TO>(to_f(z[((c * T + f) * H + ii * ph + q) * W + j * pw + r]));
  }
}

// y [T·h·w, ph·pw·C] (c fastest) → out [C, T, h·ph, w·pw].
template <typename TI, typename TO>
__global__ void unpatchify_kernel(const TI* __restrict__ y, TO* __restrict__ out, int64_t C,
                                  int64_t T, int64_t h, int64_t w, int ph, int pw) {
  int64_t HH = h * ph, WW = w * pw;
  int64_t n = C * T * HH * WW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t xx = i % WW, yy = (i / WW) % HH, f = (i / (WW * HH)) % T, c = i / (WW * HH * T);
    int64_t ii = yy / ph, q = yy % ph, j = xx / pw, r = xx % pw;
    out[i] = from_f<TO>(to_f(y[((f * h + ii) * w + j) * (ph * pw * C) + (q * pw + r) * C + c]));
  }
}


// ---- vectorized (4 elements per access) versions, used when the row length is a multiple of 4
// and the pointers are aligned: 16-byte f32 / 8-byte bf16 accesses.
__device__ __forceinline__ float4 load4(const float* p, int64_t i4) {
  return reinterpret_cast<const float4*>(p)[i4];
}
__device__ __forceinline__ float4 load4(const bf16* p, int64_t i4) {
  uint2 u = reinterpret_cast<const uint2*>(p)[i4];
  __nv_bfloat162 a = *reinterpret_cast<__nv_bfloat162*>(&u.x), b = *reinterpret_cast<__nv_bfloat162*>(&u.y);
  float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
  return make_float4(fa.x, fa.y, fb.x, fb.y);
}
__device__ __forceinline__ void store4(float* p, int64_t i4, float4 v) {
  reinterpret_cast<float4*>(p)[i4] = v;
}
__device__ __forceinline__ void store4(bf16* p, int64_t i4, float4 v) {
  __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<uint32_t*>(&a);
  u.y = *reinterpret_cast<uint32_t*>(&b);
  reinterpret_cast<uint2*>(p)[i4] = u;
}

// Row norms with the row cached in shared memory (one global read, one write).
// MODE 0: LayerNorm (+ optional affine w, b); 1: LayerNorm then (1 + scale), shift;
// 2: RMSNorm × w, then (rope_tab non-null) RoPE by this row's table rope_tab [D/2, 2] (D = 4·D4:
// each head of the row rotated by the same angles — the row is one token's H·D).
// The second half of every row-norm kernel: srow holds the row (C4 float4), tot the block sum of
// its elements (MODE 0/1) or of their squares (MODE 2).
template <typename TO, int MODE>
__device__ __forceinline__ void finish_row_norm(const float4* srow, int64_t C, float tot, float eps,
                                                TO* __restrict__ orow, const float* __restrict__ w,
                                                const float* __restrict__ b,
                                                const float* __restrict__ shift,
                                                const float* __restrict__ scale, bool round_bf16,
                                                const float* __restrict__ rope_tab, int64_t D4) {
  const int64_t C4 = C / 4;
  float mean = 0.f, rstd;
  if (MODE == 2) {
    rstd = rsqrtf(tot / float(C) + eps);
  } else {
    mean = tot / float(C);
    float v2 = 0.f;
    for (int64_t i = threadIdx.x; i < C4; i += blockDim.x) {
      float4 v = srow[i];
      float a = v.x - mean, bb = v.y - mean, c = v.z - mean, d = v.w - mean;
      v2 += a * a + bb * bb + c * c + d * d;
    }
    rstd = rsqrtf(block_sum(v2) / float(C) + eps);
  }
  for (int64_t i = threadIdx.x; i < C4; i += blockDim.x) {
    float4 v = srow[i];
    float y[4] = {(v.x - mean) * rstd, (v.y - mean) * rstd, (v.z - mean) * rstd, (v.w - mean) * rstd};
    if (MODE == 0 && w) {
      float4 ww = load4(w, i), bb = load4(b, i);
      y[0] = y[0] * ww.x + bb.x; y[1] = y[1] * ww.y + bb.y; y[2] = y[2] * ww.z + bb.z; y[3] = y[3] * ww.w + bb.w;
    } else if (MODE == 1) {
      if (round_bf16)
        for (int k = 0; k < 4; ++k) y[k] = __bfloat162float(__float2bfloat16_rn(y[k]));
      float4 sh = load4(shift, i), sc = load4(scale, i);
      y[0] = y[0] * (1.f + sc.x) + sh.x; y[1] = y[1] * (1.f + sc.y) + sh.y;
      y[2] = y[2] * (1.f + sc.z) + sh.z; y[3] = y[3] * (1.f + sc.w) + sh.w;
    } else if (MODE == 2) {
      float4 ww = load4(w, i);
      y[0] *= ww.x; y[1] *= ww.y; y[2] *= ww.z; y[3] *= ww.w;
      if (rope_tab) {  // the arithmetic of rope_vec_kernel: pairs (0, 1) and (2, 3)
        float4 t = load4(rope_tab, i % D4);
        const float4 r = make_float4(y[0] * t.x - y[1] * t.y, y[0] * t.y + y[1] * t.x,
                                     y[2] * t.z - y[3] * t.w, y[2] * t.w + y[3] * t.z);
        y[0] = r.x; y[1] = r.y; y[2] = r.z; y[3] = r.w;
      }
    }
    store4(orow, i, make_float4(y[0], y[1], y[2], y[3]));
  }
}

// One block per row of x [rows, C]. MODE 2 with cs: also RoPE, the row being token (r, l) of x
// viewed [R, L, H, D] (row = r·L + l), rotated by table row (r % Rt)·L + l of cos_sin
// [Rt, L, D/2, 2] (D = 4·D4) — ops::rms_norm_rope.
template <typename TI, typename TO, int MODE>
__global__ void row_norm_vec_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t C,
                                    float eps, const float* __restrict__ w,
                                    const float* __restrict__ b, const float* __restrict__ shift,
                                    const float* __restrict__ scale, bool round_bf16,
                                    const float* __restrict__ cs = nullptr, int64_t L = 1,
                                    int64_t Rt = 1, int64_t D4 = 0) {
  extern __shared__ float4 srow[];
  const int64_t C4 = C / 4, row = blockIdx.x;
  const TI* xr = x + row * C;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < C4; i += blockDim.x) {
    float4 v = load4(xr, i);
    srow[i] = v;
    s += MODE == 2 ? v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w : v.x + v.y + v.z + v.w;
  }
  const float tot = block_sum(s);  // also orders the shared-memory writes before the reads
  const float* tab = cs ? cs + (((row / L) % Rt) * L + row % L) * D4 * 4 : nullptr;
  finish_row_norm<TO, MODE>(srow, C, tot, eps, out + row * C, w, b, shift, scale, round_bf16, tab, D4);
}

// add_gated_ then a LayerNorm of the updated row (MODE 0 / 1 of finish_row_norm): x += y·gate is
// written back and kept in shared memory for the norm (the arithmetic of add_gated_vec_kernel).
template <typename TY, typename TO, int MODE>
__global__ void add_row_norm_vec_kernel(float* __restrict__ x, const TY* __restrict__ y,
                                        const float* __restrict__ gate, TO* __restrict__ out,
                                        int64_t C, float eps, const float* __restrict__ w,
                                        const float* __restrict__ b, const float* __restrict__ shift,
                                        const float* __restrict__ scale) {
  extern __shared__ float4 srow[];
  const int64_t C4 = C / 4;
  float* xr = x + blockIdx.x * C;
  const TY* yr = y + blockIdx.x * C;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < C4; i += blockDim.x) {
    float4 a = load4(xr, i), v = load4(yr, i);
    if (gate) {
      float4 g = load4(gate, i);
      v.x *= g.x; v.y *= g.y; v.z *= g.z; v.w *= g.w;
    }
    const float4 nx = make_float4(a.x + v.x, a.y + v.y, a.z + v.z, a.w + v.w);
    store4(xr, i, nx);
    srow[i] = nx;
    s += nx.x + nx.y + nx.z + nx.w;
  }
  const float tot = block_sum(s);
  finish_row_norm<TO, MODE>(srow, C, tot, eps, out + blockIdx.x * C, w, b, shift, scale, false,
                            nullptr, 0);
}

template <typename TY>
__global__ void add_gated_vec_kernel(float* __restrict__ x, const TY* __restrict__ y,
                                     const float* __restrict__ gate, int64_t n4, int64_t C4) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4;
       i += int64_t(gridDim.x) * blockDim.x) {
    float4 a = load4(x, i), v = load4(y, i);
    if (gate) {
      float4 g = load4(gate, i % C4);
      v.x *= g.x; v.y *= g.y; v.z *= g.z; v.w *= g.w;
    }
    store4(x, i, make_float4(a.x + v.x, a.y + v.y, a.z + v.z, a.w + v.w));
  }
}

// RoPE, two pairs (4 elements) per thread; needs D % 4 == 0.
template <typename TI, typename TO>
__global__ void rope_vec_kernel(const TI* x, TO* out, const float* __restrict__ cs, int64_t R,
                                int64_t L, int64_t H, int64_t D, int64_t Rt) {
  const int64_t n4 = R * L * H * D / 4, D4 = D / 4;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t q = i % D4;         // which 4-element group of the head
    int64_t rest = i / D4;      // (r, l, h)
    int64_t l = (rest / H) % L;
    int64_t r = rest / (H * L);
    float4 t = load4(cs, ((r % Rt) * L + l) * D4 + q);  // (cos, sin) of pairs 2q, 2q+1
    float4 v = load4(x, i);
    store4(out, i, make_float4(v.x * t.x - v.y * t.y, v.x * t.y + v.y * t.x,
                               v.z * t.z - v.w * t.w, v.z * t.w + v.w * t.z));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
constexpr int64_t kMaxVecRow = 12288;  // shared-memory row cache limit (48 KiB of f32)

int row_threads(int64_t C) {
  if (C >= 2048) return 512;
  if (C >= 512) return 256;
  if (C >= 128) return 128;
  return 32;
}

int64_t rows_of(const Tensor& t) { return t.numel() / t.size(-1); }

// Calls f.template operator()<TI, TO>() for the (f32|bf16) x (f32|bf16) combination.
template <typename F>
void dispatch2(DType a, DType b, const char* op, F&& f) {
  if (a == DType::F32 && b == DType::F32) return f.template operator()<float, float>();
  if (a == DType::F32 && b == DType::BF16) return f.template operator()<float, bf16>();
  if (a == DType::BF16 && b == DType::F32) return f.template operator()<bf16, float>();
  if (a == DType::BF16 && b == DType::BF16) return f.template operator()<bf16, bf16>();
  fail(str("cuda::", op, ": dtypes ", dtype_name(a), " -> ", dtype_name(b),
           " are not supported (f32 or bf16 only)"));
}

void check_io(const Tensor& x, const Tensor& out, const char* op) {
  require_cuda(x, op, "input");
  require_cuda(out, op, "output");
  require_contiguous(x, op, "input");
  require_contiguous(out, op, "output");
  require_float(x, op, "input");
  require_float(out, op, "output");
  OSP_CHECK(x.numel() == out.numel(), "cuda::", op, ": input ", x.desc(), " and output ",
            out.desc(), " differ in size");
}

const float* f32_ptr(const Tensor* t, const char* op, const char* what, int64_t C) {
  if (!t) return nullptr;
  require_cuda(*t, op, what);
  require_contiguous(*t, op, what);
  OSP_CHECK(t->dtype() == DType::F32, "cuda::", op, ": ", what, " must be f32, got ", t->desc());
  OSP_CHECK(t->numel() == C, "cuda::", op, ": ", what, " must have ", C, " elements, got ",
            t->desc());
  return t->data<float>();
}
}  // namespace

void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) {
  check_io(x, out, "layer_norm");
  int64_t C = x.size(-1), rows = rows_of(x);
  OSP_CHECK((w == nullptr) == (b == nullptr), "cuda::layer_norm: w and b must both be given or both null");
  const float* wp = f32_ptr(w, "layer_norm", "weight", C);
  const float* bp = f32_ptr(b, "layer_norm", "bias", C);
  if (rows == 0) return;
  const bool vec = C % 4 == 0 && C <= kMaxVecRow && aligned16(x.raw()) && aligned16(out.raw()) &&
                   (!wp || (aligned16(wp) && aligned16(bp)));
  dispatch2(x.dtype(), out.dtype(), "layer_norm", [&]<typename TI, typename TO>() {
    if (vec)
      row_norm_vec_kernel<TI, TO, 0><<<unsigned(rows), row_threads(C / 4), C * 4, stream()>>>(
          x.data<TI>(), out.data<TO>(), C, eps, wp, bp, nullptr, nullptr, false);
    else
      layer_norm_kernel<TI, TO><<<unsigned(rows), row_threads(C), 0, stream()>>>(
          x.data<TI>(), out.data<TO>(), C, eps, wp, bp, 0, nullptr, nullptr, false);
  });
  OSP_CUDA_LAUNCH_CHECK("layer_norm_kernel");
}

void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                         Tensor& out, bool round_ln_to_bf16) {
  check_io(x, out, "layer_norm_modulate");
  int64_t C = x.size(-1), rows = rows_of(x);
  const float* sh = f32_ptr(&shift, "layer_norm_modulate", "shift", C);
  const float* sc = f32_ptr(&scale, "layer_norm_modulate", "scale", C);
  if (rows == 0) return;
  const bool vec = C % 4 == 0 && C <= kMaxVecRow && aligned16(x.raw()) && aligned16(out.raw()) &&
                   aligned16(sh) && aligned16(sc);
  dispatch2(x.dtype(), out.dtype(), "layer_norm_modulate", [&]<typename TI, typename TO>() {
    if (vec)
      row_norm_vec_kernel<TI, TO, 1><<<unsigned(rows), row_threads(C / 4), C * 4, stream()>>>(
          x.data<TI>(), out.data<TO>(), C, eps, nullptr, nullptr, sh, sc, round_ln_to_bf16);
    else
      layer_norm_kernel<TI, TO><<<unsigned(rows), row_threads(C), 0, stream()>>>(
          x.data<TI>(), out.data<TO>(), C, eps, nullptr, nullptr, 1, sh, sc, round_ln_to_bf16);
  });
  OSP_CUDA_LAUNCH_CHECK("layer_norm_kernel(modulate)");
}

void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  check_io(x, out, "rms_norm");
  int64_t C = x.size(-1), rows = rows_of(x);
  const float* wp = f32_ptr(&w, "rms_norm", "weight", C);
  if (rows == 0) return;
  const bool vec = C % 4 == 0 && C <= kMaxVecRow && aligned16(x.raw()) && aligned16(out.raw()) &&
                   aligned16(wp);
  dispatch2(x.dtype(), out.dtype(), "rms_norm", [&]<typename TI, typename TO>() {
    if (vec)
      row_norm_vec_kernel<TI, TO, 2><<<unsigned(rows), row_threads(C / 4), C * 4, stream()>>>(
          x.data<TI>(), out.data<TO>(), C, eps, wp, nullptr, nullptr, nullptr, false);
    else
      rms_norm_kernel<TI, TO><<<unsigned(rows), row_threads(C), 0, stream()>>>(
          x.data<TI>(), out.data<TO>(), C, eps, wp);
  });
  OSP_CUDA_LAUNCH_CHECK("rms_norm_kernel");
}

void gelu_tanh(const Tensor& x, Tensor& out) {
  check_io(x, out, "gelu_tanh");
  int64_t n = x.numel();
  if (n == 0) return;
  dispatch2(x.dtype(), out.dtype(), "gelu_tanh", [&]<typename TI, typename TO>() {
    unary_kernel<TI, TO, 0><<<grid_for(n), 256, 0, stream()>>>(x.data<TI>(), out.data<TO>(), n);
  });
  OSP_CUDA_LAUNCH_CHECK("unary_kernel(gelu_tanh)");
}

void silu(const Tensor& x, Tensor& out) {
  check_io(x, out, "silu");
  int64_t n = x.numel();
  if (n == 0) return;
  dispatch2(x.dtype(), out.dtype(), "silu", [&]<typename TI, typename TO>() {
    unary_kernel<TI, TO, 1><<<grid_for(n), 256, 0, stream()>>>(x.data<TI>(), out.data<TO>(), n);
  });
  OSP_CUDA_LAUNCH_CHECK("unary_kernel(silu)");
}

void add_gated_(Tensor& x, const Tensor& y, const Tensor* gate) {
  check_io(y, x, "add_gated_");
  OSP_CHECK(x.dtype() == DType::F32, "cuda::add_gated_: the residual x must be f32, got ", x.desc());
  int64_t C = x.size(-1), n = x.numel();
  const float* g = f32_ptr(gate, "add_gated_", "gate", C);
  if (n == 0) return;
  if (C % 4 == 0 && aligned16(x.raw()) && aligned16(y.raw()) && (!g || aligned16(g))) {
    const int64_t n4 = n / 4;
    if (y.dtype() == DType::F32)
      add_gated_vec_kernel<float><<<grid_for(n4), 256, 0, stream()>>>(x.data<float>(), y.data<float>(), g, n4, C / 4);
    else
      add_gated_vec_kernel<bf16><<<grid_for(n4), 256, 0, stream()>>>(x.data<float>(), y.data<bf16>(), g, n4, C / 4);
    OSP_CUDA_LAUNCH_CHECK("add_gated_vec_kernel");
    return;
  }
  if (y.dtype() == DType::F32)
    add_gated_kernel<float><<<grid_for(n), 256, 0, stream()>>>(x.data<float>(), y.data<float>(), g, n, C);
  else
    add_gated_kernel<bf16><<<grid_for(n), 256, 0, stream()>>>(x.data<float>(), y.data<bf16>(), g, n, C);
  OSP_CUDA_LAUNCH_CHECK("add_gated_kernel");
}

void axpby(float a, const Tensor& x, float b, const Tensor& y, Tensor& out) {
  check_io(x, out, "axpby");
  check_io(y, out, "axpby");
  OSP_CHECK(x.dtype() == DType::F32 && y.dtype() == DType::F32 && out.dtype() == DType::F32,
            "cuda::axpby: x, y and out must be f32, got ", x.desc(), ", ", y.desc(), ", ", out.desc());
  int64_t n = x.numel();
  if (n == 0) return;
  axpby_kernel<<<grid_for(n), 256, 0, stream()>>>(a, x.data<float>(), b, y.data<float>(),
                                                  out.data<float>(), n);
  OSP_CUDA_LAUNCH_CHECK("axpby_kernel");
}

void rope(const Tensor& x, const Tensor& cos_sin, Tensor& out) {
  check_io(x, out, "rope");
  OSP_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "cuda::rope: x must be [R, L, H, D] with D even, got ",
            x.desc());
  require_cuda(cos_sin, "rope", "cos_sin");
  require_contiguous(cos_sin, "rope", "cos_sin");
  int64_t R = x.size(0), L = x.size(1), H = x.size(2), half = x.size(3) / 2;
  OSP_CHECK(cos_sin.dtype() == DType::F32 && cos_sin.dim() == 4 && cos_sin.size(1) == L &&
                cos_sin.size(2) == half && cos_sin.size(3) == 2 && cos_sin.size(0) >= 1,
            "cuda::rope: cos_sin must be f32 [Rt, ", L, ", ", half, ", 2], got ", cos_sin.desc());
  int64_t Rt = cos_sin.size(0);
  int64_t n = R * L * H * half;
  if (n == 0) return;
  const int64_t D = 2 * half;
  if (D % 4 == 0 && aligned16(x.raw()) && aligned16(out.raw()) && aligned16(cos_sin.raw())) {
    dispatch2(x.dtype(), out.dtype(), "rope", [&]<typename TI, typename TO>() {
      rope_vec_kernel<TI, TO><<<grid_for(n / 2), 256, 0, stream()>>>(
          x.data<TI>(), out.data<TO>(), cos_sin.data<float>(), R, L, H, D, Rt);
    });
    OSP_CUDA_LAUNCH_CHECK("rope_vec_kernel");
    return;
  }
  dispatch2(x.dtype(), out.dtype(), "rope", [&]<typename TI, typename TO>() {
    rope_kernel<TI, TO><<<grid_for(n), 256, 0, stream()>>>(x.data<TI>(), out.data<TO>(),
                                                           cos_sin.data<float>(), R, L, H, half, Rt);
  });
  OSP_CUDA_LAUNCH_CHECK("rope_kernel");
}

void rms_norm_rope(const Tensor& x, const Tensor& w, float eps, const Tensor& cos_sin, Tensor& out) {
  check_io(x, out, "rms_norm_rope");
  require_cuda(cos_sin, "rms_norm_rope", "cos_sin");
  require_contiguous(cos_sin, "rms_norm_rope", "cos_sin");
  const int64_t R = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3), C = H * D, rows = R * L;
  const float* wp = f32_ptr(&w, "rms_norm_rope", "weight", C);
  if (rows == 0 || C == 0) return;
  const bool vec = engine_settings().fused_norms && C % 4 == 0 && D % 4 == 0 && C <= kMaxVecRow && aligned16(x.raw()) &&
                   aligned16(out.raw()) && aligned16(wp) && aligned16(cos_sin.raw());
  if (!vec) {  // the two ops in sequence through an f32 intermediate (the same values)
    Tensor t = Tensor::empty(x.shape(), DType::F32, x.device());
    Tensor tv = t.view({rows, C});
    rms_norm(x.view({rows, C}), w, eps, tv);
    rope(t, cos_sin, out);
    return;
  }
  dispatch2(x.dtype(), out.dtype(), "rms_norm_rope", [&]<typename TI, typename TO>() {
    row_norm_vec_kernel<TI, TO, 2><<<unsigned(rows), row_threads(C / 4), C * 4, stream()>>>(
        x.data<TI>(), out.data<TO>(), C, eps, wp, nullptr, nullptr, nullptr, false, cos_sin.data<float>(), L,
        cos_sin.size(0), D / 4);
  });
  OSP_CUDA_LAUNCH_CHECK("row_norm_vec_kernel(rms_norm_rope)");
}

namespace {
// add_gated_ + (mode 0) layer_norm(w, b) or (mode 1) layer_norm_modulate(shift, scale).
void add_gated_norm(Tensor& x, const Tensor& y, const Tensor* gate, int mode, const Tensor* w,
                    const Tensor* b, const Tensor* shift, const Tensor* scale, float eps, Tensor& out) {
  const char* op = mode == 0 ? "add_gated_layer_norm_" : "add_gated_layer_norm_modulate_";
  check_io(y, x, op);
  check_io(x, out, op);
  OSP_CHECK(x.dtype() == DType::F32, "cuda::", op, ": the residual x must be f32, got ", x.desc());
  const int64_t C = x.size(-1), rows = rows_of(x);
  const float* g = f32_ptr(gate, op, "gate", C);
  const float* wp = f32_ptr(w, op, "weight", C);
  const float* bp = f32_ptr(b, op, "bias", C);
  const float* shp = f32_ptr(shift, op, "shift", C);
  const float* scp = f32_ptr(scale, op, "scale", C);
  if (rows == 0) return;
  bool vec = engine_settings().fused_norms && C % 4 == 0 && C <= kMaxVecRow && aligned16(x.raw()) &&
             aligned16(y.raw()) && aligned16(out.raw());
  for (const float* p : {g, wp, bp, shp, scp}) vec = vec && (!p || aligned16(p));
  if (!vec) {
    add_gated_(x, y, gate);
    if (mode == 0) layer_norm(x, w, b, eps, out);
    else layer_norm_modulate(x, *shift, *scale, eps, out, false);
    return;
  }
  const unsigned grid = unsigned(rows), threads = unsigned(row_threads(C / 4));
  const size_t smem = size_t(C) * 4;
  auto launch = [&]<typename TY, typename TO>() {
    if (mode == 0)
      add_row_norm_vec_kernel<TY, TO, 0><<<grid, threads, smem, stream()>>>(
          x.data<float>(), y.data<TY>(), g, out.data<TO>(), C, eps, wp, bp, nullptr, nullptr);
    else
      add_row_norm_vec_kernel<TY, TO, 1><<<grid, threads, smem, stream()>>>(
          x.data<float>(), y.data<TY>(), g, out.data<TO>(), C, eps, nullptr, nullptr, shp, scp);
  };
  dispatch2(y.dtype(), out.dtype(), op, launch);
  OSP_CUDA_LAUNCH_CHECK("add_row_norm_vec_kernel");
}
}  // namespace

void add_gated_layer_norm_(Tensor& x, const Tensor& y, const Tensor* gate, const Tensor* w,
                           const Tensor* b, float eps, Tensor& out) {
  add_gated_norm(x, y, gate, 0, w, b, nullptr, nullptr, eps, out);
}

void add_gated_layer_norm_modulate_(Tensor& x, const Tensor& y, const Tensor* gate,
                                    const Tensor& shift, const Tensor& scale, float eps, Tensor& out) {
  add_gated_norm(x, y, gate, 1, nullptr, nullptr, &shift, &scale, eps, out);
}

void gather_rows(const Tensor& src, const Tensor& index, Tensor& out) {
  require_cuda(src, "gather_rows", "src");
  require_cuda(index, "gather_rows", "index");
  require_cuda(out, "gather_rows", "out");
  require_contiguous(src, "gather_rows", "src");
  require_contiguous(index, "gather_rows", "index");
  require_contiguous(out, "gather_rows", "out");
  OSP_CHECK(index.dtype() == DType::I32 && index.dim() == 1, "cuda::gather_rows: index must be i32 [M], got ",
            index.desc());
  OSP_CHECK(src.dim() == 2 && out.dim() == 2 && out.size(0) == index.size(0) &&
                out.size(1) == src.size(1) && out.dtype() == src.dtype(),
            "cuda::gather_rows: expected src [N, C], index [M], out [M, C] of src's dtype; got ",
            src.desc(), ", ", index.desc(), ", ", out.desc());
  int64_t M = out.size(0), N = src.size(0);
  size_t row_bytes = size_t(src.size(1)) * dtype_size(src.dtype());
  if (M == 0 || row_bytes == 0) return;
  unsigned grid = unsigned(M < 65535 * 4 ? M : 65535 * 4);
  auto aligned = [&](size_t a) {
    return row_bytes % a == 0 && reinterpret_cast<uintptr_t>(src.raw()) % a == 0 &&
           reinterpret_cast<uintptr_t>(out.raw()) % a == 0;
  };
  const int32_t* idx = index.data<int32_t>();
  if (aligned(16)) {
    int64_t W = row_bytes / 16;
    gather_rows_kernel<uint4><<<grid, W >= 256 ? 256 : 64, 0, stream()>>>(
        (const uint4*)src.raw(), idx, (uint4*)out.raw(), M, N, W);
  } else if (aligned(4)) {
    int64_t W = row_bytes / 4;
    gather_rows_kernel<uint32_t><<<grid, W >= 256 ? 256 : 64, 0, stream()>>>(
        (const uint32_t*)src.raw(), idx, (uint32_t*)out.raw(), M, N, W);
  } else {
    gather_rows_kernel<uint8_t><<<grid, 128, 0, stream()>>>((const uint8_t*)src.raw(), idx,
                                                            (uint8_t*)out.raw(), M, N, row_bytes);
  }
  OSP_CUDA_LAUNCH_CHECK("gather_rows_kernel");
}

void patchify(const Tensor& z, int pt, int ph, int pw, Tensor& out) {
  check_io(z, out, "patchify");
  OSP_CHECK(pt == 1, "cuda::patchify: pt must be 1, got ", pt);
  OSP_CHECK(z.dim() == 4 && ph > 0 && pw > 0 && z.size(2) % ph == 0 && z.size(3) % pw == 0,
            "cuda::patchify: z must be [C, T, H, W] with H % ", ph, " == 0 and W % ", pw,
            " == 0, got ", z.desc());
  int64_t C = z.size(0), T = z.size(1), H = z.size(2), W = z.size(3);
  OSP_CHECK(out.dim() == 2 && out.size(0) == T * (H / ph) * (W / pw) && out.size(1) == C * ph * pw,
            "cuda::patchify: out must be [", T * (H / ph) * (W / pw), ", ", C * ph * pw, "], got ",
            out.desc());
  int64_t n = out.numel();
  if (n == 0) return;
  dispatch2(z.dtype(), out.dtype(), "patchify", [&]<typename TI, typename TO>() {
    patchify_kernel<TI, TO><<<grid_for(n), 256, 0, stream()>>>(z.data<TI>(), out.data<TO>(), C, T,
                                                               H, W, ph, pw);
  });
  OSP_CUDA_LAUNCH_CHECK("patchify_kernel");
}

void unpatchify(const Tensor& y, int64_t T, int64_t h, int64_t w, int pt, int ph, int pw,
                Tensor& out) {
  check_io(y, out, "unpatchify");
  OSP_CHECK(pt == 1, "cuda::unpatchify: pt must be 1, got ", pt);
  OSP_CHECK(y.dim() == 2 && y.size(0) == T * h * w && y.size(1) % (ph * pw) == 0,
            "cuda::unpatchify: y must be [", T * h * w, ", ph*pw*C], got ", y.desc());
  int64_t C = y.size(1) / (ph * pw);
  OSP_CHECK(out.dim() == 4 && out.size(0) == C && out.size(1) == T && out.size(2) == h * ph &&
                out.size(3) == w * pw,
            "cuda::unpatchify: out must be [", C, ", ", T, ", ", h * ph, ", ", w * pw, "], got ",
            out.desc());
  int64_t n = out.numel();
  if (n == 0) return;
  dispatch2(y.dtype(), out.dtype(), "unpatchify", [&]<typename TI, typename TO>() {
    unpatchify_kernel<TI, TO><<<grid_for(n), 256, 0, stream()>>>(y.data<TI>(), out.data<TO>(), C,
                                                                 T, h, w, ph, pw);
  });
  OSP_CUDA_LAUNCH_CHECK("unpatchify_kernel");
}

}  // namespace osp::ops::cuda
