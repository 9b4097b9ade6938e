// Under mpirun (1, 2 and 4 ranks): the MPI communicator's collectives (blocking, and the
// nonblocking forms polled under a collective timeout), and the attention-only
// block stack through SSP / Ulysses over MPI equals the single-device run on every rank, with
// the counted bytes equal to comm_volume.
#include <gtest/gtest.h>

#include "osp/parallel/comm_volume.h"
#include "osp/parallel/communicator.h"
#include "ssp_stack.h"

using namespace osp;
using K = sparse::BlockKind;

namespace {

std::shared_ptr<parallel::Communicator> world() {
  static std::shared_ptr<parallel::Communicator> c = parallel::make_mpi_communicator();
  return c;
}

TEST(MpiComm, Collectives) {
  auto comm = world();
  const int S = comm->size(), r = comm->rank();
  EXPECT_STREQ(comm->backend(), "mpi");
  EXPECT_EQ(S, parallel::launcher_size());
  EXPECT_EQ(r, parallel::launcher_rank());
  test::check_collectives(*comm);
}

// With a collective timeout every collective runs as its nonblocking form polled to a deadline
// (communicator_mpi.cpp): the same results.
TEST(MpiComm, CollectivesUnderATimeout) {
  parallel::ScopedCollectiveTimeout t(120);
  test::check_collectives(*world());
}

struct MpiCase {
  const char* name;
  sparse::Grid grid;
  std::vector<K> kinds;
  int heads;
  const char* mode;
};

class MpiStack : public ::testing::TestWithParam<MpiCase> {};

TEST_P(MpiStack, EqualsSingleDeviceOnEveryRank) {
  const MpiCase c = GetParam();
  auto comm = world();
  const int S = comm->size(), r = comm->rank();
  const auto plan = test::make_plan(c.grid, c.kinds, 2, c.heads, 8);
  const int64_t B = 2, C = int64_t(c.heads) * 8, N = c.grid.numel();
  const auto w = test::make_stack_weights(int(c.kinds.size()), C, 200);
  // Inputs come from rank 0 (spec §4.10): other ranks start from different values.
  Tensor x = test::randn_tensor({B, N, C}, 11 + uint32_t(r));
  auto sp = std::string(c.mode) == "ssp" ? parallel::make_ssp(comm) : parallel::make_ulysses(comm);
  sp->broadcast(x);
  const Tensor x0 = test::randn_tensor({B, N, C}, 11);
  ASSERT_EQ(max_abs_diff(x, x0), 0.0);
  auto single = parallel::make_single_device();
  const Tensor want = test::run_stack(*single, plan, x, w);
  sp->setup(plan);
  sp->reset_bytes();
  const Tensor got = test::run_stack(*sp, plan, x, w);
  EXPECT_LT(relative_error(got, want), 1e-5) << c.name << " rank " << r << " of " << S;
  EXPECT_EQ(sp->bytes_sent(), parallel::comm_volume(plan, c.mode, S, r, B, sizeof(float), C).total());
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, MpiStack,
    ::testing::Values(
        MpiCase{"ssp_padded", {2, 7, 9}, {K::Full, K::Token, K::Group, K::Token, K::Group, K::Full}, 4, "ssp"},
        MpiCase{"ssp_unpadded_heads2", {2, 8, 12}, {K::Full, K::Token, K::Group, K::Full}, 2, "ssp"},
        MpiCase{"ulysses_uneven", {2, 7, 9}, {K::Full, K::Full, K::Full}, 4, "ulysses"}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
