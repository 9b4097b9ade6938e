// The attention implementations behind cuda::attention, exposed so tests and benchmarks can
// run each one explicitly. cuda::attention picks per call (OSP_VERBOSE=1 logs the choice):
//   * our own Hopper kernel (attention_hopper below), when the GPU and build allow it, D = 128,
//     no bias and Lk >= 2048 (where it measured faster than cuDNN);
//   * else cuDNN fused flash attention (cuDNN 9 backend graph API), when built with cuDNN, no
//     additive bias, D ∈ {64, 128}, and the graph is supported for the shape;
//   * else our own flash-attention kernel (mma.sync bf16, online softmax).
// OSP_ATTENTION=flash, =cudnn or =hopper forces one (cudnn and hopper fail loudly if they cannot
// run; hopper leaves biased and D = 64 calls to the auto choice).
#pragma once
#include "osp/ops/ops.h"

namespace osp::ops::cuda {

// Own kernel: any B, Lq, Lk ≥ 0, D ∈ {64, 128}, optional bias/kv_lens/q_lens (device or host
// I32 [B]). `lse`: null, or device f32 [B, H, Lq], which receives each query row's log-sum-exp
// of its scaled scores in natural log (-inf for rows without keys or past q_lens), as
// attention_hopper's.
void attention_flash(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                     const AttentionArgs& args, float* lse = nullptr);

// Own tensor-core backward of softmax(scale·Q·Kᵀ)·V (attention_flash_backward.cu; mma.sync, so any
// GPU from sm_80): q/out/dout/dq bf16 [B, Lq, H, D], k/v/dk/dv bf16 [B, Lk, H, D], contiguous and
// 16-byte aligned, D ∈ {64, 128}; lse device f32 [B, H, Lq] (natural log, as the forward wrote it),
// delta device f32 [B, H, Lq] scratch (receives Δ = rowsum(dout ∘ out)). No masks or packing
// (cuda::attention_backward runs packed sequences as batches of equal lengths). Deterministic: no
// atomics; dQ and dK/dV are two kernels, each recomputing the probabilities.
void attention_flash_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const float* lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                              float scale, float* delta);

// cuDNN fused SDPA. Returns false (and logs why when OSP_VERBOSE) when cuDNN cannot run this
// case (no cuDNN in the build, a bias, an unsupported shape or a graph cuDNN rejects).
bool attention_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                     const AttentionArgs& args);

// cuDNN without a padding mask, one call per sequence on the unpadded prefixes
// q[b, :q_lens[b]], k/v[b, :kv_lens[b]] (rows >= q_lens[b] are zeroed). Same result as the
// masked call; faster when each sequence is long (the masked engine runs ~10 % slower). Needs
// host (CPU) length tensors and B <= 64; returns false when not applicable or cuDNN refuses.
// cuda::attention takes this path by itself for long padded sequences.
bool attention_cudnn_per_sequence(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                                  const AttentionArgs& args);

// Own Hopper kernel (attention_hopper.cu; sm_90a: TMA + wgmma, FlashAttention-3's structure):
// D = 128, no bias, any B, Lq, Lk, optional kv_lens/q_lens (host or device I32 [B]). `pingpong`
// picks the consumer warpgroups' scheduling and `key_tile` the keys per K/V tile, 128 or 176
// (0: OSP_HOPPER_KEY_TILE, else kHopperKeyTile) — benchmarks compare them. Throws when
// hopper_attention_supported() is false. Pingpong measured no faster (1.3B self-attention 628
// vs 700 TFLOP/s, 14B within 2 %, session 15, H100), so it is off by default. `lse`: null, or
// device f32 [B, H, Lq], which receives each query row's log-sum-exp of its scaled scores in
// natural log (-inf for rows without keys or past q_lens) — the statistics training's forward
// keeps for the backward (cuda::attention_forward_lse runs this kernel with them).
void attention_hopper(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                      const AttentionArgs& args, bool pingpong = false, int key_tile = 0,
                      float* lse = nullptr);
// The bf16 kernel's default keys per K/V tile: 176 measured faster than 128 on an H100 (session
// 16: 14B self-attention 666.6 vs 641.0 TFLOP/s, the 1.3B full forward 448.2 vs 457.8 ms).
inline constexpr int kHopperKeyTile = 176;
// One FP8 attention call on [B, L, H, D] row layouts given by pointers and batch strides
// (elements): token rows are H·D apart, heads D apart, the last dim contiguous. Codes are E4M3;
// descale_* point to one device f32 each (the quantizer's scale_inv); out is BF16 with the same
// row layout (batch stride o_bstride). Both FP8 kernels take it (quant/cuda/fp8_attention_cuda.h:
// cuDNN's; attention_hopper_fp8 below).
struct Fp8AttentionCall {
  int64_t B = 0, H = 0, Lq = 0, Lk = 0, D = 0;
  int64_t q_bstride = 0, kv_bstride = 0, o_bstride = 0;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* descale_q = nullptr;
  const float* descale_k = nullptr;
  const float* descale_v = nullptr;
  float attn_scale = 0;  // 0: 1/sqrt(D)
  void* out = nullptr;
};
// The FP8 variant of the own Hopper kernel (quant::fp8_attention's default on Hopper, quant/fp8.h
// says the arithmetic): D = 128, operands 16-byte aligned on the current device. P is rounded to
// E4M3 at scale 448 with the running max of each K/V tile (`key_tile` keys, 128 or 224; 0:
// hopper_fp8_key_tile()); O is not rounded beyond bf16. V is first transposed into a scratch
// tensor (FP8 wgmma reads its B operand K-major only). No padding masks (quant::fp8_attention has
// none). Throws when hopper_attention_supported() is false.
void attention_hopper_fp8(const Fp8AttentionCall& call, bool pingpong = false, int key_tile = 0);
// The FP8 kernel's default keys per K/V tile (FlashAttention-3 takes 224 for FP8 at head dim 128;
// here 224 with pingpong measured 923-950 TFLOP/s against 842-886 for 128 without, session 17,
// docs/PERF.md) and the scheduling the auto path gives each tile: pingpong for 224 (14B self
// 923-928 vs 892-895 without), not for 128 (838-875 with, 842-886 without).
inline constexpr int kHopperFp8KeyTile = 224;
inline constexpr bool hopper_fp8_pingpong(int key_tile) { return key_tile == 224; }
// The FP8 kernel's keys per tile when the caller names none: OSP_HOPPER_FP8_KEY_TILE, else
// kHopperFp8KeyTile. P's rounding blocks are this many keys (tests emulate with it).
int hopper_fp8_key_tile();

// Fewest keys for which the auto choices (cuda::attention, quant::fp8_attention) take the own
// Hopper kernels.
inline constexpr int64_t kHopperMinKeys = 2048;

// True on a compute-capability 9.0 GPU when this build holds the kernel's sm_90a code
// (CMAKE_CUDA_ARCHITECTURES=90a, the default).
bool hopper_attention_supported();

// The path the most recent cuda::attention call took: "cudnn", "flash", "hopper" or "" (none yet).
const char* last_attention_path();
}  // namespace osp::ops::cuda
