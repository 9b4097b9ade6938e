// SSP and Ulysses on S ranks run as threads of this process (make_thread_communicators):
// every rank's output equals the single-device output; counted bytes equal comm_volume; the
// per-sparse-block SSP/Ulysses volume ratio is Np/(4N); collectives; bad rank counts.
#include <gtest/gtest.h>

#include <omp.h>

#include <cstdlib>
#include <exception>
#include <thread>

#include "osp/parallel/comm_volume.h"
#include "osp/parallel/communicator.h"
#include "ssp_stack.h"

using namespace osp;
using sparse::BlockKind;
using K = BlockKind;

namespace {

// Runs f(rank, comm) on S threads; rethrows the first exception.
template <typename F>
void on_threads(int S, F f) {
  auto comms = parallel::make_thread_communicators(S);
  std::vector<std::exception_ptr> errs(static_cast<size_t>(S));
  std::vector<std::thread> th;
  for (int r = 0; r < S; ++r)
    th.emplace_back([&, r] {
      omp_set_num_threads(1);
      try {
        f(r, std::shared_ptr<parallel::Communicator>(std::move(comms[size_t(r)])));
      } catch (...) {
        errs[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : th) t.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}

struct SpCase {
  const char* name;
  sparse::Grid grid;
  std::vector<K> kinds;
  int P, heads, head_dim, S;
  const char* mode;  // "ssp" or "ulysses"
};

const std::vector<K> kHybrid = {K::Full, K::Token, K::Group, K::Token, K::Group, K::Full};
const std::vector<K> kFullOnly = {K::Full, K::Full, K::Full};

class SpThreads : public ::testing::TestWithParam<SpCase> {};

TEST_P(SpThreads, MatchesSingleDeviceAndCountsBytes) {
  const SpCase c = GetParam();
  const auto plan = test::make_plan(c.grid, c.kinds, c.P, c.heads, c.head_dim);
  const int64_t B = 2, C = int64_t(c.heads) * c.head_dim, N = c.grid.numel();
  const auto w = test::make_stack_weights(int(c.kinds.size()), C, 100);
  const Tensor x = test::randn_tensor({B, N, C}, 7);
  auto single = parallel::make_single_device();
  const Tensor want = test::run_stack(*single, plan, x, w);

  std::vector<Tensor> got(static_cast<size_t>(c.S));
  std::vector<uint64_t> bytes(static_cast<size_t>(c.S));
  on_threads(c.S, [&](int r, std::shared_ptr<parallel::Communicator> comm) {
    auto sp = std::string(c.mode) == "ssp" ? parallel::make_ssp(comm) : parallel::make_ulysses(comm);
    EXPECT_EQ(sp->size(), c.S);
    EXPECT_EQ(sp->rank(), r);
    sp->setup(plan);
    sp->reset_bytes();
    got[size_t(r)] = test::run_stack(*sp, plan, x, w);
    bytes[size_t(r)] = sp->bytes_sent();
  });
  for (int r = 0; r < c.S; ++r) {
    EXPECT_LT(relative_error(got[size_t(r)], want), 1e-5) << c.name << " rank " << r;
    const auto vol = parallel::comm_volume(plan, c.mode, c.S, r, B, sizeof(float), C);
    EXPECT_EQ(bytes[size_t(r)], vol.total()) << c.name << " rank " << r;
    if (c.S > 1) EXPECT_GT(vol.total(), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, SpThreads,
    ::testing::Values(
        SpCase{"ssp1_padded", {2, 7, 9}, kHybrid, 2, 4, 8, 1, "ssp"},
        SpCase{"ssp2_padded", {2, 7, 9}, kHybrid, 2, 4, 8, 2, "ssp"},
        SpCase{"ssp4_padded_uneven_chunks", {2, 7, 9}, kHybrid, 2, 4, 8, 4, "ssp"},
        SpCase{"ssp4_unpadded", {2, 8, 12}, kHybrid, 2, 4, 8, 4, "ssp"},
        SpCase{"ssp3_P3", {1, 9, 11}, kHybrid, 3, 6, 8, 3, "ssp"},
        SpCase{"ssp8_tiles_U2", {2, 8, 12}, kHybrid, 2, 8, 8, 8, "ssp"},
        SpCase{"ssp4_heads6_F2", {2, 7, 9}, kHybrid, 2, 6, 8, 4, "ssp"},
        SpCase{"ulysses4_heads2_F2", {2, 7, 9}, kFullOnly, 2, 2, 8, 4, "ulysses"},
        SpCase{"ulysses2", {2, 7, 9}, kFullOnly, 2, 4, 8, 2, "ulysses"},
        SpCase{"ulysses4_uneven", {2, 7, 9}, kFullOnly, 2, 4, 8, 4, "ulysses"}),
    [](const auto& info) { return std::string(info.param.name); });

// The Ulysses head-chunk pipeline (set_ulysses_chunks / OSP_ULYSSES_CHUNKS) gives exactly the single-device result
// and the same bytes.
TEST(SpThreadsUlyssesChunks, ChunkedHeadsMatchSingleDevice) {
  struct Run {
    const char* mode;
    std::vector<K> kinds;
    int heads, S;
    const char* chunks;
  };
  for (const Run& run : {Run{"ulysses", kFullOnly, 8, 2, "2"}, Run{"ulysses", kFullOnly, 8, 2, "4"},
                         Run{"ssp", kHybrid, 8, 4, "2"}, Run{"ulysses", kFullOnly, 12, 4, "3"}}) {
    const sparse::Grid g{2, 7, 9};
    const auto plan = test::make_plan(g, run.kinds, 2, run.heads, 8);
    const int64_t B = 2, C = int64_t(run.heads) * 8, N = g.numel();
    const auto w = test::make_stack_weights(int(run.kinds.size()), C, 300);
    const Tensor x = test::randn_tensor({B, N, C}, 9);
    auto single = parallel::make_single_device();
    const Tensor want = test::run_stack(*single, plan, x, w);
    parallel::set_ulysses_chunks(std::atoll(run.chunks));
    std::vector<Tensor> got(static_cast<size_t>(run.S));
    std::vector<uint64_t> bytes(static_cast<size_t>(run.S));
    on_threads(run.S, [&](int r, std::shared_ptr<parallel::Communicator> comm) {
      auto sp = std::string(run.mode) == "ssp" ? parallel::make_ssp(comm) : parallel::make_ulysses(comm);
      sp->setup(plan);
      sp->reset_bytes();
      got[size_t(r)] = test::run_stack(*sp, plan, x, w);
      bytes[size_t(r)] = sp->bytes_sent();
    });
    parallel::set_ulysses_chunks(0);
    for (int r = 0; r < run.S; ++r) {
      EXPECT_LT(relative_error(got[size_t(r)], want), 1e-5)
          << run.mode << " S " << run.S << " chunks " << run.chunks << " rank " << r;
      EXPECT_EQ(bytes[size_t(r)], parallel::comm_volume(plan, run.mode, run.S, r, B, sizeof(float), C).total());
    }
  }
  // A chunk count that does not divide the heads per rank is refused with the reason.
  parallel::set_ulysses_chunks(3);
  const auto plan = test::make_plan({2, 7, 9}, kFullOnly, 2, 8, 8);
  const auto w = test::make_stack_weights(3, 64, 300);
  const Tensor x = test::randn_tensor({1, 126, 64}, 9);
  std::vector<std::string> msg(2);
  on_threads(2, [&](int r, std::shared_ptr<parallel::Communicator> comm) {
    auto sp = parallel::make_ulysses(comm);
    sp->setup(plan);
    try {
      test::run_stack(*sp, plan, x, w);
    } catch (const osp::Error& e) {
      msg[size_t(r)] = e.what();
    }
  });
  parallel::set_ulysses_chunks(0);
  for (const auto& m : msg) EXPECT_NE(m.find("Ulysses head chunks 3 (OSP_ULYSSES_CHUNKS) must be a positive divisor"), std::string::npos) << m;
}

TEST(SpVolume, SparseSwitchIsNpOver4NOfUlysses) {
  // Per-rank bytes of one token↔group switch vs one Ulysses full block, N % S == 0.
  for (auto [g, S] : std::vector<std::pair<sparse::Grid, int>>{
           {{2, 8, 12}, 2}, {{2, 8, 12}, 4}, {{1, 6, 10}, 4}, {{21, 45, 80}, 4}, {{21, 30, 52}, 2}}) {
    const auto plan = test::make_plan(g, {K::Full, K::Token, K::Group, K::Full}, 2, 8, 128);
    const auto geo = sparse::skiparse_geometry(g, 2);
    const double Np = double(g.T * geo.Hp * geo.Wp), N = double(g.numel());
    ASSERT_EQ(g.numel() % S, 0);
    for (int r = 0; r < S; ++r) {
      const auto v = parallel::comm_volume(plan, "ssp", S, r, 1, 2, 0);
      ASSERT_EQ(v.switches, 1);
      ASSERT_EQ(v.full_blocks, 2);
      const double per_full = double(v.full_bytes) / v.full_blocks;
      EXPECT_DOUBLE_EQ(double(v.switch_bytes) / per_full, Np / (4 * N));
      // Ulysses per block: 4 all-to-alls of (S−1)/S of the local N·C/S elements.
      EXPECT_DOUBLE_EQ(per_full, 4.0 * (S - 1) / S * (N / S) * 8 * 128 * 2);
    }
  }
}

TEST(SpThreadsComm, Collectives) {
  for (int S : {1, 2, 3, 4}) {
    on_threads(S, [&](int, std::shared_ptr<parallel::Communicator> comm) {
      test::check_collectives(*comm);
    });
  }
}

// A collective timeout (communicator.h): with every rank present the collectives work as
// without one; a rank that never arrives makes the waiting rank throw CollectiveTimeout with the
// reason; the scoped setting is restored.
TEST(SpThreadsComm, TimeoutEndsAWaitForAMissingRank) {
  ASSERT_EQ(parallel::collective_timeout(), 0.0);
  {
    parallel::ScopedCollectiveTimeout t(30);
    on_threads(3, [&](int, std::shared_ptr<parallel::Communicator> comm) { test::check_collectives(*comm); });
  }
  std::string err = "no error";
  on_threads(2, [&](int r, std::shared_ptr<parallel::Communicator> comm) {
    if (r == 1) return;  // rank 1 never calls the collective
    parallel::ScopedCollectiveTimeout t(0.2);
    Tensor x = Tensor::zeros({4}, DType::F32);
    try {
      comm->all_reduce(x);
    } catch (const parallel::CollectiveTimeout& e) {
      err = e.what();
    }
  });
  EXPECT_NE(err.find("thread communicator (2 ranks, 1 arrived) did not complete within 0.2 s: another rank "
                     "died, hangs, or stopped calling collectives"),
            std::string::npos)
      << err;
  EXPECT_EQ(parallel::collective_timeout(), 0.0);
}

TEST(SpThreadsComm, BadArgumentsGiveClearErrors) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const osp::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto c = parallel::make_single_communicator();
  Tensor a = Tensor::zeros({4, 2}, DType::F32), b = Tensor::zeros({3, 2}, DType::F32);
  EXPECT_NE(msg([&] { c->all_to_all(a, b); }).find("shape"), std::string::npos);
  EXPECT_NE(msg([&] { c->all_to_all(a, {3}, a, {4}); }).find("sum to"), std::string::npos);
  Tensor i = Tensor::zeros({4, 2}, DType::I32);
  EXPECT_NE(msg([&] { c->all_to_all(a, i); }).find("dtypes"), std::string::npos);
  EXPECT_NE(msg([&] { c->broadcast(a, 1); }).find("root"), std::string::npos);
  Tensor t = a.transpose(0, 1);
  EXPECT_NE(msg([&] { c->all_reduce(t); }).find("contiguous"), std::string::npos);
  EXPECT_NE(msg([&] { parallel::make_communicator("gloo"); }).find("unknown communicator"),
            std::string::npos);
}

TEST(SpSetup, RankCountsThatCannotWorkFailAtSetup) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const osp::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto hybrid = test::make_plan({2, 8, 12}, kHybrid, 2, 12, 8);
  const auto hybrid4 = test::make_plan({2, 8, 12}, kHybrid, 2, 4, 8);
  // 3 ranks cannot share P² = 4 sub-sequences.
  EXPECT_NE(msg([&] { parallel::comm_volume(hybrid, "ssp", 3, 0, 1, 4, 0); }).find("divides 4"),
            std::string::npos);
  // 6 ranks: more than P² but not a multiple.
  EXPECT_NE(msg([&] { parallel::comm_volume(hybrid, "ssp", 6, 0, 1, 4, 0); }).find("multiple"),
            std::string::npos);
  // The inner Ulysses degree of the tile split must divide the heads (6 % (8/4) == 0, 3 % 2 != 0).
  auto h3 = test::make_plan({2, 8, 12}, kHybrid, 2, 3, 8);
  EXPECT_NE(msg([&] { parallel::comm_volume(h3, "ssp", 8, 0, 1, 4, 0); }).find("must divide"),
            std::string::npos);
  // Ulysses cannot run Skiparse blocks.
  EXPECT_NE(msg([&] { parallel::comm_volume(hybrid4, "ulysses", 2, 0, 1, 4, 0); }).find("make_ssp"),
            std::string::npos);
  // Too few tokens for the ranks.
  auto tiny = test::make_plan({1, 1, 3}, kFullOnly, 2, 4, 8);
  EXPECT_NE(msg([&] { parallel::comm_volume(tiny, "ulysses", 4, 0, 1, 4, 0); }).find("too short"),
            std::string::npos);
  // A tile split that leaves a rank without tokens.
  auto small = test::make_plan({1, 4, 4}, kHybrid, 2, 8, 8);
  EXPECT_NE(msg([&] { parallel::comm_volume(small, "ssp", 8, 0, 1, 4, 0); }).find("too small"),
            std::string::npos);
}

}  // namespace

namespace {

double dot(const Tensor& a, const Tensor& b) {
  const auto x = a.to_float_vector(), y = b.to_float_vector();
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += double(x[i]) * double(y[i]);
  return s;
}

// <enter(x), g> == <x, enter_backward(g)> summed over ranks, for every layout change.
void check_adjoint(parallel::SequenceParallel& sp, const parallel::ForwardPlan& plan, int r,
                   parallel::Communicator* comm) {
  sp.setup(plan);
  const int64_t B = 2, C = int64_t(plan.heads) * plan.head_dim;
  auto rows = [&](int i) {
    const Tensor& t = sp.rope_table(i);
    return t.size(0) * t.size(1);
  };
  for (int i = 1; i < int(plan.kinds.size()); ++i) {
    Tensor x = test::randn_tensor({B, rows(i - 1), C}, 1000 + 17 * i + 101 * r);
    Tensor g = test::randn_tensor({B, rows(i), C}, 2000 + 17 * i + 101 * r);
    Tensor y = sp.enter_block(i, x), xb = sp.enter_block_backward(i, g);
    ASSERT_EQ(xb.shape(), x.shape());
    Tensor d = Tensor::empty({2}, DType::F64);
    d.data<double>()[0] = dot(y, g);
    d.data<double>()[1] = dot(x, xb);
    if (comm) comm->all_reduce(d);
    EXPECT_NEAR(d.data<double>()[0], d.data<double>()[1], 1e-9 * std::fabs(d.data<double>()[0]))
        << "block " << i << " rank " << r;
    EXPECT_NE(d.data<double>()[0], 0.0);
  }
  // scatter_input / gather_output and their adjoints (the full tensors are replicated: their
  // dot products count once, the local ones are summed over ranks).
  const int64_t N = plan.grid.numel();
  const int last = int(plan.kinds.size()) - 1;
  Tensor xf = test::randn_tensor({B, N, C}, 3000), gl = test::randn_tensor({B, rows(0), C}, 3100 + r);
  Tensor xl = test::randn_tensor({B, rows(last), C}, 3200 + r), gf = test::randn_tensor({B, N, C}, 3300);
  Tensor d = Tensor::empty({2}, DType::F64);
  d.data<double>()[0] = dot(sp.scatter_input(xf), gl);
  d.data<double>()[1] = dot(xl, sp.gather_output_backward(gf));
  if (comm) comm->all_reduce(d);
  const Tensor sb = sp.scatter_input_backward(gl), go = sp.gather_output(xl);
  EXPECT_NEAR(d.data<double>()[0], dot(xf, sb), 1e-9 * std::fabs(d.data<double>()[0])) << "scatter";
  EXPECT_NEAR(d.data<double>()[1], dot(go, gf), 1e-9 * std::fabs(d.data<double>()[1])) << "gather";
}

}  // namespace

TEST(SpAdjoint, EnterBlockBackwardIsTheTranspose) {
  for (auto g : {sparse::Grid{2, 7, 9}, sparse::Grid{2, 8, 12}}) {
    const auto plan = test::make_plan(g, kHybrid, 2, 8, 8);
    auto single = parallel::make_single_device();
    check_adjoint(*single, plan, 0, nullptr);
    for (int S : {1, 2, 4, 8}) {
      if (S == 8 && g.W == 9) continue;  // the 2D tile split needs wider grids (tested below)
      on_threads(S, [&](int r, std::shared_ptr<parallel::Communicator> comm) {
        auto sp = parallel::make_ssp(comm);
        check_adjoint(*sp, plan, r, comm.get());
      });
    }
  }
}
