// The demo model's tensor-name generators agree with the reference modules (the golden files
// were written by Wan2.1's own T5Encoder and WanVAE_ at small sizes).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/model/dit_config.h"
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

// make-demo-model --config: the DiT takes the config's shapes and layout, the umT5 its text_dim
// (heads text_dim / 64, FFN 2.5 × text_dim), the VAE the asked width; the folder loads back.
TEST(DemoModel, ConfigSetsDiTAndTextEncoderShapes) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("osp_demo_config_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  const fs::path cfg_file = root / "config.json";
  std::ofstream(cfg_file) << R"({"dim": 128, "ffn_dim": 320, "num_heads": 2, "num_layers": 8, "text_dim": 128,
    "text_len": 32, "freq_dim": 64, "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2],
    "skiparse_model_type": "dual_end", "sparse_ratio": 2, "num_full_blocks": 4})";
  pipeline::DemoModelOptions o;
  o.dit_config = cfg_file.string();
  o.vae_dim = 8;
  pipeline::make_demo_model((root / "m").string(), o);

  const auto written = model::DiTConfig::from_json_file((root / "m" / "config.json").string());
  const auto asked = model::DiTConfig::from_json_file(cfg_file.string());
  EXPECT_EQ(written.dim, asked.dim);
  EXPECT_EQ(written.ffn_dim, asked.ffn_dim);
  EXPECT_EQ(written.num_layers, asked.num_layers);
  EXPECT_EQ(written.text_dim, 128);
  EXPECT_EQ(written.text_len, 32);
  EXPECT_EQ(written.freq_dim, 64);
  EXPECT_EQ(written.skiparse_mode, "dual_end");
  EXPECT_EQ(written.num_full_blocks, 4);

  const auto dit = io::SafetensorsFile::open((root / "m" / "diffusion_pytorch_model.safetensors").string());
  std::map<std::string, Shape> dit_shapes;
  for (const auto& n : dit.names()) dit_shapes[n] = dit.entry(n).shape;
  EXPECT_EQ(dit_shapes, model::DiT::expected_shapes(asked));

  const auto t5 = io::SafetensorsFile::open((root / "m" / "models_t5_umt5-xxl-enc-bf16.safetensors").string());
  std::map<std::string, Shape> t5s;
  for (const auto& n : t5.names()) t5s[n] = t5.entry(n).shape;
  EXPECT_EQ(t5s, pipeline::t5_shapes(o.t5_vocab, 128, 128, 320, 2, o.t5_layers));
  const auto vae = io::SafetensorsFile::open((root / "m" / "Wan2.1_VAE.safetensors").string());
  std::map<std::string, Shape> vs;
  for (const auto& n : vae.names()) vs[n] = vae.entry(n).shape;
  EXPECT_EQ(vs, pipeline::vae_decoder_shapes(8));
  fs::remove_all(root);
}
