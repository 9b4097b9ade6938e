// cuDNN fused flash attention (SDPA forward, inference) through the cuDNN 9 backend graph API,
// written directly against cudnnBackend* (no cudnn-frontend). The operation graph is the
// pattern cuDNN's fused attention engines recognise:
//
//   S  = matmul(Q, Kᵀ)                  [B,H,Lq,Lk] f32 virtual   (M/N overrides = seq lens)
//   S  = S * scale                      (by-value scalar)
//   [padding: row < seq_q && col < seq_kv ? S : lowest]  (gen_index, cmp_lt, logical_and,
//                                                         binary_select)
//   P  = softmax(S) as max, sub, exp, sum, div  (+ log/add stats, virtual)   P bf16 virtual
//   O  = matmul(P, V)                   [B,H,Lq,D] bf16           (M/K overrides = seq lens)
//
// Q/K/V/O keep our [B, L, H, D] memory layout; the [B,H,L,D] views are expressed by strides.
// One execution plan per (B, H, Lq, Lk, D, padding) is built on first use and cached (failures
// too: a shape cuDNN rejects falls back to our own kernel, logged under OSP_VERBOSE=1).
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cudnn_graph.h"
#include "osp/ops/ops.h"

#ifdef OSP_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace osp::ops::cuda {

#ifndef OSP_HAVE_CUDNN
bool attention_cudnn_impl(const Tensor&, const Tensor&, const Tensor&, Tensor&, float, const int*,
                          const int*) {
  log_once("attn-no-cudnn", "attention: this build has no cuDNN; own flash kernel runs");
  return false;
}
#else

namespace {

enum Uid : int64_t { kQ = 1, kK, kV, kO, kScale, kSeqQ, kSeqKV, kNeg, kVirtual = 100 };

cudnnHandle_t handle() { return cudnn_handle(); }

struct PlanKey {
  int64_t B, H, Lq, Lk, D;
  bool padding;
  bool operator<(const PlanKey& o) const {
    return std::tie(B, H, Lq, Lk, D, padding) < std::tie(o.B, o.H, o.Lq, o.Lk, o.D, o.padding);
  }
};
// The graph's candidate plans (CudnnGraph::plans, at most max_plans); throws when cuDNN takes none.
std::vector<PlanChoice> build_plans(const PlanKey& k, size_t max_plans) {
  CudnnGraph g(kVirtual);
  const int64_t B = k.B, H = k.H, Lq = k.Lq, Lk = k.Lk, D = k.D;
  const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32,
                        boolean = CUDNN_DATA_BOOLEAN;
  auto q = g.tensor(kQ, bf, {B, H, Lq, D}, {Lq * H * D, D, H * D, 1}, false);
  auto kt = g.tensor(kK, bf, {B, H, D, Lk}, {Lk * H * D, D, 1, H * D}, false);
  auto v = g.tensor(kV, bf, {B, H, Lk, D}, {Lk * H * D, D, H * D, 1}, false);
  auto o = g.tensor(kO, bf, {B, H, Lq, D}, {Lq * H * D, D, H * D, 1}, false);
  auto scale = g.tensor(kScale, f32, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  const std::vector<int64_t> sd = {B, H, Lq, Lk}, ss = {H * Lq * Lk, Lq * Lk, Lk, 1};
  const std::vector<int64_t> rd = {B, H, Lq, 1}, rs = {H * Lq, Lq, 1, 1};
  cudnnBackendDescriptor_t seq_q = nullptr, seq_kv = nullptr;
  if (k.padding) {
    seq_q = g.tensor(kSeqQ, i32, {B, 1, 1, 1}, {1, 1, 1, 1}, false);
    seq_kv = g.tensor(kSeqKV, i32, {B, 1, 1, 1}, {1, 1, 1, 1}, false);
  }
  auto s = g.virt(f32, sd, ss);
  g.matmul(q, kt, s, seq_q, seq_kv, nullptr);
  auto s_scaled = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, s_scaled);
  auto last = s_scaled;
  if (k.padding) {
    auto row = g.virt(i32, sd, ss), col = g.virt(i32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, last, nullptr, row, nullptr, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, last, nullptr, col, nullptr, 3);
    auto row_ok = g.virt(i32, sd, ss), col_ok = g.virt(i32, sd, ss), both = g.virt(boolean, sd, ss);
    g.pointwise(CUDNN_POINTWISE_CMP_LT, i32, row, seq_q, row_ok);
    g.pointwise(CUDNN_POINTWISE_CMP_LT, i32, col, seq_kv, col_ok);
    g.pointwise(CUDNN_POINTWISE_LOGICAL_AND, boolean, row_ok, col_ok, both);
    auto neg = g.tensor(kNeg, f32, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
    auto masked = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, f32, last, neg, masked, both);
    last = masked;
  }
  auto p = g.softmax_with_stats(last, bf, sd, ss, rd, rs);
  g.matmul(p, v, o, seq_q, nullptr, seq_kv);

  return g.plans(handle(), "SDPA", -1, max_plans);
}

PlanCache<PlanKey, CachedPlan> g_plans;
}  // namespace

bool attention_cudnn_impl(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                          float scale, const int* q_lens, const int* kv_lens) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  const bool padding = q_lens || kv_lens;
  // cuDNN's padding mask needs both lengths: fill the missing one with the full length.
  const int* sq = q_lens;
  const int* skv = kv_lens;
  if (padding && (!sq || !skv)) {
    // Written only when (B, Lq, Lk) changes: the copy is synchronous.
    static int* fill = nullptr;
    static int64_t cap = 0, filled[3] = {-1, -1, -1};
    if (cap < 2 * B) {
      int dev = 0;
      OSP_CUDA_CHECK(cudaGetDevice(&dev));
      if (fill) cuda_free(fill, dev);
      fill = static_cast<int*>(cuda_alloc(size_t(2 * B) * 4, dev));
      cap = 2 * B;
      filled[0] = -1;
    }
    if (filled[0] != B || filled[1] != Lq || filled[2] != Lk) {
      std::vector<int> host(size_t(2 * B));
      for (int64_t b = 0; b < B; ++b) {
        host[size_t(b)] = int(Lq);
        host[size_t(B + b)] = int(Lk);
      }
      OSP_CUDA_CHECK(cudaMemcpy(fill, host.data(), host.size() * 4, cudaMemcpyHostToDevice));
      filled[0] = B, filled[1] = Lq, filled[2] = Lk;
    }
    if (!sq) sq = fill;
    if (!skv) skv = fill + B;
  }
  float scale_v = scale;
  float neg_v = std::numeric_limits<float>::lowest();
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kScale};
  std::vector<void*> ptrs = {q.raw(), k.raw(), v.raw(), out.raw(), &scale_v};
  if (padding) {
    uids.insert(uids.end(), {kSeqQ, kSeqKV, kNeg});
    ptrs.insert(ptrs.end(), {const_cast<int*>(sq), const_cast<int*>(skv), &neg_v});
  }
  auto run = [&](const PlanChoice& p) {
    execute_plan(p.plan, uids, ptrs, p.workspace > 0 ? scratch(size_t(p.workspace)) : nullptr);
  };
  const PlanKey key{B, H, Lq, Lk, D, padding};
  const CachedPlan plan = g_plans.get(key, [&](const PlanKey& k) {
    return cached_plan([&](size_t n) { return build_plans(k, n); }, cudnn_autotune_attention(), run,
                       str("cudnn-plan-", B, "-", H, "-", Lq, "-", Lk, "-", D, "-", padding),
                       str("attention: cuDNN SDPA plan for B=", B, " H=", H, " Lq=", Lq, " Lk=", Lk, " D=", D,
                           padding ? " (padding mask)" : ""));
  });
  if (!plan.plan) {
    log_once(str("cudnn-reject-", B, "-", H, "-", Lq, "-", Lk, "-", D, "-", padding),
             str("attention: cuDNN cannot run B=", B, " H=", H, " Lq=", Lq, " Lk=", Lk, " D=", D,
                 padding ? " (padding)" : "", ": ", plan.why));
    return false;
  }
  run(plan);
  return true;
}
#endif  // OSP_HAVE_CUDNN

}  // namespace osp::ops::cuda
#endif  // OSP_HAVE_CUDA
