// DiT original <-> diffusers names (wan-spec §3.2) and umT5 Wan <-> HF names (§3.3).
#include <gtest/gtest.h>

#include <set>

#include "io_test_util.h"
#include "osp/io/name_map.h"

using namespace osp;
using namespace osp::io;
using namespace osp::iotest;

namespace {

// Every tensor name of a Wan2.1 T2V DiT with `layers` blocks, original naming.
std::vector<std::string> wan_dit_names(int layers) {
  std::vector<std::string> v;
  for (const char* p : {"patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                        "time_embedding.2", "time_projection.1", "head.head"})
    for (const char* s : {".weight", ".bias"}) v.push_back(std::string(p) + s);
  v.push_back("head.modulation");
  for (int i = 0; i < layers; ++i) {
    std::string b = "blocks." + std::to_string(i) + ".";
    v.push_back(b + "modulation");
    for (const char* a : {"self_attn", "cross_attn"}) {
      for (const char* l : {"q", "k", "v", "o"})
        for (const char* s : {".weight", ".bias"}) v.push_back(b + a + "." + l + s);
      v.push_back(b + a + ".norm_q.weight");
      v.push_back(b + a + ".norm_k.weight");
    }
    for (const char* l : {"norm3", "ffn.0", "ffn.2"})
      for (const char* s : {".weight", ".bias"}) v.push_back(b + l + s);
  }
  return v;
}

}  // namespace

TEST(NameMap, SpecTableRows) {
  const std::pair<const char*, const char*> rows[] = {
      {"patch_embedding.weight", "patch_embedding.weight"},
      {"text_embedding.0.bias", "condition_embedder.text_embedder.linear_1.bias"},
      {"text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight"},
      {"time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"},
      {"time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias"},
      {"time_projection.1.weight", "condition_embedder.time_proj.weight"},
      {"blocks.0.modulation", "blocks.0.scale_shift_table"},
      {"blocks.12.self_attn.q.weight", "blocks.12.attn1.to_q.weight"},
      {"blocks.12.self_attn.o.bias", "blocks.12.attn1.to_out.0.bias"},
      {"blocks.3.self_attn.norm_k.weight", "blocks.3.attn1.norm_k.weight"},
      {"blocks.3.norm3.weight", "blocks.3.norm2.weight"},  // names swapped
      {"blocks.3.norm3.bias", "blocks.3.norm2.bias"},
      {"blocks.29.cross_attn.v.weight", "blocks.29.attn2.to_v.weight"},
      {"blocks.29.cross_attn.o.weight", "blocks.29.attn2.to_out.0.weight"},
      {"blocks.29.cross_attn.norm_q.weight", "blocks.29.attn2.norm_q.weight"},
      {"blocks.7.ffn.0.weight", "blocks.7.ffn.net.0.proj.weight"},
      {"blocks.7.ffn.2.bias", "blocks.7.ffn.net.2.bias"},
      {"head.modulation", "scale_shift_table"},
      {"head.head.weight", "proj_out.weight"},
  };
  for (auto& [o, d] : rows) {
    EXPECT_EQ(dit_original_to_diffusers(o).value_or("<none>"), d) << o;
    EXPECT_EQ(dit_diffusers_to_original(d).value_or("<none>"), o) << d;
  }
  // Not DiT names, or names of the other convention.
  for (const char* n : {"blocks.0.norm1.weight", "blocks.x.modulation", "blocks.01.modulation", "head.head.scale",
                        "blocks.0.attn1.to_q.weight", "blocks.0.self_attn.q.weight.extra", "scale_shift_table"})
    EXPECT_FALSE(dit_original_to_diffusers(n)) << n;
  for (const char* n : {"blocks.0.norm3.weight", "blocks.0.self_attn.q.weight", "head.modulation"})
    EXPECT_FALSE(dit_diffusers_to_original(n)) << n;
}

TEST(NameMap, FullDitRoundTripsAndCounts) {
  for (int layers : {30, 40}) {  // 1.3B and 14B
    auto orig = wan_dit_names(layers);
    EXPECT_EQ(orig.size(), size_t(layers * 27 + 15));  // 825 / 1095 (spec §3.2)
    std::set<std::string> diff;
    for (auto& n : orig) {
      auto d = dit_original_to_diffusers(n);
      ASSERT_TRUE(d) << n;
      EXPECT_EQ(dit_diffusers_to_original(*d), n);
      diff.insert(*d);
    }
    EXPECT_EQ(diff.size(), orig.size());  // one-to-one
    EXPECT_EQ(detect_dit_naming(orig), DitNaming::Original);
    EXPECT_EQ(detect_dit_naming(std::vector<std::string>(diff.begin(), diff.end())), DitNaming::Diffusers);
  }
}

TEST(NameMap, DetectionErrors) {
  expect_error([] { detect_dit_naming({"blocks.0.self_attn.q.weight", "blocks.0.attn1.to_k.weight"}); },
               {"mixes", "blocks.0.self_attn.q.weight", "blocks.0.attn1.to_k.weight"});
  expect_error([] { detect_dit_naming({"model.blocks.0.self_attn.q.weight", "encoder.x"}); },
               {"does not look like a Wan2.1 DiT", "strip_prefix"});
  expect_error([] { detect_dit_naming({"patch_embedding.weight"}); }, {"does not look like"});  // no vote
}

TEST(NameMap, DiffusersCheckpointReadsUnderOriginalNames) {
  Tensor q = Tensor::from_vector({1, 2}, {2}), n2 = Tensor::from_vector({3}, {1});
  Checkpoint d = memory_checkpoint({{"blocks.0.attn1.to_q.weight", q},
                                    {"blocks.0.norm2.weight", n2},
                                    {"patch_embedding.bias", q},
                                    {"extra.tensor", q}});
  Checkpoint o = dit_with_original_names(d);
  EXPECT_EQ(o->names(), (std::vector<std::string>{"blocks.0.norm3.weight", "blocks.0.self_attn.q.weight",
                                                  "extra.tensor", "patch_embedding.bias"}));
  EXPECT_EQ(o->get("blocks.0.norm3.weight").item({0}), 3.0);
  EXPECT_EQ(o->get("blocks.0.self_attn.q.weight").raw(), q.raw());
  // Already original: returned as is.
  Checkpoint same = memory_checkpoint({{"blocks.0.self_attn.q.weight", q}});
  EXPECT_EQ(dit_with_original_names(same), same);
}

TEST(NameMap, T5WanAndHfNames) {
  EXPECT_EQ(t5_wan_to_hf("blocks.23.attn.q.weight").value_or(""), "encoder.block.23.layer.0.SelfAttention.q.weight");
  EXPECT_EQ(t5_wan_to_hf("blocks.0.pos_embedding.embedding.weight").value_or(""),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  EXPECT_EQ(t5_wan_to_hf("blocks.1.ffn.gate.0.weight").value_or(""), "encoder.block.1.layer.1.DenseReluDense.wi_0.weight");
  EXPECT_EQ(t5_wan_to_hf("blocks.1.ffn.fc1.weight").value_or(""), "encoder.block.1.layer.1.DenseReluDense.wi_1.weight");
  EXPECT_EQ(t5_wan_to_hf("blocks.1.ffn.fc2.weight").value_or(""), "encoder.block.1.layer.1.DenseReluDense.wo.weight");
  EXPECT_EQ(t5_wan_to_hf("blocks.1.norm2.weight").value_or(""), "encoder.block.1.layer.1.layer_norm.weight");
  EXPECT_EQ(t5_wan_to_hf("norm.weight").value_or(""), "encoder.final_layer_norm.weight");
  EXPECT_EQ(t5_hf_to_wan("encoder.embed_tokens.weight").value_or(""), "token_embedding.weight");
  EXPECT_FALSE(t5_wan_to_hf("blocks.1.attn.q.bias"));
  Tensor t = Tensor::from_vector({1}, {1});
  Checkpoint hf = memory_checkpoint({{"shared.weight", t}, {"encoder.embed_tokens.weight", t},
                                     {"encoder.block.0.layer.0.SelfAttention.q.weight", t}});
  Checkpoint wan = t5_with_wan_names(hf);
  EXPECT_EQ(wan->names(), (std::vector<std::string>{"blocks.0.attn.q.weight", "token_embedding.weight"}));
}

TEST(NameMap, VaeSpecTableRows) {
  const std::pair<const char*, const char*> rows[] = {
      {"conv1.weight", "quant_conv.weight"},
      {"conv2.bias", "post_quant_conv.bias"},
      {"encoder.conv1.weight", "encoder.conv_in.weight"},
      {"decoder.conv1.bias", "decoder.conv_in.bias"},
      {"encoder.middle.0.residual.0.gamma", "encoder.mid_block.resnets.0.norm1.gamma"},
      {"decoder.middle.2.residual.6.weight", "decoder.mid_block.resnets.1.conv2.weight"},
      {"decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"},
      {"encoder.middle.1.norm.gamma", "encoder.mid_block.attentions.0.norm.gamma"},
      {"encoder.head.0.gamma", "encoder.norm_out.gamma"},
      {"decoder.head.2.weight", "decoder.conv_out.weight"},
      {"encoder.downsamples.3.residual.2.bias", "encoder.down_blocks.3.conv1.bias"},
      {"encoder.downsamples.3.shortcut.weight", "encoder.down_blocks.3.conv_shortcut.weight"},
      {"encoder.downsamples.5.time_conv.weight", "encoder.down_blocks.5.time_conv.weight"},
      {"encoder.downsamples.2.resample.1.bias", "encoder.down_blocks.2.resample.1.bias"},
      {"decoder.upsamples.2.residual.3.gamma", "decoder.up_blocks.0.resnets.2.norm2.gamma"},
      {"decoder.upsamples.3.time_conv.bias", "decoder.up_blocks.0.upsamplers.0.time_conv.bias"},
      {"decoder.upsamples.4.shortcut.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"},
      {"decoder.upsamples.7.resample.1.weight", "decoder.up_blocks.1.upsamplers.0.resample.1.weight"},
      {"decoder.upsamples.10.residual.6.bias", "decoder.up_blocks.2.resnets.2.conv2.bias"},
      {"decoder.upsamples.11.resample.1.bias", "decoder.up_blocks.2.upsamplers.0.resample.1.bias"},
      {"decoder.upsamples.14.residual.0.gamma", "decoder.up_blocks.3.resnets.2.norm1.gamma"},
  };
  for (auto& [o, d] : rows) {
    EXPECT_EQ(vae_original_to_diffusers(o).value_or("<none>"), d) << o;
    EXPECT_EQ(vae_diffusers_to_original(d).value_or("<none>"), o) << d;
  }
  for (const char* n : {"decoder.upsamples.3.residual.0.gamma", "encoder.middle.1.residual.0.gamma",
                        "decoder.downsamples.0.residual.0.gamma", "encoder.head.1.gamma"})
    EXPECT_FALSE(vae_original_to_diffusers(n)) << n;
  for (const char* n : {"decoder.up_blocks.0.resnets.3.norm1.gamma", "decoder.up_blocks.0.upsamplers.1.time_conv.bias"})
    EXPECT_FALSE(vae_diffusers_to_original(n)) << n;
  Tensor t = Tensor::from_vector({1}, {1});
  expect_error([&] { vae_with_original_names(memory_checkpoint({{"conv1.weight", t}, {"post_quant_conv.weight", t}})); },
               {"mixes"});
}
