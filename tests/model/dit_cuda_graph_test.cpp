// DiTOptions::cuda_graphs where there is no CUDA graph to make (model/dit.h): on the CPU the
// option changes nothing — every forward runs eagerly and gives the bits of a model without it.
// (The graphs themselves: dit_cuda_graph_gpu_test.)
#include <gtest/gtest.h>

#include "osp/core/philox.h"
#include "osp/model/dit.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/sparse/skiparse.h"
#include "random_dit_weights.h"
#include "test_util.h"

using namespace osp;

class DiTCudaGraphCpu : public ::testing::TestWithParam<bool> {};

TEST_P(DiTCudaGraphCpu, TheOptionChangesNothingOnTheCpu) {
  model::DiTConfig cfg;
  cfg.dim = 64, cfg.ffn_dim = 96, cfg.num_heads = 2, cfg.num_layers = 8;
  cfg.text_dim = 32, cfg.text_len = 8;
  const auto w = test::random_dit_weights(cfg, 5);
  model::DiTOptions opt;
  opt.cuda_graphs = false;
  model::DiT plain = model::DiT::bind(cfg, w, opt);
  opt.cuda_graphs = true;
  model::DiT graphs = model::DiT::bind(cfg, w, opt);
  if (GetParam()) {  // hybrid: the plan of dit_cuda_graph_gpu_test
    const auto kinds = sparse::plan_blocks(int(cfg.num_layers), "dual_end", 4);
    plain.set_block_kinds(kinds, 2);
    graphs.set_block_kinds(kinds, 2);
  }
  auto sp = parallel::make_single_device();
  const Tensor ctx = randn({2, 5, cfg.text_dim}, 1, 0);
  for (int s = 0; s < 3; ++s) {
    const Tensor x = randn({2, 16, 2, 6, 10}, 2, uint32_t(s));
    const std::vector<float> t = {900.0f - 100.0f * float(s), 900.0f - 100.0f * float(s)};
    const Tensor want = plain.forward(x, t, ctx, *sp);
    const Tensor got = graphs.forward(x, t, ctx, *sp);
    EXPECT_EQ(graphs.last_forward_mode(), "eager") << "step " << s;
    test::expect_same_bits(got, want, "cpu forward with cuda_graphs");
  }
}

INSTANTIATE_TEST_SUITE_P(Plans, DiTCudaGraphCpu, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? std::string("hybrid") : std::string("full"); });
