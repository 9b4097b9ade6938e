// How one DiT forward is laid out over ranks. The DiT (model/dit.*) calls these hooks and knows
// nothing about Skiparse layouts or communication; implementations:
//   * single device (S = 1): full or hybrid Skiparse-2D layouts via gathers;
//   * SSP (spec §4): each rank owns P²/S whole sub-sequences; switch = one all-to-all;
//   * Ulysses (head-parallel attention with sequence-sharded everything else).
// Hidden states are [B, n_local, C] (sample-major): in sparse blocks the n_local rows of a
// sample are its local sub-sequences concatenated, each WITHOUT its Skiparse padding rows (a
// padding token never influences a real one: the reference masks it as a key and crops it at the
// end, so not storing it gives the same real-token outputs with fewer rows in every linear).
// Sub-sequence lengths therefore differ (e.g. 19,320 / 18,480 at 720P); attention runs per
// sub-sequence through ops::AttentionArgs::seq_lens.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/ops/ops.h"
#include "osp/sparse/skiparse.h"

namespace osp::parallel {

class Communicator;

// An attention implementation with the signature and semantics of ops::attention.
using AttentionFn = std::function<void(const Tensor& q, const Tensor& k, const Tensor& v,
                                       Tensor& out, const ops::AttentionArgs& args)>;

struct ForwardPlan {
  sparse::Grid grid;
  std::vector<sparse::BlockKind> kinds;  // one per block
  int P = 2;                             // sparse_ratio
  int heads = 0, head_dim = 0;
  Device device;
};

class SequenceParallel {
 public:
  virtual ~SequenceParallel() = default;
  virtual const char* name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Called at the start of every forward (cheap when the plan did not change: cache maps).
  virtual void setup(const ForwardPlan& plan) = 0;

  // x_full [B, N, C]: the patch-embedded tokens (identical on every rank). Returns this rank's
  // rows for block 0.
  virtual Tensor scatter_input(const Tensor& x_full) = 0;
  // Moves the hidden state from the layout of block i-1 to that of block i (i ≥ 1): identity,
  // full→token, token↔group switch, group→full; a gather on one device, an all-to-all on many.
  virtual Tensor enter_block(int i, const Tensor& x_local) = 0;
  // RoPE table for this rank's rows in block i: [Rt, n_rows, D/2, 2] F32 on plan.device, for
  // ops::rope on q/k viewed as [B·Rt, n_local/Rt, H, D] (Rt = 1: one table row per hidden row).
  virtual const Tensor& rope_table(int i) = 0;
  // Self-attention of block i: q,k,v [B, n_local, H, D] → out [B, n_local, H, D]
  // (Ulysses does its all-to-alls in here). `fn`, when set, replaces ops::attention for the
  // attention itself (e.g. the FP8 attention of the DiT's FP8 mode); it must honour
  // AttentionArgs::seq_lens.
  virtual void self_attention(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                              Tensor& out, const AttentionFn& fn = nullptr) = 0;
  // Training variant of self_attention: out and the log-sum-exp lse [B, H, n_local] F32 of
  // ops::attention_forward_lse (ops/backward.h) for block i, and its backward given dout:
  // dq, dk, dv (overwritten, shapes of q, k, v). Implemented on one device and by SSP / Ulysses
  // (Ulysses layouts: lse is moved back to the rank's rows like a one-channel output).
  virtual void self_attention_train(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                                    Tensor& out, Tensor& lse) {
    fail(str("SequenceParallel '", name(), "': self_attention_train (training) is not supported ",
             "yet; train on one device (make_single_device)"));
  }
  virtual void self_attention_backward(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, const Tensor& dout,
                                       Tensor& dq, Tensor& dk, Tensor& dv) {
    fail(str("SequenceParallel '", name(), "': self_attention_backward (training) is not ",
             "supported yet; train on one device (make_single_device)"));
  }
  // After the last block: the full [B, N, C] hidden state on every rank. x_local may have any
  // channel count (applying the per-token head first and gathering its 64 channels moves far
  // fewer bytes than gathering C, as the reference does).
  virtual Tensor gather_output(const Tensor& x_local) = 0;

  // Makes x (any shape, contiguous, on the plan's device) identical on every rank by copying
  // rank 0's values (inputs, noise, timesteps: spec §4.10). No-op on one rank.
  virtual void broadcast(Tensor& x) {}

  // Adjoint of enter_block(i, ·) for training (spec §4.9): moves a gradient from block i's layout
  // back to block i−1's. Every layout change is a permutation (plus zero padding), done as a
  // gather on one device and as ONE all-to-all on many, so the adjoint is the reverse gather /
  // all-to-all — never an all-gather whose backward would drop other ranks' contributions.
  // Distributed, every rank's backward yields its SHARE of each parameter gradient (the rows it
  // holds); the shares sum to the single-device gradient (train/data_parallel.h). Where full
  // blocks are replicated in groups (F < S) this stays exact: gather_output_backward gives each
  // output row's gradient to one replica only, and the adjoint of a row sent to several replicas
  // is the sum of their gradients.
  virtual Tensor enter_block_backward(int i, const Tensor& grad_local) = 0;
  // Adjoint of scatter_input: this rank's block-0 gradient rows → the full [B, N, C] gradient of
  // the (replicated) input, identical on every rank (complete, not a share).
  virtual Tensor scatter_input_backward(const Tensor& grad_local) = 0;
  // Adjoint of gather_output: the full [B, N, Cx] gradient (identical on every rank) → this
  // rank's rows in the last block's layout (padding rows zero).
  virtual Tensor gather_output_backward(const Tensor& grad_full) = 0;

  // Bytes this rank sent through the communicator since the last reset (0 on one device).
  virtual uint64_t bytes_sent() const { return 0; }
  virtual void reset_bytes() {}
};

// One device, no communication. Hybrid layouts through sparse::skiparse_index + ops::gather_rows
// (real tokens only; packed sub-sequences use AttentionArgs::seq_lens in ops::attention).
std::unique_ptr<SequenceParallel> make_single_device();

// Sparse Sequence Parallelism over comm's S ranks (spec §4). Sparse blocks: with S | P² each rank
// owns P²/S whole sub-sequences (padding-last, per-row lengths) and the token↔group switch is one
// all-to-all in the §4.3 buffer layout; with S = P²·U (U > 1) rank s·U + u holds the real tokens
// of sub-sequence s inside 2D tile u (§4.6) and sparse attention runs Ulysses over those U ranks.
// Full blocks: Ulysses over F ranks (contiguous sequence chunks of ⌈N/F⌉ tokens, head split),
// F = S when heads % S == 0, else F = gcd(heads, S) and the S/F groups of F consecutive ranks
// compute the full blocks redundantly (spec §4.1). The full→sparse and sparse→full transitions
// are single all-to-alls.
// Rank counts that cannot work give an osp::Error from setup().
std::unique_ptr<SequenceParallel> make_ssp(std::shared_ptr<Communicator> comm);
// Ulysses for every block; the plan must be all full blocks (the Wan2.1 baseline).
std::unique_ptr<SequenceParallel> make_ulysses(std::shared_ptr<Communicator> comm);
// Ulysses all-to-alls in C head chunks (a divisor of each rank's heads, checked where used) so
// they can overlap attention; 0 = the OSP_ULYSSES_CHUNKS setting (core/settings.h; unset: 1).
void set_ulysses_chunks(int64_t chunks);

// Validates a plan (grid, P, kinds order, heads/head_dim); throws osp::Error naming the rule.
void check_plan(const ForwardPlan& plan);
bool same_plan(const ForwardPlan& a, const ForwardPlan& b);

// ops::attention as an AttentionFn.
const AttentionFn& default_attention();

// out[b] = gather_rows(x[b], index) for every sample b: x [B, n_in, C], index I32 [n_out] on
// x's device (entries < 0 give zero rows) → out [B, n_out, C] (allocated when undefined).
Tensor gather_per_sample(const Tensor& x, const Tensor& index, int64_t n_out);

}  // namespace osp::parallel
