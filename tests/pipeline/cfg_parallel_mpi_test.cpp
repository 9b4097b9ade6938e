// CFG parallelism (osp generate --cfg-parallel) under mpirun, 1/2/4 ranks, with the shipped tiny
// model (OSP-Next-Tiny, hybrid dual-end) at 64x64x9:
//   2 ranks: the CFG pair (cond on rank 0, uncond on rank 1, no SP);
//   4 ranks: 2 CFG branches x 2 SSP ranks (and x 2 Ulysses ranks with full attention);
// the latent (and frames) equal a single-rank batched-CFG run of the same seed. On one rank the
// flag is refused with the launch to use. Step caching keeps its per-row decisions (the pair
// agrees on each step) and reuses the same steps as one rank.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>

#include "osp/parallel/communicator.h"
#include "osp/pipeline/pipeline.h"
#include "pipeline/tiny_run.h"
#include "test_util.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {

const std::string kModel = test::tiny_model_dir();

pipeline::GenerateOptions base_options() { return test::tiny_generate_options(10, 2024); }

using osp::test::error_of;

// The CFG-parallel run of `o` on every rank of this job vs the single-rank batched-CFG run.
struct Compared {
  pipeline::GenerateResult par, one;
};
Compared run_both(pipeline::GenerateOptions o, int size, const std::string& sp = "ssp") {
  o.cfg_parallel = true;
  o.sp = size > 2 ? sp : "none";
  Compared c;
  c.par = pipeline::generate(pipeline::plan_generation(kModel, o));
  pipeline::GenerateOptions o1 = o;
  o1.cfg_parallel = false;
  o1.sp = "none";
  c.one = pipeline::generate(pipeline::plan_generation(kModel, o1));
  return c;
}

}  // namespace

TEST(CfgParallel, RankSplitErrors) {
  // Pure checks of the rank arithmetic (no launch needed).
  EXPECT_EQ(pipeline::cfg_parallel_branch_ranks(2, "none"), 1);
  EXPECT_EQ(pipeline::cfg_parallel_branch_ranks(2, "ssp"), 1);
  EXPECT_EQ(pipeline::cfg_parallel_branch_ranks(4, "ssp"), 2);
  EXPECT_EQ(pipeline::cfg_parallel_branch_ranks(8, "ulysses"), 4);
  EXPECT_NE(error_of([] { pipeline::cfg_parallel_branch_ranks(1, "none"); }).find("mpirun -np 2"), std::string::npos);
  EXPECT_NE(error_of([] { pipeline::cfg_parallel_branch_ranks(3, "ssp"); }).find("even number of ranks"),
            std::string::npos);
  EXPECT_NE(error_of([] { pipeline::cfg_parallel_branch_ranks(4, "none"); }).find("add --sp ssp"), std::string::npos);
}

TEST(CfgParallel, GuidanceOneIsRefused) {
  pipeline::GenerateOptions o = base_options();
  o.cfg_parallel = true;
  o.guidance = 1;
  const std::string e = error_of([&] { pipeline::validate_options(o); });
  EXPECT_NE(e.find("--guidance 1 has no unconditional branch"), std::string::npos) << e;
}

TEST(CfgParallel, MatchesSingleRank) {
  if (!fs::exists(kModel + "/diffusion_pytorch_model.safetensors"))
    GTEST_SKIP() << "SKIP: " << kModel << " is not in this checkout";
  auto comm = parallel::make_communicator("mpi");
  const int size = comm->size();
  if (size == 1 || size % 2 != 0) {
    // One rank: the flag is refused before any work, saying how to launch.
    pipeline::GenerateOptions o = base_options();
    o.cfg_parallel = true;
    const std::string e = error_of([&] { pipeline::plan_generation(kModel, o); });
    EXPECT_NE(e.find("--cfg-parallel needs an even number of ranks"), std::string::npos) << e;
    return;
  }
  const Compared c = run_both(base_options(), size);
  ASSERT_EQ(c.par.latent.shape(), c.one.latent.shape());
  const double rel = relative_error(c.par.latent, c.one.latent);
  const double mad = max_abs_diff(c.par.latent, c.one.latent);
  std::printf("[rank %d of %d] cfg-parallel vs one rank: latent relative error %.3g, max |diff| %.3g\n",
              comm->rank(), size, rel, mad);
  // Not bitwise: one branch per rank halves the rows of every DiT GEMM (B = 1 instead of 2) and,
  // with SSP, the rows per rank again; OpenBLAS rounds differently for other row counts.
  EXPECT_LE(rel, 1e-5) << size << " ranks";
  ASSERT_EQ(c.par.rgb.shape(), c.one.rgb.shape());
  int64_t off = 0;
  for (int64_t i = 0; i < c.par.rgb.numel(); ++i)
    off += std::abs(int(c.par.rgb.data<uint8_t>()[i]) - int(c.one.rgb.data<uint8_t>()[i])) > 1;
  EXPECT_EQ(off, 0) << "pixels off by more than one level";
  // Every rank holds the same latent (the pair took the same steps).
  Tensor all = Tensor::empty({int64_t(size), c.par.latent.numel()}, DType::F32, Device::cpu());
  comm->all_gather(c.par.latent.contiguous().reshape({c.par.latent.numel()}), all);
  for (int r = 1; r < size; ++r) EXPECT_EQ(max_abs_diff(all.select(0, r), all.select(0, 0)), 0.0) << "rank " << r;
}

TEST(CfgParallel, WithUlyssesMatchesSingleRank) {
  // 4 ranks: 2 CFG x 2 Ulysses (full attention: Ulysses splits full blocks only).
  if (!fs::exists(kModel + "/diffusion_pytorch_model.safetensors"))
    GTEST_SKIP() << "SKIP: " << kModel << " is not in this checkout";
  auto comm = parallel::make_communicator("mpi");
  if (comm->size() != 4) GTEST_SKIP() << "SKIP: the 2 x 2 Ulysses layout needs 4 ranks";
  pipeline::GenerateOptions o = base_options();
  o.attention = "full";
  o.steps = 5;
  const Compared c = run_both(o, comm->size(), "ulysses");
  const double rel = relative_error(c.par.latent, c.one.latent);
  std::printf("[rank %d of 4] cfg-parallel x ulysses vs one rank: latent relative error %.3g\n", comm->rank(), rel);
  EXPECT_LE(rel, 1e-5);
}

TEST(CfgParallel, StepCacheReusesTheSameSteps) {
  if (!fs::exists(kModel + "/diffusion_pytorch_model.safetensors"))
    GTEST_SKIP() << "SKIP: " << kModel << " is not in this checkout";
  auto comm = parallel::make_communicator("mpi");
  const int size = comm->size();
  if (size == 1 || size % 2 != 0) GTEST_SKIP() << "SKIP: --cfg-parallel needs 2 or 4 ranks here";
  pipeline::GenerateOptions o = base_options();
  o.steps = 30;
  o.cache = "teacache:0.1";
  const Compared c = run_both(o, size);
  EXPECT_EQ(c.par.steps_cached, c.one.steps_cached);
  EXPECT_GT(c.par.steps_cached, 0);
  EXPECT_LE(relative_error(c.par.latent, c.one.latent), 1e-5) << size << " ranks";
}
