// AdamW with its state sharded over the ranks (ZeRO-1/2 style; all SP × DP ranks by default, or
// the data-parallel ranks), wrapping train/adamw.h: fp32 master weights, m and v exist only for
// this rank's 1/M of the elements (M = the shard group's size);
// gradients are reduce-scattered into that shard; after the update the weights are all-gathered
// back into every parameter's value (F32, or BF16 compute copies: cast on arrival).
//
// Layout: the table's parameters back to back (table order) form a flat vector of T elements,
// cut into windows of ≤ M·K elements (K = bucket_bytes / 4 / M); window w of length L_w is split
// into M equal chunks of c_w = ⌈L_w / M⌉ (the last chunk zero-padded), chunk r belongs to DP
// rank r. A rank's shard is its chunk of every window, back to back (Σ_w c_w elements). One
// reduce_scatter per window (gradients) and one all_gather per window (weights) — each
// collective moves ≤ bucket_bytes. AdamW is elementwise, so the shard is updated by one
// train::AdamW over a single flat "parameter" and the result is bit-identical to the unsharded
// AdamW given the same reduced gradient.
//
// Step:  backward of every micro-batch (gradients accumulate in the table)
//        → reduce_gradients(A)   one reduce-scatter over the world (SP shares + DP ranks), or
//                                 the SP all-reduce then a DP reduce-scatter; × 1/(D·A)
//        → [grad_norm(), scale_gradients(s) for clipping]
//        → step(lr)              shard update, all-gather of the weights
// The table's gradients are left as they were after the SP sum (the shard holds the reduced
// ones); zero them for the next step as usual.
//
// Memory per rank (T elements, M ranks): master (= the shard's F32 value), m, v and the shard's
// gradient: 16·T/M bytes; plus the table's own compute copies and gradients (all of them, or with
// gradient sharding only those outside the groups and the groups in flight).
//
// Checkpoints are written unsharded: gather_state() returns AdamW::Slot per parameter (master,
// m, v, exactly what an unsharded AdamW over the same table holds), load_state() takes them on
// any rank count (resume with a different M).
//
// Gradient sharding (ZeRO-2, `grad_groups` given): the parameters of each group (a range of the
// table whose backward runs as one piece, e.g. a DiT block) keep no gradient between backwards.
// The model calls begin_group(g) before group g's backward (its gradients are allocated, zero)
// and end_group(g) after it (its windows — windows never straddle a group boundary — are
// reduce-scattered and ADDED into the shard gradient, the group's gradients released), so a rank
// holds the full gradients of the groups in flight only. Over A accumulation micro-batches the
// shard accumulates; reduce_gradients(A) then reduces the parameters outside the groups (kept
// whole) and scales; the next begin_group starts a new step's shard gradient. Every rank must run
// the groups in the same order. World mode (or no SP) only.
//
// Weight sharding (ZeRO-3 / FSDP-style, shard_weights(), needs gradient sharding): the compute
// copies (the table's values) of the groups' parameters are released too; each rank keeps only
// its shard (the F32 master, which it already held). The model calls gather_group(g) before group
// g's forward and again before its backward (activation-checkpointing recompute included): the
// group's windows are all-gathered from every rank's shard (F32, cast on arrival into each
// value's dtype — bf16 linears and F32 norms/modulation alike) into freshly allocated values;
// release_group(g) after the forward / after end_group frees them. The parameters outside the
// groups (the DiT's embeddings and head) stay replicated and are all-gathered after every step as
// before; step() updates only the shards of the groups — the next gather_group reads the new
// values. Every rank must gather/release the groups in the same order (the ranks of an SP group
// run the same blocks in lockstep, so the World shard group works under SP).
//   Prefetch: prefetch_group(g) starts group g's gathers into one staging buffer (F32, the size
// of the largest group, windows back to back) on a dedicated duplicate of the shard communicator
// (so it never interleaves with the gradient reduce-scatters); the next gather_group(g) waits for
// it and unpacks. On nccl the gathers run on the communicator's side stream, overlapped with the
// block computing meanwhile (Communicator::all_gather_start); on mpi/single they run at once
// (synchronous), so Prefetch::Auto prefetches only where the communicator overlaps
// (Communicator::overlaps()); Prefetch::On forces the path (tests of its bookkeeping on the CPU).
// A prefetch of a group that is not the next one gathered is waited for and dropped. The gathers
// move the compute dtype (bf16 on CUDA: the master shard's window rounded to bf16 just before its
// gather, exactly what the F32 gather rounded to on arrival), half the bytes of F32.
//
// What is NOT sharded here: without weight sharding the compute copy of every weight stays on
// every rank, and without grad_groups the full gradient buffer too.
#pragma once
#include <memory>
#include <utility>
#include <vector>

#include "osp/core/param.h"
#include "osp/train/adamw.h"
#include "osp/train/data_parallel.h"

namespace osp::train {

// Which ranks share the optimizer state.
//   World: every rank of groups.world (SP × DP) holds 1/(S·D) of it. The gradient shares of the
//          SP ranks and the DP ranks are summed by ONE reduce_scatter over the world (the
//          parameters complete on every SP rank — GradReduceOptions::sp_replicated — enter from
//          SP rank 0 only), then × 1/(D·A). This is what lets a model whose state does not fit
//          one GPU train with SP alone (4 = 4 SP × 1 DP).
//   DataParallel: the D ranks of groups.dp (the SP sum is an all-reduce over groups.sp first);
//          every SP rank keeps a copy of its DP shard.
enum class ShardGroup { World, DataParallel };

class ShardedAdamW {
 public:
  // Collective over the shard group (and groups.sp for the SP sum in DataParallel mode). The
  // values must be identical on every rank (same initial weights); masters are taken from them.
  // World falls back to DataParallel when groups.world is null.
  // grad_groups: ranges [first, last) of the table, in table order, not overlapping — gradient
  // sharding (see above); their gradients are released here.
  ShardedAdamW(ParamTable params, ParallelGroups groups, const AdamWConfig& cfg,
               GradReduceOptions opt = {}, ShardGroup over = ShardGroup::World,
               std::vector<std::pair<size_t, size_t>> grad_groups = {});
  ~ShardedAdamW();  // completes reductions still in flight (an exception mid-backward)
  ShardedAdamW(const ShardedAdamW&) = delete;  // the inner AdamW points at this object's shard
  ShardedAdamW& operator=(const ShardedAdamW&) = delete;

  void reduce_gradients(int accum_steps = 1);
  // Gradient sharding: around group g's backward (collective in end_group).
  void begin_group(size_t g);
  void end_group(size_t g);
  bool shards_gradients() const { return !groups_of_.empty(); }
  // The most gradient elements the table held at once since construction (gradient sharding:
  // the parameters outside the groups + the groups in flight; else the whole table).
  int64_t peak_grad_elements() const { return peak_grad_; }

  // Weight sharding (see above; collective: it creates the gather communicator). Releases the
  // groups' values now. Needs gradient groups.
  enum class Prefetch { Auto, On, Off };
  void shard_weights(Prefetch prefetch = Prefetch::Auto);
  bool shards_weights() const { return shard_weights_; }
  bool prefetches() const { return prefetch_; }
  // Collective over the shard group: group g's values gathered (from a finished prefetch, or
  // now), resident until release_group(g). A no-op for a resident group (counts no bytes).
  void gather_group(size_t g);
  void release_group(size_t g);
  // Starts gathering group g (a no-op without prefetching, for a resident group, or when g is
  // already staged); collective.
  void prefetch_group(size_t g);
  // Makes every value resident again (collective) and ends weight sharding: the table holds the
  // trained weights (the end of a training run).
  void unshard_weights();
  // Accounting of the groups' compute copies (their values' bytes, whatever their dtype) on this
  // rank: resident now, and the most at once since shard_weights() (or construction); without
  // weight sharding every group is always resident. The prefetch staging buffer is counted
  // apart (gather_buffer_bytes: 0 without prefetch).
  int64_t resident_group_weight_bytes() const { return live_wbytes_; }
  int64_t peak_group_weight_bytes() const { return peak_wbytes_; }
  int64_t gather_buffer_bytes() const {
    return (stage_.defined() ? int64_t(stage_.nbytes()) : 0) + (stage16_.defined() ? int64_t(stage16_.nbytes()) : 0);
  }
  // Bytes weight sharding moves per rank for one gather of every group (each window in its dtype:
  // BF16 where every value it covers is BF16, else F32).
  int64_t gather_bytes_per_pass() const;
  // L2 norm of the reduced gradient (all of it, every rank gets the same value).
  double grad_norm();
  void scale_gradients(float s);
  void step(double lr);

  int64_t steps() const { return adam_->steps(); }
  int64_t total_elements() const { return total_; }
  int64_t shard_elements() const { return shard_.numel(); }
  size_t windows() const { return win_.size(); }

  // The unsharded optimizer state as host (CPU) F32 tensors (collective over the shard group).
  // root −1: every rank receives it; root r: only shard rank r does (the others get an empty
  // vector) — a checkpoint save on rank 0. The exchange goes window by window through the
  // bucket-sized device buffer, so the device never holds more than one window of the whole
  // state (a 14B model's 171 GB of master + m + v lands in host memory only).
  std::vector<AdamW::Slot> gather_state(int root = -1);
  // Flat F32 [shard_elements()] shard (any tensor laid out like this rank's master shard, e.g.
  // an EMA of master_shard()) → one host F32 tensor per parameter in its value's shape, on every
  // rank (root −1) or on shard rank `root` only (collective over the shard group).
  std::vector<Tensor> unshard(const Tensor& shard_flat, int root = -1);
  int shard_rank() const { return shard_rank_; }
  int shard_size() const { return shard_size_; }
  // The inverse, local: per-parameter tensors (value shapes or any shape of the same numel) →
  // this rank's flat F32 [shard_elements()] shard (padding zero).
  Tensor shard_of(const std::vector<Tensor>& full) const;
  // This rank's fp32 master shard (what an EMA of the weights follows when sharded).
  const Tensor& master_shard() const { return adam_->slots().at(0).master; }
  // Restores the unsharded state of `steps` completed steps (from gather_state on any rank count;
  // host or device tensors); the values are refreshed from the masters.
  void load_state(const std::vector<AdamW::Slot>& full, int64_t steps);

 private:
  struct Window {
    int64_t start = 0, len = 0, chunk = 0, shard_off = 0;
    int group = -1;  // the gradient-sharding group it lies in (−1: none)
    DType gather = DType::F32;  // weight sharding: BF16 when every value it covers is BF16
  };
  // Reduce-scatters window w's gradients into my chunk: copied, or added (gradient sharding).
  void reduce_window(const Window& w, bool add);
  // Gradient sharding on several ranks: end_group packs the group's windows and starts their
  // reduce-scatters without waiting (Communicator::reduce_scatter_start), so they overlap the next
  // block's backward; finish_pending waits for them and adds the results into the shard gradient
  // in issue order (the order the blocking path added them: the same sums). Called by the next
  // end_group and by reduce_gradients. At most one group is in flight.
  struct InFlight {
    const Window* w;
    Tensor send, recv;
  };
  void finish_pending();
  std::vector<InFlight> pending_;
  int pending_ticket_ = -1;
  // Copies flat range [a, a + n) of the table (values or grads) into dst[0, n) or back.
  void pack(bool grads, int64_t a, int64_t n, Tensor& dst) const;
  // Window w's gradients packed into dst [w.chunk · shard ranks], the tail past w.len zeroed: what
  // its reduce-scatter sends.
  void pack_window_grads(const Window& w, Tensor& dst) const;
  // Where group windows of w's gather dtype land: the prefetch staging (stage_/stage16_) or the
  // blocking buffers (buf_/buf16_), [off, off + w.chunk · shard ranks).
  Tensor gather_buffer(const Window& w, bool staging, int64_t off) const;
  void unpack_values(int64_t a, int64_t n, const Tensor& src);
  // Every rank's updated shard → every parameter's value (one all_gather per window); with weight
  // sharding the windows of the groups are skipped (gathered by gather_group when needed).
  void gather_values();
  // Allocates group g's values (uninitialised) / frees them; the accounting.
  void alloc_group(size_t g);
  // Waits for the staged prefetch (if any) and forgets it.
  void drain_prefetch();
  // Window w of the master shard in the gather dtype (the shard's own view when that is F32).
  Tensor send_window(const Window& w) const;
  // this rank's shard of per-parameter tensors `full` (one per parameter) → dst [shard_elements()]
  void scatter_into(const std::vector<const Tensor*>& full, Tensor& dst) const;
  // The all-gather of every rank's shard of `shard_src` into a host flat F32 [T] on `root` (−1:
  // every rank; elsewhere an undefined tensor), one window at a time (state export).
  Tensor gather_flat(const Tensor& shard_src, int root);

  ParamTable params_;
  ParallelGroups groups_;
  GradReduceOptions opt_;
  std::shared_ptr<parallel::Communicator> shard_comm_;  // null: one rank holds everything
  int shard_size_ = 1, shard_rank_ = 0;
  std::vector<bool> zero_grad_on_pack_;  // World mode, SP rank ≠ 0: the SP-replicated params
  std::vector<int64_t> offset_;  // flat offset of every parameter
  int64_t total_ = 0;
  std::vector<Window> win_;
  Tensor shard_, shard_grad_, buf_;
  ParamTable shard_table_;
  std::unique_ptr<AdamW> adam_;
  std::unique_ptr<GradientReducer> sp_reducer_;
  // gradient sharding
  std::vector<std::pair<size_t, size_t>> groups_of_;
  std::vector<Shape> grad_shape_;  // every parameter's gradient shape
  Tensor chunk_buf_;               // one reduce-scattered chunk before it is added
  bool new_step_ = true;           // the next begin_group / reduce zeroes the shard gradient first
  int64_t live_grad_ = 0, peak_grad_ = 0;
  // weight sharding
  std::vector<Shape> value_shape_;  // every parameter's value shape, dtype and element count
  std::vector<DType> value_dtype_;
  std::vector<int64_t> numel_;
  bool shard_weights_ = false, prefetch_ = false;
  std::vector<bool> resident_;  // per group
  std::shared_ptr<parallel::Communicator> gather_comm_;
  // Weight sharding gathers a window in BF16 when every value it covers is BF16 (the linears'
  // compute copies on CUDA: half the bytes of the F32 master shard), else in F32 (norms,
  // modulation; everything on the CPU, where the window is the shard itself, no conversion): the
  // window of the master shard is converted into send_ (kept until its gather completes) and
  // gathered into stage_/stage16_ (prefetch, per dtype back to back) or buf_/buf16_ (blocking).
  Tensor buf16_;
  std::vector<Tensor> send_;
  Tensor stage_, stage16_;      // prefetch staging (the largest group's windows of each dtype)
  int staged_ = -1, stage_ticket_ = -1;
  int64_t live_wbytes_ = 0, peak_wbytes_ = 0;
};

}  // namespace osp::train
