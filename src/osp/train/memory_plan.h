// Per-GPU memory plan of a distributed DiT training step (for `osp train --dry-run`): what one
// rank holds for a model, a video size, SP × DP and the sharding choice — before anything is
// loaded. Exact for the parameter-sized lines (counted from DiT::expected_shapes) and the rows
// each rank holds (taken from the real SSP / Ulysses layout tables via a counting communicator);
// the activation lines are the block tape of model/dit_layers.cpp counted tensor by tensor for
// the unquantised path (an estimate: allocator slack and kernel workspaces are not included).
//
//   (LoRA fine-tuning: the weights line is the frozen base's compute copy + the adapters; the
//   gradients and optimizer lines are the adapters' only)
//   weights        compute copy of every parameter (bf16 on CUDA), on every rank; with weight
//                  sharding (ZeRO-3) only the parameters outside the blocks and the one block
//                  gathered for its forward / backward (the rest lives in the master shards)
//                  (also with transient weights on the unsharded optimizer: made from the
//                  master around the block's forward / backward)
//   gather buffer  weight sharding with prefetch: the staging of the next block's gather, in the
//                  compute dtype (bf16 on CUDA: the gathers move bf16)
//   gradients      F32 gradient of every parameter, on every rank (accumulated in the table);
//                  with gradient sharding only the parameters outside the blocks and one block;
//                  with released gradients (the unsharded trainer's default) the blocks' exist
//                  from their block's backward to the optimizer step, while the blocks' saved
//                  inputs are being freed: the line counts what exceeds those inputs at the
//                  backward's worst moment
//   optimizer      unsharded AdamW: F32 master + m + v, 12 bytes per parameter; ShardedAdamW
//                  (all SP × DP ranks): master (= the shard's value) + m + v + the shard's
//                  gradient, 16 bytes per parameter / ranks
//   checkpoints    activation checkpointing: every block's F32 input rows
//                  (without checkpointing: every block's tape instead; offloaded to the host: two
//                  staging buffers of one block's rows, the rows themselves in MemoryPlan::host)
//   kept attention with keep_attention: every block's self-attention output (act [n, d]) and
//                  log-sum-exp (F32 [H, n]), which the recompute reuses
//   block tape     one block recomputed with its tape for its backward (counted whole beside the
//                  largest scratch; the backward drops the FFN's and the cross-attention's entries
//                  once their stages are done, so the self-attention backward runs without them)
//   backward       the backward's scratch for one block (F32 gradients of its rows; the FFN's
//                  [n, ffn] gradients, or with ffn_chunks its four chunk buffers)
//   full-size      tensors of all N tokens every rank holds: the F32 patch embedding x_full
//                  (forward) and its gradient (scatter_input_backward), patches, head output
//   comm buffers   the largest exchange of a block (Ulysses backward: q, k, v, out, dout of the
//                  rank's rows stacked, send + receive) + the gradient reduction bucket (+ with
//                  gradient sharding on several ranks, one block's packed gradients in flight)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "osp/model/dit_config.h"
#include "osp/sparse/skiparse.h"

namespace osp::train {

struct MemoryPlanInput {
  model::DiTConfig cfg;
  // Latent grid before patchify: frames, height, width (a 1280×720×81 video with the Wan VAE:
  // 21 × 90 × 160; latent_from_video() converts).
  int64_t latent_t = 21, latent_h = 90, latent_w = 160;
  std::vector<sparse::BlockKind> kinds;  // one per block (empty: all full)
  int P = 2;
  std::string sp = "ssp";  // ssp | ulysses | none
  int sp_size = 1, dp_size = 1;
  int64_t batch = 1;       // samples per DP rank per micro-step
  bool sharded_state = true;
  bool sharded_gradients = false;  // ZeRO-2 (needs sharded_state)
  bool sharded_weights = false;    // ZeRO-3 (needs sharded_gradients)
  bool released_gradients = false; // unsharded: block gradients allocated in the backward (TrainOptions)
  bool prefetch_weights = true;    // weight sharding: the next block's gather staged (GPU)
  bool activation_checkpointing = true;
  bool keep_attention = false;  // with checkpointing: every block's self-attention o + lse kept
  // > 1: the FFN in row chunks (TrainOptions::ffn_chunks): no [n, ffn] activations in a tape; the
  // FFN backward's four chunk buffers act [n/ffn_chunks, ffn] in the backward scratch
  int ffn_chunks = 0;
  // with checkpointing: the block inputs in host memory (TrainOptions::offload_checkpoints); the
  // device holds two staging buffers of one block's input
  bool offload_block_inputs = false;
  bool transient_weights = false;  // unsharded: a block's compute copy exists only around its use
  // LoRA fine-tuning (> 0): the adapters' parameter count; the base is frozen (its compute copy
  // only), the adapters carry the gradients and the optimizer state (unsharded).
  int64_t lora_params = 0;
  int act_bytes = 2;       // 2: bf16 (CUDA), 4: F32 (CPU)
  size_t bucket_bytes = size_t(25) << 20;
  double capacity_bytes = 0;  // the device's memory (0: no verdict)
};

// Latent grid of a video of `frames` × height × width pixels under the Wan VAE (time stride 4,
// space stride 8): frames = 4n + 1 → n + 1 latent frames.
void latent_from_video(int64_t frames, int64_t height, int64_t width, MemoryPlanInput& in);

struct MemoryLine {
  std::string what;
  double bytes = 0;
  std::string note;
};

struct MemoryPlan {
  std::vector<MemoryLine> lines;
  double total = 0;
  int64_t params = 0, tokens = 0, rows_max = 0;  // parameters; N; most rows any rank holds
  double host = 0;  // pinned host memory beside the device's (offloaded checkpoints), bytes
  double capacity = 0;                           // the input's capacity_bytes
  bool fits = true;                              // total ≤ capacity (when given)
  // A fixed-width table (GiB) with the total and, when capacity was given, the verdict.
  std::string table() const;
};

// Throws osp::Error for layouts the SSP / Ulysses setup would refuse (rank counts, heads).
MemoryPlan plan_train_memory(const MemoryPlanInput& in);

}  // namespace osp::train
