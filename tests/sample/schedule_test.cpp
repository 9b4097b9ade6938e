// Flow-matching schedules: numpy linspace semantics, the Wan2.1 UniPC grid (values listed in
// wan-spec §6.2, derived there independently), the OSP-Next Euler grid, argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "osp/core/error.h"
#include "osp/sample/schedule.h"

using namespace osp::sample;

TEST(Schedule, LinspaceMatchesNumpyRule) {
  const auto y = linspace(1.0, 0.0, 5);
  ASSERT_EQ(y.size(), 5u);
  EXPECT_EQ(y[0], 1.0);
  EXPECT_EQ(y[1], 1.0 + 1 * -0.25);
  EXPECT_EQ(y[4], 0.0);
  EXPECT_EQ(linspace(3.0, 7.0, 1), std::vector<double>{3.0});
  EXPECT_TRUE(linspace(0, 1, 0).empty());
}

TEST(Schedule, ShiftFormula) {
  EXPECT_DOUBLE_EQ(shift_sigma(0.02, 7.0), 0.125);
  EXPECT_DOUBLE_EQ(shift_sigma(1.0, 5.0), 1.0);
  EXPECT_DOUBLE_EQ(shift_sigma(0.0, 5.0), 0.0);
  EXPECT_DOUBLE_EQ(shift_sigma(0.3, 1.0), 0.3);
}

TEST(Schedule, WanUniPC50Shift5MatchesSpec) {
  const std::vector<int> t = {999, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940,
                              934, 927, 920, 913, 906, 898, 890, 882, 873, 863, 854, 843, 833,
                              821, 809, 796, 783, 768, 753, 737, 720, 701, 681, 660, 636, 611,
                              584, 555, 522, 487, 448, 405, 356, 302, 241, 172, 92};
  const Schedule s = wan_unipc_schedule(50, 5.0);
  ASSERT_EQ(s.steps(), 50);
  ASSERT_EQ(s.sigmas.size(), 51u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.timesteps[i], t[i]) << "step " << i;
  const double first[] = {0.999800, 0.995732, 0.991530, 0.987187, 0.982696, 0.978048};
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(s.sigmas[i], first[i], 1e-6);
  EXPECT_NEAR(s.sigmas[47], 0.241740, 1e-6);
  EXPECT_NEAR(s.sigmas[48], 0.172265, 1e-6);
  EXPECT_NEAR(s.sigmas[49], 0.092507, 1e-6);
  EXPECT_EQ(s.sigmas[50], 0.0f);
}

TEST(Schedule, WanUniPC50Shift3MatchesSpec) {
  const std::vector<int> t = {999, 992, 985, 978, 971, 963, 956, 948, 939, 931, 922, 913, 904,
                              894, 884, 874, 864, 853, 841, 829, 817, 805, 792, 778, 764, 749,
                              734, 718, 701, 684, 666, 647, 627, 606, 585, 562, 538, 512, 486,
                              458, 428, 396, 363, 327, 290, 249, 206, 160, 111, 57};
  const Schedule s = wan_unipc_schedule(50, 3.0);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.timesteps[i], t[i]) << "step " << i;
  EXPECT_NEAR(s.sigmas[47], 0.160571, 1e-6);
  EXPECT_NEAR(s.sigmas[48], 0.111008, 1e-6);
  EXPECT_NEAR(s.sigmas[49], 0.057637, 1e-6);
}

TEST(Schedule, EulerShift7MatchesOspNext) {
  const Schedule s = euler_schedule(50, 7.0);
  ASSERT_EQ(s.sigmas.size(), 51u);
  EXPECT_EQ(s.sigmas[0], 1.0f);
  EXPECT_NEAR(s.sigmas[1], 0.9971, 1e-4);  // osp-next-spec §6.2
  EXPECT_EQ(s.sigmas[49], 0.125f);
  EXPECT_EQ(s.sigmas[50], 0.0f);
  for (int i = 0; i < 50; ++i) {
    const double u = 1.0 - i / 50.0;
    const double ref = 7.0 * u / (1.0 + 6.0 * u);
    EXPECT_NEAR(s.sigmas[i], ref, 1e-7);
    EXPECT_NEAR(s.timesteps[i], 1000.0 * ref, 1e-9);  // float timesteps, not truncated
    if (i > 0) EXPECT_LT(s.sigmas[i], s.sigmas[i - 1]);
  }
}

TEST(Schedule, BadArguments) {
  EXPECT_THROW(wan_unipc_schedule(0, 5.0), osp::Error);
  EXPECT_THROW(euler_schedule(-3, 5.0), osp::Error);
  EXPECT_THROW(euler_schedule(10, 0.0), osp::Error);
  EXPECT_THROW(euler_schedule(10, NAN), osp::Error);
  EXPECT_THROW(wan_unipc_schedule(5000, 5.0), osp::Error);
}
