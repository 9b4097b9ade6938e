// Mix-GRPO on CUDA starts on-policy: in the first iteration the update's log-probabilities (the
// training forward with tapes, bf16 compute copies) reproduce the rollout's (the inference
// forward) and the fresh LoRA (B = 0) is the reference model, so every importance ratio is 1 and
// the KL 0 up to bf16 rounding. On the CPU (rl_trainer_test) both are exact; here the bound is
// what rounding allows. A mismatch between the two CUDA forward paths shows up as ratios far from
// 1 and a clip fraction of 1 (no learning signal left).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "osp/train/rl_trainer.h"
#include "test_util.h"
#include "train/rl_test_stack.h"

using namespace osp;
using namespace osp::train;
namespace fs = std::filesystem;

TEST(RlGpu, FirstIterationIsOnPolicy) {
  OSP_REQUIRE_GPU();
  const fs::path out = fs::temp_directory_path() / ("osp_rl_gpu_" + std::to_string(::getpid()));
  fs::remove_all(out);
  model::DiTConfig cfg = rl_test::tiny();
  cfg.dim = 128;  // 2 heads of 64 (the CUDA attention's head sizes)
  cfg.ffn_dim = 256;
  rl_test::Stack s(1, cfg, Device::cuda(0));
  RlOptions o = rl_test::two_prompt_options(out);
  o.device = "cuda";
  o.size = "64x64";  // latent 2 x 8 x 8: 32 tokens after the 1 x 2 x 2 patches
  o.iterations = 1;
  const RlResult r = run_rl(o, s.env, s.rewards);
  ASSERT_EQ(r.log.size(), 1u);
  const RlIterationLog& l = r.log[0];
  std::printf("[ info     ] CUDA first iteration: ratio [%.6f, %.6f], kl %.3g, v rms %.3g, policy-reference gap %.3g, "
              "clip fraction %.3f\n",
              l.ratio_min, l.ratio_max, l.kl, l.v_rms, l.ref_rel, l.clip_fraction);
  EXPECT_NEAR(l.ratio_min, 1.0, 1e-2);
  EXPECT_NEAR(l.ratio_max, 1.0, 1e-2);
  EXPECT_LE(l.kl, 1e-3);
  EXPECT_LT(l.ref_rel, 2e-2);  // training vs inference forward: bf16 rounding only
  EXPECT_EQ(l.clip_fraction, 0.0);
  EXPECT_TRUE(std::isfinite(l.grad_norm));
  fs::remove_all(out);
  fs::remove(o.prompts);
}
