// LoRA adapters (model/lora.h): init as OSP-Next's PEFT config, merge = W + s·(α/r)·B·A, the
// merged model equals the un-merged application, a zero-B LoRA leaves the DiT output bit for
// bit unchanged, save/load round trip, foreign namings, and clear errors for bad files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <unistd.h>

#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/model/lora.h"
#include "osp/ops/ops.h"
#include "test_util.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an osp::Error";
  } catch (const Error& e) {
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message '" << e.what() << "' does not mention '" << n << "'";
  }
}

std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("osp_lora_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

model::DiTConfig tiny_config() {
  model::DiTConfig c;
  c.dim = 64;
  c.ffn_dim = 96;
  c.num_heads = 2;
  c.num_layers = 2;
  c.text_dim = 32;
  c.text_len = 8;
  return c;
}

// Fills B with noise so the LoRA changes something.
void randomize_b(model::Lora& l, uint64_t seed) {
  uint32_t s = 100;
  for (auto& [m, a] : l.adapters) a.B = randn(a.B.shape(), seed, s++);
}

std::map<std::string, Tensor> random_weights(const std::map<std::string, Shape>& shapes,
                                             uint64_t seed) {
  std::map<std::string, Tensor> w;
  uint32_t s = 0;
  for (const auto& [n, sh] : shapes) w[n] = randn(sh, seed, s++);
  return w;
}

}  // namespace

TEST(Lora, InitLikePeftGaussian) {
  const auto shapes = model::DiT::expected_shapes(tiny_config());
  model::LoraInit opt;
  opt.rank = 8;
  opt.alpha = 16;
  opt.seed = 5;
  const model::Lora l = model::init_lora(shapes, opt);
  ASSERT_EQ(l.adapters.size(), 2u * 8u);  // 2 blocks × self/cross q,k,v,o
  EXPECT_EQ(l.rank(), 8);
  EXPECT_EQ(l.alpha(), 16);
  EXPECT_EQ(l.targets(), model::default_lora_targets());
  ASSERT_TRUE(l.adapters.count("blocks.1.cross_attn.o"));
  EXPECT_FALSE(l.adapters.count("blocks.0.ffn.0"));
  double ss = 0;
  int64_t n = 0;
  for (const auto& [m, a] : l.adapters) {
    EXPECT_EQ(a.A.shape(), (Shape{8, 64}));
    EXPECT_EQ(a.B.shape(), (Shape{64, 8}));
    EXPECT_DOUBLE_EQ(a.scale(), 2.0);
    for (float v : a.B.to_float_vector()) EXPECT_EQ(v, 0.0f);
    for (float v : a.A.to_float_vector()) ss += double(v) * v, ++n;
  }
  EXPECT_NEAR(std::sqrt(ss / double(n)), 1.0 / 8, 0.01);  // std 1/r
  // Deterministic in the seed.
  const model::Lora same = model::init_lora(shapes, opt);
  EXPECT_EQ(same.adapters.at("blocks.0.self_attn.q").A.to_float_vector(),
            l.adapters.at("blocks.0.self_attn.q").A.to_float_vector());
  opt.seed = 6;
  EXPECT_NE(model::init_lora(shapes, opt).adapters.at("blocks.0.self_attn.q").A.to_float_vector(),
            l.adapters.at("blocks.0.self_attn.q").A.to_float_vector());
  // Custom targets, and a target that matches nothing.
  opt.targets = {"ffn.0", "self_attn.q"};
  EXPECT_EQ(model::init_lora(shapes, opt).adapters.size(), 4u);
  opt.targets = {"self_attn.qkv"};
  expect_error([&] { model::init_lora(shapes, opt); }, {"self_attn.qkv", "matches no linear"});
  EXPECT_NE(l.summary().find("16 adapters, rank 8, alpha 16"), std::string::npos) << l.summary();
}

TEST(Lora, MergeEqualsWPlusScaledBA) {
  const auto shapes = model::DiT::expected_shapes(tiny_config());
  model::LoraInit opt;
  opt.rank = 4;
  opt.alpha = 6;
  model::Lora l = model::init_lora(shapes, opt);
  randomize_b(l, 9);
  std::map<std::string, Tensor> w = random_weights(shapes, 3);
  // Store one weight as bf16 like a checkpoint: the merge reads it as f32.
  w["blocks.0.self_attn.q.weight"] = w["blocks.0.self_attn.q.weight"].to(DType::BF16);
  const std::map<std::string, Tensor> base = w;
  const double s = 0.7;
  model::merge_lora(w, l, s);
  for (const auto& [name, t] : base) {
    const std::string module = name.substr(0, name.size() - 7);
    if (!l.adapters.count(module) || name.size() < 7 || name.substr(name.size() - 7) != ".weight") {
      EXPECT_EQ(w.at(name).storage(), t.storage()) << name << " must be untouched";
      continue;
    }
    const auto& a = l.adapters.at(module);
    ASSERT_EQ(w.at(name).dtype(), DType::F32) << name;
    const std::vector<float> W = t.to_float_vector(), M = w.at(name).to_float_vector(),
                             A = a.A.to_float_vector(), B = a.B.to_float_vector();
    const int64_t out = t.size(0), in = t.size(1), r = a.rank();
    double worst = 0;
    for (int64_t i = 0; i < out; ++i)
      for (int64_t j = 0; j < in; ++j) {
        double ba = 0;
        for (int64_t k = 0; k < r; ++k) ba += double(B[i * r + k]) * A[k * in + j];
        const double want = W[i * in + j] + s * (6.0 / 4.0) * ba;
        worst = std::max(worst, std::fabs(M[i * in + j] - want));
      }
    EXPECT_LE(worst, 2e-6) << name;
  }
}

TEST(Lora, ZeroBMergeIsExactAndMergedEqualsUnmerged) {
  const auto shapes = model::DiT::expected_shapes(tiny_config());
  model::Lora l = model::init_lora(shapes, {});
  std::map<std::string, Tensor> w = random_weights(shapes, 4);
  const std::map<std::string, Tensor> base = w;
  model::merge_lora(w, l, 1.0);
  for (const auto& [m, a] : l.adapters)
    EXPECT_EQ(w.at(m + ".weight").to_float_vector(), base.at(m + ".weight").to_float_vector())
        << m;

  // BF16 output: the f32 merge rounded once.
  {
    model::Lora lb = l;
    randomize_b(lb, 13);
    std::map<std::string, Tensor> w32 = base, w16 = base;
    model::merge_lora(w32, lb, 0.5);
    model::merge_lora(w16, lb, 0.5, "", DType::BF16);
    const Tensor& m16 = w16.at("blocks.1.self_attn.k.weight");
    ASSERT_EQ(m16.dtype(), DType::BF16);
    test::expect_same_bits(m16, w32.at("blocks.1.self_attn.k.weight").to(DType::BF16), "bf16");
  }

  // Non-zero B: linear(x, W + s·(α/r)·B·A) == linear(x, W) + lora_apply.
  randomize_b(l, 12);
  w = base;
  const double s = 0.8;
  model::merge_lora(w, l, s);
  const Tensor x = randn({5, 7, 64}, 77);
  for (const std::string m : {"blocks.0.self_attn.q", "blocks.1.cross_attn.v"}) {
    Tensor y_merged = Tensor::empty({5, 7, 64}, DType::F32);
    ops::linear(x, w.at(m + ".weight"), nullptr, y_merged);
    Tensor y = Tensor::empty({5, 7, 64}, DType::F32);
    ops::linear(x, base.at(m + ".weight"), nullptr, y);
    model::lora_apply(x, l.adapters.at(m), s, y);
    EXPECT_LE(relative_error(y_merged, y), 1e-5) << m;
    Tensor y0 = Tensor::empty({5, 7, 64}, DType::F32);
    ops::linear(x, base.at(m + ".weight"), nullptr, y0);
    EXPECT_GT(relative_error(y0, y), 1e-3) << "the LoRA must change the output";
  }
}

TEST(Lora, ZeroBReproducesDiTOutputExactly) {
  // The small golden training model (4 blocks, dim 128) on its trainB case.
  const io::SafetensorsFile f = io::SafetensorsFile::open(test::golden("golden_train.safetensors"));
  const model::DiTConfig cfg = model::DiTConfig::from_json(f.metadata().at("config"));
  std::map<std::string, Tensor> w;
  for (const auto& n : f.names())
    if (n.rfind("weights.", 0) == 0) w[n.substr(8)] = f.get(n);
  const Tensor x = f.get("trainB.x0"), ctx = f.get("trainB.context");
  auto sp = parallel::make_single_device();
  auto run = [&](const std::map<std::string, Tensor>& weights) {
    model::DiT dit = model::DiT::bind(cfg, weights);
    return dit.forward(x, {500.0f}, ctx, *sp);
  };
  const Tensor base = run(w);
  model::Lora l = model::init_lora(model::DiT::expected_shapes(cfg), {});
  std::map<std::string, Tensor> merged = w;
  model::merge_lora(merged, l, 1.0);
  test::expect_same_bits(run(merged), base, "zero-B LoRA");
  randomize_b(l, 3);
  merged = w;
  model::merge_lora(merged, l, 0.01);
  EXPECT_GT(relative_error(run(merged), base), 1e-6);
}

TEST(Lora, SaveLoadRoundTrip) {
  const auto shapes = model::DiT::expected_shapes(tiny_config());
  model::LoraInit opt;
  opt.rank = 4;
  opt.alpha = 3;
  model::Lora l = model::init_lora(shapes, opt);
  randomize_b(l, 1);
  l.metadata["base_model"] = "tiny";
  const std::string p = tmp_path("rt.safetensors");
  model::save_lora(p, l);
  const io::SafetensorsFile f = io::SafetensorsFile::open(p);
  EXPECT_TRUE(f.has("blocks.0.self_attn.q.lora_A.weight"));
  EXPECT_EQ(f.entry("blocks.1.cross_attn.o.lora_B.weight").shape, (Shape{64, 4}));
  EXPECT_EQ(f.metadata().at("format"), "osp-lora");
  EXPECT_EQ(f.metadata().at("lora_rank"), "4");
  EXPECT_EQ(f.metadata().at("lora_alpha"), "3");
  EXPECT_EQ(f.metadata().at("target_modules"),
            "self_attn.q,self_attn.k,self_attn.v,self_attn.o,cross_attn.q,cross_attn.k,"
            "cross_attn.v,cross_attn.o");
  const model::Lora r = model::load_lora(p);
  ASSERT_EQ(r.adapters.size(), l.adapters.size());
  for (const auto& [m, a] : l.adapters) {
    const auto& b = r.adapters.at(m);
    EXPECT_EQ(a.A.to_float_vector(), b.A.to_float_vector()) << m;
    EXPECT_EQ(a.B.to_float_vector(), b.B.to_float_vector()) << m;
    EXPECT_EQ(b.alpha, 3.0);
  }
  EXPECT_EQ(r.metadata.at("base_model"), "tiny");
  // Per-adapter alphas travel as <module>.alpha scalars.
  l.adapters.at("blocks.0.self_attn.k").alpha = 8;
  model::save_lora(p, l);
  const model::Lora r2 = model::load_lora(p);
  EXPECT_EQ(r2.adapters.at("blocks.0.self_attn.k").alpha, 8.0);
  EXPECT_EQ(r2.adapters.at("blocks.0.self_attn.q").alpha, 3.0);
  fs::remove(p);
}

TEST(Lora, ForeignNamings) {
  auto t = [](const Shape& s, uint32_t k) { return randn(s, 21, k).to(DType::BF16); };
  std::map<std::string, Tensor> m;
  m["base_model.model.blocks.0.self_attn.q.lora_A.weight"] = t({4, 64}, 0);  // PEFT
  m["base_model.model.blocks.0.self_attn.q.lora_B.weight"] = t({64, 4}, 1);
  m["diffusion_model.blocks.1.cross_attn.o.lora_down.weight"] = t({2, 64}, 2);  // kohya
  m["diffusion_model.blocks.1.cross_attn.o.lora_up.weight"] = t({64, 2}, 3);
  Tensor al = Tensor::empty({}, DType::F32);
  al.data<float>()[0] = 1.0f;
  m["diffusion_model.blocks.1.cross_attn.o.alpha"] = al;
  m["transformer.blocks.1.attn1.to_out.0.lora_A.weight"] = t({4, 64}, 4);  // diffusers
  m["transformer.blocks.1.attn1.to_out.0.lora_B.weight"] = t({64, 4}, 5);
  m["diffusion_model.blocks.0.attn2.to_k.lora_A.default.weight"] = t({4, 64}, 6);
  m["diffusion_model.blocks.0.attn2.to_k.lora_B.default.weight"] = t({64, 4}, 7);
  const model::Lora l = model::lora_from_tensors(m, {{"lora_alpha", "8"}}, "test");
  ASSERT_EQ(l.adapters.size(), 4u);
  EXPECT_DOUBLE_EQ(l.adapters.at("blocks.0.self_attn.q").scale(), 2.0);   // metadata alpha 8
  EXPECT_DOUBLE_EQ(l.adapters.at("blocks.1.cross_attn.o").scale(), 0.5);  // .alpha tensor
  EXPECT_TRUE(l.adapters.count("blocks.1.self_attn.o"));
  EXPECT_TRUE(l.adapters.count("blocks.0.cross_attn.k"));
  EXPECT_EQ(l.adapters.at("blocks.0.self_attn.q").A.dtype(), DType::F32);
  model::check_lora(l, model::DiT::expected_shapes(tiny_config()));
  // No alpha anywhere: α = r (scale 1). diffusers' adapter metadata JSON is read.
  std::map<std::string, Tensor> p;
  p["blocks.0.self_attn.v.lora_A.weight"] = t({4, 64}, 8);
  p["blocks.0.self_attn.v.lora_B.weight"] = t({64, 4}, 9);
  EXPECT_DOUBLE_EQ(model::lora_from_tensors(p, {}, "x").adapters.begin()->second.scale(), 1.0);
  EXPECT_DOUBLE_EQ(model::lora_from_tensors(p, {{"lora_adapter_metadata",
                                                  R"({"r": 4, "lora_alpha": 2})"}},
                                            "x").adapters.begin()->second.scale(),
                   0.5);
}

TEST(Lora, BadFilesAndWrongModels) {
  auto t = [](const Shape& s, uint32_t k) { return randn(s, 31, k); };
  const auto shapes = model::DiT::expected_shapes(tiny_config());
  {  // unknown layout, named
    std::map<std::string, Tensor> m;
    m["blocks.0.self_attn.q.lora_A.weight"] = t({4, 64}, 0);
    m["blocks.0.self_attn.q.lora_B.weight"] = t({64, 4}, 1);
    m["blocks.0.norm3.diff"] = t({64}, 2);
    expect_error([&] { model::lora_from_tensors(m, {}, "f"); },
                 {"unsupported LoRA tensor 'blocks.0.norm3.diff'"});
  }
  {  // A without B
    std::map<std::string, Tensor> m;
    m["blocks.0.self_attn.q.lora_A.weight"] = t({4, 64}, 0);
    expect_error([&] { model::lora_from_tensors(m, {}, "f"); },
                 {"'blocks.0.self_attn.q.lora_A.weight' has no matching lora_B"});
  }
  {  // rank mismatch
    std::map<std::string, Tensor> m;
    m["blocks.0.self_attn.q.lora_A.weight"] = t({4, 64}, 0);
    m["blocks.0.self_attn.q.lora_B.weight"] = t({64, 3}, 1);
    expect_error([&] { model::lora_from_tensors(m, {}, "f"); },
                 {"rank mismatch", "blocks.0.self_attn.q.lora_A.weight", "[64, 3]"});
  }
  {  // bad alpha metadata
    std::map<std::string, Tensor> m;
    m["blocks.0.self_attn.q.lora_A.weight"] = t({4, 64}, 0);
    m["blocks.0.self_attn.q.lora_B.weight"] = t({64, 4}, 1);
    expect_error([&] { model::lora_from_tensors(m, {{"lora_alpha", "abc"}}, "f"); },
                 {"lora_alpha", "abc"});
  }
  {  // a LoRA for a larger model: wrong shapes and a block this model does not have
    model::DiTConfig big = tiny_config();
    big.dim = 128;
    big.num_layers = 3;
    model::LoraInit opt;
    opt.rank = 2;
    const model::Lora l = model::init_lora(model::DiT::expected_shapes(big), opt);
    expect_error([&] { model::check_lora(l, shapes); },
                 {"another model", "blocks.0.cross_attn.k.lora_A.weight' [2, 128]",
                  "model's 'blocks.0.cross_attn.k.weight' is [64, 64]",
                  "targets 'blocks.2.cross_attn.k.weight', which the model does not have"});
    std::map<std::string, Tensor> w = random_weights(shapes, 1);
    const Tensor before = w.at("blocks.0.self_attn.q.weight");
    expect_error([&] { model::merge_lora(w, l, 1.0); }, {"does not fit this model"});
    EXPECT_EQ(w.at("blocks.0.self_attn.q.weight").storage(), before.storage())
        << "a failed merge leaves the weights alone";
    // The prefix is honoured in the names.
    std::map<std::string, Shape> pre;
    for (const auto& [n, s] : shapes) pre["weights." + n] = s;
    model::check_lora(model::init_lora(shapes, {}), pre, "weights.");
    expect_error([&] { model::check_lora(model::init_lora(shapes, {}), shapes, "weights."); },
                 {"'weights.blocks.0.self_attn.q.weight'"});
  }
  {  // files: not safetensors, no LoRA tensors
    const std::string p = tmp_path("bad.safetensors");
    std::ofstream(p) << "this is not a safetensors file";
    EXPECT_THROW(model::load_lora(p), Error);
    io::save_safetensors(p, {{"blocks.0.self_attn.q.weight", t({64, 64}, 0)}});
    expect_error([&] { model::load_lora(p); },
                 {"unsupported LoRA tensor 'blocks.0.self_attn.q.weight'"});
    fs::remove(p);
    EXPECT_THROW(model::load_lora(tmp_path("missing.safetensors")), Error);
  }
}

TEST(Lora, ParseSpec) {
  auto s = model::parse_lora_spec("style.safetensors");
  EXPECT_EQ(s.path, "style.safetensors");
  EXPECT_EQ(s.scale, 1.0);
  s = model::parse_lora_spec("dir/style.safetensors:0.6");
  EXPECT_EQ(s.path, "dir/style.safetensors");
  EXPECT_EQ(s.scale, 0.6);
  s = model::parse_lora_spec("a:b/style.safetensors");
  EXPECT_EQ(s.path, "a:b/style.safetensors");
  EXPECT_EQ(model::parse_lora_spec("x.safetensors:-1").scale, -1.0);
  expect_error([] { model::parse_lora_spec(":0.5"); }, {"FILE:SCALE"});
  expect_error([] { model::parse_lora_spec(""); }, {"FILE:SCALE"});
}
