// Wan-VAE against the reference (golden_t5_vae.safetensors, fp32 CPU): chunked causal decode,
// chunked encode, spatial tiling, and input validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/io/safetensors.h"
#include "osp/model/vae.h"
#include "test_util.h"

namespace {

using osp::Tensor;
using osp::model::WanVae;

const osp::io::SafetensorsFile& golden_file() {
  static osp::io::SafetensorsFile f =
      osp::io::SafetensorsFile::open(osp::test::golden("golden_t5_vae.safetensors"));
  return f;
}

const WanVae& vae() {
  static WanVae v = WanVae::load(
      [](const std::string& n) { return golden_file().has(n) ? golden_file().get(n) : Tensor(); },
      osp::Device::cpu(), {}, "vae.weights.");
  return v;
}

Tensor drop_batch(const Tensor& t) {
  osp::Shape s(t.shape().begin() + 1, t.shape().end());
  return t.contiguous().view(s);
}

TEST(VaeGolden, ConfigFromCheckpoint) {
  EXPECT_EQ(vae().config().dim, 16);
  EXPECT_EQ(vae().config().z_dim, 16);
}

// The raw (unclamped) decode of the golden latent, computed once.
const Tensor& decoded() {
  static Tensor d = [] {
    osp::model::DecodeOptions o;
    o.clamp = false;
    return vae().decode(drop_batch(golden_file().get("vae.z")), o);  // z [16, 3, 4, 6]
  }();
  return d;
}

TEST(VaeGolden, DecodeMatchesReference) {
  Tensor ref = drop_batch(golden_file().get("vae.decoded"));  // [3, 9, 32, 48]
  ASSERT_EQ(decoded().shape(), ref.shape());
  EXPECT_LE(osp::relative_error(decoded(), ref), 1e-4);
}

TEST(VaeGolden, EncodeMatchesReference) {
  Tensor video = drop_batch(golden_file().get("vae.video"));     // [3, 9, 32, 48]
  Tensor ref = drop_batch(golden_file().get("vae.encoded_mu"));  // [16, 3, 4, 6]
  Tensor mu = vae().encode(video);
  ASSERT_EQ(mu.shape(), ref.shape());
  EXPECT_LE(osp::relative_error(mu, ref), 1e-4);
}

TEST(VaeGolden, PthWeightsGiveTheSameDecode) {
  auto pth = osp::io::open_checkpoint(osp::test::golden("tiny_vae_fp32.pth"));
  osp::model::VaeConfig cfg;
  cfg.has_encoder = false;
  WanVae m = WanVae::load(osp::model::weight_getter(pth), osp::Device::cpu(), cfg);
  osp::model::DecodeOptions o;
  o.clamp = false;
  Tensor z = drop_batch(golden_file().get("vae.z"));
  EXPECT_EQ(osp::max_abs_diff(m.decode(z, o), decoded()), 0.0);
  EXPECT_THROW(m.encode(drop_batch(golden_file().get("vae.video"))), osp::Error);
}

TEST(VaeGolden, DecodeClampsToUnitRange) {
  // Only the first latent frame (→ 1 video frame) to keep the test short.
  Tensor z = drop_batch(golden_file().get("vae.z")).slice(1, 0, 1).contiguous();
  Tensor out = vae().decode(z);
  Tensor ref = decoded().slice(1, 0, 1).contiguous();
  auto o = out.to_float_vector();
  auto r = ref.to_float_vector();
  ASSERT_EQ(o.size(), r.size());
  for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], std::clamp(r[i], -1.f, 1.f), 1e-4f);
}

TEST(VaeGolden, SingleTileEqualsUntiled) {
  Tensor z = drop_batch(golden_file().get("vae.z"));
  osp::model::DecodeOptions b;
  b.clamp = false;
  b.tile_h = 4;  // tiles as large as the latent: one tile
  b.tile_w = 6;
  EXPECT_EQ(osp::max_abs_diff(vae().decode(z, b), decoded()), 0.0);
}

TEST(VaeTiling, BlendReproducesAnImageCutIntoTiles) {
  // A tile "decoder" that returns crops of one fixed video: blending must give the video back.
  const int64_t h = 11, w = 14, F = 2, C = 3;
  Tensor truth = Tensor::empty({F, C, 8 * h, 8 * w}, osp::DType::F32);
  for (int64_t i = 0; i < truth.numel(); ++i) truth.data<float>()[i] = float((i * 7919) % 1000) / 500.f - 1.f;
  int calls = 0;
  auto crop = [&](int64_t y0, int64_t x0, int64_t th, int64_t tw) {
    ++calls;
    EXPECT_GE(y0, 0);
    EXPECT_LE(y0 + th, h);
    EXPECT_LE(x0 + tw, w);
    return truth.slice(2, 8 * y0, 8 * (y0 + th)).slice(3, 8 * x0, 8 * (x0 + tw)).contiguous();
  };
  osp::model::DecodeOptions o;
  o.tile_h = 5;
  o.tile_w = 6;
  o.overlap = 2;
  Tensor out = osp::model::blend_tiles(h, w, o, crop);
  EXPECT_GT(calls, 4);
  EXPECT_LE(osp::max_abs_diff(out, truth), 1e-5);
  o.tile_h = o.tile_w = 2;  // not larger than the overlap
  EXPECT_THROW(osp::model::blend_tiles(h, w, o, crop), osp::Error);
}

TEST(VaeGolden, TiledDecodeCloseToUntiled) {
  // A latent of 2 frames × 12×16 built from the golden latent's values, decoded whole and in
  // 8×8 tiles (2×3 tiles) with 4 latent pixels of overlap.  The random tiny model's receptive
  // field (convolutions + the per-frame global attention) is larger than a tile, so tiles are
  // only close to the whole decode here; the trained model with 32-pixel tiles is seamless.
  Tensor z0 = drop_batch(golden_file().get("vae.z"));
  Tensor z = Tensor::empty({16, 2, 12, 16}, osp::DType::F32);
  for (int64_t c = 0; c < 16; ++c)
    for (int64_t t = 0; t < 2; ++t)
      for (int64_t y = 0; y < 12; ++y)
        for (int64_t x = 0; x < 16; ++x)
          z.data<float>()[((c * 2 + t) * 12 + y) * 16 + x] =
              float(z0.item({c, t, (y * 5 + x) % 4, (x * 3 + y) % 6}));
  osp::model::DecodeOptions full, tiled;
  full.clamp = tiled.clamp = false;
  tiled.tile_h = tiled.tile_w = 8;
  tiled.overlap = 4;
  Tensor a = vae().decode(z, full), b = vae().decode(z, tiled);
  ASSERT_EQ(a.shape(), b.shape());
  const double err = osp::relative_error(b, a);
  EXPECT_GT(err, 0.0);   // the tiles really are decoded separately
  EXPECT_LT(err, 0.25);  // and blend into nearly the same video
}

TEST(VaeShapes, OfficialConfigHas194TensorsAnd126892531Params) {
  // wan-spec Appendix A: Wan2.1_VAE.pth holds 194 tensors, 126 892 531 parameters.
  const auto shapes = osp::model::vae_tensor_shapes({});
  EXPECT_EQ(shapes.size(), 194u);
  int64_t n = 0;
  for (const auto& [name, s] : shapes) n += osp::shape_numel(s);
  EXPECT_EQ(n, 126892531);
  // And the golden (dim 16) model lists exactly the tensors of the golden file.
  osp::model::VaeConfig c;
  c.dim = 16;
  for (const auto& [name, s] : osp::model::vae_tensor_shapes(c)) {
    ASSERT_TRUE(golden_file().has("vae.weights." + name)) << name;
    EXPECT_EQ(golden_file().entry("vae.weights." + name).shape, s) << name;
  }
}

TEST(VaeShapes, DiffusersNamesFollowTheSpecTable) {
  auto vae_diffusers_name = [](const std::string& n) { return osp::io::vae_original_to_diffusers(n).value_or("<none>"); };
  // Rows of wan-spec §3.4.
  EXPECT_EQ(vae_diffusers_name("conv1.weight"), "quant_conv.weight");
  EXPECT_EQ(vae_diffusers_name("conv2.bias"), "post_quant_conv.bias");
  EXPECT_EQ(vae_diffusers_name("encoder.conv1.weight"), "encoder.conv_in.weight");
  EXPECT_EQ(vae_diffusers_name("decoder.middle.0.residual.0.gamma"), "decoder.mid_block.resnets.0.norm1.gamma");
  EXPECT_EQ(vae_diffusers_name("encoder.middle.2.residual.6.weight"), "encoder.mid_block.resnets.1.conv2.weight");
  EXPECT_EQ(vae_diffusers_name("decoder.middle.1.to_qkv.weight"), "decoder.mid_block.attentions.0.to_qkv.weight");
  EXPECT_EQ(vae_diffusers_name("decoder.head.0.gamma"), "decoder.norm_out.gamma");
  EXPECT_EQ(vae_diffusers_name("encoder.head.2.bias"), "encoder.conv_out.bias");
  EXPECT_EQ(vae_diffusers_name("encoder.downsamples.3.shortcut.weight"), "encoder.down_blocks.3.conv_shortcut.weight");
  EXPECT_EQ(vae_diffusers_name("encoder.downsamples.5.time_conv.bias"), "encoder.down_blocks.5.time_conv.bias");
  EXPECT_EQ(vae_diffusers_name("decoder.upsamples.2.residual.3.gamma"), "decoder.up_blocks.0.resnets.2.norm2.gamma");
  EXPECT_EQ(vae_diffusers_name("decoder.upsamples.3.time_conv.weight"), "decoder.up_blocks.0.upsamplers.0.time_conv.weight");
  EXPECT_EQ(vae_diffusers_name("decoder.upsamples.4.shortcut.bias"), "decoder.up_blocks.1.resnets.0.conv_shortcut.bias");
  EXPECT_EQ(vae_diffusers_name("decoder.upsamples.7.resample.1.weight"), "decoder.up_blocks.1.upsamplers.0.resample.1.weight");
  EXPECT_EQ(vae_diffusers_name("decoder.upsamples.11.resample.1.bias"), "decoder.up_blocks.2.upsamplers.0.resample.1.bias");
  EXPECT_EQ(vae_diffusers_name("decoder.upsamples.14.residual.2.weight"), "decoder.up_blocks.3.resnets.2.conv1.weight");
  // A checkpoint under diffusers names, renamed on read (io::vae_with_original_names, what
  // pipeline::open_vae does), loads and decodes like the original (first frame only).
  std::map<std::string, Tensor> d;
  for (const auto& [name, s] : osp::model::vae_tensor_shapes([] { osp::model::VaeConfig c; c.dim = 16; return c; }()))
    d[vae_diffusers_name(name)] = golden_file().get("vae.weights." + name);
  osp::model::VaeConfig nc;
  nc.has_encoder = false;
  WanVae m = WanVae::load(osp::model::weight_getter(osp::io::vae_with_original_names(osp::io::memory_checkpoint(d))),
                         osp::Device::cpu(), nc);
  Tensor z = drop_batch(golden_file().get("vae.z")).slice(1, 0, 1).contiguous();
  osp::model::DecodeOptions o;
  o.clamp = false;
  EXPECT_EQ(osp::max_abs_diff(m.decode(z, o), decoded().slice(1, 0, 1).contiguous()), 0.0);
}

TEST(VaeGolden, TilesForBudget) {
  auto none = osp::model::tiles_for_budget(90, 160, size_t(1) << 40);
  EXPECT_EQ(none.tile_h, 0);
  EXPECT_EQ(none.tile_w, 0);
  auto t = osp::model::tiles_for_budget(90, 160, size_t(8) << 30);
  EXPECT_TRUE(t.tile_h > 0 || t.tile_w > 0);
  const int64_t th = t.tile_h ? t.tile_h : 90, tw = t.tile_w ? t.tile_w : 160;
  EXPECT_LE(osp::model::decode_memory_estimate(th, tw), size_t(8) << 30);
}

TEST(VaeGolden, BadInputsThrow) {
  EXPECT_THROW(vae().decode(Tensor::zeros({8, 2, 4, 4}, osp::DType::F32)), osp::Error);
  EXPECT_THROW(vae().decode(Tensor::zeros({16, 2, 4}, osp::DType::F32)), osp::Error);
  EXPECT_THROW(vae().encode(Tensor::zeros({3, 4, 16, 16}, osp::DType::F32)), osp::Error);  // 4 ≠ 1+4k
  EXPECT_THROW(vae().encode(Tensor::zeros({3, 5, 12, 16}, osp::DType::F32)), osp::Error);  // 12 % 8
  // A checkpoint without the VAE tensors is refused by name.
  EXPECT_THROW(WanVae::load([](const std::string&) { return Tensor(); }), osp::Error);
  // A wrong shape is refused with the tensor's name.
  try {
    WanVae::load(
        [](const std::string& n) {
          if (n == "decoder.conv1.weight") return Tensor::zeros({7, 16, 3, 3, 3}, osp::DType::F32);
          return golden_file().has("vae.weights." + n) ? golden_file().get("vae.weights." + n)
                                                      : Tensor();
        });
    FAIL() << "expected osp::Error";
  } catch (const osp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("decoder.conv1.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
