// The trainable VAE (model/vae_train.h) on CUDA against the same model on the CPU: one
// forward_backward of a small clip on the same weights gives the same loss statistics and the
// same parameter and input gradients, and 20 plain SGD steps on the GPU lower the loss.
// This binary sets OSP_VAE_FP32=1 before any convolution (the CUDA convs then use FP32 GEMMs,
// not TF32), so the two backends differ only in summation order and the bounds are tight; the
// TF32 path of every op is covered by tests/ops/vae_backward_parity_gpu_test.cpp.
// Run: ctest -L gpu -R vae_train (or build-*/model_vae_train_gpu_test).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "osp/core/philox.h"
#include "osp/model/vae_train.h"
#include "test_util.h"

using namespace osp;
using namespace osp::model;

namespace {
// Before main(): conv_use_tf32() reads the variable once, at the first CUDA convolution.
const bool kFp32Convs = [] { return ::setenv("OSP_VAE_FP32", "1", 1) == 0; }();
Tensor clip(uint64_t seed) {
  Tensor v = randn({3, 9, 32, 48}, seed);
  float* p = v.data<float>();
  for (int64_t i = 0; i < v.numel(); ++i) p[i] = std::tanh(p[i]);
  return v;
}
}  // namespace

TEST(VaeTrainGpu, MatchesCpu) {
  OSP_REQUIRE_GPU();
  const VaeConfig cfg = small_vae_config(16, 1);
  TrainableVae cpu = TrainableVae::from_scratch(cfg, 5, Device::cpu());
  TrainableVae gpu = TrainableVae::from_scratch(cfg, 5, Device::cuda(0));
  const Tensor video = clip(3);
  VaeLossConfig lc;
  lc.kl_weight = 0.01;
  Tensor dv_c = Tensor::empty(video.shape(), DType::F32), dv_g = Tensor::empty(video.shape(), DType::F32);
  cpu.zero_grad();
  gpu.zero_grad();
  const VaeLossStats sc = cpu.forward_backward(video, lc, 7, &dv_c);
  const VaeLossStats sg = gpu.forward_backward(video, lc, 7, &dv_g);
  ASSERT_TRUE(kFp32Convs);
  const double tol = 1e-4;
  EXPECT_NEAR(sg.loss, sc.loss, tol * std::abs(sc.loss));
  EXPECT_NEAR(sg.mse, sc.mse, tol * sc.mse);
  EXPECT_NEAR(sg.kl, sc.kl, tol * sc.kl + 1e-9);
  EXPECT_LE(relative_error(dv_g, dv_c), 10 * tol) << "dvideo";
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < cpu.params().size(); ++i) {
    const ParamRef& a = cpu.params()[i];
    const ParamRef& b = gpu.params()[i];
    ASSERT_EQ(a.name, b.name);
    ASSERT_TRUE(b.value->device().is_cuda());
    const double e = relative_error(b.grad->to(Device::cpu()), *a.grad);
    EXPECT_FALSE(std::isnan(e)) << a.name;
    EXPECT_LE(e, 20 * tol) << a.name << ": relative error of the gradient " << e;
    if (e > worst) {
      worst = e;
      worst_name = a.name;
    }
  }
  std::printf("largest relative gradient difference GPU vs CPU: %.3g (%s)\n", worst, worst_name.c_str());
  // Inference pieces agree too.
  const Tensor mom_c = cpu.encode_moments(video), mom_g = gpu.encode_moments(video);
  EXPECT_LE(relative_error(mom_g.to(Device::cpu()), mom_c), 10 * tol) << "encode_moments";
}

TEST(VaeTrainGpu, SgdStepsLowerTheLoss) {
  OSP_REQUIRE_GPU();
  TrainableVae vae = TrainableVae::from_scratch(small_vae_config(16, 1), 9, Device::cuda(0));
  const Tensor video = clip(4);
  VaeLossConfig lc;
  lc.sample_posterior = false;
  const double l0 = vae.loss(video, lc, 0).loss;
  for (int step = 0; step < 20; ++step) {
    vae.zero_grad();
    vae.forward_backward(video, lc, 0);
    for (ParamRef& p : vae.params()) {  // w -= 0.05·g on the host
      Tensor w = p.value->to(Device::cpu()).clone(), g = p.grad->to(Device::cpu());
      float* a = w.data<float>();
      const float* b = g.data<float>();
      for (int64_t i = 0; i < w.numel(); ++i) a[i] -= 0.05f * b[i];
      p.value->copy_from(w);
    }
  }
  const double l1 = vae.loss(video, lc, 0).loss;
  EXPECT_LT(l1, 0.8 * l0) << "loss " << l0 << " -> " << l1;
}
