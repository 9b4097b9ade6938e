// DiT stage profiler (model/profile.h) on the CPU with the golden tiny model (hybrid dual-end:
// full and sparse blocks): profiling leaves the output bit-identical, the report has every stage
// of both block kinds with non-negative times and the expected laps per forward, quantization
// laps appear only in HiF8 mode, and reset/off behave.
#include <gtest/gtest.h>

#include <cstdio>
#include <set>

#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/model/profile.h"
#include "osp/sparse/skiparse.h"
#include "golden_dit.h"
#include "test_util.h"

using namespace osp;
using model::DiT;
using model::ProfKind;
using model::ProfStage;

namespace {

const test::GoldenDiT& golden() { return test::golden_dit(); }
Tensor get(const std::string& name) { return golden().file.get(name); }

// The golden model with its hybrid plan; `layers` > 0 keeps only the first blocks with the
// kinds full, token, group, ... (HiF8 on the CPU is slow).
DiT make_model(model::DiTQuant quant = model::DiTQuant::None, int layers = 0) {
  model::DiTOptions opt;
  opt.quant = quant;
  model::DiTConfig cfg = golden().cfg;
  if (layers > 0) cfg.num_layers = layers;
  DiT m = DiT::bind(cfg, golden().weights, opt, "weights.");
  const auto& md = golden().file.metadata();
  const int P = std::stoi(md.at("sparse_ratio"));
  if (layers > 0) {
    std::vector<sparse::BlockKind> kinds{sparse::BlockKind::Full};
    for (int i = 1; i < layers; ++i)
      kinds.push_back(i % 2 ? sparse::BlockKind::Token : sparse::BlockKind::Group);
    m.set_block_kinds(kinds, P);
  } else {
    m.set_block_kinds(sparse::plan_blocks(int(cfg.num_layers), "dual_end",
                                          std::stoi(md.at("num_full_blocks"))),
                      P);
  }
  m.set_profiling(false);  // whatever OSP_PROFILE says
  return m;
}

Tensor run(DiT& m, const std::string& c = "caseB") {
  auto sp = parallel::make_single_device();
  return m.forward(get(c + ".x"), {get(c + ".t").to_float_vector().at(0)}, get(c + ".context"),
                   *sp);
}

// Laps per forward every (stage, kind) must have for the model's plan (no quantization).
void expect_complete(const model::ProfileReport& r, const DiT& m, bool quant) {
  int nfull = 0, nsparse = 0;
  for (auto k : m.block_kinds()) (k == sparse::BlockKind::Full ? nfull : nsparse) += 1;
  ASSERT_GT(nfull, 0);
  ASSERT_GT(nsparse, 0);
  const bool first_full = m.block_kinds().front() == sparse::BlockKind::Full;
  std::set<std::pair<int, int>> seen;
  double sum = 0;
  for (const auto& row : r.rows) {
    seen.insert({int(row.stage), int(row.kind)});
    EXPECT_GE(row.ms, 0.0) << model::prof_stage_name(row.stage);
    EXPECT_GT(row.calls, 0.0) << model::prof_stage_name(row.stage);
    sum += row.ms;
  }
  EXPECT_NEAR(sum, r.total_ms, 1e-9 * std::max(1.0, r.total_ms));
  EXPECT_GT(r.total_ms, 0.0);
  for (ProfStage s : {ProfStage::PatchEmbed, ProfStage::TimeEmbed, ProfStage::TextEmbed,
                      ProfStage::SpSetup, ProfStage::ScatterInput, ProfStage::Head, ProfStage::GatherOutput,
                      ProfStage::Unpatchify}) {
    EXPECT_TRUE(seen.count({int(s), int(ProfKind::None)})) << model::prof_stage_name(s);
    for (const auto& row : r.rows)
      if (row.stage == s) EXPECT_DOUBLE_EQ(row.calls, 1.0) << model::prof_stage_name(s);
  }
  for (ProfKind k : {ProfKind::Full, ProfKind::Sparse}) {
    const int nb = k == ProfKind::Full ? nfull : nsparse;
    for (ProfStage s : {ProfStage::ModNorm, ProfStage::QKV, ProfStage::NormRope,
                        ProfStage::SelfAttnComm, ProfStage::SelfAttn, ProfStage::OProj,
                        ProfStage::CrossAttn,
                        ProfStage::FFN, ProfStage::EnterBlock, ProfStage::Quant}) {
      // block 0 has no enter_block
      const int enters = nb - ((k == ProfKind::Full) == first_full ? 1 : 0);
      const bool want = s == ProfStage::Quant ? quant : s == ProfStage::EnterBlock ? enters > 0 : true;
      EXPECT_EQ(seen.count({int(s), int(k)}) == 1, want)
          << model::prof_stage_name(s) << " " << model::prof_kind_name(k);
      if (!want) continue;
      double calls = 0;
      for (const auto& row : r.rows)
        if (row.stage == s && row.kind == k) calls = row.calls;
      if (s == ProfStage::EnterBlock) {
        EXPECT_DOUBLE_EQ(calls, double(enters)) << model::prof_kind_name(k);
      } else if (s == ProfStage::SelfAttn || s == ProfStage::SelfAttnComm) {
        // one kernel lap per attention call the layer makes, plus the comm lap after the last
        EXPECT_GE(calls, double(nb)) << model::prof_stage_name(s);
      } else if (!quant || s == ProfStage::ModNorm || s == ProfStage::QKV ||
                 s == ProfStage::NormRope || s == ProfStage::OProj) {
        EXPECT_DOUBLE_EQ(calls, double(nb)) << model::prof_stage_name(s);
      } else {
        EXPECT_GE(calls, double(nb)) << model::prof_stage_name(s);  // cut by quantization laps
      }
    }
  }
  // Nothing outside the blocks is attributed to a block kind and vice versa.
  for (const auto& row : r.rows) {
    const bool block_stage = row.stage != ProfStage::PatchEmbed &&
                             row.stage != ProfStage::TimeEmbed &&
                             row.stage != ProfStage::TextEmbed &&
                             row.stage != ProfStage::SpSetup &&
                             row.stage != ProfStage::ScatterInput && row.stage != ProfStage::Head &&
                             row.stage != ProfStage::GatherOutput &&
                             row.stage != ProfStage::Unpatchify;
    EXPECT_EQ(row.kind != ProfKind::None, block_stage) << model::prof_stage_name(row.stage);
  }
}

}  // namespace

TEST(DiTProfile, OffByDefaultInTestsAndEmptyReport) {
  DiT m = make_model();
  EXPECT_FALSE(m.profiling());
  run(m);
  const auto r = m.profile_report();
  EXPECT_EQ(r.forwards, 0);
  EXPECT_TRUE(r.rows.empty());
}

TEST(DiTProfile, EveryStageBothKindsOutputUnchanged) {
  DiT m = make_model();
  const Tensor ref = run(m);
  m.set_profiling(true);
  const Tensor a = run(m);
  const Tensor b = run(m);
  EXPECT_EQ(max_abs_diff(a, ref), 0.0);
  EXPECT_EQ(max_abs_diff(b, ref), 0.0);
  EXPECT_LT(relative_error(a, get("caseB.out_hybrid")), 1e-4);
  const auto r = m.profile_report();
  EXPECT_EQ(r.forwards, 2);
  expect_complete(r, m, false);
  const std::string table = r.table();
  std::printf("%s", table.c_str());
  for (int s = 0; s < int(ProfStage::BwdHead); ++s)  // every forward stage (the backward's: training)
    if (ProfStage(s) != ProfStage::Quant)
      EXPECT_NE(table.find(model::prof_stage_name(ProfStage(s))), std::string::npos)
          << model::prof_stage_name(ProfStage(s));
  EXPECT_EQ(table.find("bwd_"), std::string::npos) << "an inference forward has no backward stages";
  // flat_ms carries the same numbers.
  const auto flat = r.flat_ms();
  ASSERT_EQ(flat.size(), size_t(model::kProfSlots));
  for (const auto& row : r.rows)
    EXPECT_EQ(flat[size_t(int(row.stage) * model::kProfKinds + int(row.kind))], row.ms);

  // reset clears; off stops counting.
  m.profile_reset();
  EXPECT_EQ(m.profile_report().forwards, 0);
  m.set_profiling(false);
  run(m);
  EXPECT_EQ(m.profile_report().forwards, 0);
  m.set_profiling(true);
  run(m);
  EXPECT_EQ(m.profile_report().forwards, 1);
}

TEST(DiTProfile, HiF8ModeHasQuantStage) {
  DiT m = make_model(model::DiTQuant::HiF8, 3);
  const Tensor ref = run(m, "caseA");
  m.set_profiling(true);
  const Tensor got = run(m, "caseA");
  EXPECT_EQ(max_abs_diff(got, ref), 0.0);
  const auto r = m.profile_report();
  EXPECT_EQ(r.forwards, 1);
  expect_complete(r, m, true);
}

TEST(DiTProfile, BatchOfTwoUnchanged) {
  DiT m = make_model();
  Tensor x = get("caseA.x"), ctx = get("caseA.context");
  Tensor xb = Tensor::empty({2, x.size(0), x.size(1), x.size(2), x.size(3)}, DType::F32);
  xb.select(0, 0).copy_from(x);
  xb.select(0, 1).copy_from(x);
  Tensor cb = Tensor::zeros({2, ctx.size(0), ctx.size(1)}, DType::F32);
  cb.select(0, 0).copy_from(ctx);
  auto sp = parallel::make_single_device();
  const float t0 = get("caseA.t").to_float_vector().at(0);
  const Tensor ref = m.forward(xb, {t0, 321.f}, cb, *sp);
  m.set_profiling(true);
  const Tensor got = m.forward(xb, {t0, 321.f}, cb, *sp);
  EXPECT_EQ(max_abs_diff(got, ref), 0.0);
  expect_complete(m.profile_report(), m, false);
}

TEST(DiTProfile, FailedForwardIsNotCounted) {
  DiT m = make_model();
  m.set_profiling(true);
  auto sp = parallel::make_single_device();
  // A block hook that throws stops the forward after it began.
  m.set_block_hook([](int i, const Tensor&) {
    if (i == 2) throw Error("hook stop");
  });
  EXPECT_THROW(run(m), Error);
  EXPECT_EQ(m.profile_report().forwards, 0);
  EXPECT_TRUE(m.profile_report().rows.empty());
  m.set_block_hook(nullptr);
  run(m);
  const auto r = m.profile_report();
  EXPECT_EQ(r.forwards, 1);
  expect_complete(r, m, false);
}
