// AdamW against torch.optim.AdamW (float64 reference): three steps from adamw.p0 with
// adamw.grad{k} must give adamw.p{k+1} within 1e-6.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "osp/io/safetensors.h"
#include "osp/train/adamw.h"
#include "test_util.h"

using namespace osp;

TEST(AdamWGolden, ThreeTorchSteps) {
  const auto f = io::SafetensorsFile::open(test::golden("golden_train.safetensors"));
  const auto meta = nlohmann::json::parse(f.metadata().at("adamw"));
  train::AdamWConfig cfg;
  cfg.lr = meta.at("lr").get<double>();
  cfg.beta1 = meta.at("betas")[0].get<double>();
  cfg.beta2 = meta.at("betas")[1].get<double>();
  cfg.eps = meta.at("eps").get<double>();
  cfg.weight_decay = meta.at("weight_decay").get<double>();
  const int steps = meta.at("steps").get<int>();
  ASSERT_EQ(steps, 3);

  Tensor value = f.get("adamw.p0").clone();
  Tensor grad = Tensor::zeros(value.shape(), DType::F32);
  ParamTable table = {{"p", value.shape(), &value, &grad}};
  train::AdamW opt(table, cfg);
  for (int k = 0; k < steps; ++k) {
    grad.copy_from(f.get(str("adamw.grad", k)));
    opt.step(cfg.lr);
    const Tensor want = f.get(str("adamw.p", k + 1));
    EXPECT_LE(max_abs_diff(value, want), 1e-6) << "after step " << k + 1;
    EXPECT_LE(max_abs_diff(opt.slots()[0].master, want), 1e-6) << "master after step " << k + 1;
  }
  EXPECT_EQ(opt.steps(), 3);
}

TEST(AdamWGolden, BF16ComputeCopyIsRoundedMaster) {
  const auto f = io::SafetensorsFile::open(test::golden("golden_train.safetensors"));
  Tensor value = f.get("adamw.p0").to(DType::BF16);
  Tensor grad = f.get("adamw.grad0").clone();
  ParamTable table = {{"p", value.shape(), &value, &grad}};
  train::AdamWConfig cfg;
  cfg.lr = 1e-3;
  train::AdamW opt(table, cfg);
  opt.step(cfg.lr);
  const Tensor& master = opt.slots()[0].master;
  ASSERT_EQ(master.dtype(), DType::F32);
  test::expect_same_bits(value, master.to(DType::BF16), "bf16 value == bf16(master)");
  // The master keeps what bf16 cannot hold: it differs from its rounded copy somewhere.
  EXPECT_GT(max_abs_diff(master, value.to(DType::F32)), 0.0);
}
