// CUDA HiF8 kernels: encode, decode, TA/stochastic quant-dequant, amax, scaled fake quant.
// All kernels run on the legacy default stream, like the rest of osp.
//
// Every kernel is memory-bound by design (hif8_stream.cuh): persistent grid, 16-element tiles
// with 16-byte loads and stores, ≈ 64 bytes of loads in flight per thread, and a per-element
// cost of a handful of instructions:
//   encode   x (+0) → 13-bit prefix → code table in shared memory (hif8_lut.h)
//   decode   code → 256-entry value table in shared memory
//   round    x·s (→ bf16 for bf16 input) → prefix → code → value table (decode(c)/s, rounded
//            to the output's precision once per block)
//   hybrid   the same with the magnitude first rounded stochastically on the HiF8 grid by
//            integer arithmetic; one Philox4x32-10 call gives the words of 4 elements
// The tables are built from the reference scalar codec (hif8_scalar.h), and
// tests/quant/hif8_lut_test.cpp checks the table path against it on the CPU, so the results
// are bitwise those of the CPU implementation.
#include <cuda_bf16.h>

#include <atomic>
#include <map>
#include <mutex>
#include <utility>

#include "osp/core/cuda_check.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_device.cuh"
#include "osp/quant/cuda/hif8_lut.h"
#include "osp/quant/cuda/hif8_stream.cuh"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_scalar.h"
#include "osp/quant/philox.h"

namespace osp::quant::cuda {
namespace {

constexpr int kThreads = kStreamThreads;

int device_sms(int dev) {
  static std::atomic<int> sms[64] = {};
  int nsm = dev >= 0 && dev < 64 ? sms[dev].load(std::memory_order_relaxed) : 0;
  if (nsm <= 0) {
    OSP_CUDA_CHECK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    if (nsm <= 0) nsm = 1;
    if (dev >= 0 && dev < 64) sms[dev].store(nsm, std::memory_order_relaxed);
  }
  return nsm;
}

// ---- the global prefix → code table (both saturation modes) ----
__global__ void build_code_lut_kernel(uint8_t* __restrict__ lut) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < 2 * detail::kHiF8LutSize)
    lut[i] = detail::hif8_lut_entry(uint32_t(i) & uint32_t(detail::kHiF8LutSize - 1),
                                    i >= detail::kHiF8LutSize);
}

// ---- encode: x → code ----
template <typename TI>
__device__ __forceinline__ uint32_t encode_one(float v, const uint8_t* lut) {
  return lut[detail::hif8_lut_index(__fadd_rn(v, 0.0f))];  // +0: NaN canonical, −0 → +0
}

// kInterleaved: the warp-interleaved walk (hif8_stream.cuh: 512 contiguous input bytes per
// warp load instruction, 4- or 8-byte code stores per lane); otherwise the per-thread
// 16-element tile walk (4 or 2 16-byte loads 64 or 32 bytes apart per warp instruction, one
// 16-byte code store per lane). hif8_encode picks per input dtype (below).
template <typename TI, bool kInterleaved>
__global__ void __launch_bounds__(kThreads)
    encode_kernel(const TI* __restrict__ x, uint8_t* __restrict__ out, int64_t n, bool vec,
                  const uint8_t* __restrict__ g_lut) {
  __shared__ __align__(16) uint8_t lut[detail::kHiF8LutSize];
  copy_code_lut(lut, g_lut);
  __syncthreads();
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec && kInterleaved) {
    constexpr int G = WarpStream<TI, uint8_t>::G;
    done = warp_stream<TI, uint8_t>(x, out, n, [&](const auto& in, int64_t, auto& o) {
      uint32_t c[G];
#pragma unroll
      for (int j = 0; j < G; ++j) c[j] = encode_one<TI>(chunk_elem(in, j, TI{}), lut);
      chunk_set<G>(o, c, uint8_t{});
    });
  } else if (vec) {
    constexpr int U = kUnroll<TI>;
    const int64_t ntiles = n / kTile;
    for (int64_t t0 = tid; t0 < ntiles; t0 += U * stride) {
      Tile<TI> in[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (t0 + u * stride < ntiles) load_tile(x, t0 + u * stride, in[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (t0 + u * stride >= ntiles) break;
        uint32_t c[kTile];
#pragma unroll
        for (int k = 0; k < kTile; ++k) c[k] = encode_one<TI>(tile_elem(in[u], k), lut);
        Tile<uint8_t> o;
        tile_set_bytes(o, c);
        store_tile(out, t0 + u * stride, o);
      }
    }
    done = ntiles * kTile;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = uint8_t(encode_one<TI>(elem_f(x, i), lut));
}

// ---- decode: code → value ----
// hif8_decode_kernel (hif8_device.cuh): the warp-interleaved table lookup (every store
// instruction of a warp writes 512 contiguous bytes), one warp per span: measured on an H200
// it moves 3.8 TB/s where the 16-element-tile walk (each lane storing 64 consecutive bytes)
// managed 1.3 TB/s for f32 output (docs/PERF.md, "HiF8 codec kernels").

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
// Register caps: 32 (8 blocks of 256 threads per SM, full occupancy); the stochastic kernels
// 64 (4 blocks; uncapped the bf16 → bf16 one takes 75 and gets 3).
template <typename TI, typename TO, bool kScaled, bool kSR>
__global__ void __launch_bounds__(kThreads, kSR ? 4 : 8)
    quantize_kernel(const TI* __restrict__ x, TO* __restrict__ out, int64_t n, bool vec,
                    const uint8_t* __restrict__ g_lut, const float* __restrict__ d_amax,
                    float max_target, float* __restrict__ d_scale_out, uint64_t seed,
                    uint64_t offset) {
  constexpr bool kInBF16 = sizeof(TI) == 2;
  constexpr bool kOutBF16 = sizeof(TO) == 2;
  __shared__ __align__(16) uint8_t lut[detail::kHiF8LutSize];
  __shared__ uint32_t val[256];
  __shared__ detail::SrEntry sr[kSR ? 256 : 1];
  const float s = kScaled ? device_scale_for(*d_amax, max_target, kInBF16) : 1.0f;
  if (kScaled && d_scale_out && blockIdx.x == 0 && threadIdx.x == 0) *d_scale_out = s;
  copy_code_lut(lut, g_lut);
  {
    const int c = threadIdx.x;  // blockDim.x == 256
    float v = detail::hif8_decode(uint8_t(c));
    if (kScaled) v = __fdiv_rn(v, s);
    if (kScaled && (kInBF16 || kOutBF16)) v = round_bf16_dev(v);
    val[c] = __float_as_uint(v);
    if (kSR) sr[c] = detail::hif8_sr_entry(c);
  }
  __syncthreads();
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
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    constexpr int G = WarpStream<TI, TO>::G;
    done = warp_stream<TI, TO>(x, out, n, [&](const auto& in, int64_t first, auto& o) {
      uint32_t W[G];
      if (kSR) philox_words<G>(k0, k1, offset + uint64_t(first), W);
      float xs[G];
      chunk_scaled<kScaled, kScaled && kInBF16, G>(in, s, xs, TI{});
      uint32_t v[G];
#pragma unroll
      for (int j = 0; j < G; ++j) v[j] = one(xs[j], kSR ? W[j] : 0u);
      chunk_set<G>(o, v, TO{});
    });
  }
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

// Work items of a streaming launch: tile groups when vectorized, elements otherwise.
template <typename T>
int64_t stream_items(int64_t n, bool vec) {
  return vec ? (n / kTile + kUnroll<T> - 1) / kUnroll<T> + 1 : n;
}

// full_grid: one warp per span (as hif8_decode) instead of the persistent grid; only
// hif8_round_grid (bench_hif8_gpu's comparison) asks for it so far.
template <typename TI, typename TO, bool kScaled>
void launch_quantize(const Tensor& x, Tensor& out, bool stochastic, bool saturate,
                     const float* d_amax, float max_target, float* d_scale_out, uint64_t seed,
                     uint64_t offset, bool full_grid = false) {
  const int64_t n = x.numel();
  const TI* xp = static_cast<const TI*>(x.raw());
  TO* op = static_cast<TO*>(out.raw());
  const bool vec = aligned16_host(xp) && aligned16_host(op);
  const uint8_t* lut = hif8_code_lut_device(saturate);
  const int64_t items = warp_stream_items<TI, TO>(n, vec);
  auto go = [&](auto kernel) {
    const unsigned blocks =
        full_grid && vec ? unsigned((items + kThreads - 1) / kThreads)
                         : persistent_grid(reinterpret_cast<const void*>(kernel), items);
    kernel<<<blocks, kThreads>>>(xp, op, n, vec, lut, d_amax, max_target, d_scale_out, seed,
                                 offset);
  };
  if (stochastic) go(quantize_kernel<TI, TO, kScaled, true>);
  else go(quantize_kernel<TI, TO, kScaled, false>);
}

}  // namespace

const uint8_t* hif8_code_lut_device(bool saturate) {
  static std::mutex mu;
  static uint8_t* luts[64] = {};
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  OSP_CHECK(dev >= 0 && dev < 64, "hif8 CUDA kernels: device index ", dev, " out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (!luts[dev]) {
    uint8_t* p = nullptr;
    // 16 KB for the life of the process (never freed: kernels may use it until exit)
    OSP_CUDA_CHECK(cudaMalloc(&p, 2 * detail::kHiF8LutSize));
    build_code_lut_kernel<<<(2 * detail::kHiF8LutSize + 255) / 256, 256>>>(p);
    OSP_CUDA_LAUNCH_CHECK("hif8 build_code_lut_kernel");
    luts[dev] = p;
  }
  return luts[dev] + (saturate ? detail::kHiF8LutSize : 0);
}

unsigned persistent_grid(const void* kernel, int64_t items) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> per_sm;
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
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
  int64_t b = (items + kStreamThreads - 1) / kStreamThreads;
  const int64_t cap = int64_t(device_sms(dev)) * blocks_per_sm;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return unsigned(b);
}

unsigned stream_grid(int64_t items, int threads) {
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  int64_t b = (items + threads - 1) / threads;
  const int64_t cap = int64_t(device_sms(dev)) * 8;
  if (b > cap) b = cap;
  if (b < 1) b = 1;
  return unsigned(b);
}

namespace {
template <bool kInterleaved>
void launch_encode(const Tensor& x, Tensor& out, bool saturate) {
  const int64_t n = x.numel();
  if (n == 0) return;
  uint8_t* o = out.data<uint8_t>();
  const uint8_t* lut = hif8_code_lut_device(saturate);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(x.raw());
    const bool vec = aligned16_host(p) && aligned16_host(o);
    const void* k = reinterpret_cast<const void*>(encode_kernel<T, kInterleaved>);
    const int64_t items =
        kInterleaved ? warp_stream_items<T, uint8_t>(n, vec) : stream_items<T>(n, vec);
    encode_kernel<T, kInterleaved><<<persistent_grid(k, items), kThreads>>>(p, o, n, vec, lut);
  };
  if (x.dtype() == DType::F32) run(float{});
  else run(__nv_bfloat16{});
  OSP_CUDA_LAUNCH_CHECK("hif8 encode_kernel");
}
}  // namespace

// f32: the tile walk (16-byte code stores), bf16: the interleaved walk — the faster of the
// two for each in the same H200 run (f32 0.84 vs 0.80 of HBM peak, bf16 0.78 vs 0.77;
// docs/PERF.md, "HiF8 codec kernels").
void hif8_encode(const Tensor& x, Tensor& out, bool saturate) {
  if (x.dtype() == DType::F32) launch_encode<false>(x, out, saturate);
  else launch_encode<true>(x, out, saturate);
}

void hif8_encode_walk(const Tensor& x, Tensor& out, bool saturate, EncodeWalk walk) {
  OSP_CHECK((x.dtype() == DType::F32 || x.dtype() == DType::BF16) && x.device().is_cuda() &&
                x.is_contiguous(),
            "hif8_encode_walk: x must be a contiguous f32/bf16 CUDA tensor, got ", x.desc());
  OSP_CHECK((out.dtype() == DType::U8 || out.dtype() == DType::HiF8) && out.is_contiguous() &&
                out.device() == x.device() && out.numel() == x.numel(),
            "hif8_encode_walk: out must be a contiguous u8/hif8 tensor of x's size on x's "
            "device, got ", out.desc());
  if (walk == EncodeWalk::kTile) launch_encode<false>(x, out, saturate);
  else launch_encode<true>(x, out, saturate);
}

void hif8_decode(const Tensor& codes, Tensor& out) {
  const int64_t n = codes.numel();
  if (n == 0) return;
  const uint8_t* c = codes.data<uint8_t>();
  if (out.dtype() == DType::F32) launch_hif8_decode(c, static_cast<float*>(out.raw()), n, true);
  else launch_hif8_decode(c, static_cast<__nv_bfloat16*>(out.raw()), n, true);
  OSP_CUDA_LAUNCH_CHECK("hif8 hif8_decode_kernel");
}

void hif8_round(const Tensor& x, Tensor& out, bool saturate) {
  if (x.numel() == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), false>(x, out, false, saturate, nullptr, 0.0f,
                                                       nullptr, 0, 0);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (round)");
}

void hif8_round_grid(const Tensor& x, Tensor& out, bool saturate, bool one_warp_per_span) {
  auto ok_dt = [](DType d) { return d == DType::F32 || d == DType::BF16; };
  OSP_CHECK(ok_dt(x.dtype()) && x.device().is_cuda() && x.is_contiguous(),
            "hif8_round_grid: x must be a contiguous f32/bf16 CUDA tensor, got ", x.desc());
  OSP_CHECK(ok_dt(out.dtype()) && out.is_contiguous() && out.device() == x.device() &&
                out.numel() == x.numel(),
            "hif8_round_grid: out must be a contiguous f32/bf16 tensor of x's size on x's device, "
            "got ", out.desc());
  if (x.numel() == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), false>(x, out, false, saturate, nullptr, 0.0f,
                                                       nullptr, 0, 0, one_warp_per_span);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (round, grid variant)");
}

void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                           bool saturate) {
  if (x.numel() == 0) return;
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), false>(x, out, true, saturate, nullptr, 0.0f,
                                                       nullptr, seed, offset);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (stochastic round)");
}

void amax_to_device(const Tensor& x, float* d_amax) {
  const int64_t n = x.numel();
  OSP_CUDA_CHECK(cudaMemsetAsync(d_amax, 0, sizeof(float), 0));
  if (n == 0) return;
  const bool vec = aligned16_host(x.raw());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const void* k = reinterpret_cast<const void*>(amax_kernel<T>);
    amax_kernel<T><<<persistent_grid(k, stream_items<T>(n, vec)), kThreads>>>(
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
                       bool stochastic, uint64_t seed, uint64_t offset) {
  Tensor d = Tensor::empty({1}, DType::F32, x.device());
  amax_to_device(x, d.data<float>());
  // n = 0 still launches one block: it writes the scale of amax 0 to d_scale_out
  with_in_out(x.dtype(), out.dtype(), [&](auto ti, auto to) {
    launch_quantize<decltype(ti), decltype(to), true>(x, out, stochastic, false, d.data<float>(),
                                                      max_target, d_scale_out, seed, offset);
  });
  OSP_CUDA_LAUNCH_CHECK("hif8 quantize_kernel (fake quant)");
}
}  // namespace

void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target, float* d_scale_out) {
  fake_quant_launch(x, out, max_target, d_scale_out, false, 0, 0);
}

void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, float max_target, uint64_t seed,
                                uint64_t offset) {
  fake_quant_launch(x, out, max_target, nullptr, true, seed, offset);
}

}  // namespace osp::quant::cuda
