// The golden safetensors files open through every entry point and list the expected tensors;
// the golden DiT's names are detected as original Wan naming and map to diffusers and back.
#include <gtest/gtest.h>

#include <cstring>

#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/io/safetensors.h"
#include "test_util.h"

using namespace osp;
using namespace osp::io;

TEST(CheckpointGolden, GoldenDitListsWeightsCasesAndMetadata) {
  auto f = SafetensorsFile::open(test::golden("golden_dit.safetensors"));
  EXPECT_TRUE(f.metadata().count("config"));
  EXPECT_TRUE(f.metadata().count("block_kinds"));
  EXPECT_TRUE(f.metadata().count("cases"));
  const auto& q = f.entry("weights.blocks.0.self_attn.q.weight");
  EXPECT_EQ(q.dtype, DType::BF16);
  EXPECT_EQ(q.shape, (Shape{256, 256}));
  EXPECT_EQ(f.entry("weights.patch_embedding.weight").shape, (Shape{256, 16, 1, 2, 2}));
  EXPECT_EQ(f.entry("weights.head.modulation").shape, (Shape{1, 2, 256}));
  EXPECT_EQ(f.entry("caseA.x").shape, (Shape{16, 3, 16, 24}));
  EXPECT_EQ(f.entry("caseB.context").shape, (Shape{16, 96}));
  EXPECT_EQ(f.entry("caseA.full_block7").shape, (Shape{288, 256}));
  // A value round trip through the mapping: a bf16 weight equals its f32 conversion's bf16.
  Tensor w = f.get("weights.blocks.0.self_attn.q.weight");
  Tensor back = w.to(DType::F32).to(DType::BF16);
  EXPECT_EQ(std::memcmp(w.raw(), back.raw(), w.nbytes()), 0);
}

TEST(CheckpointGolden, GoldenDitUsesOriginalNamesAndMapsToDiffusers) {
  Checkpoint dit = strip_prefix(open_checkpoint(test::golden("golden_dit.safetensors")), "weights.");
  const auto names = dit->names();
  EXPECT_EQ(names.size(), 8u * 27 + 15);  // 8 blocks, 27 tensors each, 15 outside the blocks
  EXPECT_EQ(detect_dit_naming(names), DitNaming::Original);
  std::map<std::string, Tensor> diffusers;
  for (const auto& n : names) {
    auto d = dit_original_to_diffusers(n);
    ASSERT_TRUE(d) << n;
    EXPECT_EQ(dit_diffusers_to_original(*d), n);
    diffusers[*d] = dit->get(n);
  }
  EXPECT_EQ(diffusers.size(), names.size());
  Checkpoint back = dit_with_original_names(memory_checkpoint(diffusers));
  EXPECT_EQ(back->names(), names);
  EXPECT_EQ(back->get("blocks.5.norm3.weight").raw(), dit->get("blocks.5.norm3.weight").raw());
}

TEST(CheckpointGolden, T5VaeAndSamplerFilesOpen) {
  Checkpoint tv = open_checkpoint(test::golden("golden_t5_vae.safetensors"));
  EXPECT_EQ(tv->format(), "safetensors");
  EXPECT_EQ(tv->info("t5.ids").dtype, DType::I32);
  EXPECT_EQ(tv->get("t5.ids", {2, 24}).dtype(), DType::I32);
  EXPECT_EQ(tv->info("t5.out").shape, (Shape{2, 24, 64}));
  EXPECT_EQ(tv->info("vae.z").shape, (Shape{1, 16, 3, 4, 6}));
  EXPECT_EQ(tv->info("vae.decoded").shape, (Shape{1, 3, 9, 32, 48}));
  EXPECT_TRUE(tv->metadata().count("t5_config"));
  EXPECT_TRUE(tv->metadata().count("vae_config"));
  Checkpoint s = open_checkpoint(test::golden("golden_sampler_hif8_skiparse.safetensors"));
  EXPECT_EQ(s->info("unipc_10_5.timesteps").dtype, DType::I64);
  EXPECT_EQ(s->info("unipc_10_5.trajectory").shape, (Shape{10, 4, 8}));
  EXPECT_EQ(s->info("skiparse_T2_H8_W12_P2.token").shape, (Shape{4, 48}));
  EXPECT_TRUE(s->has("hif8.input") && s->has("hif8.output"));
}

TEST(CheckpointGolden, GoldenVaeNamesMapToDiffusersAndBack) {
  Checkpoint vae = strip_prefix(open_checkpoint(test::golden("golden_t5_vae.safetensors")), "vae.weights.");
  const auto names = vae->names();
  EXPECT_EQ(names.size(), 194u);  // the full Wan-VAE tensor list (wan-spec Appendix A)
  std::map<std::string, Tensor> diffusers;
  for (const auto& n : names) {
    auto d = vae_original_to_diffusers(n);
    ASSERT_TRUE(d) << n;
    EXPECT_EQ(vae_diffusers_to_original(*d), n);
    diffusers[*d] = vae->get(n);
  }
  EXPECT_EQ(diffusers.size(), names.size());  // one-to-one
  Checkpoint back = vae_with_original_names(memory_checkpoint(diffusers));
  EXPECT_EQ(back->names(), names);
  EXPECT_EQ(vae_with_original_names(vae), vae);  // already original
  // umT5: every golden T5 weight name has an HF twin and comes back.
  Checkpoint t5 = strip_prefix(open_checkpoint(test::golden("golden_t5_vae.safetensors")), "t5.weights.");
  for (const auto& n : t5->names()) {
    auto h = t5_wan_to_hf(n);
    ASSERT_TRUE(h) << n;
    EXPECT_EQ(t5_hf_to_wan(*h), n);
  }
}
