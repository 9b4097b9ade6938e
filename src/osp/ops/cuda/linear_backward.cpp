// linear_backward through cuBLASLt: for y[M,N] = x[M,K]·w[N,K]ᵀ + b,
//   dx[M,K] = dy·w            (overwritten; bf16 or f32)
//   dw[N,K] += dyᵀ·x          (f32, beta = 1: the GEMM accumulates into dw)
//   db[N]   += Σ_rows dy      (f32; fused into the dw GEMM as the BGRADB epilogue when
//                              cuBLASLt offers it, else the two-stage sum_rows kernel)
// x, w, dy bf16 with fp32 accumulation, or all f32 (CUBLAS_COMPUTE_32F, no TF32).
//
// Column-major views of our row-major matrices: x is xᵀ (K×M, ld K), w is wᵀ (K×N, ld K),
// dy is dyᵀ (N×M, ld N).
//   dx:  dxᵀ (K×M) = wᵀ (K×N) · dyᵀ (N×M)             A = w  (N), B = dy (N)
//   dw:  dwᵀ (K×N) = xᵀ (K×M) · dy (M×N)              A = x  (N), B = dy (T)
// BGRADB reduces op(B) = dy (M×N) over the GEMM's k = M: db[N]. The epilogue overwrites its
// bias buffer, so it writes into scratch and a small kernel adds it to db (db is +=).
#ifdef OSP_HAVE_CUDA
#include <cublasLt.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "osp/ops/cuda/cuda_backward.h"
#include "osp/ops/cuda/cuda_context.h"

namespace osp::ops::cuda {

void add_f32(const float* src, float* dst, int64_t n);  // backward.cu: dst += src

namespace {

constexpr size_t kWorkspace = size_t(32) << 20;

struct Key {
  int kind;  // 0 dx, 1 dw, 2 dw + bgradb
  int64_t m, n, k;
  int in_dt, out_dt, align;
  bool operator<(const Key& o) const {
    return std::tie(kind, m, n, k, in_dt, out_dt, align) <
           std::tie(o.kind, o.m, o.n, o.k, o.in_dt, o.out_dt, o.align);
  }
};
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;  // null: no algorithm
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

cudaDataType_t cdt(DType t) { return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

int ptr_align(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  for (int a : {16, 8, 4, 2})
    if (v % uintptr_t(a) == 0) return a;
  return 1;
}

// D (m×n, ld m) = op(A)·op(B), A stored (lda rows), B stored (ldb rows), column-major.
Plan make_plan(const Key& key) {
  Plan p;
  const bool dw = key.kind >= 1;
  const cublasOperation_t ta = CUBLAS_OP_N, tb = dw ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t in = cdt(DType(key.in_dt)), out = cdt(DType(key.out_dt));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (key.kind == 2) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BGRADB;
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    cudaDataType_t bt = CUDA_R_32F;
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                    sizeof(bt)));
  }
  // A: m×k (N) stored m×k, ld m. B: k×n (N) stored k×n, ld k; (T) stored n×k, ld n.
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, in, key.m, key.k, key.m));
  if (dw) OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, in, key.n, key.k, key.n));
  else OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, in, key.k, key.n, key.k));
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, out, key.m, key.n, key.m));

  cublasLtMatmulPreference_t pref = nullptr;
  OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspace;
  OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &ws, sizeof(ws)));
  uint32_t al = uint32_t(key.align);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al)));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(cublaslt(), p.desc, p.a, p.b, p.d, p.d, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0 || res.state != CUBLAS_STATUS_SUCCESS) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.d);
    cublasLtMatmulDescDestroy(p.desc);
    p.desc = nullptr;
    return p;
  }
  p.algo = res.algo;
  return p;
}

std::mutex g_mu;
std::map<Key, Plan>& plans() {
  static auto* m = new std::map<Key, Plan>();
  return *m;
}
Plan get_plan(const Key& key) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = plans().find(key);
  if (it == plans().end()) it = plans().emplace(key, make_plan(key)).first;
  return it->second;
}

cublasStatus_t run(const Plan& p, const void* a, const void* b, void* d, float beta,
                   const void* bias) {
  if (bias)
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof(bias)));
  const float alpha = 1.f;
  return cublasLtMatmul(cublaslt(), p.desc, &alpha, a, p.a, b, p.b, &beta, d, p.d, d, p.d, &p.algo,
                        scratch(kWorkspace), kWorkspace, stream());
}

void check_mat(const Tensor& t, const char* what) {
  require_cuda(t, "linear_backward", what);
  require_contiguous(t, "linear_backward", what);
  require_float(t, "linear_backward", what);
}
}  // namespace

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* db) {
  check_mat(x, "x");
  check_mat(w, "w");
  check_mat(dy, "dy");
  OSP_CHECK(w.dim() == 2, "cuda::linear_backward: w must be [N, K], got ", w.desc());
  const int64_t N = w.size(0), K = w.size(1);
  OSP_CHECK(x.size(-1) == K && dy.size(-1) == N && x.numel() / std::max<int64_t>(K, 1) ==
                                                        dy.numel() / std::max<int64_t>(N, 1),
            "cuda::linear_backward: x [M, ", K, "] and dy [M, ", N, "] expected, got ", x.desc(),
            " and ", dy.desc());
  const DType in = x.dtype();
  OSP_CHECK(w.dtype() == in && dy.dtype() == in, "cuda::linear_backward: x, w and dy must share one dtype "
            "(bf16, or all f32), got ", x.desc(), ", ", w.desc(), ", ", dy.desc());
  const int64_t M = K > 0 ? x.numel() / K : dy.numel() / std::max<int64_t>(N, 1);
  if (dx) {
    check_mat(*dx, "dx");
    OSP_CHECK(dx->numel() == M * K, "cuda::linear_backward: dx must hold [", M, ", ", K, "], got ",
              dx->desc());
    OSP_CHECK(in == DType::BF16 || dx->dtype() == DType::F32,
              "cuda::linear_backward: all-f32 operands need an f32 dx, got ", dx->desc());
  }
  for (auto [t, n, what] : {std::tuple{dw, N * K, "dw"}, std::tuple{db, N, "db"}}) {
    if (!t) continue;
    require_cuda(*t, "linear_backward", what);
    require_contiguous(*t, "linear_backward", what);
    OSP_CHECK(t->dtype() == DType::F32 && t->numel() == n, "cuda::linear_backward: ", what,
              " must be f32 with ", n, " elements, got ", t->desc());
  }

  if (dx && dx->numel() > 0) {
    if (N == 0 || M == 0) {
      dx->zero_();
    } else {
      const int al = std::min({ptr_align(w.raw()), ptr_align(dy.raw()), ptr_align(dx->raw())});
      const Key key{0, K, M, N, int(in), int(dx->dtype()), al};
      const Plan p = get_plan(key);
      OSP_CHECK(p.desc, "cuda::linear_backward: cuBLASLt found no algorithm for dx (M=", M, " N=", N,
                " K=", K, ")");
      OSP_CUBLAS_CHECK(run(p, w.raw(), dy.raw(), dx->raw(), 0.f, nullptr));
    }
  }
  if (M == 0) return;
  bool db_done = false;
  if (dw && N > 0 && K > 0) {
    const int al = std::min({ptr_align(x.raw()), ptr_align(dy.raw()), ptr_align(dw->raw())});
    if (db) {
      const Key key{2, K, N, M, int(in), int(DType::F32), al};
      const Plan p = get_plan(key);
      if (p.desc) {
        float* tmp = static_cast<float*>(scratch(kWorkspace + size_t(N) * 4)) + kWorkspace / 4;
        // The matmul's workspace is the first kWorkspace bytes of the same scratch buffer.
        const cublasStatus_t st = run(p, x.raw(), dy.raw(), dw->raw(), 1.f, tmp);
        if (st == CUBLAS_STATUS_SUCCESS) {
          add_f32(tmp, db->data<float>(), N);
          db_done = true;
          log_once("linear-bwd-bgradb", "linear_backward: db fused into the dw GEMM (BGRADB epilogue)");
        } else {
          // A rejected launch changes nothing (dw untouched); the plain GEMM + sum_rows follow.
          log_once("linear-bwd-bgradb-rejected",
                   str("linear_backward: the BGRADB GEMM was rejected (", cublas_status_name(st),
                       "); db by the sum_rows kernel"));
        }
      } else {
        log_once("linear-bwd-no-bgradb",
                 "linear_backward: cuBLASLt has no BGRADB algorithm here; db by the sum_rows kernel");
      }
    }
    if (!db_done) {
      const Key key{1, K, N, M, int(in), int(DType::F32), al};
      const Plan p = get_plan(key);
      OSP_CHECK(p.desc, "cuda::linear_backward: cuBLASLt found no algorithm for dw (M=", M, " N=", N,
                " K=", K, ")");
      OSP_CUBLAS_CHECK(run(p, x.raw(), dy.raw(), dw->raw(), 1.f, nullptr));
    }
  }
  if (db && !db_done && N > 0) {
    Tensor dy2 = dy.view({M, N});
    sum_rows(dy2, *db);
  }
}

}  // namespace osp::ops::cuda
#endif  // OSP_HAVE_CUDA
