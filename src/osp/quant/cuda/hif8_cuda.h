// CUDA kernels behind quant/hif8.h (compiled when OSP_HAVE_CUDA). Arguments are validated by
// the callers in hif8.cpp: inputs contiguous on the GPU, outputs contiguous, same numel.
#pragma once
#include <cstdint>

#include "osp/core/tensor.h"

namespace osp::quant::cuda {
void hif8_encode(const Tensor& x, Tensor& out, bool saturate);
void hif8_decode(const Tensor& codes, Tensor& out);
void hif8_round(const Tensor& x, Tensor& out, bool saturate);
void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                           bool saturate);
// max|x| (NaN ignored) into a device float (written, not accumulated). Stream-ordered.
void amax_to_device(const Tensor& x, float* d_amax);
float amax(const Tensor& x);
// Per-tensor scaled fake quant with the scale kept on the device. If d_scale_out is non-null
// the scale s (x·s is quantized) is also written there.
void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target, float* d_scale_out = nullptr);
// The same with hybrid stochastic rounding (Philox word of seed, offset + i).
void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, float max_target, uint64_t seed,
                                uint64_t offset);

// bf16 → HiF8 codes through one of three kernel designs (hif8_encode_variants.cu), for
// bench_hif8_gpu's comparison; hif8_encode is kPrefix8k. Identical codes. x contiguous bf16
// on CUDA, out contiguous u8/hif8 of the same size on the same device (checked).
enum class EncodeVariant { kPrefix8k, kLut64k, kBits };
void hif8_encode_bf16_variant(const Tensor& x, Tensor& out, bool saturate, EncodeVariant v);
// f32/bf16 → HiF8 codes with a chosen walk, for bench_hif8_gpu's comparison: kTile (each
// thread 16 consecutive elements, one 16-byte store of their codes) or kInterleaved (warp-
// interleaved chunks, warp_stream in hif8_stream.cuh). hif8_encode takes kTile for f32 and
// kInterleaved for bf16: the faster of the two for each in one H200 run (docs/PERF.md).
// Identical codes. x contiguous f32/bf16 on CUDA, out contiguous u8/hif8 of the same size
// on the same device (checked).
enum class EncodeWalk { kTile, kInterleaved };
void hif8_encode_walk(const Tensor& x, Tensor& out, bool saturate, EncodeWalk walk);
// hif8_round (TA) launched in the persistent grid (one_warp_per_span false: what hif8_round
// does) or with one warp per warp-interleaved span (what hif8_decode does), for
// bench_hif8_gpu's grid-sizing comparison. Identical values. x contiguous f32/bf16 on CUDA,
// out contiguous f32/bf16 of the same size on the same device (checked).
void hif8_round_grid(const Tensor& x, Tensor& out, bool saturate, bool one_warp_per_span);
// codes → f32/bf16 through decode kernels that differ only in their memory access pattern
// (hif8_encode_variants.cu says what each isolates); kProduction is hif8_decode (warp-
// interleaved, 64 codes in flight per lane, one warp per span). Identical values. codes
// contiguous u8/hif8 on CUDA, out contiguous f32/bf16 of the same size (checked).
enum class DecodeVariant {
  kProduction,
  kTilePlainStores,         // per-thread 16-code tiles
  kInterleavedEvictFirst,   // warp-interleaved, 16 codes per lane, st.global.cs
  kInterleavedPlainStores,  // warp-interleaved, 16 codes per lane, plain stores
  kInterleavedPersistent    // the production kernel in a persistent grid (SMs × occupancy)
};
void hif8_decode_variant(const Tensor& codes, Tensor& out, DecodeVariant v);
}  // namespace osp::quant::cuda
