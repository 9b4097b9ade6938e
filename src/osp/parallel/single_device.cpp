// SequenceParallel on one device (S = 1): identity layouts for full blocks, Skiparse-2D
// token/group layouts for sparse blocks (the P² sub-sequences packed back to back without their
// padding rows; attention runs per sub-sequence), every transition one gather.
#include <array>
#include <map>

#include "osp/parallel/rope_table.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/backward.h"
#include "osp/ops/ops.h"

namespace osp::parallel {

using sparse::BlockKind;

void check_plan(const ForwardPlan& plan) {
  OSP_CHECK(!plan.kinds.empty(), "ForwardPlan: no blocks (kinds is empty)");
  OSP_CHECK(plan.grid.T > 0 && plan.grid.H > 0 && plan.grid.W > 0,
            "ForwardPlan: grid must be positive, got ", plan.grid.T, "x", plan.grid.H, "x",
            plan.grid.W);
  OSP_CHECK(plan.heads > 0, "ForwardPlan: heads must be positive, got ", plan.heads);
  OSP_CHECK(plan.head_dim > 0 && plan.head_dim % 2 == 0,
            "ForwardPlan: head_dim must be positive and even (RoPE pairs), got ", plan.head_dim);
  bool any_sparse = false;
  for (size_t i = 0; i < plan.kinds.size(); ++i) {
    const BlockKind k = plan.kinds[i];
    if (k == BlockKind::Full) continue;
    any_sparse = true;
    // Sparse blocks alternate token/group. The region may start or end with either kind:
    // the reference's layout rule (spec §2.2, kind by block parity) gives token-first regions for
    // num_full_blocks % 4 == 0 and group-first ones otherwise (e.g. golden_train's
    // full, group, token, full); every transition is a permutation either way.
    const BlockKind prev = i == 0 ? BlockKind::Full : plan.kinds[i - 1];
    OSP_CHECK(prev != k, "ForwardPlan: blocks ", i - 1, " and ", i, " are both ",
              sparse::block_kind_name(k), " blocks; sparse blocks alternate token/group");
  }
  if (any_sparse) {
    OSP_CHECK(plan.P >= 2, "ForwardPlan: sparse blocks need sparse_ratio P >= 2, got ", plan.P);
    (void)sparse::skiparse_geometry(plan.grid, plan.P);  // validates P and the index range
  }
}

bool same_plan(const ForwardPlan& a, const ForwardPlan& b) {
  return a.grid.T == b.grid.T && a.grid.H == b.grid.H && a.grid.W == b.grid.W &&
         a.kinds == b.kinds && a.P == b.P && a.heads == b.heads && a.head_dim == b.head_dim &&
         a.device == b.device;
}

const AttentionFn& default_attention() {
  static const AttentionFn f = [](const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                                  const ops::AttentionArgs& a) { ops::attention(q, k, v, out, a); };
  return f;
}

Tensor gather_per_sample(const Tensor& x, const Tensor& index, int64_t n_out) {
  OSP_CHECK(x.dim() == 3, "gather_per_sample: expected x [B, n, C], got ", x.desc());
  OSP_CHECK(index.numel() == n_out, "gather_per_sample: index has ", index.numel(),
            " entries, expected ", n_out);
  const Tensor xc = x.contiguous();
  const int64_t B = xc.size(0), C = xc.size(2);
  Tensor out = Tensor::empty({B, n_out, C}, xc.dtype(), xc.device());
  for (int64_t b = 0; b < B; ++b) {
    Tensor ob = out.select(0, b);
    ops::gather_rows(xc.select(0, b), index, ob);
  }
  return out;
}

namespace {

constexpr int kFull = 0, kToken = 1, kGroup = 2;
int layout_id(BlockKind k) {
  return k == BlockKind::Full ? kFull : (k == BlockKind::Token ? kToken : kGroup);
}

class SingleDevice final : public SequenceParallel {
 public:
  const char* name() const override { return "single"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }

  void setup(const ForwardPlan& plan) override {
    if (have_plan_ && same_plan(plan, plan_)) return;
    check_plan(plan);
    plan_ = plan;
    have_plan_ = false;
    N_ = plan.grid.numel();
    bool any_sparse = false;
    for (BlockKind k : plan.kinds) any_sparse |= k != BlockKind::Full;
    // Every layout holds the N real tokens once; tokens_[id][j] = full-layout index of row j.
    // Sparse layouts: the P² sub-sequences back to back, each without its padding rows
    // (padding never influences a real token, so it is simply not stored or computed).
    for (auto& t : rope_) t = Tensor();
    for (auto& t : tokens_) t.clear();
    tokens_[kFull].resize(size_t(N_));
    for (int64_t n = 0; n < N_; ++n) tokens_[kFull][size_t(n)] = int32_t(n);
    rope_[kFull] = rope_cos_sin_full(plan.grid, plan.head_dim)
                       .view({1, N_, plan.head_dim / 2, 2})
                       .to(plan.device);
    if (any_sparse) {
      const int64_t P2 = int64_t(plan.P) * plan.P;
      for (int id : {kToken, kGroup}) {
        const BlockKind k = id == kToken ? BlockKind::Token : BlockKind::Group;
        const Tensor map = sparse::skiparse_index(plan.grid, plan.P, k, /*padding_last=*/true);
        const int64_t L = map.size(1);
        const auto lens = sparse::skiparse_row_lengths(plan.grid, plan.P, k);
        auto& tok = tokens_[size_t(id)];
        tok.reserve(size_t(N_));
        for (int64_t g = 0; g < P2; ++g)
          for (int64_t j = 0; j < lens[size_t(g)]; ++j) tok.push_back(map.data<int32_t>()[g * L + j]);
        OSP_CHECK(int64_t(tok.size()) == N_, "single device: internal error: the ",
                  sparse::block_kind_name(k), " layout holds ", tok.size(), " of ", N_, " tokens");
        seq_lens_[size_t(id)] = Tensor::empty({P2}, DType::I32);
        std::copy(lens.begin(), lens.end(), seq_lens_[size_t(id)].data<int32_t>());
        rope_[size_t(id)] = rope_cos_sin(plan.grid, plan.head_dim, tok.data(), N_)
                                .view({1, N_, plan.head_dim / 2, 2})
                                .to(plan.device);
      }
    }
    // Transition maps (device I32): out row j of layout `to` = row map[j] of layout `from`.
    auto to_map = [&](int from, int to) -> Tensor {
      if (from == to) return Tensor();
      std::vector<int32_t> pos(static_cast<size_t>(N_), 0);
      const auto& tf = tokens_[size_t(from)];
      for (size_t j = 0; j < tf.size(); ++j) pos[size_t(tf[j])] = int32_t(j);
      const auto& tt = tokens_[size_t(to)];
      Tensor m = Tensor::empty({N_}, DType::I32);
      for (size_t j = 0; j < tt.size(); ++j) m.data<int32_t>()[j] = pos[size_t(tt[j])];
      return m.to(plan.device);
    };
    const size_t nb = plan.kinds.size();
    enter_.assign(nb, Tensor());
    back_.assign(nb, Tensor());
    input_map_ = to_map(kFull, layout_id(plan.kinds[0]));
    for (size_t i = 1; i < nb; ++i) {
      enter_[i] = to_map(layout_id(plan.kinds[i - 1]), layout_id(plan.kinds[i]));
      back_[i] = to_map(layout_id(plan.kinds[i]), layout_id(plan.kinds[i - 1]));
    }
    output_map_ = to_map(layout_id(plan.kinds.back()), kFull);
    input_back_map_ = to_map(layout_id(plan.kinds[0]), kFull);
    output_back_map_ = to_map(kFull, layout_id(plan.kinds.back()));
    have_plan_ = true;
  }

  Tensor scatter_input(const Tensor& x_full) override {
    require_plan("scatter_input");
    check_hidden(x_full, kFull, "scatter_input");
    return move(x_full, input_map_);
  }

  Tensor enter_block(int i, const Tensor& x_local) override {
    require_plan("enter_block");
    OSP_CHECK(i >= 1 && size_t(i) < plan_.kinds.size(), "enter_block: block index ", i,
              " outside [1, ", plan_.kinds.size(), ")");
    check_hidden(x_local, layout_id(plan_.kinds[size_t(i) - 1]), "enter_block");
    return move(x_local, enter_[size_t(i)]);
  }

  Tensor scatter_input_backward(const Tensor& grad_local) override {
    require_plan("scatter_input_backward");
    check_hidden(grad_local, layout_id(plan_.kinds[0]), "scatter_input_backward");
    return move(grad_local, input_back_map_);
  }
  Tensor gather_output_backward(const Tensor& grad_full) override {
    require_plan("gather_output_backward");
    check_hidden(grad_full, kFull, "gather_output_backward");
    return move(grad_full, output_back_map_);
  }

  Tensor enter_block_backward(int i, const Tensor& grad_local) override {
    require_plan("enter_block_backward");
    OSP_CHECK(i >= 1 && size_t(i) < plan_.kinds.size(), "enter_block_backward: block index ", i,
              " outside [1, ", plan_.kinds.size(), ")");
    check_hidden(grad_local, layout_id(plan_.kinds[size_t(i)]), "enter_block_backward");
    return move(grad_local, back_[size_t(i)]);
  }

  const Tensor& rope_table(int i) override {
    require_plan("rope_table");
    OSP_CHECK(i >= 0 && size_t(i) < plan_.kinds.size(), "rope_table: block index ", i,
              " outside [0, ", plan_.kinds.size(), ")");
    return rope_[size_t(layout_id(plan_.kinds[size_t(i)]))];
  }

  void self_attention(int i, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                      const AttentionFn& fn) override {
    const AttentionFn& attend = fn ? fn : default_attention();
    attend(q, k, v, out, attention_args(i, q, k, v, out, "self_attention"));
  }

  void self_attention_train(int i, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                            Tensor& lse) override {
    const ops::AttentionArgs args = attention_args(i, q, k, v, out, "self_attention_train");
    ops::attention_forward_lse(q, k, v, out, lse, args);
  }

  void self_attention_backward(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out, const Tensor& lse, const Tensor& dout,
                               Tensor& dq, Tensor& dk, Tensor& dv) override {
    const ops::AttentionArgs args = attention_args(i, q, k, v, out, "self_attention_backward");
    ops::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, args);
  }

  Tensor gather_output(const Tensor& x_local) override {
    require_plan("gather_output");
    check_hidden(x_local, layout_id(plan_.kinds.back()), "gather_output");
    return move(x_local, output_map_);
  }

 private:
  // Checks block i's q, k, v, out; the attention arguments of its layout (packed sub-sequence
  // lengths in sparse blocks).
  ops::AttentionArgs attention_args(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const char* who) const {
    require_plan(who);
    OSP_CHECK(i >= 0 && size_t(i) < plan_.kinds.size(), who, ": block index ", i,
              " outside [0, ", plan_.kinds.size(), ")");
    OSP_CHECK(q.dim() == 4 && q.size(1) == N_ && q.size(2) == plan_.heads &&
                  q.size(3) == plan_.head_dim,
              who, "(block ", i, "): expected q [B, ", N_, ", ", plan_.heads, ", ",
              plan_.head_dim, "], got ", q.desc());
    OSP_CHECK(k.shape() == q.shape() && v.shape() == q.shape() && out.shape() == q.shape(),
              who, "(block ", i, "): q, k, v, out shapes differ: ", q.desc(), ", ", k.desc(),
              ", ", v.desc(), ", ", out.desc());
    ops::AttentionArgs args;
    const int id = layout_id(plan_.kinds[size_t(i)]);
    if (id != kFull) args.seq_lens = &seq_lens_[size_t(id)];
    return args;
  }
  void require_plan(const char* who) const {
    OSP_CHECK(have_plan_, who, ": call setup(plan) first");
  }
  void check_hidden(const Tensor& x, int id, const char* who) const {
    OSP_CHECK(x.dim() == 3 && x.size(1) == N_, who, ": expected hidden [B, ", N_,
              ", C] in the ", id == kFull ? "full" : (id == kToken ? "token" : "group"),
              " layout, got ", x.desc());
    OSP_CHECK(x.device() == plan_.device, who, ": hidden state is on ", x.device().name(),
              " but the plan's device is ", plan_.device.name());
  }
  Tensor move(const Tensor& x, const Tensor& map) const {
    if (!map.defined()) return x;
    return gather_per_sample(x, map, N_);
  }
  ForwardPlan plan_;
  bool have_plan_ = false;
  int64_t N_ = 0;
  std::array<std::vector<int32_t>, 3> tokens_;
  std::array<Tensor, 3> rope_, seq_lens_;
  std::vector<Tensor> enter_, back_;
  Tensor input_map_, output_map_, input_back_map_, output_back_map_;
};

}  // namespace

std::unique_ptr<SequenceParallel> make_single_device() { return std::make_unique<SingleDevice>(); }

}  // namespace osp::parallel
