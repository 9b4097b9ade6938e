// Wan-VAE on CUDA: conv3d and the VAE ops against their CPU references, and the whole VAE
// against the golden reference (bf16-level bound 2e-2; convolutions run in TF32).
#include <gtest/gtest.h>

#include <functional>
#include <random>

#include "osp/io/checkpoint.h"
#include "osp/model/vae.h"
#include "osp/ops/conv.h"
#include "osp/ops/t5_vae_ops.h"
#include "test_util.h"

namespace {

using osp::Device;
using osp::DType;
using osp::Tensor;

Tensor randn(const osp::Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(size_t(osp::shape_numel(s)));
  for (float& x : v) x = nd(rng);
  return Tensor::from_vector(v, s);
}

struct ConvCase {
  osp::Shape x, w;
  osp::ops::Conv3dArgs a;
};

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cases;
  cases.push_back({{3, 5, 7, 9}, {4, 5, 3, 3, 3}, osp::ops::Conv3dArgs::same_causal(1, 1, 1)});
  cases.push_back({{1, 8, 6, 10}, {6, 8, 3, 3, 3}, osp::ops::Conv3dArgs::same_causal(1, 1, 1)});
  osp::ops::Conv3dArgs down;  // downsample2d: ZeroPad2d(0,1,0,1) + stride 2
  down.pad_bottom = down.pad_right = 1;
  down.stride_h = down.stride_w = 2;
  cases.push_back({{2, 6, 8, 12}, {6, 6, 1, 3, 3}, down});
  osp::ops::Conv3dArgs tdown;  // downsample3d time conv
  tdown.stride_t = 2;
  cases.push_back({{5, 4, 3, 5}, {4, 4, 3, 1, 1}, tdown});
  cases.push_back({{3, 16, 5, 7}, {12, 16, 1, 1, 1}, {}});  // pointwise
  cases.push_back({{2, 96, 40, 64}, {32, 96, 3, 3, 3}, osp::ops::Conv3dArgs::same_causal(1, 1, 1)});
  // K = 864, 48×48 outputs, 70 frames: the forward's 256 MiB column cap takes 33 whole frames per
  // chunk (33, 33, 4); and a time-stride-2 conv over 81 frames in one chunk.
  cases.push_back({{70, 32, 48, 48}, {8, 32, 3, 3, 3}, osp::ops::Conv3dArgs::same_causal(1, 1, 1)});
  cases.push_back({{81, 48, 20, 20}, {16, 48, 3, 1, 1}, tdown});
  return cases;
}

// ops::conv3d on both CUDA paths (cudnn, the default, and im2col) against the CPU.
TEST(VaeGpu, Conv3dMatchesCpu) {
  OSP_REQUIRE_GPU();
  const std::string was = osp::ops::conv3d_path();
  for (const std::string path : {"cudnn", "im2col"}) {
    osp::ops::set_conv3d_path(path);
    uint32_t seed = 1;
    for (const auto& c : conv_cases()) {
      Tensor x = randn(c.x, seed++), w = randn(c.w, seed++), b = randn({c.w[0]}, seed++);
      Tensor ref = osp::ops::conv3d(x, w, &b, c.a);
      Tensor xd = x.to(Device::cuda()), wd = w.to(Device::cuda()), bd = b.to(Device::cuda());
      Tensor out = osp::ops::conv3d(xd, wd, &bd, c.a);
      ASSERT_EQ(out.shape(), ref.shape());
      EXPECT_LE(osp::relative_error(out, ref), 5e-3)
          << path << ": " << osp::shape_str(c.x) << " * " << osp::shape_str(c.w);
    }
  }
  osp::ops::set_conv3d_path(was);
}

namespace {

using ConvPath = bool (*)(const Tensor&, const Tensor&, const Tensor*, const osp::ops::Conv3dArgs&, Tensor&,
                          std::string*);

// One cuDNN path alone on every conv case, with and without a bias, against the CPU (TF32
// bound); where `refusal(case)` names a reason the path must refuse with it and write nothing.
void check_conv_path(ConvPath path, uint32_t seed, const std::function<std::string(const ConvCase&)>& refusal) {
  for (const auto& c : conv_cases()) {
    SCOPED_TRACE(osp::shape_str(c.x) + " * " + osp::shape_str(c.w));
    Tensor x = randn(c.x, seed++), w = randn(c.w, seed++), b = randn({c.w[0]}, seed++);
    Tensor xd = x.to(Device::cuda()), wd = w.to(Device::cuda()), bd = b.to(Device::cuda());
    const std::string refused = refusal(c);
    for (const bool with_bias : {true, false}) {
      Tensor ref = osp::ops::conv3d(x, w, with_bias ? &b : nullptr, c.a);
      Tensor out = Tensor::zeros(ref.shape(), DType::F32, Device::cuda());
      std::string why;
      const bool took = path(xd, wd, with_bias ? &bd : nullptr, c.a, out, &why);
      if (!refused.empty()) {
        EXPECT_FALSE(took);
        EXPECT_NE(why.find(refused), std::string::npos) << why;
        EXPECT_EQ(osp::max_abs_diff(out, Tensor::zeros(ref.shape(), DType::F32)), 0.0);
        continue;
      }
      ASSERT_TRUE(took) << why;
      EXPECT_LE(osp::relative_error(out, ref), 5e-3) << (with_bias ? "with bias" : "no bias");
    }
  }
}

}  // namespace

// cuDNN's legacy path (NCDHW copies; OSP_VAE_FP32's) alone: it takes every case but the
// asymmetric padding of the encoder's downsample (refused, with its reason, nothing written).
TEST(VaeGpu, Conv3dCudnnMatchesCpu) {
  OSP_REQUIRE_GPU();
  check_conv_path(osp::ops::cuda::conv3d_cudnn, 1, [](const ConvCase& c) {
    return c.a.pad_bottom != c.a.pad_top || c.a.pad_right != c.a.pad_left ? "asymmetric" : "";
  });
}

// The cuDNN graph path (backend API, channels-last staging, TF32 engines; the default) alone: it
// takes every case, the asymmetric pads too.
TEST(VaeGpu, Conv3dCudnnGraphMatchesCpu) {
  OSP_REQUIRE_GPU();
  check_conv_path(osp::ops::cuda::conv3d_cudnn_graph, 101, [](const ConvCase&) { return std::string(); });
}

TEST(VaeGpu, ExtraOpsMatchCpu) {
  OSP_REQUIRE_GPU();
  const Device g = Device::cuda();
  Tensor x = randn({3, 24, 5, 7}, 11), gamma = randn({24}, 12);
  for (bool silu : {false, true}) {
    Tensor r = Tensor::empty(x.shape(), DType::F32), o = Tensor::empty(x.shape(), DType::F32, g);
    osp::ops::channel_rms_norm(x, gamma, silu, r);
    osp::ops::channel_rms_norm(x.to(g), gamma.to(g), silu, o);
    EXPECT_LE(osp::relative_error(o, r), 1e-5) << "silu " << silu;
  }
  {
    Tensor r = Tensor::empty({3, 24, 10, 14}, DType::F32), o = Tensor::empty({3, 24, 10, 14}, DType::F32, g);
    osp::ops::upsample_nearest2x(x, r);
    osp::ops::upsample_nearest2x(x.to(g), o);
    EXPECT_EQ(osp::max_abs_diff(o, r), 0.0);
  }
  {
    Tensor qkv = randn({2, 3 * 32, 300}, 13);
    Tensor r = Tensor::empty({2, 32, 300}, DType::F32), o = Tensor::empty({2, 32, 300}, DType::F32, g);
    osp::ops::spatial_attention(qkv, r);
    osp::ops::spatial_attention(qkv.to(g), o);
    EXPECT_LE(osp::relative_error(o, r), 1e-4);
  }
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor a = randn({1000}, 14).to(dt), b = randn({1000}, 15).to(dt);
    Tensor ra = a.clone(), ga = a.to(g);
    osp::ops::add_(ra, b);
    osp::ops::add_(ga, b.to(g));
    EXPECT_LE(osp::relative_error(ga, ra), 1e-6);
    osp::ops::mul_(ra, b);
    osp::ops::mul_(ga, b.to(g));
    EXPECT_LE(osp::relative_error(ga, ra), 1e-6);
  }
}

osp::io::Checkpoint golden_ck() {
  static osp::io::Checkpoint c = osp::io::open_checkpoint(osp::test::golden("golden_t5_vae.safetensors"));
  return c;
}
Tensor drop_batch(const Tensor& t) {
  osp::Shape s(t.shape().begin() + 1, t.shape().end());
  return t.contiguous().view(s);
}

TEST(VaeGpu, DecodeAndEncodeMatchGolden) {
  OSP_REQUIRE_GPU();
  osp::model::WanVae vae = osp::model::WanVae::load(osp::model::weight_getter(golden_ck()),
                                                    Device::cuda(), {}, "vae.weights.");
  osp::model::DecodeOptions o;
  o.clamp = false;
  Tensor dec = vae.decode(drop_batch(golden_ck()->get("vae.z")).to(Device::cuda()), o);
  EXPECT_LE(osp::relative_error(dec, drop_batch(golden_ck()->get("vae.decoded"))), 2e-2);
  Tensor mu = vae.encode(drop_batch(golden_ck()->get("vae.video")).to(Device::cuda()));
  EXPECT_LE(osp::relative_error(mu, drop_batch(golden_ck()->get("vae.encoded_mu"))), 2e-2);
}

// The whole decode and encode again on the other convolution path (the test above runs the
// default, cuDNN since session 11).
TEST(VaeGpu, DecodeAndEncodeMatchGoldenWithIm2colConvolutions) {
  OSP_REQUIRE_GPU();
  const std::string was = osp::ops::conv3d_path();
  osp::ops::set_conv3d_path("im2col");
  osp::model::WanVae vae = osp::model::WanVae::load(osp::model::weight_getter(golden_ck()),
                                                    Device::cuda(), {}, "vae.weights.");
  osp::model::DecodeOptions o;
  o.clamp = false;
  Tensor dec = vae.decode(drop_batch(golden_ck()->get("vae.z")).to(Device::cuda()), o);
  Tensor mu = vae.encode(drop_batch(golden_ck()->get("vae.video")).to(Device::cuda()));
  osp::ops::set_conv3d_path(was);
  EXPECT_LE(osp::relative_error(dec, drop_batch(golden_ck()->get("vae.decoded"))), 2e-2);
  EXPECT_LE(osp::relative_error(mu, drop_batch(golden_ck()->get("vae.encoded_mu"))), 2e-2);
}

}  // namespace
