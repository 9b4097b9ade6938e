// Under mpirun (1, 2 and 4 ranks): AdamW with DP-sharded state (train/sharded_adamw.h).
// Gradients are multiples of 2^-10 (sums exact in any order), so the sharded and the unsharded
// optimizer see bit-identical reduced gradients and must give bit-identical weights and state:
//  * a few steps over DP (small windows: many reduce-scatters / all-gathers, padded chunks), an
//    F32 and a BF16 compute copy; over 2 SP × DP and all-SP (the SP shares, patch_embedding
//    complete on every SP rank), with the state sharded over the world or over the DP ranks;
//  * grad_norm / scale_gradients (clipping) on the shard equal the unsharded ones;
//  * the unsharded state (gather_state, on every rank or on one root) equals AdamW's slots, and
//    resuming from it on a different DP rank count continues with the same weights;
//  * gradient sharding (groups whose gradients live only around their backward) over DP and SP,
//    with accumulation: the same weights, and at most one group's gradients held at a time;
//  * weight sharding (ZeRO-3) on top: the groups' values exist only between gather_group and
//    release_group, are bit-identical to the unsharded weights whenever gathered (blocking, or
//    through the prefetch path forced on — synchronous on mpi, the same bookkeeping as nccl's
//    overlapped one), at most one group's values are resident, and unshard_weights restores all.
#include <gtest/gtest.h>

#include <random>

#include "osp/parallel/communicator.h"
#include "osp/ops/ops.h"
#include "osp/train/adamw.h"
#include "osp/train/grad_clip.h"
#include "osp/train/sharded_adamw.h"
#include "test_util.h"

using namespace osp;

namespace {

std::shared_ptr<parallel::Communicator> world() {
  static std::shared_ptr<parallel::Communicator> c = parallel::make_mpi_communicator();
  return c;
}

struct Model {
  std::vector<Tensor> values, grads;
  std::vector<std::string> names;
  ParamTable table() {
    ParamTable t;
    for (size_t k = 0; k < values.size(); ++k)
      t.push_back(ParamRef{names[k], values[k].shape(), &values[k], &grads[k]});
    return t;
  }
};

const std::vector<std::pair<std::string, Shape>> kParams = {
    {"patch_embedding.weight", {7, 9}}, {"blocks.0.w", {37, 11}}, {"blocks.0.b", {5}},
    {"blocks.1.one", {1}},              {"blocks.1.w", {300}},    {"head.w", {64, 3}}};

// bf16_last: the last parameter's compute copy is BF16; bf16_blocks: every blocks.* one but the
// vector blocks.0.b is (the CUDA layout: bf16 linears, F32 norms; weight sharding then gathers
// the windows of BF16 values in bf16).
Model make_model(bool bf16_last, bool bf16_blocks = false) {
  Model m;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd;
  for (size_t k = 0; k < kParams.size(); ++k) {
    const auto& [name, shape] = kParams[k];
    std::vector<float> v(size_t(shape_numel(shape)));
    for (auto& x : v) x = nd(rng);
    Tensor t = Tensor::from_vector(v, shape);
    if ((bf16_last && k + 1 == kParams.size()) ||
        (bf16_blocks && name.rfind("blocks.", 0) == 0 && name != "blocks.0.b"))
      t = t.to(DType::BF16);
    m.values.push_back(t);
    m.grads.push_back(Tensor::zeros(shape, DType::F32));
    m.names.push_back(name);
  }
  return m;
}

// The gradient rank (dp, sp) computes at `step`: integers / 1024. Replicated parameters
// (patch_embedding) are the same on every SP rank.
Tensor grad_of(size_t k, int dp, int sp, int step) {
  const bool replicated = kParams[k].first.rfind("patch_embedding.", 0) == 0;
  std::mt19937 rng(uint32_t(1000 * step + 100 * dp + 10 * (replicated ? 0 : sp + 1) + k));
  std::uniform_int_distribution<int> ud(-2000, 2000);
  std::vector<float> v(size_t(shape_numel(kParams[k].second)));
  for (auto& x : v) x = float(ud(rng)) / 1024.f;
  if (k == 2) v.assign(v.size(), 0.f);  // a parameter with zero gradient
  return Tensor::from_vector(v, kParams[k].second);
}

// The reduced gradient: Σ_sp (once for replicated) then mean over dp.
Tensor reduced_grad(size_t k, int D, int S, int step) {
  const bool replicated = kParams[k].first.rfind("patch_embedding.", 0) == 0;
  std::vector<float> acc(size_t(shape_numel(kParams[k].second)), 0.f);
  for (int d = 0; d < D; ++d)
    for (int s = 0; s < (replicated ? 1 : S); ++s) {
      const auto g = grad_of(k, d, s, step).to_float_vector();
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += g[i];
    }
  for (auto& x : acc) x /= float(D);
  return Tensor::from_vector(acc, kParams[k].second);
}

void expect_same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.numel(), b.numel()) << what;
  const auto x = a.to(DType::F32).contiguous().to_float_vector();
  const auto y = b.to(DType::F32).contiguous().to_float_vector();
  size_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += x[i] != y[i];
  EXPECT_EQ(bad, 0u) << what << " rank " << world()->rank();
}

train::AdamWConfig config() {
  train::AdamWConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.05;
  c.eps = 1e-8;
  return c;
}

void run(int sp_size, size_t bucket_bytes, train::ShardGroup over) {
  auto groups = train::make_parallel_groups(world(), sp_size);
  const int D = groups.dp_size(), S = groups.sp_size();
  // the unsharded reference on this rank
  Model ref = make_model(true);
  train::AdamW ref_opt(ref.table(), config());
  // the sharded optimizer
  Model sh = make_model(true);
  train::GradReduceOptions opt;
  opt.bucket_bytes = bucket_bytes;
  train::ShardedAdamW so(sh.table(), groups, config(), opt, over);
  const int M = over == train::ShardGroup::World ? world()->size() : D;
  EXPECT_GE(so.windows(), bucket_bytes < 1024 ? 10u : 1u);
  int64_t total = 0;
  for (const auto& p : kParams) total += shape_numel(p.second);
  EXPECT_EQ(so.total_elements(), total);
  EXPECT_LE(so.shard_elements(), total / M + int64_t(so.windows()));
  const std::vector<double> lrs = {1e-2, 5e-3, 2e-3};
  for (int step = 0; step < 3; ++step) {
    for (size_t k = 0; k < kParams.size(); ++k) {
      ref.grads[k].copy_from(reduced_grad(k, D, S, step));
      sh.grads[k].copy_from(grad_of(k, groups.dp_rank(), groups.sp_rank(), step));
    }
    so.reduce_gradients(1);
    // clipping on the shard = clipping the whole gradient
    const double want_norm = train::grad_norm(ref.table());
    EXPECT_NEAR(so.grad_norm(), want_norm, 1e-9 * want_norm) << "step " << step;
    if (step == 1) {
      train::scale_grads(ref.table(), 0.5f);
      so.scale_gradients(0.5f);
    }
    ref_opt.step(lrs[size_t(step)]);
    so.step(lrs[size_t(step)]);
    for (size_t k = 0; k < kParams.size(); ++k)
      expect_same_bits(sh.values[k], ref.values[k], kParams[k].first + " after step " + std::to_string(step));
  }
  // the unsharded state
  const auto state = so.gather_state();
  ASSERT_EQ(state.size(), kParams.size());
  for (size_t k = 0; k < kParams.size(); ++k) {
    expect_same_bits(state[k].master, ref_opt.slots()[k].master, kParams[k].first + " master");
    expect_same_bits(state[k].m, ref_opt.slots()[k].m, kParams[k].first + " m");
    expect_same_bits(state[k].v, ref_opt.slots()[k].v, kParams[k].first + " v");
  }
  EXPECT_EQ(so.steps(), 3);
  // gathered on the last shard rank only (a checkpoint writer): the same host tensors there,
  // nothing elsewhere
  const int last = so.shard_size() - 1;
  const auto on_last = so.gather_state(last);
  if (so.shard_rank() == last) {
    ASSERT_EQ(on_last.size(), kParams.size());
    for (size_t k = 0; k < kParams.size(); ++k) {
      EXPECT_TRUE(on_last[k].master.device().is_cpu());
      expect_same_bits(on_last[k].master, state[k].master, kParams[k].first + " master (root)");
      expect_same_bits(on_last[k].m, state[k].m, kParams[k].first + " m (root)");
      expect_same_bits(on_last[k].v, state[k].v, kParams[k].first + " v (root)");
    }
  } else {
    EXPECT_TRUE(on_last.empty());
  }
  // resume on a different DP count: the first half of the world, or one rank
  const int W = world()->size();
  const int half = W > 1 ? W / 2 : 1;
  auto sub = std::shared_ptr<parallel::Communicator>(
      world()->split(world()->rank() < half ? 0 : 1, world()->rank()));
  train::ParallelGroups g2;
  g2.world = sub;
  g2.dp = sub;
  Model re = make_model(true);
  for (auto& v : re.values) v.zero_();  // the weights come from the checkpoint's masters
  train::ShardedAdamW so2(re.table(), g2, config(), opt);
  so2.load_state(state, so.steps());
  for (size_t k = 0; k < kParams.size(); ++k)
    expect_same_bits(re.values[k], ref.values[k], kParams[k].first + " after resume");
  for (size_t k = 0; k < kParams.size(); ++k) {
    ref.grads[k].copy_from(reduced_grad(k, D, S, 3));
    re.grads[k].copy_from(reduced_grad(k, D, S, 3));  // every new rank: the same mean
  }
  so2.reduce_gradients(1);
  ref_opt.step(1e-3);
  so2.step(1e-3);
  for (size_t k = 0; k < kParams.size(); ++k)
    expect_same_bits(re.values[k], ref.values[k], kParams[k].first + " step after resume on " +
                                                      std::to_string(sub->size()) + " ranks");
}

// Gradient sharding: the two "blocks" are groups whose gradients exist only between
// begin_group and end_group (a backward in reverse order, 2 accumulation micro-batches); the
// weights stay bit-identical to the unsharded optimizer's, and the table never holds more than
// the ungrouped gradients + one group.
// weights: none (gradient sharding only), or weight sharding with the given prefetch mode.
enum class Weights { Replicated, Sharded, ShardedPrefetch };

void run_grouped(int sp_size, size_t bucket_bytes, Weights weights = Weights::Replicated, bool bf16_blocks = false) {
  auto groups = train::make_parallel_groups(world(), sp_size);
  const int D = groups.dp_size(), S = groups.sp_size();
  Model ref = make_model(false, bf16_blocks);
  train::AdamW ref_opt(ref.table(), config());
  Model sh = make_model(false, bf16_blocks);
  train::GradReduceOptions opt;
  opt.bucket_bytes = bucket_bytes;
  const std::vector<std::pair<size_t, size_t>> blocks = {{1, 3}, {3, 5}};  // blocks.0.*, blocks.1.*
  train::ShardedAdamW so(sh.table(), groups, config(), opt, train::ShardGroup::World, blocks);
  EXPECT_TRUE(so.shards_gradients());
  for (size_t k = 1; k < 5; ++k) EXPECT_FALSE(sh.grads[k].defined()) << kParams[k].first;
  int64_t block_bytes[2] = {0, 0};
  for (size_t b = 0; b < 2; ++b)
    for (size_t k = blocks[b].first; k < blocks[b].second; ++k) block_bytes[b] += int64_t(sh.values[k].nbytes());
  EXPECT_EQ(so.peak_group_weight_bytes(), block_bytes[0] + block_bytes[1]);
  const bool zero3 = weights != Weights::Replicated;
  if (zero3) {
    so.shard_weights(weights == Weights::ShardedPrefetch ? train::ShardedAdamW::Prefetch::On
                                                         : train::ShardedAdamW::Prefetch::Off);
    EXPECT_EQ(so.prefetches(), weights == Weights::ShardedPrefetch);
    // bytes per gather of both blocks: F32 everywhere, or BF16 except the windows that cover the
    // F32 vector blocks.0.b (bf16_blocks keeps it F32, as CUDA keeps norms and modulation)
    const int64_t block_elems = 37 * 11 + 5 + 1 + 300;
    if (bf16_blocks) {
      EXPECT_LT(so.gather_bytes_per_pass(), 3 * block_elems);
      EXPECT_GT(so.gather_bytes_per_pass(), 2 * block_elems);
    } else {
      EXPECT_GE(so.gather_bytes_per_pass(), 4 * block_elems);
    }
    EXPECT_EQ(so.resident_group_weight_bytes(), 0);
    for (size_t k = 1; k < 5; ++k) EXPECT_FALSE(sh.values[k].defined()) << kParams[k].first;
  }
  // block b's values are resident and equal the unsharded weights
  auto expect_block = [&](int b, const std::string& when) {
    for (size_t k = blocks[size_t(b)].first; k < blocks[size_t(b)].second; ++k) {
      ASSERT_TRUE(sh.values[k].defined()) << kParams[k].first << " " << when;
      expect_same_bits(sh.values[k], ref.values[k], kParams[k].first + " " + when);
    }
  };
  for (int step = 0; step < 3; ++step) {
    for (size_t k = 0; k < kParams.size(); ++k) {  // the mean of the two micro-batches' gradients
      const auto a = reduced_grad(k, D, S, 2 * step).to_float_vector();
      const auto b = reduced_grad(k, D, S, 2 * step + 1).to_float_vector();
      std::vector<float> m(a.size());
      for (size_t i = 0; i < a.size(); ++i) m[i] = (a[i] + b[i]) / 2;
      ref.grads[k].copy_from(Tensor::from_vector(m, kParams[k].second));
    }
    for (size_t k : {size_t(0), size_t(5)}) sh.grads[k].zero_();
    for (int micro = 0; micro < 2; ++micro) {
      auto g = [&](size_t k) { return grad_of(k, groups.dp_rank(), groups.sp_rank(), 2 * step + micro); };
      const std::string when = "step " + std::to_string(step) + " micro " + std::to_string(micro);
      if (zero3)  // the forward: gather (prefetching the next block), use, release
        for (int blk = 0; blk < 2; ++blk) {
          so.gather_group(size_t(blk));
          if (blk + 1 < 2) so.prefetch_group(size_t(blk + 1));
          expect_block(blk, "forward " + when);
          so.release_group(size_t(blk));
        }
      for (size_t k : {size_t(5), size_t(0)}) ops::axpby(1.f, g(k), 1.f, sh.grads[k], sh.grads[k]);
      for (int blk = 1; blk >= 0; --blk) {
        so.gather_group(size_t(blk));  // (no-ops without weight sharding)
        if (blk > 0) so.prefetch_group(size_t(blk - 1));
        so.begin_group(size_t(blk));
        if (zero3) expect_block(blk, "backward " + when);
        for (size_t k = blocks[size_t(blk)].first; k < blocks[size_t(blk)].second; ++k) sh.grads[k].copy_from(g(k));
        so.end_group(size_t(blk));
        so.release_group(size_t(blk));
      }
      if (zero3) {
        EXPECT_EQ(so.resident_group_weight_bytes(), 0);
        for (size_t k = 1; k < 5; ++k) EXPECT_FALSE(sh.values[k].defined()) << kParams[k].first;
      }
    }
    so.reduce_gradients(2);
    const double want_norm = train::grad_norm(ref.table());
    EXPECT_NEAR(so.grad_norm(), want_norm, 1e-9 * want_norm) << "step " << step;
    ref_opt.step(1e-2);
    so.step(1e-2);
    for (size_t k = 0; k < kParams.size(); ++k)
      if (!zero3 || k == 0 || k == 5)  // (sharded blocks: checked when gathered)
        expect_same_bits(sh.values[k], ref.values[k], kParams[k].first + " after step " + std::to_string(step));
  }
  // resident block weights: every block without weight sharding, at most the largest one with it
  EXPECT_EQ(so.peak_group_weight_bytes(), zero3 ? block_bytes[0] : block_bytes[0] + block_bytes[1]);
  EXPECT_EQ(so.gather_buffer_bytes() > 0, weights == Weights::ShardedPrefetch);
  if (zero3) {
    so.unshard_weights();
    EXPECT_FALSE(so.shards_weights());
    for (size_t k = 0; k < kParams.size(); ++k)
      expect_same_bits(sh.values[k], ref.values[k], kParams[k].first + " after unshard_weights");
  }
  const int64_t outside = shape_numel(kParams[0].second) + shape_numel(kParams[5].second);
  const int64_t block0 = shape_numel(kParams[1].second) + shape_numel(kParams[2].second);
  EXPECT_EQ(so.peak_grad_elements(), outside + block0);  // block 0 is the larger one
  for (size_t k = 1; k < 5; ++k) EXPECT_FALSE(sh.grads[k].defined()) << kParams[k].first;
  const auto state = so.gather_state();
  for (size_t k = 0; k < kParams.size(); ++k) {
    expect_same_bits(state[k].m, ref_opt.slots()[k].m, kParams[k].first + " m");
    expect_same_bits(state[k].v, ref_opt.slots()[k].v, kParams[k].first + " v");
  }
}

}  // namespace

TEST(ShardedAdamW, GradientShardingEqualsUnshardedBitForBit) { run_grouped(1, 64); }
TEST(ShardedAdamW, GradientShardingWithSequenceParallelism) {
  if (world()->size() % 2) GTEST_SKIP() << "needs an even rank count";
  run_grouped(2, 100);
}
TEST(ShardedAdamW, WeightShardingEqualsUnshardedBitForBit) { run_grouped(1, 64, Weights::Sharded); }
TEST(ShardedAdamW, WeightShardingPrefetchPath) { run_grouped(1, 64, Weights::ShardedPrefetch); }
// BF16 compute copies beside F32 ones (as on CUDA): the windows of BF16 values are gathered in
// bf16 (the master shard rounded before its gather), the others in F32, and the gathered blocks
// still equal the unsharded optimizer's values bit for bit.
TEST(ShardedAdamW, WeightShardingGathersBf16ComputeCopies) {
  run_grouped(1, 64, Weights::Sharded, true);
  run_grouped(1, 64, Weights::ShardedPrefetch, true);
}
TEST(ShardedAdamW, WeightShardingWithSequenceParallelism) {
  if (world()->size() % 2) GTEST_SKIP() << "needs an even rank count";
  run_grouped(2, 100, Weights::ShardedPrefetch);
}

using train::ShardGroup;
TEST(ShardedAdamW, DataParallelEqualsUnshardedBitForBit) { run(1, 64, ShardGroup::World); }
TEST(ShardedAdamW, OneWindow) { run(1, size_t(25) << 20, ShardGroup::World); }
TEST(ShardedAdamW, SequenceTimesDataParallelShardedOverTheWorld) {
  if (world()->size() % 2) GTEST_SKIP() << "needs an even rank count";
  run(2, 100, ShardGroup::World);
}
TEST(ShardedAdamW, SequenceTimesDataParallelShardedOverDataParallelRanks) {
  if (world()->size() % 2) GTEST_SKIP() << "needs an even rank count";
  run(2, 100, ShardGroup::DataParallel);
}
TEST(ShardedAdamW, AllSequenceParallelShardedOverTheWorld) { run(world()->size(), 64, ShardGroup::World); }
