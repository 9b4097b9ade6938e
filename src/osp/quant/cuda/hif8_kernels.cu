// CUDA HiF8 kernels: encode (and the E4M3 operand quantize, the same kernel with another
// table), decode, TA/stochastic quant-dequant, amax, scaled fake quant. All kernels run on
// the legacy default stream, like the rest of osp.
//
// Every kernel is memory-bound by design (hif8_stream.cuh: tile, warp-interleaved or bulk-store
// walks, ≈ 64–128 bytes of loads in flight per thread) with a per-element cost of a handful of
// instructions:
//   encode   x (+0, or ·s) → 13-bit prefix → code table in shared memory (hif8_lut.h)
//   decode   code → 256-entry value table in shared memory
//   round    x·s (→ bf16 for bf16 input) → prefix → code → value table (decode(c)/s, rounded
//            to the output's precision once per block)
//   hybrid   the same with the magnitude first rounded stochastically on the HiF8 grid by
//            integer arithmetic; one Philox4x32-10 call gives the words of 4 elements
// The tables are built from the reference scalar codec (hif8_scalar.h), and
// tests/quant/hif8_lut_test.cpp checks the table path against it on the CPU, so the results
// are bitwise those of the CPU implementation. How each op walks memory and sizes its grid
// (StreamShape) was chosen by measurement: docs/PERF.md, "HiF8 codec kernels".
#include <cuda_bf16.h>

#include <map>
#include <mutex>
#include <utility>

#include "osp/core/cuda_check.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_device.cuh"
#include "osp/quant/cuda/hif8_lut.h"
#include "osp/quant/cuda/hif8_stream.cuh"
#include "osp/quant/e4m3_scalar.h"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_scalar.h"
#include "osp/quant/philox.h"

namespace osp::quant::cuda {
namespace {

constexpr int kThreads = kStreamThreads;

// ---- the global prefix tables: HiF8 codes (overflow to Inf, saturating), E4M3 codes ----
constexpr int kLuts = 3;
__global__ void build_code_luts_kernel(uint8_t* __restrict__ lut) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= kLuts * detail::kHiF8LutSize) return;
  const uint32_t k = uint32_t(i) & uint32_t(detail::kHiF8LutSize - 1);
  const int which = i / detail::kHiF8LutSize;
  const uint8_t c = detail::hif8_lut_entry(k, which == 1);
  lut[i] = which == 2 ? detail::e4m3_encode_rne(detail::hif8_decode(c)) : c;
}

// ---- codes: x (·s) → one byte through a prefix table ----
// kScaled: x·s (rounded to bf16 for bf16 input) with s from the device amax, 1/s written by
// block 0; else x + 0 (canonical NaN, −0 → +0). kInterleaved: the warp-interleaved walk (512
// contiguous input bytes per warp load, 4- or 8-byte code stores per lane), else the tile walk
// (one 16-byte store of 16 codes per lane). The table fill and the scale read overlap the
// first loads (the walks' prologue).
template <typename TI, bool kScaled, bool kInterleaved>
__global__ void __launch_bounds__(kThreads)
    code_kernel(const TI* __restrict__ x, uint8_t* __restrict__ out, int64_t n, bool vec,
                const uint8_t* __restrict__ g_lut, const float* __restrict__ d_amax,
                float max_target, float* __restrict__ d_scale_inv) {
  constexpr bool kBF16 = sizeof(TI) == 2;
  __shared__ __align__(16) uint8_t lut[detail::kHiF8LutSize];
  float s = 1.0f;
  auto prologue = [&] {
    if constexpr (kScaled) {
      s = device_scale_for(*d_amax, max_target, kBF16);
      if (d_scale_inv && blockIdx.x == 0 && threadIdx.x == 0) *d_scale_inv = __fdiv_rn(1.0f, s);
    }
    copy_code_lut(lut, g_lut);
    __syncthreads();
  };
  int64_t done = 0;
  if (vec && kInterleaved) {
    constexpr int G = WarpStream<TI, uint8_t>::G;
    done = warp_stream<TI, uint8_t>(
        x, out, n,
        [&](const auto& in, int64_t, auto& o) {
          float xs[G];
          chunk_scaled<kScaled, kScaled && kBF16, G>(in, s, xs, TI{});
          uint32_t c[G];
#pragma unroll
          for (int j = 0; j < G; ++j) c[j] = lut[detail::hif8_lut_index(xs[j])];
          chunk_set<G>(o, c, uint8_t{});
        },
        prologue);
  } else if (vec) {
    done = tile_stream<TI>(
        x, n,
        [&](const Tile<TI>& in, int64_t t) {
          float xs[kTile];
          tile_scaled<kScaled, kScaled && kBF16>(in, s, xs);
          uint32_t c[kTile];
#pragma unroll
          for (int k = 0; k < kTile; ++k) c[k] = lut[detail::hif8_lut_index(xs[k])];
          Tile<uint8_t> o;
          tile_set_bytes(o, c);
          store_tile(out, t, o);
        },
        prologue);
  } else {
    prologue();
  }
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = done + tid; i < n; i += stride) {
    float xs = scale_canon<kScaled>(elem_f(x, i), s);
    if (kScaled && kBF16) xs = round_bf16_dev(xs);
    out[i] = lut[detail::hif8_lut_index(xs)];
  }
}

// ---- decode: code → value ----
// hif8_decode_kernel (hif8_device.cuh): the 256-entry table lookup on the warp-interleaved
// walk, by default with bulk stores (stream_table_lookup, hif8_stream.cuh).

// ---- quant-dequant: TA or hybrid, unscaled (hif8_round*) or per-tensor scaled (fake quant) --
// Random words of the N (a multiple of 4) consecutive elements starting at global element
// index `first` (the convention of philox.h: element g takes word g mod 4 of Philox block
// g / 4). One Philox call per 4 elements; when `first` is not a multiple of 4 (an offset that
// is not), one more block is drawn and the words are shifted by the phase (uniform across the
// grid).
template <int N>
__device__ __forceinline__ void philox_words(uint32_t k0, uint32_t k1, uint64_t first,
                                             uint32_t W[N]) {
  const uint64_t b0 = first >> 2;
  const uint32_t phase = uint32_t(first) & 3u;
  uint32_t w[N + 4];
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
    const uint64_t b = b0 + uint64_t(j);
    const detail::Philox4 r =
        detail::philox4x32_10(detail::Philox4{{uint32_t(b), uint32_t(b >> 32), 0u, 0u}}, k0, k1);
#pragma unroll
    for (int q = 0; q < 4; ++q) w[4 * j + q] = r.v[q];
  }
  if (phase != 0) {
    const uint64_t b = b0 + N / 4;
    const detail::Philox4 r =
        detail::philox4x32_10(detail::Philox4{{uint32_t(b), uint32_t(b >> 32), 0u, 0u}}, k0, k1);
#pragma unroll
    for (int q = 0; q < 4; ++q) w[N + q] = r.v[q];
    if (phase & 1u) {
#pragma unroll
      for (int k = 0; k < N + 3; ++k) w[k] = w[k + 1];
    }
    if (phase & 2u) {
#pragma unroll
      for (int k = 0; k < N + 2; ++k) w[k] = w[k + 2];
    }
  }
#pragma unroll
  for (int k = 0; k < N; ++k) W[k] = w[k];
}

// out = val[code(x·s)] with val[c] = decode(c)/s in the output's numerics (see hif8.cpp):
// bf16-rounded when the input or the output is bf16. Unscaled (kScaled false): x + 0 instead
// of x·s (only canonicalizes NaN), val[c] = decode(c). BF16 input with scaling: x·s is
// rounded to bf16 first.
// Register caps: 32 (8 blocks of 256 threads per SM, full occupancy) with direct stores; 64
// (4 blocks) for the stochastic kernels (uncapped the bf16 → bf16 one takes 75 and gets 3) and
// with bulk stores (41 KB of shared memory per block allows 5 blocks anyway).
template <typename TI, typename TO, bool kScaled, bool kSR, bool kBulk>
__global__ void __launch_bounds__(kThreads, kSR || kBulk ? 4 : 8)
    quantize_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n, bool vec,
                    const uint8_t* __restrict__ g_lut, const float* __restrict__ d_amax,
                    float max_target, float* __restrict__ d_scale_out, uint64_t seed,
                    uint64_t offset) {
  constexpr bool kInBF16 = sizeof(TI) == 2;
  constexpr bool kOutBF16 = sizeof(TO) == 2;
  __shared__ __align__(16) uint8_t lut[detail::kHiF8LutSize];
  __shared__ uint32_t val[256];
  __shared__ detail::SrEntry sr[kSR ? 256 : 1];
  float s = 1.0f;
  auto prologue = [&] {  // after the first loads are issued (or before the scalar loop)
    if constexpr (kScaled) {
      s = device_scale_for(*d_amax, max_target, kInBF16);
      if (d_scale_out && blockIdx.x == 0 && threadIdx.x == 0) *d_scale_out = s;
    }
    copy_code_lut(lut, g_lut);
    const int c = threadIdx.x;  // blockDim.x == 256
    float v = detail::hif8_decode(uint8_t(c));
    if (kScaled) v = __fdiv_rn(v, s);
    if (kScaled && (kInBF16 || kOutBF16)) v = round_bf16_dev(v);
    val[c] = __float_as_uint(v);
    if (kSR) sr[c] = detail::hif8_sr_entry(c);
    __syncthreads();
  };
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  auto scaled = [&](float xv) {
    float xs = scale_canon<kScaled>(xv, s);
    if (kScaled && kInBF16) xs = round_bf16_dev(xs);
    return xs;
  };
  auto one = [&](float xs, uint32_t r) -> uint32_t {
    uint32_t k;
    if constexpr (kSR) k = detail::hif8_sr_index(xs, r, sr);
    else k = detail::hif8_lut_index(xs);
    return val[lut[k]];
  };
  constexpr int G = WarpStream<TI, TO>::G;
  auto convert = [&](const auto& in, int64_t first, auto& o) {
    uint32_t W[G];
    if (kSR) philox_words<G>(k0, k1, offset + uint64_t(first), W);
    float xs[G];
    chunk_scaled<kScaled, kScaled && kInBF16, G>(in, s, xs, TI{});
    uint32_t v[G];
#pragma unroll
    for (int j = 0; j < G; ++j) v[j] = one(xs[j], kSR ? W[j] : 0u);
    chunk_set<G>(o, v, TO{});
  };
  constexpr int kStage = kBulk ? BulkStream<TI, TO>::kStageBytes : 16;
  __shared__ __align__(128) uint8_t stage[kThreads / 32][kStage];
  int64_t done = 0;
  if (vec && kBulk) done = warp_stream_bulk<TI, TO>(x, out, n, stage[threadIdx.x >> 5], convert, prologue);
  else if (vec) done = warp_stream<TI, TO>(x, out, n, convert, prologue);
  else prologue();
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = done + tid; i < n; i += stride) {
    const uint32_t r = kSR ? detail::philox_word(seed, offset + uint64_t(i)) : 0u;
    put_bits(out, i, one(scaled(elem_f(x, i)), r));
  }
}

template <typename F>
void with_in_out(DType ti, DType to, F&& f) {
  if (ti == DType::F32 && to == DType::F32) f(float{}, float{});
  else if (ti == DType::F32) f(float{}, __nv_bfloat16{});
  else if (to == DType::F32) f(__nv_bfloat16{}, float{});
  else f(__nv_bfloat16{}, __nv_bfloat16{});
}

// Walk::kDefault of the wide-output ops (decode, round, fake quant; fp8_dequantize too): bulk
// stores — in the same H200 run 0.82–0.83 of HBM peak where the interleaved walk's direct
// stores gave 0.79–0.82. The stochastic kernels (no shape argument) keep the interleaved
// walk: they were not measured with bulk stores, and the bf16 one is bound by its Philox
// arithmetic.

template <typename TI, typename TO, bool kScaled>
void launch_quantize(const Tensor& x, Tensor& out, bool stochastic, bool saturate,
                     const float* d_amax, float max_target, float* d_scale_out, uint64_t seed,
                     uint64_t offset, StreamShape shape) {
  const int64_t n = x.numel();
  const TI* xp = static_cast<const TI*>(x.raw());
  TO* op = static_cast<TO*>(out.raw());
  const bool vec = aligned16_host(xp) && aligned16_host(op);
  const uint8_t* lut = hif8_code_lut_device(saturate);
  auto go = [&](auto kernel, int64_t items) {
    kernel<<<stream_blocks(reinterpret_cast<const void*>(kernel), items, resolve_grid(shape.grid)),
             kThreads, 0, current_stream()>>>(xp, op, n, vec, lut, d_amax, max_target, d_scale_out, seed, offset);
  };
  OSP_CHECK(shape.walk != Walk::kTile, "hif8 round / fake quant: the walk is interleaved or bulk store");
  const bool bulk = !stochastic && shape.walk != Walk::kInterleaved;
  const int64_t items = bulk ? bulk_stream_items<TI, TO>(n, vec) : warp_stream_items<TI, TO>(n, vec);
  if (stochastic) go(quantize_kernel<TI, TO, kScaled, true, false>, items);
  else if (bulk) go(quantize_kernel<TI, TO, kScaled, false, true>, items);
  else go(quantize_kernel<TI, TO, kScaled, false, false>, items);
}

template <typename TO>
void launch_decode(const uint8_t* c, TO* out, int64_t n, Grid grid, bool bulk) {
  const bool vec = aligned16_host(c) && aligned16_host(out);
  void (*kernel)(const uint8_t*, TO*, int64_t, bool) =
      bulk ? hif8_decode_kernel<TO, true> : hif8_decode_kernel<TO, false>;
  const int64_t items = bulk ? bulk_stream_items<uint8_t, TO>(n, vec)
                             : warp_stream_items<uint8_t, TO>(n, vec);
  kernel<<<stream_blocks(reinterpret_cast<const void*>(kernel), items, grid), kThreads, 0, current_stream()>>>(c, out, n,
                                                                                        vec);
}

// f32 → f32 identity through a walk (stream_copy, the bench's diagnostic): 0 tile, 1
// interleaved, 2 bulk stores.
template <int kWalk>
__global__ void __launch_bounds__(kThreads)
    copy_walk_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t n, bool vec) {
  constexpr int kStage = kWalk == 2 ? BulkStream<float, float>::kStageBytes : 16;
  __shared__ __align__(128) uint8_t stage[kThreads / 32][kStage];
  auto id = [&](const auto& in, int64_t, auto& o) {
#pragma unroll
    for (int j = 0; j < 4; ++j) o.w[j] = in.w[j];
  };
  int64_t done = 0;
  if (vec && kWalk == 2)
    done = warp_stream_bulk<float, float>(x, out, n, stage[threadIdx.x >> 5], id, [] {});
  else if (vec && kWalk == 1)
    done = warp_stream<float, float>(x, out, n, id);
  else if (vec)
    done = tile_stream<float>(x, n, [&](const Tile<float>& in, int64_t t) { store_tile(out, t, in); });
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = done + tid; i < n; i += stride) out[i] = x[i];
}

}  // namespace

void stream_copy(const Tensor& x, Tensor& out, StreamShape shape) {
  OSP_CHECK(x.dtype() == DType::F32 && out.dtype() == DType::F32 && x.is_contiguous() &&
                out.is_contiguous() && x.device().is_cuda() && out.device() == x.device() &&
                x.numel() == out.numel(),
            "stream_copy: x and out must be contiguous f32 CUDA tensors of one size, got ",
            x.desc(), " and ", out.desc());
  const int64_t n = x.numel();
  if (n == 0) return;
  const float* p = x.data<float>();
  float* o = out.data<float>();
  const bool vec = aligned16_host(p) && aligned16_host(o);
  const Grid grid = resolve_grid(shape.grid);
  auto go = [&](auto kernel, int64_t items) {
    kernel<<<stream_blocks(reinterpret_cast<const void*>(kernel), items, grid), kThreads, 0, current_stream()>>>(p, o, n,
                                                                                          vec);
  };
  if (shape.walk == Walk::kBulkStore) go(copy_walk_kernel<2>, bulk_stream_items<float, float>(n, vec));
  else if (shape.walk == Walk::kInterleaved) go(copy_walk_kernel<1>, warp_stream_items<float, float>(n, vec));
  else go(copy_walk_kernel<0>, tile_stream_items<float>(n, vec));
  OSP_CUDA_LAUNCH_CHECK("hif8 copy_walk_kernel");
}

const uint8_t* hif8_code_lut_device(bool saturate) {
  static std::mutex mu;
  static uint8_t* luts[64] = {};
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  OSP_CHECK(dev >= 0 && dev < 64, "hif8 CUDA kernels: device index ", dev, " out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (!luts[dev]) {
    uint8_t* p = nullptr;
    // 24 KB for the life of the process (never freed: kernels may use it until exit)
    OSP_CUDA_CHECK(cudaMalloc(&p, kLuts * detail::kHiF8LutSize));
    build_code_luts_kernel<<<(kLuts * detail::kHiF8LutSize + 255) / 256, 256, 0, current_stream()>>>(p);
    OSP_CUDA_LAUNCH_CHECK("hif8 build_code_luts_kernel");
    luts[dev] = p;
  }
  return luts[dev] + (saturate ? detail::kHiF8LutSize : 0);
}

const uint8_t* hif8_e4m3_lut_device() {
  return hif8_code_lut_device(false) + 2 * detail::kHiF8LutSize;
}

unsigned stream_blocks(const void* kernel, int64_t items, Grid g) {
  int64_t b = (items + kStreamThreads - 1) / kStreamThreads;
  if (b < 1) b = 1;
  if (g != Grid::kPersistent) return unsigned(b);
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> per_sm;
  int blocks_per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = per_sm.find({kernel, dev});
    if (it == per_sm.end()) {
      OSP_CUDA_CHECK(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kStreamThreads, 0));
      if (blocks_per_sm < 1) blocks_per_sm = 1;
      per_sm.emplace(std::make_pair(kernel, dev), blocks_per_sm);
    } else {
      blocks_per_sm = it->second;
    }
  }
  const int64_t cap = int64_t(cuda_sm_count(dev)) * blocks_per_sm;
  return unsigned(b < cap ? b : cap);
}

void launch_code_kernel(const Tensor& x, uint8_t* out, const uint8_t* lut, const float* d_amax,
                        float max_target, float* d_scale_inv, StreamShape shape) {
  const int64_t n = x.numel();
  const bool scaled = d_amax != nullptr;
  if (n == 0 && !scaled) return;
  // production: the tile walk for both dtypes (docs/PERF.md: bf16 0.87 vs 0.80 of HBM peak
  // for the interleaved walk, f32 within 0.01 of it)
  const bool interleaved = shape.walk == Walk::kInterleaved;
  OSP_CHECK(shape.walk != Walk::kBulkStore, "hif8 encode / E4M3 quantize: the walk is tile or interleaved");
  const Grid grid = resolve_grid(shape.grid);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(x.raw());
    const bool vec = aligned16_host(p) && aligned16_host(out);
    auto go = [&](auto kernel, int64_t items) {
      kernel<<<stream_blocks(reinterpret_cast<const void*>(kernel), items, grid), kThreads, 0, current_stream()>>>(
          p, out, n, vec, lut, d_amax, max_target, d_scale_inv);
    };
    auto pick = [&](auto scaled_tag) {
      constexpr bool S = decltype(scaled_tag)::value;
      if (interleaved) go(code_kernel<T, S, true>, warp_stream_items<T, uint8_t>(n, vec));
      else go(code_kernel<T, S, false>, tile_stream_items<T>(n, vec));
    };
    if (scaled) pick(std::true_type{});
    else pick(std::false_type{});
  };
  if (x.dtype() == DType::BF16) run(__nv_bfloat16{});
  else run(float{});
  OSP_CUDA_LAUNCH_CHECK("hif8 code_kernel");
}

void hif8_encode(const Tensor& x, Tensor& out, bool saturate, StreamShape shape) {
  launch_code_kernel(x, out.data<uint8_t>(), hif8_code_lut_device(saturate), nullptr, 0.0f,
                     nullptr, shape);
}

void hif8_decode(const Tensor& codes, Tensor& out, StreamShape shape) {
  const int64_t n = codes.numel();
  if (n == 0) return;
  const uint8_t* c = codes.data<uint8_t>();
  OSP_CHECK(shape.walk != Walk::kTile, "hif8_decode: the walk is interleaved or bulk store");
  const Grid grid = resolve_grid(shape.grid);
  const bool bulk = shape.walk != Walk::kInterleaved;
  if (out.dtype() == DType::F32) launch_decode(c, static_cast<float*>(out.raw()), n, grid, bulk);
  else launch_decode(c, static_cast<__nv_bfloat16*>(out.raw()), n, grid, bulk);
  OSP_CUDA_LAUNCH_CHECK("hif8 hif8_decode_kernel");
}

void hif8_round(const Tensor& x, Tensor& out, bool saturate, StreamShape shape) {
  if (x.numel() == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), false>(x, out, false, saturate, nullptr, 0.0f,
                                                       nullptr, 0, 0, shape);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (round)");
}

void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                           bool saturate) {
  if (x.numel() == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), false>(x, out, true, saturate, nullptr, 0.0f,
                                                       nullptr, seed, offset, StreamShape{});
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (stochastic round)");
}

void amax_to_device(const Tensor& x, float* d_amax) {
  const int64_t n = x.numel();
  OSP_CUDA_CHECK(cudaMemsetAsync(d_amax, 0, sizeof(float), current_stream()));
  if (n == 0) return;
  const bool vec = aligned16_host(x.raw());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const void* k = reinterpret_cast<const void*>(amax_kernel<T>);
    amax_kernel<T><<<persistent_grid(k, tile_stream_items<T>(n, vec)), kThreads, 0, current_stream()>>>(
        static_cast<const T*>(x.raw()), n, vec, d_amax);
  };
  if (x.dtype() == DType::F32) run(float{});
  else run(__nv_bfloat16{});
  OSP_CUDA_LAUNCH_CHECK("hif8 amax_kernel");
}

float amax(const Tensor& x) {
  Tensor d = Tensor::empty({1}, DType::F32, x.device());
  amax_to_device(x, d.data<float>());
  float h = 0;
  OSP_CUDA_CHECK(cudaMemcpy(&h, d.raw(), sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

namespace {
void fake_quant_launch(const Tensor& x, Tensor& out, float max_target, float* d_scale_out,
                       bool stochastic, uint64_t seed, uint64_t offset, StreamShape shape) {
  Tensor d = Tensor::empty({1}, DType::F32, x.device());
  amax_to_device(x, d.data<float>());
  // n = 0 still launches one block: it writes the scale of amax 0 to d_scale_out
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), true>(x, out, stochastic, false, d.data<float>(),
                                                      max_target, d_scale_out, seed, offset,
                                                      shape);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (fake quant)");
}
}  // namespace

void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target, float* d_scale_out,
                     StreamShape shape) {
  fake_quant_launch(x, out, max_target, d_scale_out, false, 0, 0, shape);
}

void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, float max_target, uint64_t seed,
                                uint64_t offset) {
  fake_quant_launch(x, out, max_target, nullptr, true, seed, offset, StreamShape{});
}

}  // namespace osp::quant::cuda
