// Our own Hopper (sm_90a) attention forward, built the way the FlashAttention-3 paper describes
// (warp specialisation, TMA, wgmma, intra-warpgroup overlap, pingpong scheduling), in bf16 and
// in FP8 (E4M3).
//   bf16: q [B, Lq, H, 128], k/v [B, Lk, H, 128], out [B, Lq, H, 128], contiguous; fp32 softmax
//   and accumulation. Optional device I32 [B] kv_lens (keys >= kv_lens[b] are ignored, even
//   non-finite ones) and q_lens (rows >= q_lens[b] are written as 0).
//   Optionally each row's log-sum-exp (training's statistics: attention_forward_lse).
//   FP8: E4M3 codes with one scale each, out bf16 (attention_paths.h: attention_hopper_fp8).
//
// One CTA per (128 query rows, head, batch), three warpgroups:
//   * WG0, the producer (registers lowered to 24 a thread): one thread loads the Q tile once and
//     streams K and V tiles of kN keys (bf16: 176 by default or 128; FP8: 128 or 224) with the tensor
//     copy engine (TMA, 128-byte swizzle) into a 2-stage ring; each stage has a "full" mbarrier
//     (completed by the copy's bytes) and an "empty" one (one arrival per consumer warp once the
//     tile has been read).
//   * WG1, WG2, the consumers (raised to 240 registers a thread; ptxas fits their code in the
//     launch bound's 168, without spills): 64 query rows each.
//     S = Q·Kᵀ is wgmma m64nNk16 (bf16) / m64nNk32 (E4M3) with both operands in shared memory
//     (K-major); the online softmax runs in fp32 registers (base-2 exponentials, scale folded
//     in); O += P·V is wgmma with P from registers — bf16: the S accumulator layout is the
//     A-fragment layout and V is read MN-major (transposed by the instruction); E4M3: P is
//     rounded to E4M3 at scale 448 in registers and V comes pre-transposed (FP8 wgmma reads B
//     K-major only) with its keys in the order P leaves the registers.
//   * Intra-warpgroup overlap: the GEMM of S_j and the GEMM P_{j-1}·V_{j-1} are issued together,
//     and the softmax of S_j runs while P_{j-1}·V_{j-1} is still on the tensor cores.
//   * Pingpong (optional; off by default for bf16, where it measured no faster, docs/PERF.md
//     session 15; on for FP8's 224-key tiles, attention_paths.h): two named barriers hand the
//     right to issue GEMMs back and forth between the consumers, so one warpgroup's softmax runs
//     under the other's GEMMs.
//   Measured on H100s (sessions 15-17, docs/PERF.md): bf16 636-727 TFLOP/s at 32,760² × 12 heads
//   and 646-677 at 75,600² × 40 heads (176-key tiles; cuDNN 569-609 / 582-593; the spread is
//   between cards and calls); FP8 (224-key tiles, pingpong) 928-950 / 923-927 (cuDNN's FP8 870 /
//   841); slower than cuDNN on 512 keys (the auto choices keep cuDNN there). Nsight Compute at
//   the 14B shape (session 17): bf16 keeps the tensor pipe 83 % busy (at 1.5 GHz, power-bound);
//   FP8 (128-key tiles) 46 %, with issue slots 47 % busy — its softmax, not the tensor cores,
//   bounds it.
// Shared memory (from a 1024-byte aligned base): Q | K × 2 stages | V × 2 stages | mbarriers.
// A tile row is 128 bytes per TMA box (swizzled): bf16 tiles are two boxes (dims 0-63, 64-127).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "osp/core/error.h"
#include "osp/core/settings.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_context.h"

namespace osp::ops::cuda {
namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OSP_HOPPER_DEVICE 1
#endif

constexpr int kM = 128;  // query rows per CTA (64 per consumer warpgroup)
constexpr int kD = 128;  // head dim
constexpr int kStages = 2;
constexpr int kThreads = 384;
constexpr uint32_t kHalf = 128 * 128;  // one TMA box of Q: 128 rows x 128 bytes = 16 KB

// The variants: element type and keys per K/V tile (kN). A row of a tile is 128 bytes per TMA
// box, so a bf16 tile is two boxes (dims 0-63, 64-127) and an E4M3 tile one; Q is 128 rows, K
// and V kN rows. The FP8 kernel's V tile is Vᵀ (128 dims x kN keys in boxes of 128 keys, see
// fp8_v_transpose_kernel), because FP8 wgmma reads B K-major only.
template <bool kFp8_, int kN_>
struct Tiles {
  static constexpr bool kFp8 = kFp8_;
  static constexpr int kN = kN_;
  // Skip O's rescale where no row of a warp grew its max (rescale_and_pack): FP8 only, where the
  // softmax's instructions, not the tensor cores, bound the kernel (FP8 224-key tiles at 14B
  // 923-928 vs 872 TFLOP/s; bf16 176-key tiles at 1.3B 639 vs 682 with it: session 17, PERF).
  static constexpr bool kSkipRescale = kFp8;
  static_assert(kN == 128 || (!kFp8 && kN == 176) || (kFp8 && kN == 224), "the wgmma shapes written out below");
  static constexpr int kBoxes = kFp8 ? 1 : 2;
  static constexpr int kPRegs = kFp8 ? kN / 8 : kN / 4;  // P as A fragments, 32-bit registers
  static constexpr uint32_t kQTile = kBoxes * kHalf;
  static constexpr uint32_t kKVBox = uint32_t(kN) * 128;  // one K (bf16: and V) box: kN rows x 128 bytes
  static constexpr uint32_t kKTile = kBoxes * kKVBox;
  // V: bf16 as K; FP8 Vᵀ as boxes of 128 dims x 128 keys (kN rounded up to whole boxes; the
  // keys past kN are loaded and never read)
  static constexpr int kVtBoxes = (kN + 127) / 128;
  static constexpr uint32_t kVTile = kFp8 ? kVtBoxes * kHalf : kKTile;
  static constexpr uint32_t kOffK = kQTile, kOffV = kOffK + kStages * kKTile, kOffBar = kOffV + kStages * kVTile;
  static constexpr uint32_t kSmemBytes = kOffBar + 128 + 1024;  // + barriers + alignment slack
  static_assert(kKTile % 1024 == 0 && kVTile % 1024 == 0 && kSmemBytes <= 227 * 1024,
                "tile alignment / shared memory");
};

// log2 of kFp8AttentionScaleP (quant/fp8.h): the FP8 kernel's exponentials are P·448, so the
// E4M3 rounding of P·448 is a plain conversion.
constexpr float kLog2Fp8ScaleP = 8.807354922057604f;  // log2(448)
constexpr float kLn2 = 0.6931471805599453f;

struct HopperParams {
  __nv_bfloat16* o;
  const int* kv_lens;  // device [B] or null (bf16 only)
  const int* q_lens;   // device [B] or null (bf16 only)
  const float* descale_q;  // FP8: device f32 each (the codes' scale_inv); bf16: null
  const float* descale_k;
  const float* descale_v;
  int64_t o_bstride;  // elements between samples of o (rows are H·128 apart)
  int Lq, Lk, H;
  float scale_log2;  // softmax scale * log2(e)
  // null, or f32 [B, H, Lq]: each query row's natural-log log-sum-exp of its scaled scores
  // (training's statistics, attention_forward_lse); -inf for a row without keys or past q_len
  float* lse;
};

#ifdef OSP_HOPPER_DEVICE
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// TMA: one box of the 4-D map {d, h, row, b} into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int d, int h,
                                         int row, int b) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(d), "r"(h), "r"(row), "r"(b)
      : "memory");
}
// TMA: one box of the 3-D map {key, d, b·H + h} of the FP8 kernel's Vᵀ.
__device__ __forceinline__ void tma_load3(uint32_t dst, const CUtensorMap* map, uint32_t bar, int key, int d, int bh) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(key), "r"(d), "r"(bh)
      : "memory");
}
__device__ __forceinline__ void named_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void named_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Ties the accumulators to this point, so the compiler neither reads them before a wgmma wait
// nor moves writes past a wgmma issue.
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Shared-memory matrix descriptor, 128-byte swizzle. K-major operands: sbo = 1024 (8 rows of
// 128 bytes), lbo unused (16). MN-major: lbo = distance between 64-column blocks, sbo = 1024.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The fp32 accumulators of a wgmma m64n128 (64) / m64n176 (88) / m64n224 (112) as asm operands %0..: the
// register list and the constraints.
#define OSP_WGMMA_REGS64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define OSP_WGMMA_ACC64 "{" OSP_WGMMA_REGS64 "}"
#define OSP_WGMMA_ACC88 "{" OSP_WGMMA_REGS64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}"
#define OSP_WGMMA_ACC64_OUT(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define OSP_WGMMA_ACC88_OUT(d) \
    OSP_WGMMA_ACC64_OUT(d), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
#define OSP_WGMMA_ACC112 "{" OSP_WGMMA_REGS64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111}"
#define OSP_WGMMA_ACC112_OUT(d) \
    OSP_WGMMA_ACC88_OUT(d), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])

// d[64] (+)= A[64 x 16] · B[16 x 128]: A and B from shared memory, both K-major.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " OSP_WGMMA_ACC64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
               : OSP_WGMMA_ACC64_OUT(d)
               : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
// d[64] += A[64 x 16] · B[16 x 128]: A from registers (4 bf16x2 per thread), B from shared
// memory MN-major (transposed by the instruction).
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t* a, uint64_t desc_b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " OSP_WGMMA_ACC64
               ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
               : OSP_WGMMA_ACC64_OUT(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
// d[88] (+)= A[64 x 16] · B[16 x 176] (the 176-key tile), as wgmma_ss.
__device__ __forceinline__ void wgmma_ss(float (&d)[88], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %90, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n176k16.f32.bf16.bf16 " OSP_WGMMA_ACC88 ", %88, %89, p, 1, 1, 0, 0;\n}\n"
               : OSP_WGMMA_ACC88_OUT(d)
               : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
// FP8: d[64] (+)= A[64 x 32] · B[32 x 128], E4M3, both from shared memory, K-major (FP8 wgmma
// has no transposed operands).
__device__ __forceinline__ void wgmma_ss_fp8(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " OSP_WGMMA_ACC64 ", %64, %65, p, 1, 1;\n}\n"
               : OSP_WGMMA_ACC64_OUT(d)
               : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
// FP8: d[112] (+)= A[64 x 32] · B[32 x 224] (the FP8 kernel's 224-key tile), as wgmma_ss_fp8.
__device__ __forceinline__ void wgmma_ss_fp8(float (&d)[112], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %114, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n224k32.f32.e4m3.e4m3 " OSP_WGMMA_ACC112 ", %112, %113, p, 1, 1;\n}\n"
               : OSP_WGMMA_ACC112_OUT(d)
               : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
// FP8: d[64] += A[64 x 32] · B[32 x 128]: A from registers (4 x 4 E4M3 per thread), B K-major.
__device__ __forceinline__ void wgmma_rs_fp8(float (&d)[64], const uint32_t* a, uint64_t desc_b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " OSP_WGMMA_ACC64
               ", {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
               : OSP_WGMMA_ACC64_OUT(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
#undef OSP_WGMMA_REGS64
#undef OSP_WGMMA_ACC64
#undef OSP_WGMMA_ACC64_OUT
#undef OSP_WGMMA_ACC88
#undef OSP_WGMMA_ACC88_OUT
#undef OSP_WGMMA_ACC112
#undef OSP_WGMMA_ACC112_OUT

// S = Q·Kᵀ for this consumer's 64 rows against the K tile at `k_tile`: bf16 8 k-steps of 16
// dims (32 bytes; the second 4 in the dims-64..127 boxes), E4M3 4 k-steps of 32 dims.
template <class T>
__device__ __forceinline__ void issue_qk(float (&s)[T::kN / 2], uint32_t q_rows, uint32_t k_tile) {
  if constexpr (T::kFp8) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_ss_fp8(s, smem_desc(q_rows + kk * 32, 16, 1024), smem_desc(k_tile + kk * 32, 16, 1024), kk > 0);
  } else {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
      wgmma_ss(s, smem_desc(q_rows + (kk / 4) * kHalf + (kk % 4) * 32, 16, 1024),
               smem_desc(k_tile + (kk / 4) * T::kKVBox + (kk % 4) * 32, 16, 1024), kk > 0);
  }
}
// O += P·V. bf16: P as A fragments p[4 kk .. 4 kk + 3] covering keys 16 kk .. 16 kk + 15, V
// [keys x dims] read MN-major. E4M3: p[4 kk .. 4 kk + 3] cover key positions 32 kk .. 32 kk + 31
// of Vᵀ [dims x keys] (K-major), whose keys are stored in rescale_and_pack's order.
template <class T>
__device__ __forceinline__ void issue_pv(float (&o)[64], const uint32_t (&p)[T::kPRegs], uint32_t v_tile) {
  if constexpr (T::kFp8) {
#pragma unroll
    for (int kk = 0; kk < T::kN / 32; ++kk)  // 4 k-steps of 32 keys per Vᵀ box
      wgmma_rs_fp8(o, &p[4 * kk], smem_desc(v_tile + (kk / 4) * kHalf + (kk % 4) * 32, 16, 1024));
  } else {
#pragma unroll
    for (int kk = 0; kk < T::kN / 16; ++kk)
      wgmma_rs(o, &p[4 * kk], smem_desc(v_tile + kk * 2048, T::kKVBox, 1024));
  }
}

// Online softmax of one tile of scores. Thread layout (wgmma accumulator): s[4 j + 2 i + c] is
// row r0 + 8 i, column 8 j + 2 t + c. Columns >= lim are masked. Updates the running max m and
// sum l of the thread's two rows, leaves exp2 values in s, sets the rescale factors and returns
// whether a row's max grew (else both factors are exactly 1).
// The exponentials are scaled by 2^p_log2 (FP8: 448; l sums the scaled values too).
template <int kN>
__device__ __forceinline__ bool softmax_tile(float (&s)[kN / 2], int lim, int t, float scale_log2, float p_log2,
                                             float (&m)[2], float (&l)[2], float (&alpha)[2]) {
  bool grew = false;
  if (lim < kN) {
#pragma unroll
    for (int j = 0; j < kN / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c)
        if (8 * j + 2 * t + c >= lim) s[4 * j + c] = s[4 * j + 2 + c] = -INFINITY;
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = m[i];
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * i], s[4 * j + 2 * i + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    grew |= mx != m[i];
    alpha[i] = mx != m[i] ? fast_exp2((m[i] - mx) * scale_log2) : 1.f;  // m = -inf on the first tile: 0
    const float ms = mx * scale_log2 - p_log2;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kN / 8; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float e = fast_exp2(fmaf(s[4 * j + 2 * i + c], scale_log2, -ms));
        s[4 * j + 2 * i + c] = e;
        sum += e;
      }
    l[i] = l[i] * alpha[i] + sum;
    m[i] = mx;
  }
  return grew;
}

__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {  // a in the low byte
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

// O *= alpha per row (T::kSkipRescale: unless no row of the warp grew its max — `grew` false in
// every lane, all factors exactly 1, which on long rows is most tiles); P as A fragments from the
// exponentials in s.
// bf16 (m64k16: a0 row r0 keys 2t, 2t+1; a1 row r0 + 8; a2/a3 the same 8 keys on): the
// accumulator's own layout. E4M3 (m64k32: a0 row r0 positions 4t .. 4t + 3, a1 row r0 + 8,
// a2/a3 positions 16 + 4t ..): the thread holds keys 2t, 2t+1, 2t+8, 2t+9 (+16) of each 32, so
// position 4t + e carries key 2t + (e & 1) + 8 (e >> 1) (+16) — fp8_v_transpose_kernel stores
// Vᵀ's keys in that order, and no register moves between threads.
template <class T>
__device__ __forceinline__ void rescale_and_pack(float (&o)[64], const float (&s)[T::kN / 2], const float (&alpha)[2],
                                                 bool grew, uint32_t (&p)[T::kPRegs]) {
  if (!T::kSkipRescale || __any_sync(0xffffffffu, grew)) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      o[4 * j + 0] *= alpha[0];
      o[4 * j + 1] *= alpha[0];
      o[4 * j + 2] *= alpha[1];
      o[4 * j + 3] *= alpha[1];
    }
  }
  if constexpr (T::kFp8) {
#pragma unroll
    for (int kk = 0; kk < T::kN / 32; ++kk) {
      const float* x = s + 16 * kk;  // columns 32 kk + {2t, 2t+1 | 8+2t, 9+2t | 16+.. | 24+..}
      p[4 * kk + 0] = pack_e4m3x4(x[0], x[1], x[4], x[5]);      // row r0
      p[4 * kk + 1] = pack_e4m3x4(x[2], x[3], x[6], x[7]);      // row r0 + 8
      p[4 * kk + 2] = pack_e4m3x4(x[8], x[9], x[12], x[13]);    // row r0,     +16
      p[4 * kk + 3] = pack_e4m3x4(x[10], x[11], x[14], x[15]);  // row r0 + 8, +16
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < T::kN / 16; ++kk) {
      p[4 * kk + 0] = pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);  // row r0,     keys 16kk + 2t
      p[4 * kk + 1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);  // row r0 + 8, keys 16kk + 2t
      p[4 * kk + 2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);  // row r0,     keys 16kk + 8 + 2t
      p[4 * kk + 3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);  // row r0 + 8, keys 16kk + 8 + 2t
    }
  }
}
#endif  // OSP_HOPPER_DEVICE

// T: Tiles<false, kN> (tq/tk/tv the 4-D maps of q, k, v) or Tiles<true, kN> (tq/tk of the E4M3
// codes, tv the 3-D map of Vᵀ).
template <class T, bool kPingpong>
__global__ void __launch_bounds__(kThreads, 1)
    hopper_attention_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                            const __grid_constant__ CUtensorMap tv, HopperParams p) {
#ifdef OSP_HOPPER_DEVICE
  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = base, bar = base + T::kOffBar;
  // mbarriers, 8 bytes each: 0 Q, 1 + s full K, 3 + s full V, 5 + s empty K, 7 + s empty V
  auto full_k = [&](int s) { return bar + 8u * (1 + s); };
  auto full_v = [&](int s) { return bar + 8u * (3 + s); };
  auto empty_k = [&](int s) { return bar + 8u * (5 + s); };
  auto empty_v = [&](int s) { return bar + 8u * (7 + s); };
  auto k_tile = [&](int s) { return base + T::kOffK + uint32_t(s) * T::kKTile; };
  auto v_tile = [&](int s) { return base + T::kOffV + uint32_t(s) * T::kVTile; };
  constexpr int kN = T::kN;

  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kM;
  const int kv_len = p.kv_lens ? min(max(p.kv_lens[b], 0), p.Lk) : p.Lk;
  const int q_len = p.q_lens ? min(max(p.q_lens[b], 0), p.Lq) : p.Lq;
  const int64_t row_stride = int64_t(p.H) * kD;
  __nv_bfloat16* og = p.o + int64_t(b) * p.o_bstride + int64_t(h) * kD;
  float* lse_row = p.lse ? p.lse + (int64_t(b) * p.H + h) * p.Lq : nullptr;  // [Lq] of (b, h)
  if (kv_len == 0 || m0 >= q_len) {  // no key, or no real query row in this tile: zeros
    for (int i = threadIdx.x; i < kM * kD / 8; i += kThreads) {
      const int r = m0 + i / (kD / 8), c = (i % (kD / 8)) * 8;
      if (r < p.Lq) *reinterpret_cast<uint4*>(og + r * row_stride + c) = make_uint4(0, 0, 0, 0);
    }
    if (lse_row && threadIdx.x < kM && m0 + int(threadIdx.x) < p.Lq) lse_row[m0 + threadIdx.x] = -INFINITY;
    return;
  }
  const int n_tiles = (kv_len + kN - 1) / kN;
  if (threadIdx.x == 0) {
    mbar_init(bar, 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_k(s), 1);
      mbar_init(full_v(s), 1);
      mbar_init(empty_k(s), 8);  // one arrival per consumer warp
      mbar_init(empty_v(s), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
  }
  __syncthreads();
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;

  if (wg == 0) {  // ---------------------------------------------------------- producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (tid == 0) {
      // the rows from `row` of a [B, L, H, 128] map, all dims: T::kBoxes boxes (128 bytes a row)
      // of box_bytes each
      auto load_rows = [&](uint32_t dst, const CUtensorMap* map, uint32_t full, int row, uint32_t box_bytes) {
#pragma unroll
        for (int x = 0; x < T::kBoxes; ++x) tma_load(dst + x * box_bytes, map, full, 64 * x, h, row, b);
      };
      mbar_expect_tx(bar, T::kQTile);
      load_rows(sQ, &tq, bar, m0, kHalf);
      for (int j = 0; j < n_tiles; ++j) {
        const int s = j % kStages;
        const uint32_t ph = (j / kStages) & 1;
        mbar_wait(empty_k(s), ph ^ 1);
        mbar_expect_tx(full_k(s), T::kKTile);
        load_rows(k_tile(s), &tk, full_k(s), j * kN, T::kKVBox);
        mbar_wait(empty_v(s), ph ^ 1);
        mbar_expect_tx(full_v(s), T::kVTile);
        if constexpr (T::kFp8) {
#pragma unroll
          for (int x = 0; x < T::kVtBoxes; ++x) tma_load3(v_tile(s) + x * kHalf, &tv, full_v(s), j * kN + 128 * x, 0, b * p.H + h);
        } else load_rows(v_tile(s), &tv, full_v(s), j * kN, T::kKVBox);
      }
    }
    return;
  }
  // ------------------------------------------------------------------------ consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  const int c = wg - 1;
  const int warp = tid / 32, lane = tid % 32, t = lane % 4;
  const int r0 = warp * 16 + lane / 4;  // this thread's rows: r0 and r0 + 8 of the warpgroup's 64
  const uint32_t q_rows = sQ + uint32_t(c) * 64 * 128;
  float scale_log2 = p.scale_log2, p_log2 = 0.f, out_mul = 1.f;
  if constexpr (T::kFp8) {  // scores in code units; exponentials as P·448; O back from v's units
    scale_log2 *= __ldg(p.descale_q) * __ldg(p.descale_k);
    p_log2 = kLog2Fp8ScaleP;
    out_mul = __ldg(p.descale_v);
  }
  float o[64], s[kN / 2];
  uint32_t pf[T::kPRegs];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
  auto lim = [&](int j) { return min(kN, kv_len - j * kN); };
  auto my_turn = [&] { if (kPingpong) named_sync(1 + c); };
  auto your_turn = [&] { if (kPingpong) named_arrive(2 - c); };
  if (kPingpong && c == 1) named_arrive(1);  // consumer 0 issues first

  mbar_wait(bar, 0);
  // tile 0: S only
  mbar_wait(full_k(0), 0);
  my_turn();
  wg_fence();
  issue_qk<T>(s, q_rows, k_tile(0));
  wg_commit();
  your_turn();
  wg_wait<0>();
  reg_fence(s);
  if (lane == 0) mbar_arrive(empty_k(0));
  softmax_tile<kN>(s, lim(0), t, scale_log2, p_log2, m, l, alpha);
  rescale_and_pack<T>(o, s, alpha, false, pf);  // O is still 0
  for (int j = 1; j < n_tiles; ++j) {
    const int st = j % kStages, ps = (j - 1) % kStages;
    mbar_wait(full_k(st), (j / kStages) & 1);
    mbar_wait(full_v(ps), ((j - 1) / kStages) & 1);
    my_turn();
    wg_fence();
    issue_qk<T>(s, q_rows, k_tile(st));
    wg_commit();
    issue_pv<T>(o, pf, v_tile(ps));
    wg_commit();
    your_turn();
    wg_wait<1>();  // S_j is done; P_{j-1}·V_{j-1} may still run
    reg_fence(s);
    if (lane == 0) mbar_arrive(empty_k(st));
    const bool grew = softmax_tile<kN>(s, lim(j), t, scale_log2, p_log2, m, l, alpha);
    wg_wait<0>();
    reg_fence(o);
    if (lane == 0) mbar_arrive(empty_v(ps));
    rescale_and_pack<T>(o, s, alpha, grew, pf);
  }
  const int ls = (n_tiles - 1) % kStages, last = lim(n_tiles - 1);
  mbar_wait(full_v(ls), ((n_tiles - 1) / kStages) & 1);
  if constexpr (!T::kFp8) {
    // the last V tile: keys >= kv_len are zeroed first (P is 0 there, but 0 · NaN is not 0);
    // both consumers share the tile, so they split the rows and meet at barrier 3. (The FP8
    // kernel's Vᵀ holds zeros past Lk already.)
    if (last < kN) {
      const uint32_t vt = v_tile(ls);
      for (int i = c * 128 + tid; i < (kN - last) * 16; i += 256) {  // 16 chunks of 16 B per row
        const int r = last + i / 16, ch = i % 16;
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(vt + (ch / 8) * T::kKVBox + r * 128 +
                                                                          (ch % 8) * 16),
                     "r"(0)
                     : "memory");
      }
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      named_sync(3);
    }
  }
  my_turn();
  wg_fence();
  issue_pv<T>(o, pf, v_tile(ls));
  wg_commit();
  your_turn();
  wg_wait<0>();
  reg_fence(o);
  if (kPingpong && c == 0) named_sync(1);  // absorbs consumer 1's last hand-over

  // O / l (· dv for FP8), bf16, rows >= q_len as 0; the log-sum-exp if asked (one lane a row)
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int row = m0 + c * 64 + r0 + 8 * i;
    if (row >= p.Lq) continue;
    const bool real = row < q_len;  // a padding row's query may be anything: store exact zeros
    if (lse_row && t == 0)  // l sums 2^(s·scale_log2 − m·scale_log2 + p_log2)
      lse_row[row] = real && l[i] > 0.f ? (m[i] * scale_log2 - p_log2 + log2f(l[i])) * kLn2
                                        : -INFINITY;
    const float inv = l[i] > 0.f ? out_mul / l[i] : 0.f;
    __nv_bfloat16* dst = og + int64_t(row) * row_stride + 2 * t;
#pragma unroll
    for (int j = 0; j < 16; ++j)
      *reinterpret_cast<uint32_t*>(dst + 8 * j) =
          real ? pack_bf16x2(o[4 * j + 2 * i] * inv, o[4 * j + 2 * i + 1] * inv) : 0u;
  }
#endif  // OSP_HOPPER_DEVICE
}

// Vᵀ for the FP8 kernel: vt [B·H, 128, Lkp] (Lkp = Lk rounded up to 64) from the E4M3 codes v
// [B, Lk, H, 128] (token rows H·128 bytes apart, samples v_bstride bytes apart). Within every
// 32 keys, position 16 g + 4 t + e holds key 16 g + 2 t + (e & 1) + 8 (e >> 1) (the order in which
// rescale_and_pack<Tiles<true, kN>> leaves P in registers); positions of keys >= Lk hold 0.
// Grid (Lkp / 64, H, B), 256 threads: 64 keys x 128 dims through shared memory.
__global__ void __launch_bounds__(256) fp8_v_transpose_kernel(const uint8_t* __restrict__ v, int64_t v_bstride,
                                                              uint8_t* __restrict__ vt, int Lk, int Lkp, int H) {
  constexpr int kKeys = 64, kPitch = 144;  // smem row pitch (bytes): 128 + 16 against bank conflicts
  __shared__ __align__(16) uint8_t tile[kKeys * kPitch];
  const int key0 = blockIdx.x * kKeys, h = blockIdx.y, b = blockIdx.z;
  const uint8_t* src = v + int64_t(b) * v_bstride + int64_t(h) * kD;
  for (int i = threadIdx.x; i < kKeys * 8; i += 256) {  // 8 chunks of 16 bytes per key
    const int key = i / 8, ch = i % 8;
    uint4 x = make_uint4(0, 0, 0, 0);
    if (key0 + key < Lk) x = *reinterpret_cast<const uint4*>(src + int64_t(key0 + key) * H * kD + ch * 16);
    *reinterpret_cast<uint4*>(tile + key * kPitch + ch * 16) = x;
  }
  __syncthreads();
  uint8_t* dst = vt + (int64_t(b) * H + h) * kD * Lkp + key0;
  for (int i = threadIdx.x; i < kD * (kKeys / 16); i += 256) {  // 16 positions per chunk
    const int d = i / (kKeys / 16), p0 = (i % (kKeys / 16)) * 16;
    uint32_t w[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      uint32_t word = 0;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = p0 + 4 * q + e, in32 = pos % 32;
        const int key = (pos - in32) + 16 * (in32 / 16) + 2 * ((in32 / 4) % 4) + (e & 1) + 8 * (e >> 1);
        word |= uint32_t(tile[key * kPitch + d]) << (8 * e);
      }
      w[q] = word;
    }
    *reinterpret_cast<uint4*>(dst + int64_t(d) * Lkp + p0) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// 1 when this build holds the sm_90a code of the kernel above.
__global__ void hopper_probe_kernel(int* out) {
#ifdef OSP_HOPPER_DEVICE
  *out = 1;
#else
  *out = 0;
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    OSP_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
    OSP_CHECK(q == cudaDriverEntryPointSuccess && f, "cuda::attention_hopper: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

CUtensorMap encode(CUtensorMapDataType type, int rank, const void* data, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box) {
  CUtensorMap map{};
  const cuuint32_t elem[4] = {1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, type, rank, const_cast<void*>(data), dims, strides, box, elem,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  OSP_CHECK(r == CUDA_SUCCESS, "cuda::attention_hopper: cuTensorMapEncodeTiled failed (", int(r), ")");
  return map;
}

// The 4-D tensor map {d, h, row, b} of a [B, L, H, 128] tensor of bf16 or E4M3 (token rows H·128
// elements apart, samples bstride elements apart), boxes of 128 bytes x box_rows rows.
CUtensorMap tensor_map(const void* data, bool fp8, int64_t B, int64_t L, int64_t H, int64_t bstride, int box_rows) {
  const cuuint64_t es = fp8 ? 1 : 2;
  const cuuint64_t dims[4] = {cuuint64_t(kD), cuuint64_t(H), cuuint64_t(L), cuuint64_t(B)};
  const cuuint64_t strides[3] = {kD * es, cuuint64_t(H * kD) * es, cuuint64_t(bstride) * es};
  const cuuint32_t box[4] = {cuuint32_t(128 / es), 1, cuuint32_t(box_rows), 1};
  return encode(fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, data, dims, strides, box);
}

// The 3-D map {key, d, b·H + h} of the FP8 kernel's Vᵀ [B·H, 128, Lkp], boxes of 128 keys x 128
// dims (a 128-byte swizzled row at most; keys past Lkp read as zeros).
CUtensorMap vt_tensor_map(const void* data, int64_t BH, int64_t Lkp) {
  const cuuint64_t dims[3] = {cuuint64_t(Lkp), cuuint64_t(kD), cuuint64_t(BH)};
  const cuuint64_t strides[2] = {cuuint64_t(Lkp), cuuint64_t(Lkp) * kD};
  const cuuint32_t box[3] = {128, cuuint32_t(kD), 1};
  return encode(CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, data, dims, strides, box);
}

template <class T>
void launch_kernel(const CUtensorMap& tq, const CUtensorMap& tk, const CUtensorMap& tv, const HopperParams& p,
                   int64_t B, bool pingpong) {
  const dim3 grid(unsigned((p.Lq + kM - 1) / kM), unsigned(p.H), unsigned(B));
  auto launch = [&](auto kernel) {
    OSP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(T::kSmemBytes)));
    kernel<<<grid, kThreads, T::kSmemBytes, stream()>>>(tq, tk, tv, p);
  };
  if (pingpong) launch(hopper_attention_kernel<T, true>);
  else launch(hopper_attention_kernel<T, false>);
  OSP_CUDA_LAUNCH_CHECK("hopper_attention_kernel");
}
}  // namespace

// Asked once per process, of the device current at the first call (osp runs one GPU per process;
// a process mixing compute capabilities would need this per device).
bool hopper_attention_supported() {
  static const bool ok = [] {
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return false;
    if (prop.major != 9 || prop.minor != 0) return false;
    int* d = static_cast<int*>(cuda_alloc(sizeof(int), dev));
    int h = 0;
    hopper_probe_kernel<<<1, 1, 0, stream()>>>(d);
    const bool ran = cudaGetLastError() == cudaSuccess &&
                     cudaMemcpyAsync(&h, d, sizeof(int), cudaMemcpyDeviceToHost, stream()) == cudaSuccess &&
                     cudaStreamSynchronize(stream()) == cudaSuccess;
    cuda_free(d, dev);
    return ran && h == 1;
  }();
  return ok;
}

// q/k/v/out bf16 [B, L, H, 128] contiguous on the current device (validated by the caller);
// q_lens / kv_lens device I32 [B] or null; lse null or device f32 [B, H, Lq] (HopperParams::lse).
void hopper_attention_launch(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, float scale,
                             const int* q_lens, const int* kv_lens, bool pingpong, int key_tile, float* lse) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), Lk = k.size(1);
  OSP_CHECK(B <= 65535 && H <= 65535 && Lq < (int64_t(1) << 31) && Lk < (int64_t(1) << 31),
            "cuda::attention_hopper: B and H must be <= 65535 and L < 2^31, got ", q.desc());
  if (key_tile == 0) key_tile = engine_settings().hopper_key_tile;
  if (key_tile == 0) key_tile = kHopperKeyTile;
  OSP_CHECK(key_tile == 128 || key_tile == 176, "cuda::attention_hopper: key tile must be 128 or 176, got ", key_tile);
  const CUtensorMap tq = tensor_map(q.raw(), false, B, Lq, H, Lq * H * kD, kM),
                    tk = tensor_map(k.raw(), false, B, Lk, H, Lk * H * kD, key_tile),
                    tv = tensor_map(v.raw(), false, B, Lk, H, Lk * H * kD, key_tile);
  const HopperParams p{out.data<__nv_bfloat16>(), kv_lens, q_lens, nullptr, nullptr, nullptr,
                       Lq * H * kD, int(Lq), int(Lk), int(H), scale * 1.4426950408889634f, lse};
  if (key_tile == 176) launch_kernel<Tiles<false, 176>>(tq, tk, tv, p, B, pingpong);
  else launch_kernel<Tiles<false, 128>>(tq, tk, tv, p, B, pingpong);
}

int hopper_fp8_key_tile() {
  const int t = engine_settings().hopper_fp8_key_tile;
  return t ? t : kHopperFp8KeyTile;
}

void attention_hopper_fp8(const Fp8AttentionCall& c, bool pingpong, int key_tile) {
  const char* fn = "cuda::attention_hopper_fp8";
  OSP_CHECK(hopper_attention_supported(), fn, ": needs a compute-capability 9.0 GPU and a build for sm_90a");
  OSP_CHECK(c.D == 128, fn, ": head dim must be 128, got ", c.D);
  OSP_CHECK(c.B >= 0 && c.H > 0 && c.Lq >= 0 && c.Lk >= 0 && c.B <= 65535 && c.H <= 65535 &&
                c.Lq < (int64_t(1) << 31) && c.Lk < (int64_t(1) << 31) - 128,
            fn, ": B and H must be <= 65535 and L < 2^31, got B=", c.B, " H=", c.H, " Lq=", c.Lq, " Lk=", c.Lk);
  OSP_CHECK(c.q && c.k && c.v && c.out && c.descale_q && c.descale_k && c.descale_v, fn, ": null pointer");
  for (const void* ptr : {c.q, c.k, c.v, static_cast<const void*>(c.out)})
    OSP_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, fn, ": operands must be 16-byte aligned");
  OSP_CHECK(c.q_bstride % 16 == 0 && c.kv_bstride % 16 == 0 && c.o_bstride % 8 == 0, fn,
            ": batch strides must be whole 16-byte units, got ", c.q_bstride, ", ", c.kv_bstride, ", ", c.o_bstride);
  if (key_tile == 0) key_tile = hopper_fp8_key_tile();
  OSP_CHECK(key_tile == 128 || key_tile == 224, fn, ": key tile must be 128 or 224, got ", key_tile);
  if (c.B == 0 || c.Lq == 0) return;
  // Vᵀ holds the keys rounded up to 64 (the transpose's block), zeros past Lk; the kernel's TMA
  // reads zeros past Lkp
  const int64_t Lkp = std::max<int64_t>((c.Lk + 63) / 64 * 64, 64);
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  Tensor vt = Tensor::empty({c.B * c.H, kD, Lkp}, DType::F8E4M3, Device::cuda(dev));
  const dim3 tgrid(unsigned(Lkp / 64), unsigned(c.H), unsigned(c.B));
  fp8_v_transpose_kernel<<<tgrid, 256, 0, stream()>>>(static_cast<const uint8_t*>(c.v), c.kv_bstride,
                                                      static_cast<uint8_t*>(vt.raw()), int(c.Lk), int(Lkp), int(c.H));
  OSP_CUDA_LAUNCH_CHECK("fp8_v_transpose_kernel");
  const CUtensorMap tq = tensor_map(c.q, true, c.B, c.Lq, c.H, c.q_bstride, kM),
                    tk = tensor_map(c.k, true, c.B, std::max<int64_t>(c.Lk, 1), c.H, c.kv_bstride, key_tile),
                    tv = vt_tensor_map(vt.raw(), c.B * c.H, Lkp);
  const float scale = c.attn_scale > 0 ? c.attn_scale : 1.f / std::sqrt(float(kD));
  const HopperParams p{static_cast<__nv_bfloat16*>(c.out), nullptr, nullptr, c.descale_q, c.descale_k, c.descale_v,
                       c.o_bstride, int(c.Lq), int(c.Lk), int(c.H), scale * 1.4426950408889634f, nullptr};
  if (key_tile == 224) launch_kernel<Tiles<true, 224>>(tq, tk, tv, p, c.B, pingpong);
  else launch_kernel<Tiles<true, 128>>(tq, tk, tv, p, c.B, pingpong);
}

}  // namespace osp::ops::cuda
