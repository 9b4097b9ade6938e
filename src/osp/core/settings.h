// The engine's OSP_* environment overrides, all in one place: read once, the first time
// engine_settings() is asked, each value validated with an error that names the variable. The
// modules take their defaults from here instead of reading the environment themselves.
//
//   OSP_ATTENTION=auto|flash|cudnn|hopper  attention kernels (forward and backward). auto: the
//                                    forward's head-dim-128 calls over >= 2048 keys without a bias
//                                    (training's forward with statistics too) run osp's own sm_90a
//                                    kernel on a Hopper GPU, the rest (and training's backward)
//                                    cuDNN's fused SDPA where it takes the shape, else osp's flash
//                                    kernel; hopper: the own kernel wherever it takes the call
//                                    (head dim 128, no bias; else auto), training's backward as auto
//   OSP_HOPPER_KEY_TILE=128|176      keys per K/V tile of the own Hopper bf16 attention kernel
//                                    (default: ops/cuda/attention_paths.h's kHopperKeyTile; A/B runs)
//   OSP_HOPPER_FP8_KEY_TILE=128|224  the same for its FP8 variant (default kHopperFp8KeyTile)
//   OSP_CONV3D=cudnn|im2col          the Wan-VAE's 3-D convolutions on CUDA (ops/conv.h; default cudnn)
//   OSP_VAE_FP32=1                   the VAE's conv GEMMs in FP32 instead of TF32
//   OSP_GEMM_AUTOTUNE=0              no cuBLASLt algorithm search (the heuristic's first pick)
//   OSP_CUDNN_AUTOTUNE=off|attention|all  which cuDNN graphs time every engine config the heuristics
//                                    offer (up to 8) on a shape's first call and keep the fastest,
//                                    remembered in the tuning cache: none, the attention graphs
//                                    (bf16 SDPA forward, forward+stats, backward) or those and the
//                                    VAE's convolutions (default all; session 14 on an H100: the
//                                    480P decode 3.92 -> 3.02 s, attention's pick unchanged)
//   OSP_TUNING_CACHE=path|off         where autotuning results persist across processes (default
//                                    $XDG_CACHE_HOME/osp/tuning.json or ~/.cache/osp/tuning.json;
//                                    ops/tuning_cache.h); off: tune again in every process
//   OSP_CUDA_ALLOCATOR=buckets|blocks  the CUDA caching allocator (core/block_allocator.h)
//   OSP_ULYSSES_CHUNKS=N             Ulysses all-to-alls split into N head chunks (a divisor of
//                                    each rank's heads; checked where used)
//   OSP_NORM_BACKWARD=warp|block     the CUDA norm backward kernels: one warp per row (default; rows
//                                    up to 6144 elements, longer rows take the block kernel) or one
//                                    block per row (the kernel before session 10; 1.3B shapes on an
//                                    H100: RMSNorm 0.62 vs 0.90 ms, LayerNorm 0.70 vs 0.99 ms)
//   OSP_DETERMINISTIC=1              training's attention backward on osp's own kernel, which has
//                                    no atomics (the same gradient bits every run); cuDNN's backward
//                                    differs run to run (ops/backward.h: set_deterministic_backward)
//   OSP_ATTN_BWD_CHUNKS=auto|N       cuDNN attention backward with few keys: its queries as N chunks
//                                    in one batch (default auto: where it fills the SMs; 1: never;
//                                    the 1.3B cross-attention backward on an H100 1.04 vs 1.44 ms)
//   OSP_FUSED_NORMS=0                the CUDA fused norm ops (ops::rms_norm_rope, add_gated_layer_norm_*)
//                                    run as the two ops they replace (default on; for A/B runs)
//   OSP_PROFILE=1                    the DiT stage profiler on from the start (model/profile.h)
//   OSP_CUDA_GRAPHS=1                the DiT's inference forward as a CUDA graph wherever it can
//                                    (model/dit.h: DiTOptions::cuda_graphs)
//   OSP_VERBOSE=1                    verbose logging from the start (the same channel as the
//                                    CLI's --verbose: core/log.h's level)
//   OSP_FP8_SDPA_PROBE=1, OSP_FP8_SDPA_VARIANT=i, OSP_FP8_SDPA_CONFIG=i
//                                    cuDNN FP8 attention: try every graph variant / pin one
//                                    variant / one engine config (benchmarks)
// "" counts as unset; for the switches "0" is off and anything else on.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace osp {

struct EngineSettings {
  enum class Attention { Auto, Flash, Cudnn, Hopper };
  Attention attention = Attention::Auto;
  int hopper_key_tile = 0;      // 0: the kernel's default
  int hopper_fp8_key_tile = 0;  // 0: the kernel's default
  std::string conv3d = "cudnn";
  bool vae_fp32 = false;
  bool gemm_autotune = true;
  std::string cudnn_autotune = "all";  // off | attention | all
  std::string tuning_cache;            // "": the default path; "off": none
  std::string cuda_allocator = "buckets";
  int64_t ulysses_chunks = 0;  // 0: unset (one chunk)
  std::string norm_backward = "warp";
  int64_t attn_bwd_chunks = 0;  // 0: auto, 1: never chunked
  bool deterministic = false;
  bool fused_norms = true;
  bool profile = false;
  bool cuda_graphs = false;
  bool verbose = false;
  bool fp8_sdpa_probe = false;
  int fp8_sdpa_variant = -1;  // -1: any
  int fp8_sdpa_config = -1;   // -1: any
};

// The settings of an environment given by `get` (name → value or null). Throws osp::Error naming
// the variable and what it accepts.
EngineSettings read_engine_settings(const std::function<const char*(const char*)>& get);

// This process's settings (read_engine_settings(std::getenv) the first time; thread-safe).
const EngineSettings& engine_settings();

}  // namespace osp
