// Streaming building blocks of the bandwidth-bound HiF8 / E4M3 kernels (hif8_kernels.cu,
// fp8_linear.cu): grid sizing, the walks of a tensor, and the shared-memory copy of the
// global prefix table (hif8_lut.h):
//   tile_stream       each thread takes 16-element tiles (16-byte loads) with a grid stride and
//                     issues the loads of kUnroll tiles (≈ 64 bytes) before it uses any of
//                     them, so enough bytes are in flight to cover the memory latency (amax;
//                     the encode and E4M3 quantize, whose 16 codes per tile are one 16-byte
//                     store);
//   warp_stream       warp-interleaved chunks: every warp load and store instruction covers
//                     128–512 contiguous bytes;
//   warp_stream_bulk  the same loads, each warp's output staged in shared memory and written
//                     with one bulk copy (the ops whose output is as wide as their input or
//                     wider: decode, round, fake quant, dequantize).
// The < 16 (or < one span) leftover elements, and the whole tensor when a pointer is not
// 16-byte aligned (e.g. an offset view), go through a scalar grid-stride loop with the same
// per-element code. Grid sizes: stream_blocks (one warp per span, or the persistent grid).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_lut.h"

namespace osp::quant::cuda {

constexpr int kStreamThreads = 256;
constexpr int kTile = 16;  // elements per tile

// Blocks of kStreamThreads threads for `items` thread work items of `kernel` (static shared
// memory only): kFull (and kDefault), one block per 256 items; kPersistent, at most what the
// GPU keeps resident at once (SMs × the kernel's occupancy, cached per kernel and device).
unsigned stream_blocks(const void* kernel, int64_t items, Grid g);
// Grid::kDefault is one warp per span / one thread per tile group for every op — in one H200
// run it was the fastest grid for every op and dtype (docs/PERF.md, "HiF8 codec kernels").
inline Grid resolve_grid(Grid g) { return g == Grid::kDefault ? Grid::kFull : g; }
inline unsigned persistent_grid(const void* kernel, int64_t items) {
  return stream_blocks(kernel, items, Grid::kPersistent);
}

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

// Thread work items of a tile_stream walk with U tiles per round (vec), or of the scalar
// loop alone (not vec): what stream_blocks is given.
template <typename T, int U = kUnroll<T>>
inline int64_t tile_stream_items(int64_t n, bool vec) {
  return vec ? (n / kTile + U - 1) / U + 1 : n;
}

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

// Walks the whole tiles of x[0, n) (16-byte aligned) with the grid's threads: each round a
// thread loads U tiles `stride` apart, then calls f(tile, tile_index) on each. prologue() is
// called once by every thread after its first loads are issued, so a block's set-up (table
// fill, __syncthreads) overlaps their latency. Returns the number of elements done (a
// multiple of 16); the caller finishes the rest with its scalar loop. Every thread of the
// grid must call it (no early exit).
template <typename TI, int U = kUnroll<TI>, typename F, typename P>
__device__ __forceinline__ int64_t tile_stream(const TI* __restrict__ x, int64_t n, F&& f,
                                               P&& prologue) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t ntiles = n / kTile;
  int64_t t0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  Tile<TI> in[U];
  auto load = [&] {
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (t0 + u * stride < ntiles) load_tile(x, t0 + u * stride, in[u]);
  };
  if (t0 < ntiles) load();
  prologue();
  while (t0 < ntiles) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (t0 + u * stride >= ntiles) break;
      f(in[u], t0 + u * stride);
    }
    t0 += U * stride;
    if (t0 < ntiles) load();
  }
  return ntiles * kTile;
}
template <typename TI, int U = kUnroll<TI>, typename F>
__device__ __forceinline__ int64_t tile_stream(const TI* __restrict__ x, int64_t n, F&& f) {
  return tile_stream<TI, U>(x, n, f, [] {});
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

// N elements held as f32 / bf16 words (N words, or N/2 words of two bf16 each, low half first)
// through scale_canon. kRoundBf16: the products rounded to bf16 (round to nearest even, as the
// CPU's round_bf16), two per packed conversion for bf16 input.
template <bool kScaled, bool kRoundBf16, int N>
__device__ __forceinline__ void words_scaled(const uint32_t* w, float s, float xs[N], float) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    xs[j] = scale_canon<kScaled>(__uint_as_float(w[j]), s);
    if (kRoundBf16) xs[j] = __bfloat162float(__float2bfloat16_rn(xs[j]));
  }
}
template <bool kScaled, bool kRoundBf16, int N>
__device__ __forceinline__ void words_scaled(const uint32_t* w, float s, float xs[N],
                                             __nv_bfloat16) {
#pragma unroll
  for (int j = 0; j < N / 2; ++j) {
    const float a = scale_canon<kScaled>(__uint_as_float(w[j] << 16), s);
    const float b = scale_canon<kScaled>(__uint_as_float(w[j] & 0xffff0000u), s);
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

// The 16 elements of a tile through words_scaled.
template <bool kScaled, bool kRoundBf16, typename T>
__device__ __forceinline__ void tile_scaled(const Tile<T>& r, float s, float xs[kTile]) {
  words_scaled<kScaled, kRoundBf16, kTile>(r.w, s, xs, T{});
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

// ---- warp-interleaved streaming (the kernels whose output is as wide as or wider than
// their input; the encode's other walk) ----
// A chunk is G consecutive elements of one tensor held as one 4-, 8- or 16-byte word, G chosen
// so that the wider of input and output is exactly 16 bytes: G = 4 when either side is f32,
// 8 when the wider side is bf16. A warp owns spans of 32·K chunks: lane L takes chunks
// L, L + 32, …, L + 32(K − 1) of its span, so every warp load or store instruction touches
// 32 consecutive chunks, i.e. 128, 256 or 512 contiguous bytes (whole 32-byte sectors; the
// per-thread 16-element tile walk above makes each store instruction write 16-byte pieces
// 32 or 64 bytes apart, which cost the decode more than half its bandwidth on an H200).
// All K loads of a lane are issued before the first is used (streamed, read once: ld.cs);
// stores are plain (docs/PERF.md: the evict-first hint bought nothing for stores).
template <int kBytes>
struct Chunk {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "chunk of 4, 8 or 16 bytes");
  uint32_t w[kBytes / 4];
};

template <int B>
__device__ __forceinline__ void load_chunk(const void* __restrict__ p, int64_t i, Chunk<B>& c) {
  if constexpr (B == 4) {
    c.w[0] = __ldcs(reinterpret_cast<const unsigned int*>(p) + i);
  } else if constexpr (B == 8) {
    const uint2 q = __ldcs(reinterpret_cast<const uint2*>(p) + i);
    c.w[0] = q.x, c.w[1] = q.y;
  } else {
    const uint4 q = __ldcs(reinterpret_cast<const uint4*>(p) + i);
    c.w[0] = q.x, c.w[1] = q.y, c.w[2] = q.z, c.w[3] = q.w;
  }
}
template <int B>
__device__ __forceinline__ void store_chunk(void* __restrict__ p, int64_t i, const Chunk<B>& c) {
  if constexpr (B == 4) {
    reinterpret_cast<unsigned int*>(p)[i] = c.w[0];
  } else if constexpr (B == 8) {
    reinterpret_cast<uint2*>(p)[i] = make_uint2(c.w[0], c.w[1]);
  } else {
    reinterpret_cast<uint4*>(p)[i] = make_uint4(c.w[0], c.w[1], c.w[2], c.w[3]);
  }
}

// The chunk geometry of a TI → TO stream, and K: chunks per lane per span, by default enough
// for ≈ 64 bytes of loads in flight per thread (16 for 4-byte input chunks, 8 for 8-byte, 4
// for 16-byte ones).
template <typename TI, typename TO>
struct WarpStream {
  static constexpr int kWide = sizeof(TI) > sizeof(TO) ? int(sizeof(TI)) : int(sizeof(TO));
  static constexpr int G = 16 / kWide;  // elements per chunk
  static constexpr int kInBytes = G * int(sizeof(TI));
  static constexpr int kOutBytes = G * int(sizeof(TO));
  static constexpr int kDefaultK = 64 / kInBytes;
  using In = Chunk<kInBytes>;
  using Out = Chunk<kOutBytes>;
};

// The span loop of the warp-interleaved walks: the grid's warps take the whole spans of
// x[0, n) (grid stride in spans; a span is 32·K chunks, lane L loading chunks L + 32k);
// emit(span, in) converts and writes one loaded span, after() runs once the next span's
// loads are issued. prologue() is called once by every thread after its first span's loads
// are issued (block set-up overlapping their latency). Returns the number of elements done
// (a multiple of the span); the caller finishes the rest with its scalar loop. Every thread
// of the grid must call it (no early exit).
template <typename TI, typename TO, int K, typename Emit, typename After, typename P>
__device__ __forceinline__ int64_t walk_spans(const TI* __restrict__ x, int64_t n, Emit&& emit,
                                              After&& after, P&& prologue) {
  using WS = WarpStream<TI, TO>;
  constexpr int64_t kSpanChunks = 32 * K;
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  const int64_t nspans = n / (kSpanChunks * WS::G);
  int64_t sp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  typename WS::In in[K];
  auto load = [&] {
    const int64_t c0 = sp * kSpanChunks + lane;
#pragma unroll
    for (int k = 0; k < K; ++k) load_chunk(x, c0 + 32 * k, in[k]);
  };
  if (sp < nspans) load();
  prologue();
  while (sp < nspans) {
    emit(sp, in);
    sp += nwarps;
    if (sp < nspans) load();
    after();
  }
  return nspans * kSpanChunks * WS::G;
}

// Converts the K loaded chunks of the span whose lane chunk 0 is c0 (f(in_chunk,
// first_element_index, out_chunk)) and stores chunk k at index at(k) of dst.
template <typename TI, typename TO, int K, typename F, typename At>
__device__ __forceinline__ void convert_span(const typename WarpStream<TI, TO>::In* in, int64_t c0,
                                             F& f, void* __restrict__ dst, At&& at) {
  using WS = WarpStream<TI, TO>;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    typename WS::Out o;
    f(in[k], (c0 + 32 * k) * WS::G, o);
    store_chunk<WS::kOutBytes>(dst, at(k), o);
  }
}

// x[0, n) → out[0, n) (both 16-byte aligned) through walk_spans, each converted chunk stored
// directly: f(in_chunk, first_element_index, out_chunk) converts one chunk.
template <typename TI, typename TO, int K = WarpStream<TI, TO>::kDefaultK, typename F, typename P>
__device__ __forceinline__ int64_t warp_stream(const TI* __restrict__ x, TO* __restrict__ out,
                                               int64_t n, F&& f, P&& prologue) {
  using WS = WarpStream<TI, TO>;
  const int lane = threadIdx.x & 31;
  auto emit = [&](int64_t sp, const typename WS::In* in) {
    const int64_t c0 = sp * 32 * K + lane;
    convert_span<TI, TO, K>(in, c0, f, out, [&](int k) { return c0 + 32 * k; });
  };
  return walk_spans<TI, TO, K>(x, n, emit, [] {}, prologue);
}
template <typename TI, typename TO, int K = WarpStream<TI, TO>::kDefaultK, typename F>
__device__ __forceinline__ int64_t warp_stream(const TI* __restrict__ x, TO* __restrict__ out,
                                               int64_t n, F&& f) {
  return warp_stream<TI, TO, K>(x, out, n, f, [] {});
}

// ---- bulk stores (Walk::kBulkStore) ----
// The warp-interleaved walk with the output staged: each warp converts its span into its own
// shared-memory stage, laid out as the span is in global memory, and one lane stores the
// stage with a single bulk copy (cp.async.bulk: shared → global through the copy engine's
// path, one 1–4 KB request instead of 32·K 16-byte stores), then waits until the copy has read
// the stage before the warp refills it. Stage: 32·K output chunks (K = 8): 4 KB for 16-byte
// output chunks, 2 KB for 8-byte ones. Built for an architecture before sm_90, the walk falls
// back to direct stores.
template <typename TI, typename TO>
struct BulkStream {
  using WS = WarpStream<TI, TO>;
  static constexpr int K = 8;
  static constexpr int kStageBytes = 32 * K * WS::kOutBytes;
};

__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
__device__ __forceinline__ void bulk_store(void* gdst, const void* ssrc, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(ssrc));
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gdst), "r"(s),
               "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#endif
}
__device__ __forceinline__ void bulk_wait_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
#endif
}

// As warp_stream, storing through `stage` (this warp's BulkStream::kStageBytes of shared
// memory, 16-byte aligned).
template <typename TI, typename TO, typename F, typename P>
__device__ __forceinline__ int64_t warp_stream_bulk(const TI* __restrict__ x, TO* __restrict__ out,
                                                    int64_t n, void* stage, F&& f, P&& prologue) {
  constexpr int K = BulkStream<TI, TO>::K;
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 900
  (void)stage;  // no bulk copies before sm_90: the same walk with direct stores
  return warp_stream<TI, TO, K>(x, out, n, f, prologue);
#else
  using WS = WarpStream<TI, TO>;
  constexpr int kBytes = BulkStream<TI, TO>::kStageBytes;
  const int lane = threadIdx.x & 31;
  auto emit = [&](int64_t sp, const typename WS::In* in) {
    convert_span<TI, TO, K>(in, sp * 32 * K + lane, f, stage, [&](int k) { return 32 * k + lane; });
    fence_proxy_async_smem();  // this lane's stage writes, before the copy engine reads them
    __syncwarp();
    if (lane == 0) bulk_store(reinterpret_cast<char*>(out) + sp * kBytes, stage, kBytes);
  };
  auto after = [&] {  // the next span's loads are in flight; the stage may be refilled once read
    if (lane == 0) bulk_wait_read();
    __syncwarp();
  };
  return walk_spans<TI, TO, K>(x, n, emit, after, prologue);
#endif
}

// Threads to ask stream_blocks for a bulk-store walk: one warp per whole span, plus one warp
// for the tail.
template <typename TI, typename TO>
inline int64_t bulk_stream_items(int64_t n, bool vec) {
  return vec ? n / (32 * BulkStream<TI, TO>::K * WarpStream<TI, TO>::G) * 32 + 32 : n;
}

// Threads to ask stream_blocks for: one warp per whole span, plus one warp for the tail.
template <typename TI, typename TO, int K = WarpStream<TI, TO>::kDefaultK>
inline int64_t warp_stream_items(int64_t n, bool vec) {
  return vec ? n / (32 * K * WarpStream<TI, TO>::G) * 32 + 32 : n;
}

// Element j of a chunk: as a float (f32 / bf16 input) or as a byte (u8 input).
template <int B>
__device__ __forceinline__ float chunk_elem(const Chunk<B>& c, int j, float) {
  return __uint_as_float(c.w[j]);
}
template <int B>
__device__ __forceinline__ float chunk_elem(const Chunk<B>& c, int j, __nv_bfloat16) {
  const uint32_t w = c.w[j >> 1];
  return __uint_as_float((j & 1) ? (w & 0xffff0000u) : (w << 16));
}
template <int B>
__device__ __forceinline__ uint32_t chunk_byte(const Chunk<B>& c, int j) {
  return (c.w[j >> 2] >> (8 * (j & 3))) & 0xffu;
}

// Fills an output chunk of G elements from G float bit patterns (f32: as they are; bf16: the
// high halves, already rounded by the caller) or from G byte values (u8).
template <int G, int B>
__device__ __forceinline__ void chunk_set(Chunk<B>& o, const uint32_t v[G], float) {
#pragma unroll
  for (int j = 0; j < G; ++j) o.w[j] = v[j];
}
template <int G, int B>
__device__ __forceinline__ void chunk_set(Chunk<B>& o, const uint32_t v[G], __nv_bfloat16) {
#pragma unroll
  for (int j = 0; j < G / 2; ++j) o.w[j] = __byte_perm(v[2 * j], v[2 * j + 1], 0x7632);
}
template <int G, int B>
__device__ __forceinline__ void chunk_set(Chunk<B>& o, const uint32_t v[G], uint8_t) {
#pragma unroll
  for (int j = 0; j < G / 4; ++j)
    o.w[j] = v[4 * j] | (v[4 * j + 1] << 8) | (v[4 * j + 2] << 16) | (v[4 * j + 3] << 24);
}

// The G elements of an f32 / bf16 input chunk through words_scaled.
template <bool kScaled, bool kRoundBf16, int G, int B, typename T>
__device__ __forceinline__ void chunk_scaled(const Chunk<B>& c, float s, float xs[G], T) {
  words_scaled<kScaled, kRoundBf16, G>(c.w, s, xs, T{});
}

// The body of the table decodes (HiF8 decode, E4M3 dequantize): out[i] = val[c[i]] with val
// a 256-entry table of float bit patterns (bf16 output: already bf16-exact) that fill()
// writes (called once by every thread, after the first loads are issued; the __syncthreads
// that follows is here). Warp-interleaved when `vec` (codes and out 16-byte aligned), with
// bulk stores when kBulk, then the scalar tail, or the whole tensor when not `vec`.
template <typename TO, bool kBulk = false, typename Fill>
__device__ __forceinline__ void stream_table_lookup(const uint8_t* __restrict__ c,
                                                    TO* __restrict__ out, int64_t n, bool vec,
                                                    const uint32_t* __restrict__ val, Fill&& fill) {
  constexpr int G = WarpStream<uint8_t, TO>::G;
  constexpr int kStage = kBulk ? BulkStream<uint8_t, TO>::kStageBytes : 16;
  __shared__ __align__(128) uint8_t stage[kStreamThreads / 32][kStage];
  auto prologue = [&] {
    fill();
    __syncthreads();
  };
  auto lookup = [&](const auto& in, int64_t, auto& o) {
    uint32_t v[G];
#pragma unroll
    for (int j = 0; j < G; ++j) v[j] = val[chunk_byte(in, j)];
    chunk_set<G>(o, v, TO{});
  };
  int64_t done = 0;
  if (vec && kBulk)
    done = warp_stream_bulk<uint8_t, TO>(c, out, n, stage[threadIdx.x >> 5], lookup, prologue);
  else if (vec)
    done = warp_stream<uint8_t, TO>(c, out, n, lookup, prologue);
  else
    prologue();
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = done + tid; i < n; i += stride) put_bits(out, i, val[c[i]]);
}

inline bool aligned16_host(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace osp::quant::cuda
