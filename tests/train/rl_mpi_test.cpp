// `osp rl` on several ranks (run under mpirun with 1, 2 and 4 ranks; train/rl_trainer.h "ranks"):
// data parallelism over the prompt groups, and sequence parallelism (SSP) combined with it, give
// the run of one rank — the same rewards (bit for bit with data parallelism: every sample is rolled out with the same
// noise wherever it runs), the same advantages and update statistics, the same held-out
// evaluation, and the same LoRA after two iterations up to float summation order — and world
// rank 0 alone writes the log and the checkpoints. Bad rank layouts are refused by name.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "osp/parallel/communicator.h"
#include "osp/model/lora.h"
#include "osp/train/data_parallel.h"
#include "osp/train/rl_trainer.h"
#include "train/rl_test_stack.h"

namespace fs = std::filesystem;
using namespace osp;
using namespace osp::train;
using namespace osp::train::rl_test;

namespace {

std::shared_ptr<parallel::Communicator> world() {
  static std::shared_ptr<parallel::Communicator> c = parallel::make_mpi_communicator();
  return c;
}

// The same path on every rank of this job (mpirun is every rank's parent).
fs::path job_dir(const std::string& name) {
  return fs::temp_directory_path() / ("osp_rl_mpi_" + name + "_" + std::to_string(::getppid()));
}

RlOptions options(const fs::path& out, const fs::path& prompts) {
  RlOptions o = small_rl_options();
  o.prompts = prompts.string();
  o.eval_prompts = prompts.string();
  o.eval_samples = 2;
  o.out = out.string();
  o.size = "32x32";
  o.frames = 1;
  o.group = 2;
  o.prompts_per_iter = 4;  // a multiple of 1, 2 and 4 data-parallel ranks
  o.steps = 4;
  o.sde_steps = 2;
  o.seed = 11;
  return o;
}

fs::path prompts_file() {
  const fs::path p = job_dir("prompts.txt");
  if (world()->rank() == 0)
    std::ofstream(p) << "a red circle moves up on a black background\n"
                     << "a blue square grows on a white background\n"
                     << "a green cross rotates on a gray background\n";
  world()->barrier();
  return p;
}

double max_abs(const Tensor& a) {
  double m = 0;
  for (float v : a.to_float_vector()) m = std::max(m, double(std::fabs(v)));
  return m;
}

// One rank's run (no groups) against the run over `groups` with the SP plan `sp`. bitwise: the
// rollouts before the first update (held-out evaluation, iteration 1's rewards) are the one-rank
// run's bit for bit — true for data parallelism (each sample runs whole, with the same shapes);
// under SSP each rank's GEMMs run on its own rows, and whether the BLAS rounds a row alike inside
// another row count depends on its kernels (AVX-512 OpenBLAS did; the AVX2 build differs by
// ~1e-7), so there they are held to tol.
void expect_same_as_one_rank(const std::string& name, ParallelGroups groups,
                             std::unique_ptr<parallel::SequenceParallel> sp, double tol, bool bitwise) {
  const int rank = world()->rank();
  const fs::path prompts = prompts_file();
  const fs::path ref_out = job_dir(name + "_ref_rank" + std::to_string(rank));
  const fs::path out = job_dir(name);
  fs::remove_all(ref_out);
  if (rank == 0) fs::remove_all(out);
  world()->barrier();

  RlResult ref, got;
  {
    Stack s;
    ref = run_rl(options(ref_out, prompts), s.env, s.rewards);
  }
  {
    Stack s;
    s.sp = std::move(sp);
    s.env.sp = s.sp.get();
    s.env.groups = &groups;
    got = run_rl(options(out, prompts), s.env, s.rewards);
  }
  ASSERT_EQ(got.iterations_done, 2);
  ASSERT_EQ(got.log.size(), ref.log.size());
  EXPECT_NEAR(got.eval_start, ref.eval_start, bitwise ? 1e-12 : tol);
  EXPECT_NEAR(got.eval_end, ref.eval_end, tol);
  for (size_t i = 0; i < ref.log.size(); ++i) {
    const RlIterationLog &a = ref.log[i], &b = got.log[i];
    SCOPED_TRACE("iteration " + std::to_string(i + 1));
    if (i == 0 && bitwise) {  // before any update every rank has the initial LoRA: rewards bit for bit
      EXPECT_EQ(b.reward_mean, a.reward_mean);
      EXPECT_EQ(b.reward_std, a.reward_std);
    } else {
      EXPECT_NEAR(b.reward_mean, a.reward_mean, tol);
    }
    EXPECT_EQ(b.kept, a.kept);
    EXPECT_EQ(b.rollout_forwards, a.rollout_forwards);
    EXPECT_EQ(b.update_forwards, a.update_forwards);
    EXPECT_EQ(b.update_backwards, a.update_backwards);
    EXPECT_NEAR(b.kl, a.kl, tol * std::max(1.0, std::fabs(a.kl)));
    EXPECT_NEAR(b.ratio_mean, a.ratio_mean, tol);
    EXPECT_NEAR(b.ratio_min, a.ratio_min, tol);
    EXPECT_NEAR(b.ratio_max, a.ratio_max, tol);
    EXPECT_NEAR(b.loss, a.loss, tol * std::max(1.0, std::fabs(a.loss)));
    EXPECT_NEAR(b.grad_norm, a.grad_norm, tol * std::max(1.0, a.grad_norm));
  }
  // the LoRA after two iterations (written by world rank 0 only)
  world()->barrier();
  const model::Lora la = model::load_lora((fs::path(ref.last_checkpoint) / "lora.safetensors").string());
  const model::Lora lb = model::load_lora((fs::path(got.last_checkpoint) / "lora.safetensors").string());
  ASSERT_EQ(la.adapters.size(), lb.adapters.size());
  double scale = 0, diff = 0;
  for (const auto& [mod, ad] : la.adapters) {
    ASSERT_TRUE(lb.adapters.count(mod)) << mod;
    scale = std::max({scale, max_abs(ad.A), max_abs(ad.B)});
    diff = std::max({diff, max_abs_diff(ad.A, lb.adapters.at(mod).A), max_abs_diff(ad.B, lb.adapters.at(mod).B)});
  }
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(diff, tol * scale) << "LoRA differs from the one-rank run by " << diff << " (max |w| " << scale << ")";
  // one log, one set of checkpoints: world rank 0's
  int lines = 0;
  {
    std::ifstream f(out / "rl_log.jsonl");
    for (std::string line; std::getline(f, line);) ++lines;
  }
  EXPECT_EQ(lines, 3);  // two iterations + the final evaluation
  world()->barrier();
  fs::remove_all(ref_out);
  if (rank == 0) fs::remove_all(out);
}

}  // namespace

TEST(RlMpi, DataParallelEqualsOneRank) {
  expect_same_as_one_rank("dp", make_parallel_groups(world(), 1), parallel::make_single_device(), 2e-5, true);
}

TEST(RlMpi, SspTimesDataParallelEqualsOneRank) {
  if (world()->size() < 2) GTEST_SKIP() << "needs 2 or 4 ranks";
  ParallelGroups g = make_parallel_groups(world(), 2);  // 2 = 2 SP x 1 DP, 4 = 2 SP x 2 DP
  std::unique_ptr<parallel::SequenceParallel> sp = parallel::make_ssp(g.sp);
  expect_same_as_one_rank("ssp", std::move(g), std::move(sp), 1e-4, false);
}

TEST(RlMpi, PromptGroupsMustSplitEvenly) {
  if (world()->size() < 2) GTEST_SKIP() << "needs 2 or 4 ranks";
  ParallelGroups g = make_parallel_groups(world(), 1);
  Stack s;
  s.env.groups = &g;
  RlOptions o = options(job_dir("uneven"), prompts_file());
  o.prompts_per_iter = 3;
  try {
    run_rl(o, s.env, s.rewards);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--prompts-per-iter 3 must be a multiple of the"), std::string::npos)
        << e.what();
  }
  world()->barrier();
  if (world()->rank() == 0) fs::remove_all(job_dir("uneven"));
}
