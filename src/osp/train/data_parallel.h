// Distributed training over a world of ranks = SP × DP (issue 14): gradient reduction over the
// sequence-parallel group (sum of the per-rank shares) and the data-parallel group (mean), in
// buckets; the rank mesh; how a global batch maps to ranks; gradient accumulation.
//
// Rank mesh (make_parallel_groups): world rank w, SP size S, DP size M = world / S.
//   SP group  = the S consecutive ranks [⌊w/S⌋·S, ⌊w/S⌋·S + S)  (the all-to-all heavy group
//               stays inside a node when S ≤ GPUs per node), sp rank = w mod S;
//   DP group  = the M ranks with the same w mod S, dp rank = ⌊w/S⌋.
// e.g. 4 = 2 SP × 2 DP: SP groups {0,1} {2,3}, DP groups {0,2} {1,3}.
//
// Global batch (dp_batch_slice): a step's global batch of G samples (sample index 0..G−1 in
// the data order of the single-rank run) is cut into M contiguous slices; DP rank r takes
// samples [r·G/M, (r+1)·G/M) (G % M == 0 is required), and every SP rank of a DP group takes
// the same samples (the SP group shares one forward). With A accumulation micro-steps the
// slice is cut again into A contiguous micro-batches of G/(M·A). The union over ranks and
// micro-steps is the global batch for every (M, A), so the gradient is the same for any rank
// count (the loss of each micro-batch is its own mean; the reducer divides by M·A).
//
// Gradient semantics: a sequence-parallel backward (parallel/sequence_parallel.h adjoints) leaves on
// every SP rank its SHARE of each parameter gradient — the contribution of the rows it holds —
// and the shares sum to the single-device gradient. The exception is a parameter whose whole
// gradient is computed identically on every SP rank (the DiT's patch embedding: its input
// gradient is the full [B, N, C] on every rank); those are named by a predicate and are not
// summed. Then the DP mean. GradientReducer does both, bucketed.
//
// Not covered by the reduction: DiT::backward's dcontext output is also a per-rank share (sum it
// over the SP group, e.g. sp.all_reduce); dx is complete on every rank.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/param.h"
#include "osp/parallel/communicator.h"

namespace osp::train {

struct ParallelGroups {
  std::shared_ptr<parallel::Communicator> world, sp, dp;
  int sp_size() const { return sp ? sp->size() : 1; }
  int dp_size() const { return dp ? dp->size() : 1; }
  int sp_rank() const { return sp ? sp->rank() : 0; }
  int dp_rank() const { return dp ? dp->rank() : 0; }
};

// Splits `world` into SP groups of sp_size consecutive ranks and DP groups across them (see
// the header comment). Collective over world. world->size() % sp_size must be 0.
ParallelGroups make_parallel_groups(std::shared_ptr<parallel::Communicator> world, int sp_size);

struct BatchSlice {
  int64_t begin = 0, count = 0;  // samples [begin, begin + count) of the global batch
};
// DP rank `dp_rank`'s micro-batch `micro` (0 ≤ micro < accum_steps) of a global batch of
// `global_batch` samples. Throws when global_batch is not a multiple of dp_size·accum_steps.
BatchSlice dp_batch_slice(int64_t global_batch, int dp_rank, int dp_size, int accum_steps = 1,
                          int micro = 0);

// The DiT's parameters whose gradient is complete on every SP rank (patch_embedding.*).
bool dit_sp_replicated(const std::string& name);

struct GradReduceOptions {
  size_t bucket_bytes = size_t(25) << 20;  // F32 gradients flattened into ≤ this per collective
  // Parameters whose gradient is complete on every SP rank (not summed over SP).
  std::function<bool(const std::string&)> sp_replicated = dit_sp_replicated;
};

// Reduces a ParamTable's gradients in place after the backward of every micro-batch of a step:
//   g ← (Σ_SP g, except sp_replicated) then mean over DP, then / accum_steps.
// Every rank ends with the same gradient: the single-device gradient of the mean loss over the
// global batch. Parameters are packed into buckets of ≤ bucket_bytes in table order (a larger
// parameter gets a bucket of its own); one all_reduce per bucket; buffers are kept between
// steps. Every rank of a group must hold the same table (names, numels, order): checked on the
// first call by reducing a fingerprint.
class GradientReducer {
 public:
  GradientReducer(ParamTable params, ParallelGroups groups, GradReduceOptions opt = {});
  void reduce(int accum_steps = 1);
  // Buckets as [first, last) parameter index ranges, per phase (SP sum, DP mean).
  struct Bucket {
    size_t first = 0, last = 0;
    int64_t numel = 0;
  };
  const std::vector<Bucket>& sp_buckets() const { return sp_buckets_; }
  const std::vector<Bucket>& dp_buckets() const { return dp_buckets_; }

 private:
  void run(parallel::Communicator& comm, const std::vector<size_t>& which,
           const std::vector<Bucket>& buckets, float scale);
  std::vector<Bucket> plan(const std::vector<size_t>& which) const;
  void check_same_table(parallel::Communicator& comm, const char* group);

  ParamTable params_;
  ParallelGroups groups_;
  GradReduceOptions opt_;
  std::vector<size_t> sp_params_, all_params_;
  std::vector<Bucket> sp_buckets_, dp_buckets_;
  Tensor buffer_;
  bool checked_ = false;
};

// Sum over the SP group only (the SP part of GradientReducer, unbucketed plan each call).
void reduce_sp_gradients(ParamTable& params, parallel::Communicator& sp,
                         const GradReduceOptions& opt = {});
// Mean over the DP group only.
void average_dp_gradients(ParamTable& params, parallel::Communicator& dp,
                          const GradReduceOptions& opt = {});

}  // namespace osp::train
