// Text-to-video: clean + tokenize → umT5 → (encoder released) → DiT sampling loop with batched
// CFG (cond + uncond as batch 2; with cfg_parallel one branch per rank group) → (DiT released)
// → Wan-VAE decode → MP4 or PNG frames.
// (wan-spec §1, §6; osp-next-spec §6.)
//
// Everything the user can get wrong is checked by validate_options() / plan_generation()
// BEFORE any weights are read: sizes (multiples of 16), frames (4n+1), empty prompt, sampler
// settings, output path (kind, folder, existing files), missing model files, memory fit.
// Outputs are atomic (io/atomic_file.h): an existing output is replaced only with
// `overwrite`, and a failed or interrupted run leaves no partial file.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/pipeline/memory_plan.h"
#include "osp/pipeline/model_dir.h"
#include "osp/sample/step_cache.h"

namespace osp::model {
struct Lora;
}

namespace osp::pipeline {

// The Wan2.1 default negative prompt (Chinese, verbatim), used when none is given.
const std::string& default_negative_prompt();

struct GenerateOptions {
  std::string prompt;
  std::string negative_prompt;       // "" → default_negative_prompt() unless no_negative
  bool no_negative = false;          // use an empty negative prompt
  int width = 1280, height = 720;    // pixels, multiples of 16
  int frames = 81;                   // 4n + 1
  int steps = 50;
  std::string sampler = "unipc";     // unipc | euler
  double shift = -1;                 // < 0: 5.0 for unipc (Wan2.1), 7.0 for euler (OSP-Next)
  float guidance = 5.0f;             // 1 = no CFG (one forward per step)
  int64_t seed = -1;                 // < 0: random (printed)
  // --noise FILE: the initial latent from a .safetensors file (load_noise) instead of the
  // seeded Philox noise — e.g. the reference's torch.randn, to reproduce its video; "" = seeded.
  std::string noise;
  std::string attention = "auto";    // auto (the checkpoint's) | full | hybrid
  std::string quant = "none";        // none | hif8 | fp8
  std::string sp = "none";           // none | ulysses | ssp (launch with mpirun)
  // CFG parallelism (launch with mpirun -np 2S): ranks [0, S) run the conditional branch, ranks
  // [S, 2S) the unconditional one, each branch over its S ranks with `sp` (S = 1: no SP); the
  // paired ranks exchange their velocities every step and take the same sampler step.
  bool cfg_parallel = false;
  std::string device = "cpu";        // cpu | cuda | cuda:N
  bool offload = false;              // umT5 on the CPU; weights stay on the host between stages
  // DiT memory mode (pipeline/memory_plan.h): none (weights resident: bf16, or 8 bits with
  // --quant hif8 when needed) | blocks (block streaming from pinned host memory) | auto (the plan
  // picks the first mode that fits max_vram_gib or the device's free memory).
  std::string dit_offload = "auto";
  // GPU memory limit in GiB (0 = none): the plan must fit it, and the CUDA caching allocator
  // refuses to go beyond it (core/device.h set_cuda_memory_limit; emulates a smaller card).
  double max_vram_gib = 0;
  std::string out = "video.mp4";     // *.mp4 → MP4, a folder (existing or ending in /) → PNGs
  bool overwrite = false;            // replace an existing output (else refused before any work)
  int fps = 16;
  // Step caching (sample/step_cache.h): "none" | "teacache:THRESH" | "magcache:THRESH[:K]"
  // (THRESH ≥ 0; 0 caches nothing). MagCache reads the model folder's magcache.json.
  std::string cache = "none";
  // MagCache calibration: measure this (uncached, one-process) run's residual magnitude ratios and
  // write them to this file (sample::MagCacheRatios; <model>/magcache.json is where --cache
  // magcache reads them); "" = none.
  std::string cache_calibrate;
  size_t vae_tile_budget = 0;        // bytes for VAE decode activations (0 = auto)
  std::vector<std::string> loras;    // "FILE" or "FILE:SCALE" (model::parse_lora_spec), merged in order
  bool no_output = false;            // write nothing (out is ignored): the frames are only returned
};

// Parses "1280x720" (or "1280*720", the Wan spelling) into width, height.
void parse_size(const std::string& s, int& width, int& height);

// Checks every option that does not need the model (throws osp::Error, actionable). With
// cfg_parallel it also checks the launcher's rank count (cfg_parallel_branch_ranks).
void validate_options(const GenerateOptions& o);

// Warns (log_warn) about valid settings that do nothing on the chosen device: --offload and
// --dit-offload blocks with --device cpu. Once per command line / Python Pipeline, not per job.
void warn_ineffective_settings(const GenerateOptions& o);

// CFG parallelism over `ranks` ranks with sequence parallelism `sp`: the ranks per branch
// S = ranks / 2. Throws (actionable) when the ranks do not split into two branches (fewer than 2,
// odd) or when S > 1 ranks per branch have no --sp to share the work. (Guidance 1, which has no
// unconditional branch, is refused by validate_options.)
int cfg_parallel_branch_ranks(int ranks, const std::string& sp);

// What --out names: an MP4 file (".mp4", any case) or a folder of PNG frames (ends in '/' or is
// an existing folder). Anything else (another or no extension) is an osp::Error.
enum class OutputKind : uint8_t { Mp4, PngFolder };
OutputKind output_kind(const std::string& out);

// Latent geometry for the options: [16, T, h, w] and the DiT token count.
struct Geometry {
  int64_t T = 0, h = 0, w = 0, tokens = 0;
};
Geometry geometry(const GenerateOptions& o, int patch_h = 2, int patch_w = 2);

// The memory plan (MemoryPlan) is pipeline/memory_plan.h.

// A LoRA of the plan: read and checked against the DiT's shapes in plan_generation (before
// any weight is loaded), merged into the DiT weights when the DiT loads.
struct PlannedLora {
  std::string path;
  double scale = 1.0;
  std::shared_ptr<const model::Lora> lora;
};

struct Plan {
  ModelFiles files;
  std::vector<PlannedLora> loras;
  GenerateOptions opt;  // with defaults resolved (shift, seed, negative prompt)
  Geometry geo;
  MemoryPlan mem;
  // Rough sampling time (DiT FLOPs per step at an assumed throughput of the device), so that a
  // run that would take hours says so before it starts; 0 when unknown.
  double est_sampling_s = 0;
  std::string est_basis;  // how the estimate was made, for the warning
  std::string dit_summary;
  std::vector<std::string> block_kinds;  // per block: full/token/group
  Tensor noise;  // --noise FILE's latent, read and checked by the plan (load_noise); undefined: seeded
  // --cache magcache:...: the model folder's calibration, read and checked by the plan
  std::shared_ptr<const sample::MagCacheRatios> mag_ratios;
};

// --noise FILE: the initial latent [16, T, h, w] of geometry g from a .safetensors file — its
// only tensor, or the one named "noise" when it holds several; shape [16, T, h, w] or
// [1, 16, T, h, w], dtype F32, BF16 or F16, every value finite. Returns a contiguous F32
// [16, T, h, w] CPU tensor. Throws osp::Error naming the file and what is wrong (and, for a
// shape mismatch, the size and frames the file's latent fits).
Tensor load_noise(const std::string& path, const Geometry& g);

// validate_options + detect_model_dir + config + memory check. Throws before any work.
Plan plan_generation(const std::string& model_dir, const GenerateOptions& o);

struct GenerateResult {
  std::string out_path;
  int steps_done = 0;
  bool interrupted = false;               // Ctrl-C, SIGTERM in a server, or RunHooks::cancelled
  bool cancelled = false;                 // interrupted because RunHooks::cancelled said so
  std::string interrupted_stage;          // "text encoding", "sampling", "VAE decode", ...
  int64_t seed = 0;
  std::map<std::string, double> seconds;  // per stage: text, dit, vae, write
  int steps_cached = 0;                   // --cache: steps whose DiT blocks were skipped
  Tensor latent;                          // the final latent [16, T, h, w] F32 (on the compute device)
  Tensor rgb;                             // U8 [F, H, W, 3] (rank 0; undefined if interrupted)
};

// What a run reports while it works (RunHooks::on_progress), from the thread that runs it.
struct ProgressEvent {
  std::string stage;     // "model loading", "text encoding", "sampling", "VAE decode", "writing"
  int step = 0;          // sampling: finished steps; VAE decode: decoded latent frames
  int steps = 0;         // of this many
  double elapsed_s = 0;  // since the run started
  double eta_s = -1;     // remaining time of the run (sampling, VAE estimated alike); < 0 unknown
};

struct RunHooks {
  std::function<void(const ProgressEvent&)> on_progress;
  // Polled at every safe point (between prompts, sampling steps, VAE chunks, written frames):
  // true stops the run there like Ctrl-C (nothing written; result.cancelled).
  std::function<bool()> cancelled;
};

// What the loaded models depend on; everything else is per request.
struct PipelineOptions {
  std::string device = "cpu";
  std::string quant = "none";
  std::string sp = "none";
  bool cfg_parallel = false;       // GenerateOptions::cfg_parallel (fixes the rank groups)
  bool offload = false;
  std::string dit_offload = "auto";  // GenerateOptions::dit_offload
  double max_vram_gib = 0;           // GenerateOptions::max_vram_gib (the allocator cap is process-wide)
  std::vector<std::string> loras;  // FILE[:SCALE], merged into the DiT weights once at load
  // true: the text encoder, DiT and VAE stay loaded between runs (a server, batches, Python);
  // false: each stage's weights leave the device before the next stage (one-shot `generate`,
  // the smallest peak memory).
  bool keep_loaded = true;
};

// A model folder with its text encoder, DiT (LoRAs merged) and VAE loaded once and kept (with
// keep_loaded) across runs. Components load on first use (or with preload()). Runs are
// serialized (one at a time; a second caller waits). Requests whose model-level settings
// (device, quant, sp, cfg_parallel, offload, dit_offload, max_vram, loras) differ from the
// pipeline's are refused. The DiT's weight mode (resident / 8-bit / streamed) is fixed by the
// plan of the run that loads it; later plans keep it (their CFG batching is still planned per
// request). preload() with dit_offload auto leaves the DiT to the first request.
class Pipeline {
 public:
  Pipeline(const std::string& model_dir, const PipelineOptions& po);
  // The pipeline a plan describes (its files, its checked LoRAs), for one-shot runs.
  Pipeline(const Plan& plan, bool keep_loaded);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // plan_generation for this pipeline's model, with its model-level settings filled in.
  Plan plan(GenerateOptions o) const;
  // Runs one request (see generate below). Throws osp::Error on failure; interruption and
  // cancellation come back in the result.
  GenerateResult run(const Plan& plan, const RunHooks& hooks = {});
  // Loads every component now (keep_loaded only).
  void preload();
  const ModelFiles& files() const;
  const PipelineOptions& options() const;
  std::string dit_summary() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The model-level settings of a request.
PipelineOptions pipeline_options(const GenerateOptions& o);

// Runs the whole pipeline once: Pipeline(plan, keep_loaded = false).run(plan).
// Rank 0 writes the output; other ranks only compute.
// A SIGINT (osp::install_interrupt_handler) stops every stage at its next safe point
// (osp::interruption_point: between text prompts, weight tensors, sampling steps, VAE chunks,
// written frames): the result then has interrupted = true and nothing is written. A latent
// that becomes NaN/Inf, or weights that hold NaN/Inf, stop the run with an osp::Error.
GenerateResult generate(const Plan& plan);

}  // namespace osp::pipeline
