// Mix-GRPO post-training of LoRA adapters (`osp rl`; osp-next-spec §8, hif8-mixgrpo-vbench §2,
// issue 15), independent of how the model stack is loaded: RlEnv gives the DiT (a frozen base
// with DiTOptions::train_base = false), the text encoder and the VAE decoder.
//
// One iteration it (0-based), P = prompts_per_iter groups of G = group samples:
//   prompts   slot q = it·P + k → epoch e = q / N, position q mod N of a Philox shuffle of the N
//             prompts keyed by (seed, e)
//   window    fixed: the first sde_steps steps (OSP-Next); sliding: MixGRPO's window
//             (sample::mixgrpo_sde_window(it, steps, sde_steps, window_stride, window_tau))
//   rollout   per sample s (global index in the iteration) with LoRA enabled, no gradients, on
//             the inference path: σ grid sample::sde_grid(steps, shift); x_0 = randn(seed_it,
//             stream 64·s); v = v_u + g·(v_c − v_u) (one batch-2 forward; the negative prompt is
//             Wan's default unless given); SDE steps inside the window with
//             ξ_i = randn(seed_it, 64·s + 1 + i), storing x_i, x_{i+1}, log π_old; ODE outside;
//             seed_it = seed + 0x9E3779B97F4A7C15·(it + 1)
//   reward    decode x_steps with the VAE; every reward k scores every sample; the logged reward
//             is Σ_k w_k·r_k
//   advantage per reward A_k = grpo_advantages(r_k, groups), A = Σ_k w_k·A_k (one reward:
//             the plain GRPO advantage); samples with A == 0 are dropped
//             (select_training_samples, num_batches 1)
//   update    the kept samples in chunks of train_batch (0: all in one chunk); per chunk: zero
//             the LoRA gradients; for every sample and stored SDE step j: v_u (LoRA on, no grad),
//             v_ref (LoRA off, CFG, no grad; only with kl_beta > 0), v_c with the training
//             forward, grpo_policy_loss → dL/dv_c (÷ chunk size) → DiT backward into the LoRA
//             gradients; then adaptive (or fixed/none) clipping, AdamW, EMA of the LoRA
//   log       one JSON line per iteration in OUT/rl_log.jsonl (RlIterationLog fields)
//   ranks     (RlEnv::groups, `mpirun -np N osp rl --sp ... --sp-size S`) the world is SP × DP
//             (train/data_parallel.h's mesh). DP rank d of D runs the prompt groups
//             k ∈ [d·P/D, (d+1)·P/D) (P % D == 0) — the same global sample indices, hence the same
//             noise, as one rank — and every SP rank of its group runs them with it (the forward
//             split by env.sp). The rewards are all-gathered over DP, so advantages and the kept
//             samples are computed identically everywhere; each rank back-propagates the kept
//             samples it rolled out, the LoRA gradients are summed over SP and DP (the chunk's
//             1/size uses the global chunk), and every rank takes the same optimizer step. The
//             held-out evaluation splits its samples over DP. World rank 0 alone writes the log
//             and checkpoints; Ctrl-C is honoured between iterations (agreed over the world).
//             One rank and D ranks give the same run up to float summation order.
//   save      every save_every iterations and at the end (and on Ctrl-C, between iterations):
//             OUT/checkpoint-<it>/ {lora.safetensors (PEFT names, alpha in the metadata),
//             lora_ema.safetensors, optimizer.safetensors (master./m./v.<name>), rl_state.json
//             (iteration, AdamW steps, seed, clipper state as exact hex floats, the run config),
//             CHECKPOINT_COMPLETE (written last)}, the folder put in place atomically, then
//             OUT/latest. The RNG state is (seed, iteration): every draw is a pure function of
//             them, so a resumed run repeats the uninterrupted one bit for bit (same device).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/train/data_parallel.h"
#include "osp/train/reward.h"

namespace osp::train {

// Every setting of `osp rl` (flags and --config JSON share the names, '-' or '_').
struct RlOptions {
  std::string model;          // base model folder (the CLI loads it)
  std::string device = "cpu";
  std::string quant = "none";  // none | hif8 (frozen HiF8 base, plain LoRA branch)
  std::string prompts;        // text file (one per line) or a clip dataset folder / manifest.jsonl
  std::string negative_prompt;  // "" → Wan's default negative prompt
  bool no_negative = false;
  std::string size = "832x480";
  int64_t frames = 81;
  // rollout
  int64_t group = 4;             // G samples per prompt
  int64_t prompts_per_iter = 1;  // P groups per iteration
  int64_t steps = 25;
  int64_t sde_steps = 10;
  std::string window = "fixed";  // fixed | sliding
  int64_t window_stride = 1, window_tau = 1;
  double shift = 1.0;
  double guidance = 5.0;
  std::string noise_level = "linear";  // linear (σ_t = t) | flow-grpo (η·sqrt(t/(1−t)))
  double eta = 0.7;
  // policy update
  double clip_range = 5e-3;
  double adv_clip = 5.0;
  double kl_beta = 0.004;
  int64_t train_batch = 0;  // samples per optimizer step (0 = all kept samples of the iteration)
  // The update's forward-with-tape keeps each block's self-attention output for the checkpoint
  // recompute (DiTOptions::keep_attention: the same numbers, fewer attention cores, more memory).
  bool keep_attention = false;
  // The update's attention backward on osp's own kernel (no atomics; TrainOptions::deterministic).
  bool deterministic = false;
  // ... and keeps the checkpointed block inputs in pinned host memory
  // (DiTOptions::offload_block_inputs: the same numbers, less device memory, copies beside the compute).
  bool offload_checkpoints = false;
  int64_t lora_rank = 32;
  double lora_alpha = 64;
  std::string lora_targets = "self_attn.q,self_attn.k,self_attn.v,self_attn.o,cross_attn.q,"
                             "cross_attn.k,cross_attn.v,cross_attn.o";
  double lr = 2e-5;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-15;
  std::string clip = "adaptive";  // none | fixed:X | adaptive
  std::string ema = "0.999";      // off | decay
  int64_t iterations = 100;
  // rewards
  std::vector<std::string> rewards;  // builtin:<kind>[:weight]
  std::string reward_cmd;            // external scorer (train/reward.h)
  double reward_cmd_weight = 1.0;
  double reward_timeout = 120;
  // held-out evaluation: mean reward of ODE samples (no SDE) at the start, every eval_every
  // iterations and at the end
  std::string eval_prompts;
  int64_t eval_every = 0;
  int64_t eval_samples = 1;  // per prompt
  uint64_t seed = 0;
  // outputs
  std::string out;
  int64_t save_every = 0;
  int64_t keep = 0;  // keep the newest N checkpoints (0: all)
  std::string resume;
  bool quiet_progress = false;
  // several ranks (the CLI; run_rl reads RlEnv::groups)
  std::string sp = "none";  // none | ssp | ulysses: sequence parallelism over sp_size ranks
  int64_t sp_size = 0;      // ranks per SP group (0: all ranks when sp != none); the rest is DP
  double collective_timeout = 600;  // seconds a collective may wait for the other ranks (0: none)

  void validate() const;  // throws osp::Error naming the field
  void apply_json(const std::string& json_text, const std::string& source);
  std::string to_json() const;
  int64_t width() const;
  int64_t height() const;
};

struct RlPrompt {
  std::string caption;
  bool has_attributes = false;
  ClipAttributes attributes;
  std::string attributes_json;
};
// A text file of prompts (one per line, blank lines and '#' comments skipped), a clip dataset
// folder (its manifest.jsonl) or a JSON-lines manifest with "caption" (+ "attributes").
std::vector<RlPrompt> load_rl_prompts(const std::string& path);

// The model stack for the loop.
struct RlEnv {
  model::DiT* dit = nullptr;  // bound with train = true, train_base = false
  parallel::SequenceParallel* sp = nullptr;
  // prompt → trimmed text embedding [L, text_dim] (F32; any device)
  std::function<Tensor(const std::string&)> encode;
  // latent [16, T, h, w] (F32) → video [3, F, H, W] F32 CPU in [-1, 1]
  std::function<Tensor(const Tensor&)> decode;
  std::string base_model;  // recorded in the LoRA metadata
  // Several ranks: the SP × DP mesh (sp above must then be built over groups->sp); null = one.
  const ParallelGroups* groups = nullptr;
};

struct RlIterationLog {
  int64_t iteration = 0;  // 1-based: iterations completed
  double reward_mean = 0, reward_std = 0;
  std::vector<std::pair<std::string, double>> reward_means;  // per reward (unweighted)
  double kl = 0, clip_fraction = 0, ratio_mean = 1, ratio_min = 1, ratio_max = 1;
  double loss = 0, grad_norm = 0, lr = 0;
  // Over the update's terms: the rms of the CFG velocity, and the relative rms gap between it and
  // the reference's (LoRA off; needs --kl-beta > 0, else 0). In the first iteration the LoRA adds
  // nothing, so ref_rel is the gap between the training and the inference forward: 0 on the CPU,
  // bf16 rounding amplified by the model on CUDA — what moves the first ratios away from 1.
  double v_rms = 0, ref_rel = 0;
  bool clipped = false;
  int64_t kept = 0, sde_begin = 0, sde_end = 0, optimizer_steps = 0;
  double seconds_rollout = 0, seconds_reward = 0, seconds_update = 0;
  // DiT calls (forward-only cost reference: a rollout forward costs what a generate step's
  // forward costs): rollout forwards, update forwards without gradients (v_u, reference), and
  // training forward+backward pairs.
  int64_t rollout_forwards = 0, update_forwards = 0, update_backwards = 0;
  double eval_reward = -1;  // held-out mean reward (−1: not evaluated this iteration)
  std::string json() const;
};

struct RlResult {
  int64_t iterations_done = 0;
  bool interrupted = false;
  std::vector<RlIterationLog> log;  // the iterations run by this call
  std::string last_checkpoint;
  double eval_start = -1, eval_end = -1;
};

struct RlHooks {
  std::function<void(const RlIterationLog&)> on_iteration;
};

// Checks options, prompts, output folder and resume point before any model is loaded.
void rl_preflight(const RlOptions& o);

// Builds the rewards of the options (builtin specs + the external command; videos for the
// external scorer under OUT/rollouts/).
std::vector<std::unique_ptr<Reward>> make_rewards(const RlOptions& o);

// Runs (or resumes) the RL loop; attaches a fresh LoRA (init_lora with the seed) to env.dit.
RlResult run_rl(const RlOptions& o, RlEnv& env, std::vector<std::unique_ptr<Reward>>& rewards,
                const RlHooks& hooks = {});

// Mean weighted reward of deterministic ODE samples (LoRA as attached now) for every prompt ×
// `samples` (noise from (seed, prompt index, sample)).
double rl_evaluate(const RlOptions& o, RlEnv& env, std::vector<std::unique_ptr<Reward>>& rewards,
                   const std::vector<RlPrompt>& prompts, uint64_t seed);

}  // namespace osp::train
