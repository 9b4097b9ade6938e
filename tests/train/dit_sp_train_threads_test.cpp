// Rank counts the 1/2/4-rank MPI tests cannot reach, as threads of one process
// (parallel::make_thread_communicators): the golden training step (golden_train.safetensors, 2 heads)
// on 8 ranks of SSP — the 2D tile split with inner Ulysses U = 8 / P² = 2 in the sparse blocks
// and the full blocks in four replica groups of F = 2 — and on 6 ranks of Ulysses (three
// replica groups) equals the single-rank loss, v, every parameter gradient (summed with
// reduce_sp_gradients), grad x_σ and grad context within 1e-5 relative on every rank.
#include <gtest/gtest.h>

#include <omp.h>

#include <exception>
#include <map>
#include <thread>

#include "osp/parallel/comm_volume.h"
#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/ops.h"
#include "osp/train/data_parallel.h"
#include "model/golden_train.h"
#include "test_util.h"

using namespace osp;
using model::DiT;

namespace {

struct Step : test::TrainStepResult {
  std::map<std::string, Tensor> grads;
};

Step flow_step(DiT& m, parallel::SequenceParallel& sp, const test::TrainCaseInputs& in) {
  m.zero_grad();
  Step r;
  static_cast<test::TrainStepResult&>(r) = test::golden_flow_step(m, sp, in);
  return r;
}

void run_case(const char* golden_case, const char* mode, const char* spname, int S) {
  const auto in = test::golden_train_inputs(golden_case);
  Step want;
  {
    DiT m = test::golden_train_model(mode);
    auto single = parallel::make_single_device();
    want = flow_step(m, *single, in);
    for (const ParamRef& p : m.parameters()) want.grads[p.name] = p.grad->clone();
  }
  auto comms = parallel::make_thread_communicators(S);
  std::vector<Step> got(static_cast<size_t>(S));
  std::vector<std::exception_ptr> errs(static_cast<size_t>(S));
  std::vector<std::thread> th;
  for (int r = 0; r < S; ++r)
    th.emplace_back([&, r] {
      omp_set_num_threads(1);
      try {
        std::shared_ptr<parallel::Communicator> comm(std::move(comms[size_t(r)]));
        DiT m = test::golden_train_model(mode);
        auto sp = std::string(spname) == "ssp" ? parallel::make_ssp(comm) : parallel::make_ulysses(comm);
        Step s = flow_step(m, *sp, in);
        ParamTable params = m.parameters();
        train::reduce_sp_gradients(params, *comm);
        comm->all_reduce(s.dcontext);
        for (const ParamRef& p : params) s.grads[p.name] = p.grad->clone();
        got[size_t(r)] = std::move(s);
      } catch (...) {
        errs[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : th) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
  for (int r = 0; r < S; ++r) {
    const Step& g = got[size_t(r)];
    const std::string where = std::string(golden_case) + " " + mode + " " + spname + " rank " +
                              std::to_string(r) + "/" + std::to_string(S);
    EXPECT_LT(std::abs(g.loss - want.loss) / want.loss, 1e-6) << where;
    EXPECT_LT(relative_error(g.v, want.v), 1e-5) << where << " v";
    EXPECT_LT(relative_error(g.dx_sigma, want.dx_sigma), 1e-5) << where << " grad x_sigma";
    EXPECT_LT(relative_error(g.dcontext, want.dcontext), 1e-5) << where << " grad context";
    for (const auto& [name, w] : want.grads)
      EXPECT_LT(relative_error(g.grads.at(name), w), 1e-5) << where << " grad " << name;
  }
}

}  // namespace

TEST(DiTSpTrainThreads, Ssp8RanksTileSplitAndReplicatedFullBlocks) {
  // the layout this case is about: U = 2 inside the sparse blocks
  const auto& g = test::golden_train();
  parallel::ForwardPlan plan;
  plan.grid = {2, 12 / g.cfg.patch_h, 16 / g.cfg.patch_w};
  plan.kinds = g.hybrid_kinds;
  plan.P = g.P;
  plan.heads = int(g.cfg.num_heads);
  plan.head_dim = int(g.cfg.head_dim());
  const auto vol = parallel::comm_volume(plan, "ssp", 8, 0, 1, 4, 0);
  ASSERT_EQ(vol.U, 2);
  ASSERT_GT(vol.sparse_ulysses_bytes, 0u);
  run_case("trainA", "hybrid", "ssp", 8);
}

TEST(DiTSpTrainThreads, Ulysses6RanksThreeReplicaGroups) {
  run_case("trainB", "full", "ulysses", 6);
}
