// Under mpirun (1, 2 and 4 ranks): data parallelism (train/data_parallel.h). A global batch of 4
// samples (the golden training DiT, trainA geometry, hybrid plan) gives the single-rank gradient
// of the whole batch (loss and every parameter gradient within 1e-5) when spread over DP ranks,
// with gradient accumulation, and over SP × DP meshes (2 = 2 SP × 1 DP, 4 = 2 SP × 2 DP,
// 4 = 1 SP × 4 DP); buckets of any size give the same gradients; the rank mesh and the batch
// slices follow the documented rule; a mismatched parameter table is refused; three optimizer
// steps (SP × DP with the DP-sharded AdamW) give the weights of three single-rank steps.
#include <gtest/gtest.h>

#include <map>

#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/ops.h"
#include "osp/train/data_parallel.h"
#include "osp/train/adamw.h"
#include "osp/train/flow_matching.h"
#include "osp/train/sharded_adamw.h"
#include "model/golden_train.h"
#include "test_util.h"

using namespace osp;
using model::DiT;

namespace {

std::shared_ptr<parallel::Communicator> world() {
  static std::shared_ptr<parallel::Communicator> c = parallel::make_mpi_communicator();
  return c;
}

constexpr int64_t kGlobal = 4;

// The global batch: trainA's inputs, sample k scaled/shifted so every sample differs.
struct Batch {
  Tensor x0, noise, context;  // [4, 16, 2, 12, 16], [4, 5, 64]
  std::vector<float> sigma;
};
const Batch& global_batch() {
  static Batch b = [] {
    const auto in = test::golden_train_inputs("trainA");
    Batch r;
    Shape xs = in.x0.shape(), cs = in.context.shape();
    xs.insert(xs.begin(), kGlobal);
    cs.insert(cs.begin(), kGlobal);
    r.x0 = Tensor::empty(xs, DType::F32);
    r.noise = Tensor::empty(xs, DType::F32);
    r.context = Tensor::empty(cs, DType::F32);
    for (int64_t k = 0; k < kGlobal; ++k) {
      Tensor a = r.x0.select(0, k), n = r.noise.select(0, k), c = r.context.select(0, k);
      ops::axpby(1.f - 0.15f * float(k), in.x0, 0.f, in.x0, a);
      ops::axpby(k % 2 ? -1.f : 1.f, in.noise, 0.f, in.noise, n);
      ops::axpby(1.f + 0.2f * float(k), in.context, 0.f, in.context, c);
      r.sigma.push_back(0.3f + 0.17f * float(k));
    }
    return r;
  }();
  return b;
}

struct Result {
  double loss = 0;
  std::map<std::string, Tensor> grads;
};

std::map<std::string, Tensor> snapshot(DiT& m) {
  std::map<std::string, Tensor> g;
  for (const ParamRef& p : m.parameters()) g[p.name] = p.grad->clone();
  return g;
}

// The single-rank reference: the whole global batch in one forward/backward.
const Result& reference() {
  static Result r = [] {
    DiT m = test::golden_train_model("hybrid");
    auto sp = parallel::make_single_device();
    const Batch& b = global_batch();
    m.zero_grad();
    Result out;
    out.loss = train::flow_matching_loss_backward(m, *sp, b.x0, b.noise, b.sigma, b.context);
    out.grads = snapshot(m);
    return out;
  }();
  return r;
}

// This rank's share of the global batch as A micro-batches through SP (sp_size ranks) × DP.
Result distributed_step(int sp_size, int accum, size_t bucket_bytes = size_t(25) << 20) {
  auto groups = train::make_parallel_groups(world(), sp_size);
  DiT m = test::golden_train_model("hybrid");
  auto sp = sp_size == 1 ? parallel::make_single_device() : parallel::make_ssp(groups.sp);
  const Batch& b = global_batch();
  m.zero_grad();
  double loss = 0;
  for (int a = 0; a < accum; ++a) {
    const auto s = train::dp_batch_slice(kGlobal, groups.dp_rank(), groups.dp_size(), accum, a);
    loss += train::flow_matching_loss_backward(
        m, *sp, b.x0.slice(0, s.begin, s.begin + s.count),
        b.noise.slice(0, s.begin, s.begin + s.count),
        std::vector<float>(b.sigma.begin() + s.begin, b.sigma.begin() + s.begin + s.count),
        b.context.slice(0, s.begin, s.begin + s.count));
  }
  train::GradReduceOptions opt;
  opt.bucket_bytes = bucket_bytes;
  train::GradientReducer reducer(m.parameters(), groups, opt);
  reducer.reduce(accum);
  // The step's loss: mean over micro-batches and DP ranks (every SP rank has the same value).
  Tensor l = Tensor::from_vector({float(loss / accum / groups.dp_size())}, {1});
  groups.dp->all_reduce(l);
  Result r;
  r.loss = l.item({0});
  r.grads = snapshot(m);
  return r;
}

void expect_equal(const Result& got, const Result& want, const std::string& what, double tol) {
  const std::string where = what + " rank " + std::to_string(world()->rank()) + "/" +
                            std::to_string(world()->size());
  EXPECT_LT(std::abs(got.loss - want.loss) / want.loss, 1e-6) << where << " loss";
  double worst = 0;
  for (const auto& [name, g] : want.grads) {
    const double e = relative_error(got.grads.at(name), g);
    EXPECT_LT(e, tol) << where << " grad " << name;
    worst = std::max(worst, e);
  }
  if (world()->rank() == 0)
    std::printf("[ info     ] %s on %d ranks: worst gradient error %.2g\n", what.c_str(),
                world()->size(), worst);
}

}  // namespace

TEST(DataParallel, EveryRankCountGivesTheGlobalBatchGradient) {
  expect_equal(distributed_step(1, 1), reference(), "DP", 1e-5);
}

TEST(DataParallel, GradientAccumulation) {
  const int M = world()->size();
  for (int A : {2, 4}) {
    if (kGlobal % (int64_t(M) * A) != 0) continue;
    expect_equal(distributed_step(1, A), reference(), "DP + accumulation " + std::to_string(A),
                 1e-5);
  }
}

TEST(DataParallel, SequenceTimesDataParallel) {
  if (world()->size() % 2 != 0) GTEST_SKIP() << "needs an even rank count";
  expect_equal(distributed_step(2, 1), reference(), "2 SP x DP", 1e-5);
}

TEST(DataParallel, BucketSizeDoesNotChangeTheGradient) {
  const Result big = distributed_step(1, 1);
  const Result small = distributed_step(1, 1, 4096);
  expect_equal(small, big, "4 KiB buckets vs 25 MiB", 1e-6);
  // the plan: buckets cover the table in order, each ≤ the cap unless one parameter is larger
  DiT m = test::golden_train_model("hybrid");
  ParamTable params = m.parameters();
  train::GradReduceOptions opt;
  opt.bucket_bytes = 4096;
  train::GradientReducer r(params, train::make_parallel_groups(world(), 1), opt);
  size_t next = 0;
  for (const auto& b : r.dp_buckets()) {
    EXPECT_EQ(b.first, next);
    EXPECT_GT(b.last, b.first);
    int64_t n = 0;
    for (size_t k = b.first; k < b.last; ++k) n += params[k].grad->numel();
    EXPECT_EQ(n, b.numel);
    EXPECT_TRUE(n * 4 <= 4096 || b.last == b.first + 1) << "bucket of " << n << " floats";
    next = b.last;
  }
  EXPECT_EQ(next, params.size());
  EXPECT_GT(r.dp_buckets().size(), 10u);
  // the SP phase leaves out the patch embedding (complete on every SP rank)
  size_t sp_params = 0;
  for (const auto& b : r.sp_buckets()) sp_params += b.last - b.first;
  EXPECT_EQ(sp_params, params.size() - 2);
}

TEST(DataParallel, MeshAndBatchSlices) {
  const int W = world()->size(), w = world()->rank();
  for (int S = 1; S <= W; ++S) {
    if (W % S) continue;
    auto g = train::make_parallel_groups(world(), S);
    EXPECT_EQ(g.sp_size(), S);
    EXPECT_EQ(g.dp_size(), W / S);
    EXPECT_EQ(g.sp_rank(), w % S);
    EXPECT_EQ(g.dp_rank(), w / S);
  }
  EXPECT_THROW(train::make_parallel_groups(world(), W + 1), Error);
  // 8 samples, 2 DP ranks, 2 micro-steps: rank 1's second micro-batch is samples 6, 7
  auto s = train::dp_batch_slice(8, 1, 2, 2, 1);
  EXPECT_EQ(s.begin, 6);
  EXPECT_EQ(s.count, 2);
  // the slices of every (rank, micro-step) tile the batch once, for any M and A
  for (int M : {1, 2, 4})
    for (int A : {1, 2}) {
      std::vector<int> seen(8, 0);
      for (int r = 0; r < M; ++r)
        for (int a = 0; a < A; ++a) {
          const auto t = train::dp_batch_slice(8, r, M, A, a);
          for (int64_t i = t.begin; i < t.begin + t.count; ++i) ++seen[size_t(i)];
        }
      for (int c : seen) EXPECT_EQ(c, 1) << M << " ranks, " << A << " micro-steps";
    }
  EXPECT_THROW(train::dp_batch_slice(6, 0, 4, 1, 0), Error);
  EXPECT_THROW(train::dp_batch_slice(8, 0, 2, 3, 0), Error);
}

TEST(DataParallel, MismatchedTablesAreRefused) {
  if (world()->size() == 1) GTEST_SKIP() << "needs 2 ranks";
  DiT m = test::golden_train_model("hybrid");
  ParamTable params = m.parameters();
  if (world()->rank() == 1) params.pop_back();
  train::GradientReducer r(params, train::make_parallel_groups(world(), 1));
  EXPECT_THROW(r.reduce(1), Error);
}

// Three AdamW steps on the global batch: one rank (plain AdamW) vs SP × DP with the sharded
// AdamW (state over all SP × DP ranks) give the same weights within 1e-5 relative (the
// gradients differ only by summation order).
TEST(DataParallel, OptimizerStepsEqualOneRank) {
  const int sp_size = world()->size() % 2 == 0 ? 2 : 1;
  const Batch& b = global_batch();
  train::AdamWConfig cfg;
  cfg.lr = 1e-3;
  cfg.weight_decay = 0.01;
  const int steps = 3;
  // one rank, whole batch
  DiT ref = test::golden_train_model("hybrid");
  auto single = parallel::make_single_device();
  train::AdamW ref_opt(ref.parameters(), cfg);
  for (int s = 0; s < steps; ++s) {
    ref.zero_grad();
    train::flow_matching_loss_backward(ref, *single, b.x0, b.noise, b.sigma, b.context);
    ref_opt.step(cfg.lr);
  }
  // SP × DP, sharded optimizer
  auto groups = train::make_parallel_groups(world(), sp_size);
  DiT m = test::golden_train_model("hybrid");
  auto sp = sp_size == 1 ? parallel::make_single_device() : parallel::make_ssp(groups.sp);
  train::ShardedAdamW opt(m.parameters(), groups, cfg);
  for (int s = 0; s < steps; ++s) {
    m.zero_grad();
    const auto sl = train::dp_batch_slice(kGlobal, groups.dp_rank(), groups.dp_size());
    train::flow_matching_loss_backward(
        m, *sp, b.x0.slice(0, sl.begin, sl.begin + sl.count),
        b.noise.slice(0, sl.begin, sl.begin + sl.count),
        std::vector<float>(b.sigma.begin() + sl.begin, b.sigma.begin() + sl.begin + sl.count),
        b.context.slice(0, sl.begin, sl.begin + sl.count));
    opt.reduce_gradients(1);
    opt.step(cfg.lr);
  }
  std::map<std::string, const Tensor*> want;
  for (const ParamRef& p : ref.parameters()) want[p.name] = p.value;
  double worst = 0;
  for (const ParamRef& p : m.parameters()) {
    const Tensor& w = *want.at(p.name);
    const double e = relative_error(*p.value, w);
    EXPECT_LT(e, 1e-5) << p.name << " rank " << world()->rank();
    worst = std::max(worst, e);
  }
  if (world()->rank() == 0)
    std::printf("[ info     ] %d SP x %d DP, sharded AdamW, %d steps: worst weight error %.2g\n",
                groups.sp_size(), groups.dp_size(), steps, worst);
}
