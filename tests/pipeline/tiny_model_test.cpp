// OSP-Next-Tiny pieces (pipeline/tiny_model.h): the caption tokenizer is a word model (every
// caption word one piece, no <unk> on the grammar), the frozen random umT5 tells captions apart,
// and encode-clips turns a clip dataset into a latent cache that matches the VAE's own encode.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <unistd.h>

#include "osp/io/checkpoint.h"
#include "osp/io/safetensors.h"
#include "osp/model/tokenizer.h"
#include "osp/model/vae.h"
#include "osp/model/vae_train.h"
#include "osp/pipeline/model_dir.h"
#include "osp/pipeline/text_encoder.h"
#include "osp/pipeline/tiny_model.h"
#include "osp/train/clip_dataset.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/synthetic_clips.h"

namespace fs = std::filesystem;
using namespace osp;

namespace {
fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("osp_tiny_model_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}
}  // namespace

TEST(TinyModel, TokenizerTextEncoderAndLatentCache) {
  const fs::path data = fresh_dir("data"), model = fresh_dir("model"), cache = fresh_dir("cache");
  train::ClipDatasetOptions d;
  d.dir = data.string();
  d.count = 40;
  d.seed = 3;
  d.width = 32;
  d.height = 32;
  d.frames = 5;
  train::write_clip_dataset(d);
  const train::ClipDataset ds = train::read_clip_dataset(data.string());

  pipeline::TextEncoderOptions t;
  t.dataset = data.string();
  t.out = model.string();
  EXPECT_EQ(pipeline::write_text_encoder(t), 256);
  const auto tok = model::Tokenizer::load((model / "google" / "umt5-xxl" / "spiece.model").string());
  EXPECT_LE(tok.vocab_size(), 256);
  // Every caption: one piece per word, none of them <unk> (id 2).
  for (const auto& c : ds.clips) {
    std::istringstream words(c.caption);
    int n = 0;
    for (std::string w; words >> w;) ++n;
    const auto p = tok.pieces(c.caption);
    EXPECT_EQ(int(p.size()), n) << c.caption;
    for (int32_t id : p) EXPECT_NE(id, 2) << c.caption;
  }

  // A VAE with encoder weights (random, small) completes the folder for encode-clips.
  const model::TrainableVae vae = model::TrainableVae::from_scratch(model::small_vae_config(4, 2), 5);
  std::map<std::string, Tensor> w;
  for (const auto& [n, x] : vae.named_weights()) w[n] = x.clone();
  io::save_safetensors((model / "Wan2.1_VAE.safetensors").string(), w);

  pipeline::EncodeClipsOptions e;
  e.model = model.string();
  e.dataset = data.string();
  e.out = cache.string();
  e.text_len = 64;
  e.limit = 6;
  EXPECT_EQ(pipeline::encode_clip_dataset(e), 6);
  const train::LatentDataset cached = train::LatentDataset::open(cache.string(), {});
  ASSERT_EQ(cached.size(), 6);

  // Latents equal WanVae::encode of the clip; contexts equal the text encoder's; different
  // captions give different contexts.
  const model::WanVae inf = model::WanVae::load(model::weight_getter(io::open_checkpoint((model / "Wan2.1_VAE.safetensors").string())));
  pipeline::ModelFiles f;
  f.t5 = (model / "models_t5_umt5-xxl-enc-bf16.safetensors").string();
  f.tokenizer = (model / "google" / "umt5-xxl" / "spiece.model").string();
  auto te = pipeline::TextEncoder::load(f, Device::cpu(), 64);
  for (int64_t i = 0; i < 2; ++i) {
    const train::LatentSample s = cached.load(i);
    const auto& clip = ds.clips[size_t(i)];
    EXPECT_EQ(s.caption, clip.caption);
    const Tensor z = inf.encode(train::clip_to_float(train::load_dataset_clip(ds, clip)));
    ASSERT_EQ(s.latent.shape(), z.shape());
    for (int64_t k = 0; k < z.numel(); ++k) ASSERT_NEAR(s.latent.data<float>()[k], z.data<float>()[k], 1e-5);
    const Tensor c = te->encode({clip.caption}).at(0);
    ASSERT_EQ(s.context.shape(), c.shape());
    for (int64_t k = 0; k < c.numel(); ++k) ASSERT_NEAR(s.context.data<float>()[k], c.data<float>()[k], 1e-5);
  }
  const Tensor a = te->encode({"a red circle moves up on a black background"}).at(0);
  const Tensor b = te->encode({"a blue circle moves up on a black background"}).at(0);
  ASSERT_EQ(a.shape(), b.shape());
  double diff = 0, norm = 0;
  for (int64_t k = 0; k < a.numel(); ++k) {
    diff += std::pow(double(a.data<float>()[k]) - b.data<float>()[k], 2);
    norm += std::pow(double(a.data<float>()[k]), 2);
  }
  EXPECT_GT(diff, 0.05 * norm);  // one word changes the context clearly

  // A folder without the VAE is refused, naming the file.
  fs::remove(model / "Wan2.1_VAE.safetensors");
  try {
    e.overwrite = true;
    pipeline::encode_clip_dataset(e);
    ADD_FAILURE() << "encode-clips accepted a folder without the VAE";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("Wan2.1_VAE.safetensors"), std::string::npos) << err.what();
  }
  fs::remove_all(data);
  fs::remove_all(model);
  fs::remove_all(cache);
}
