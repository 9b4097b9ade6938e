// Alternative HiF8 codec kernels for bench_hif8_gpu's comparisons (not used by the library).
//
// bf16 → HiF8 encode, kept so that bench_hif8_gpu can compare the
// production kernel (8192-entry prefix table, hif8_kernels.cu) with the two designs it was
// chosen over, in the same streaming frame (persistent grid, 16-element tiles, 16-byte
// accesses). All three give the reference codes bit for bit (tests/quant/hif8_gpu_test.cpp).
//   kEncodeLut64k  one 65,536-entry byte table indexed by the bf16 pattern itself (64 KB of
//                  shared memory per block, copied from a global table built once per device):
//                  no arithmetic per element, but at most 3 blocks per SM and 64 KB of L2
//                  reads per block.
//   kEncodeBits    the branch-free bit arithmetic of hif8_fast.h (round on the fp32 pattern,
//                  then a 304-entry table of rounded magnitudes), about 20 integer
//                  instructions per element.
#include <cuda_bf16.h>

#include <mutex>

#include "osp/core/cuda_check.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_device.cuh"
#include "osp/quant/cuda/hif8_fast.h"
#include "osp/quant/cuda/hif8_stream.cuh"
#include "osp/quant/hif8_scalar.h"

namespace osp::quant::cuda {
namespace {

constexpr int kLut64 = 65536;

__global__ void build_lut64k_kernel(uint8_t* __restrict__ lut, bool saturate) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < kLut64) lut[i] = detail::hif8_encode_ta(__uint_as_float(uint32_t(i) << 16), saturate);
}

__global__ void __launch_bounds__(kStreamThreads)
    encode_lut64k_kernel(const __nv_bfloat16* __restrict__ x, uint8_t* __restrict__ out,
                         int64_t n, bool vec, const uint8_t* __restrict__ g_lut) {
  extern __shared__ __align__(16) uint8_t lut[];
  {
    const uint4* src = reinterpret_cast<const uint4*>(g_lut);
    uint4* dst = reinterpret_cast<uint4*>(lut);
    for (int i = threadIdx.x; i < kLut64 / 16; i += blockDim.x) dst[i] = __ldg(src + i);
  }
  __syncthreads();
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    constexpr int U = kUnroll<__nv_bfloat16>;
    const int64_t ntiles = n / kTile;
    for (int64_t t0 = tid; t0 < ntiles; t0 += U * stride) {
      Tile<__nv_bfloat16> in[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (t0 + u * stride < ntiles) load_tile(x, t0 + u * stride, in[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (t0 + u * stride >= ntiles) break;
        uint32_t c[kTile];
#pragma unroll
        for (int k = 0; k < kTile; ++k) {
          const uint32_t w = in[u].w[k >> 1];
          c[k] = lut[(k & 1) ? (w >> 16) : (w & 0xffffu)];
        }
        Tile<uint8_t> o;
        tile_set_bytes(o, c);
        store_tile(out, t0 + u * stride, o);
      }
    }
    done = ntiles * kTile;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = lut[__bfloat16_as_ushort(x[i])];
}

__global__ void __launch_bounds__(kStreamThreads)
    encode_bits_kernel(const __nv_bfloat16* __restrict__ x, uint8_t* __restrict__ out, int64_t n,
                       bool vec, bool saturate) {
  __shared__ uint8_t code_lut[detail::kHiF8IdxCount];
  for (int i = threadIdx.x; i < detail::kHiF8IdxCount; i += blockDim.x)
    code_lut[i] = detail::hif8_encode_ta(detail::hif8_idx_value(i), false);
  __syncthreads();
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    constexpr int U = kUnroll<__nv_bfloat16>;
    const int64_t ntiles = n / kTile;
    for (int64_t t0 = tid; t0 < ntiles; t0 += U * stride) {
      Tile<__nv_bfloat16> in[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (t0 + u * stride < ntiles) load_tile(x, t0 + u * stride, in[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (t0 + u * stride >= ntiles) break;
        uint32_t c[kTile];
#pragma unroll
        for (int k = 0; k < kTile; ++k)
          c[k] = detail::hif8_encode_ta_fast(tile_elem(in[u], k), saturate, code_lut);
        Tile<uint8_t> o;
        tile_set_bytes(o, c);
        store_tile(out, t0 + u * stride, o);
      }
    }
    done = ntiles * kTile;
  }
  for (int64_t i = done + tid; i < n; i += stride)
    out[i] = detail::hif8_encode_ta_fast(elem_f(x, i), saturate, code_lut);
}

const uint8_t* lut64k_device(bool saturate) {
  static std::mutex mu;
  static uint8_t* luts[64][2] = {};
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  OSP_CHECK(dev >= 0 && dev < 64, "hif8 encode variants: device index ", dev, " out of range");
  std::lock_guard<std::mutex> lock(mu);
  uint8_t*& p = luts[dev][saturate ? 1 : 0];
  if (!p) {
    OSP_CUDA_CHECK(cudaMalloc(&p, kLut64));  // 64 KB for the life of the process
    build_lut64k_kernel<<<kLut64 / 256, 256>>>(p, saturate);
    OSP_CUDA_LAUNCH_CHECK("hif8 build_lut64k_kernel");
    OSP_CUDA_CHECK(cudaFuncSetAttribute(encode_lut64k_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kLut64));
  }
  return p;
}

// ---- decode variants: where do the write-heavy kernels lose bandwidth? ----
// The production decode (hif8_decode_kernel, hif8_device.cuh) is the warp-interleaved table
// lookup: lane L of a warp takes the k-th output vector L + 32k of the warp's span, so every
// store instruction writes 512 contiguous bytes, with 64 codes in flight per lane, launched
// with one warp per span. The
// variants: kTilePlainStores, the per-thread walk the decode had before (each thread 16
// consecutive codes, their 64 (f32) or 32 (bf16) output bytes as consecutive 16-byte stores: one
// warp store instruction covers 16-byte pieces 64 or 32 bytes apart); kInterleaved*, the
// interleaved walk with 16 codes per lane (a 512-element span), with or without the
// evict-first store hint, in the persistent grid; kInterleavedPersistent, the production
// kernel in the persistent grid (SMs × occupancy) instead of one warp per span.
template <typename TO>
__global__ void __launch_bounds__(kStreamThreads)
    decode_tile_kernel(const uint8_t* __restrict__ c, TO* __restrict__ out, int64_t n, bool vec) {
  __shared__ uint32_t val[256];
  val[threadIdx.x] = __float_as_uint(detail::hif8_decode(uint8_t(threadIdx.x)));
  __syncthreads();
  constexpr int G = 16 / int(sizeof(TO));  // elements per 16-byte output vector: 4 or 8
  auto convert = [&](const uint32_t* codes_w, uint4& o) {  // G codes → one output vector
    uint32_t v[8];
#pragma unroll
    for (int j = 0; j < G; ++j) v[j] = val[(codes_w[j >> 2] >> (8 * (j & 3))) & 0xffu];
    if (sizeof(TO) == 4) {
      o = make_uint4(v[0], v[1], v[2], v[3]);
    } else {
      o = make_uint4(__byte_perm(v[0], v[1], 0x7632), __byte_perm(v[2], v[3], 0x7632),
                     __byte_perm(v[4], v[5], 0x7632), __byte_perm(v[6], v[7], 0x7632));
    }
  };
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    constexpr int U = kUnroll<uint8_t>;
    const int64_t ntiles = n / kTile;
    for (int64_t t0 = tid; t0 < ntiles; t0 += U * stride) {
      Tile<uint8_t> in[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (t0 + u * stride < ntiles) load_tile(c, t0 + u * stride, in[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t t = t0 + u * stride;
        if (t >= ntiles) break;
        uint4* o4 = reinterpret_cast<uint4*>(out) + t * (16 / G);
#pragma unroll
        for (int k = 0; k < 16 / G; ++k) {
          uint4 o;
          convert(in[u].w + k * (G / 4), o);
          o4[k] = o;
        }
      }
    }
    done = ntiles * kTile;
  }
  for (int64_t i = done + tid; i < n; i += stride) put_bits(out, i, val[c[i]]);
}

// Persistent grid from the kernel's occupancy (self-contained on purpose: bench_hif8_gpu's
// baseline build links this file against older kernel objects).
unsigned variant_grid(const void* kernel, size_t smem, int64_t items) {
  int dev = 0, nsm = 0, per_sm = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  OSP_CUDA_CHECK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
  OSP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kStreamThreads, smem));
  int64_t blocks = (items + kStreamThreads - 1) / kStreamThreads;
  const int64_t cap = int64_t(nsm > 0 ? nsm : 1) * (per_sm > 0 ? per_sm : 1);
  if (blocks > cap) blocks = cap;
  return unsigned(blocks < 1 ? 1 : blocks);
}

}  // namespace

void hif8_encode_bf16_variant(const Tensor& x, Tensor& out, bool saturate, EncodeVariant v) {
  OSP_CHECK(x.dtype() == DType::BF16 && x.device().is_cuda() && x.is_contiguous(),
            "hif8_encode_bf16_variant: x must be a contiguous bf16 CUDA tensor, got ", x.desc());
  OSP_CHECK((out.dtype() == DType::U8 || out.dtype() == DType::HiF8) && out.is_contiguous() &&
                out.device() == x.device() && out.numel() == x.numel(),
            "hif8_encode_bf16_variant: out must be a contiguous u8/hif8 tensor of x's size on x's "
            "device, got ", out.desc());
  if (v == EncodeVariant::kPrefix8k) {
    hif8_encode(x, out, saturate);
    return;
  }
  const int64_t n = x.numel();
  if (n == 0) return;
  const auto* xp = static_cast<const __nv_bfloat16*>(x.raw());
  uint8_t* o = out.data<uint8_t>();
  const bool vec = aligned16_host(xp) && aligned16_host(o);
  const int64_t items = vec ? (n / kTile + kUnroll<__nv_bfloat16> - 1) / kUnroll<__nv_bfloat16> + 1
                            : n;
  if (v == EncodeVariant::kLut64k) {
    const uint8_t* lut = lut64k_device(saturate);
    const unsigned blocks =
        variant_grid(reinterpret_cast<const void*>(encode_lut64k_kernel), kLut64, items);
    encode_lut64k_kernel<<<blocks, kStreamThreads, kLut64>>>(xp, o, n, vec, lut);
    OSP_CUDA_LAUNCH_CHECK("hif8 encode_lut64k_kernel");
  } else {
    encode_bits_kernel<<<variant_grid(reinterpret_cast<const void*>(encode_bits_kernel), 0, items),
                         kStreamThreads>>>(xp, o, n, vec, saturate);
    OSP_CUDA_LAUNCH_CHECK("hif8 encode_bits_kernel");
  }
}

}  // namespace osp::quant::cuda

namespace osp::quant::cuda {

void hif8_decode_variant(const Tensor& codes, Tensor& out, DecodeVariant v) {
  OSP_CHECK((codes.dtype() == DType::U8 || codes.dtype() == DType::HiF8) &&
                codes.device().is_cuda() && codes.is_contiguous(),
            "hif8_decode_variant: codes must be a contiguous u8/hif8 CUDA tensor, got ",
            codes.desc());
  OSP_CHECK((out.dtype() == DType::F32 || out.dtype() == DType::BF16) && out.is_contiguous() &&
                out.device() == codes.device() && out.numel() == codes.numel(),
            "hif8_decode_variant: out must be a contiguous f32/bf16 tensor of the codes' size on "
            "their device, got ", out.desc());
  if (v == DecodeVariant::kProduction) {
    hif8_decode(codes, out);
    return;
  }
  const int64_t n = codes.numel();
  if (n == 0) return;
  const uint8_t* c = codes.data<uint8_t>();
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.raw());
    constexpr int K16 = 16 / WarpStream<uint8_t, T>::G;  // 16 codes per lane
    if (v == DecodeVariant::kTilePlainStores) {
      const bool vec = aligned16_host(c) && aligned16_host(o);
      void (*kernel)(const uint8_t*, T*, int64_t, bool) = decode_tile_kernel<T>;
      kernel<<<variant_grid(reinterpret_cast<const void*>(kernel), 0, vec ? n / kTile + 1 : n),
               kStreamThreads>>>(c, o, n, vec);
    } else if (v == DecodeVariant::kInterleavedPersistent) {
      launch_hif8_decode<T>(c, o, n, /*full_grid=*/false);
    } else if (v == DecodeVariant::kInterleavedEvictFirst) {
      launch_hif8_decode<T, K16, true>(c, o, n, false);
    } else {
      launch_hif8_decode<T, K16, false>(c, o, n, false);
    }
  };
  if (out.dtype() == DType::F32) run(float{});
  else run(__nv_bfloat16{});
  OSP_CUDA_LAUNCH_CHECK("hif8 decode_variant_kernel");
}

}  // namespace osp::quant::cuda
