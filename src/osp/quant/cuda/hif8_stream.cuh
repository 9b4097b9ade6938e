// Streaming building blocks of the bandwidth-bound HiF8 / E4M3 kernels (hif8_kernels.cu,
// fp8_linear.cu): 16-element tiles moved with 16-byte accesses, the global HiF8 prefix table
// (hif8_lut.h) and persistent grids sized from the kernel's occupancy.
//
// Shape of every streaming kernel: a persistent grid (SMs × resident blocks) walks the tiles
// with a grid stride; each thread issues the loads of kUnroll tiles (≈ 64 bytes) before it
// uses any of them, so enough bytes are in flight to cover the memory latency; the < 16
// leftover elements (and the whole tensor when a pointer is not 16-byte aligned, e.g. an
// offset view) go through a scalar grid-stride loop with the same per-element code.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "osp/quant/cuda/hif8_lut.h"

namespace osp::quant::cuda {

constexpr int kStreamThreads = 256;
constexpr int kTile = 16;  // elements per tile

// The 8192-entry TA code table (hif8_lut.h) of one saturation mode, in device memory: built
// once per device by a kernel on the legacy stream (stream-ordered, no host sync) and kept for
// the life of the process (16 KB).
const uint8_t* hif8_code_lut_device(bool saturate);

// Blocks for a persistent launch of `kernel` (kStreamThreads threads, static shared memory
// only): enough to give every thread one of `items` work items, at most what the GPU keeps
// resident at once (SMs × the kernel's occupancy, cached per kernel and device).
unsigned persistent_grid(const void* kernel, int64_t items);

// ---- tiles: 16 elements as whole 16-byte words ----
template <typename T>
struct Tile {
  static constexpr int kVecs = kTile * int(sizeof(T)) / 16;  // 4 f32, 2 bf16, 1 u8
  union {
    uint4 q[kVecs];
    uint32_t w[kVecs * 4];
  };
};

// Tiles in flight per thread: ≈ 64 bytes of loads.
template <typename T>
constexpr int kUnroll = 64 / (kTile * int(sizeof(T)));

template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ p, int64_t t, Tile<T>& r) {
  const uint4* s = reinterpret_cast<const uint4*>(p) + t * Tile<T>::kVecs;
#pragma unroll
  for (int k = 0; k < Tile<T>::kVecs; ++k) r.q[k] = __ldcs(s + k);  // streamed: read once
}
template <typename T>
__device__ __forceinline__ void store_tile(T* __restrict__ p, int64_t t, const Tile<T>& r) {
  uint4* d = reinterpret_cast<uint4*>(p) + t * Tile<T>::kVecs;
#pragma unroll
  for (int k = 0; k < Tile<T>::kVecs; ++k) __stcs(d + k, r.q[k]);
}

// Element k of an f32 / bf16 tile as a float (bf16: the pattern shifted into the high half).
__device__ __forceinline__ float tile_elem(const Tile<float>& r, int k) {
  return __uint_as_float(r.w[k]);
}
__device__ __forceinline__ float tile_elem(const Tile<__nv_bfloat16>& r, int k) {
  const uint32_t w = r.w[k >> 1];
  return __uint_as_float((k & 1) ? (w & 0xffff0000u) : (w << 16));
}

// x·s for kScaled, else x + 0 (never x·1: a compiler may fold that to x), so that every NaN
// is the canonical NaN that the HiF8 prefix table needs (hif8_lut.h).
template <bool kScaled>
__device__ __forceinline__ float scale_canon(float x, float s) {
  return kScaled ? x * s : __fadd_rn(x, 0.0f);
}

// The 16 elements of a tile through scale_canon. kRoundBf16: the products rounded to bf16
// (round to nearest even, as the CPU's round_bf16), two per packed conversion.
template <bool kScaled, bool kRoundBf16>
__device__ __forceinline__ void tile_scaled(const Tile<float>& r, float s, float xs[kTile]) {
#pragma unroll
  for (int k = 0; k < kTile; ++k) {
    xs[k] = scale_canon<kScaled>(__uint_as_float(r.w[k]), s);
    if (kRoundBf16) xs[k] = __bfloat162float(__float2bfloat16_rn(xs[k]));
  }
}
template <bool kScaled, bool kRoundBf16>
__device__ __forceinline__ void tile_scaled(const Tile<__nv_bfloat16>& r, float s,
                                            float xs[kTile]) {
#pragma unroll
  for (int j = 0; j < kTile / 2; ++j) {
    const uint32_t w = r.w[j];
    const float a = scale_canon<kScaled>(__uint_as_float(w << 16), s);
    const float b = scale_canon<kScaled>(__uint_as_float(w & 0xffff0000u), s);
    if (kRoundBf16) {
      const __nv_bfloat162 p = __floats2bfloat162_rn(a, b);  // .x = a (low half)
      const uint32_t q = (uint32_t(__bfloat16_as_ushort(p.y)) << 16) | __bfloat16_as_ushort(p.x);
      xs[2 * j] = __uint_as_float(q << 16);
      xs[2 * j + 1] = __uint_as_float(q & 0xffff0000u);
    } else {
      xs[2 * j] = a;
      xs[2 * j + 1] = b;
    }
  }
}

// Writes 16 float bit patterns into an f32 tile, or (already bf16-exact, or to be truncated:
// the caller rounds first) into a bf16 tile by taking the high halves.
__device__ __forceinline__ void tile_set(Tile<float>& r, const uint32_t v[kTile]) {
#pragma unroll
  for (int k = 0; k < kTile; ++k) r.w[k] = v[k];
}
__device__ __forceinline__ void tile_set(Tile<__nv_bfloat16>& r, const uint32_t v[kTile]) {
#pragma unroll
  for (int k = 0; k < kTile / 2; ++k) r.w[k] = __byte_perm(v[2 * k], v[2 * k + 1], 0x7632);
}

// Packs 16 byte values (each < 256) into a u8 tile.
__device__ __forceinline__ void tile_set_bytes(Tile<uint8_t>& r, const uint32_t c[kTile]) {
#pragma unroll
  for (int k = 0; k < 4; ++k)
    r.w[k] = c[4 * k] | (c[4 * k + 1] << 8) | (c[4 * k + 2] << 16) | (c[4 * k + 3] << 24);
}

// Scalar element access for the tails.
__device__ __forceinline__ float elem_f(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float elem_f(const __nv_bfloat16* p, int64_t i) {
  return __uint_as_float(uint32_t(__bfloat16_as_ushort(p[i])) << 16);
}
// Stores a float bit pattern (bf16: high half, the caller rounds first).
__device__ __forceinline__ void put_bits(float* p, int64_t i, uint32_t v) {
  p[i] = __uint_as_float(v);
}
__device__ __forceinline__ void put_bits(__nv_bfloat16* p, int64_t i, uint32_t v) {
  p[i] = __ushort_as_bfloat16(uint16_t(v >> 16));
}

// f32 → bf16 (round to nearest even) → f32 bit pattern, as the CPU's round_bf16.
__device__ __forceinline__ float round_bf16_dev(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

// Copies a 8192-byte table into shared memory (16-byte accesses, all threads of the block).
// The caller synchronizes.
__device__ __forceinline__ void copy_code_lut(uint8_t* __restrict__ s, const uint8_t* __restrict__ g) {
  const uint4* src = reinterpret_cast<const uint4*>(g);
  uint4* dst = reinterpret_cast<uint4*>(s);
  for (int i = threadIdx.x; i < detail::kHiF8LutSize / 16; i += blockDim.x) dst[i] = __ldg(src + i);
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}
inline bool aligned16_host(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace osp::quant::cuda
