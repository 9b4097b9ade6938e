// umT5 encoder against the reference (golden_t5_vae.safetensors, fp32 CPU), the pipeline's
// trimmed + zero-padded form, .pth loading, the relative-position buckets and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "osp/io/checkpoint.h"
#include "osp/model/t5.h"
#include "test_util.h"

namespace {

using osp::Tensor;
using osp::model::T5Encoder;

osp::io::Checkpoint golden_ck() {
  static osp::io::Checkpoint c =
      osp::io::open_checkpoint(osp::test::golden("golden_t5_vae.safetensors"));
  return c;
}
const T5Encoder& t5() {
  static T5Encoder t = T5Encoder::load(osp::model::weight_getter(golden_ck()), osp::Device::cpu(),
                                       "t5.weights.");
  return t;
}

TEST(T5Golden, ConfigFromCheckpoint) {
  const auto& c = t5().config();
  EXPECT_EQ(c.vocab, 300);
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.dim_attn, 64);
  EXPECT_EQ(c.dim_ffn, 160);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.num_buckets, 32);
}

TEST(T5Golden, ForwardMatchesReference) {
  Tensor ids = golden_ck()->get("t5.ids"), mask = golden_ck()->get("t5.mask");
  Tensor ref = golden_ck()->get("t5.out");  // [2, 24, 64], padded positions included
  Tensor out = t5().forward(ids, mask);
  ASSERT_EQ(out.shape(), ref.shape());
  EXPECT_LE(osp::relative_error(out, ref), 1e-4);
}

TEST(T5Golden, EncodeTrimsAndZeroPads) {
  Tensor ids = golden_ck()->get("t5.ids"), mask = golden_ck()->get("t5.mask");
  Tensor ref = golden_ck()->get("t5.out");
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<int32_t> row(24);
    int64_t n = 0;
    for (int64_t j = 0; j < 24; ++j) {
      row[size_t(j)] = int32_t(ids.item({b, j}));
      n += int64_t(mask.item({b, j}));
    }
    ASSERT_GE(n, 1);
    Tensor e = t5().encode(row, n, 32);  // [32, 64]
    ASSERT_EQ(e.shape(), (osp::Shape{32, 64}));
    Tensor real = e.slice(0, 0, n).contiguous();
    Tensor want = ref.select(0, b).slice(0, 0, n).contiguous();
    EXPECT_LE(osp::relative_error(real, want), 1e-4) << "prompt " << b;
    for (int64_t j = n; j < 32; ++j)
      for (int64_t c = 0; c < 64; ++c) ASSERT_EQ(e.item({j, c}), 0.0);
  }
}

TEST(T5Golden, PthWeightsGiveTheSameOutput) {
  auto pth = osp::io::open_checkpoint(osp::test::golden("tiny_t5_bf16.pth"));
  T5Encoder m = T5Encoder::load(osp::model::weight_getter(pth));
  Tensor ids = golden_ck()->get("t5.ids"), mask = golden_ck()->get("t5.mask");
  EXPECT_EQ(osp::max_abs_diff(m.forward(ids, mask), t5().forward(ids, mask)), 0.0);
}

TEST(T5Golden, HuggingFaceNamesAccepted) {
  // Rename the golden weights to transformers' UMT5EncoderModel names (wan-spec §3.3).
  std::map<std::string, Tensor> hf;
  for (const auto& n : golden_ck()->names()) {
    if (n.rfind("t5.weights.", 0) != 0) continue;
    std::string w = n.substr(11), h;
    if (w == "token_embedding.weight") h = "shared.weight";
    else if (w == "norm.weight") h = "encoder.final_layer_norm.weight";
    else {
      const size_t dot = w.find('.', 7);
      const std::string b = "encoder.block." + w.substr(7, dot - 7) + ".layer.", r = w.substr(dot + 1);
      const std::map<std::string, std::string> m = {
          {"norm1.weight", "0.layer_norm.weight"}, {"attn.q.weight", "0.SelfAttention.q.weight"},
          {"attn.k.weight", "0.SelfAttention.k.weight"}, {"attn.v.weight", "0.SelfAttention.v.weight"},
          {"attn.o.weight", "0.SelfAttention.o.weight"},
          {"pos_embedding.embedding.weight", "0.SelfAttention.relative_attention_bias.weight"},
          {"norm2.weight", "1.layer_norm.weight"}, {"ffn.gate.0.weight", "1.DenseReluDense.wi_0.weight"},
          {"ffn.fc1.weight", "1.DenseReluDense.wi_1.weight"}, {"ffn.fc2.weight", "1.DenseReluDense.wo.weight"}};
      h = b + m.at(r);
    }
    hf[h] = golden_ck()->get(n);
  }
  T5Encoder m = T5Encoder::load(osp::model::weight_getter(osp::io::memory_checkpoint(hf)));
  Tensor ids = golden_ck()->get("t5.ids"), mask = golden_ck()->get("t5.mask");
  EXPECT_EQ(osp::max_abs_diff(m.forward(ids, mask), t5().forward(ids, mask)), 0.0);
}

TEST(T5Buckets, TableMatchesTheFloatFormula) {
  // The reference: 16 + ... for r > 0; |r| < 8 exact; else 8 + int(log(|r|/8)/log(16)·8), ≤ 15.
  for (int64_t r = -600; r <= 600; ++r) {
    const int64_t a = std::llabs(r);
    int64_t f = a;
    if (a >= 8) {
      const float v = std::log(float(a) / 8.f) / std::log(128.f / 8.f) * 8.f;
      f = std::min<int64_t>(8 + int64_t(v), 15);
    }
    ASSERT_EQ(osp::model::t5_relative_bucket(r), (r > 0 ? 16 : 0) + f) << "r = " << r;
  }
  EXPECT_EQ(osp::model::t5_relative_bucket(16), 16 + 10);
  EXPECT_EQ(osp::model::t5_relative_bucket(-32), 12);
  EXPECT_EQ(osp::model::t5_relative_bucket(64), 16 + 14);
  EXPECT_EQ(osp::model::t5_relative_bucket(-91), 15);
}

TEST(T5Golden, BadInputsThrow) {
  Tensor ids = Tensor::zeros({1, 4}, osp::DType::I32);
  Tensor mask = Tensor::zeros({1, 4}, osp::DType::I32);
  EXPECT_THROW(t5().forward(ids, mask), osp::Error);  // no real token
  mask.data<int32_t>()[0] = 1;
  mask.data<int32_t>()[2] = 1;                        // hole: not right-padded
  EXPECT_THROW(t5().forward(ids, mask), osp::Error);
  mask.data<int32_t>()[1] = 1;
  ids.data<int32_t>()[1] = 300;                       // outside the vocabulary
  EXPECT_THROW(t5().forward(ids, mask), osp::Error);
  EXPECT_THROW(t5().forward(ids, Tensor::zeros({1, 5}, osp::DType::I32)), osp::Error);
  EXPECT_THROW(t5().encode({5, 1}, 3), osp::Error);
  EXPECT_THROW(T5Encoder::load([](const std::string&) { return Tensor(); }), osp::Error);
}

}  // namespace
