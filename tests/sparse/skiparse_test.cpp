// Skiparse-2D layout math: worked examples of osp-next-spec §3.5, the §3.4 switch as an
// involution, padding/lengths (§3.8 720P numbers), padding-last order, block plans, bad input.
#include "osp/sparse/skiparse.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

using namespace osp;
using namespace osp::sparse;

namespace {

std::vector<int32_t> row(const Tensor& m, int64_t g) {
  const int64_t L = m.size(1);
  const int32_t* p = m.data<int32_t>() + g * L;
  return std::vector<int32_t>(p, p + L);
}

// Permutation π of the switch from layout `a` to layout `b` in padded coordinates:
// out[j] = in[π[j]] (padding positions included, reference order).
std::vector<int64_t> switch_perm(const Grid& g, int P, BlockKind a, BlockKind b) {
  auto pa = skiparse_padded_positions(g, P, a, false);
  auto pb = skiparse_padded_positions(g, P, b, false);
  std::vector<int64_t> where(pa.size());
  for (size_t j = 0; j < pa.size(); ++j) where[size_t(pa[j])] = int64_t(j);
  std::vector<int64_t> perm(pb.size());
  for (size_t j = 0; j < pb.size(); ++j) perm[j] = where[size_t(pb[j])];
  return perm;
}

}  // namespace

TEST(Skiparse, WorkedExample4x4) {
  const Grid g{1, 4, 4};
  Tensor tok = skiparse_index(g, 2, BlockKind::Token, false);
  Tensor grp = skiparse_index(g, 2, BlockKind::Group, false);
  ASSERT_EQ(tok.shape(), (Shape{4, 4}));
  EXPECT_EQ(row(tok, 0), (std::vector<int32_t>{0, 2, 8, 10}));
  EXPECT_EQ(row(tok, 1), (std::vector<int32_t>{1, 3, 9, 11}));
  EXPECT_EQ(row(tok, 2), (std::vector<int32_t>{4, 6, 12, 14}));
  EXPECT_EQ(row(tok, 3), (std::vector<int32_t>{5, 7, 13, 15}));
  EXPECT_EQ(row(grp, 0), (std::vector<int32_t>{0, 1, 4, 5}));
  EXPECT_EQ(row(grp, 1), (std::vector<int32_t>{2, 3, 6, 7}));
  EXPECT_EQ(row(grp, 2), (std::vector<int32_t>{8, 9, 12, 13}));
  EXPECT_EQ(row(grp, 3), (std::vector<int32_t>{10, 11, 14, 15}));
}

TEST(Skiparse, WorkedExample8x8) {
  const Grid g{1, 8, 8};
  Tensor grp = skiparse_index(g, 2, BlockKind::Group, false);
  EXPECT_EQ(row(grp, 0), (std::vector<int32_t>{0, 1, 4, 5, 8, 9, 12, 13, 32, 33, 36, 37, 40, 41,
                                               44, 45}));
  Tensor tok = skiparse_index(g, 2, BlockKind::Token, false);
  std::vector<int32_t> want;
  for (int y = 0; y < 8; y += 2)
    for (int x = 0; x < 8; x += 2) want.push_back(8 * y + x);
  EXPECT_EQ(row(tok, 0), want);
}

TEST(Skiparse, SwitchIsAnInvolutionAndMatchesComposedMaps) {
  for (auto [g, P] : std::vector<std::pair<Grid, int>>{
           {{1, 4, 4}, 2}, {{2, 8, 12}, 2}, {{1, 12, 8}, 2}, {{2, 18, 9}, 3}, {{2, 7, 9}, 2},
           {{1, 16, 32}, 4}}) {
    auto tg = switch_perm(g, P, BlockKind::Token, BlockKind::Group);
    auto gt = switch_perm(g, P, BlockKind::Group, BlockKind::Token);
    EXPECT_EQ(tg, gt) << "the same function serves both directions";
    for (size_t j = 0; j < tg.size(); ++j) ASSERT_EQ(tg[size_t(tg[j])], int64_t(j));
    // §3.4: token (p2,q2 | t·Hp/P²+y2, p1, x2, q1) ↔ group (p1,q1 | ..., p2, x2, q2).
    const auto geo = skiparse_geometry(g, P);
    const int64_t a = g.T * geo.Hp / (P * P), w2 = geo.Wp / (P * P);
    for (int64_t p2 = 0; p2 < P; ++p2)
      for (int64_t q2 = 0; q2 < P; ++q2)
        for (int64_t r = 0; r < a; ++r)
          for (int64_t p1 = 0; p1 < P; ++p1)
            for (int64_t x2 = 0; x2 < w2; ++x2)
              for (int64_t q1 = 0; q1 < P; ++q1) {
                const int64_t tok = (p2 * P + q2) * geo.L + ((r * P + p1) * w2 + x2) * P + q1;
                const int64_t grp = (p1 * P + q1) * geo.L + ((r * P + p2) * w2 + x2) * P + q2;
                ASSERT_EQ(tg[size_t(grp)], tok);
              }
    // compose_switch on the full-index maps agrees for every real token.
    Tensor tok = skiparse_index(g, P, BlockKind::Token, false);
    Tensor grp = skiparse_index(g, P, BlockKind::Group, false);
    Tensor sw = compose_switch(tok, grp);
    for (int64_t j = 0; j < sw.numel(); ++j) {
      const int32_t s = sw.data<int32_t>()[j];
      if (grp.data<int32_t>()[j] < 0) {
        EXPECT_EQ(s, -1);
      } else {
        ASSERT_EQ(s, tg[size_t(j)]);
        EXPECT_EQ(tok.data<int32_t>()[s], grp.data<int32_t>()[j]);
      }
    }
  }
}

TEST(Skiparse, PaddingGeometryAndRowLengths720p) {
  const Grid g{21, 45, 80};
  auto geo = skiparse_geometry(g, 2);
  EXPECT_EQ(geo.Hp, 48);
  EXPECT_EQ(geo.Wp, 80);
  EXPECT_EQ(geo.L, 20160);
  for (BlockKind k : {BlockKind::Token, BlockKind::Group}) {
    auto lens = skiparse_row_lengths(g, 2, k);
    EXPECT_EQ(lens, (std::vector<int32_t>{19320, 19320, 18480, 18480}));
  }
  auto geo480 = skiparse_geometry({21, 30, 52}, 2);
  EXPECT_EQ(geo480.Hp, 32);
  EXPECT_EQ(geo480.Wp, 52);
  EXPECT_EQ(geo480.L, 8736);
}

TEST(Skiparse, PaddingLastKeepsOrderAndMovesPaddingToTheEnd) {
  const Grid g{2, 7, 9};
  for (BlockKind k : {BlockKind::Token, BlockKind::Group}) {
    Tensor ref = skiparse_index(g, 2, k, false);
    Tensor pl = skiparse_index(g, 2, k, true);
    auto lens = skiparse_row_lengths(g, 2, k);
    const int64_t L = ref.size(1);
    int64_t total = 0;
    for (int64_t r = 0; r < ref.size(0); ++r) {
      auto a = row(ref, r), b = row(pl, r);
      std::vector<int32_t> real;
      std::copy_if(a.begin(), a.end(), std::back_inserter(real), [](int32_t v) { return v >= 0; });
      ASSERT_EQ(int64_t(real.size()), lens[size_t(r)]);
      for (int64_t s = 0; s < L; ++s) {
        if (s < lens[size_t(r)]) EXPECT_EQ(b[size_t(s)], real[size_t(s)]);
        else EXPECT_EQ(b[size_t(s)], -1);
      }
      total += lens[size_t(r)];
    }
    EXPECT_EQ(total, g.numel());
    // Inverse: every real token appears once.
    Tensor inv = inverse_to_full(pl, g.numel());
    for (int64_t n = 0; n < g.numel(); ++n) EXPECT_EQ(pl.data<int32_t>()[inv.data<int32_t>()[n]], n);
  }
}

TEST(Skiparse, TokenAndGroupMembershipRules) {
  const Grid g{2, 12, 8};
  const int P = 2;
  for (BlockKind k : {BlockKind::Token, BlockKind::Group}) {
    Tensor m = skiparse_index(g, P, k, true);
    for (int64_t r = 0; r < m.size(0); ++r)
      for (int64_t s = 0; s < m.size(1); ++s) {
        const int32_t n = m.data<int32_t>()[r * m.size(1) + s];
        if (n < 0) continue;
        const int64_t y = (n / g.W) % g.H, x = n % g.W;
        const int64_t want = k == BlockKind::Token ? (y % P) * P + x % P
                                                   : ((y / P) % P) * P + (x / P) % P;
        ASSERT_EQ(r, want);
      }
  }
}

TEST(Skiparse, PlanBlocks) {
  using K = BlockKind;
  auto k = plan_blocks(8, "dual_end", 4);
  EXPECT_EQ(k, (std::vector<K>{K::Full, K::Full, K::Token, K::Group, K::Token, K::Group, K::Full,
                               K::Full}));
  auto k14 = plan_blocks(40, "dual_end", 8);
  int nf = 0, nt = 0, ng = 0;
  for (auto x : k14) nf += x == K::Full, nt += x == K::Token, ng += x == K::Group;
  EXPECT_EQ(nf, 8);
  EXPECT_EQ(nt, 16);
  EXPECT_EQ(ng, 16);
  EXPECT_EQ(k14[4], K::Token);
  EXPECT_EQ(k14[35], K::Group);
  EXPECT_EQ(k14[36], K::Full);
  auto k0 = plan_blocks(4, "dual_end", 0);
  EXPECT_EQ(k0, (std::vector<K>{K::Token, K::Group, K::Token, K::Group}));
  for (auto x : plan_blocks(5, "full", 0)) EXPECT_EQ(x, K::Full);
  EXPECT_STREQ(block_kind_name(K::Group), "group");
}

TEST(Skiparse, BadInputGivesClearErrors) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const osp::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([] { plan_blocks(8, "dual_end", 6); }).find("% 4"), std::string::npos);
  EXPECT_NE(msg([] { plan_blocks(7, "dual_end", 4); }).find("even"), std::string::npos);
  EXPECT_NE(msg([] { plan_blocks(8, "dual_end", 8); }).find("num_layers/2"), std::string::npos);
  EXPECT_NE(msg([] { plan_blocks(8, "uniform", 4); }).find("not implemented"), std::string::npos);
  EXPECT_NE(msg([] { plan_blocks(8, "sparse", 4); }).find("unknown"), std::string::npos);
  EXPECT_NE(msg([] { skiparse_geometry({0, 4, 4}, 2); }).find("grid"), std::string::npos);
  EXPECT_NE(msg([] { skiparse_geometry({1, 4, -4}, 2); }).find("grid"), std::string::npos);
  EXPECT_NE(msg([] { skiparse_geometry({1, 4, 4}, 0); }).find("sparse_ratio"), std::string::npos);
  EXPECT_NE(msg([] { skiparse_index({1, 4, 4}, 2, BlockKind::Full, false); }).find("token and group"),
            std::string::npos);
  Tensor f = Tensor::zeros({4}, DType::F32);
  EXPECT_NE(msg([&] { inverse_to_full(f, 4); }).find("i32"), std::string::npos);
  Tensor dup = Tensor::zeros({2}, DType::I32);
  EXPECT_NE(msg([&] { inverse_to_full(dup, 2); }).find("twice"), std::string::npos);
}
