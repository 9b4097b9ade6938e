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

#define OSP_CUDNN_CHECK(call)                                                                 \
  do {                                                                                        \
    cudnnStatus_t osp_s_ = (call);                                                            \
    if (osp_s_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::osp::fail(::osp::str(#call, " failed: ", cudnnGetErrorString(osp_s_), " at ", __FILE__, \
                             ":", __LINE__));                                                 \
  } while (0)

namespace {

enum Uid : int64_t { kQ = 1, kK, kV, kO, kScale, kSeqQ, kSeqKV, kNeg, kVirtual = 100 };

cudnnHandle_t handle() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t x = nullptr;
    OSP_CUDNN_CHECK(cudnnCreate(&x));
    OSP_CUDNN_CHECK(cudnnSetStream(x, stream()));
    return x;
  }();
  return h;
}

// Owns every descriptor it creates.
class Graph {
 public:
  ~Graph() {
    for (auto it = owned_.rbegin(); it != owned_.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
  }
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

  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, std::vector<int64_t> dims,
                                  std::vector<int64_t> strides, bool is_virtual,
                                  bool by_value = false) {
    auto d = create(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    int64_t align = 16;
    set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor dtype");
    set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, int64_t(dims.size()), dims.data(), "tensor dims");
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

  // y = mode(x[, b][, t]) with the given math precision (and axis for GEN_INDEX).
  void pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y,
                 cudnnBackendDescriptor_t t = nullptr, int64_t axis = -1) {
    auto pw = create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise");
    auto op = create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw, "pw desc");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pw x");
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "pw b");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pw y");
    if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pw t");
    finalize(op, "pointwise op");
    ops_.push_back(op);
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
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
              cudnnBackendDescriptor_t m_ovr, cudnnBackendDescriptor_t n_ovr,
              cudnnBackendDescriptor_t k_ovr) {
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
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ovr, "mm m");
    if (n_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ovr, "mm n");
    if (k_ovr)
      set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ovr, "mm k");
    finalize(op, "matmul op");
    ops_.push_back(op);
  }

  // Builds the operation graph, asks the heuristics and finalizes the first plan that works.
  cudnnBackendDescriptor_t plan(std::string* engine_note) {
    auto g = create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    cudnnHandle_t h = handle();
    set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()),
        ops_.data(), "graph ops");
    set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "graph handle");
    finalize(g, "operation graph");
    std::string errors;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      auto heur = create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
      set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g, "heur graph");
      set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heur mode");
      if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) {
        errors += str(" heuristics mode ", int(mode), " failed to finalize;");
        continue;
      }
      int64_t count = 0;
      OSP_CUDNN_CHECK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
      if (count <= 0) {
        errors += str(" heuristics mode ", int(mode), " gave no engine;");
        continue;
      }
      std::vector<cudnnBackendDescriptor_t> cfgs(static_cast<size_t>(count));
      for (auto& c : cfgs) c = create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
      int64_t got = 0;
      OSP_CUDNN_CHECK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                               CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, cfgs.data()));
      for (int64_t i = 0; i < got; ++i) {
        cudnnBackendDescriptor_t p = nullptr;
        OSP_CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &p));
        cudnnStatus_t s1 = cudnnBackendSetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
        cudnnStatus_t s2 = cudnnBackendSetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
        cudnnStatus_t s3 = (s1 == CUDNN_STATUS_SUCCESS && s2 == CUDNN_STATUS_SUCCESS)
                               ? cudnnBackendFinalize(p)
                               : CUDNN_STATUS_BAD_PARAM;
        if (s3 == CUDNN_STATUS_SUCCESS) {
          *engine_note = str("heuristics mode ", int(mode), ", config ", i, " of ", got);
          return p;  // the plan keeps its own references; the graph may be destroyed
        }
        errors += str(" cfg ", i, ": ", cudnnGetErrorString(s3), ";");
        cudnnBackendDestroyDescriptor(p);
      }
    }
    fail("no cuDNN engine accepted the SDPA graph:" + errors);
  }

  std::vector<cudnnBackendDescriptor_t> ops_;

 private:
  std::vector<cudnnBackendDescriptor_t> owned_;
  int64_t next_virtual_ = kVirtual;
};

struct PlanKey {
  int64_t B, H, Lq, Lk, D;
  bool padding;
  bool operator<(const PlanKey& o) const {
    return std::tie(B, H, Lq, Lk, D, padding) < std::tie(o.B, o.H, o.Lq, o.Lk, o.D, o.padding);
  }
};
struct Plan {
  cudnnBackendDescriptor_t plan = nullptr;  // null: cuDNN rejected this case
  int64_t workspace = 0;
  std::string why;
};

Plan build_plan(const PlanKey& k) {
  Plan out;
  try {
    Graph g;
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
    // softmax: max, sub, exp, sum, (log, add → stats), div
    auto mx = g.virt(f32, rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, last, mx);
    auto sub = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, f32, last, mx, sub);
    auto ex = g.virt(f32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_EXP, f32, sub, nullptr, ex);
    auto sum = g.virt(f32, rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    auto lg = g.virt(f32, rd, rs);
    g.pointwise(CUDNN_POINTWISE_LOG, f32, sum, nullptr, lg);
    auto stats = g.virt(f32, rd, rs);
    g.pointwise(CUDNN_POINTWISE_ADD, f32, mx, lg, stats);
    auto p = g.virt(bf, sd, ss);
    g.pointwise(CUDNN_POINTWISE_DIV, f32, ex, sum, p);
    g.matmul(p, v, o, seq_q, nullptr, seq_kv);

    std::string note;
    out.plan = g.plan(&note);
    OSP_CUDNN_CHECK(cudnnBackendGetAttribute(out.plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                             CUDNN_TYPE_INT64, 1, nullptr, &out.workspace));
    log_once(str("cudnn-plan-", B, "-", H, "-", Lq, "-", Lk, "-", D, "-", k.padding),
             str("attention: cuDNN SDPA plan for B=", B, " H=", H, " Lq=", Lq, " Lk=", Lk, " D=", D,
                 k.padding ? " (padding mask)" : "", ": ", note, ", workspace ", out.workspace,
                 " bytes"));
  } catch (const Error& e) {
    out.plan = nullptr;
    out.why = e.what();
  }
  return out;
}

std::mutex g_mu;
std::map<PlanKey, Plan>& cache() {
  static auto* m = new std::map<PlanKey, Plan>();
  return *m;
}
}  // namespace

bool attention_cudnn_impl(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                          float scale, const int* q_lens, const int* kv_lens) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  const bool padding = q_lens || kv_lens;
  PlanKey key{B, H, Lq, Lk, D, padding};
  Plan plan;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = cache().find(key);
    if (it == cache().end()) it = cache().emplace(key, build_plan(key)).first;
    plan = it->second;
  }
  if (!plan.plan) {
    log_once(str("cudnn-reject-", B, "-", H, "-", Lq, "-", Lk, "-", D, "-", padding),
             str("attention: cuDNN cannot run B=", B, " H=", H, " Lq=", Lq, " Lk=", Lk, " D=", D,
                 padding ? " (padding)" : "", ": ", plan.why));
    return false;
  }
  // cuDNN's padding mask needs both lengths: fill the missing one with the full length.
  const int* sq = q_lens;
  const int* skv = kv_lens;
  if (padding && (!sq || !skv)) {
    static int* fill = nullptr;
    static int64_t cap = 0;
    if (cap < 2 * B) {
      int dev = 0;
      OSP_CUDA_CHECK(cudaGetDevice(&dev));
      if (fill) cuda_free(fill, dev);
      fill = static_cast<int*>(cuda_alloc(size_t(2 * B) * 4, dev));
      cap = 2 * B;
    }
    std::vector<int> host(size_t(2 * B));
    for (int64_t b = 0; b < B; ++b) {
      host[size_t(b)] = int(Lq);
      host[size_t(B + b)] = int(Lk);
    }
    OSP_CUDA_CHECK(cudaMemcpy(fill, host.data(), host.size() * 4, cudaMemcpyHostToDevice));
    if (!sq) sq = fill;
    if (!skv) skv = fill + B;
  }
  float scale_v = scale;
  float neg_v = std::numeric_limits<float>::lowest();
  void* ws = plan.workspace > 0 ? scratch(size_t(plan.workspace)) : nullptr;
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kScale};
  std::vector<void*> ptrs = {q.raw(), k.raw(), v.raw(), out.raw(), &scale_v};
  if (padding) {
    uids.insert(uids.end(), {kSeqQ, kSeqKV, kNeg});
    ptrs.insert(ptrs.end(), {const_cast<int*>(sq), const_cast<int*>(skv), &neg_v});
  }
  cudnnBackendDescriptor_t pack = nullptr;
  OSP_CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack));
  std::unique_ptr<void, void (*)(void*)> guard(pack, [](void* d) {
    cudnnBackendDestroyDescriptor(static_cast<cudnnBackendDescriptor_t>(d));
  });
  OSP_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                           int64_t(uids.size()), uids.data()));
  OSP_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                           CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()), ptrs.data()));
  OSP_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR,
                                           1, &ws));
  OSP_CUDNN_CHECK(cudnnBackendFinalize(pack));
  OSP_CUDNN_CHECK(cudnnBackendExecute(handle(), plan.plan, pack));
  return true;
}
#endif  // OSP_HAVE_CUDNN

}  // namespace osp::ops::cuda
#endif  // OSP_HAVE_CUDA
