// The DiT golden cases on the GPU: the same device-generic model code (model/dit.*) on CUDA
// tensors (bf16 weights/activations, fp32 residual, cuDNN or own attention) against the Wan2.1
// reference outputs in golden_dit.safetensors. Bound: relative error ≤ 2e-2 (bf16 level).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "osp/dist/sequence_parallel.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/sparse/skiparse.h"
#include "test_util.h"

using namespace osp;
using model::DiT;
using model::DiTConfig;

namespace {

struct Golden {
  io::SafetensorsFile file;
  DiTConfig cfg;
  std::map<std::string, Tensor> weights;
};

const Golden& golden() {
  static Golden* g = [] {
    auto* r = new Golden;
    r->file = io::SafetensorsFile::open(test::golden("golden_dit.safetensors"));
    r->cfg = DiTConfig::from_json(r->file.metadata().at("config"));
    for (const auto& name : r->file.names())
      if (name.rfind("weights.", 0) == 0) r->weights[name] = r->file.get(name);
    return r;
  }();
  return *g;
}

Tensor get(const std::string& name) { return golden().file.get(name); }
float timestep(const std::string& c) { return get(c + ".t").to_float_vector().at(0); }

DiT make_gpu_model(bool hybrid) {
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  DiT m = DiT::bind(golden().cfg, golden().weights, opt, "weights.");
  if (hybrid) {
    const auto& md = golden().file.metadata();
    const int nf = std::stoi(md.at("num_full_blocks")), P = std::stoi(md.at("sparse_ratio"));
    m.set_block_kinds(sparse::plan_blocks(int(golden().cfg.num_layers), "dual_end", nf), P);
  }
  return m;
}

Tensor run(DiT& m, const std::string& c) {
  auto sp = dist::make_single_device();
  Tensor x = get(c + ".x").to(Device::cuda(0));
  Tensor ctx = get(c + ".context").to(Device::cuda(0));
  Tensor out = m.forward(x, {timestep(c)}, ctx, *sp);
  EXPECT_TRUE(out.device().is_cuda()) << out.desc();
  return out.to(Device::cpu());
}

double run_case(const std::string& c, bool hybrid) {
  DiT m = make_gpu_model(hybrid);
  Tensor out = run(m, c);
  Tensor ref = get(c + (hybrid ? ".out_hybrid" : ".out_full"));
  EXPECT_EQ(out.shape(), ref.shape());
  double e = relative_error(out, ref);
  std::printf("[dit gpu] %s %s: relative error %.3e\n", c.c_str(), hybrid ? "hybrid" : "full", e);
  return e;
}

}  // namespace

TEST(DiTGpu, CaseAFull) {
  OSP_REQUIRE_GPU();
  EXPECT_LE(run_case("caseA", false), 2e-2);
}
TEST(DiTGpu, CaseBFull) {
  OSP_REQUIRE_GPU();
  EXPECT_LE(run_case("caseB", false), 2e-2);
}
TEST(DiTGpu, CaseAHybrid) {
  OSP_REQUIRE_GPU();
  EXPECT_LE(run_case("caseA", true), 2e-2);
}
TEST(DiTGpu, CaseBHybridWithPadding) {
  OSP_REQUIRE_GPU();
  EXPECT_LE(run_case("caseB", true), 2e-2);
}

// Same inputs, same device → the same output, bit for bit (no atomics-order nondeterminism).
TEST(DiTGpu, DeterministicAcrossRuns) {
  OSP_REQUIRE_GPU();
  DiT m = make_gpu_model(true);
  Tensor a = run(m, "caseB"), b = run(m, "caseB");
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
}

// Per-block hidden states of the full model stay within bf16 bounds of the reference.
TEST(DiTGpu, CaseAHiddenStatesPerBlock) {
  OSP_REQUIRE_GPU();
  DiT m = make_gpu_model(false);
  std::vector<Tensor> hidden;
  m.set_block_hook([&](int, const Tensor& h) { hidden.push_back(h.to(Device::cpu()).to(DType::F32)); });
  run(m, "caseA");
  ASSERT_EQ(hidden.size(), size_t(golden().cfg.num_layers));
  for (size_t i = 0; i < hidden.size(); ++i) {
    Tensor ref = get(str("caseA.full_block", i));
    EXPECT_LE(relative_error(hidden[i].reshape(ref.shape()), ref), 2e-2) << "block " << i;
  }
}
