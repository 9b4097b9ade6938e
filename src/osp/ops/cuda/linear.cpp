// out[M,N] = act(x[M,K] · w[N,K]ᵀ + bias[N]) through cuBLASLt, bf16 inputs, fp32 accumulation,
// bias and GELU-tanh fused into the epilogue (SiLU runs as a second kernel: cuBLASLt has no
// SiLU epilogue). Matmul descriptors, layouts and the chosen algorithm are cached per shape.
//
// Row-major out[M,N] is column-major outᵀ[N,M]; so D(N×M) = op(A)·B with A = w seen as
// column-major [K,N] (transposed), B = x seen as column-major [K,M]. The BIAS epilogue adds a
// vector over D's rows, which are our N columns.
//
// Autotuning: the heuristic's first choice can be far from the best for some shapes (measured
// on an H200: M = 19,320 and 75,600 ran their block GEMMs 7–19 % slower per row than
// M = 18,480). For GEMMs of at least 2^30 multiply-adds the first call of a shape times up to 8
// heuristic candidates on the call's own operands (beta = 0, so reruns are harmless; split-K
// candidates are excluded so the reduction order and thus the numerics do not depend on the
// choice) and keeps the fastest. OSP_GEMM_AUTOTUNE=0 keeps the heuristic's first choice.
#ifdef OSP_HAVE_CUDA
#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "osp/core/settings.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cuda_ops.h"

namespace osp::ops::cuda {
namespace {

constexpr size_t kWorkspace = size_t(32) << 20;

struct Key {
  int64_t M, N, K;
  int out_dt, bias_dt, epi;
  int align;  // min pointer alignment in bytes (16, 8, 4, 2)
  bool operator<(const Key& o) const {
    return std::tie(M, N, K, out_dt, bias_dt, epi, align) <
           std::tie(o.M, o.N, o.K, o.out_dt, o.bias_dt, o.epi, o.align);
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  std::vector<cublasLtMatmulAlgo_t> candidates;  // heuristic order, no split-K
  bool tuned = false;
};

bool autotune_enabled() { return engine_settings().gemm_autotune; }

bool splits_k(const cublasLtMatmulAlgo_t& a) {
  int32_t splitk = 1;
  size_t got = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk,
                                           sizeof(splitk), &got) != CUBLAS_STATUS_SUCCESS)
    return true;  // unknown: treat as split (never chosen by the tuner)
  return splitk > 1;
}

cudaDataType_t cuda_dt(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: fail(str("cuda::linear: unsupported dtype ", dtype_name(t)));
  }
}

int ptr_align(const void* p) {
  uintptr_t v = reinterpret_cast<uintptr_t>(p);
  for (int a : {16, 8, 4, 2})
    if (v % a == 0) return a;
  return 1;
}

Plan make_plan(const Key& k, DType out_dt, DType bias_dt) {
  Plan p;
  OSP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  cublasLtEpilogue_t epi = cublasLtEpilogue_t(k.epi);
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (k.bias_dt >= 0) {
    cudaDataType_t bt = cuda_dt(bias_dt);
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                    sizeof(bt)));
  }
  // A: w as column-major [K, N], ld K (transposed by TRANSA). B: x as column-major [K, M].
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k.K, k.N, k.K));
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k.K, k.M, k.K));
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, cuda_dt(out_dt), k.N, k.M, k.N));

  cublasLtMatmulPreference_t pref = nullptr;
  OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspace;
  OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &ws, sizeof(ws)));
  uint32_t al = uint32_t(k.align);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al)));
  constexpr int kCand = 8;
  cublasLtMatmulHeuristicResult_t res[kCand];
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cublaslt(), p.desc, p.a, p.b, p.d, p.d, pref,
                                                     kCand, res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.d);
    cublasLtMatmulDescDestroy(p.desc);
    p.desc = nullptr;
    return p;  // caller decides (e.g. retry with a converted bias)
  }
  p.algo = res[0].algo;
  for (int i = 0; i < found; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= kWorkspace &&
        !splits_k(res[i].algo))
      p.candidates.push_back(res[i].algo);
  return p;
}

std::mutex g_mu;
std::map<Key, Plan>& plans() {
  static auto* m = new std::map<Key, Plan>();
  return *m;
}

}  // namespace

void linear(const Tensor& x_in, const Tensor& w_in, const Tensor* bias, Tensor& out, Act act) {
  require_cuda(x_in, "linear", "x");
  require_cuda(w_in, "linear", "w");
  require_cuda(out, "linear", "out");
  require_contiguous(out, "linear", "out");
  OSP_CHECK(x_in.dtype() == DType::BF16 && w_in.dtype() == DType::BF16,
            "cuda::linear: x and w must be bf16, got ", x_in.desc(), " and ", w_in.desc());
  OSP_CHECK(out.dtype() == DType::BF16 || out.dtype() == DType::F32,
            "cuda::linear: out must be bf16 or f32, got ", out.desc());
  OSP_CHECK(w_in.dim() == 2, "cuda::linear: w must be [N, K], got ", w_in.desc());
  const Tensor x = x_in.contiguous();
  const Tensor w = w_in.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  OSP_CHECK(x.dim() >= 1 && x.size(-1) == K, "cuda::linear: x's last dim must be K=", K, ", got ",
            x.desc());
  const int64_t M = x.numel() / K;
  OSP_CHECK(out.numel() == M * N && out.size(-1) == N, "cuda::linear: out must hold [", M, ", ", N,
            "], got ", out.desc());
  if (M == 0 || N == 0) return;
  if (K == 0) {
    out.zero_();
    OSP_CHECK(bias == nullptr && act == Act::None, "cuda::linear: K = 0 with bias/act is not supported");
    return;
  }

  Tensor b;
  if (bias) {
    require_cuda(*bias, "linear", "bias");
    OSP_CHECK(bias->numel() == N && (bias->dtype() == DType::BF16 || bias->dtype() == DType::F32),
              "cuda::linear: bias must be bf16 or f32 with ", N, " elements, got ", bias->desc());
    b = bias->contiguous();
  }
  int epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (act == Act::GeluTanh) epi = b.defined() ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  else if (b.defined()) epi = CUBLASLT_EPILOGUE_BIAS;

  int align = std::min({ptr_align(x.raw()), ptr_align(w.raw()), ptr_align(out.raw())});
  Key key{M, N, K, int(out.dtype()), b.defined() ? int(b.dtype()) : -1, epi, align};
  Plan plan;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = plans().find(key);
    if (it == plans().end()) {
      Plan p = make_plan(key, out.dtype(), b.defined() ? b.dtype() : out.dtype());
      if (!p.desc && b.defined() && b.dtype() != out.dtype()) {
        // This cuBLASLt does not take this bias dtype with this output: convert the bias.
        log_once(str("linear-bias-conv-", int(b.dtype()), "-", int(out.dtype())),
                 str("linear: cuBLASLt has no ", dtype_name(b.dtype()), " bias with ",
                     dtype_name(out.dtype()), " output; converting the bias to ",
                     dtype_name(out.dtype())));
        key.bias_dt = int(out.dtype());
        auto it2 = plans().find(key);
        p = it2 != plans().end() ? it2->second : make_plan(key, out.dtype(), out.dtype());
      }
      OSP_CHECK(p.desc, "cuda::linear: cuBLASLt found no algorithm for M=", M, " N=", N, " K=", K,
                " out ", dtype_name(out.dtype()), " epilogue ", epi, " alignment ", align);
      plans()[key] = p;
      plan = p;
      log_once(str("linear-", M, "-", N, "-", K, "-", epi, "-", int(out.dtype())),
               str("linear: cuBLASLt bf16 GEMM M=", M, " N=", N, " K=", K, " out ",
                   dtype_name(out.dtype()), " epilogue ",
                   epi == CUBLASLT_EPILOGUE_DEFAULT ? "none"
                   : epi == CUBLASLT_EPILOGUE_BIAS  ? "bias"
                   : epi == CUBLASLT_EPILOGUE_GELU  ? "gelu_tanh"
                                                    : "bias+gelu_tanh",
                   act == Act::Silu ? " + silu kernel" : ""));
    } else {
      plan = it->second;
    }
  }
  if (b.defined() && key.bias_dt != int(b.dtype())) b = b.to(out.dtype());  // per call: no stale cache
  if (b.defined()) {
    const void* bp = b.raw();
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp,
                                                    sizeof(bp)));
  }
  const float alpha = 1.f, beta = 0.f;
  void* ws = scratch(kWorkspace);
  auto run = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(cublaslt(), plan.desc, &alpha, w.raw(), plan.a, x.raw(), plan.b, &beta,
                          out.raw(), plan.d, out.raw(), plan.d, &algo, ws, kWorkspace, stream());
  };
  if (!plan.tuned && autotune_enabled() && plan.candidates.size() > 1 &&
      double(M) * double(N) * double(K) >= double(1 << 30)) {
    // Time every candidate (one untimed run, then the best of two) on these operands.
    const int best = fastest_candidate(int(plan.candidates.size()), [&](int i) {
      return run(plan.candidates[size_t(i)]) == CUBLAS_STATUS_SUCCESS;
    });
    const cublasLtMatmulAlgo_t best_algo = best >= 0 ? plan.candidates[size_t(best)] : plan.algo;
    plan.algo = best_algo;
    plan.tuned = true;
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = plans().find(key);
    if (it != plans().end()) it->second.algo = best_algo, it->second.tuned = true;
  }
  OSP_CUBLAS_CHECK(run(plan.algo));
  if (act == Act::Silu) silu(out, out);
}

}  // namespace osp::ops::cuda
#endif
