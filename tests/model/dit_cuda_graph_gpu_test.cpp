// The DiT's inference forward as a CUDA graph (DiTOptions::cuda_graphs, core/cuda_graph.h): the
// first forward of a shape runs eagerly, the second captures, the rest replay — and every one of
// them gives the bits of a model without graphs, across new inputs, shape changes, memory freed
// and reallocated between replays, and the attention paths (the own Hopper kernel at head dim
// 128 and ≥ 2,048 keys, cuDNN / flash below that, Skiparse's packed sub-sequences).
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <vector>

#include "osp/core/cuda_graph.h"
#include "osp/core/interrupt.h"
#include "osp/core/philox.h"
#include "osp/model/dit.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/sparse/skiparse.h"
#include "random_dit_weights.h"
#include "test_util.h"

using namespace osp;
using model::DiT;
using model::DiTConfig;

namespace {

// Eight blocks (hybrid: two full, four Skiparse, two full) at head dim 128 (the own Hopper
// attention kernel's shapes) or 64 (cuDNN / flash).
DiTConfig config(int64_t head_dim) {
  DiTConfig c;
  c.num_heads = 2;
  c.dim = 2 * head_dim, c.ffn_dim = 4 * c.dim, c.num_layers = 8;
  c.text_dim = 64, c.text_len = 32, c.freq_dim = 256;
  return c;
}

struct Pair {
  DiT eager, graphed;
};
Pair bind_pair(const DiTConfig& cfg, bool hybrid, model::DiTQuant quant = model::DiTQuant::None) {
  const auto w = test::random_dit_weights(cfg, 11);
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  opt.quant = quant;
  opt.cuda_graphs = false;  // (whatever OSP_CUDA_GRAPHS says)
  Pair p{DiT::bind(cfg, w, opt), DiT()};
  opt.cuda_graphs = true;
  p.graphed = DiT::bind(cfg, w, opt);
  if (hybrid) {
    const auto kinds = sparse::plan_blocks(int(cfg.num_layers), "dual_end", 4);
    p.eager.set_block_kinds(kinds, 2);
    p.graphed.set_block_kinds(kinds, 2);
  }
  return p;
}

// x [B, 16, F, H, W] and context [B, 20, text_dim] (the text shorter than text_len), on `dev`.
Tensor input_x(int64_t B, int64_t F, int64_t H, int64_t W, uint64_t seed, Device dev) {
  return randn({B, 16, F, H, W}, seed, 0).to(dev);
}
Tensor input_ctx(const DiTConfig& cfg, int64_t B, uint64_t seed, Device dev) {
  return randn({B, 20, cfg.text_dim}, seed, 1).to(dev);
}

// Runs `steps` forwards with new x and t each step on both models; every output the same bits.
// Returns the graphed model's modes, one per step.
// graphed_sp: the graphed model's sequence-parallel plan (its address is part of the graph's key,
// so a forward with another plan object starts a new key: eager first); null = a fresh one.
std::vector<std::string> run_steps(Pair& p, int steps, int64_t F, int64_t H, int64_t W, uint64_t seed0,
                                   Device input_dev = Device::cuda(0),
                                   parallel::SequenceParallel* graphed_sp = nullptr) {
  const DiTConfig& cfg = p.eager.config();
  auto sp_a = parallel::make_single_device(), own_b = parallel::make_single_device();
  parallel::SequenceParallel* sp_b = graphed_sp ? graphed_sp : own_b.get();
  const Tensor ctx = input_ctx(cfg, 2, seed0, input_dev);
  std::vector<std::string> modes;
  for (int s = 0; s < steps; ++s) {
    const Tensor x = input_x(2, F, H, W, seed0 + 1 + uint64_t(s), input_dev);
    const std::vector<float> t = {999.0f - 97.0f * float(s), 999.0f - 97.0f * float(s)};
    const Tensor want = p.eager.forward(x, t, ctx, *sp_a).to(Device::cpu());
    const Tensor got = p.graphed.forward(x, t, ctx, *sp_b);
    modes.push_back(p.graphed.last_forward_mode());
    test::expect_same_bits(got, want, str("step ", s, " (", modes.back(), ")").c_str());
  }
  return modes;
}

const std::vector<std::string> kEagerCaptureReplay = {"eager", "captured", "replayed", "replayed"};

}  // namespace

TEST(DiTCudaGraph, FullAttentionHopperShapes) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(128), false);
  // 4 × 24 × 48 latent → 2 × 12 × 24 = 2,304 tokens: the own Hopper kernel where it runs.
  EXPECT_EQ(run_steps(p, 4, 4, 24, 48, 100), kEagerCaptureReplay);
}

TEST(DiTCudaGraph, HybridSkiparseHopperShapes) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(128), true);
  EXPECT_EQ(run_steps(p, 4, 4, 24, 48, 200), kEagerCaptureReplay);
}

TEST(DiTCudaGraph, SmallHeadsAndOddSizes) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(64), true);
  EXPECT_EQ(run_steps(p, 4, 3, 10, 14, 300), kEagerCaptureReplay);
}

TEST(DiTCudaGraph, HostInputsAreCopiedIn) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(64), false);
  EXPECT_EQ(run_steps(p, 4, 2, 8, 8, 400, Device::cpu()), kEagerCaptureReplay);
}

TEST(DiTCudaGraph, Fp8Mode) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(128), true, model::DiTQuant::FP8);
  const auto modes = run_steps(p, 4, 4, 24, 48, 500);
  for (const auto& m : modes) std::printf("[ info     ] fp8 hybrid: %s\n", m.c_str());
  EXPECT_EQ(modes, kEagerCaptureReplay);
}

TEST(DiTCudaGraph, HiF8Mode) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(128), true, model::DiTQuant::HiF8);
  const auto modes = run_steps(p, 4, 4, 24, 48, 550);
  for (const auto& m : modes) std::printf("[ info     ] hif8 hybrid: %s\n", m.c_str());
  EXPECT_EQ(modes, kEagerCaptureReplay);
}

TEST(DiTCudaGraph, ShapeChangesAndMemoryReuseBetweenReplays) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(64), true);
  EXPECT_EQ(run_steps(p, 3, 2, 8, 8, 600), (std::vector<std::string>{"eager", "captured", "replayed"}));
  // Another size: eager, then its own graph (the first one is dropped).
  EXPECT_EQ(run_steps(p, 3, 3, 10, 14, 700), (std::vector<std::string>{"eager", "captured", "replayed"}));
  // Memory freed and taken again between replays must not be the graph's: fill what the
  // general cache hands out now with NaN, then replay.
  const size_t held_before = detail::graph_pool_held_bytes();
  {
    std::vector<Tensor> junk;
    for (int i = 0; i < 64; ++i) {
      const int64_t n = int64_t(1) << (10 + i % 8);
      junk.push_back(Tensor::from_vector(std::vector<float>(size_t(n), std::numeric_limits<float>::quiet_NaN()), {n})
                         .to(Device::cuda(0)));
    }
  }
  auto modes = run_steps(p, 3, 3, 10, 14, 700);
  EXPECT_EQ(modes.back(), "replayed");
  // Switching graphs off drops the graph: what it held returns to the cache.
  p.graphed.set_cuda_graphs(false);
  EXPECT_LE(detail::graph_pool_held_bytes(), held_before);
  EXPECT_EQ(run_steps(p, 2, 3, 10, 14, 800), (std::vector<std::string>{"eager", "eager"}));
}

TEST(DiTCudaGraph, CtrlCDuringCaptureLeavesTheShapeCapturable) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(64), false);
  // One plan object throughout (it is part of the graph's key): the first forward runs eagerly.
  auto sp = parallel::make_single_device();
  EXPECT_EQ(run_steps(p, 1, 2, 8, 8, 950, Device::cuda(0), sp.get()), (std::vector<std::string>{"eager"}));
  // The second forward captures; Ctrl-C lands at its first safe point (between blocks).
  const DiTConfig& cfg = p.graphed.config();
  const Tensor x = input_x(2, 2, 8, 8, 951, Device::cuda(0)), ctx = input_ctx(cfg, 2, 950, Device::cuda(0));
  set_interrupted(true);
  EXPECT_THROW(p.graphed.forward(x, {500.f, 500.f}, ctx, *sp), Interrupted);
  set_interrupted(false);
  // Not marked "capture failed": the next forwards capture and replay, with the eager bits.
  EXPECT_EQ(run_steps(p, 3, 2, 8, 8, 960, Device::cuda(0), sp.get()),
            (std::vector<std::string>{"captured", "replayed", "replayed"}));
}

TEST(DiTCudaGraph, HooksAndStepCacheRunEagerly) {
  OSP_REQUIRE_GPU();
  Pair p = bind_pair(config(64), false);
  int calls = 0;
  p.graphed.set_block_hook([&](int, const Tensor&) { ++calls; });
  EXPECT_EQ(run_steps(p, 3, 2, 8, 8, 900), (std::vector<std::string>{"eager", "eager", "eager"}));
  EXPECT_EQ(calls, 3 * 8);  // the hook saw every block of every forward
}
