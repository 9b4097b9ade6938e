// make_single_device: hybrid attention through the Skiparse layouts (pad + permute, switch, crop,
// RoPE through the same maps, per-row lengths) equals dense attention restricted to the
// block's groups (golden/README's definition), on a padded and an unpadded grid.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "osp/parallel/rope_table.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/ops.h"

using namespace osp;
using sparse::BlockKind;
using sparse::Grid;

namespace {

Tensor randn(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_vector(v, s);
}

// Applies Wan RoPE in the full layout: x [B, N, H, D] (host reference, fp64 angles).
Tensor rope_full(const Tensor& x, const Grid& g) {
  const int64_t B = x.size(0), N = x.size(1), H = x.size(2), D = x.size(3);
  Tensor tab = parallel::rope_cos_sin_full(g, int(D));
  Tensor out = x.clone();
  float* o = out.data<float>();
  const float* t = tab.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t p = 0; p < D / 2; ++p) {
          float* e = o + ((b * N + n) * H + h) * D + 2 * p;
          const float c = t[(n * (D / 2) + p) * 2], s = t[(n * (D / 2) + p) * 2 + 1];
          const float x0 = e[0], x1 = e[1];
          e[0] = x0 * c - x1 * s;
          e[1] = x0 * s + x1 * c;
        }
  return out;
}

// Dense attention where token n attends to m iff same_group(n, m), in double.
Tensor masked_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Grid& g,
                        BlockKind kind, int P) {
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3);
  auto group = [&](int64_t n) -> int64_t {
    const int64_t y = (n / g.W) % g.H, x = n % g.W;
    if (kind == BlockKind::Full) return 0;
    if (kind == BlockKind::Token) return (y % P) * P + x % P;
    return ((y / P) % P) * P + (x / P) % P;
  };
  Tensor out = Tensor::zeros(q.shape(), DType::F32);
  const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
  float* op = out.data<float>();
  const double scale = 1.0 / std::sqrt(double(D));
  std::vector<double> logit(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n) {
        double mx = -1e300;
        for (int64_t m = 0; m < N; ++m) {
          if (group(m) != group(n)) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d)
            s += double(qp[((b * N + n) * H + h) * D + d]) * kp[((b * N + m) * H + h) * D + d];
          logit[size_t(m)] = s * scale;
          mx = std::max(mx, logit[size_t(m)]);
        }
        double den = 0;
        std::vector<double> acc(static_cast<size_t>(D), 0.0);
        for (int64_t m = 0; m < N; ++m) {
          if (group(m) != group(n)) continue;
          const double w = std::exp(logit[size_t(m)] - mx);
          den += w;
          for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += w * vp[((b * N + m) * H + h) * D + d];
        }
        for (int64_t d = 0; d < D; ++d)
          op[((b * N + n) * H + h) * D + d] = float(acc[size_t(d)] / den);
      }
  return out;
}

struct Case {
  Grid grid;
  bool padded;
};

class SingleDeviceHybrid : public ::testing::TestWithParam<Case> {};

TEST_P(SingleDeviceHybrid, SparseAttentionEqualsMaskedDense) {
  const Grid g = GetParam().grid;
  const int P = 2, H = 2, D = 12;
  const int64_t B = 2, N = g.numel(), C = H * D;
  auto geo = sparse::skiparse_geometry(g, P);
  EXPECT_EQ(geo.Hp != g.H || geo.Wp != g.W, GetParam().padded);

  auto sp = parallel::make_single_device();
  parallel::ForwardPlan plan;
  plan.grid = g;
  plan.kinds = {BlockKind::Full, BlockKind::Token, BlockKind::Group, BlockKind::Full};
  plan.P = P;
  plan.heads = H;
  plan.head_dim = D;
  plan.device = Device::cpu();
  sp->setup(plan);
  sp->setup(plan);  // cached: no work, same result

  Tensor q = randn({B, N, H, D}, 1), k = randn({B, N, H, D}, 2), v = randn({B, N, H, D}, 3);
  const Tensor qr = rope_full(q, g), kr = rope_full(k, g);

  // Layout of block i for a [B, N, C] tensor: scatter, then enter blocks 1..i.
  auto to_block = [&](const Tensor& full4, int i) {
    Tensor x = sp->scatter_input(full4.clone().view({B, N, C}));
    for (int j = 1; j <= i; ++j) x = sp->enter_block(j, x);
    return x;
  };
  // Back to full from block i's layout: enter the remaining blocks, then gather.
  auto to_full = [&](Tensor x, int i) {
    for (int j = i + 1; j < int(plan.kinds.size()); ++j) x = sp->enter_block(j, x);
    return sp->gather_output(x).view({B, N, H, D});
  };

  // Pure layout round trip is exact (padding dropped, real tokens kept).
  {
    Tensor back = to_full(to_block(q, 2), 2);
    EXPECT_EQ(max_abs_diff(back, q), 0.0);
  }

  for (int blk = 0; blk < 4; ++blk) {
    const BlockKind kind = plan.kinds[size_t(blk)];
    Tensor ql = to_block(q, blk), kl = to_block(k, blk), vl = to_block(v, blk);
    const int64_t n = ql.size(1);
    const Tensor& tab = sp->rope_table(blk);
    const int64_t Rt = tab.size(0);
    ASSERT_EQ(tab.size(1) * Rt, n);
    Tensor q4 = ql.view({B, n, H, D}), k4 = kl.view({B, n, H, D}), v4 = vl.view({B, n, H, D});
    {
      Tensor qv = q4.view({B * Rt, n / Rt, H, D}), kv = k4.view({B * Rt, n / Rt, H, D});
      ops::rope(qv, tab, qv);
      ops::rope(kv, tab, kv);
    }
    Tensor o4 = Tensor::empty({B, n, H, D}, DType::F32);
    sp->self_attention(blk, q4, k4, v4, o4);
    Tensor got = to_full(o4.view({B, n, C}), blk);
    Tensor want = masked_reference(qr, kr, v, g, kind, P);
    const double err = relative_error(got, want);
    EXPECT_LT(err, 1e-5) << "block " << blk << " (" << sparse::block_kind_name(kind) << ")";
    // Every layout stores exactly the N real tokens (Skiparse padding is not stored).
    EXPECT_EQ(n, N) << "block " << blk;
  }
}

INSTANTIATE_TEST_SUITE_P(Grids, SingleDeviceHybrid,
                         ::testing::Values(Case{{2, 8, 12}, false}, Case{{2, 7, 9}, true},
                                           Case{{1, 6, 10}, true}));

TEST(SingleDevice, RopeSplitMatchesWan) {
  auto s = parallel::rope_split(128);
  EXPECT_EQ(s.frame_pairs, 22);
  EXPECT_EQ(s.row_pairs, 21);
  EXPECT_EQ(s.col_pairs, 21);
  // Token (t=1, y=2, x=3) of a 2x4x5 grid: pair 1 angle = 1·10000^(-2/44), pair 23 = 2·10000^(-2/42),
  // pair 44 = 3·10000^(-2/42).
  Grid g{2, 4, 5};
  int32_t tok = (1 * 4 + 2) * 5 + 3;
  Tensor t = parallel::rope_cos_sin(g, 128, &tok, 1);
  auto ang = [&](int p) { return std::atan2(t.data<float>()[2 * p + 1], t.data<float>()[2 * p]); };
  EXPECT_NEAR(ang(1), 1 * std::pow(10000.0, -2.0 / 44), 1e-6);
  EXPECT_NEAR(ang(23), 2 * std::pow(10000.0, -2.0 / 42), 1e-6);
  EXPECT_NEAR(ang(44), 3 * std::pow(10000.0, -2.0 / 42), 1e-6);
  int32_t pad = -1;
  Tensor tp = parallel::rope_cos_sin(g, 128, &pad, 1);
  EXPECT_EQ(tp.data<float>()[0], 1.f);
  EXPECT_EQ(tp.data<float>()[1], 0.f);
}

TEST(SingleDevice, BadPlansAndInputsGiveClearErrors) {
  auto sp = parallel::make_single_device();
  auto msg = [](auto f) {
    try {
      f();
    } catch (const osp::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  parallel::ForwardPlan plan;
  plan.grid = {1, 4, 4};
  plan.heads = 2;
  plan.head_dim = 8;
  plan.kinds = {BlockKind::Token, BlockKind::Token};
  EXPECT_NE(msg([&] { sp->setup(plan); }).find("alternate token/group"), std::string::npos);
  // A sparse region may start with a group block and end with a token block (the reference's
  // parity rule with num_full_blocks % 4 == 2, as in golden_train).
  {
    auto other = parallel::make_single_device();
    parallel::ForwardPlan ok = plan;
    ok.kinds = {BlockKind::Full, BlockKind::Group, BlockKind::Token, BlockKind::Full};
    EXPECT_EQ(msg([&] { other->setup(ok); }), "no error");
  }
  plan.kinds = {BlockKind::Token, BlockKind::Group};
  plan.P = 1;
  EXPECT_NE(msg([&] { sp->setup(plan); }).find("P >= 2"), std::string::npos);
  plan.P = 2;
  plan.head_dim = 7;
  EXPECT_NE(msg([&] { sp->setup(plan); }).find("even"), std::string::npos);
  plan.head_dim = 8;
  EXPECT_NE(msg([&] { sp->scatter_input(Tensor::zeros({1, 16, 16}, DType::F32)); }).find("setup"),
            std::string::npos);
  sp->setup(plan);
  EXPECT_NE(msg([&] { sp->scatter_input(Tensor::zeros({1, 15, 16}, DType::F32)); }).find("expected hidden"),
            std::string::npos);
  EXPECT_NE(msg([&] { sp->enter_block(2, Tensor::zeros({1, 16, 16}, DType::F32)); }).find("outside"),
            std::string::npos);
}

}  // namespace
