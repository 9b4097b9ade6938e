// The Mix-GRPO step on CUDA F32 tensors equals the CPU path (golden_train `grpo.*` inputs):
// the rollout SDE step and the policy loss with its gradient run through ops::axpby on the GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "osp/io/safetensors.h"
#include "osp/sample/sde_step.h"
#include "osp/train/grpo.h"
#include "test_util.h"

using namespace osp;

namespace {

std::vector<double> vec(const io::SafetensorsFile& f, const std::string& name) {
  std::vector<double> v;
  Tensor t = f.get(name);
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.reshape({-1}).item({i}));
  return v;
}

}  // namespace

TEST(GrpoGpu, MatchesCpu) {
  OSP_REQUIRE_GPU();
  const io::SafetensorsFile f = io::SafetensorsFile::open(test::golden("golden_train.safetensors"));
  const sample::SdeGrid grid = sample::sde_grid(25, 5.0);
  const sample::SdeCoeffs c = sample::sde_coeffs(grid, 3);
  const Device gpu = Device::cuda(0);
  auto get = [&](const char* n, Device d) { return f.get(std::string("grpo.") + n).clone().to(d); };

  // Rollout step.
  std::vector<double> lp[2];
  Tensor mu[2], xn[2];
  int k = 0;
  for (Device d : {Device::cpu(), gpu}) {
    const Tensor x = get("x", d), vc = get("v_cond", d), vu = get("v_uncond", d),
                 xi = get("xi", d);
    Tensor v = Tensor::empty(x.shape(), DType::F32, d);
    sample::lincomb(5.0, vc, -4.0, vu, v);
    mu[k] = Tensor::empty(x.shape(), DType::F32, d);
    xn[k] = Tensor::empty(x.shape(), DType::F32, d);
    lp[k] = sample::sde_step(c, x, v, xi, mu[k], xn[k]);
    ++k;
  }
  EXPECT_TRUE(mu[1].device().is_cuda());
  EXPECT_LE(relative_error(mu[1], mu[0]), 1e-6);
  EXPECT_LE(relative_error(xn[1], xn[0]), 1e-6);
  for (size_t b = 0; b < lp[0].size(); ++b) EXPECT_NEAR(lp[1][b], lp[0][b], 1e-6);

  // Policy loss and gradient.
  train::GrpoLossConfig cfg;
  train::GrpoStepResult r[2];
  k = 0;
  for (Device d : {Device::cpu(), gpu}) {
    train::GrpoStepInputs in;
    in.coeffs = c;
    in.x = get("x", d);
    in.x_next = get("x_next", d);
    in.v_cond = get("v_cond", d);
    in.v_uncond = get("v_uncond", d);
    in.v_ref = get("v_ref", d);
    in.logp_old = vec(f, "grpo.logp_old");
    in.advantages = vec(f, "grpo.advantages");
    r[k++] = train::grpo_policy_loss(in, cfg);
  }
  EXPECT_TRUE(r[1].grad_v_cond.device().is_cuda());
  for (size_t b = 0; b < r[0].logp.size(); ++b) EXPECT_NEAR(r[1].logp[b], r[0].logp[b], 1e-7);
  EXPECT_NEAR(r[1].loss_kl, r[0].loss_kl, 1e-6 * r[0].loss_kl);
  EXPECT_NEAR(r[1].loss, r[0].loss, 1e-8);
  EXPECT_LE(relative_error(r[1].grad_v_cond, r[0].grad_v_cond), 1e-5);
  EXPECT_LE(relative_error(r[1].grad_v_cond, f.get("grpo.grad.v_cond")), 1e-5);
}
