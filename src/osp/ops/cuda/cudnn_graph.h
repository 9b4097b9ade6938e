// cuDNN backend-API operation graphs, shared by the fused attention graphs
// (ops/cuda/attention_cudnn.cpp: bf16 SDPA; quant/cuda/fp8_attention_cudnn.cpp: FP8 SDPA):
// descriptor ownership, tensors, pointwise / reduction / matmul nodes, and the search from
// heuristics to a finalized execution plan. Header-only; compiled where cuDNN is.
#pragma once
#ifdef OSP_HAVE_CUDNN
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "osp/core/error.h"
#include "osp/core/settings.h"
#include "osp/ops/tuning_cache.h"
#include "osp/ops/cuda/cuda_context.h"

// Fails with the call's text, cuDNN's reason and the place.
#define OSP_CUDNN_CHECK(call)                                                                 \
  do {                                                                                        \
    cudnnStatus_t osp_s_ = (call);                                                            \
    if (osp_s_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::osp::fail(::osp::str(#call, " failed: ", cudnnGetErrorString(osp_s_), " at ", __FILE__, \
                             ":", __LINE__));                                                 \
  } while (0)

namespace osp::ops::cuda {

// The process's cuDNN handle, bound to the ops' current stream (stream(): the legacy default
// stream, or a CUDA graph's capture stream) each time it is asked for.
inline cudnnHandle_t cudnn_handle() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t x = nullptr;
    OSP_CUDNN_CHECK(cudnnCreate(&x));
    return x;
  }();
  static cudaStream_t bound = reinterpret_cast<cudaStream_t>(-1);  // (the handle is shared too)
  if (bound != stream()) {
    OSP_CUDNN_CHECK(cudnnSetStream(h, stream()));
    bound = stream();
  }
  return h;
}

// The finalized plans of one kind of graph, one per key, built on first use and kept for the
// life of the process (never destroyed: they may be in use until exit). Thread-safe; a plan
// that could not be built is kept too, so its reason is given again without a new search.
template <typename Key, typename Plan>
class PlanCache {
 public:
  template <typename Build>
  Plan get(const Key& key, Build&& build) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = plans_->find(key);
    if (it == plans_->end()) it = plans_->emplace(key, build(key)).first;
    return it->second;
  }

 private:
  std::mutex mu_;
  std::map<Key, Plan>* plans_ = new std::map<Key, Plan>();
};

// The workspace bytes a finalized execution plan needs.
inline int64_t plan_workspace(cudnnBackendDescriptor_t plan) {
  int64_t ws = 0;
  OSP_CUDNN_CHECK(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                           CUDNN_TYPE_INT64, 1, nullptr, &ws));
  return ws;
}

// One finalized execution plan, its workspace bytes and which heuristics mode / engine config /
// engine built it.
struct PlanChoice {
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  std::string note;
  std::string engine;  // "engine N" (cuDNN's global engine index) where cuDNN tells it
};

// Owns every descriptor it creates; virtual tensors get uids from first_virtual_uid upwards.
class CudnnGraph {
 public:
  explicit CudnnGraph(int64_t first_virtual_uid) : next_virtual_(first_virtual_uid) {}
  ~CudnnGraph() {
    for (auto it = owned_.rbegin(); it != owned_.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
  }
  CudnnGraph(const CudnnGraph&) = delete;
  CudnnGraph& operator=(const CudnnGraph&) = delete;

  cudnnBackendDescriptor_t create(cudnnBackendDescriptorType_t type, const char* what) {
    cudnnBackendDescriptor_t d = nullptr;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(type, &d);
    if (s != CUDNN_STATUS_SUCCESS)
      fail(str("cudnnBackendCreateDescriptor(", what, ") failed: ", cudnnGetErrorString(s)));
    owned_.push_back(d);
    return d;
  }
  static void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
                  cudnnBackendAttributeType_t t, int64_t n, const void* v, const char* what) {
    cudnnStatus_t s = cudnnBackendSetAttribute(d, a, t, n, v);
    if (s != CUDNN_STATUS_SUCCESS)
      fail(str("cudnnBackendSetAttribute(", what, ", attr ", int(a), ") failed: ",
               cudnnGetErrorString(s)));
  }
  static void finalize(cudnnBackendDescriptor_t d, const char* what) {
    cudnnStatus_t s = cudnnBackendFinalize(d);
    if (s != CUDNN_STATUS_SUCCESS)
      fail(str("cudnnBackendFinalize(", what, ") failed: ", cudnnGetErrorString(s)));
  }

  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, const std::vector<int64_t>& dims,
                                  const std::vector<int64_t>& strides, bool is_virtual,
                                  bool by_value = false) {
    auto d = create(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    int64_t align = 16;
    set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor dtype");
    set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, int64_t(dims.size()), dims.data(),
        "tensor dims");
    set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, int64_t(strides.size()), strides.data(),
        "tensor strides");
    set(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
    set(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    bool v = is_virtual;
    set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor virtual");
    if (by_value) {
      bool bv = true;
      set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, "tensor by value");
    }
    finalize(d, "tensor");
    return d;
  }
  cudnnBackendDescriptor_t virt(cudnnDataType_t dt, const std::vector<int64_t>& dims,
                                const std::vector<int64_t>& strides) {
    return tensor(next_virtual_++, dt, dims, strides, true);
  }
  // An f32 [1,1,1,1] tensor: by value (host scalar) or a device pointer.
  cudnnBackendDescriptor_t scalar(int64_t uid, bool by_value) {
    return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, by_value);
  }

  // y = mode(x[, b][, t]) computed in `prec` (and `axis` for GEN_INDEX).
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y,
                 cudnnBackendDescriptor_t t = nullptr, int64_t axis = -1) {
    auto pw = create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise");
    auto op = create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw,
        "pw desc");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pw x");
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "pw b");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pw y");
    if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pw t");
    finalize(op, "pointwise op");
    ops_.push_back(op);
  }
  // The same in f32 precision.
  void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                 cudnnBackendDescriptor_t y) {
    pointwise(mode, CUDNN_DATA_FLOAT, x, b, y);
  }
  // Softmax over the last dim of s (f32 [B,H,Lq,Lk], dims sd / strides ss) as cuDNN's fused
  // attention engines recognise it: m = max(s), e = exp(s − m), l = Σ e, stats = m + log(l) into
  // `stats` (a real f32 [B,H,Lq,1] tensor, or a virtual one when null; rd / rs its dims and
  // strides); returns P = e / l, a virtual tensor of p_dt.
  cudnnBackendDescriptor_t softmax_with_stats(cudnnBackendDescriptor_t s, cudnnDataType_t p_dt,
                                              const std::vector<int64_t>& sd, const std::vector<int64_t>& ss,
                                              const std::vector<int64_t>& rd, const std::vector<int64_t>& rs,
                                              cudnnBackendDescriptor_t stats = nullptr) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    auto mx = virt(f32, rd, rs);
    reduction(CUDNN_REDUCE_TENSOR_MAX, s, mx);
    auto sub = virt(f32, sd, ss);
    pointwise(CUDNN_POINTWISE_SUB, f32, s, mx, sub);
    auto ex = virt(f32, sd, ss);
    pointwise(CUDNN_POINTWISE_EXP, f32, sub, nullptr, ex);
    auto sum = virt(f32, rd, rs);
    reduction(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    auto lg = virt(f32, rd, rs);
    pointwise(CUDNN_POINTWISE_LOG, f32, sum, nullptr, lg);
    if (!stats) stats = virt(f32, rd, rs);
    pointwise(CUDNN_POINTWISE_ADD, f32, mx, lg, stats);
    auto p = virt(p_dt, sd, ss);
    pointwise(CUDNN_POINTWISE_DIV, f32, ex, sum, p);
    return p;
  }
  void reduction(cudnnReduceTensorOp_t r, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    auto rd = create(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction");
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &r, "reduction op");
    set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "reduction type");
    finalize(rd, "reduction");
    auto op = create(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "red x");
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "red y");
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd, "red desc");
    finalize(op, "reduction op");
    ops_.push_back(op);
  }
  // y = x seen with y's dims/strides (a transpose of the last two dims, as the SDPA backward
  // graph uses for Pᵀ, dSᵀ and K).
  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    auto op = create(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reshape x");
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reshape y");
    finalize(op, "reshape op");
    ops_.push_back(op);
  }
  // c = a·b in f32, with optional M / N / K override tensors (per-batch sequence lengths).
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
              cudnnBackendDescriptor_t m_ovr = nullptr, cudnnBackendDescriptor_t n_ovr = nullptr,
              cudnnBackendDescriptor_t k_ovr = nullptr) {
    auto md = create(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul");
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "matmul type");
    finalize(md, "matmul");
    auto op = create(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, "mm a");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "mm b");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, "mm c");
    set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &md, "mm desc");
    if (m_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
          &m_ovr, "mm m");
    if (n_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
          &n_ovr, "mm n");
    if (k_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
          &k_ovr, "mm k");
    finalize(op, "matmul op");
    ops_.push_back(op);
  }

  // y = conv(x, w): an N-d cross-correlation (spatial dims = pre.size()) in f32 math; x, w, y
  // in cuDNN's [N, C, spatial…] dims with any strides (tensor-core engines want channels last).
  void conv_fprop(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t w, cudnnBackendDescriptor_t y,
                  const std::vector<int64_t>& pre, const std::vector<int64_t>& post,
                  const std::vector<int64_t>& stride) {
    const int64_t nd = int64_t(pre.size());
    const std::vector<int64_t> dil(pre.size(), 1);
    auto cd = create(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, "convolution");
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    set(cd, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "conv type");
    set(cd, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode, "conv mode");
    set(cd, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &nd, "conv dims");
    set(cd, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, nd, dil.data(), "conv dilations");
    set(cd, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, nd, stride.data(), "conv strides");
    set(cd, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, nd, pre.data(), "conv pre pads");
    set(cd, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, nd, post.data(), "conv post pads");
    finalize(cd, "convolution");
    auto op = create(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, "conv fprop op");
    float alpha = 1.f, beta = 0.f;
    set(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha, "conv alpha");
    set(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta, "conv beta");
    set(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cd, "conv desc");
    set(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "conv x");
    set(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w, "conv w");
    set(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "conv y");
    finalize(op, "conv fprop op");
    ops_.push_back(op);
  }

  // Builds the operation graph on handle h, asks the heuristics (mode A, then fallback) and
  // returns the first execution plan that finalizes (the plan keeps its own references; the
  // graph may be destroyed). only_config >= 0 tries that engine config index only. engine_note
  // says which mode/config/engine built it; `what` names the graph in the error when none does.
  cudnnBackendDescriptor_t plan(cudnnHandle_t h, std::string* engine_note, const char* what,
                                int only_config = -1) {
    std::vector<PlanChoice> c = plans(h, what, only_config, 1);
    *engine_note = c[0].note;
    return c[0].plan;
  }

  // Every execution plan that finalizes, up to max_plans, in the heuristics' order: mode A's
  // configs, then — only when mode A finalizes none — the fallback list's. The caller owns the
  // plans (keep_fastest destroys the ones not kept). Fails naming `what` when none finalizes.
  std::vector<PlanChoice> plans(cudnnHandle_t h, const char* what, int only_config = -1,
                                size_t max_plans = 8) {
    auto g = create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()),
        ops_.data(), "graph ops");
    set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "graph handle");
    finalize(g, "operation graph");
    std::string errors;
    std::vector<PlanChoice> out;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      if (!out.empty()) break;
      auto heur = create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
      set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g,
          "heur graph");
      set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heur mode");
      cudnnStatus_t hs = cudnnBackendFinalize(heur);
      if (hs != CUDNN_STATUS_SUCCESS) {
        errors += str(" heuristics mode ", int(mode), ": ", cudnnGetErrorString(hs), ";");
        continue;
      }
      int64_t count = 0;
      check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
            "heuristics result count");
      if (count <= 0) {
        errors += str(" heuristics mode ", int(mode), " gave no engine;");
        continue;
      }
      std::vector<cudnnBackendDescriptor_t> cfgs(static_cast<size_t>(count));
      for (auto& c : cfgs) c = create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
      int64_t got = 0;
      check(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, cfgs.data()),
            "heuristics results");
      for (int64_t i = 0; i < got && out.size() < max_plans; ++i) {
        if (only_config >= 0 && i != only_config) continue;
        cudnnBackendDescriptor_t p = nullptr;
        check(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &p),
              "execution plan");
        cudnnStatus_t s1 = cudnnBackendSetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                                                    CUDNN_TYPE_HANDLE, 1, &h);
        cudnnStatus_t s2 = cudnnBackendSetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[size_t(i)]);
        cudnnStatus_t s3 = (s1 == CUDNN_STATUS_SUCCESS && s2 == CUDNN_STATUS_SUCCESS)
                               ? cudnnBackendFinalize(p)
                               : CUDNN_STATUS_BAD_PARAM;
        if (s3 == CUDNN_STATUS_SUCCESS) {
          PlanChoice c;
          c.plan = p;
          c.workspace = plan_workspace(p);
          c.engine = engine_index(cfgs[size_t(i)]);
          c.note = str("heuristics mode ", int(mode), ", config ", i, " of ", got,
                       c.engine.empty() ? "" : ", ", c.engine);
          out.push_back(std::move(c));
          continue;
        }
        errors += str(" cfg ", i, ": ", cudnnGetErrorString(s3), ";");
        cudnnBackendDestroyDescriptor(p);
      }
    }
    if (out.empty()) fail(str("no cuDNN engine accepted the ", what, " graph:", errors));
    return out;
  }

 private:
  static void check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS)
      fail(str("cuDNN backend call (", what, ") failed: ", cudnnGetErrorString(s)));
  }
  // "engine N" (the engine's global index) where cuDNN tells it; empty otherwise.
  std::string engine_index(cudnnBackendDescriptor_t cfg) {
    cudnnBackendDescriptor_t eng = create(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
    int64_t n = 0, idx = -1;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &n, &eng) != CUDNN_STATUS_SUCCESS)
      return "";
    if (cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n,
                                 &idx) != CUDNN_STATUS_SUCCESS)
      return "";
    return str("engine ", idx);
  }

  std::vector<cudnnBackendDescriptor_t> ops_, owned_;
  int64_t next_virtual_;
};


// Runs a finalized plan on the process's handle: ptrs[i] is the data of the tensor with uid
// uids[i], ws the plan's workspace (null when it needs none).
inline void execute_plan(cudnnBackendDescriptor_t plan, const std::vector<int64_t>& uids,
                         const std::vector<void*>& ptrs, void* ws) {
  cudnnBackendDescriptor_t pack = nullptr;
  OSP_CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack));
  std::unique_ptr<void, void (*)(void*)> guard(pack, [](void* d) {
    cudnnBackendDestroyDescriptor(static_cast<cudnnBackendDescriptor_t>(d));
  });
  OSP_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                           int64_t(uids.size()), uids.data()));
  OSP_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                           CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()), ptrs.data()));
  OSP_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                           CUDNN_TYPE_VOID_PTR, 1, &ws));
  OSP_CUDNN_CHECK(cudnnBackendFinalize(pack));
  OSP_CUDNN_CHECK(cudnnBackendExecute(cudnn_handle(), plan, pack));
}

// The tuning cache key of a graph: what and its shape, prefixed with this card's name and the
// cuDNN version (a choice made on another card or library is not reused).
inline std::string tuning_key(const std::string& what) {
  static const std::string prefix = [] {
    int dev = 0;
    cudaDeviceProp p{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) p.name[0] = 0;
    return str(p.name, "|cudnn ", cudnnGetVersion(), "|");
  }();
  return prefix + what;
}

// The plan to keep of a graph's candidates (CudnnGraph::plans). With `tune` and more than one
// candidate: the choice the tuning cache (ops/tuning_cache.h) holds for cache_key when its check
// (the number of candidates and the chosen engine) still matches; else each candidate whose
// workspace is at most max(the first's, 64 MiB) runs on this call's operands through run(choice)
// — which executes it with a workspace of choice.workspace bytes — the fastest is kept
// (fastest_candidate, ops/cuda/cuda_context.h) and recorded under cache_key ("" records nothing).
// Without `tune`: the first (the heuristics' pick). The others are destroyed; the kept note says
// how it was chosen. Timing synchronises the host: meant for a plan cache's first call of a shape.
inline PlanChoice keep_fastest(std::vector<PlanChoice> c, bool tune,
                               const std::function<void(const PlanChoice&)>& run,
                               const std::string& cache_key = "") {
  size_t keep = 0;
  auto check = [&](size_t i) { return str(c.size(), "|", c[i].engine); };
  if (tune && c.size() > 1) {
    std::optional<TuningChoice> hit;
    if (!cache_key.empty()) hit = process_tuning_cache().find(cache_key);
    if (hit && hit->index >= 0 && size_t(hit->index) < c.size() && hit->check == check(size_t(hit->index))) {
      keep = size_t(hit->index);
      c[keep].note += "; the tuning cache's choice";
    } else {
      const int64_t cap = std::max<int64_t>(c[0].workspace, int64_t(64) << 20);
      std::vector<float> ms;
      const int best = fastest_candidate(int(c.size()), [&](int i) {
        if (c[size_t(i)].workspace > cap) return false;
        run(c[size_t(i)]);
        return true;
      }, &ms);
      if (best >= 0) {
        keep = size_t(best);
        std::string times;
        for (size_t i = 0; i < ms.size(); ++i)
          times += str(i ? ", " : "", std::isinf(ms[i]) ? std::string("-") : str(ms[i]));
        c[keep].note += str("; fastest of ", c.size(), " timed (ms: ", times, ")");
        if (!cache_key.empty()) process_tuning_cache().put(cache_key, TuningChoice{best, check(keep)});
      }
    }
  }
  for (size_t i = 0; i < c.size(); ++i)
    if (i != keep) cudnnBackendDestroyDescriptor(c[i].plan);
  return c[keep];
}

// A plan cache's entry: the kept plan, or (plan null) why cuDNN takes the graph not at all.
struct CachedPlan : PlanChoice {
  std::string why;
};

// One cache entry: build(max_plans) gives the graph's candidates (CudnnGraph::plans: at most
// max_plans, 8 when tuning, else 1; throws when none finalizes), keep_fastest(·, tune, run,
// tuning_key(log_key)) keeps one; logs "<what>: <note>, workspace" once per log_key under
// OSP_VERBOSE. log_key must name the graph and its whole shape
// (it is also the tuning cache's key). An exception from building becomes `why`.
template <typename Build>
CachedPlan cached_plan(Build&& build, bool tune, const std::function<void(const PlanChoice&)>& run,
                       const std::string& log_key, const std::string& what) {
  CachedPlan p;
  try {
    static_cast<PlanChoice&>(p) = keep_fastest(build(tune ? size_t(8) : size_t(1)), tune, run, tuning_key(log_key));
    log_once(log_key, str(what, ": ", p.note, ", workspace ", p.workspace, " bytes"));
  } catch (const std::exception& e) {
    p.plan = nullptr;
    p.why = e.what();
  }
  return p;
}

// Whether cuDNN graphs of this kind time their candidates (OSP_CUDNN_AUTOTUNE: core/settings.h).
inline bool cudnn_autotune_attention() { return engine_settings().cudnn_autotune != "off"; }
inline bool cudnn_autotune_conv() { return engine_settings().cudnn_autotune == "all"; }

}  // namespace osp::ops::cuda
#endif  // OSP_HAVE_CUDNN
