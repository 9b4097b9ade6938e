// Step caching inside DiT::forward (dit.h BlockCache; the policy is sample/step_cache.h), on
// every block plan the forward takes: all full (Wan2.1), dual-end hybrid (OSP-Next: the same
// kind at both ends) and plans whose first and last blocks differ (the residual then crosses a
// layout change and block 0's input is moved through the layout chain).
//   * recording the residual leaves the forward's output bit for bit unchanged;
//   * reusing it on the same input gives the computed output back (to fp32 rounding);
//   * with identity blocks (zero block weights) the recorded residual is exactly zero and the
//     reused forward on ANOTHER input equals the plain forward bit for bit: a wrong layout on
//     either side (record or reuse) would leave rows permuted;
//   * a residual of another shape is refused.
#include <gtest/gtest.h>

#include <cmath>

#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "model/random_dit_weights.h"
#include "test_util.h"

using namespace osp;
using osp::test::expect_same_bits;
using sparse::BlockKind;

namespace {

model::DiTConfig config() {
  model::DiTConfig c;
  c.dim = 64;
  c.ffn_dim = 96;
  c.num_heads = 2;
  c.num_layers = 4;
  c.text_dim = 32;
  c.text_len = 8;
  return c;
}

struct Plan {
  const char* name;
  std::vector<BlockKind> kinds;
};

std::vector<Plan> plans() {
  const BlockKind F = BlockKind::Full, T = BlockKind::Token, G = BlockKind::Group;
  return {{"full", {F, F, F, F}},
          {"dual_end", {F, T, G, F}},
          {"ends_full_token", {F, T, G, T}},
          {"ends_token_group", {T, G, T, G}}};
}

// x [2, 16, 2, 8, 8] (grid 2x4x4, Skiparse P = 2), two samples like a CFG batch.
Tensor input(uint64_t seed) { return randn({2, 16, 2, 8, 8}, seed); }

}  // namespace

TEST(DiTStepCache, RecordKeepsOutputAndReuseOnSameInputGivesItBack) {
  const model::DiTConfig cfg = config();
  for (const Plan& p : plans()) {
    SCOPED_TRACE(p.name);
    model::DiT dit = model::DiT::bind(cfg, osp::test::random_dit_weights(cfg, 5, false));
    dit.set_block_kinds(p.kinds, 2);
    auto sp = parallel::make_single_device();
    const Tensor x = input(9), ctx = randn({2, 6, cfg.text_dim}, 10);
    const std::vector<float> t = {700.0f, 700.0f};
    const Tensor plain = dit.forward(x, t, ctx, *sp);

    model::DiT::BlockCache cache;
    bool run = true;
    int asked = 0;
    cache.run_blocks = [&](const Tensor& e0) {
      ++asked;
      EXPECT_EQ(e0.shape(), (Shape{2, 6, cfg.dim}));
      return run;
    };
    const Tensor recorded = dit.forward(x, t, ctx, *sp, &cache);
    expect_same_bits(recorded, plain, "forward that records the residual");
    ASSERT_TRUE(cache.residual.defined());
    EXPECT_EQ(cache.residual.dim(), 3);
    EXPECT_EQ(cache.residual.size(0), 2);
    EXPECT_EQ(cache.reused, 0);

    run = false;
    const Tensor reused = dit.forward(x, t, ctx, *sp, &cache);
    EXPECT_EQ(cache.reused, 1);
    EXPECT_EQ(asked, 2);
    // x0 + (x_last − x0) vs x_last: one fp32 rounding per element of the hidden state.
    EXPECT_LT(relative_error(reused, plain), 1e-6);
  }
}

TEST(DiTStepCache, IdentityBlocksPinTheResidualLayout) {
  const model::DiTConfig cfg = config();
  for (const Plan& p : plans()) {
    SCOPED_TRACE(p.name);
    model::DiT dit = model::DiT::bind(cfg, osp::test::random_dit_weights(cfg, 6, true));
    dit.set_block_kinds(p.kinds, 2);
    auto sp = parallel::make_single_device();
    const Tensor ctx = randn({2, 6, cfg.text_dim}, 11);
    model::DiT::BlockCache cache;
    bool run = true;
    cache.run_blocks = [&](const Tensor&) { return run; };
    (void)dit.forward(input(1), {900.0f, 900.0f}, ctx, *sp, &cache);
    // The blocks are the identity, so x_last is block 0's input moved to the last layout.
    const std::vector<float> r = cache.residual.to_float_vector();
    double worst = 0;
    for (float v : r) worst = std::max(worst, double(std::fabs(v)));
    EXPECT_EQ(worst, 0.0) << "residual of identity blocks";

    run = false;
    const Tensor x2 = input(2);
    const Tensor reused = dit.forward(x2, {400.0f, 400.0f}, ctx, *sp, &cache);
    const Tensor plain = dit.forward(x2, {400.0f, 400.0f}, ctx, *sp);
    expect_same_bits(reused, plain, "reused forward with identity blocks");
  }
}

TEST(DiTStepCache, MismatchedResidualIsRefused) {
  const model::DiTConfig cfg = config();
  model::DiT dit = model::DiT::bind(cfg, osp::test::random_dit_weights(cfg, 7, false));
  auto sp = parallel::make_single_device();
  model::DiT::BlockCache cache;
  cache.run_blocks = [](const Tensor&) { return false; };
  cache.residual = Tensor::zeros({2, 5, cfg.dim}, DType::F32, Device::cpu());
  try {
    (void)dit.forward(input(3), {500.0f, 500.0f}, randn({2, 6, cfg.text_dim}, 4), *sp, &cache);
    FAIL() << "a residual of another shape was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cached residual"), std::string::npos) << e.what();
  }
}
