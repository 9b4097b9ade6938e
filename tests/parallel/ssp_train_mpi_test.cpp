// Under mpirun (1, 2 and 4 ranks): the training adjoints of SSP and Ulysses (spec §4.9).
//
// * The reference's counter-example: its full→sparse transition is a differentiable all-gather
//   followed by "keep my groups", whose backward keeps only the rank's own chunk of its own
//   gradient, so the gradient of a token whose sparse row lives on ANOTHER rank is dropped.
//   Replayed here on the real layouts (hybrid plan, Skiparse padding): the narrow-only gradient
//   misses rows for S > 1, osp's enter_block_backward (the inverse all-to-all) gives every
//   token exactly the gradient of the rank that used it.
// * Every layout change is checked as a linear map: Σ_ranks ⟨A x, g⟩ = Σ_ranks ⟨x, Aᵀ g⟩ for
//   enter_block (every transition and switch), scatter_input and gather_output, also with full
//   blocks replicated in groups (2 heads on 4 ranks: F = 2).
// * The training attention through Ulysses (full blocks, and replicated) equals the
//   single-device forward-with-lse and backward on the gathered tensors.
#include <gtest/gtest.h>

#include "osp/parallel/communicator.h"
#include "osp/ops/backward.h"
#include "ssp_stack.h"

using namespace osp;
using K = sparse::BlockKind;

namespace {

std::shared_ptr<parallel::Communicator> world() {
  static std::shared_ptr<parallel::Communicator> c = parallel::make_mpi_communicator();
  return c;
}

// Σ over ranks of ⟨a, b⟩ (float64).
double dot_all(const Tensor& a, const Tensor& b) {
  const auto x = a.contiguous().to_float_vector(), y = b.contiguous().to_float_vector();
  EXPECT_EQ(x.size(), y.size());
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += double(x[i]) * double(y[i]);
  Tensor t = Tensor::from_vector({float(s)}, {1});
  // float64 would be nicer, but the sum of ≤ 4 float-rounded partials is well within the bound
  world()->all_reduce(t);
  return t.item({0});
}

// [B, N, 1] holding token index n in every row of every sample.
Tensor iota(int64_t B, int64_t N) {
  std::vector<float> v;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) v.push_back(float(n));
  return Tensor::from_vector(v, {B, N, 1});
}

std::vector<int> ids_of(const Tensor& t) {
  std::vector<int> out;
  for (float f : t.contiguous().to_float_vector()) out.push_back(int(f));
  return out;
}

const std::vector<K> kHybrid = {K::Full, K::Group, K::Token, K::Full};

}  // namespace

// Spec §4.9's counter-example on the real full→group transition of a padded hybrid plan.
TEST(SspTrain, NarrowOnlyAllGatherBackwardDropsGradientsInverseAllToAllDoesNot) {
  auto comm = world();
  const int S = comm->size(), r = comm->rank();
  const sparse::Grid grid{2, 7, 9};  // 7x9 → Skiparse padding rows travel as zeros
  const int64_t B = 2, C = 3, N = grid.numel();
  const auto plan = test::make_plan(grid, kHybrid, 2, 4, 8);  // 4 heads: F = S, no replicas
  auto sp = parallel::make_ssp(comm);
  sp->setup(plan);
  // which tokens this rank holds in block 0 (full chunk) and block 1 (group layout)
  const Tensor id0 = sp->scatter_input(iota(B, N));
  const Tensor id1 = sp->enter_block(1, id0);
  const auto ids_full = ids_of(id0), ids_group = ids_of(id1);
  const int64_t n0 = id0.size(1), n1 = id1.size(1);
  // dL/d(block-1 rows): any values, different on every rank
  const Tensor g = test::randn_tensor({B, n1, C}, 70 + uint32_t(r));
  const auto gv = g.to_float_vector();
  // The true gradient of every token: the row of the one rank whose group layout holds it.
  Tensor by_token = Tensor::zeros({B, N, C}, DType::F32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < n1; ++k)
      for (int64_t c = 0; c < C; ++c)
        by_token.data<float>()[(b * N + ids_group[size_t(b * n1 + k)]) * C + c] =
            gv[size_t((b * n1 + k) * C + c)];
  comm->all_reduce(by_token);
  // osp: the inverse all-to-all
  const Tensor ours = sp->enter_block_backward(1, g);
  ASSERT_EQ(ours.shape(), (Shape{B, n0, C}));
  // the reference: place MY gradient rows in full order, keep MY chunk of it (no reduction)
  Tensor mine_full = Tensor::zeros({B, N, C}, DType::F32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < n1; ++k)
      for (int64_t c = 0; c < C; ++c)
        mine_full.data<float>()[(b * N + ids_group[size_t(b * n1 + k)]) * C + c] =
            gv[size_t((b * n1 + k) * C + c)];
  int64_t dropped = 0, rows = 0;
  const auto ov = ours.to_float_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n0; ++j) {
      const int64_t tok = ids_full[size_t(b * n0 + j)];
      bool narrow_zero = true;
      for (int64_t c = 0; c < C; ++c) {
        const float want = by_token.data<float>()[(b * N + tok) * C + c];
        EXPECT_EQ(ov[size_t((b * n0 + j) * C + c)], want) << "row " << j << " token " << tok;
        narrow_zero &= mine_full.data<float>()[(b * N + tok) * C + c] == 0.f;
      }
      ++rows;
      dropped += narrow_zero;  // the narrow-only backward gives this row no gradient at all
    }
  Tensor counts = Tensor::from_vector({float(dropped), float(rows)}, {2});
  comm->all_reduce(counts);
  const double frac = counts.item({0}) / counts.item({1});
  if (r == 0)
    std::printf("[ info     ] %d ranks: the narrow-only backward drops the gradient of %.0f of %.0f "
                "rows (%.0f%%); osp drops none\n",
                S, counts.item({0}), counts.item({1}), 100 * frac);
  if (S == 1) EXPECT_EQ(frac, 0.0);
  else EXPECT_GT(frac, 0.5 - 1e-9);  // (S−1)/S of the tokens live on other ranks' groups
}

struct AdjCase {
  const char* name;
  sparse::Grid grid;
  std::vector<K> kinds;
  int heads;
  const char* mode;
};
class SspAdjoint : public ::testing::TestWithParam<AdjCase> {};

TEST_P(SspAdjoint, EveryLayoutChangeIsTransposedExactly) {
  const AdjCase c = GetParam();
  auto comm = world();
  const int r = comm->rank();
  const int64_t B = 2, C = 5, N = c.grid.numel();
  const auto plan = test::make_plan(c.grid, c.kinds, 2, c.heads, 8);
  auto sp = std::string(c.mode) == "ssp" ? parallel::make_ssp(comm) : parallel::make_ulysses(comm);
  sp->setup(plan);
  const std::string where = std::string(c.name) + " rank " + std::to_string(r);
  // scatter_input: X (the same on every rank) → rows; the adjoint is complete on every rank
  const Tensor X = test::randn_tensor({B, N, C}, 5);
  const Tensor x0 = sp->scatter_input(X);
  const Tensor g0 = test::randn_tensor(x0.shape(), 90 + uint32_t(r));
  const Tensor X_bar = sp->scatter_input_backward(g0);
  ASSERT_EQ(X_bar.shape(), X.shape());
  Tensor X_bar0 = X_bar.clone();
  comm->broadcast(X_bar0, 0);
  EXPECT_EQ(max_abs_diff(X_bar, X_bar0), 0.0) << where << ": scatter adjoint differs by rank";
  const double lhs0 = dot_all(x0, g0);
  double rhs0 = 0;  // ⟨X, X̄⟩ counted once
  {
    const auto a = X.to_float_vector(), b = X_bar.to_float_vector();
    for (size_t i = 0; i < a.size(); ++i) rhs0 += double(a[i]) * b[i];
  }
  EXPECT_NEAR(lhs0, rhs0, 1e-4 * std::abs(rhs0) + 1e-4) << where << " scatter_input";
  // enter_block i: arbitrary (rank-specific) inputs; Σ⟨A x, g⟩ = Σ⟨x, Aᵀ g⟩
  Tensor x = x0;
  for (int i = 1; i < int(c.kinds.size()); ++i) {
    const Tensor xi = test::randn_tensor(x.shape(), 100 * i + uint32_t(r));
    const Tensor y = sp->enter_block(i, xi);
    const Tensor g = test::randn_tensor(y.shape(), 200 * i + uint32_t(r));
    const Tensor xb = sp->enter_block_backward(i, g);
    ASSERT_EQ(xb.shape(), xi.shape());
    const double lhs = dot_all(y, g), rhs = dot_all(xi, xb);
    EXPECT_NEAR(lhs, rhs, 1e-4 * std::abs(lhs) + 1e-4) << where << " block " << i;
    x = y;
  }
  // gather_output: consistent rows (the forward of X), the loss ⟨gather(x), G⟩ counted once
  Tensor xl = sp->scatter_input(X);
  for (int i = 1; i < int(c.kinds.size()); ++i) xl = sp->enter_block(i, xl);
  const Tensor Y = sp->gather_output(xl);
  const Tensor G = test::randn_tensor(Y.shape(), 7);
  double lhs = 0;
  {
    const auto a = Y.to_float_vector(), b = G.to_float_vector();
    for (size_t i = 0; i < a.size(); ++i) lhs += double(a[i]) * b[i];
  }
  const double rhs = dot_all(xl, sp->gather_output_backward(G));
  EXPECT_NEAR(lhs, rhs, 1e-4 * std::abs(lhs) + 1e-4) << where << " gather_output";
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, SspAdjoint,
    ::testing::Values(AdjCase{"ssp_padded", {2, 7, 9}, kHybrid, 4, "ssp"},
                      AdjCase{"ssp_replicated_full", {2, 6, 8}, kHybrid, 2, "ssp"},
                      AdjCase{"ssp_sparse_ends", {1, 8, 8}, {K::Token, K::Group, K::Token}, 2, "ssp"},
                      AdjCase{"ulysses_replicated", {2, 7, 9}, {K::Full, K::Full}, 2, "ulysses"}),
    [](const auto& info) { return std::string(info.param.name); });

// Training attention of a full block through Ulysses equals ops::attention_forward_lse /
// attention_backward on the whole sequence (every rank's rows of the gathered result).
TEST(SspTrain, UlyssesTrainingAttentionEqualsSingleDevice) {
  auto comm = world();
  const int r = comm->rank();
  for (int heads : {4, 2}) {  // 2 heads on 4 ranks: two replica groups of F = 2
    const sparse::Grid grid{2, 7, 9};
    const int64_t B = 2, N = grid.numel(), D = 8;
    const auto plan = test::make_plan(grid, {K::Full, K::Full}, 2, heads, int(D));
    auto sp = parallel::make_ulysses(comm);
    sp->setup(plan);
    const Tensor q = test::randn_tensor({B, N, heads, D}, 1), k = test::randn_tensor({B, N, heads, D}, 2);
    const Tensor v = test::randn_tensor({B, N, heads, D}, 3), dout = test::randn_tensor({B, N, heads, D}, 4);
    Tensor o = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({B, heads, N}, DType::F32);
    ops::attention_forward_lse(q, k, v, o, lse);
    Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = dq.clone(), dv = dq.clone();
    ops::attention_backward(q, k, v, o, lse, dout, dq, dk, dv);
    // this rank's rows via the token ids of the full layout
    const Tensor idt = sp->scatter_input(iota(1, N));
    const auto ids = ids_of(idt);
    const int64_t n = int64_t(ids.size());
    auto rows = [&](const Tensor& t) {  // [B, N, H, D] → [B, n, H, D]
      Tensor out = Tensor::empty({B, n, heads, D}, DType::F32);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < n; ++j) {
          Tensor dst = out.select(0, b).select(0, j);
          dst.copy_from(t.select(0, b).select(0, ids[size_t(j)]));
        }
      return out;
    };
    const Tensor ql = rows(q), kl = rows(k), vl = rows(v), dol = rows(dout);
    Tensor ol = Tensor::empty(ql.shape(), DType::F32), ll = Tensor::empty({B, heads, n}, DType::F32);
    sp->self_attention_train(0, ql, kl, vl, ol, ll);
    EXPECT_LT(relative_error(ol, rows(o)), 1e-5) << "heads " << heads << " rank " << r;
    Tensor lse_rows = Tensor::empty({B, heads, n}, DType::F32);
    for (int64_t b = 0; b < B; ++b)
      for (int h = 0; h < heads; ++h)
        for (int64_t j = 0; j < n; ++j)
          lse_rows.data<float>()[(b * heads + h) * n + j] = lse.data<float>()[(b * heads + h) * N + ids[size_t(j)]];
    EXPECT_LT(relative_error(ll, lse_rows), 1e-6) << "lse, heads " << heads << " rank " << r;
    Tensor dql = Tensor::empty(ql.shape(), DType::F32), dkl = dql.clone(), dvl = dql.clone();
    sp->self_attention_backward(0, ql, kl, vl, ol, ll, dol, dql, dkl, dvl);
    EXPECT_LT(relative_error(dql, rows(dq)), 1e-5) << "dq, heads " << heads << " rank " << r;
    EXPECT_LT(relative_error(dkl, rows(dk)), 1e-5) << "dk, heads " << heads << " rank " << r;
    EXPECT_LT(relative_error(dvl, rows(dv)), 1e-5) << "dv, heads " << heads << " rank " << r;
  }
}
