// The mma.sync building blocks of the own flash-attention kernels (attention.cu's forward,
// attention_flash_backward.cu's backward): cp.async tile loads into XOR-swizzled shared memory,
// ldmatrix fragment loads, the m16n8k16 bf16 MMA (fp32 accumulate) and bf16 packing.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, lane = 4·g + t):
//   A 16×16 (4 regs): a0 (row g, cols 2t, 2t+1), a1 (row g+8, same cols), a2/a3 the same at cols +8.
//   B 16×8  (2 regs): b0 (k = 2t, 2t+1; n = g), b1 (k = 2t+8, 2t+9; n = g).
//   C 16×8  (4 f32):  c0/c1 (row g, cols 2t, 2t+1), c2/c3 (row g+8, same cols).
// Two adjacent C tiles (cols 0–7, 8–15) packed to bf16 are one A fragment of k = 16 (a_from_c).
// Tiles in shared memory are [rows][D] bf16 row-major, each row D/8 chunks of 16 bytes with the
// chunk index XORed with (row & 7) (swz), so the 8 rows one ldmatrix matrix reads hit 8 banks
// groups. Internal linkage, like bf16_convert.cuh.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace osp::ops::cuda {
namespace {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global → shared, asynchronous; !valid zero-fills the destination.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  int sz = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(sz));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                          uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// c (16×8 f32) += a (16×16 bf16) · b (16×8 bf16).
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The A fragment (k = 16) made of the C tiles c_lo (cols 0–7) and c_hi (cols 8–15), rounded to bf16.
__device__ __forceinline__ void a_from_c(uint32_t (&a)[4], const float* c_lo, const float* c_hi) {
  a[0] = pack_bf16(c_lo[0], c_lo[1]);
  a[1] = pack_bf16(c_lo[2], c_lo[3]);
  a[2] = pack_bf16(c_hi[0], c_hi[1]);
  a[3] = pack_bf16(c_hi[2], c_hi[3]);
}

// Byte offset of (row, 16-byte chunk) in a swizzled [rows][D] bf16 tile.
template <int D>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  constexpr int CH = D / 8;
  return uint32_t((row * CH + (chunk ^ (row & 7))) * 16);
}

// ldmatrix addresses (this lane's row and chunk) in a swizzled [rows][D] tile:
//   a_rows:  the A fragment of rows [r0, r0+16) × cols [16·ks, 16·ks+16) (tile = [m][k]);
//   b_rows:  the B fragments of two n8 tiles, n = rows [r0, r0+16), k = cols [16·ks, +16)
//            (tile = [n][k]; ldsm_x4 gives b0, b1 of the first n8 tile, then of the second);
//   b_trans: the B fragments of two n8 tiles, k = rows [r0, r0+16), n = cols [16·np, +16)
//            (tile = [k][n]; ldsm_x4_t gives b0, b1 of the first n8 tile, then of the second).
template <int D>
__device__ __forceinline__ uint32_t a_rows(uint32_t tile, int r0, int ks, int lane) {
  return tile + swz<D>(r0 + (lane & 15), ks * 2 + (lane >> 4));
}
template <int D>
__device__ __forceinline__ uint32_t b_rows(uint32_t tile, int r0, int ks, int lane) {
  return tile + swz<D>(r0 + (lane & 7) + ((lane >> 4) << 3), ks * 2 + ((lane >> 3) & 1));
}
template <int D>
__device__ __forceinline__ uint32_t b_trans(uint32_t tile, int r0, int np, int lane) {
  return tile + swz<D>(r0 + (lane & 7) + (((lane >> 3) & 1) << 3), np * 2 + (lane >> 4));
}

// acc (this warp's 16 rows × D) += C·B: C = 16 × K accumulators (rounded to bf16 as A fragments,
// a_from_c), B = the swizzled [K][D] tile sB (k = its rows, b_trans). The flash forward's O += P·V
// and the backward's dQ += dS·K, dV += Pᵀ·dO, dK += dSᵀ·Q.
template <int D, int K>
__device__ __forceinline__ void accumulate(float (&acc)[D / 8][4], const float (&c)[K / 8][4], uint32_t sB,
                                           int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    a_from_c(a, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      uint32_t b0, b1, b2, b3;
      ldsm_x4_t(b_trans<D>(sB, kk * 16, np, lane), b0, b1, b2, b3);
      mma_bf16(acc[2 * np], a, b0, b1);
      mma_bf16(acc[2 * np + 1], a, b2, b3);
    }
  }
}

// Loads rows [row0, row0 + ROWS) of a [*, row_stride] bf16 matrix into a swizzled [ROWS][D] tile
// with all THREADS threads of the block; rows at or beyond `limit` are zero-filled.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t sbase, const __nv_bfloat16* g, int64_t row_stride,
                                          int64_t row0, int64_t limit) {
  constexpr int CH = D / 8;
  constexpr int kIters = ROWS * CH / THREADS;
  static_assert(ROWS * CH % THREADS == 0, "a tile must split evenly over the threads");
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    int idx = i * THREADS + threadIdx.x;
    int r = idx / CH, c = idx % CH;
    int64_t gr = row0 + r;
    bool ok = gr < limit;
    const __nv_bfloat16* src = g + (ok ? gr : 0) * row_stride + c * 8;
    cp_async16(sbase + swz<D>(r, c), src, ok);
  }
}

}  // namespace
}  // namespace osp::ops::cuda
