// Sparse Sequence Parallelism and Ulysses (osp-next-spec §4) over a Communicator.
//
// Every block type has a layout: for each rank, the list of padded-grid positions
// id = (t·Hp + y)·Wp + x of the rows it holds for one sample (hidden states are [B, n_local, C],
// sample-major). Layout changes between blocks are Exchanges: one gather into a send buffer,
// ONE all-to-all, one gather out of the receive buffer. The exchange tables are built once per
// plan from the global layouts (every rank computes the same chunk order), so no sizes travel.
//
// Send-buffer layout of an exchange: [dst][b][entries], the entries of chunk (src → dst) sorted
// by (destination sub-sequence, source sub-sequence, reference in-group position of the
// destination layout). For the token↔group switch with B = 1 this is exactly spec §4.3:
// SB[dst][j_local][i_local][base] with every chunk G·G·base rows (padding rows included, so the
// volume is (S−1)/S of the local Np·C/S elements). For B > 1 the sample index sits outside the
// sub-sequence indices because our hidden states are sample-major (the spec's are group-major).
#include <string>
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <map>
#include <numeric>
#include <tuple>

#include "osp/core/settings.h"
#include "osp/parallel/comm_volume.h"
#include "osp/parallel/communicator.h"
#include "osp/parallel/rope_table.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/backward.h"
#include "osp/ops/ops.h"

namespace osp::parallel {

namespace {
std::atomic<int64_t> g_ulysses_chunks{0};  // set_ulysses_chunks (0: the setting)
}  // namespace

void set_ulysses_chunks(int64_t chunks) {
  OSP_CHECK(chunks >= 0, "set_ulysses_chunks: chunks must be >= 0, got ", chunks);
  g_ulysses_chunks = chunks;
}

using sparse::BlockKind;

namespace {

constexpr int kFull = 0, kToken = 1, kGroup = 2;
int layout_id(BlockKind k) {
  return k == BlockKind::Full ? kFull : (k == BlockKind::Token ? kToken : kGroup);
}
const char* layout_name(int id) { return id == kFull ? "full" : (id == kToken ? "token" : "group"); }

enum class Attn { Packed, Ulysses };

// One block type's layout on every rank.
struct Layout {
  int kind = kFull;
  std::vector<std::vector<int64_t>> ids;   // [rank][row] padded-grid position of each hidden row
  // [rank][slot] exchange order: the rows plus, in sparse layouts, the Skiparse padding positions
  // of the rank's sub-sequences (each sub-sequence = slot_len consecutive slots). Padding is not
  // stored or computed, but it keeps its place in the all-to-all buffers (spec §4.3: every
  // switch chunk is G·G·base rows) as zero rows.
  std::vector<std::vector<int64_t>> slots;
  std::vector<int64_t> slot_len;            // [rank] slots per sub-sequence
  std::vector<std::vector<int32_t>> lens;   // [rank][sub-sequence] rows (packed attention)
  Attn attn = Attn::Packed;
  int64_t n(int r) const { return int64_t(ids[size_t(r)].size()); }
};

Tensor i32_tensor(const std::vector<int32_t>& v, Device dev) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t.to(dev);
}

// One all-to-all between two layouts, as seen by one rank.
struct Exchange {
  int64_t n_in = 0, n_out = 0;
  std::vector<int32_t> send_rows1;        // per send row (B = 1): local input row (-1: zeros)
  std::vector<int64_t> send_cnt1, recv_cnt1;
  std::vector<int32_t> recv_src1, recv_k1;  // per output row: source rank (-1: zero) and index
  struct PerB {
    Tensor send_idx, recv_idx;
    std::vector<int64_t> send_cnt, recv_cnt;
    // Adjoint (training): receive-buffer position → output row (-1: a padding slot, sent as a
    // zero row), and the forward send index reused as the scatter-add target of each returned row.
    Tensor adj_send_idx;
  };
  std::map<int64_t, PerB> per_b;

  const PerB& maps(int64_t B, Device dev) {
    auto it = per_b.find(B);
    if (it != per_b.end()) return it->second;
    const int S = int(send_cnt1.size());
    PerB m;
    m.send_cnt.resize(size_t(S));
    m.recv_cnt.resize(size_t(S));
    std::vector<int32_t> sidx;
    sidx.reserve(send_rows1.size() * size_t(B));
    int64_t off = 0;
    for (int d = 0; d < S; ++d) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < send_cnt1[size_t(d)]; ++k)
          sidx.push_back(send_rows1[size_t(off + k)] < 0
                             ? -1
                             : int32_t(b * n_in + send_rows1[size_t(off + k)]));
      off += send_cnt1[size_t(d)];
      m.send_cnt[size_t(d)] = B * send_cnt1[size_t(d)];
      m.recv_cnt[size_t(d)] = B * recv_cnt1[size_t(d)];
    }
    std::vector<int64_t> roff(size_t(S) + 1, 0);
    for (int s = 0; s < S; ++s) roff[size_t(s) + 1] = roff[size_t(s)] + m.recv_cnt[size_t(s)];
    std::vector<int32_t> ridx(size_t(B * n_out));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < n_out; ++j) {
        const int32_t s = recv_src1[size_t(j)];
        ridx[size_t(b * n_out + j)] =
            s < 0 ? -1 : int32_t(roff[size_t(s)] + b * recv_cnt1[size_t(s)] + recv_k1[size_t(j)]);
      }
    std::vector<int32_t> adj(static_cast<size_t>(roff[size_t(S)]), -1);
    for (size_t j = 0; j < ridx.size(); ++j)
      if (ridx[j] >= 0) adj[size_t(ridx[j])] = int32_t(j);
    m.send_idx = i32_tensor(sidx, dev);
    m.recv_idx = i32_tensor(ridx, dev);
    m.adj_send_idx = i32_tensor(adj, dev);
    return per_b.emplace(B, std::move(m)).first->second;
  }

  // The adjoint (transpose) of run() for training: g_out [B, n_out, C] (dL/d output rows) →
  // dL/d input rows [B, n_in, C] F32. Each received row travels back along its forward path
  // (ONE all-to-all with the forward's counts swapped; padding slots as zero rows) and is ADDED
  // into the input row it came from: an input row sent to several ranks (a sparse row feeding
  // every replica of a replicated full layout, F < S) gets the sum of their gradients.
  Tensor run_adjoint(Communicator& comm, const Tensor& g_out) {
    const int64_t B = g_out.size(0), C = g_out.size(2);
    const PerB& m = maps(B, g_out.device());
    const Tensor gc = g_out.contiguous().view({B * n_out, C});
    Tensor sendbuf = Tensor::empty({m.adj_send_idx.numel(), C}, g_out.dtype(), g_out.device());
    if (sendbuf.numel()) ops::gather_rows(gc, m.adj_send_idx, sendbuf);
    Tensor recvbuf = Tensor::empty({m.send_idx.numel(), C}, g_out.dtype(), g_out.device());
    comm.all_to_all(sendbuf, m.recv_cnt, recvbuf, m.send_cnt);
    Tensor gin = Tensor::zeros({B * n_in, C}, DType::F32, g_out.device());
    if (recvbuf.numel() && gin.numel()) ops::scatter_add_rows(recvbuf, m.send_idx, gin);
    return gin.view({B, n_in, C});
  }

  Tensor run(Communicator& comm, const Tensor& x) {
    const int64_t B = x.size(0), C = x.size(2);
    const PerB& m = maps(B, x.device());
    const Tensor xc = x.contiguous().view({B * n_in, C});
    Tensor sendbuf = Tensor::empty({m.send_idx.numel(), C}, x.dtype(), x.device());
    if (sendbuf.numel()) ops::gather_rows(xc, m.send_idx, sendbuf);
    Tensor recvbuf = Tensor::empty({std::accumulate(m.recv_cnt.begin(), m.recv_cnt.end(), int64_t(0)), C},
                                   x.dtype(), x.device());
    comm.all_to_all(sendbuf, m.send_cnt, recvbuf, m.recv_cnt);
    Tensor out = Tensor::empty({B * n_out, C}, x.dtype(), x.device());
    if (out.numel()) ops::gather_rows(recvbuf, m.recv_idx, out);
    return out.view({B, n_out, C});
  }
};

class ParallelLayout final : public SequenceParallel {
 public:
  ParallelLayout(std::shared_ptr<Communicator> comm, bool ulysses_only)
      : comm_(std::move(comm)), ulysses_only_(ulysses_only) {
    OSP_CHECK(comm_ != nullptr, "make_ssp/make_ulysses: null communicator");
  }
  const char* name() const override { return ulysses_only_ ? "ulysses" : "ssp"; }
  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  uint64_t bytes_sent() const override {
    return comm_->bytes_sent() + (sub_ ? sub_->bytes_sent() : 0) +
           (full_comm_ ? full_comm_->bytes_sent() : 0);
  }
  void reset_bytes() override {
    comm_->reset_bytes();
    if (sub_) sub_->reset_bytes();
    if (full_comm_) full_comm_->reset_bytes();
  }

  void broadcast(Tensor& x) override {
    if (comm_->size() > 1) comm_->broadcast(x, 0);
  }

  void setup(const ForwardPlan& plan) override {
    if (have_plan_ && same_plan(plan, plan_)) return;
    check_plan(plan);
    have_plan_ = false;
    const int S = comm_->size(), me = comm_->rank();
    const auto& g = plan.grid;
    const int64_t N = g.numel();
    bool any_sparse = false;
    for (BlockKind k : plan.kinds) any_sparse |= k != BlockKind::Full;
    OSP_CHECK(!(ulysses_only_ && any_sparse),
              "make_ulysses: the plan has Skiparse (token/group) blocks; Ulysses runs full "
              "attention only — use make_ssp for the hybrid model or a 'full' block plan");
    // The single backend copies tensors on whatever device they live; mpi needs host tensors
    // and nccl this rank's GPU.
    const bool single = std::string(comm_->backend()) == "single";
    if (!single && (comm_->device().is_cuda() || plan.device.is_cuda()))
      OSP_CHECK(plan.device == comm_->device(), name(), ": the plan's device ",
                plan.device.name(), " differs from the communicator's ", comm_->device().name(),
                " (", comm_->backend(), " backend)");
    // ---- full blocks: Ulysses over F ranks, chunks of ⌈N/F⌉ (torch.chunk). F = S when the
    // heads split evenly, else gcd(heads, S) and the S/F groups compute the full blocks
    // redundantly (spec §4.1). ----
    F_ = plan.heads % S == 0 ? S : std::gcd(plan.heads, S);
    const int64_t chunk = (N + F_ - 1) / F_;
    OSP_CHECK((F_ - 1) * chunk < N, name(), ": the sequence of ", N, " tokens is too short for ",
              F_, " Ulysses ranks (chunks of ", chunk, " leave the last rank empty)");
    geo_ = {};
    geo_.grid = g;
    geo_.P = plan.P;
    geo_.Hp = g.H, geo_.Wp = g.W, geo_.L = N;
    if (any_sparse) geo_ = sparse::skiparse_geometry(g, plan.P);
    const int64_t Hp = geo_.Hp, Wp = geo_.Wp, Np = g.T * Hp * Wp;
    auto pid = [&](int64_t n) {
      const int64_t t = n / (g.H * g.W), y = (n / g.W) % g.H, x = n % g.W;
      return (t * Hp + y) * Wp + x;
    };
    layouts_[kFull] = Layout{};
    Layout& full = layouts_[kFull];
    full.kind = kFull;
    full.attn = Attn::Ulysses;
    full.ids.resize(size_t(S));
    full.lens.resize(size_t(S));
    for (int r = 0; r < S; ++r)
      for (int64_t n = (r % F_) * chunk; n < std::min<int64_t>((r % F_ + 1) * chunk, N); ++n)
        full.ids[size_t(r)].push_back(pid(n));
    full.slots = full.ids;
    for (int r = 0; r < S; ++r) full.slot_len.push_back(std::max<int64_t>(full.n(r), 1));
    // ---- sparse blocks ----
    U_ = 1;
    if (any_sparse) {
      const int P2 = plan.P * plan.P;
      if (S <= P2) {
        OSP_CHECK(P2 % S == 0, "ssp: ", S, " ranks cannot share the P² = ", P2,
                  " Skiparse sub-sequences evenly; use a rank count that divides ", P2,
                  " (or a multiple of ", P2, " for the 2D tile split)");
      } else {
        OSP_CHECK(S % P2 == 0, "ssp: ", S, " ranks is more than P² = ", P2,
                  " but not a multiple of it; the 2D tile split needs ranks = P²·U");
        U_ = S / P2;
        OSP_CHECK(plan.heads % U_ == 0, "ssp: the inner Ulysses degree U = ", U_, " (ranks ", S,
                  " / P² ", P2, ") must divide the ", plan.heads, " heads");
      }
      for (int id : {kToken, kGroup}) build_sparse_layout(plan, id, S);
    }
    // Sub-communicator of the U ranks sharing a sub-sequence (collective: every rank calls).
    if (U_ > 1 && (!sub_ || sub_->size() != U_)) sub_ = comm_->split_even(U_);
    if (U_ == 1) sub_.reset();
    if (F_ < S && (!full_comm_ || full_comm_->size() != F_)) full_comm_ = comm_->split_even(F_);
    if (F_ == S) full_comm_.reset();
    plan_ = plan;
    // ---- owner tables and exchanges ----
    owner_rank_.assign(3, {});
    owner_row_.assign(3, {});
    owner_slot_.assign(3, {});
    for (int id = 0; id < 3; ++id) {
      if (id != kFull && !any_sparse) continue;
      auto& orr = owner_rank_[size_t(id)];
      auto& orw = owner_row_[size_t(id)];
      auto& ors = owner_slot_[size_t(id)];
      orr.assign(size_t(Np), -1);
      orw.assign(size_t(Np), -1);
      ors.assign(size_t(Np), -1);
      const Layout& L = layouts_[id];
      // Full layouts are replicated in S/F groups: the table holds group 0 (ranks 0..F-1);
      // owner() maps it to the group of the rank asking.
      const int owners = id == kFull ? F_ : S;
      for (int r = 0; r < owners; ++r) {
        for (size_t j = 0; j < L.slots[size_t(r)].size(); ++j) {
          orr[size_t(L.slots[size_t(r)][j])] = r;
          ors[size_t(L.slots[size_t(r)][j])] = int32_t(j);
        }
        for (size_t j = 0; j < L.ids[size_t(r)].size(); ++j)
          orw[size_t(L.ids[size_t(r)][j])] = int32_t(j);
      }
    }
    exch_.clear();
    const size_t nb = plan.kinds.size();
    enter_.assign(nb, -1);
    for (size_t i = 1; i < nb; ++i) {
      const int a = layout_id(plan.kinds[i - 1]), b = layout_id(plan.kinds[i]);
      if (a == b) continue;
      enter_[i] = a * 3 + b;
      if (!exch_.count(enter_[i])) exch_.emplace(enter_[i], build_exchange(a, b));
    }
    // ---- this rank's RoPE tables, row lengths, input/output maps ----
    for (int id = 0; id < 3; ++id) {
      rope_[id] = Tensor();
      seq_lens_[id] = Tensor();
      input_map_[id] = Tensor();
      tok_host_[id].clear();
      if (id != kFull && !any_sparse) continue;
      const Layout& L = layouts_[id];
      const auto& ids = L.ids[size_t(me)];
      std::vector<int32_t> tok(ids.size());
      for (size_t j = 0; j < ids.size(); ++j)
        tok[j] = int32_t(sparse::padded_to_full(g, Hp, Wp, ids[j]));
      const int64_t n = int64_t(ids.size());
      rope_[id] = rope_cos_sin(g, plan.head_dim, tok.data(), n)
                      .view({1, n, plan.head_dim / 2, 2})
                      .to(plan.device);
      input_map_[id] = i32_tensor(tok, plan.device);
      tok_host_[id] = tok;
      if (L.attn == Attn::Packed) seq_lens_[id] = i32_tensor(L.lens[size_t(me)], Device::cpu());
    }
    for (auto& o : output_maps_) o.reset();
    ulysses_cache_.clear();
    have_plan_ = true;
  }

  Tensor scatter_input(const Tensor& x_full) override {
    require_plan("scatter_input");
    OSP_CHECK(x_full.dim() == 3 && x_full.size(1) == plan_.grid.numel(),
              "scatter_input: expected x_full [B, ", plan_.grid.numel(), ", C], got ",
              x_full.desc());
    check_device(x_full, "scatter_input");
    const int id = layout_id(plan_.kinds[0]);
    return gather_per_sample(x_full, input_map_[id], layouts_[id].n(rank()));
  }

  Tensor enter_block(int i, const Tensor& x_local) override {
    require_plan("enter_block");
    OSP_CHECK(i >= 1 && size_t(i) < plan_.kinds.size(), "enter_block: block index ", i,
              " outside [1, ", plan_.kinds.size(), ")");
    check_hidden(x_local, layout_id(plan_.kinds[size_t(i) - 1]), "enter_block");
    const int key = enter_[size_t(i)];
    if (key < 0) return x_local;
    return exch_.at(key).run(*comm_, x_local);
  }

  Tensor enter_block_backward(int i, const Tensor& grad_local) override {
    require_plan("enter_block_backward");
    OSP_CHECK(i >= 1 && size_t(i) < plan_.kinds.size(), "enter_block_backward: block index ", i,
              " outside [1, ", plan_.kinds.size(), ")");
    check_hidden(grad_local, layout_id(plan_.kinds[size_t(i)]), "enter_block_backward");
    // The transpose of block i's forward exchange (not the forward exchange of the reversed
    // layouts: with replicated full layouts those differ, spec §4.9).
    const int key = enter_[size_t(i)];
    if (key < 0) return grad_local;
    return exch_.at(key).run_adjoint(*comm_, grad_local);
  }

  const Tensor& rope_table(int i) override {
    require_plan("rope_table");
    OSP_CHECK(i >= 0 && size_t(i) < plan_.kinds.size(), "rope_table: block index ", i,
              " outside [0, ", plan_.kinds.size(), ")");
    return rope_[layout_id(plan_.kinds[size_t(i)])];
  }

  void self_attention(int i, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                      const AttentionFn& fn) override {
    const AttentionFn& attend = fn ? fn : default_attention();
    const int id = check_attention(i, q, k, v, out, "self_attention");
    const Layout& L = layouts_[id];
    const int64_t n = L.n(rank());
    if (L.attn == Attn::Ulysses) {
      ulysses_attention(id, q, k, v, out, attend);
      return;
    }
    if (n == 0) return;
    ops::AttentionArgs args;
    args.seq_lens = &seq_lens_[id];
    attend(q, k, v, out, args);
  }

  // Training attention (spec §4.9): packed layouts attend locally; Ulysses layouts (full
  // blocks, and the 2D tile split's sub-sequences) run the forward with lse and its backward
  // through the same head-split all-to-alls as self_attention. lse is returned in this rank's
  // row layout [B, H, n_local] (moved back like a one-channel output), so the DiT keeps it with
  // the block's tape as on one device.
  void self_attention_train(int i, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                            Tensor& lse) override {
    const int id = check_attention(i, q, k, v, out, "self_attention_train");
    const int64_t B = q.size(0), n = q.size(1), H = plan_.heads;
    OSP_CHECK(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) == n &&
                  lse.dtype() == DType::F32 && lse.is_contiguous(),
              "self_attention_train(block ", i, "): expected lse F32 [", B, ", ", H, ", ", n,
              "] contiguous, got ", lse.desc());
    if (layouts_[id].attn == Attn::Ulysses) {
      ulysses_train(id, q, k, v, out, lse);
      return;
    }
    ops::AttentionArgs args;
    args.seq_lens = &seq_lens_[id];
    ops::attention_forward_lse(q, k, v, out, lse, args);
  }

  void self_attention_backward(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out, const Tensor& lse, const Tensor& dout,
                               Tensor& dq, Tensor& dk, Tensor& dv) override {
    const int id = check_attention(i, q, k, v, out, "self_attention_backward");
    OSP_CHECK(dout.shape() == q.shape() && dq.shape() == q.shape() && dk.shape() == q.shape() &&
                  dv.shape() == q.shape() && dq.is_contiguous() && dk.is_contiguous() &&
                  dv.is_contiguous(),
              "self_attention_backward(block ", i, "): dout, dq, dk, dv must have q's shape ",
              q.desc(), " (dq, dk, dv contiguous)");
    OSP_CHECK(lse.dim() == 3 && lse.size(1) == plan_.heads && lse.size(2) == q.size(1),
              "self_attention_backward(block ", i, "): lse ", lse.desc(), " is not [B, H, n]");
    if (layouts_[id].attn == Attn::Ulysses) {
      ulysses_backward(id, q, k, v, out, lse, dout, dq, dk, dv);
      return;
    }
    ops::AttentionArgs args;
    args.seq_lens = &seq_lens_[id];
    ops::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, args);
  }

  Tensor gather_output(const Tensor& x_local) override {
    require_plan("gather_output");
    const int id = layout_id(plan_.kinds.back());
    check_hidden(x_local, id, "gather_output");
    return gather_from(id, x_local);
  }

  // Adjoints (training). Convention: the loss is ONE number computed from the gathered output
  // (every rank passes the same dL/dv), and every forward value is a function of the inputs
  // alone, so each rank's backward yields its share of every gradient and the shares SUM to the
  // single-device gradient (train/data_parallel.h reduce_sp_gradients sums the parameter
  // gradients over the group).
  //
  // Input scatter: a token's row lives on exactly one rank, or — a replicated full layout
  // (F < S) — on one rank of every group of F; the adjoint of handing the same x to several
  // rows is the sum of their gradients. Without replication that is the gather of the rows
  // (identical on every rank); with it, a sum over all ranks of the zero-filled [B, N, C].
  Tensor scatter_input_backward(const Tensor& grad_local) override {
    require_plan("scatter_input_backward");
    const int id = layout_id(plan_.kinds[0]);
    check_hidden(grad_local, id, "scatter_input_backward");
    if (!(id == kFull && F_ < size())) return gather_from(id, grad_local);
    const int64_t B = grad_local.size(0), C = grad_local.size(2), N = plan_.grid.numel();
    const int64_t n = grad_local.size(1);
    Tensor full = Tensor::zeros({B * N, C}, DType::F32, grad_local.device());
    if (n > 0) {
      // rows of sample b go to b·N + token
      const std::vector<int32_t>& tok = tok_host_[id];
      std::vector<int32_t> idx(size_t(B * n));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < n; ++j) idx[size_t(b * n + j)] = int32_t(b * N + tok[size_t(j)]);
      ops::scatter_add_rows(grad_local.contiguous().view({B * n, C}),
                            i32_tensor(idx, grad_local.device()), full);
    }
    comm_->all_reduce(full);
    return full.view({B, N, C});
  }
  // Output gather: the adjoint of copying row p to every rank is the sum of the ranks' row
  // gradients; the loss is counted once, so dL/dv (the same on every rank) goes to ONE holder
  // of each row — its owner in sparse layouts and full layouts with F = S, the replica in group
  // 0 when full layouts are replicated (the other groups' rows get zero gradient: the replicas
  // compute the same values, so their backward contributes nothing the sum needs).
  Tensor gather_output_backward(const Tensor& grad_full) override {
    require_plan("gather_output_backward");
    OSP_CHECK(grad_full.dim() == 3 && grad_full.size(1) == plan_.grid.numel(),
              "gather_output_backward: expected [B, ", plan_.grid.numel(), ", C], got ",
              grad_full.desc());
    check_device(grad_full, "gather_output_backward");
    const int id = layout_id(plan_.kinds.back());
    if (id == kFull && rank() / F_ != 0)
      return Tensor::zeros({grad_full.size(0), layouts_[id].n(rank()), grad_full.size(2)},
                           grad_full.dtype(), grad_full.device());
    return gather_per_sample(grad_full, input_map_[id], layouts_[id].n(rank()));
  }

 private:
  // All of layout `id`'s rows of every rank → [B, N, Cx] in full order on every rank.
  Tensor gather_from(int id, const Tensor& x_local) {
    const Layout& L = layouts_[id];
    // Full layouts gather within this rank's group of F ranks (every group holds everything).
    Communicator& gc = id == kFull ? full_comm() : *comm_;
    const int G = gc.size(), base = rank() - gc.rank();
    const int64_t B = x_local.size(0), Cx = x_local.size(2), N = plan_.grid.numel();
    int64_t nmax = 0;
    for (int r = 0; r < G; ++r) nmax = std::max(nmax, L.n(base + r));
    // Equal-size all-gather of [B, nmax, Cx] blocks, then one gather into full order.
    Tensor mine = Tensor::zeros({B, nmax, Cx}, x_local.dtype(), x_local.device());
    if (L.n(rank()) > 0)
      for (int64_t b = 0; b < B; ++b)
        mine.select(0, b).slice(0, 0, L.n(rank())).copy_from(x_local.select(0, b));
    Tensor all = Tensor::empty({int64_t(G) * B * nmax, Cx}, x_local.dtype(), x_local.device());
    gc.all_gather(mine, all);
    auto& output_ = output_maps_[id];
    if (!output_ || output_->B != B || output_->nmax != nmax) {
      output_ = std::make_unique<OutputMap>();
      output_->B = B;
      output_->nmax = nmax;
      const auto& orw = owner_row_[size_t(id)];
      std::vector<int32_t> idx(size_t(B * N));
      const auto& g = plan_.grid;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t n = 0; n < N; ++n) {
          const int64_t t = n / (g.H * g.W), y = (n / g.W) % g.H, x = n % g.W;
          const int64_t p = (t * geo_.Hp + y) * geo_.Wp + x;
          const int member = owner(id, p, rank()) - base;
          idx[size_t(b * N + n)] = int32_t((int64_t(member) * B + b) * nmax + orw[size_t(p)]);
        }
      output_->idx = i32_tensor(idx, x_local.device());
    }
    Tensor out = Tensor::empty({B * N, Cx}, x_local.dtype(), x_local.device());
    ops::gather_rows(all, output_->idx, out);
    return out.view({B, N, Cx});
  }

 public:

  // Bytes this rank sends per forward (same tables as the real exchanges; no data moves).
  CommVolume volume(int64_t B, size_t eb, int64_t out_ch) const {
    require_plan("volume");
    CommVolume v;
    const int S = size(), me = rank();
    const int64_t C = int64_t(plan_.heads) * plan_.head_dim;
    v.S = S;
    v.U = U_;
    for (size_t i = 0; i < plan_.kinds.size(); ++i) {
      const int id = layout_id(plan_.kinds[i]);
      if (id == kFull) ++v.full_blocks;
      else ++v.sparse_blocks;
      if (i > 0 && enter_[i] >= 0) {
        const Exchange& ex = exch_.at(enter_[i]);
        uint64_t rows = 0;
        for (int d = 0; d < S; ++d)
          if (d != me) rows += uint64_t(ex.send_cnt1[size_t(d)]);
        const uint64_t bytes = rows * uint64_t(B * C) * eb;
        const bool sw = id != kFull && layout_id(plan_.kinds[i - 1]) != kFull;
        if (sw) ++v.switches, v.switch_bytes += bytes;
        else ++v.transitions, v.transition_bytes += bytes;
      }
      const Layout& L = layouts_[id];
      if (L.attn != Attn::Ulysses) continue;
      const int Ug = id == kFull ? F_ : U_;
      const int base = me - me % Ug;
      const int64_t hs_d = C / Ug, n = L.n(me);
      int64_t others = 0;
      for (int u = 0; u < Ug; ++u)
        if (base + u != me) others += L.n(base + u);
      // q, k, v: my rows for every other head group; out: the other ranks' rows, my heads.
      const uint64_t bytes = uint64_t(3 * B * n * hs_d * (Ug - 1) + B * others * hs_d) * eb;
      (id == kFull ? v.full_bytes : v.sparse_ulysses_bytes) += bytes;
    }
    if (out_ch > 0) {
      const int id = layout_id(plan_.kinds.back());
      const Layout& L = layouts_[id];
      const int G = id == kFull ? F_ : S, base = me - me % G;
      int64_t nmax = 0;
      for (int r = 0; r < G; ++r) nmax = std::max(nmax, L.n(base + r));
      v.output_bytes = uint64_t(G - 1) * uint64_t(B * nmax * out_ch) * eb;
    }
    return v;
  }

 private:
  // Layout of sparse kind `id` over S ranks.
  void build_sparse_layout(const ForwardPlan& plan, int id, int S) {
    const BlockKind kind = id == kToken ? BlockKind::Token : BlockKind::Group;
    const auto& g = plan.grid;
    const int P2 = plan.P * plan.P;
    const int64_t L = geo_.L;
    Layout lay;
    lay.kind = id;
    lay.ids.resize(size_t(S));
    lay.slots.resize(size_t(S));
    lay.slot_len.assign(size_t(S), 1);
    lay.lens.resize(size_t(S));
    const auto real = [&](int64_t p) {
      return sparse::padded_to_full(g, geo_.Hp, geo_.Wp, p) >= 0;
    };
    if (U_ == 1) {
      // Rank r owns sub-sequences [r·G, (r+1)·G): their real tokens as rows (padding-last order,
      // so dropping the padding keeps each sub-sequence contiguous), all L positions as slots.
      const int G = P2 / S;
      const auto pos = sparse::skiparse_padded_positions(g, plan.P, kind, true);
      const auto lens = sparse::skiparse_row_lengths(g, plan.P, kind);
      lay.attn = Attn::Packed;
      for (int r = 0; r < S; ++r) {
        lay.slot_len[size_t(r)] = L;
        lay.slots[size_t(r)].assign(pos.begin() + int64_t(r) * G * L,
                                    pos.begin() + int64_t(r + 1) * G * L);
        for (int64_t p : lay.slots[size_t(r)])
          if (real(p)) lay.ids[size_t(r)].push_back(p);
        lay.lens[size_t(r)].assign(lens.begin() + r * G, lens.begin() + (r + 1) * G);
        int64_t have = 0;
        for (int j = 0; j < G; ++j) have += lens[size_t(r * G + j)];
        OSP_CHECK(have > 0, "ssp: rank ", r, " would hold no real token in the ",
                  layout_name(id), " layout of grid ", g.T, "x", g.H, "x", g.W);
      }
    } else {
      // 2D tile split (§4.6): rank s·U + u holds the real tokens of sub-sequence s inside tile u
      // (reference in-group order, no padding rows: Ulysses gathers the U tiles of a
      // sub-sequence, so no masks are needed).
      int uh = U_ / int(std::ceil(std::sqrt(double(U_))));
      int uw = U_ / uh;
      OSP_CHECK(uh * uw == U_, "ssp: the inner Ulysses degree U = ", U_,
                " has no 2D tile factorisation U_h·U_w (U_h = U div ceil(sqrt U))");
      const int64_t bh = (g.H + P2 - 1) / P2, bw = (g.W + P2 - 1) / P2;
      const int64_t seq_h = (bh + uh - 1) / uh * P2, seq_w = (bw + uw - 1) / uw * P2;
      const auto pos = sparse::skiparse_padded_positions(g, plan.P, kind, false);
      lay.attn = Attn::Ulysses;
      for (int r = 0; r < S; ++r) {
        const int s = r / U_, u = r % U_;
        const int64_t ih = u / uw, iw = u % uw;
        const int64_t y0 = ih * seq_h, y1 = std::min((ih + 1) * seq_h, g.H);
        const int64_t x0 = iw * seq_w, x1 = std::min((iw + 1) * seq_w, g.W);
        for (int64_t j = 0; j < L; ++j) {
          const int64_t p = pos[size_t(int64_t(s) * L + j)];
          const int64_t y = (p / geo_.Wp) % geo_.Hp, x = p % geo_.Wp;
          if (real(p) && y >= y0 && y < y1 && x >= x0 && x < x1) lay.ids[size_t(r)].push_back(p);
        }
        OSP_CHECK(!lay.ids[size_t(r)].empty(), "ssp: grid ", g.T, "x", g.H, "x", g.W,
                  " is too small for the 2D tile split with U = ", U_, ": rank ", r,
                  " (sub-sequence ", s, ", tile ", u, ") would hold no token in the ",
                  layout_name(id), " layout");
        lay.slots[size_t(r)] = lay.ids[size_t(r)];
        lay.slot_len[size_t(r)] = lay.n(r);
      }
    }
    layouts_[id] = std::move(lay);
  }

  // Rank holding padded id p of layout `id` for `asker` (-1: nobody, i.e. padding in full).
  int owner(int id, int64_t p, int asker) const {
    const int r = owner_rank_[size_t(id)][size_t(p)];
    if (r < 0 || id != kFull) return r;
    return asker / F_ * F_ + r;  // the replica in the asker's group of F ranks
  }
  Communicator& full_comm() const { return full_comm_ ? *full_comm_ : *comm_; }

  // Reference in-group position of padded id p in layout kind `id` (sort key of exchanges).
  int64_t ref_pos(int id, int64_t p) const {
    const auto& g = plan_.grid;
    const int64_t Hp = geo_.Hp, Wp = geo_.Wp, P = geo_.P, P2 = P * P;
    const int64_t t = p / (Hp * Wp), y = (p / Wp) % Hp, x = p % Wp;
    if (id == kFull) return (t * g.H + y) * g.W + x;
    if (id == kToken) return (t * (Hp / P) + y / P) * (Wp / P) + x / P;
    const int64_t y2 = y / P2, p2 = y % P, x2 = x / P2, q2 = x % P;
    return (((t * (Hp / P2) + y2) * P + p2) * (Wp / P2) + x2) * P + q2;
  }

  Exchange build_exchange(int a, int b) {
    const int S = size(), me = rank();
    const Layout &A = layouts_[a], &Bl = layouts_[b];
    const auto& orw_a = owner_row_[size_t(a)];
    const auto& ors_a = owner_slot_[size_t(a)];
    const auto& orw_b = owner_row_[size_t(b)];
    Exchange ex;
    ex.n_in = A.n(me);
    ex.n_out = Bl.n(me);
    ex.send_cnt1.assign(size_t(S), 0);
    ex.recv_cnt1.assign(size_t(S), 0);
    struct Entry {
      int64_t k0, k1, k2;
      int32_t src_row, dst_row;  // -1: a padding slot (zero row in the buffer)
    };
    // Chunk order: destination sub-sequence, source sub-sequence, reference position in the
    // destination layout. Sub-sequences are counted in slots (padding included), so the order
    // is the §4.3 one whether or not a slot holds a stored row.
    auto key_of = [&](int src, int dst, int64_t dst_slot, int64_t p) {
      const int64_t src_slot = ors_a[size_t(p)];
      return Entry{b == kFull ? 0 : dst_slot / Bl.slot_len[size_t(dst)],
                   a == kFull ? 0 : src_slot / A.slot_len[size_t(src)], ref_pos(b, p),
                   orw_a[size_t(p)], orw_b[size_t(p)]};
    };
    auto by_key = [](const Entry& x, const Entry& y) {
      return std::tie(x.k0, x.k1, x.k2) < std::tie(y.k0, y.k1, y.k2);
    };
    // Sends: the slots of every rank's B layout that my A layout holds, chunk by destination.
    for (int dst = 0; dst < S; ++dst) {
      std::vector<Entry> e;
      const auto& slots = Bl.slots[size_t(dst)];
      for (size_t j = 0; j < slots.size(); ++j)
        if (owner(a, slots[j], dst) == me) e.push_back(key_of(me, dst, int64_t(j), slots[j]));
      std::sort(e.begin(), e.end(), by_key);
      for (const Entry& x : e) ex.send_rows1.push_back(x.src_row);
      ex.send_cnt1[size_t(dst)] = int64_t(e.size());
    }
    // Receives: my B slots, chunk by source (same order as the source builds it); padding slots
    // take their place in the buffer and are dropped.
    ex.recv_src1.assign(size_t(ex.n_out), -1);
    ex.recv_k1.assign(size_t(ex.n_out), 0);
    std::vector<std::vector<Entry>> from(static_cast<size_t>(S));
    const auto& slots = Bl.slots[size_t(me)];
    for (size_t j = 0; j < slots.size(); ++j) {
      const int src = owner(a, slots[j], me);
      if (src >= 0) from[size_t(src)].push_back(key_of(src, me, int64_t(j), slots[j]));
    }
    for (int src = 0; src < S; ++src) {
      auto& e = from[size_t(src)];
      std::sort(e.begin(), e.end(), by_key);
      for (size_t k = 0; k < e.size(); ++k) {
        if (e[k].dst_row < 0) continue;
        ex.recv_src1[size_t(e[k].dst_row)] = src;
        ex.recv_k1[size_t(e[k].dst_row)] = int32_t(k);
      }
      ex.recv_cnt1[size_t(src)] = int64_t(e.size());
    }
    return ex;
  }

  // Ulysses self-attention: sequence-sharded q/k/v → (all-to-all) whole sequence with a head
  // slice → attention → (all-to-all) back. Full blocks: over all ranks; tile layouts: over the
  // U ranks sharing a sub-sequence.
  //
  // The head slice of each rank is processed in C chunks (ulysses_chunks): every chunk's q/k/v
  // exchange is started up front on the communicator's side stream, and chunk c's attention runs
  // while chunk c+1's inputs and chunk c−1's output are in flight (backends that cannot
  // overlap run the same steps synchronously). Results do not depend on C (except through an
  // AttentionFn that quantizes per call, e.g. FP8 attention: its per-tensor scales are per chunk).
  void ulysses_attention(int id, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                         const AttentionFn& attend) {
    const Layout& L = layouts_[id];
    Communicator& uc = id == kFull ? full_comm() : *sub_;
    const int U = uc.size();
    const int64_t B = q.size(0), H = plan_.heads, D = plan_.head_dim, Hs = H / U;
    std::vector<int64_t> lens(static_cast<size_t>(U));
    const int base = rank() - uc.rank();  // first world rank of this Ulysses group (contiguous)
    for (int u = 0; u < U; ++u) lens[size_t(u)] = L.n(base + u);
    const int64_t n = lens[size_t(uc.rank())];
    const int64_t total = std::accumulate(lens.begin(), lens.end(), int64_t(0));
    const UlyssesMaps& m = ulysses_maps(id, B, lens, q.device());
    const int64_t C = ulysses_chunks(Hs, uc.overlaps()), Hc = Hs / C, W = Hc * D;
    std::vector<int64_t> send_rows(static_cast<size_t>(U), B * n), recv_rows(static_cast<size_t>(U));
    for (int u = 0; u < U; ++u) recv_rows[size_t(u)] = B * lens[size_t(u)];
    // [B, n, H, D] = [B, n, U, C, Hc·D] → [C][U (dst head group)][B][n][Hc·D], one copy each.
    auto to_chunks = [&](const Tensor& x) {
      return x.contiguous().view({B, n, U, C, W}).permute({3, 2, 0, 1, 4}).contiguous()
          .view({C, U * B * n, W});
    };
    const Tensor qs = to_chunks(q), ks = to_chunks(k), vs = to_chunks(v);
    // Inputs of every chunk: recv [C][U (src)][B][n_src][Hc·D].
    Tensor qr = Tensor::empty({C, B * total, W}, q.dtype(), q.device());
    Tensor kr = Tensor::empty({C, B * total, W}, q.dtype(), q.device());
    Tensor vr = Tensor::empty({C, B * total, W}, q.dtype(), q.device());
    std::vector<int> in_ticket(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
      for (auto [s, r] : {std::pair<const Tensor*, Tensor*>{&qs, &qr}, {&ks, &kr}, {&vs, &vr}}) {
        Tensor rc = r->select(0, c);
        in_ticket[size_t(c)] = uc.all_to_all_start(s->select(0, c), send_rows, rc, recv_rows);
      }
    }
    // Outputs: [C][U (src head group)][B][n][Hc·D]; every buffer lives until the final wait.
    Tensor orecv = Tensor::empty({C, U * B * n, W}, q.dtype(), q.device());
    std::vector<Tensor> keep;
    int last = -1;
    for (int64_t c = 0; c < C; ++c) {
      uc.wait(in_ticket[size_t(c)]);
      auto seq = [&](const Tensor& r) {  // recv [U][B][n_src] rows → [B, total, Hc, D]
        Tensor rc = r.select(0, c);
        if (B == 1) return rc.view({B, total, Hc, D});
        Tensor t = Tensor::empty({B * total, W}, q.dtype(), q.device());
        ops::gather_rows(rc, m.to_seq, t);
        return t.view({B, total, Hc, D});
      };
      Tensor qf = seq(qr), kf = seq(kr), vf = seq(vr);
      Tensor of = Tensor::empty({B, total, Hc, D}, q.dtype(), q.device());
      attend(qf, kf, vf, of, {});
      Tensor send = of.view({B * total, W});
      if (B != 1) {
        Tensor s2 = Tensor::empty({B * total, W}, q.dtype(), q.device());
        ops::gather_rows(send, m.from_seq, s2);
        send = s2;
      }
      Tensor oc = orecv.select(0, c);
      last = uc.all_to_all_start(send, recv_rows, oc, send_rows);
      keep.push_back(qf), keep.push_back(kf), keep.push_back(vf), keep.push_back(of);
      keep.push_back(send);
    }
    uc.wait(last);  // the side stream is FIFO: every exchange above is done
    out.view({B, n, U, C, W})
        .copy_from(orecv.view({C, U, B, n, W}).permute({2, 3, 1, 0, 4}));
  }

  struct UlyssesMaps {
    Tensor to_seq, from_seq;  // recv [src][b][k] ↔ sequence [b][src][k] (B > 1 only)
  };
  // ---- Ulysses for training: this rank's rows of every head ↔ every rank's rows of this
  // rank's head group, for several tensors in ONE all-to-all (stacked along the channels).
  struct UGroup {
    Communicator* uc = nullptr;
    int U = 1;
    int64_t B = 0, n = 0, total = 0, Hs = 0;
    std::vector<int64_t> send_rows, recv_rows;  // this rank's B·n to each; B·n_src from each
    const UlyssesMaps* maps = nullptr;
  };
  UGroup ugroup(int id, int64_t B, Device dev) {
    const Layout& L = layouts_[id];
    UGroup g;
    g.uc = id == kFull ? &full_comm() : sub_.get();
    g.U = g.uc->size();
    g.B = B;
    g.Hs = plan_.heads / g.U;
    std::vector<int64_t> lens(static_cast<size_t>(g.U));
    const int base = rank() - g.uc->rank();
    for (int u = 0; u < g.U; ++u) lens[size_t(u)] = L.n(base + u);
    g.n = lens[size_t(g.uc->rank())];
    g.total = std::accumulate(lens.begin(), lens.end(), int64_t(0));
    g.send_rows.assign(size_t(g.U), B * g.n);
    for (int u = 0; u < g.U; ++u) g.recv_rows.push_back(B * lens[size_t(u)]);
    g.maps = &ulysses_maps(id, B, lens, dev);
    return g;
  }
  // xs: each [B, n, U·W] (same dtype) → each [B, total, W] contiguous (W = this group's share
  // of the channels: Hs·D for q/k/v, Hs for lse).
  std::vector<Tensor> ul_to_heads(const UGroup& g, const std::vector<Tensor>& xs, int64_t W) {
    const int64_t m = int64_t(xs.size()), U = g.U, B = g.B, n = g.n, T = g.total;
    const DType dt = xs[0].dtype();
    const Device dev = xs[0].device();
    Tensor stack = Tensor::empty({m, B, n, U, W}, dt, dev);
    for (int64_t i = 0; i < m; ++i) {
      OSP_CHECK(xs[size_t(i)].dtype() == dt, "ulysses: mixed dtypes in one exchange");
      Tensor si = stack.select(0, i);
      si.copy_from(xs[size_t(i)].contiguous().view({B, n, U, W}));
    }
    Tensor send = Tensor::empty({U * B * n, m * W}, dt, dev);
    send.view({U, B, n, m, W}).copy_from(stack.permute({3, 1, 2, 0, 4}));
    Tensor recv = Tensor::empty({B * T, m * W}, dt, dev);
    g.uc->all_to_all(send, g.send_rows, recv, g.recv_rows);
    Tensor seq = recv;
    if (B > 1) {
      seq = Tensor::empty({B * T, m * W}, dt, dev);
      ops::gather_rows(recv, g.maps->to_seq, seq);
    }
    const Tensor sv = seq.view({B, T, m, W});
    std::vector<Tensor> out;
    for (int64_t i = 0; i < m; ++i) {
      Tensor o = Tensor::empty({B, T, W}, dt, dev);
      o.copy_from(sv.select(2, i));
      out.push_back(o);
    }
    return out;
  }
  // The inverse: ys each [B, total, W] → each [B, n, U·W] contiguous.
  std::vector<Tensor> ul_to_rows(const UGroup& g, const std::vector<Tensor>& ys, int64_t W) {
    const int64_t m = int64_t(ys.size()), U = g.U, B = g.B, n = g.n, T = g.total;
    const DType dt = ys[0].dtype();
    const Device dev = ys[0].device();
    Tensor stack = Tensor::empty({m, B, T, W}, dt, dev);
    for (int64_t i = 0; i < m; ++i) {
      OSP_CHECK(ys[size_t(i)].dtype() == dt, "ulysses: mixed dtypes in one exchange");
      Tensor si = stack.select(0, i);
      si.copy_from(ys[size_t(i)].contiguous().view({B, T, W}));
    }
    Tensor seq = Tensor::empty({B * T, m * W}, dt, dev);
    seq.view({B, T, m, W}).copy_from(stack.permute({1, 2, 0, 3}));
    Tensor send = seq;
    if (B > 1) {
      send = Tensor::empty({B * T, m * W}, dt, dev);
      ops::gather_rows(seq, g.maps->from_seq, send);
    }
    Tensor recv = Tensor::empty({U * B * n, m * W}, dt, dev);
    g.uc->all_to_all(send, g.recv_rows, recv, g.send_rows);
    const Tensor rv = recv.view({U, B, n, m, W});
    std::vector<Tensor> out;
    for (int64_t i = 0; i < m; ++i) {
      Tensor o = Tensor::empty({B, n, U, W}, dt, dev);
      o.copy_from(rv.select(3, i).permute({1, 2, 0, 3}));
      out.push_back(o.view({B, n, U * W}));
    }
    return out;
  }

  void ulysses_train(int id, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                     Tensor& lse) {
    const int64_t B = q.size(0), n = q.size(1), H = plan_.heads, D = plan_.head_dim;
    const UGroup g = ugroup(id, B, q.device());
    const int64_t Hs = g.Hs, T = g.total, W = Hs * D;
    const auto h = ul_to_heads(g, {q.view({B, n, H * D}), k.contiguous().view({B, n, H * D}),
                                   v.contiguous().view({B, n, H * D})}, W);
    Tensor of = Tensor::empty({B, T, Hs, D}, out.dtype(), q.device());
    Tensor lf = Tensor::empty({B, Hs, T}, DType::F32, q.device());
    ops::attention_forward_lse(h[0].view({B, T, Hs, D}), h[1].view({B, T, Hs, D}),
                               h[2].view({B, T, Hs, D}), of, lf, {});
    const auto o = ul_to_rows(g, {of.view({B, T, W})}, W);
    out.copy_from(o[0].view(out.shape()));
    const auto l = ul_to_rows(g, {lf.permute({0, 2, 1}).contiguous()}, Hs);  // [B, n, H]
    lse.copy_from(l[0].permute({0, 2, 1}));
  }

  void ulysses_backward(int id, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
    const int64_t B = q.size(0), n = q.size(1), H = plan_.heads, D = plan_.head_dim;
    const UGroup g = ugroup(id, B, q.device());
    const int64_t Hs = g.Hs, T = g.total, W = Hs * D;
    std::vector<Tensor> in;
    for (const Tensor* t : {&q, &k, &v, &out, &dout}) in.push_back(t->contiguous().view({B, n, H * D}));
    std::vector<Tensor> h;
    bool same = true;
    for (const Tensor& t : in) same &= t.dtype() == in[0].dtype();
    if (same) {
      h = ul_to_heads(g, in, W);
    } else {
      for (const Tensor& t : in) h.push_back(ul_to_heads(g, {t}, W)[0]);
    }
    const Tensor lt = ul_to_heads(g, {lse.permute({0, 2, 1}).contiguous()}, Hs)[0];  // [B, T, Hs]
    const Tensor lf = lt.permute({0, 2, 1}).contiguous();                            // [B, Hs, T]
    const Shape hs{B, T, Hs, D};
    Tensor dqh = Tensor::empty(hs, dq.dtype(), q.device());
    Tensor dkh = Tensor::empty(hs, dk.dtype(), q.device());
    Tensor dvh = Tensor::empty(hs, dv.dtype(), q.device());
    ops::attention_backward(h[0].view(hs), h[1].view(hs), h[2].view(hs), h[3].view(hs), lf,
                            h[4].view(hs), dqh, dkh, dvh, {});
    std::vector<Tensor> r;
    if (dq.dtype() == dk.dtype() && dk.dtype() == dv.dtype()) {
      r = ul_to_rows(g, {dqh.view({B, T, W}), dkh.view({B, T, W}), dvh.view({B, T, W})}, W);
    } else {
      for (const Tensor* t : {&dqh, &dkh, &dvh}) r.push_back(ul_to_rows(g, {t->view({B, T, W})}, W)[0]);
    }
    dq.copy_from(r[0].view(dq.shape()));
    dk.copy_from(r[1].view(dk.shape()));
    dv.copy_from(r[2].view(dv.shape()));
  }

  // Head chunks per rank for the Ulysses pipeline: OSP_ULYSSES_CHUNKS when set (must divide
  // the rank's heads), else 1. Measured on 4×H200 (14B-720P, docs/PERF.md "Multi-GPU"): 2 chunks
  // cut the exposed all-to-all time of the full blocks by ~20 % but the forward time moved by
  // less than the run-to-run noise, so the plain path stays the default.
  static int64_t ulysses_chunks(int64_t Hs, bool /*overlaps*/) {
    const int64_t set = g_ulysses_chunks.load();
    if (const int64_t c = set > 0 ? set : engine_settings().ulysses_chunks; c > 0) {
      OSP_CHECK(Hs % c == 0, "Ulysses head chunks ", c, " (OSP_ULYSSES_CHUNKS) must be a positive divisor of ",
                "the ", Hs, " heads each Ulysses rank holds");
      return c;
    }
    return 1;
  }

  const UlyssesMaps& ulysses_maps(int id, int64_t B, const std::vector<int64_t>& lens, Device dev) {
    const auto key = std::make_pair(id, B);
    auto it = ulysses_cache_.find(key);
    if (it != ulysses_cache_.end()) return it->second;
    UlyssesMaps m;
    if (B > 1) {
      const int U = int(lens.size());
      const int64_t total = std::accumulate(lens.begin(), lens.end(), int64_t(0));
      std::vector<int32_t> to_seq(size_t(B * total)), from_seq(size_t(B * total));
      int64_t roff = 0, soff = 0;
      for (int u = 0; u < U; ++u) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t kk = 0; kk < lens[size_t(u)]; ++kk) {
            const int64_t recv_pos = roff + b * lens[size_t(u)] + kk;
            const int64_t seq_pos = b * total + soff + kk;
            to_seq[size_t(seq_pos)] = int32_t(recv_pos);
            from_seq[size_t(recv_pos)] = int32_t(seq_pos);
          }
        roff += B * lens[size_t(u)];
        soff += lens[size_t(u)];
      }
      m.to_seq = i32_tensor(to_seq, dev);
      m.from_seq = i32_tensor(from_seq, dev);
    }
    return ulysses_cache_.emplace(key, std::move(m)).first->second;
  }

  // Checks block i's q, k, v, out for this rank's layout; returns the layout id.
  int check_attention(int i, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                      const char* who) const {
    require_plan(who);
    OSP_CHECK(i >= 0 && size_t(i) < plan_.kinds.size(), who, ": block index ", i,
              " outside [0, ", plan_.kinds.size(), ")");
    const int id = layout_id(plan_.kinds[size_t(i)]);
    const int me = rank();
    const int64_t n = layouts_[id].n(me);
    OSP_CHECK(q.dim() == 4 && q.size(1) == n && q.size(2) == plan_.heads &&
                  q.size(3) == plan_.head_dim,
              who, "(block ", i, "): expected q [B, ", n, ", ", plan_.heads, ", ",
              plan_.head_dim, "] on rank ", me, ", got ", q.desc());
    OSP_CHECK(k.shape() == q.shape() && v.shape() == q.shape() && out.shape() == q.shape(),
              who, "(block ", i, "): q, k, v, out shapes differ: ", q.desc(), ", ", k.desc(),
              ", ", v.desc(), ", ", out.desc());
    OSP_CHECK(out.is_contiguous(), who, ": out must be contiguous, got ", out.desc());
    return id;
  }
  void require_plan(const char* who) const {
    OSP_CHECK(have_plan_, name(), "::", who, ": call setup(plan) first");
  }
  void check_device(const Tensor& x, const char* who) const {
    OSP_CHECK(x.device() == plan_.device, who, ": tensor is on ", x.device().name(),
              " but the plan's device is ", plan_.device.name());
  }
  void check_hidden(const Tensor& x, int id, const char* who) const {
    const int64_t n = layouts_[id].n(rank());
    OSP_CHECK(x.dim() == 3 && x.size(1) == n, name(), "::", who, ": expected hidden [B, ", n,
              ", C] (rank ", rank(), ", ", layout_name(id), " layout), got ", x.desc());
    check_device(x, who);
  }

  std::shared_ptr<Communicator> comm_;
  std::unique_ptr<Communicator> sub_, full_comm_;
  bool ulysses_only_;
  ForwardPlan plan_;
  bool have_plan_ = false;
  int U_ = 1, F_ = 1;
  sparse::SkiparseGeometry geo_;
  Layout layouts_[3];
  // Per layout, per padded-grid position: owning rank (slots), its row (-1: padding) and slot.
  std::vector<std::vector<int32_t>> owner_rank_, owner_row_, owner_slot_;
  std::map<int, Exchange> exch_;
  std::vector<int> enter_;
  Tensor rope_[3], input_map_[3];
  std::vector<int32_t> tok_host_[3];  // input_map_ on the host
  Tensor seq_lens_[3];  // host I32: this rank's packed sub-sequence lengths (Packed layouts)
  struct OutputMap {
    int64_t B = 0, nmax = 0;
    Tensor idx;
  };
  std::unique_ptr<OutputMap> output_maps_[3];
  std::map<std::pair<int, int64_t>, UlyssesMaps> ulysses_cache_;
};

}  // namespace

std::unique_ptr<SequenceParallel> make_ssp(std::shared_ptr<Communicator> comm) {
  return std::make_unique<ParallelLayout>(std::move(comm), false);
}
std::unique_ptr<SequenceParallel> make_ulysses(std::shared_ptr<Communicator> comm) {
  return std::make_unique<ParallelLayout>(std::move(comm), true);
}

CommVolume comm_volume(const ForwardPlan& plan, const std::string& mode, int S, int rank,
                       int64_t B, size_t elem_bytes, int64_t out_channels) {
  OSP_CHECK(mode == "ssp" || mode == "ulysses", "comm_volume: mode must be ssp or ulysses, got '",
            mode, "'");
  OSP_CHECK(B >= 1 && elem_bytes >= 1, "comm_volume: B and elem_bytes must be positive");
  std::shared_ptr<Communicator> comm = make_counting_communicator(S, rank);
  ParallelLayout sp(comm, mode == "ulysses");
  ForwardPlan p = plan;
  p.device = Device::cpu();
  sp.setup(p);
  return sp.volume(B, elem_bytes, out_channels);
}

}  // namespace osp::parallel
