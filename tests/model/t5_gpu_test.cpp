// umT5 on CUDA (bf16): the biased attention kernel against the CPU reference and the encoder
// against the golden reference (bound 2e-2).
#include <gtest/gtest.h>

#include <random>

#include "osp/io/checkpoint.h"
#include "osp/model/t5.h"
#include "osp/ops/t5_vae_ops.h"
#include "test_util.h"

namespace {

using osp::Device;
using osp::DType;
using osp::Tensor;

Tensor randn_bf16_values(const osp::Shape& s, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(size_t(osp::shape_numel(s)));
  for (float& x : v) x = osp::round_bf16(nd(rng));  // exactly representable in bf16
  return Tensor::from_vector(v, s);
}

TEST(T5Gpu, BiasedAttentionMatchesCpu) {
  OSP_REQUIRE_GPU();
  for (int64_t D : {16, 64}) {
    const int64_t B = 2, L = 37, H = 3;
    Tensor q = randn_bf16_values({B, L, H, D}, 1, 0.3f), k = randn_bf16_values({B, L, H, D}, 2, 0.3f);
    Tensor v = randn_bf16_values({B, L, H, D}, 3), bias = randn_bf16_values({H, L, L}, 4);
    const std::vector<int32_t> lens = {37, 20};
    Tensor ref = Tensor::empty({B, L, H, D}, DType::F32);
    osp::ops::biased_attention(q, k, v, bias, lens, ref);
    const Device g = Device::cuda();
    Tensor out = Tensor::empty({B, L, H, D}, DType::BF16, g);
    osp::ops::biased_attention(q.to(DType::BF16).to(g), k.to(DType::BF16).to(g),
                               v.to(DType::BF16).to(g), bias.to(g), lens, out);
    EXPECT_LE(osp::relative_error(out, ref), 1e-2) << "D " << D;
  }
}

TEST(T5Gpu, RelativeBiasMatchesCpu) {
  OSP_REQUIRE_GPU();
  const int64_t L = 45, H = 5;
  Tensor table = randn_bf16_values({32, H}, 9);
  Tensor bucket = Tensor::empty({L, L}, DType::I32);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j) bucket.data<int32_t>()[i * L + j] = osp::model::t5_relative_bucket(j - i);
  Tensor ref = Tensor::empty({H, L, L}, DType::F32), out = Tensor::empty({H, L, L}, DType::F32, Device::cuda());
  osp::ops::relative_bias(table, bucket, ref);
  osp::ops::relative_bias(table.to(Device::cuda()), bucket.to(Device::cuda()), out);
  EXPECT_EQ(osp::max_abs_diff(out, ref), 0.0);
  EXPECT_EQ(ref.item({2, 3, 40}), table.item({osp::model::t5_relative_bucket(37), 2}));
}

TEST(T5Gpu, ForwardMatchesGolden) {
  OSP_REQUIRE_GPU();
  auto ck = osp::io::open_checkpoint(osp::test::golden("golden_t5_vae.safetensors"));
  auto t5 = osp::model::T5Encoder::load(osp::model::weight_getter(ck), Device::cuda(), "t5.weights.");
  Tensor out = t5.forward(ck->get("t5.ids"), ck->get("t5.mask"));
  EXPECT_EQ(out.dtype(), DType::BF16);
  EXPECT_TRUE(out.device().is_cuda());
  EXPECT_LE(osp::relative_error(out, ck->get("t5.out")), 2e-2);
  // The pipeline form: trimmed to the real tokens, zero rows after.
  std::vector<int32_t> ids(24);
  int64_t n = 0;
  for (int64_t j = 0; j < 24; ++j) {
    ids[size_t(j)] = int32_t(ck->get("t5.ids").item({0, j}));
    n += int64_t(ck->get("t5.mask").item({0, j}));
  }
  Tensor e = t5.encode(ids, n, 32).to(Device::cpu());
  Tensor want = ck->get("t5.out").select(0, 0).slice(0, 0, n).contiguous();
  EXPECT_LE(osp::relative_error(e.slice(0, 0, n).contiguous(), want), 2e-2);
  for (float x : e.slice(0, n, 32).contiguous().to_float_vector()) ASSERT_EQ(x, 0.f);
}

}  // namespace
