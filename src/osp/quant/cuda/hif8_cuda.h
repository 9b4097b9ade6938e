// CUDA kernels behind quant/hif8.h (compiled when OSP_HAVE_CUDA). Arguments are validated by
// the callers in hif8.cpp: inputs contiguous on the GPU, outputs contiguous, same numel.
#pragma once
#include <cstdint>

#include "osp/core/tensor.h"

namespace osp::quant::cuda {

// Launch shape of a bandwidth-bound codec kernel (hif8_stream.cuh). Every shape gives the same
// bits; they differ only in how the memory is walked, so that bench_hif8_gpu can time them
// side by side and the tests can check each against the CPU codec. kDefault: the shape the
// op takes in production — one warp per span (one thread per tile group) for every op, the
// tile walk for the encode / E4M3 quantize, bulk stores for the wide-output ops;
// docs/PERF.md, "HiF8 codec kernels", has the measurements behind the choice (and those of
// the shapes tried and dropped: a balanced or software-pipelined persistent grid, twice the
// bytes in flight, a 64K-entry bf16 encode table, evict-first stores).
enum class Grid {
  kDefault,
  kPersistent,  // SMs × resident blocks, grid stride
  kFull         // one warp per span / one thread per tile group: the hardware schedules
};
enum class Walk {
  kDefault,
  kTile,        // each thread 16 consecutive elements (16-byte accesses 32/64 bytes apart)
  kInterleaved,  // warp-interleaved chunks: every warp access covers 128–512 contiguous bytes
  kBulkStore     // the interleaved walk's loads; each warp writes its 2–4 KB of output to
                 // shared memory and stores it with one bulk copy (cp.async.bulk); the ops
                 // whose output is as wide as their input or wider (decode, round, fake quant,
                 // E4M3 dequantize)
};
struct StreamShape {
  Grid grid = Grid::kDefault;
  Walk walk = Walk::kDefault;  // encode / E4M3 quantize: tile or interleaved; the wide-output
                               // ops: interleaved or bulk store
};

void hif8_encode(const Tensor& x, Tensor& out, bool saturate, StreamShape shape = {});
void hif8_decode(const Tensor& codes, Tensor& out, StreamShape shape = {});
void hif8_round(const Tensor& x, Tensor& out, bool saturate, StreamShape shape = {});
void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                           bool saturate);
// max|x| (NaN ignored) into a device float (written, not accumulated). Stream-ordered.
void amax_to_device(const Tensor& x, float* d_amax);
float amax(const Tensor& x);
// Per-tensor scaled fake quant with the scale kept on the device. If d_scale_out is non-null
// the scale s (x·s is quantized) is also written there.
void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target, float* d_scale_out = nullptr,
                     StreamShape shape = {});
// The same with hybrid stochastic rounding (Philox word of seed, offset + i).
void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, float max_target, uint64_t seed,
                                uint64_t offset);

// Diagnostic for bench_hif8_gpu: an f32 → f32 copy through the codec kernels' walks with no
// per-element work (any Walk: tile, interleaved, bulk store), to separate what the walk and
// grid cost from what the per-element work costs. x, out contiguous f32 on the GPU, same size.
void stream_copy(const Tensor& x, Tensor& out, StreamShape shape);

// x → one byte per element through an 8192-entry prefix table (hif8_lut.h) in device memory:
// with d_amax null the HiF8 code of x (hif8_encode), else the table's code of x·s with s =
// scale_for(*d_amax, max_target) and 1/s written to *d_scale_inv (hif8_quantize_e4m3 with
// the E4M3 table). x contiguous f32/bf16 on the GPU, out n bytes; n = 0 with d_amax still
// writes the scale.
void launch_code_kernel(const Tensor& x, uint8_t* out, const uint8_t* lut, const float* d_amax,
                        float max_target, float* d_scale_inv, StreamShape shape);
// The 8192-entry prefix tables in device memory (built once per device, kept for the life of
// the process): HiF8 TA codes (either overflow mode), and the E4M3 code of each HiF8 TA value
// (overflow to Inf, as hif8_quantize_e4m3).
const uint8_t* hif8_code_lut_device(bool saturate);
const uint8_t* hif8_e4m3_lut_device();
}  // namespace osp::quant::cuda
