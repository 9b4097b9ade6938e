// Training checkpoints: one folder per save, loadable by `osp generate` as a model folder and by
// `osp train --resume` as the full training state.
//
//   OUT/checkpoint-00000100/
//     config.json                          the DiT config (Wan keys + OSP-Next keys)
//     diffusion_pytorch_model.safetensors  the DiT in Wan names and checkpoint shapes: the fp32
//                                          master weights rounded to bf16
//     <linked model files>                 symlinks to the base model's umT5 / VAE / tokenizer
//                                          (when training started from a model folder), so the
//                                          folder is a complete Wan model for `osp generate`
//     optimizer.safetensors                "master.<name>", "m.<name>", "v.<name>" (F32, checkpoint
//                                          shapes); metadata: step and the AdamW settings
//     ema.safetensors                      "<name>" F32 EMA weights (when EMA is on); metadata decay
//     ema/                                 the EMA weights as a model folder (config.json, bf16
//                                          diffusion_pytorch_model.safetensors, the same links)
//     trainer_state.json                   step, seed, data position, clipper state (doubles as
//                                          hex floats, exact), skipped samples, the run config
//     CHECKPOINT_COMPLETE                  written LAST: the file list with byte sizes
//   OUT/latest                             the name of the newest complete checkpoint folder
//
// Atomicity: every file is written with io::write_file_atomic inside a temporary folder, the
// marker last; the folder then takes its place with io::write_dir_atomic, and only then is
// `latest` replaced (atomically). A write killed or failing at any point leaves the previous
// checkpoints and `latest` as they were. load_checkpoint refuses a folder without the marker or
// whose files do not have the sizes the marker lists.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "osp/model/dit_config.h"
#include "osp/train/adamw.h"
#include "osp/train/ema.h"
#include "osp/train/grad_clip.h"
#include "osp/train/latent_dataset.h"

namespace osp::train {

struct TrainerState {
  int64_t step = 0;  // completed optimizer steps
  uint64_t seed = 0;
  DataPosition data;
  GradClipState clip;
  int64_t skipped_samples = 0;
  std::string run_config;  // the training settings as JSON (informational; resume compares)
};

// The unsharded optimizer state a checkpoint holds: one slot per parameter of `params` (master,
// m, v in the value's shape), `steps` completed steps. From an AdamW (of()), or assembled from
// ShardedAdamW::gather_state() — both give the same files.
struct OptimizerState {
  const ParamTable* params = nullptr;
  const std::vector<AdamW::Slot>* slots = nullptr;
  int64_t steps = 0;
  AdamWConfig config;
  static OptimizerState of(const AdamW& a) { return {&a.params(), &a.slots(), a.steps(), a.config()}; }
};

struct CheckpointSave {
  std::string model_config_json;  // config.json text
  OptimizerState optimizer;       // params and slots must be set
  // EMA weights, one F32 tensor per parameter (null or empty: no ema.safetensors), and its decay.
  const std::vector<Tensor>* ema = nullptr;
  double ema_decay = 0;
  TrainerState state;
  // Extra files of the model folder: (name inside the checkpoint, absolute source path) — linked.
  std::vector<std::pair<std::string, std::string>> links;
  // After the save, remove older complete checkpoint-* folders beyond the newest keep_last
  // (0 keeps all).
  int64_t keep_last = 0;
  // LoRA fine-tuning (the parameters are "<module>.lora_A.weight" / ".lora_B.weight" adapters of a
  // frozen base): the checkpoint holds lora.safetensors (model/lora.h's format, from the masters;
  // `osp generate --model BASE --lora FILE` loads it) and, with an EMA, lora_ema.safetensors —
  // instead of a model folder (no config.json, model file, ema/ or links).
  bool lora = false;
  double lora_alpha = 0;
  std::string lora_base;  // the base model folder (metadata)
};

// config.json text for a DiT config (Wan keys; skiparse keys for dual_end).
std::string dit_config_json(const model::DiTConfig& cfg);

// "checkpoint-%08lld".
std::string checkpoint_name(int64_t step);

// Writes OUT/checkpoint-<step>/ and then OUT/latest (see the header comment). OUT is created when
// missing. Returns the checkpoint folder path.
std::string save_checkpoint(const std::string& out_dir, const CheckpointSave& c);

// A checkpoint folder from `path`: itself when it holds CHECKPOINT_COMPLETE, else the folder named
// by path/latest. Throws an osp::Error that says what is missing.
std::string resolve_checkpoint(const std::string& path);

// Loads the state in `dir` into `opt` (masters, moments, step; values refreshed from the masters)
// and `ema` (when not null and enabled). Checks the marker, the file sizes, and that the saved
// parameters are exactly the optimizer's (names and checkpoint shapes), listing every
// difference. Returns the trainer state.
TrainerState load_checkpoint(const std::string& dir, AdamW& opt, Ema* ema);
// The same checks, into caller-allocated tensors: `slots` (one per parameter of `params`, F32 in
// the value's shape) and, when not null, `ema` (one F32 tensor per parameter); `*steps` gets the
// optimizer's completed steps. Used by the sharded optimizer, which keeps only its shard.
TrainerState load_checkpoint(const std::string& dir, const ParamTable& params,
                             std::vector<AdamW::Slot>& slots, int64_t* steps,
                             std::vector<Tensor>* ema);

// Reads only trainer_state.json (for --resume before the model is built).
TrainerState read_trainer_state(const std::string& dir);

}  // namespace osp::train
