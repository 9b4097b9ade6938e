// The demo model's tensor-name generators agree with the reference modules (the golden files
// were written by Wan2.1's own T5Encoder and WanVAE_ at small sizes).
#include <gtest/gtest.h>

#include "osp/io/safetensors.h"
#include "osp/pipeline/demo_model.h"
#include "test_util.h"

using namespace osp;

namespace {
std::map<std::string, Shape> golden_shapes(const std::string& prefix, bool decoder_only) {
  const auto f = io::SafetensorsFile::open(test::golden("golden_t5_vae.safetensors"));
  std::map<std::string, Shape> out;
  for (const auto& n : f.names()) {
    if (n.rfind(prefix, 0) != 0) continue;
    const std::string k = n.substr(prefix.size());
    if (decoder_only && !(k.rfind("decoder.", 0) == 0 || k.rfind("conv2.", 0) == 0)) continue;
    out[k] = f.entry(n).shape;
  }
  return out;
}
}  // namespace

TEST(DemoModel, VaeDecoderNamesAndShapesMatchReference) {
  const auto ref = golden_shapes("vae.weights.", true);
  ASSERT_FALSE(ref.empty());
  EXPECT_EQ(pipeline::vae_decoder_shapes(16), ref);
}

TEST(DemoModel, T5NamesAndShapesMatchReference) {
  // golden t5_config: vocab 300, dim 64, dim_attn 64, ffn 160, 4 heads, 3 layers, 32 buckets.
  const auto ref = golden_shapes("t5.weights.", false);
  ASSERT_FALSE(ref.empty());
  EXPECT_EQ(pipeline::t5_shapes(300, 64, 64, 160, 4, 3, 32), ref);
}
