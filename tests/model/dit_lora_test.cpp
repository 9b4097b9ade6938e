// LoRA inside the DiT (dit.h attach_lora, dit_layers.h LoraBranch): a zero-B adapter leaves the
// output bit for bit unchanged (bf16-free CPU path and HiF8), the un-merged application equals
// the merged-weights model (<= 1e-5), disabling the adapters gives the base back exactly, the
// adapter gradients of a frozen-base model match central finite differences, no base gradient is
// allocated, a LoRA read back from the model and saved loads back to the same output, and wrong
// adapters are refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <unistd.h>

#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/model/lora.h"
#include "osp/ops/ops.h"
#include "model/random_dit_weights.h"
#include "test_util.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {

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

model::Lora random_lora(const model::DiTConfig& cfg, int64_t rank, double alpha, uint64_t seed,
                        float b_scale) {
  model::LoraInit li;
  li.rank = rank;
  li.alpha = alpha;
  li.seed = seed;
  model::Lora l = model::init_lora(model::DiT::expected_shapes(cfg), li);
  uint32_t s = 1000;
  if (b_scale != 0)
    for (auto& [m, a] : l.adapters) {
      std::vector<float> v = randn(a.B.shape(), seed, s++).to_float_vector();
      for (float& x : v) x *= b_scale;
      a.B = Tensor::from_vector(v, a.B.shape());
    }
  return l;
}

struct Inputs {
  Tensor x, ctx;
  std::vector<float> t;
};
Inputs inputs(uint64_t seed) {
  return {randn({2, 16, 2, 4, 4}, seed, 1), randn({2, 6, 32}, seed, 2), {700.f, 250.f}};
}

double max_rel(const Tensor& a, const Tensor& b) {
  const auto x = a.to_float_vector(), y = b.to_float_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num = std::max(num, std::abs(double(x[i]) - double(y[i])));
    den = std::max(den, std::abs(double(y[i])));
  }
  return num / std::max(den, 1e-30);
}

}  // namespace

TEST(DiTLora, ZeroBReproducesBaseExactly) {
  const auto cfg = tiny_config();
  const auto w = osp::test::random_dit_weights(cfg, 1);
  const Inputs in = inputs(5);
  auto sp = parallel::make_single_device();
  for (auto q : {model::DiTQuant::None, model::DiTQuant::HiF8}) {
    model::DiTOptions o;
    o.quant = q;
    model::DiT dit = model::DiT::bind(cfg, w, o);
    const Tensor base = dit.forward(in.x, in.t, in.ctx, *sp).clone();
    dit.attach_lora(random_lora(cfg, 4, 8, 3, 0.f));  // PEFT init: B = 0
    ASSERT_TRUE(dit.has_lora());
    test::expect_same_bits(dit.forward(in.x, in.t, in.ctx, *sp), base, "zero-B LoRA");
  }
}

TEST(DiTLora, UnmergedEqualsMergedAndDisableGivesBase) {
  const auto cfg = tiny_config();
  const auto w = osp::test::random_dit_weights(cfg, 2);
  const Inputs in = inputs(6);
  auto sp = parallel::make_single_device();
  model::Lora l = random_lora(cfg, 4, 8, 4, 0.05f);
  // every linear of a block, not only the default targets
  {
    model::LoraInit li;
    li.rank = 3;
    li.alpha = 3;
    li.seed = 9;
    li.targets = {"ffn.0", "ffn.2"};
    model::Lora f = model::init_lora(model::DiT::expected_shapes(cfg), li);
    uint32_t s = 2000;
    for (auto& [m, a] : f.adapters) {
      std::vector<float> v = randn(a.B.shape(), 9, s++).to_float_vector();
      for (float& x : v) x *= 0.05f;
      a.B = Tensor::from_vector(v, a.B.shape());
      l.adapters[m] = a;
    }
  }
  const double strength = 0.7;
  model::DiT base = model::DiT::bind(cfg, w);
  const Tensor v_base = base.forward(in.x, in.t, in.ctx, *sp).clone();
  std::map<std::string, Tensor> merged = w;
  model::merge_lora(merged, l, strength);
  model::DiT mdl = model::DiT::bind(cfg, merged);
  const Tensor v_merged = mdl.forward(in.x, in.t, in.ctx, *sp).clone();

  model::DiT dit = model::DiT::bind(cfg, w);
  dit.attach_lora(l, strength);
  const Tensor v_lora = dit.forward(in.x, in.t, in.ctx, *sp).clone();
  EXPECT_LE(max_rel(v_lora, v_merged), 1e-5);
  EXPECT_GT(max_rel(v_lora, v_base), 1e-3) << "the LoRA must change the output";
  dit.set_lora_enabled(false);
  test::expect_same_bits(dit.forward(in.x, in.t, in.ctx, *sp), v_base, "LoRA disabled");
  dit.set_lora_enabled(true);
  test::expect_same_bits(dit.forward(in.x, in.t, in.ctx, *sp), v_lora, "LoRA re-enabled");
  dit.detach_lora();
  test::expect_same_bits(dit.forward(in.x, in.t, in.ctx, *sp), v_base, "LoRA detached");
}

// L = Σ v·R; the analytic LoRA gradients of a frozen-base training model against central finite
// differences of the inference forward (both f32 on the CPU; the loss accumulates in double).
TEST(DiTLora, GradientsMatchFiniteDifferences) {
  const auto cfg = tiny_config();
  const auto w = osp::test::random_dit_weights(cfg, 3);
  const Inputs in = inputs(7);
  auto sp = parallel::make_single_device();
  model::DiTOptions o;
  o.train = true;
  o.train_base = false;
  model::DiT dit = model::DiT::bind(cfg, w, o);
  dit.attach_lora(random_lora(cfg, 4, 8, 5, 0.2f), 1.5);
  for (const ParamRef& p : dit.parameters()) ASSERT_EQ(p.grad, nullptr) << p.name << ": frozen";
  const ParamTable lp = dit.lora_parameters();
  ASSERT_EQ(lp.size(), size_t(2 * 8 * cfg.num_layers));
  const Tensor R = randn({2, 16, 2, 4, 4}, 11, 3);
  const auto r = R.to_float_vector();
  auto loss = [&]() {
    const auto v = dit.forward(in.x, in.t, in.ctx, *sp).to_float_vector();
    double s = 0;
    for (size_t i = 0; i < v.size(); ++i) s += double(v[i]) * double(r[i]);
    return s;
  };
  // the training forward equals the inference forward (same bits on the CPU)
  const Tensor vt = dit.forward_train(in.x, in.t, in.ctx, *sp).clone();
  dit.zero_lora_grad();
  dit.backward(R, *sp);
  test::expect_same_bits(vt, dit.forward(in.x, in.t, in.ctx, *sp), "train vs inference forward");
  int checked = 0;
  for (const std::string name :
       {"blocks.0.self_attn.q.lora_A.weight", "blocks.0.self_attn.v.lora_B.weight",
        "blocks.0.cross_attn.k.lora_A.weight", "blocks.1.cross_attn.v.lora_B.weight",
        "blocks.1.self_attn.o.lora_A.weight", "blocks.1.cross_attn.q.lora_B.weight"}) {
    const ParamRef* p = nullptr;
    for (const ParamRef& q : lp)
      if (q.name == name) p = &q;
    ASSERT_NE(p, nullptr) << name;
    ASSERT_NE(p->grad, nullptr);
    const auto g = p->grad->to_float_vector();
    float* val = p->value->data<float>();
    double gmax = 0;
    for (float x : g) gmax = std::max(gmax, double(std::abs(x)));
    ASSERT_GT(gmax, 0) << name;
    for (int64_t k : {int64_t(0), p->value->numel() / 3, p->value->numel() - 1}) {
      const float keep = val[k];
      // f32 forward: the loss (≈ 19) carries ~1e-6 of rounding noise, which a central difference
      // divides by 2h — at h = 3e-2 that is ~3e-4, as large as the smaller gradients here (an
      // AVX2 OpenBLAS measured 7 % off on one). A wide step with the fourth-order stencil keeps
      // both the noise and the truncation error below 1e-5 of these gradients.
      const float h = 0.1f;
      auto at = [&](float step) {
        val[k] = keep + step;
        const double l = loss();
        val[k] = keep;
        return l;
      };
      const double fd = (8.0 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12.0 * double(h));
      EXPECT_NEAR(double(g[size_t(k)]), fd, 2e-3 * gmax + 1e-2 * std::abs(fd)) << name << "[" << k << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 18);
}

TEST(DiTLora, HiF8BaseTrainsAdaptersOnly) {
  const auto cfg = tiny_config();
  const auto w = osp::test::random_dit_weights(cfg, 4);
  const Inputs in = inputs(8);
  auto sp = parallel::make_single_device();
  model::DiTOptions o;
  o.quant = model::DiTQuant::HiF8;
  o.train = true;
  o.train_base = false;
  model::DiT dit = model::DiT::bind(cfg, w, o);
  const model::Lora l = random_lora(cfg, 4, 8, 6, 0.1f);
  dit.attach_lora(l);
  // frozen HiF8 base: the inference HiF8 model plus the plain adapter branch
  model::DiTOptions oi;
  oi.quant = model::DiTQuant::HiF8;
  model::DiT inf = model::DiT::bind(cfg, w, oi);
  inf.attach_lora(l);
  const Tensor v_inf = inf.forward(in.x, in.t, in.ctx, *sp).clone();
  const Tensor vt = dit.forward_train(in.x, in.t, in.ctx, *sp).clone();
  test::expect_same_bits(vt, v_inf, "HiF8 frozen-base training forward");
  dit.zero_lora_grad();
  dit.backward(randn(vt.shape(), 12, 1), *sp);
  for (const ParamRef& p : dit.lora_parameters()) {
    double s = 0;
    for (float g : p.grad->to_float_vector()) {
      ASSERT_TRUE(std::isfinite(g)) << p.name;
      s += std::abs(g);
    }
    EXPECT_GT(s, 0) << p.name;
  }
  // the branch is unquantized: the adapter changes the HiF8 output by (nearly) its f32 effect
  model::DiT hb = model::DiT::bind(cfg, w, oi);
  EXPECT_GT(max_rel(v_inf, hb.forward(in.x, in.t, in.ctx, *sp)), 1e-3);
}

TEST(DiTLora, SavedLoraLoadsBackAndBadAdaptersAreRefused) {
  const auto cfg = tiny_config();
  const auto w = osp::test::random_dit_weights(cfg, 5);
  const Inputs in = inputs(9);
  auto sp = parallel::make_single_device();
  model::DiT dit = model::DiT::bind(cfg, w);
  dit.attach_lora(random_lora(cfg, 4, 16, 7, 0.1f));
  const Tensor v = dit.forward(in.x, in.t, in.ctx, *sp).clone();
  const fs::path dir = fs::temp_directory_path() / ("osp_dit_lora_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "lora.safetensors").string();
  model::save_lora(path, dit.lora());
  const model::Lora back = model::load_lora(path);
  EXPECT_EQ(back.rank(), 4);
  EXPECT_EQ(back.alpha(), 16);
  EXPECT_EQ(back.adapters.size(), size_t(8 * cfg.num_layers));
  const model::Lora mine = dit.lora();
  for (const auto& [m, a] : mine.adapters) {
    test::expect_same_bits(back.adapters.at(m).A, a.A, (m + " A").c_str());
    test::expect_same_bits(back.adapters.at(m).B, a.B, (m + " B").c_str());
  }
  model::DiT d2 = model::DiT::bind(cfg, w);
  d2.attach_lora(back);
  test::expect_same_bits(d2.forward(in.x, in.t, in.ctx, *sp), v, "reloaded LoRA");

  model::Lora bad = back;
  bad.adapters["blocks.7.self_attn.q"] = bad.adapters.at("blocks.0.self_attn.q");
  try {
    d2.attach_lora(bad);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.7.self_attn.q"), std::string::npos) << e.what();
  }
  bad = back;
  bad.adapters.at("blocks.1.cross_attn.k").A = randn({4, 48}, 1);
  try {
    d2.attach_lora(bad);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  // a failed attach leaves the previous adapters in place
  test::expect_same_bits(d2.forward(in.x, in.t, in.ctx, *sp), v, "after refused attach");
  fs::remove_all(dir);
}
