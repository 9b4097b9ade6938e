// The flow-matching training loop behind `osp train` (osp-next-spec §6.1, §7), independent of the
// network: anything that exposes a ParamTable and computes the loss and its gradients
// (TrainModel) can be trained; train/dit_train_model.h adapts the DiT.
//
// One optimizer step s (0-based), batch B from the latent cache (one latent size per batch):
//   σ_i       TimestepSampler(seed).sigma(s, i, H, W)  (logit-normal, static or dynamic shift)
//   ε_i       TimestepSampler(seed).noise(shape, s, i)
//   context_i the sample's umT5 embedding, or the empty-prompt one with probability
//             caption_dropout (drop_caption(s, i)); zero-padded to the longest in the batch
//   loss      model.loss_backward(x0, ε, σ, context)   (grads accumulate into the zeroed table)
//   stop      on a NaN/Inf loss or gradient norm: nothing is saved, the error names the last
//             good checkpoint
//   clip      GradClipper (none | fixed:X | adaptive)
//   update    AdamW.step(lr = schedule.at(s)); EMA.update(masters)
//   log       one JSON line per step to OUT/train_log.jsonl: step, loss, grad_norm, clipped,
//             lr, sigma (batch mean), tokens_per_s, peak_mem_mb, peak_reserved_mb, seconds; a progress line on stderr
//   save      every save_every steps and at the end (train/checkpoint.h)
// Everything random is a pure function of (seed, s, i) and the data order a pure function of
// (seed, epoch), so a run resumed from a checkpoint repeats the uninterrupted run's losses
// bit for bit on the CPU with the same thread count (on CUDA the backward's atomics make even two
// uninterrupted runs differ by ~1e-5 relative). Ctrl-C (core/interrupt.h) is honoured between
// steps: a checkpoint is saved and run_training returns with `interrupted` set (exit code 130).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "osp/core/param.h"
#include "osp/core/tensor.h"

namespace osp::train {

struct ParallelGroups;  // train/data_parallel.h

class TrainModel {
 public:
  virtual ~TrainModel() = default;
  virtual ParamTable parameters() = 0;
  virtual void zero_grad() = 0;
  // x0, noise [B, C, F, H, W] (CPU F32), sigma B values, context [B, L, D] (CPU F32). Returns the
  // mean squared error of the velocity over every element; gradients ACCUMULATE into the table.
  virtual double loss_backward(const Tensor& x0, const Tensor& noise, const std::vector<float>& sigma,
                               const Tensor& context) = 0;
  // config.json of the model folder a checkpoint holds.
  virtual std::string config_json() const = 0;
  // Tokens one latent of [C, F, H, W] gives (for tokens/s).
  virtual int64_t tokens(const Shape& latent_shape) const = 0;
  virtual Device device() const = 0;

  // ---- several ranks (defaults: one). A step's global batch of `batch` samples is cut into
  // dp_size() contiguous slices (train/data_parallel.h dp_batch_slice); this rank computes the
  // loss of its slice, with every random draw indexed by the sample's GLOBAL index, so any rank
  // count trains on the same samples, σ and noise as one rank.
  virtual int dp_rank() const { return 0; }
  virtual int dp_size() const { return 1; }
  // After loss_backward: makes every rank's gradients the single-device gradient of the mean
  // loss over the global batch (SP sum, DP mean).
  // With A accumulation micro-batches (their gradients summed by loss_backward) it also divides
  // by A, so the result is the gradient of the mean loss over the whole batch.
  virtual void reduce_gradients(int accum_steps);
  // Mean over the data-parallel ranks (the logged loss).
  virtual double dp_mean(double x) { return x; }
  // True on every rank when it is true on any (Ctrl-C consensus between steps).
  virtual bool any_rank(bool flag) { return flag; }
  // Only this rank writes checkpoints, the log and the progress line.
  virtual bool writes_outputs() const { return true; }
  // The rank mesh, for the sharded optimizer (train/sharded_adamw.h); null: one rank, no mesh.
  // With sharding the trainer reduces the gradients itself (reduce-scatter into the shard) and
  // does not call reduce_gradients.
  virtual const ParallelGroups* parallel_groups() const { return nullptr; }
  // Gradient sharding (--shard-gradients): the parameter groups whose backward runs as one piece,
  // one after another — [first, last) ranges of parameters() in table order (the DiT: its blocks)
  // — and the hooks loss_backward calls around group g's backward (a group's gradient tensors may
  // be undefined outside them). Empty: unsupported.
  virtual std::vector<std::pair<size_t, size_t>> gradient_groups() { return {}; }
  virtual void set_gradient_hooks(std::function<void(size_t)> before, std::function<void(size_t)> after) {
    (void)before;
    (void)after;
  }
  // Weight sharding (--shard-weights): the hooks loss_backward calls around group g's FORWARD
  // (the same groups as gradient_groups(); a group's values may be undefined outside them and
  // outside the gradient hooks). Returns false when the model cannot (then no weight sharding).
  virtual bool set_forward_hooks(std::function<void(size_t)> before, std::function<void(size_t)> after) {
    (void)before;
    (void)after;
    return false;
  }
  // Stage profiling of loss_backward (TrainOptions::profile): on/off, clear what was measured, and
  // the per-step table since the last reset ("" when the model has no profiler).
  // LoRA fine-tuning: the parameters are adapters ("<module>.lora_A.weight" / ".lora_B.weight")
  // of a frozen base with this alpha (checkpoints then hold lora.safetensors); 0: not LoRA.
  virtual double lora_alpha() const { return 0; }
  virtual void set_profiling(bool on) { (void)on; }
  virtual void profile_reset() {}
  virtual std::string profile_table() { return ""; }
};

// Every setting of `osp train` (flags and --config JSON use the same names, with '-' for '_').
struct TrainOptions {
  // model (the CLI builds the TrainModel from these)
  std::string model;          // model folder to fine-tune
  bool from_scratch = false;  // random init from the seed and config_model
  std::string config_model;   // DiT config.json for --from-scratch
  std::string attention = "full";  // full | hybrid
  std::string quant = "none";      // none | hif8
  std::string device = "cpu";
  // data
  std::string data;
  int64_t batch = 1;
  int64_t grad_accum = 1;  // the batch is run as grad_accum micro-batches (same gradient, less memory)
  bool skip_bad_samples = false;
  double caption_dropout = 0.1;
  // objective
  std::string shift = "dynamic";  // "dynamic" or a static shift value > 0
  // optimisation
  int64_t steps = 1000;
  double lr = 2e-5;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-15;  // spec §7: eps 1e-15
  int64_t warmup = 0;
  std::string schedule = "constant";  // constant | cosine
  std::string clip = "adaptive";      // none | fixed:X | adaptive
  std::string ema = "off";            // off | a decay in [0, 1) (the reference's GPU default: 0.9999)
  // parallelism (launch with mpirun -np N): sp = none | ssp | ulysses over groups of sp_size
  // ranks (0: all ranks), data parallelism over the rest
  std::string sp = "none";
  int64_t sp_size = 0;
  int64_t dp = 0;  // data-parallel size (0: ranks / sp_size); ranks = SP × DP
  // AdamW state sharded over the ranks (ZeRO-1, train/sharded_adamw.h): each of the S·D ranks
  // keeps 1/(S·D) of the fp32 masters, m and v; gradients are reduce-scattered into the shard and
  // the updated weights all-gathered. auto = on with several ranks; on forces it (1 rank too).
  // Checkpoints are the same files either way (unsharded layout).
  std::string shard_optimizer = "auto";  // auto | on | off
  // Also shard the gradients (ZeRO-2; needs the sharded optimizer and a model with gradient
  // groups): a block's full gradients exist only during its backward, then are reduce-scattered
  // into the shard and released.
  bool shard_gradients = false;
  // Also shard the weights (ZeRO-3 / FSDP-style; implies shard_gradients): outside a block's
  // forward and backward each rank holds only its shard of the block's weights (the F32 master
  // it keeps anyway); the block's compute copy is all-gathered before its forward and again
  // before its backward and released after each. The parameters outside the blocks (embeddings,
  // head) stay replicated. On a normal return from run_training (also after Ctrl-C) every value
  // is resident again; after an error the blocks' values may be left released.
  bool shard_weights = false;
  // Unsharded optimizer only: keep every block's F32 gradient allocated between steps. By
  // default (false) a block's gradient is allocated when its backward starts and released after
  // the optimizer step (PyTorch's zero_grad(set_to_none)), so at the start of the backward, when
  // every block's saved input is still held, no block gradient is: the inputs are freed as the
  // gradients appear. The same numbers either way.
  bool keep_gradients = false;
  // Keep every block's self-attention output and log-sum-exp from the forward, so the activation
  // checkpointing recompute skips the attention core (DiTOptions::keep_attention): faster when
  // attention dominates (video sizes), at act [n, d] + F32 [H, n] more memory per block.
  bool keep_attention = false;
  // Deterministic gradients on CUDA (ops::set_deterministic_backward): the attention backward on
  // osp's own kernel, which has no atomics, instead of cuDNN's, so two runs of the same data and
  // seed give the same bits (slower: that backward is ~2.7× cuDNN's time at 1.3B, docs/PERF.md).
  bool deterministic = false;
  // The FFN's tape in row chunks (DiTOptions::ffn_chunks; 0/1 off): a block's two [rows, ffn]
  // activations and the FFN backward's two gradient buffers shrink to one chunk's rows, for one
  // more fc1 GEMM per block in the backward. Unquantised training only.
  int64_t ffn_chunks = 0;
  // The checkpointed block inputs in pinned host memory instead of on the device
  // (DiTOptions::offload_block_inputs): copied out in the forward and back in the backward on a
  // copy stream beside the compute; the same gradients, F32 [n, d] per block less on the GPU.
  bool offload_checkpoints = false;
  // Time every stage of the step (forward, checkpoint recompute, backward by layer, on CUDA with
  // events) from step 2 on, and write the per-step table to <out>/profile.txt at the end (and
  // print it). Adds a device synchronisation per step's report, not per stage.
  bool profile = false;
  // --attention hybrid on a full-attention (Wan2.1) config: how many full blocks the dual-end
  // layout keeps (0 = OSP-Next's 8; train/dit_train_model.h).
  int64_t full_blocks = 0;
  // LoRA fine-tuning instead of every weight (rank > 0): the base frozen, PEFT-style adapters on
  // lora_targets (comma-separated block linears; "" = self/cross-attention q, k, v, o) trained;
  // checkpoints hold lora.safetensors for `osp generate --lora`. The CLI builds the model with it.
  int64_t lora_rank = 0;
  double lora_alpha = 64;
  std::string lora_targets;
  // Unsharded optimizer: keep no compute copy of the blocks' weights between uses — a block's copy
  // (bf16 on CUDA, F32 on the CPU) is made from its fp32 master before its forward and before its
  // backward and freed after each (what --shard-weights does at one rank, without the sharded
  // optimizer's persistent gradient shard). Saves 2 bytes per block parameter on CUDA (4 on the
  // CPU) for two casts of each block's weights per micro-step. The same numbers.
  bool transient_weights = false;
  // Several ranks, unsharded optimizer: reduce each block's gradients as soon as its backward ends
  // (Communicator::all_reduce_start over the world: NCCL on a side stream, MPI non-blocking),
  // overlapping the reduction with the earlier blocks' backward; the parameters outside the blocks
  // go through the bucketed GradientReducer after the backward. false: everything after it.
  bool overlap_reduction = true;
  // Seconds a rank waits in one collective for the others before every rank ends with an error
  // (a rank died or stopped answering; parallel::set_collective_timeout, applied by the CLI); 0 =
  // wait forever. Not applied while the other ranks wait for rank 0 to write a checkpoint.
  double collective_timeout = 600;
  uint64_t seed = 0;
  // outputs
  std::string out;
  int64_t save_every = 0;  // 0: only at the end (and on Ctrl-C)
  int64_t keep = 0;        // keep the newest N checkpoints (0: all)
  std::string resume;      // a checkpoint folder, or a previous --out folder (its `latest`)
  bool quiet_progress = false;

  // Range/enum checks with the field named (throws osp::Error).
  void validate() const;
  // The sequence-parallel group size on `ranks` ranks from sp, sp_size and dp (1 for sp none);
  // throws when they do not multiply to the rank count.
  int64_t sp_group_size(int64_t ranks) const;
  // Reads a --config JSON object: every key must be a known field (same names as above, '-' or
  // '_'), with the right type; unknown keys are errors.
  void apply_json(const std::string& json_text, const std::string& source);
  std::string to_json() const;  // the settings that define the run (stored in checkpoints)
};

struct StepLog {
  int64_t step = 0;  // 1-based: the number of completed steps
  double loss = 0, grad_norm = 0, lr = 0, sigma = 0;
  bool clipped = false;
  // peak_mem_mb: CUDA — what live tensors asked for (PyTorch's max_memory_allocated); CPU — the
  // process's VmHWM. peak_reserved_mb: CUDA — what the caching allocator held from the driver
  // (PyTorch's max_memory_reserved); CPU — 0.
  double tokens_per_s = 0, peak_mem_mb = 0, peak_reserved_mb = 0, seconds = 0;
  // Where `seconds` went: batch assembly on the host (reading, noise, stacking), forward +
  // backward (+ gradient reduction; the device is synchronised before the clock is read), and
  // the rest (clipping, optimizer, EMA, logging) — for finding per-step overhead.
  double data_s = 0, fwd_bwd_s = 0, opt_s = 0;
};

struct TrainResult {
  int64_t steps_done = 0;  // completed optimizer steps in total (including resumed ones)
  bool interrupted = false;
  std::vector<StepLog> log;  // the steps run by this call
  std::string last_checkpoint;
  // The most bytes of the blocks' compute copies (the gradient groups' values) this rank held at
  // once during the run (the sharded optimizer's accounting: all blocks with --shard-gradients,
  // one with --shard-weights); −1 when not tracked (without either flag).
  int64_t peak_block_weight_bytes = -1;
  std::string profile;  // TrainOptions::profile: the per-step stage table ("" otherwise)
};

struct TrainHooks {
  // Called after each step (tests stop a run by calling set_interrupted(true) here).
  std::function<void(const StepLog&)> on_step;
  // Extra model files linked into every checkpoint (umT5, VAE, tokenizer of the base model).
  std::vector<std::pair<std::string, std::string>> checkpoint_links;
};

// Checks everything that can be checked before a model is loaded (settings, the data cache and its
// empty-prompt embedding when caption dropout is on, the output folder, the checkpoint to resume)
// so a bad input fails in a second rather than after loading the weights. run_training calls it.
// `writer` false (ranks other than 0): nothing is created.
void preflight(const TrainOptions& opt, bool writer = true);

// Whether the run's optimizer state is sharded — --shard-optimizer on, or auto with several ranks
// unless the model trains LoRA adapters (their state is small) — after checking that the memory
// options fit together (gradient/weight sharding need it; transient weights and LoRA exclude it).
// The one rule run_training and `osp train --dry-run` follow. Throws osp::Error naming the flags.
bool resolve_sharded_state(const TrainOptions& o, bool several_ranks, bool lora);

// Runs (or resumes) training. Errors are osp::Error with the reason (bad data, NaN loss, ...).
TrainResult run_training(const TrainOptions& opt, TrainModel& model, const TrainHooks& hooks = {});

}  // namespace osp::train
