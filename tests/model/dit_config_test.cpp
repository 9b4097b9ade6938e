// DiTConfig: config.json in Wan / diffusers / OSP-Next form, presets, inference, errors.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "osp/model/dit.h"
#include "osp/model/dit_config.h"

using namespace osp;
using model::DiTConfig;
using sparse::BlockKind;

TEST(DiTConfig, WanConfigJson) {
  // the official 1.3B config.json (wan-spec §2.1)
  auto c = DiTConfig::from_json(R"({"_class_name":"WanModel","_diffusers_version":"0.30.0",
      "model_type":"t2v","dim":1536,"ffn_dim":8960,"freq_dim":256,"in_dim":16,"num_heads":12,
      "num_layers":30,"out_dim":16,"text_len":512,"eps":1e-06})");
  EXPECT_EQ(c.dim, 1536);
  EXPECT_EQ(c.head_dim(), 128);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.text_dim, 4096);
  EXPECT_EQ(c.skiparse_mode, "full");
  EXPECT_EQ(c.block_kinds(), std::vector<BlockKind>(30, BlockKind::Full));
  auto p = DiTConfig::wan_14b();
  EXPECT_EQ(p.dim, 5120);
  EXPECT_EQ(p.num_heads, 40);
  EXPECT_EQ(p.ffn_dim, 13824);
}

TEST(DiTConfig, DiffusersConfigJson) {
  auto c = DiTConfig::from_json(R"({"_class_name":"WanTransformer3DModel",
      "num_attention_heads":40,"attention_head_dim":128,"in_channels":16,"out_channels":16,
      "text_dim":4096,"freq_dim":256,"ffn_dim":13824,"num_layers":40,"cross_attn_norm":true,
      "qk_norm":"rms_norm_across_heads","eps":1e-06,"patch_size":[1,2,2]})");
  EXPECT_EQ(c.dim, 5120);
  EXPECT_EQ(c.num_heads, 40);
  EXPECT_EQ(c.num_layers, 40);
  EXPECT_TRUE(c.qk_norm);
}

TEST(DiTConfig, OspNextDualEnd) {
  auto c = DiTConfig::from_json(R"({"dim":1536,"ffn_dim":8960,"num_heads":12,"num_layers":30,
      "skiparse_model_type":"dual_end","sparse_ratio":2,"num_full_blocks":8})");
  auto k = c.block_kinds();
  ASSERT_EQ(k.size(), 30u);
  for (int i : {0, 1, 2, 3, 26, 27, 28, 29}) EXPECT_EQ(k[size_t(i)], BlockKind::Full) << i;
  for (int i = 4; i < 26; ++i)
    EXPECT_EQ(k[size_t(i)], i % 2 == 0 ? BlockKind::Token : BlockKind::Group) << i;
}

TEST(DiTConfig, Errors) {
  EXPECT_THROW(DiTConfig::from_json("{not json"), Error);
  EXPECT_THROW(DiTConfig::from_json("[1,2]"), Error);
  EXPECT_THROW(DiTConfig::from_json(R"({"dim":1000,"num_heads":12})"), Error);  // not divisible
  EXPECT_THROW(DiTConfig::from_json(R"({"model_type":"i2v"})"), Error);
  EXPECT_THROW(DiTConfig::from_json(R"({"skiparse_model_type":"uniform","num_full_blocks":8})"),
               Error);
  EXPECT_THROW(DiTConfig::from_json(R"({"skiparse_model_type":"dual_end","num_full_blocks":6})"),
               Error);  // nf % 4 != 0
  EXPECT_THROW(DiTConfig::from_json(R"({"dim":"wide"})"), Error);
  EXPECT_THROW(DiTConfig::from_json(R"({"patch_size":[2,2]})"), Error);
  EXPECT_THROW(DiTConfig::from_json_file("/nonexistent/config.json"), Error);
  std::map<std::string, Shape> empty;
  EXPECT_THROW(DiTConfig::infer(empty), Error);
}

TEST(DiTConfig, InferFromExpectedShapes) {
  DiTConfig c = DiTConfig::wan_1_3b();
  c.num_layers = 3;
  auto shapes = model::DiT::expected_shapes(c);
  EXPECT_EQ(shapes.size(), size_t(12 + 27 * 3 + 3));  // wan-spec §3.2: 27 per block
  auto inf = DiTConfig::infer(shapes);
  EXPECT_EQ(inf.dim, 1536);
  EXPECT_EQ(inf.ffn_dim, 8960);
  EXPECT_EQ(inf.num_heads, 12);
  EXPECT_EQ(inf.num_layers, 3);
  EXPECT_EQ(inf.text_dim, 4096);
  EXPECT_EQ(inf.out_dim, 16);
  auto inf2 = DiTConfig::infer(shapes, "", 24);  // explicit heads
  EXPECT_EQ(inf2.num_heads, 24);
  shapes.erase("blocks.1.ffn.0.weight");
  shapes.erase("blocks.1.ffn.0.bias");
  shapes.erase("blocks.2.modulation");
  EXPECT_EQ(DiTConfig::infer(shapes).num_layers, 3);  // other block-1/2 tensors remain
}

TEST(DiTConfig, FlopModelMatchesSpecTable) {
  // wan-spec §7.1: 1.3B @ 832×480×81 → L = 32,760; per block 9.43 TFLOP
  DiTConfig c = DiTConfig::wan_1_3b();
  c.num_layers = 1;
  const sparse::Grid g{21, 30, 52};
  const double f = model::dit_forward_flops(c, g, {BlockKind::Full}, 2, 1);
  // one block + embeddings/head (< 1 %)
  EXPECT_NEAR(f / 9.43e12, 1.0, 0.01);
  // a sparse block's attention core is about 1/4
  const double fs = model::dit_forward_flops(c, g, {BlockKind::Token}, 2, 1);
  EXPECT_LT(fs, f * 0.55);
}

// Hostile or mistyped config.json values are refused by name, before anything is sized from them.
TEST(DiTConfig, HostileValuesAreRefusedByName) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"dim":"1536"})", "\"dim\" must be an integer, got string"},  // a string where a number belongs
      {R"({"num_layers":1000000000})", "num_layers 1000000000 is out of range"},
      {R"({"num_layers":1e300})", "far out of range"},
      {R"({"num_layers":-40})", "must be positive"},
      {R"({"dim":1536.5})", "\"dim\" must be an integer"},
      {R"({"ffn_dim":[8960]})", "\"ffn_dim\" must be an integer, got array"},
      {R"({"text_len":100000})", "text_len 100000 is out of range"},
      {R"({"dim":65536,"num_heads":512})", "dim 65536 is out of range"},
      {R"({"num_heads":{"n":12}})", "\"num_heads\" must be an integer, got object"},
      {R"({"eps":"1e-6"})", "\"eps\" must be a number"},
      {R"({"qk_norm":[true]})", "\"qk_norm\" must be a boolean"},
      {R"({"skiparse_model_type":7})", "\"skiparse_model_type\" must be a string"},
      {R"({"model_type":["t2v"]})", "\"model_type\" must be a string"},
      {R"({"patch_size":[1,2,"2"]})", "patch_size must be [t, h, w] integers"},
      {R"({"patch_size":[1,4096,2]})", "patch_size must be in [1, 16]"},
      {R"({"sparse_ratio":4294967298,"skiparse_model_type":"dual_end"})", "far out of range"},
  };
  for (const auto& [text, needle] : cases) {
    try {
      DiTConfig::from_json(text);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << text << " -> " << e.what();
    }
  }
}
