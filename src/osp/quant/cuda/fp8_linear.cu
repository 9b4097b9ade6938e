// FP8 E4M3 path on the GPU: HiF8→E4M3 operand quantization (amax and scale on the device) and
// the E4M3×E4M3 GEMM through cuBLASLt with per-tensor A/B scale pointers.
//
// Layout: row-major out[M,N] is column-major outᵀ[N,M] = op(A)·B with A = W seen as
// column-major [K,N] (TRANSA = T) and B = X seen as column-major [K,M] (TRANSB = N): the "TN"
// form that Hopper FP8 GEMMs require. D = scale_a·scale_b·(A·B) (+ bias per row of D = per
// output feature), alpha = 1, beta = 0.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <map>
#include <vector>
#include <mutex>
#include <tuple>

#include "osp/core/cuda_check.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/quant/cuda/fp8_cuda.h"
#include "osp/quant/cuda/hif8_cuda.h"
#include "osp/quant/cuda/hif8_device.cuh"
#include "osp/quant/cuda/hif8_stream.cuh"
#include "osp/quant/e4m3_scalar.h"
#include "osp/quant/hif8_scalar.h"

namespace osp::quant::cuda {
namespace {

// out = e4m3(c) · scale_inv through a 256-entry value table per block (rounded to bf16 once
// per code for bf16 output), with the HiF8 decode's warp-interleaved table lookup
// (stream_table_lookup, hif8_stream.cuh).
template <typename T, bool kBulk>
__global__ void __launch_bounds__(kStreamThreads)
    dequantize_kernel(const uint8_t* __restrict__ c, const float* __restrict__ si,
                      T* __restrict__ out, int64_t n, bool vec) {
  __shared__ uint32_t val[256];
  stream_table_lookup<T, kBulk>(c, out, n, vec, val, [&] {
    float v = detail::e4m3_decode_bits(uint8_t(threadIdx.x)) * *si;
    if (sizeof(T) == 2) v = round_bf16_dev(v);
    val[threadIdx.x] = __float_as_uint(v);
  });
}

// ---- cuBLASLt plans, cached per shape/config ----
constexpr size_t kWorkspace = size_t(32) << 20;

struct Key {
  int64_t M, N, K;
  int out_dt;  // 0 f32, 1 bf16
  int bias_dt;  // -1 none, 0 f32, 1 bf16
  bool fast;
  bool gelu;  // GELU (tanh) fused into the epilogue
  bool operator<(const Key& o) const {
    return std::tie(M, N, K, out_dt, bias_dt, fast, gelu) <
           std::tie(o.M, o.N, o.K, o.out_dt, o.bias_dt, o.fast, o.gelu);
  }
};
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

void destroy(Plan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.d) cublasLtMatrixLayoutDestroy(p.d);
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  p = Plan{};
}

// Returns false (plan destroyed) when cuBLASLt has no algorithm for this configuration.
bool make_plan(const Key& k, Plan& p) {
  using ops::cuda::cublaslt;
  OSP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  int8_t fast = k.fast ? 1 : 0;
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
  // Scale pointers must be set for the heuristic to pick scaled FP8 kernels; the real
  // pointers are set before every launch.
  const float* dummy = nullptr;
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dummy, sizeof(dummy)));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dummy, sizeof(dummy)));
  cublasLtEpilogue_t epi = k.bias_dt >= 0 ? (k.gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                          : (k.gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (k.bias_dt >= 0) {
    cudaDataType_t bt = k.bias_dt == 1 ? CUDA_R_16BF : CUDA_R_32F;
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  const cudaDataType_t dt = k.out_dt == 1 ? CUDA_R_16BF : CUDA_R_32F;
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, uint64_t(k.K), uint64_t(k.N), k.K));
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, uint64_t(k.K), uint64_t(k.M), k.K));
  OSP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, dt, uint64_t(k.N), uint64_t(k.M), k.N));

  cublasLtMatmulPreference_t pref = nullptr;
  OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = kWorkspace;
  OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  // fp8_gemm checks that every pointer is 16-byte aligned; let the heuristic rely on no more
  uint32_t al = 16;
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    OSP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al)));
  cublasLtMatmulHeuristicResult_t res[1];
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cublaslt(), p.desc, p.a, p.b, p.d, p.d, pref, 1,
                                                     res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    destroy(p);
    return false;
  }
  p.algo = res[0].algo;
  return true;
}

std::mutex g_mu;
std::map<Key, Plan>& plans() {
  static auto* m = new std::map<Key, Plan>();
  return *m;
}

}  // namespace

// codes = E4M3(HiF8_TA(x·s)), s from the device amax: the HiF8 encode kernel on x·s with the
// prefix table composed with the E4M3 code of each HiF8 value (hif8_e4m3_lut_device), so per
// element the work is x·s (rounded to bf16 for bf16 input), a shift and one shared-memory read.
void hif8_quantize_e4m3(const Tensor& x, Tensor& codes, Tensor& scale_inv, float max_target,
                        StreamShape shape) {
  Tensor d = Tensor::empty({1}, DType::F32, x.device());
  amax_to_device(x, d.data<float>());
  // n = 0 still runs one block: it writes scale_inv
  launch_code_kernel(x, codes.data<uint8_t>(), hif8_e4m3_lut_device(), d.data<float>(),
                     max_target, scale_inv.data<float>(), shape);
}

void fp8_dequantize(const Tensor& codes, const Tensor& scale_inv, Tensor& out, StreamShape shape) {
  const int64_t n = codes.numel();
  if (n == 0) return;
  const uint8_t* c = codes.data<uint8_t>();
  const bool vec = aligned16_host(c) && aligned16_host(out.raw());
  OSP_CHECK(shape.walk != Walk::kTile, "fp8_dequantize: the walk is interleaved or bulk store");
  const Grid grid = resolve_grid(shape.grid);
  // default walk: bulk stores, as the HiF8 decode (the same table-lookup body)
  const bool bulk = shape.walk != Walk::kInterleaved;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    void (*kernel)(const uint8_t*, const float*, T*, int64_t, bool) =
        bulk ? dequantize_kernel<T, true> : dequantize_kernel<T, false>;
    const int64_t items =
        bulk ? bulk_stream_items<uint8_t, T>(n, vec) : warp_stream_items<uint8_t, T>(n, vec);
    kernel<<<stream_blocks(reinterpret_cast<const void*>(kernel), items, grid), kStreamThreads, 0, ops::cuda::stream()>>>(
        c, scale_inv.data<float>(), static_cast<T*>(out.raw()), n, vec);
  };
  if (out.dtype() == DType::F32) run(float{});
  else run(__nv_bfloat16{});
  OSP_CUDA_LAUNCH_CHECK("fp8 dequantize_kernel");
}

bool fp8_gemm(const uint8_t* x, const uint8_t* w, const float* sx, const float* sw,
              const Tensor* bias, Tensor& out, int64_t M, int64_t N, int64_t K, bool fast_accum,
              bool gelu) {
  if (M == 0 || N == 0) return gelu;
  auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  OSP_CHECK(a16(x) && a16(w) && a16(out.raw()), "fp8_linear (CUDA): x codes, w codes and out must ",
            "be 16-byte aligned (use freshly allocated tensors, not offset views)");
  const int out_dt = out.dtype() == DType::BF16 ? 1 : 0;
  // Candidate configurations, best first: GELU fused (if asked) before GELU as a separate
  // kernel; the FP8 bias is BF16 (cuBLASLt's rule for BF16 output; tried first for F32 output
  // too) before F32. The first one with an algorithm wins; failures are cached.
  std::vector<std::pair<int, bool>> cands;  // (bias dtype, gelu fused)
  for (bool g : {true, false}) {
    if (g && !gelu) continue;
    if (bias) {
      cands.push_back({1, g});
      cands.push_back({0, g});
    } else {
      cands.push_back({-1, g});
    }
  }
  Tensor bias_dev;
  int bias_dt = -1;
  bool fused = false;
  Plan plan;
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto [bdt, g] : cands) {
    Key k{M, N, K, out_dt, bdt, fast_accum, g};
    auto it = plans().find(k);
    if (it == plans().end()) {
      Plan p;
      make_plan(k, p);
      it = plans().emplace(k, p).first;  // failures cached too (desc == nullptr)
    }
    if (it->second.desc) {
      plan = it->second;
      bias_dt = bdt;
      fused = g;
      break;
    }
  }
  OSP_CHECK(plan.desc, "fp8_linear: cuBLASLt found no FP8 (E4M3×E4M3) algorithm for M=", M,
            " N=", N, " K=", K, " out ", dtype_name(out.dtype()), bias ? " with bias" : "",
            " — FP8 GEMMs need an sm_89+ GPU (Ada/Hopper) and 16-byte aligned dims");
  if (bias) {
    DType want = bias_dt == 1 ? DType::BF16 : DType::F32;
    bias_dev = bias->dtype() == want ? bias->contiguous() : bias->to(want);
    if (!a16(bias_dev.raw())) bias_dev = bias_dev.clone();  // fresh allocation: aligned
    const void* bp = bias_dev.raw();
    OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
  }
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof(sw)));
  OSP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof(sx)));
  const float alpha = 1.0f, beta = 0.0f;
  void* ws = ops::cuda::scratch(kWorkspace);
  OSP_CUBLAS_CHECK(cublasLtMatmul(ops::cuda::cublaslt(), plan.desc, &alpha, w, plan.a, x, plan.b, &beta,
                                  out.raw(), plan.d, out.raw(), plan.d, &plan.algo, ws, kWorkspace,
                                  ops::cuda::stream()));
  ops::cuda::log_once(str("fp8_gemm", M, "x", N, "x", K),
                      str("fp8_linear: cuBLASLt E4M3xE4M3 -> ", dtype_name(out.dtype()), " M=", M,
                          " N=", N, " K=", K, fast_accum ? " fast-accum" : "",
                          gelu ? (fused ? " +gelu(epilogue)" : " +gelu(separate kernel)") : ""));
  return fused;
}

}  // namespace osp::quant::cuda
