// The DiT forward on CUDA (bf16 precision map of wan-spec §2.6) against the fp32 golden outputs
// (bf16-level error expected, golden/README: ≈ 1e-2) and against the CPU forward.
#include <gtest/gtest.h>

#include <cstdio>

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

double run_case(const std::string& c, bool hybrid, model::DiTQuant quant = model::DiTQuant::None) {
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  opt.quant = quant;
  DiT m = DiT::bind(golden().cfg, golden().weights, opt, "weights.");
  if (hybrid)
    m.set_block_kinds(sparse::plan_blocks(8, "dual_end", 4), 2);
  auto sp = parallel::make_single_device();
  const float t = get(c + ".t").to_float_vector().at(0);
  Tensor out = m.forward(get(c + ".x").to(Device::cuda(0)), {t}, get(c + ".context"), *sp);
  EXPECT_TRUE(out.device().is_cuda());
  EXPECT_EQ(out.dtype(), DType::F32);
  const double err = relative_error(out.to(Device::cpu()), get(c + (hybrid ? ".out_hybrid" : ".out_full")));
  std::printf("[ info     ] cuda %s %s%s: relative error vs fp32 golden %.3g\n", c.c_str(),
              hybrid ? "hybrid" : "full", quant == model::DiTQuant::HiF8 ? " hif8" : "", err);
  return err;
}

}  // namespace

TEST(DiTGpu, CaseAFull) {
  OSP_REQUIRE_GPU();
  EXPECT_LT(run_case("caseA", false), 3e-2);
}
TEST(DiTGpu, CaseBFull) {
  OSP_REQUIRE_GPU();
  EXPECT_LT(run_case("caseB", false), 3e-2);
}
TEST(DiTGpu, CaseAHybrid) {
  OSP_REQUIRE_GPU();
  EXPECT_LT(run_case("caseA", true), 3e-2);
}
TEST(DiTGpu, CaseBHybridWithPadding) {
  OSP_REQUIRE_GPU();
  EXPECT_LT(run_case("caseB", true), 3e-2);
}
TEST(DiTGpu, HiF8StaysClose) {
  OSP_REQUIRE_GPU();
  EXPECT_LT(run_case("caseA", true, model::DiTQuant::HiF8), 0.2);
}

TEST(DiTGpu, HiddenStatesPerBlock) {
  OSP_REQUIRE_GPU();
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  DiT m = DiT::bind(golden().cfg, golden().weights, opt, "weights.");
  std::vector<Tensor> hidden;
  m.set_block_hook([&](int, const Tensor& h) { hidden.push_back(h.to(Device::cpu())); });
  auto sp = parallel::make_single_device();
  m.forward(get("caseA.x"), {get("caseA.t").to_float_vector().at(0)}, get("caseA.context"), *sp);
  ASSERT_EQ(hidden.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    const double err = relative_error(hidden[size_t(i)], get(str("caseA.full_block", i)));
    std::printf("[ info     ] cuda caseA block %d: relative error %.3g\n", i, err);
    EXPECT_LT(err, 3e-2) << "block " << i;
  }
}
