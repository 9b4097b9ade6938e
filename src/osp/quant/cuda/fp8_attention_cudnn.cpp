// cuDNN fused FP8 flash attention (SDPA forward, inference) through the cuDNN 9 backend graph
// API, written directly against cudnnBackend* (no cudnn-frontend). The operation graph is the
// FP8 pattern cuDNN's fused attention engines recognise on Hopper (the one cudnn-frontend's
// sdpa_fp8 node expands to):
//
//   S   = matmul(Q8, K8ᵀ)                 [B,H,Lq,Lk] f32 virtual
//   S  *= attn_scale (by value); S *= descale_q; S *= descale_k    (device f32 scalars)
//   P   = softmax(S) as max, sub, exp, sum, div (+ log/add → stats)  f32 virtual
//   amax_s = AMAX(P)                       [1,1,1,1] f32 output
//   P8  = P * scale_s                      E4M3 virtual
//   O'  = matmul(P8, V8)                   [B,H,Lq,D] f32 virtual
//   O' *= descale_s; O' *= descale_v;  amax_o = AMAX(O')
//   O   = O' * scale_o                     BF16 output (scale_o = 1), or F16 / E4M3 converted
//                                          into the BF16 output by fp8_attention_kernels.cu
//
// Q/K/V/O keep our [B, L, H, D] memory layout; the [B,H,L,D] views are expressed by strides
// (batch strides are parameters, so packed sub-sequences are views of the whole tensors).
// The tail variants (kVariants: O BF16 / F16 / E4M3, scale_o by value / device / none, stats
// virtual / written) are tried in order; the first that finalizes is cached per shape and
// named in the log (OSP_VERBOSE=1) and in fp8_sdpa_cudnn_note(). cuDNN 9.14 on an H200 accepts
// only the E4M3-O variants (every BF16 / F16 one: "no engine"; 2026-11-26), so O carries an
// extra E4M3 rounding there. OSP_FP8_SDPA_PROBE=1 tries and lists every variant,
// OSP_FP8_SDPA_VARIANT=i / OSP_FP8_SDPA_CONFIG=i pin a variant / engine config (benchmarks).
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "osp/core/settings.h"
#include "osp/core/cuda_check.h"
#include "osp/core/error.h"
#include "osp/core/tensor.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cudnn_graph.h"
#include "osp/quant/cuda/fp8_attention_cuda.h"
#include "osp/quant/cuda/fp8_cuda.h"
#include "osp/quant/fp8.h"

#ifdef OSP_HAVE_CUDNN
#include <cudnn.h>
#endif

namespace osp::quant::cuda {

namespace {
std::mutex g_note_mu;
std::string g_note;
void set_note(const std::string& s) {
  std::lock_guard<std::mutex> lk(g_note_mu);
  g_note = s;
}
}  // namespace

std::string fp8_sdpa_cudnn_note() {
  std::lock_guard<std::mutex> lk(g_note_mu);
  return g_note;
}

#ifndef OSP_HAVE_CUDNN
int fp8_sdpa_cudnn_last_o_storage() { return 0; }
#endif

#ifndef OSP_HAVE_CUDNN
bool fp8_sdpa_cudnn(const Fp8SdpaCall&, std::string* why) {
  *why = "this build has no cuDNN";
  set_note(*why);
  return false;
}
#else

namespace {

using ops::cuda::log_once;

enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kAttnScale, kDescaleQ, kDescaleK, kDescaleV, kDescaleS, kScaleS, kScaleO,
  kAmaxS, kAmaxO, kStats, kVirtual = 100
};

// The tail variants, tried in this order (the first that finalizes is used).
enum class OStore { BF16, F16, E4M3 };
enum class ScaleO { None, ByValueOne, Device };
struct Variant {
  const char* name;
  OStore o;
  ScaleO scale_o;
  bool stats_output;  // softmax stats written to memory instead of virtual
  bool amax_o;        // the AMAX(O') output
};
constexpr Variant kVariants[] = {
    {"O bf16, scale_o 1 by value, stats virtual", OStore::BF16, ScaleO::ByValueOne, false, true},
    {"O bf16, scale_o 1 by value, stats written", OStore::BF16, ScaleO::ByValueOne, true, true},
    {"O bf16, no scale_o, no amax_o, stats written", OStore::BF16, ScaleO::None, true, false},
    {"O f16 (O/dv), scale_o device, stats virtual", OStore::F16, ScaleO::Device, false, true},
    {"O f16 (O/dv), scale_o device, stats written", OStore::F16, ScaleO::Device, true, true},
    {"O f16, scale_o 1 by value, stats written", OStore::F16, ScaleO::ByValueOne, true, true},
    {"O e4m3 (448/(15 dv)) + dequantize, stats virtual", OStore::E4M3, ScaleO::Device, false, true},
    {"O e4m3 (448/(15 dv)) + dequantize, stats written", OStore::E4M3, ScaleO::Device, true, true},
};

bool probe_all() { return engine_settings().fp8_sdpa_probe; }

std::atomic<int> g_last_o{0};
std::atomic<int> g_preferred{-1};  // index of the variant that built the last plan

cudnnHandle_t handle() { return ops::cuda::cudnn_handle(); }

// Device scalars shared by every call, 16 bytes apart (the alignment the tensor descriptors
// declare): scale_s, descale_s, 1, the amax outputs (written by cuDNN, unused), and the per-call
// output scales derived from descale_v (fp8_attn_output_scales).
enum Const : int {
  kCScaleS = 0, kCDescaleS = 4, kCOne = 8, kCAmaxS = 12, kCAmaxO = 16,
  kCScaleO16 = 20, kCInv16 = 24, kCScaleO8 = 28, kCInv8 = 32, kCCount = 36
};
float* constants() {
  static float* p = [] {
    float* d = nullptr;
    OSP_CUDA_CHECK(cudaMalloc(&d, kCCount * sizeof(float)));
    float host[kCCount] = {};
    host[kCScaleS] = kFp8AttentionScaleP;
    host[kCDescaleS] = 1.0f / kFp8AttentionScaleP;
    host[kCOne] = 1.0f;
    OSP_CUDA_CHECK(cudaMemcpy(d, host, sizeof(host), cudaMemcpyHostToDevice));
    return d;
  }();
  return p;
}
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

struct PlanKey {
  int64_t B, H, Lq, Lk, D, qb, kvb, ob;
  bool operator<(const PlanKey& o) const {
    return std::tie(B, H, Lq, Lk, D, qb, kvb, ob) <
           std::tie(o.B, o.H, o.Lq, o.Lk, o.D, o.qb, o.kvb, o.ob);
  }
};
struct Plan {
  cudnnBackendDescriptor_t plan = nullptr;  // null: cuDNN rejected every variant
  int64_t workspace = 0;
  const Variant* variant = nullptr;
  std::string why;
};

// OSP_FP8_SDPA_CONFIG=i: engine config i only (benchmarks); -1 = any.
int only_config() { return engine_settings().fp8_sdpa_config; }

void build_variant(ops::cuda::CudnnGraph& g, const PlanKey& k, const Variant& var) {
  const int64_t B = k.B, H = k.H, Lq = k.Lq, Lk = k.Lk, D = k.D;
  const cudnnDataType_t f8 = CUDNN_DATA_FP8_E4M3, f32 = CUDNN_DATA_FLOAT;
  auto q = g.tensor(kQ, f8, {B, H, Lq, D}, {k.qb, D, H * D, 1}, false);
  auto kt = g.tensor(kK, f8, {B, H, D, Lk}, {k.kvb, D, 1, H * D}, false);
  auto v = g.tensor(kV, f8, {B, H, Lk, D}, {k.kvb, D, H * D, 1}, false);
  const cudnnDataType_t odt = var.o == OStore::BF16   ? CUDNN_DATA_BFLOAT16
                             : var.o == OStore::F16  ? CUDNN_DATA_HALF
                                                     : f8;
  auto o = g.tensor(kO, odt, {B, H, Lq, D}, {k.ob, D, H * D, 1}, false);
  auto attn_scale = g.scalar(kAttnScale, true);
  auto dq = g.scalar(kDescaleQ, false), dk = g.scalar(kDescaleK, false),
       dv = g.scalar(kDescaleV, false), ds = g.scalar(kDescaleS, false),
       ss = g.scalar(kScaleS, false);
  auto amax_s = g.scalar(kAmaxS, false);
  auto amax_o = var.amax_o ? g.scalar(kAmaxO, false) : nullptr;
  const std::vector<int64_t> sd = {B, H, Lq, Lk}, sst = {H * Lq * Lk, Lq * Lk, Lk, 1};
  const std::vector<int64_t> rd = {B, H, Lq, 1}, rs = {H * Lq, Lq, 1, 1};
  const std::vector<int64_t> od = {B, H, Lq, D}, ost = {H * Lq * D, Lq * D, D, 1};

  auto s = g.virt(f32, sd, sst);
  g.matmul(q, kt, s);
  auto s1 = g.virt(f32, sd, sst), s2 = g.virt(f32, sd, sst), s3 = g.virt(f32, sd, sst);
  g.pointwise(CUDNN_POINTWISE_MUL, s, attn_scale, s1);
  g.pointwise(CUDNN_POINTWISE_MUL, s1, dq, s2);
  g.pointwise(CUDNN_POINTWISE_MUL, s2, dk, s3);
  auto stats = var.stats_output ? g.tensor(kStats, f32, rd, rs, false) : nullptr;
  auto p = g.softmax_with_stats(s3, f32, sd, sst, rd, rs, stats);
  g.reduction(CUDNN_REDUCE_TENSOR_AMAX, p, amax_s);
  auto p8 = g.virt(f8, sd, sst);
  g.pointwise(CUDNN_POINTWISE_MUL, p, ss, p8);
  // O = (P8 · V8) · descale_s · descale_v [· scale_o]
  auto o0 = g.virt(f32, od, ost);
  g.matmul(p8, v, o0);
  auto o1 = g.virt(f32, od, ost);
  g.pointwise(CUDNN_POINTWISE_MUL, o0, ds, o1);
  if (var.scale_o == ScaleO::None) {
    g.pointwise(CUDNN_POINTWISE_MUL, o1, dv, o);
    if (var.amax_o) g.reduction(CUDNN_REDUCE_TENSOR_AMAX, o1, amax_o);
  } else {
    auto o2 = g.virt(f32, od, ost);
    g.pointwise(CUDNN_POINTWISE_MUL, o1, dv, o2);
    auto so = g.scalar(kScaleO, var.scale_o == ScaleO::ByValueOne);
    g.pointwise(CUDNN_POINTWISE_MUL, o2, so, o);
    if (var.amax_o) g.reduction(CUDNN_REDUCE_TENSOR_AMAX, o2, amax_o);
  }
}

Plan build_plan(const PlanKey& k) {
  Plan out;
  std::string tried;  // outcome of each variant tried
  const int only = engine_settings().fp8_sdpa_variant;  // OSP_FP8_SDPA_VARIANT=i: variant i alone (benchmarks)
  // The variant that worked for an earlier shape goes first (the others fail for dtype
  // reasons, not shapes: no need to build and reject them again for every new shape).
  constexpr int n = int(std::size(kVariants));
  std::vector<int> order;
  const int pref = g_preferred.load();
  if (pref >= 0 && !probe_all()) order.push_back(pref);
  for (int i = 0; i < n; ++i)
    if (i != pref || probe_all()) order.push_back(i);
  for (int vi : order) {
    const Variant& var = kVariants[vi];
    if (only >= 0 && vi != only % n) continue;
    try {
      ops::cuda::CudnnGraph g(kVirtual);
      build_variant(g, k, var);
      std::string note;
      cudnnBackendDescriptor_t plan = g.plan(handle(), &note, "FP8 SDPA", only_config());
      const int64_t ws = ops::cuda::plan_workspace(plan);
      tried += str(" [", var.name, "] ok: ", note, ", workspace ", ws, " bytes;");
      if (!out.plan) {
        out.plan = plan;
        out.workspace = ws;
        out.variant = &var;
        g_preferred = vi;
      } else {
        cudnnBackendDestroyDescriptor(plan);
      }
      if (!probe_all()) break;
    } catch (const Error& e) {
      tried += str(" [", var.name, "] ", e.what(), ";");
    }
  }
  const std::string shape = str("B=", k.B, " H=", k.H, " Lq=", k.Lq, " Lk=", k.Lk, " D=", k.D);
  if (!out.plan) {
    out.why = str("cuDNN ", cudnnGetVersion(), " has no FP8 SDPA engine for ", shape, ":", tried);
    set_note(out.why);
    return out;
  }
  const std::string msg = str("fp8 attention: cuDNN ", cudnnGetVersion(), " FP8 SDPA plan for ",
                              shape, ": variant '", out.variant->name, "'; variants tried:", tried);
  set_note(msg);
  log_once(str("fp8-sdpa-plan-", k.B, "-", k.H, "-", k.Lq, "-", k.Lk, "-", k.D, "-", k.qb, "-",
               k.kvb, "-", k.ob),
           msg);
  return out;
}

ops::cuda::PlanCache<PlanKey, Plan> g_plans;

}  // namespace

int fp8_sdpa_cudnn_last_o_storage() { return g_last_o.load(); }

bool fp8_sdpa_cudnn(const Fp8SdpaCall& c, std::string* why) {
  if (!aligned16(c.q) || !aligned16(c.k) || !aligned16(c.v) || !aligned16(c.out) ||
      !aligned16(c.descale_q) || !aligned16(c.descale_k) || !aligned16(c.descale_v)) {
    *why = "an operand pointer is not 16-byte aligned (H·D must be a multiple of 16)";
    return false;
  }
  PlanKey key{c.B, c.H, c.Lq, c.Lk, c.D, c.q_bstride, c.kv_bstride, c.o_bstride};
  const Plan plan = g_plans.get(key, build_plan);
  if (!plan.plan) {
    *why = plan.why;
    return false;
  }
  const Variant& var = *plan.variant;
  float* consts = constants();
  float attn_scale = c.attn_scale;
  float one = 1.0f;
  int dev = 0;
  OSP_CUDA_CHECK(cudaGetDevice(&dev));
  // F16 / E4M3 O goes to a temporary with the output's batch stride, then into the bf16 output
  Tensor o_tmp;
  void* o_ptr = c.out;
  if (var.o != OStore::BF16) {
    o_tmp = Tensor::empty({c.B, c.o_bstride}, var.o == OStore::F16 ? DType::F16 : DType::F8E4M3,
                          Device::cuda(dev));
    o_ptr = o_tmp.raw();
  }
  if (var.scale_o == ScaleO::Device)
    fp8_attn_output_scales(c.descale_v, consts + kCScaleO16, consts + kCInv16, consts + kCScaleO8,
                           consts + kCInv8);
  Tensor stats;
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kAttnScale, kDescaleQ, kDescaleK, kDescaleV,
                               kDescaleS, kScaleS, kAmaxS};
  std::vector<void*> ptrs = {const_cast<void*>(c.q), const_cast<void*>(c.k), const_cast<void*>(c.v),
                             o_ptr, &attn_scale, const_cast<float*>(c.descale_q),
                             const_cast<float*>(c.descale_k), const_cast<float*>(c.descale_v),
                             consts + kCDescaleS, consts + kCScaleS, consts + kCAmaxS};
  if (var.amax_o) {
    uids.push_back(kAmaxO);
    ptrs.push_back(consts + kCAmaxO);
  }
  if (var.scale_o == ScaleO::ByValueOne) {
    uids.push_back(kScaleO);
    ptrs.push_back(&one);
  } else if (var.scale_o == ScaleO::Device) {
    uids.push_back(kScaleO);
    ptrs.push_back(consts + (var.o == OStore::E4M3 ? kCScaleO8 : kCScaleO16));
  }
  if (var.stats_output) {
    stats = Tensor::empty({c.B * c.H * c.Lq}, DType::F32, Device::cuda(dev));
    uids.push_back(kStats);
    ptrs.push_back(stats.raw());
  }
  void* ws = plan.workspace > 0 ? ops::cuda::scratch(size_t(plan.workspace)) : nullptr;
  ops::cuda::execute_plan(plan.plan, uids, ptrs, ws);
  if (var.o != OStore::BF16) {
    const float* back = var.o == OStore::E4M3                ? consts + kCInv8
                        : var.scale_o == ScaleO::Device      ? consts + kCInv16
                                                             : consts + kCOne;
    fp8_attn_o_to_bf16(o_tmp.raw(), var.o == OStore::E4M3, back, c.out, c.B, c.Lq * c.H * c.D,
                       c.o_bstride, c.o_bstride);
  }
  g_last_o = int(var.o);
  return true;
}
#endif  // OSP_HAVE_CUDNN

}  // namespace osp::quant::cuda
#endif  // OSP_HAVE_CUDA
