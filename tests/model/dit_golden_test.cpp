// DiT forward against golden_dit.safetensors (Wan2.1 reference, fp32 CPU, float64 attention):
// full attention (= Wan2.1), hybrid Skiparse-2D (dual_end, P = 2), per-block hidden states,
// batching, config parsing/inference and binding errors.
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "osp/parallel/sequence_parallel.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/sparse/skiparse.h"
#include "golden_dit.h"
#include "test_util.h"

using namespace osp;
using model::DiT;
using model::DiTConfig;

namespace {

const test::GoldenDiT& golden() { return test::golden_dit(); }

Tensor get(const std::string& name) { return golden().file.get(name); }
float timestep(const std::string& c) { return get(c + ".t").to_float_vector().at(0); }

DiT make_model(bool hybrid) {
  DiT m = DiT::bind(golden().cfg, golden().weights, {}, "weights.");
  if (hybrid) {
    const auto& md = golden().file.metadata();
    const int nf = std::stoi(md.at("num_full_blocks")), P = std::stoi(md.at("sparse_ratio"));
    auto kinds = sparse::plan_blocks(int(golden().cfg.num_layers), "dual_end", nf);
    // the plan must be the one the golden file was made with
    auto names = nlohmann::json::parse(md.at("block_kinds"));
    EXPECT_EQ(names.size(), kinds.size());
    for (size_t i = 0; i < kinds.size(); ++i)
      EXPECT_EQ(names[i].get<std::string>(), sparse::block_kind_name(kinds[i])) << "block " << i;
    m.set_block_kinds(kinds, P);
  }
  return m;
}

double run_case(const std::string& c, bool hybrid) {
  DiT m = make_model(hybrid);
  auto sp = parallel::make_single_device();
  Tensor out = m.forward(get(c + ".x"), {timestep(c)}, get(c + ".context"), *sp);
  Tensor ref = get(c + (hybrid ? ".out_hybrid" : ".out_full"));
  EXPECT_EQ(out.shape(), ref.shape());
  const double err = relative_error(out, ref);
  std::printf("[ info     ] %s %s: relative error %.3g\n", c.c_str(), hybrid ? "hybrid" : "full",
              err);
  return err;
}

}  // namespace

TEST(DiTGolden, ConfigFromMetadataAndInference) {
  const DiTConfig& c = golden().cfg;
  EXPECT_EQ(c.dim, 256);
  EXPECT_EQ(c.ffn_dim, 512);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.head_dim(), 128);
  EXPECT_EQ(c.num_layers, 8);
  EXPECT_EQ(c.text_dim, 96);
  EXPECT_EQ(c.text_len, 16);
  std::map<std::string, Shape> shapes;
  for (const auto& [n, t] : golden().weights) shapes[n] = t.shape();
  DiTConfig inf = DiTConfig::infer(shapes, "weights.");
  EXPECT_EQ(inf.dim, c.dim);
  EXPECT_EQ(inf.ffn_dim, c.ffn_dim);
  EXPECT_EQ(inf.num_heads, c.num_heads);  // head dim 128
  EXPECT_EQ(inf.num_layers, c.num_layers);
  EXPECT_EQ(inf.text_dim, c.text_dim);
  EXPECT_EQ(inf.freq_dim, c.freq_dim);
  EXPECT_EQ(inf.out_dim, c.out_dim);
  EXPECT_TRUE(inf.qk_norm);
  EXPECT_TRUE(inf.cross_attn_norm);
}

TEST(DiTGolden, CaseAFull) { EXPECT_LT(run_case("caseA", false), 1e-4); }
TEST(DiTGolden, CaseBFull) { EXPECT_LT(run_case("caseB", false), 1e-4); }
TEST(DiTGolden, CaseAHybrid) { EXPECT_LT(run_case("caseA", true), 1e-4); }
TEST(DiTGolden, CaseBHybridWithPadding) { EXPECT_LT(run_case("caseB", true), 1e-4); }

TEST(DiTGolden, CaseAHiddenStateAfterEveryBlock) {
  DiT m = make_model(false);
  std::vector<Tensor> hidden;
  m.set_block_hook([&](int i, const Tensor& h) {
    EXPECT_EQ(size_t(i), hidden.size());
    hidden.push_back(h.clone());
  });
  auto sp = parallel::make_single_device();
  m.forward(get("caseA.x"), {timestep("caseA")}, get("caseA.context"), *sp);
  ASSERT_EQ(hidden.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    Tensor ref = get(str("caseA.full_block", i));
    EXPECT_LT(relative_error(hidden[size_t(i)], ref), 1e-4) << "block " << i;
  }
}

TEST(DiTGolden, BatchOfTwoEqualsTwoSingleRuns) {
  // CFG batching: sample 0 = caseA, sample 1 = caseA's latent with another timestep and the
  // empty context (all padding).
  DiT m = make_model(true);
  auto sp = parallel::make_single_device();
  Tensor x = get("caseA.x"), ctx = get("caseA.context");
  Tensor xb = Tensor::empty({2, x.size(0), x.size(1), x.size(2), x.size(3)}, DType::F32);
  xb.select(0, 0).copy_from(x);
  xb.select(0, 1).copy_from(x);
  Tensor cb = Tensor::zeros({2, ctx.size(0), ctx.size(1)}, DType::F32);
  cb.select(0, 0).copy_from(ctx);
  const float t0 = timestep("caseA"), t1 = 321.f;
  Tensor out = m.forward(xb, {t0, t1}, cb, *sp);
  EXPECT_LT(relative_error(out.select(0, 0), get("caseA.out_hybrid")), 1e-4);
  Tensor single = m.forward(x, {t1}, Tensor::zeros({0, ctx.size(1)}, DType::F32), *sp);
  EXPECT_LT(relative_error(out.select(0, 1), single), 1e-5);
  EXPECT_GT(relative_error(out.select(0, 1), out.select(0, 0)), 1e-2);  // really different
}

TEST(DiTGolden, BindReportsEveryProblemAtOnce) {
  auto w = golden().weights;
  w.erase("weights.blocks.3.ffn.0.bias");
  w.erase("weights.head.head.weight");
  w["weights.blocks.5.self_attn.q.weight"] = Tensor::zeros({256, 128}, DType::F32);
  try {
    DiT::bind(golden().cfg, w, {}, "weights.");
    FAIL() << "bind accepted a broken checkpoint";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("3 problem"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blocks.3.ffn.0.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("head.head.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blocks.5.self_attn.q.weight"), std::string::npos) << msg;
  }
}

TEST(DiTGolden, ForwardRejectsBadInputs) {
  DiT m = make_model(false);
  auto sp = parallel::make_single_device();
  Tensor x = get("caseA.x"), ctx = get("caseA.context");
  const float t = timestep("caseA");
  Tensor odd = Tensor::zeros({16, 3, 15, 24}, DType::F32);
  EXPECT_THROW(m.forward(odd, {t}, ctx, *sp), Error);  // H not a multiple of 2
  Tensor ch = Tensor::zeros({8, 3, 16, 24}, DType::F32);
  EXPECT_THROW(m.forward(ch, {t}, ctx, *sp), Error);  // wrong channels
  EXPECT_THROW(m.forward(x, {t, t}, ctx, *sp), Error);  // timesteps vs batch
  Tensor long_ctx = Tensor::zeros({17, 96}, DType::F32);
  EXPECT_THROW(m.forward(x, {t}, long_ctx, *sp), Error);  // > text_len
  Tensor wide_ctx = Tensor::zeros({7, 95}, DType::F32);
  EXPECT_THROW(m.forward(x, {t}, wide_ctx, *sp), Error);
}

TEST(DiTGolden, HiF8ModePerturbsButStaysClose) {
  model::DiTOptions opt;
  opt.quant = model::DiTQuant::HiF8;
  DiT q = DiT::bind(golden().cfg, golden().weights, opt, "weights.");
  auto sp = parallel::make_single_device();
  Tensor out = q.forward(get("caseA.x"), {timestep("caseA")}, get("caseA.context"), *sp);
  const double err = relative_error(out, get("caseA.out_full"));
  // HiF8 keeps 3 mantissa bits near the max: a visible but small perturbation.
  EXPECT_GT(err, 1e-4);
  EXPECT_LT(err, 0.2);
  std::printf("[ info     ] caseA full hif8: relative error vs fp32 golden %.3g\n", err);
}
