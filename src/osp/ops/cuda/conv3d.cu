// CUDA conv3d, two paths (ops::set_conv3d_path / OSP_CONV3D; see ops/conv.h).
//
// "cudnn" (the default): with TF32 math, cuDNN's backend-API convolution on channels-last staging
// copies (conv3d_cudnn_graph below: the engines PyTorch's convolutions run; any pads). With
// OSP_VAE_FP32=1, or where no graph engine takes the shape, cuDNN's legacy convolution on packed
// NCDHW staging copies: the frame-major input transposed to [Cin, pad_front + T, H, W] with the
// causal front padding as explicit zero frames, the symmetric spatial pads and the legacy
// heuristic's first algorithm that fits a 1 GiB workspace, the [Cout, To, Ho, Wo] result
// transposed back with the bias added (asymmetric spatial pads — the encoder's downsample — go
// to im2col). On an H100 the legacy API offered only FP32 implicit-GEMM kernels for the VAE's
// shapes (docs/PERF.md, session 11).
//
// "im2col": im2col (fp32) over chunks of whole output frames — or, when one frame's columns
// exceed the scratch cap, over bands of output rows of one frame — + one strided-batched cuBLAS
// GEMM per chunk (one batch entry per frame) with TF32 tensor-core math (OSP_VAE_FP32=1 forces
// plain fp32 GEMMs). Frame-major layout, see ops/conv.h. Chunking whole frames keeps the launch
// count per convolution independent of the frame count (the VAE trainer's whole clips).
#include <cublas_v2.h>
#ifdef OSP_HAVE_CUDNN
#include <cudnn.h>
#endif

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "osp/core/settings.h"
#include "osp/ops/conv.h"
#include "osp/ops/cuda/conv_blas.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cudnn_graph.h"

namespace osp::ops::cuda {

cublasHandle_t conv_cublas() {
  static cublasHandle_t h = [] {
    cublasHandle_t x;
    OSP_CUBLAS_CHECK(cublasCreate(&x));
    return x;
  }();
  OSP_CUBLAS_CHECK(cublasSetStream(h, stream()));  // the ops' current stream (cuda_context.h)
  return h;
}

bool conv_use_tf32() { return !engine_settings().vae_fp32; }

namespace {

__global__ void im2col_kernel(const float* __restrict__ x, float* __restrict__ col, int64_t T,
                              int64_t Cin, int64_t H, int64_t W, int kt, int kh, int kw,
                              int64_t t0, int st, int64_t nf, int sh, int sw, int pt, int pl,
                              int64_t y0, int64_t nrows, int64_t Wo) {
  const int64_t nb = nrows * Wo, row = nf * nb;
  const int64_t K = Cin * kt * kh * kw;
  const int64_t total = K * row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = idx / row, q = idx % row, f = q / nb, p = q % nb;
    const int c = int(k % kw), b = int((k / kw) % kh), ta = int((k / (kw * kh)) % kt);
    const int64_t ci = k / (int64_t(kw) * kh * kt);
    const int64_t oy = y0 + p / Wo, ox = p % Wo;
    const int64_t ti = t0 + f * st + ta, iy = oy * sh - pt + b, ix = ox * sw - pl + c;
    float v = 0.f;
    if (ti >= 0 && ti < T && iy >= 0 && iy < H && ix >= 0 && ix < W)
      v = x[((ti * Cin + ci) * H + iy) * W + ix];
    col[idx] = v;
  }
}

// o[t, co, p] += b[co] over all frames: o is [To, Cout, HW].
__global__ void add_bias_kernel(float* __restrict__ o, const float* __restrict__ b, int64_t To,
                                int64_t Cout, int64_t HW) {
  const int64_t total = To * Cout * HW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    o[i] += b[(i / HW) % Cout];
}

__global__ void zero_kernel(float* o, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    o[i] = 0.f;
}

// [B, R, S] → [B, S, R] (+ bias[s]) through 32×32 shared-memory tiles, one block per tile
// (flattened: any R, S): the channels-last staging of the cuDNN graph path.
__global__ void transpose_rs_kernel(const float* __restrict__ in, const float* __restrict__ bias,
                                    float* __restrict__ out, int64_t R, int64_t S) {
  __shared__ float tile[32][33];
  const int64_t tiles_r = (R + 31) / 32;
  const int64_t r0 = (int64_t(blockIdx.x) % tiles_r) * 32, s0 = (int64_t(blockIdx.x) / tiles_r) * 32;
  const float* src = in + int64_t(blockIdx.y) * R * S;
  float* dst = out + int64_t(blockIdx.y) * R * S;
  for (int i = int(threadIdx.y); i < 32; i += 8) {
    const int64_t r = r0 + i, s = s0 + threadIdx.x;
    if (r < R && s < S) tile[i][threadIdx.x] = src[r * S + s];
  }
  __syncthreads();
  for (int i = int(threadIdx.y); i < 32; i += 8) {
    const int64_t s = s0 + i, r = r0 + threadIdx.x;
    if (r < R && s < S) dst[s * R + r] = tile[threadIdx.x][i] + (bias ? bias[s] : 0.f);
  }
}

void transpose_rs(const float* in, const float* bias, float* out, int64_t B, int64_t R, int64_t S) {
  const int64_t tiles = ((R + 31) / 32) * ((S + 31) / 32);
  OSP_CHECK(B <= 65535 && tiles < (int64_t(1) << 31), "conv3d (cuDNN): transpose of [", B, ", ", R, ", ", S,
            "] exceeds the launch grid");
  if (B * R * S == 0) return;
  transpose_rs_kernel<<<dim3(unsigned(tiles), unsigned(B)), dim3(32, 8), 0, stream()>>>(in, bias, out, R, S);
  OSP_CUDA_LAUNCH_CHECK("transpose_rs_kernel");
}

// cuDNN staging in: xs [Cin, pf + T, H, W] (packed NCDHW of one sample) from frame-major
// x [T, Cin, H, W]; the first pf frames are zero (the causal front padding).
__global__ void stage_ncdhw_kernel(const float* __restrict__ x, float* __restrict__ xs, int64_t T,
                                   int64_t Cin, int64_t HW, int64_t pf) {
  const int64_t Tp = T + pf, total = Cin * Tp * HW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % HW, tp = (i / HW) % Tp, ci = i / (HW * Tp);
    xs[i] = tp < pf ? 0.f : x[((tp - pf) * Cin + ci) * HW + p];
  }
}

// cuDNN staging out: out [To, Cout, HWo] (frame-major) = ys [Cout, To, HWo] + bias[co].
__global__ void unstage_ncdhw_kernel(const float* __restrict__ ys, const float* __restrict__ b,
                                     float* __restrict__ out, int64_t To, int64_t Cout, int64_t HWo) {
  const int64_t total = To * Cout * HWo;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % HWo, co = (i / HWo) % Cout, t = i / (HWo * Cout);
    out[i] = ys[(co * To + t) * HWo + p] + (b ? b[co] : 0.f);
  }
}

}  // namespace

void im2col_f32(const float* x, float* col, int64_t T, int64_t Cin, int64_t H, int64_t W, int kt,
                int kh, int kw, int64_t t0, int st, int64_t nf, int sh, int sw, int pt, int pl,
                int64_t y0, int64_t nrows, int64_t Wo) {
  const int64_t K = Cin * kt * kh * kw;
  im2col_kernel<<<grid_for(K * nf * nrows * Wo), 256, 0, stream()>>>(
      x, col, T, Cin, H, W, kt, kh, kw, t0, st, nf, sh, sw, pt, pl, y0, nrows, Wo);
  OSP_CUDA_LAUNCH_CHECK("im2col_kernel");
}

ConvChunking conv_chunking(int64_t K, int64_t To, int64_t Ho, int64_t Wo, int64_t cap_bytes) {
  const int64_t max_cols = std::max<int64_t>(Wo, cap_bytes / (4 * std::max<int64_t>(K, 1)));
  ConvChunking c;
  if (max_cols >= Ho * Wo) {
    c.frames = std::clamp<int64_t>(max_cols / std::max<int64_t>(Ho * Wo, 1), 1, std::max<int64_t>(To, 1));
    c.rows = Ho;
  } else {
    c.frames = 1;
    c.rows = std::clamp<int64_t>(max_cols / Wo, 1, Ho);
  }
  return c;
}

void gemm_rm_f32_batched(int64_t batch, int64_t M, int64_t N, int64_t K, const float* A,
                         int64_t lda, int64_t strideA, const float* B, int64_t ldb,
                         int64_t strideB, float* C, int64_t ldc, int64_t strideC, bool tf32) {
  const float one = 1.f, zero = 0.f;
  // Column-major view per batch entry: Cᵀ[N, M] = Bᵀ[N, K] · Aᵀ[K, M].
  OSP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      conv_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(N), int(M), int(K), &one, B, CUDA_R_32F,
      int(ldb), strideB, A, CUDA_R_32F, int(lda), strideA, &zero, C, CUDA_R_32F, int(ldc), strideC,
      int(batch), tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

#ifdef OSP_HAVE_CUDNN
namespace {

// RAII for the legacy cuDNN descriptors of one call (host-side objects, cheap to create).
struct ConvDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t c = nullptr;
  ConvDescs() {
    OSP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    OSP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    OSP_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    OSP_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
  }
  ~ConvDescs() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(c);
  }
  ConvDescs(const ConvDescs&) = delete;
  ConvDescs& operator=(const ConvDescs&) = delete;
};

void set_packed_5d(cudnnTensorDescriptor_t d, const std::array<int, 5>& dims) {
  std::array<int, 5> st{};
  st[4] = 1;
  for (int i = 3; i >= 0; --i) st[size_t(i)] = st[size_t(i) + 1] * dims[size_t(i) + 1];
  OSP_CUDNN_CHECK(cudnnSetTensorNdDescriptor(d, CUDNN_DATA_FLOAT, 5, dims.data(), st.data()));
}

struct ConvAlgo {
  bool ok = false;
  cudnnConvolutionFwdAlgo_t algo{};
  cudnnMathType_t math{};
  size_t workspace = 0;
  std::string why;
};

}  // namespace

// The graph path: cuDNN's backend API (the engines PyTorch's convolutions use) on channels-last
// staging copies — x [T, Cin, H, W] → [T, H, W, Cin] (cuDNN's NDHWC of one sample whose depth is
// time), w → [Cout, kt, kh, kw, Cin], the result [To, Ho, Wo, Cout] → [To, Cout, Ho, Wo] + bias.
// The causal front padding and any spatial pads are the convolution's own pre/post paddings.
// One execution plan per shape, kept for the process: the heuristics' first that finalizes, or
// with OSP_CUDNN_AUTOTUNE=all the fastest of their configs on the shape's first call.
bool conv3d_cudnn_graph(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out,
                        std::string* why) {
  auto refuse = [&](const std::string& r) {
    if (why) *why = r;
    return false;
  };
  const int64_t T = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  const int64_t To = out.size(0), Ho = out.size(2), Wo = out.size(3), K3 = kt * kh * kw;
  if (To == 0 || Cout == 0) return true;
  const int64_t Tp = T + a.pad_front, Hp = H + a.pad_top + a.pad_bottom, Wp = W + a.pad_left + a.pad_right;
  if (Tp < kt || Hp < kh || Wp < kw || (Tp - kt) / a.stride_t + 1 != To || (Hp - kh) / a.stride_h + 1 != Ho ||
      (Wp - kw) / a.stride_w + 1 != Wo)
    return refuse("output size is not the convolution's own (no post padding in time)");
  const int64_t big = int64_t(1) << 31;
  if (T * Cin * H * W >= big || To * Cout * Ho * Wo >= big) return refuse("a staging tensor over 2^31 elements");
  using Key = std::array<int64_t, 16>;
  const Key key{T, Cin, H, W, Cout, kt, kh, kw, a.pad_front, a.pad_top, a.pad_bottom, a.pad_left, a.pad_right,
                a.stride_t, a.stride_h, a.stride_w};
  // The staging copies are made on the first run (tuning runs included), so a shape cuDNN
  // refuses costs no copy.
  Tensor xs, ws_t, ys;
  auto run = [&](const PlanChoice& c) {
    if (!xs.defined()) {
      xs = Tensor::empty({T, H * W, Cin}, DType::F32, x.device());
      ws_t = Tensor::empty({Cout, K3, Cin}, DType::F32, x.device());
      ys = Tensor::empty({To, Ho * Wo, Cout}, DType::F32, x.device());
      transpose_rs(x.data<float>(), nullptr, xs.data<float>(), T, Cin, H * W);
      transpose_rs(w.data<float>(), nullptr, ws_t.data<float>(), Cout, Cin, K3);
    }
    execute_plan(c.plan, {1, 2, 3}, {xs.data<float>(), ws_t.data<float>(), ys.data<float>()},
                 c.workspace ? scratch(size_t(c.workspace)) : nullptr);
  };
  static PlanCache<Key, CachedPlan> plans;
  const CachedPlan p = plans.get(key, [&](const Key&) {
    auto build = [&](size_t max_plans) {
      CudnnGraph g(100);
      auto xd = g.tensor(1, CUDNN_DATA_FLOAT, {1, Cin, T, H, W}, {T * H * W * Cin, 1, H * W * Cin, W * Cin, Cin}, false);
      auto wd = g.tensor(2, CUDNN_DATA_FLOAT, {Cout, Cin, kt, kh, kw}, {K3 * Cin, 1, kh * kw * Cin, kw * Cin, Cin},
                         false);
      auto yd = g.tensor(3, CUDNN_DATA_FLOAT, {1, Cout, To, Ho, Wo},
                         {To * Ho * Wo * Cout, 1, Ho * Wo * Cout, Wo * Cout, Cout}, false);
      g.conv_fprop(xd, wd, yd, {a.pad_front, a.pad_top, a.pad_left}, {0, a.pad_bottom, a.pad_right},
                   {a.stride_t, a.stride_h, a.stride_w});
      return g.plans(cudnn_handle(), "conv3d", -1, max_plans);
    };
    std::string shape;  // T Cin H W Cout kt kh kw, pads front top bottom left right, strides t h w
    for (int64_t v : key) shape += str(shape.empty() ? "" : ",", v);
    return cached_plan(build, cudnn_autotune_conv(), run, str("conv3d-f32-tf32-", shape),
                       str("conv3d: cuDNN graph convolution for x ", x.desc(), " w ", w.desc()));
  });
  if (!p.plan) return refuse(p.why);
  run(p);
  transpose_rs(ys.data<float>(), bias ? bias->data<float>() : nullptr, out.data<float>(), To, Ho * Wo, Cout);
  return true;
}

bool conv3d_cudnn(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out,
                  std::string* why) {
  auto refuse = [&](const std::string& r) {
    if (why) *why = r;
    return false;
  };
  if (a.pad_top != a.pad_bottom || a.pad_left != a.pad_right)
    return refuse("asymmetric spatial padding (cuDNN pads both sides alike)");
  const int64_t T = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  const int64_t To = out.size(0), Ho = out.size(2), Wo = out.size(3), Tp = T + a.pad_front;
  if (To == 0 || Cout == 0) return true;
  const int64_t big = int64_t(1) << 31;
  if (Cin * Tp * H * W >= big || Cout * To * Ho * Wo >= big) return refuse("a staging tensor over 2^31 elements");
  const bool tf32 = conv_use_tf32();
  // one algorithm choice per shape and setting, kept for the process
  using Key = std::array<int64_t, 13>;
  const Key key{T, Cin, H, W, Cout, kt, kh, kw, a.pad_front, a.pad_top, a.pad_left,
                int64_t(a.stride_t) * 10000 + a.stride_h * 100 + a.stride_w, tf32 ? 1 : 0};
  static std::mutex mu;
  static auto* algos = new std::map<Key, ConvAlgo>();
  ConvDescs d;
  set_packed_5d(d.x, {1, int(Cin), int(Tp), int(H), int(W)});
  const std::array<int, 5> wd{int(Cout), int(Cin), int(kt), int(kh), int(kw)};
  OSP_CUDNN_CHECK(cudnnSetFilterNdDescriptor(d.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 5, wd.data()));
  const std::array<int, 3> pad{0, a.pad_top, a.pad_left}, stride{a.stride_t, a.stride_h, a.stride_w}, dil{1, 1, 1};
  OSP_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(d.c, 3, pad.data(), stride.data(), dil.data(),
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  std::array<int, 5> yd{};
  OSP_CUDNN_CHECK(cudnnGetConvolutionNdForwardOutputDim(d.c, d.x, d.w, 5, yd.data()));
  OSP_CHECK(yd[0] == 1 && yd[1] == Cout && yd[2] == To && yd[3] == Ho && yd[4] == Wo,
            "conv3d (cuDNN): cuDNN's output [", yd[0], ", ", yd[1], ", ", yd[2], ", ", yd[3], ", ", yd[4],
            "] differs from conv3d's [1, ", Cout, ", ", To, ", ", Ho, ", ", Wo, "]");
  set_packed_5d(d.y, yd);
  ConvAlgo al;
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = algos->find(key);
    if (it == algos->end()) {
      OSP_CUDNN_CHECK(cudnnSetConvolutionMathType(d.c, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
      std::array<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT> perf{};
      int n = 0;
      OSP_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(cudnn_handle(), d.x, d.w, d.c, d.y, int(perf.size()),
                                                             &n, perf.data()));
      ConvAlgo c;
      c.why = "no cuDNN algorithm for this shape within a 1 GiB workspace";
      for (int i = 0; i < n; ++i) {
        const auto& p = perf[size_t(i)];
        if (p.status != CUDNN_STATUS_SUCCESS || p.memory > (size_t(1) << 30)) continue;
        if (!tf32 && p.mathType != CUDNN_FMA_MATH && p.mathType != CUDNN_DEFAULT_MATH) continue;
        c.ok = true;
        c.algo = p.algo;
        c.math = tf32 ? p.mathType : CUDNN_FMA_MATH;
        c.workspace = p.memory;
        break;
      }
      it = algos->emplace(key, c).first;
    }
    al = it->second;
  }
  if (!al.ok) return refuse(al.why);
  OSP_CUDNN_CHECK(cudnnSetConvolutionMathType(d.c, al.math));
  Tensor xs = Tensor::empty({Cin, Tp, H, W}, DType::F32, x.device());
  Tensor ys = Tensor::empty({Cout, To, Ho, Wo}, DType::F32, x.device());
  stage_ncdhw_kernel<<<grid_for(Cin * Tp * H * W), 256, 0, stream()>>>(x.data<float>(), xs.data<float>(), T, Cin,
                                                                       H * W, a.pad_front);
  OSP_CUDA_LAUNCH_CHECK("stage_ncdhw_kernel");
  void* ws = al.workspace ? scratch(al.workspace) : nullptr;
  const float one = 1.f, zero = 0.f;
  OSP_CUDNN_CHECK(cudnnConvolutionForward(cudnn_handle(), &one, d.x, xs.data<float>(), d.w, w.data<float>(), d.c,
                                          al.algo, ws, al.workspace, &zero, d.y, ys.data<float>()));
  unstage_ncdhw_kernel<<<grid_for(To * Cout * Ho * Wo), 256, 0, stream()>>>(
      ys.data<float>(), bias ? bias->data<float>() : nullptr, out.data<float>(), To, Cout, Ho * Wo);
  OSP_CUDA_LAUNCH_CHECK("unstage_ncdhw_kernel");
  log_once(str("conv3d-cudnn-algo-", int(al.algo), "-", int(al.math)),
           str("conv3d: cuDNN convolution (algo ", int(al.algo), ", math ", int(al.math), ", workspace ",
               al.workspace >> 20, " MiB), first for x ", x.desc(), " w ", w.desc()));
  return true;
}
#else
bool conv3d_cudnn_graph(const Tensor&, const Tensor&, const Tensor*, const Conv3dArgs&, Tensor&, std::string* why) {
  if (why) *why = "this build has no cuDNN";
  return false;
}
bool conv3d_cudnn(const Tensor&, const Tensor&, const Tensor*, const Conv3dArgs&, Tensor&, std::string* why) {
  if (why) *why = "this build has no cuDNN";
  return false;
}
#endif

void conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out) {
  if (conv3d_path() != "im2col") {
    std::string why;
    if (conv_use_tf32()) {  // the graph engines run fp32 convolutions with TF32 tensor cores
      if (conv3d_cudnn_graph(x, w, bias, a, out, &why)) return;
      log_once(str("conv3d-cudnn-graph-refused-", why), str("conv3d: cuDNN graph path not taken (", why, ")"));
    }
    if (conv3d_cudnn(x, w, bias, a, out, &why)) return;
    log_once(str("conv3d-cudnn-refused-", why), str("conv3d: cuDNN path not taken (", why, "); im2col instead"));
  }
  const int64_t T = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  const int64_t To = out.size(0), Ho = out.size(2), Wo = out.size(3);
  const int64_t K = Cin * kt * kh * kw, HWo = Ho * Wo, HW = H * W;
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* op = out.data<float>();
  const bool tf32 = conv_use_tf32();
  log_once("conv3d", tf32 ? "conv3d: im2col + cuBLAS TF32 GEMM" : "conv3d: im2col + cuBLAS FP32 GEMM");
  const bool pointwise = kt == 1 && kh == 1 && kw == 1 && a.stride_h == 1 && a.stride_w == 1 &&
                         a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 && a.pad_right == 0;
  if (pointwise) {
    // Frames whose input frame is padding are zero; the rest are one batched GEMM
    // out_t[Cout, HW] = w[Cout, Cin] · x_{t·st − pf}[Cin, HW].
    int64_t first = 0;
    while (first < To && first * a.stride_t - a.pad_front < 0) ++first;
    if (first > 0) {
      zero_kernel<<<grid_for(first * Cout * HWo), 256, 0, stream()>>>(op, first * Cout * HWo);
      OSP_CUDA_LAUNCH_CHECK("zero_kernel");
    }
    if (To > first)
      gemm_rm_f32_batched(To - first, Cout, HWo, Cin, wp, Cin, 0,
                          xp + (first * a.stride_t - a.pad_front) * Cin * HW, HW,
                          int64_t(a.stride_t) * Cin * HW, op + first * Cout * HWo, HWo, Cout * HWo,
                          tf32);
  } else {
    const ConvChunking ch = conv_chunking(K, To, Ho, Wo, int64_t(256) << 20);
    float* col = static_cast<float*>(scratch(size_t(K * ch.frames * ch.rows * Wo) * 4));
    for (int64_t f0 = 0; f0 < To; f0 += ch.frames) {
      const int64_t nf = std::min(ch.frames, To - f0);
      const int64_t t0 = f0 * a.stride_t - a.pad_front;
      for (int64_t y0 = 0; y0 < Ho; y0 += ch.rows) {
        const int64_t nrows = std::min(ch.rows, Ho - y0), nb = nrows * Wo;
        im2col_f32(xp, col, T, Cin, H, W, int(kt), int(kh), int(kw), t0, a.stride_t, nf,
                   a.stride_h, a.stride_w, a.pad_top, a.pad_left, y0, nrows, Wo);
        // Frame f of the chunk: out[f0 + f][Cout, rows] = w[Cout, K] · col[K, f·nb + (0..nb)].
        gemm_rm_f32_batched(nf, Cout, nb, K, wp, K, 0, col, nf * nb, nb,
                            op + f0 * Cout * HWo + y0 * Wo, HWo, Cout * HWo, tf32);
      }
    }
  }
  if (bias && To * Cout * HWo > 0) {
    add_bias_kernel<<<grid_for(To * Cout * HWo), 256, 0, stream()>>>(op, bias->data<float>(), To,
                                                                      Cout, HWo);
    OSP_CUDA_LAUNCH_CHECK("add_bias_kernel");
  }
}

}  // namespace osp::ops::cuda
