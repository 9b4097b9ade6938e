// cuDNN fused flash attention for training, through the cuDNN 9 backend graph API (no
// cudnn-frontend): the SDPA forward that also writes the softmax statistics, and the SDPA
// backward. Both graphs are the patterns cuDNN's fused attention engines recognise (the ones
// cudnn-frontend's sdpa and sdpa_backward nodes expand to, without masks or dropout):
//
// forward:  S = matmul(Q, Kᵀ)·scale; m = max(S); e = exp(S − m); l = Σ e;
//           stats = m + log(l)  (written, f32 [B,H,Lq,1]);  O = matmul(e / l as bf16, V)
// backward: Δ  = Σ_d dO·O                         (f32 [B,H,Lq,1], written to workspace)
//           P  = exp(matmul(Q, Kᵀ)·scale − stats)
//           dV = matmul(reshape(P)ᵀ as bf16, dO)
//           dS = (matmul(dO, Vᵀ) − Δ) · P · scale
//           dK = matmul(reshape(dS)ᵀ as bf16, Q)
//           dQ_acc = matmul(dS, K) (f32 workspace), dQ = identity(dQ_acc)
//
// Q/K/V/O/dO/dQ/dK/dV keep our [B, L, H, D] memory layout (contiguous views); the [B,H,L,D]
// views are strides. Stats are [B, H, Lq] f32 contiguous. One plan per shape, built on first
// use and cached with its failure reason (the caller then runs our own kernels).
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cudnn_graph.h"
#include "osp/ops/ops.h"

namespace osp::ops::cuda {

#ifndef OSP_HAVE_CUDNN
bool sdpa_forward_stats_cudnn(const Tensor&, const Tensor&, const Tensor&, Tensor&, float*, float,
                              std::string* why) {
  if (why) *why = "this build has no cuDNN";
  return false;
}
bool sdpa_backward_cudnn(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const float*, Tensor&, Tensor&, Tensor&, float, std::string* why) {
  if (why) *why = "this build has no cuDNN";
  return false;
}
#else

namespace {

enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kScale, kOne, kSoftmaxSum, kDQAcc,
  kVirtual = 100
};

struct Key {
  int64_t B, H, Lq, Lk, D;
  bool operator<(const Key& o) const {
    return std::tie(B, H, Lq, Lk, D) < std::tie(o.B, o.H, o.Lq, o.Lk, o.D);
  }
};

// [B, H, L, D] view of our [B, L, H, D] layout.
std::vector<int64_t> bhld_strides(int64_t L, int64_t H, int64_t D) { return {L * H * D, D, H * D, 1}; }

// The graphs' candidate plans (CudnnGraph::plans, at most max_plans); throw when cuDNN takes none.
std::vector<PlanChoice> build_forward(const Key& k, size_t max_plans) {
  CudnnGraph g(kVirtual);
  const int64_t B = k.B, H = k.H, Lq = k.Lq, Lk = k.Lk, D = k.D;
  const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  auto q = g.tensor(kQ, bf, {B, H, Lq, D}, bhld_strides(Lq, H, D), false);
  auto kt = g.tensor(kK, bf, {B, H, D, Lk}, {Lk * H * D, D, 1, H * D}, false);
  auto v = g.tensor(kV, bf, {B, H, Lk, D}, bhld_strides(Lk, H, D), false);
  auto o = g.tensor(kO, bf, {B, H, Lq, D}, bhld_strides(Lq, H, D), false);
  auto stats = g.tensor(kStats, f32, {B, H, Lq, 1}, {H * Lq, Lq, 1, 1}, false);
  auto scale = g.scalar(kScale, true);
  const std::vector<int64_t> sd = {B, H, Lq, Lk}, ss = {H * Lq * Lk, Lq * Lk, Lk, 1};
  const std::vector<int64_t> rd = {B, H, Lq, 1}, rs = {H * Lq, Lq, 1, 1};
  auto s = g.virt(f32, sd, ss);
  g.matmul(q, kt, s);
  auto s2 = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, s2);
  auto p = g.softmax_with_stats(s2, bf, sd, ss, rd, rs, stats);
  g.matmul(p, v, o);
  return g.plans(cudnn_handle(), "SDPA forward (training, stats)", -1, max_plans);
}

std::vector<PlanChoice> build_backward(const Key& k, size_t max_plans) {
  CudnnGraph g(kVirtual);
  const int64_t B = k.B, H = k.H, Lq = k.Lq, Lk = k.Lk, D = k.D;
  const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  auto q = g.tensor(kQ, bf, {B, H, Lq, D}, bhld_strides(Lq, H, D), false);
  auto kt = g.tensor(kK, bf, {B, H, D, Lk}, {Lk * H * D, D, 1, H * D}, false);
  auto vt = g.tensor(kV, bf, {B, H, D, Lk}, {Lk * H * D, D, 1, H * D}, false);
  auto o = g.tensor(kO, bf, {B, H, Lq, D}, bhld_strides(Lq, H, D), false);
  auto dout = g.tensor(kDO, bf, {B, H, Lq, D}, bhld_strides(Lq, H, D), false);
  auto stats = g.tensor(kStats, f32, {B, H, Lq, 1}, {H * Lq, Lq, 1, 1}, false);
  auto dq = g.tensor(kDQ, bf, {B, H, Lq, D}, bhld_strides(Lq, H, D), false);
  auto dk = g.tensor(kDK, bf, {B, H, Lk, D}, bhld_strides(Lk, H, D), false);
  auto dv = g.tensor(kDV, bf, {B, H, Lk, D}, bhld_strides(Lk, H, D), false);
  auto softmax_sum = g.tensor(kSoftmaxSum, f32, {B, H, Lq, 1}, {H * Lq, Lq, 1, 1}, false);
  auto dq_acc = g.tensor(kDQAcc, f32, {B, H, Lq, D}, {H * Lq * D, Lq * D, D, 1}, false);
  auto scale = g.scalar(kScale, true);
  auto one = g.scalar(kOne, true);
  const std::vector<int64_t> sd = {B, H, Lq, Lk}, ss = {H * Lq * Lk, Lq * Lk, Lk, 1};
  const std::vector<int64_t> td = {B, H, Lk, Lq}, ts = {H * Lq * Lk, Lq * Lk, 1, Lk};
  const std::vector<int64_t> rd = {B, H, Lq, 1}, rs = {H * Lq, Lq, 1, 1};

  // Δ = Σ_d dO·O
  auto dox = g.virt(f32, {B, H, Lq, D}, {H * Lq * D, Lq * D, H * D, 1});
  g.pointwise(CUDNN_POINTWISE_MUL, f32, dout, o, dox);
  auto red = g.virt(f32, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dox, red);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, red, one, softmax_sum);
  // P = exp(S·scale − stats)
  auto s = g.virt(f32, sd, ss);
  g.matmul(q, kt, s);
  auto s2 = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, s2);
  auto s3 = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, f32, s2, stats, s3);
  auto p = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, f32, s3, nullptr, p);
  // dV = Pᵀ·dO
  auto pt = g.virt(bf, td, ts);
  g.reshape(p, pt);
  g.matmul(pt, dout, dv);
  // dS = (dO·Vᵀ − Δ)·P·scale
  auto dp = g.virt(f32, sd, ss);
  g.matmul(dout, vt, dp);
  auto t1 = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, f32, dp, softmax_sum, t1);
  auto t2 = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, t1, p, t2);
  auto ds = g.virt(f32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, f32, t2, scale, ds);
  // dK = dSᵀ·Q
  auto dst = g.virt(bf, td, ts);
  g.reshape(ds, dst);
  g.matmul(dst, q, dk);
  // dQ = dS·K (f32 accumulator, then converted)
  auto kk = g.virt(bf, {B, H, Lk, D}, bhld_strides(Lk, H, D));
  g.reshape(kt, kk);
  g.matmul(ds, kk, dq_acc);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, f32, dq_acc, nullptr, dq);

  return g.plans(cudnn_handle(), "SDPA backward", -1, max_plans);
}

PlanCache<Key, CachedPlan> g_fwd_plans, g_bwd_plans;

size_t align256(size_t n) { return (n + 255) / 256 * 256; }
}  // namespace

// q [B, Lq, H, D], k/v [B, Lk, H, D], out like q (bf16, contiguous); stats f32 [B, H, Lq].
bool sdpa_forward_stats_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                              float* stats, float scale, std::string* why) {
  const Key key{q.size(0), q.size(2), q.size(1), k.size(1), q.size(3)};
  float scale_v = scale;
  auto run = [&](const PlanChoice& p) {
    execute_plan(p.plan, {kQ, kK, kV, kO, kStats, kScale}, {q.raw(), k.raw(), v.raw(), out.raw(), stats, &scale_v},
                 p.workspace > 0 ? scratch(size_t(p.workspace)) : nullptr);
  };
  const CachedPlan plan = g_fwd_plans.get(key, [&](const Key& kk) {
    return cached_plan([&](size_t n) { return build_forward(kk, n); }, cudnn_autotune_attention(), run,
                       str("cudnn-fwd-stats-", kk.B, "-", kk.H, "-", kk.Lq, "-", kk.Lk, "-", kk.D),
                       str("attention_forward_lse: cuDNN SDPA forward+stats plan for B=", kk.B, " H=", kk.H,
                           " Lq=", kk.Lq, " Lk=", kk.Lk, " D=", kk.D));
  });
  if (!plan.plan) {
    if (why) *why = plan.why;
    return false;
  }
  run(plan);
  return true;
}

bool sdpa_backward_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                         const Tensor& dout, const float* stats, Tensor& dq, Tensor& dk,
                         Tensor& dv, float scale, std::string* why) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3);
  const Key key{B, H, Lq, k.size(1), D};
  float scale_v = scale, one_v = 1.f;
  // Workspace: [plan's][Δ f32 B·H·Lq][dQ accumulator f32 B·H·Lq·D].
  auto run = [&](const PlanChoice& p) {
    const size_t w0 = align256(size_t(p.workspace));
    const size_t w1 = align256(size_t(B * H * Lq) * 4);
    const size_t w2 = size_t(B * H * Lq * D) * 4;
    char* ws = static_cast<char*>(scratch(w0 + w1 + w2));
    void* softmax_sum = ws + w0;
    void* dq_acc = ws + w0 + w1;
    OSP_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, w2, stream()));
    execute_plan(p.plan, {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kScale, kOne, kSoftmaxSum, kDQAcc},
                 {q.raw(), k.raw(), v.raw(), o.raw(), dout.raw(), const_cast<float*>(stats), dq.raw(), dk.raw(),
                  dv.raw(), &scale_v, &one_v, softmax_sum, dq_acc},
                 ws);
  };
  const CachedPlan plan = g_bwd_plans.get(key, [&](const Key& kk) {
    return cached_plan([&](size_t n) { return build_backward(kk, n); }, cudnn_autotune_attention(), run,
                       str("cudnn-bwd-", kk.B, "-", kk.H, "-", kk.Lq, "-", kk.Lk, "-", kk.D),
                       str("attention_backward: cuDNN SDPA backward plan for B=", kk.B, " H=", kk.H,
                           " Lq=", kk.Lq, " Lk=", kk.Lk, " D=", kk.D));
  });
  if (!plan.plan) {
    if (why) *why = plan.why;
    return false;
  }
  run(plan);
  return true;
}
#endif  // OSP_HAVE_CUDNN

}  // namespace osp::ops::cuda
#endif  // OSP_HAVE_CUDA
