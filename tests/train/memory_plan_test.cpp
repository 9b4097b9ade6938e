// The per-GPU memory plan of distributed training (train/memory_plan.h): the 14B hybrid model at
// 1280×720×81 on 4 SSP ranks (printed: the table `osp train --dry-run` shows), the parameter-sized
// lines, the rows per rank from the real layouts, sharding and checkpointing, refused layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "osp/core/error.h"
#include "osp/model/dit.h"
#include "osp/model/lora.h"
#include "osp/train/memory_plan.h"

using namespace osp;

namespace {

const train::MemoryLine& line(const train::MemoryPlan& p, const std::string& what) {
  for (const auto& l : p.lines)
    if (l.what == what) return l;
  throw std::runtime_error("no line " + what);
}

train::MemoryPlanInput wan14b_720p(int sp_size) {
  train::MemoryPlanInput in;
  in.cfg = model::DiTConfig::wan_14b();
  train::latent_from_video(81, 720, 1280, in);
  in.kinds = sparse::plan_blocks(int(in.cfg.num_layers), "dual_end", 20);
  in.sp = "ssp";
  in.sp_size = sp_size;
  in.capacity_bytes = 139.0 * (1ull << 30);  // H200 (what the driver reports usable)
  return in;
}

// The 1.3B model on one GPU: no sequence parallelism, unsharded optimizer, bf16 activations.
train::MemoryPlanInput wan13b_one_gpu() {
  train::MemoryPlanInput in;
  in.cfg = model::DiTConfig::wan_1_3b();
  in.sp = "none";
  in.sharded_state = false;
  in.act_bytes = 2;
  return in;
}

// Parameters outside the blocks, and in one block (block 0), of a config.
struct ParamSplit {
  double outside = 0, block = 0;
};
ParamSplit param_split(const model::DiTConfig& cfg) {
  ParamSplit p;
  for (const auto& [n, s] : model::DiT::expected_shapes(cfg)) {
    if (n.rfind("blocks.0.", 0) == 0) p.block += double(shape_numel(s));
    if (n.rfind("blocks.", 0) != 0) p.outside += double(shape_numel(s));
  }
  return p;
}

}  // namespace

TEST(MemoryPlan, Wan14B720pOnFourSspRanks) {
  const train::MemoryPlanInput in = wan14b_720p(4);
  const train::MemoryPlan p = train::plan_train_memory(in);
  std::printf("14B hybrid, 1280x720x81, SSP 4 x DP 1, sharded AdamW, checkpointing:\n%s",
              p.table().c_str());
  int64_t params = 0;
  for (const auto& [n, s] : model::DiT::expected_shapes(in.cfg)) params += shape_numel(s);
  EXPECT_EQ(p.params, params);
  EXPECT_GT(p.params, 13'000'000'000);
  EXPECT_EQ(p.tokens, 21 * 45 * 80);
  // SSP: a rank holds one Skiparse sub-sequence (a quarter of the tokens, ± the padding skew)
  // or a quarter of the full sequence
  EXPECT_GE(p.rows_max, p.tokens / 4);
  EXPECT_LE(p.rows_max, p.tokens / 4 + p.tokens / 20);
  EXPECT_DOUBLE_EQ(line(p, "weights").bytes, 2.0 * double(params));
  EXPECT_DOUBLE_EQ(line(p, "gradients").bytes, 4.0 * double(params));
  EXPECT_DOUBLE_EQ(line(p, "optimizer state").bytes, 16.0 * double(params) / 4);  // master = value, m, v, grad
  // block inputs: one F32 row of dim per held row, every block
  EXPECT_GE(line(p, "block inputs").bytes, 40.0 * double(p.tokens) / 4 * 5120 * 4);
  EXPECT_LE(line(p, "block inputs").bytes, 40.0 * double(p.rows_max) * 5120 * 4);
  double sum = 0;
  for (const auto& l : p.lines) sum += l.bytes;
  EXPECT_DOUBLE_EQ(sum, p.total);
  // unsharded state: 12 bytes per parameter instead of 16 / 4, and it cannot fit
  train::MemoryPlanInput un = in;
  un.sharded_state = false;
  const train::MemoryPlan pu = train::plan_train_memory(un);
  EXPECT_DOUBLE_EQ(pu.total - p.total, 12.0 * double(params) - 16.0 * double(params) / 4);
  EXPECT_FALSE(pu.fits);
  // sharded gradients too: the F32 gradients of the parameters outside the blocks and of one block
  train::MemoryPlanInput zg = in;
  zg.sharded_gradients = true;
  const train::MemoryPlan pz = train::plan_train_memory(zg);
  std::printf("the same with sharded gradients (--shard-gradients):\n%s", pz.table().c_str());
  double outside = 0, block = 0;
  for (const auto& [n, s] : model::DiT::expected_shapes(in.cfg)) {
    if (n.rfind("blocks.", 0) != 0) outside += double(shape_numel(s));
    if (n.rfind("blocks.0.", 0) == 0) block += double(shape_numel(s));  // every 14B block is alike
  }
  EXPECT_DOUBLE_EQ(line(pz, "gradients").bytes, 4.0 * (outside + block));
  // less one block's packed gradients (+ its received quarter) in flight during the next block
  EXPECT_DOUBLE_EQ(p.total - pz.total, 4.0 * (double(params) - outside - block) - 4.0 * block * (1 + 1.0 / 4));
  // sharded weights too (--shard-weights): the bf16 compute copies of the parameters outside the
  // blocks and of the block in use, plus the bf16 staging of the prefetched next block
  train::MemoryPlanInput zw = zg;
  zw.sharded_weights = true;
  const train::MemoryPlan pw = train::plan_train_memory(zw);
  std::printf("the same with sharded weights (--shard-weights):\n%s", pw.table().c_str());
  EXPECT_DOUBLE_EQ(line(pw, "weights").bytes, 2.0 * (outside + block));
  EXPECT_DOUBLE_EQ(line(pw, "weight gather buffer").bytes, 2.0 * block);  // gathered in bf16
  EXPECT_DOUBLE_EQ(pz.total - pw.total, 2.0 * (double(params) - outside - block) - 2.0 * block);
  EXPECT_TRUE(pw.fits);
  zw.prefetch_weights = false;  // the CPU: blocking gathers through the reduction bucket
  EXPECT_DOUBLE_EQ(pz.total - train::plan_train_memory(zw).total, 2.0 * (double(params) - outside - block));
  zw.sharded_gradients = false;  // weight sharding needs gradient sharding
  EXPECT_THROW(train::plan_train_memory(zw), Error);
}

TEST(MemoryPlan, CheckpointingAndRanks) {
  train::MemoryPlanInput in = wan14b_720p(4);
  in.cfg = model::DiTConfig::wan_1_3b();
  in.kinds = sparse::plan_blocks(int(in.cfg.num_layers), "dual_end", 12);
  const auto with = train::plan_train_memory(in);
  in.activation_checkpointing = false;
  const auto without = train::plan_train_memory(in);
  EXPECT_GT(line(without, "block tapes").bytes, 10 * line(with, "block inputs").bytes);
  // more SP ranks: fewer rows per rank
  in.activation_checkpointing = true;
  in.sp_size = 2;
  const auto two = train::plan_train_memory(in);
  EXPECT_GT(two.rows_max, with.rows_max * 3 / 2);
  // DP ranks divide the sharded state further, not the activations
  in.dp_size = 4;
  const auto dp = train::plan_train_memory(in);
  EXPECT_DOUBLE_EQ(line(dp, "optimizer state").bytes, line(two, "optimizer state").bytes / 4);
  EXPECT_DOUBLE_EQ(line(dp, "block inputs").bytes, line(two, "block inputs").bytes);
}

TEST(MemoryPlan, RefusesWhatTheLayoutsRefuse) {
  train::MemoryPlanInput in = wan14b_720p(3);  // P² = 4 sub-sequences on 3 ranks
  EXPECT_THROW(train::plan_train_memory(in), Error);
  EXPECT_THROW(train::latent_from_video(80, 720, 1280, in), Error);
  in = wan14b_720p(1);
  in.sp = "none";
  EXPECT_NO_THROW(train::plan_train_memory(in));
  in.sp_size = 2;
  EXPECT_THROW(train::plan_train_memory(in), Error);
}

// Released gradients (the unsharded trainer's default): the blocks' gradients appear as the
// blocks' saved inputs are freed, so the gradients line is the parameters outside the blocks
// plus what the worst moment of the backward holds beyond the saved inputs — computed here by
// hand for the 1.3B model at two sizes: at 832×480×81 a block's F32 input (32,760 rows × 1536)
// outweighs its gradient (the worst moment is the last block's backward: every input + that
// block's gradient); at 64×64×9 the inputs are tiny (the worst moment is the first block's
// backward: every gradient + block 0's input).
TEST(MemoryPlan, ReleasedGradients) {
  train::MemoryPlanInput in = wan13b_one_gpu();
  const auto [outside, block] = param_split(in.cfg);
  const double L = double(in.cfg.num_layers), d = double(in.cfg.dim);
  for (const bool big : {true, false}) {
    SCOPED_TRACE(big ? "832x480x81" : "64x64x9");
    if (big) train::latent_from_video(81, 480, 832, in);
    else train::latent_from_video(9, 64, 64, in);
    in.released_gradients = false;
    const train::MemoryPlan kept = train::plan_train_memory(in);
    in.released_gradients = true;
    const train::MemoryPlan rel = train::plan_train_memory(in);
    const double input = double(kept.tokens) * d * 4;  // one block's saved F32 input
    EXPECT_DOUBLE_EQ(line(kept, "gradients").bytes, 4.0 * double(kept.params));
    const double want = big ? 4 * outside + 4 * block                       // last block's backward
                            : 4 * outside + L * 4 * block + input - L * input;  // first block's
    EXPECT_NEAR(line(rel, "gradients").bytes, want, 1e-6 * want);
    EXPECT_NEAR(kept.total - rel.total, line(kept, "gradients").bytes - line(rel, "gradients").bytes, 1.0);
  }
}

// --keep-attention: every block's self-attention output (act [n, dim]) and log-sum-exp (F32
// [heads, n]) in their own line; at a video size nothing else moves (the released gradients still
// fit in what the backward frees).
TEST(MemoryPlan, KeptAttention) {
  train::MemoryPlanInput in = wan13b_one_gpu();
  in.kinds = sparse::plan_blocks(int(in.cfg.num_layers), "dual_end", 12);
  in.released_gradients = true;
  train::latent_from_video(81, 480, 832, in);
  const train::MemoryPlan base = train::plan_train_memory(in);
  EXPECT_THROW(line(base, "kept attention"), std::runtime_error);
  in.keep_attention = true;
  const train::MemoryPlan kept = train::plan_train_memory(in);
  const double L = double(in.cfg.num_layers), n = double(kept.tokens);
  const double want = L * n * (double(in.cfg.dim) * 2 + double(in.cfg.num_heads) * 4);
  EXPECT_DOUBLE_EQ(line(kept, "kept attention").bytes, want);
  EXPECT_NEAR(kept.total - base.total, want, 1.0);
  EXPECT_DOUBLE_EQ(line(kept, "gradients").bytes, line(base, "gradients").bytes);
  EXPECT_DOUBLE_EQ(line(kept, "block inputs").bytes, line(base, "block inputs").bytes);
  // without checkpointing the tapes hold the attention anyway: nothing is added
  in.activation_checkpointing = false;
  const train::MemoryPlan tapes = train::plan_train_memory(in);
  EXPECT_THROW(line(tapes, "kept attention"), std::runtime_error);
}

// --ffn-chunks N: the block tape loses the FFN's two act [n, ffn] activations and the backward
// scratch trades its two [n, ffn] gradients for four act [⌈n / N⌉, ffn] chunk buffers; nothing
// else moves. The 1.3B model at 832×480×81 with 4 chunks: 1.64 GiB less.
TEST(MemoryPlan, FfnRowChunks) {
  train::MemoryPlanInput in = wan13b_one_gpu();
  in.released_gradients = true;
  train::latent_from_video(81, 480, 832, in);
  const train::MemoryPlan base = train::plan_train_memory(in);
  in.ffn_chunks = 4;
  const train::MemoryPlan ch = train::plan_train_memory(in);
  const double n = double(base.tokens), f = double(in.cfg.ffn_dim), a = 2;
  EXPECT_DOUBLE_EQ(line(base, "block tape").bytes - line(ch, "block tape").bytes, 2 * n * f * a);
  EXPECT_DOUBLE_EQ(line(base, "backward scratch").bytes - line(ch, "backward scratch").bytes,
                   2 * n * f * a - 4 * std::ceil(n / 4) * f * a);
  for (const char* same : {"weights", "gradients", "optimizer state", "block inputs"})
    EXPECT_DOUBLE_EQ(line(ch, same).bytes, line(base, same).bytes) << same;
  EXPECT_NEAR((base.total - ch.total) / double(1ull << 30), 1.64, 0.01);
  in.ffn_chunks = 1;  // 1 = off
  EXPECT_DOUBLE_EQ(train::plan_train_memory(in).total, base.total);
}

// --offload-checkpoints: the "block inputs" line becomes two staging buffers of one block's F32
// rows and the rows of every block move to MemoryPlan::host; the released gradients no longer
// replace inputs on the device, so at the backward's end every block's gradient is there (the
// gradients line holds them beyond the kept attention). The 1.3B model at 832×480×81, hybrid,
// ffn chunks, transient weights, attention kept: 3.0 GiB less.
TEST(MemoryPlan, OffloadedCheckpoints) {
  train::MemoryPlanInput in = wan13b_one_gpu();
  in.kinds = sparse::plan_blocks(int(in.cfg.num_layers), "dual_end", 8);
  in.released_gradients = true;
  in.transient_weights = true;
  in.keep_attention = true;
  in.ffn_chunks = 4;
  train::latent_from_video(81, 480, 832, in);
  const auto [outside, block] = param_split(in.cfg);
  const train::MemoryPlan base = train::plan_train_memory(in);
  in.offload_block_inputs = true;
  const train::MemoryPlan off = train::plan_train_memory(in);
  const double L = double(in.cfg.num_layers), rows = double(base.tokens) * double(in.cfg.dim) * 4;
  EXPECT_DOUBLE_EQ(base.host, 0.0);
  EXPECT_DOUBLE_EQ(off.host, L * rows);
  EXPECT_DOUBLE_EQ(line(base, "block inputs").bytes, L * rows);
  EXPECT_DOUBLE_EQ(line(off, "block inputs").bytes, 2 * rows);
  EXPECT_NE(line(off, "block inputs").note.find("pinned host memory"), std::string::npos);
  // the worst moment is block 0's backward: its kept attention + every block's gradient
  const double attn = double(base.tokens) * (double(in.cfg.dim) * 2 + double(in.cfg.num_heads) * 4);
  EXPECT_NEAR(line(off, "gradients").bytes + line(off, "kept attention").bytes, 4 * (outside + L * block) + attn, 1.0);
  for (const char* same : {"weights", "optimizer state", "kept attention", "block tape", "backward scratch"})
    EXPECT_DOUBLE_EQ(line(off, same).bytes, line(base, same).bytes) << same;
  EXPECT_NEAR(base.total - off.total,
              (L - 2) * rows - (line(off, "gradients").bytes - line(base, "gradients").bytes), 1.0);
  EXPECT_GT(base.total - off.total, 2.5 * double(1ull << 30));
  in.activation_checkpointing = false;  // no checkpoints, nothing to offload: the tapes as before
  const train::MemoryPlan tapes = train::plan_train_memory(in);
  in.offload_block_inputs = false;
  EXPECT_DOUBLE_EQ(tapes.total, train::plan_train_memory(in).total);
  EXPECT_DOUBLE_EQ(tapes.host, 0.0);
}

// --transient-weights (unsharded): the weights line holds the parameters outside the blocks and
// one block's compute copy, as with sharded weights; nothing else moves.
TEST(MemoryPlan, TransientWeights) {
  train::MemoryPlanInput in = wan13b_one_gpu();
  in.released_gradients = true;
  train::latent_from_video(81, 480, 832, in);
  const auto [outside, block] = param_split(in.cfg);
  const train::MemoryPlan base = train::plan_train_memory(in);
  in.transient_weights = true;
  const train::MemoryPlan t = train::plan_train_memory(in);
  EXPECT_DOUBLE_EQ(line(base, "weights").bytes, 2.0 * double(base.params));
  EXPECT_DOUBLE_EQ(line(t, "weights").bytes, 2.0 * (outside + block));
  EXPECT_NE(line(t, "weights").note.find("transient"), std::string::npos);
  EXPECT_NEAR(base.total - t.total, line(base, "weights").bytes - line(t, "weights").bytes, 1.0);
}

// LoRA fine-tuning: the frozen base's compute copy + the adapters (Σ r·(in + out) over the
// targets) as weights, the adapters' F32 gradients and master + m + v; the activations as before.
TEST(MemoryPlan, LoraFineTuning) {
  train::MemoryPlanInput in = wan13b_one_gpu();
  train::latent_from_video(81, 480, 832, in);
  const train::MemoryPlan full = train::plan_train_memory(in);
  model::LoraInit li;
  li.rank = 32;
  const auto shapes = model::DiT::expected_shapes(in.cfg);
  in.lora_params = model::lora_parameter_count(shapes, li);
  // 8 attention linears of 1536 x 1536 per block (cross-attention k/v read the 1536-wide context)
  EXPECT_EQ(in.lora_params, in.cfg.num_layers * 8 * 32 * (1536 + 1536));
  const train::MemoryPlan l = train::plan_train_memory(in);
  const double lp = double(in.lora_params), P = double(l.params);
  EXPECT_DOUBLE_EQ(line(l, "weights").bytes, 2 * P + 2 * lp);
  EXPECT_DOUBLE_EQ(line(l, "gradients").bytes, 4 * lp);
  EXPECT_DOUBLE_EQ(line(l, "optimizer state").bytes, 12 * lp);
  EXPECT_DOUBLE_EQ(line(l, "block inputs").bytes, line(full, "block inputs").bytes);
  EXPECT_LT(l.total, full.total - 15.0 * double(1ull << 30));  // no masters / moments of the base
  in.sharded_state = true;
  EXPECT_THROW(train::plan_train_memory(in), Error);
}
