// The inference memory plan (osp generate / serve / batches): what each stage needs on the
// compute device and, under a limit (--max-vram, or the device's free memory), which memory mode
// runs the DiT. Pure arithmetic on the config and the sizes read from the checkpoint headers, so
// it can plan the 14B model on a machine without it (tests/pipeline/memory_plan_test.cpp).
//
// Candidates, in the order tried (the first that fits the limit wins; cheapest in time first):
//   1. resident weights, CFG batched (cond + uncond as B = 2 in one forward: today's default)
//   2. resident weights, CFG sequential (two B = 1 forwards per step: half the activations, the
//      same GEMM efficiency at video token counts)
//   3. 8-bit resident weights (only for --quant hif8 on CUDA: the block linears stored as the
//      E4M3 codes of their HiF8 values, 1 byte per weight, attention kept on the HiF8-rounded
//      bf16 q/k/v — HiF8 mode's numerics with FP8 GEMMs; --quant none is never switched to 8 bits
//      behind the user's back), batched, then sequential
//   4. block streaming (model/dit_block_stream.h: two device block slots), batched, then
//      sequential (streaming copies every block once per forward, so sequential CFG doubles them)
// (No sequential CFG with --cache teacache: its policy decides once per batched step.)
// --dit-offload none keeps 1–3, blocks forces 4, auto (default) tries all. The text encoder
// moves to the CPU when its stage does not fit (as --offload does); the VAE decodes untiled when
// its estimate fits three quarters of the room left at decode time (beside its weights, and with
// keep_loaded beside every resident model's), in tiles of that room otherwise (8 GiB when the
// free memory is unknown; --vae-budget-mb overrides).
//
// Estimates (bytes on the device):
//   * weights: exact, from the config's tensor shapes and the precision map (CUDA: bf16 linears,
//     f32 time embedding, modulation and norms; 8-bit: 1 byte per block linear weight; CPU f32);
//   * DiT activations per token per CFG row: (34·dim + 3·ffn_dim) bytes on CUDA (bf16), fitted
//     to two measured peaks of docs/PERF.md (14B-720P forward B = 1: 42.1 GiB with weights;
//     1.3B-480P pipeline B = 2: 7.5 GiB), + 12·dim for hybrid plans (their layout gathers:
//     between the two measured hybrid peaks, 14B 45.1 / 1.3B 9.6 GiB); ×2 on the CPU (f32);
//     + the text context and text_len rows; + the step cache's residual (4·dim per token row);
//   * a fixed 512 MiB reserve for GEMM / attention workspaces, latents and allocator rounding.
// These are estimates: a GPU run under --max-vram enforces the limit in the caching allocator
// (core/device.h set_cuda_memory_limit), so an underestimate fails loudly instead of passing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "osp/model/dit_config.h"

namespace osp::pipeline {

enum class DitWeights : uint8_t { Resident, Resident8bit, Streamed };
const char* dit_weights_name(DitWeights w);  // "resident", "8-bit resident", "block streaming"

// What the plan needs to know about a run.
struct MemoryInput {
  model::DiTConfig cfg;
  bool hybrid = false;            // any Skiparse (token/group) block in the plan
  int64_t tokens = 0;             // DiT tokens of the video (T·h/2·w/2)
  int64_t latent_elems = 0;       // 16·T·h·w
  bool gpu = false;
  std::string quant = "none";     // requested: none | hif8 | fp8
  int cfg_rows = 2;               // rows of a batched forward: 2 with CFG, 1 (guidance 1, --cfg-parallel)
  bool step_cache = false;        // --cache teacache: the residual stays on the device
  int sp_ranks = 1;               // activations split over ranks
  size_t t5_params = 0;
  int64_t t5_dim = 4096;
  bool t5_offload = false;        // --offload: the text encoder runs on the CPU
  size_t vae_weights = 0;         // bytes (f32)
  size_t vae_full_decode = 0;     // model::decode_memory_estimate of the untiled decode
  size_t vae_budget = 0;          // --vae-budget-mb in bytes (0 = auto)
  std::string dit_offload = "auto";  // none | blocks | auto
  size_t limit = 0;               // --max-vram in bytes (0 = none: `available` is the limit)
  size_t available = 0;           // free device memory (0 = unknown)
  bool keep_loaded = false;       // text encoder, DiT and VAE resident together (server, batches)
  // A loaded pipeline's DiT: only candidates with this weight mode (the CFG choice stays free).
  bool weights_fixed = false;
  DitWeights fixed_weights = DitWeights::Resident;
  std::string device = "cpu";
};

// What a run will need and how it runs.
struct MemoryPlan {
  size_t dit_weights = 0, t5_weights = 0, vae_weights = 0;  // bytes on the compute device
  size_t dit_activations = 0, vae_activations = 0, t5_activations = 0;
  size_t workspace = 0;  // the fixed reserve
  size_t peak = 0;       // max over the stages (sum of weights with keep_loaded)
  size_t available = 0;  // free bytes on the device (0 = unknown)
  size_t limit = 0;      // --max-vram (0 = none)
  std::string device;
  // The chosen memory mode.
  DitWeights dit_mode = DitWeights::Resident;
  bool sequential_cfg = false;   // two B = 1 forwards per step instead of one B = 2
  bool t5_on_cpu = false;        // the text encoder runs on the CPU (--offload or the plan)
  size_t vae_budget = 0;         // VAE decode activation budget used (tiling)
  size_t dit_block_bytes = 0;    // the largest block (streaming: two of them on the device)
  std::vector<std::string> rejected;  // modes tried before the chosen one, with their peaks
  // One line: mode and per-stage estimates.
  std::string describe() const;
  // The DiT memory mode in words, e.g. "block streaming, CFG sequential".
  std::string mode() const;
};

// Weight bytes of the DiT on the device: the largest block, all blocks, everything else.
struct DitWeightBytes {
  size_t max_block = 0, blocks = 0, other = 0;
};
DitWeightBytes dit_weight_bytes(const model::DiTConfig& cfg, bool gpu, bool eight_bit);

// Picks the memory mode (above). Throws osp::Error naming the limit and every candidate's
// estimate when nothing fits.
MemoryPlan plan_memory(const MemoryInput& in);

// "24 GiB" → bytes (GiB may be fractional, > 0); throws with the flag's name otherwise.
size_t parse_gib(double gib, const char* flag);

std::string human_bytes(size_t b);

}  // namespace osp::pipeline
