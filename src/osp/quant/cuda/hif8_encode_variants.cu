// Alternative bf16 → HiF8 encode kernels, kept so that bench_hif8_gpu can compare the
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
