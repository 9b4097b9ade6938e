// A small attention-only block stack driven through a SequenceParallel exactly the way the DiT
// drives it (scatter, enter_block, RoPE with rope_table, self_attention, per-token layers,
// gather_output). Shared by the thread-communicator unit test and the MPI test.
#pragma once
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/ops.h"

namespace osp::test {

inline Tensor randn_tensor(const Shape& s, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (auto& x : v) x = nd(rng) * scale;
  return Tensor::from_vector(v, s);
}

struct StackWeights {
  std::vector<Tensor> wq, wk, wv, wo, w1;  // [C, C] each, per block
};

inline StackWeights make_stack_weights(int blocks, int64_t C, uint32_t seed) {
  StackWeights w;
  const float s = 0.5f / std::sqrt(float(C));  // keeps the stack well conditioned
  for (int i = 0; i < blocks; ++i) {
    w.wq.push_back(randn_tensor({C, C}, seed + 10 * i + 1, s));
    w.wk.push_back(randn_tensor({C, C}, seed + 10 * i + 2, s));
    w.wv.push_back(randn_tensor({C, C}, seed + 10 * i + 3, s));
    w.wo.push_back(randn_tensor({C, C}, seed + 10 * i + 4, s));
    w.w1.push_back(randn_tensor({C, C}, seed + 10 * i + 5, s));
  }
  return w;
}

// x_full [B, N, C] (not modified) → [B, N, C] after the stack, on every rank.
inline Tensor run_stack(parallel::SequenceParallel& sp, const parallel::ForwardPlan& plan,
                        const Tensor& x_full, const StackWeights& w) {
  sp.setup(plan);
  const int64_t B = x_full.size(0), C = x_full.size(2), H = plan.heads, D = plan.head_dim;
  Tensor x = sp.scatter_input(x_full.clone()).clone();
  for (int i = 0; i < int(plan.kinds.size()); ++i) {
    if (i > 0) x = sp.enter_block(i, x);
    const int64_t n = x.size(1);
    Tensor q = Tensor::empty({B, n, C}, DType::F32), k = Tensor::empty({B, n, C}, DType::F32),
           v = Tensor::empty({B, n, C}, DType::F32);
    ops::linear(x, w.wq[size_t(i)], nullptr, q);
    ops::linear(x, w.wk[size_t(i)], nullptr, k);
    ops::linear(x, w.wv[size_t(i)], nullptr, v);
    const Tensor& tab = sp.rope_table(i);
    const int64_t rt = tab.size(0);
    Tensor qr = q.view({B * rt, n / rt, H, D}), kr = k.view({B * rt, n / rt, H, D});
    ops::rope(qr, tab, qr);
    ops::rope(kr, tab, kr);
    Tensor o = Tensor::empty({B, n, H, D}, DType::F32);
    sp.self_attention(i, q.view({B, n, H, D}), k.view({B, n, H, D}), v.view({B, n, H, D}), o);
    Tensor y = Tensor::empty({B, n, C}, DType::F32);
    ops::linear(o.view({B, n, C}), w.wo[size_t(i)], nullptr, y);
    ops::add_gated_(x, y, nullptr);
    ops::linear(x, w.w1[size_t(i)], nullptr, y, ops::Act::GeluTanh);
    ops::add_gated_(x, y, nullptr);
  }
  return sp.gather_output(x);
}

inline parallel::ForwardPlan make_plan(sparse::Grid g, std::vector<sparse::BlockKind> kinds, int P,
                                   int heads, int head_dim) {
  parallel::ForwardPlan p;
  p.grid = g;
  p.kinds = std::move(kinds);
  p.P = P;
  p.heads = heads;
  p.head_dim = head_dim;
  p.device = Device::cpu();
  return p;
}

// Uneven all-to-all on any communicator: rank r sends (d + 1) rows of (100·r + d, k) to rank d;
// checks the received rows and the byte counter (self-sends are not counted).
inline void check_uneven_all_to_all(parallel::Communicator& comm) {
  const int S = comm.size(), r = comm.rank();
  std::vector<int64_t> sr, rr;
  std::vector<float> sv;
  for (int d = 0; d < S; ++d) {
    sr.push_back(d + 1);
    rr.push_back(r + 1);
    for (int k = 0; k < d + 1; ++k) sv.insert(sv.end(), {float(100 * r + d), float(k)});
  }
  Tensor send = Tensor::from_vector(sv, {int64_t(sv.size()) / 2, 2});
  Tensor recv = Tensor::empty({int64_t(S) * (r + 1), 2}, DType::F32);
  comm.reset_bytes();
  comm.all_to_all(send, sr, recv, rr);
  uint64_t expect_bytes = 0;
  for (int d = 0; d < S; ++d)
    if (d != r) expect_bytes += uint64_t(d + 1) * 2 * 4;
  EXPECT_EQ(comm.bytes_sent(), expect_bytes);
  for (int s = 0; s < S; ++s)
    for (int k = 0; k <= r; ++k) {
      EXPECT_EQ(recv.item({s * (r + 1) + k, 0}), 100 * s + r);
      EXPECT_EQ(recv.item({s * (r + 1) + k, 1}), k);
    }
}

// Every collective of a communicator (called on all ranks): the uneven all-to-all above, the
// equal-split all-to-all, all_gather, reduce_scatter, all_reduce, broadcast, barrier and split.
inline void check_collectives(parallel::Communicator& comm) {
  const int S = comm.size(), r = comm.rank();
  check_uneven_all_to_all(comm);
  Tensor eq = Tensor::empty({int64_t(S), 3}, DType::F32), eq_out = Tensor::empty({int64_t(S), 3}, DType::F32);
  for (int d = 0; d < S; ++d)
    for (int j = 0; j < 3; ++j) eq.data<float>()[d * 3 + j] = float(10 * r + d + j);
  comm.all_to_all(eq, eq_out);
  for (int s = 0; s < S; ++s) EXPECT_EQ(eq_out.item({s, 2}), 10 * s + r + 2);
  Tensor mine = Tensor::from_vector({float(r), float(r * r)}, {2});
  Tensor all = Tensor::empty({2 * int64_t(S)}, DType::F32);
  comm.all_gather(mine, all);
  for (int s = 0; s < S; ++s) EXPECT_EQ(all.item({2 * s + 1}), s * s);
  std::vector<float> rs(static_cast<size_t>(2 * S));
  for (int i = 0; i < 2 * S; ++i) rs[size_t(i)] = float(i + r);
  Tensor red = Tensor::empty({2}, DType::F32);
  comm.reduce_scatter(Tensor::from_vector(rs, {2 * int64_t(S)}), red);
  const float base = float(S * (S - 1) / 2);
  EXPECT_EQ(red.item({0}), S * (2 * r) + base);
  EXPECT_EQ(red.item({1}), S * (2 * r + 1) + base);
  Tensor ar = Tensor::from_vector({1.f, float(r)}, {2});
  comm.all_reduce(ar);
  EXPECT_EQ(ar.item({0}), S);
  EXPECT_EQ(ar.item({1}), base);
  Tensor bc = Tensor::from_vector({float(r + 5)}, {1});
  comm.broadcast(bc, S - 1);
  EXPECT_EQ(bc.item({0}), S + 4);
  comm.barrier();
  // Sub-groups: even and odd ranks.
  auto sub = comm.split(r % 2, r);
  EXPECT_EQ(sub->rank(), r / 2);
  EXPECT_EQ(sub->size(), (S - r % 2 + 1) / 2);
  Tensor one = Tensor::from_vector({1.f}, {1});
  sub->all_reduce(one);
  EXPECT_EQ(one.item({0}), sub->size());
}

}  // namespace osp::test
