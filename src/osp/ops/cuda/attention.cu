// Attention on CUDA: the dispatcher (cuDNN fused SDPA or our own kernel) and our own
// flash-attention forward kernel.
//
// Own kernel (FlashAttention-2 style): one CTA of 4 warps per (64 query rows, head, batch);
// each warp owns 16 query rows. K/V tiles of 64 keys stream through shared memory with
// cp.async double buffering; S = Q·Kᵀ and O += P·V use mma.sync m16n8k16 (bf16 in, fp32
// accumulate); softmax is online in fp32 (base-2 exponentials, scale folded in). Shared
// memory rows are XOR-swizzled in 16-byte chunks so ldmatrix is conflict-free.
//   q [B, Lq, H, D], k/v [B, Lk, H, D], out [B, Lq, H, D], bf16, contiguous.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "osp/core/settings.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/cuda/cuda_ops.h"
#include "osp/ops/cuda/mma_sync.cuh"

namespace osp::ops::cuda {
namespace {

constexpr int kBM = 64;  // query rows per CTA
constexpr int kBN = 64;  // keys per tile
constexpr int kThreads = 128;

struct FlashParams {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  __nv_bfloat16* o;
  const float* bias;  // [H, Lq, Lk] or null
  const int* kv_lens;  // device [B] or null
  const int* q_lens;   // device [B] or null
  float* lse;          // device f32 [B, H, Lq] or null: each row's log-sum-exp (natural log)
  int64_t Lq, Lk, H;
  float scale_log2;  // scale * log2(e)
  float scale;       // plain scale (bias path)
};

template <int D, bool BIAS>
__global__ void __launch_bounds__(kThreads, 2) flash_fwd_kernel(FlashParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int TILE = kBM * D * 2;  // bytes of one 64 x D tile
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK0 = sQ + TILE, sV0 = sQ + 3 * TILE;  // K: 2 stages, V: 2 stages

  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row_stride = p.H * D;

  const int64_t q_len = p.q_lens ? (int64_t(p.q_lens[b]) < p.Lq ? int64_t(p.q_lens[b]) : p.Lq) : p.Lq;
  int64_t kv_len = p.kv_lens ? (int64_t(p.kv_lens[b]) < p.Lk ? int64_t(p.kv_lens[b]) : p.Lk) : p.Lk;
  if (kv_len < 0) kv_len = 0;

  const __nv_bfloat16* qg = p.q + int64_t(b) * p.Lq * row_stride + h * D;
  const __nv_bfloat16* kg = p.k + int64_t(b) * p.Lk * row_stride + h * D;
  const __nv_bfloat16* vg = p.v + int64_t(b) * p.Lk * row_stride + h * D;
  __nv_bfloat16* og = p.o + int64_t(b) * p.Lq * row_stride + h * D;

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY};
  float lrow[2] = {0.f, 0.f};

  const int ntiles = (m0 < q_len) ? int((kv_len + kBN - 1) / kBN) : 0;
  if (ntiles > 0) {
    load_tile<D, kBM, kThreads>(sQ, qg, row_stride, m0, p.Lq);
    load_tile<D, kBM, kThreads>(sK0, kg, row_stride, 0, p.Lk);
    load_tile<D, kBM, kThreads>(sV0, vg, row_stride, 0, p.Lk);
    cp_async_commit();
  }
  uint32_t qf[D / 16][4];
  for (int j = 0; j < ntiles; ++j) {
    const int st = j & 1;
    if (j + 1 < ntiles) {
      const int ns = st ^ 1;
      load_tile<D, kBM, kThreads>(sK0 + ns * TILE, kg, row_stride, int64_t(j + 1) * kBN, p.Lk);
      load_tile<D, kBM, kThreads>(sV0 + ns * TILE, vg, row_stride, int64_t(j + 1) * kBN, p.Lk);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        ldsm_x4(a_rows<D>(sQ, warp * 16, ks, lane), qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
      }
    }
    const uint32_t sK = sK0 + st * TILE, sV = sV0 + st * TILE;

    // ---- S = Q Kᵀ: 16 rows x 64 keys per warp
    float s[kBN / 8][4];
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b_rows<D>(sK, np * 16, ks, lane), b0, b1, b2, b3);
        mma_bf16(s[2 * np], qf[ks], b0, b1);
        mma_bf16(s[2 * np + 1], qf[ks], b2, b3);
      }
    }

    // ---- scale (+ bias), mask, online softmax in base 2
    const int64_t n0 = int64_t(j) * kBN;
    const bool need_mask = n0 + kBN > kv_len;
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int64_t key = n0 + n * 8 + 2 * t + (e & 1);
        float x;
        if (BIAS) {
          int64_t qrow = m0 + warp * 16 + g + (e >> 1) * 8;
          float bv = (qrow < p.Lq && key < p.Lk) ? p.bias[(int64_t(h) * p.Lq + qrow) * p.Lk + key] : 0.f;
          x = (s[n][e] * p.scale + bv) * 1.4426950408889634f;
        } else {
          x = s[n][e] * p.scale_log2;
        }
        if (need_mask && key >= kv_len) x = -INFINITY;
        s[n][e] = x;
      }
    }
    float corr[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = mrow[hr];
#pragma unroll
      for (int n = 0; n < kBN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * hr], s[n][2 * hr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = (mx == -INFINITY) ? 0.f : mx;
      corr[hr] = exp2f(mrow[hr] - base);  // exp2(-inf) = 0 on the first tile
      mrow[hr] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kBN / 8; ++n) {
        s[n][2 * hr] = exp2f(s[n][2 * hr] - base);
        s[n][2 * hr + 1] = exp2f(s[n][2 * hr + 1] - base);
        sum += s[n][2 * hr] + s[n][2 * hr + 1];
      }
      lrow[hr] = lrow[hr] * corr[hr] + sum;
    }
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      o[d][0] *= corr[0];
      o[d][1] *= corr[0];
      o[d][2] *= corr[1];
      o[d][3] *= corr[1];
    }

    accumulate<D, kBN>(o, s, sV, lane);  // O += P V
    __syncthreads();  // this stage is refilled two iterations later
  }

  // ---- normalise and store (rows >= q_len get zeros; rows >= Lq are not stored)
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float l = lrow[hr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    int64_t row = m0 + warp * 16 + g + hr * 8;
    if (row >= p.Lq) continue;
    float inv = (l > 0.f && row < q_len) ? 1.f / l : 0.f;
    if (p.lse && t == 0)  // base-2 running max and sum → natural log; -inf without keys
      p.lse[(int64_t(b) * p.H + h) * p.Lq + row] =
          inv > 0.f ? (mrow[hr] + log2f(l)) * 0.6931471805599453f : -INFINITY;
    __nv_bfloat16* dst = og + row * row_stride;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      uint32_t v = pack_bf16(o[d][2 * hr] * inv, o[d][2 * hr + 1] * inv);
      *reinterpret_cast<uint32_t*>(dst + d * 8 + 2 * t) = v;
    }
  }
}

// Zeroes out rows >= q_lens[b] and whole batches with kv_lens[b] <= 0 (after cuDNN).
__global__ void zero_padded_rows_kernel(__nv_bfloat16* o, const int* q_lens, const int* kv_lens,
                                        int64_t Lq, int64_t row_elems) {
  int b = blockIdx.y;
  int64_t ql = q_lens ? q_lens[b] : Lq;
  if (kv_lens && kv_lens[b] <= 0) ql = 0;
  for (int64_t row = ql + blockIdx.x; row < Lq; row += gridDim.x) {
    __nv_bfloat16* dst = o + (int64_t(b) * Lq + row) * row_elems;
    for (int64_t c = threadIdx.x; c < row_elems; c += blockDim.x) dst[c] = __float2bfloat16(0.f);
  }
}

const char* g_last_path = "";

// Device copies of optional length tensors (host or device I32 [B]).
struct DevLens {
  const int* q = nullptr;
  const int* kv = nullptr;
};
DevLens device_lens(const AttentionArgs& a, int64_t B) {
  DevLens d;
  auto one = [&](const Tensor* t, const char* what, int slot) -> const int* {
    if (!t) return nullptr;
    OSP_CHECK(t->dtype() == DType::I32 && t->numel() == B, "cuda::attention: ", what,
              " must be i32 [", B, "], got ", t->desc());
    Tensor c = t->contiguous();
    if (c.device().is_cuda()) return c.data<int>();
    static int* buf[2] = {nullptr, nullptr};
    static int64_t cap[2] = {0, 0};
    if (cap[slot] < B) {
      int dev = 0;
      OSP_CUDA_CHECK(cudaGetDevice(&dev));
      if (buf[slot]) cuda_free(buf[slot], dev);
      buf[slot] = static_cast<int*>(cuda_alloc(size_t(B) * 4, dev));
      cap[slot] = B;
    }
    OSP_CUDA_CHECK(cudaMemcpy(buf[slot], c.raw(), size_t(B) * 4, cudaMemcpyHostToDevice));
    return buf[slot];
  };
  d.q = one(a.q_lens, "q_lens", 0);
  d.kv = one(a.kv_lens, "kv_lens", 1);
  return d;
}

void validate(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const AttentionArgs& args) {
  for (auto [t, n] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}}) {
    require_bthd(*t, "attention", n);
    require_aligned16(*t, "attention", n);  // cp.async, TMA and cuDNN read 16-byte vectors
  }
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  OSP_CHECK(D == 64 || D == 128, "cuda::attention: head dim must be 64 or 128, got ", D,
            " (use the CPU op for other sizes)");
  OSP_CHECK(k.shape() == Shape({B, Lk, H, D}) && v.shape() == k.shape() && out.shape() == q.shape(),
            "cuda::attention: shapes must be q/out [B, Lq, H, D], k/v [B, Lk, H, D]; got q ",
            q.desc(), " k ", k.desc(), " v ", v.desc(), " out ", out.desc());
  if (args.bias) {
    require_cuda(*args.bias, "attention", "bias");
    require_contiguous(*args.bias, "attention", "bias");
    OSP_CHECK(args.bias->dtype() == DType::F32 && args.bias->shape() == Shape({H, Lq, Lk}),
              "cuda::attention: bias must be f32 [", H, ", ", Lq, ", ", Lk, "], got ",
              args.bias->desc());
  }
}

// The scores' scale: AttentionArgs::scale, or 1/sqrt(D) when it is 0.
float softmax_scale(const AttentionArgs& a, int64_t D) { return a.scale > 0 ? a.scale : 1.f / std::sqrt(float(D)); }

int forced_path() {  // 0 auto, 1 flash, 2 cudnn, 3 hopper (OSP_ATTENTION, core/settings.h)
  switch (engine_settings().attention) {
    case EngineSettings::Attention::Flash: return 1;
    case EngineSettings::Attention::Cudnn: return 2;
    case EngineSettings::Attention::Hopper: return 3;
    default: return 0;
  }
}
}  // namespace

void attention_flash(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                     const AttentionArgs& args, float* lse) {
  validate(q, k, v, out, args);
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  if (q.numel() == 0) return;
  DevLens lens = device_lens(args, B);
  FlashParams p{};
  p.q = q.data<__nv_bfloat16>();
  p.k = k.data<__nv_bfloat16>();
  p.v = v.data<__nv_bfloat16>();
  p.o = out.data<__nv_bfloat16>();
  p.bias = args.bias ? args.bias->data<float>() : nullptr;
  p.kv_lens = lens.kv;
  p.q_lens = lens.q;
  p.lse = lse;
  p.Lq = Lq;
  p.Lk = Lk;
  p.H = H;
  p.scale = softmax_scale(args, D);
  p.scale_log2 = p.scale * 1.4426950408889634f;
  OSP_CHECK(H <= 65535 && B <= 65535, "cuda::attention: H and B must be <= 65535, got H=", H, " B=", B);
  dim3 grid(unsigned((Lq + kBM - 1) / kBM), unsigned(H), unsigned(B));
  size_t smem = size_t(5) * kBM * D * 2;
  auto launch = [&](auto kernel) {
    // Every launch: the four instantiations share this lambda's type, so no static flag here.
    OSP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, kThreads, smem, stream()>>>(p);
  };
  if (D == 128) {
    if (p.bias) launch(flash_fwd_kernel<128, true>);
    else launch(flash_fwd_kernel<128, false>);
  } else {
    if (p.bias) launch(flash_fwd_kernel<64, true>);
    else launch(flash_fwd_kernel<64, false>);
  }
  OSP_CUDA_LAUNCH_CHECK("flash_fwd_kernel");
  g_last_path = "flash";
}

// Defined in attention_hopper.cu (inputs validated here).
void hopper_attention_launch(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, float scale,
                             const int* q_lens, const int* kv_lens, bool pingpong, int key_tile, float* lse);

void attention_hopper(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                      const AttentionArgs& args, bool pingpong, int key_tile, float* lse) {
  validate(q, k, v, out, args);
  OSP_CHECK(!args.bias, "cuda::attention_hopper: no additive bias (the own flash kernel takes one)");
  OSP_CHECK(q.size(3) == 128, "cuda::attention_hopper: head dim must be 128, got ", q.size(3));
  OSP_CHECK(hopper_attention_supported(),
            "cuda::attention_hopper: needs a compute-capability 9.0 GPU and a build for sm_90a "
            "(CMAKE_CUDA_ARCHITECTURES=90a)");
  if (q.numel() == 0) return;
  DevLens lens = device_lens(args, q.size(0));
  const float scale = softmax_scale(args, 128);
  hopper_attention_launch(q, k, v, out, scale, lens.q, lens.kv, pingpong, key_tile, lse);
  g_last_path = "hopper";
}

const char* last_attention_path() { return g_last_path; }

// Defined in attention_cudnn.cpp; runs the fused SDPA or returns false.
bool attention_cudnn_impl(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                          float scale, const int* q_lens, const int* kv_lens);


bool attention_cudnn_per_sequence(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                                  const AttentionArgs& args) {
  validate(q, k, v, out, args);
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  if (args.bias || B > 64 || q.numel() == 0) return false;
  if ((args.q_lens && !args.q_lens->device().is_cpu()) || (args.kv_lens && !args.kv_lens->device().is_cpu()))
    return false;
  std::vector<int64_t> lq(size_t(B), Lq), lk(size_t(B), Lk);
  for (int i = 0; i < 2; ++i) {
    const Tensor* t = i == 0 ? args.q_lens : args.kv_lens;
    if (!t) continue;
    OSP_CHECK(t->dtype() == DType::I32 && t->numel() == B, "cuda::attention: ", i == 0 ? "q_lens" : "kv_lens",
              " must be i32 [", B, "], got ", t->desc());
    Tensor c = t->contiguous();
    for (int64_t b = 0; b < B; ++b) {
      int64_t v0 = c.data<int32_t>()[b], lim = i == 0 ? Lq : Lk;
      (i == 0 ? lq : lk)[size_t(b)] = v0 < 0 ? 0 : (v0 > lim ? lim : v0);
    }
  }
  const float scale = softmax_scale(args, D);
  const size_t row = size_t(H * D);
  auto view = [&](const Tensor& t, int64_t b, int64_t L, int64_t n) {
    auto* p = static_cast<__nv_bfloat16*>(t.raw()) + size_t(b * L) * row;
    return Tensor::from_blob(p, {1, n, H, D}, DType::BF16, t.device(), t.storage());
  };
  for (int64_t b = 0; b < B; ++b) {
    const int64_t nq = lq[size_t(b)], nk = lk[size_t(b)];
    if (nq > 0 && nk > 0) {
      Tensor ob = view(out, b, Lq, nq);
      if (!attention_cudnn_impl(view(q, b, Lq, nq), view(k, b, Lk, nk), view(v, b, Lk, nk), ob, scale,
                                nullptr, nullptr))
        return false;
    }
    const int64_t from = nk > 0 ? nq : 0;  // no valid key: the whole sequence is zero
    if (from < Lq)
      OSP_CUDA_CHECK(cudaMemsetAsync(static_cast<__nv_bfloat16*>(out.raw()) + size_t(b * Lq + from) * row, 0,
                                     size_t(Lq - from) * row * 2, stream()));
  }
  g_last_path = "cudnn";
  return true;
}

bool attention_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                     const AttentionArgs& args) {
  validate(q, k, v, out, args);
  // Long padded sequences: per-sequence unmasked calls beat the masked engine. "Long" = each
  // call alone fills the GPU many times over (≥ 64k query rows·heads and ≥ 4k keys on average).
  if ((args.q_lens || args.kv_lens) && !args.bias && q.size(0) <= 64 &&
      q.size(1) * q.size(2) >= 65536 && k.size(1) >= 4096 &&
      attention_cudnn_per_sequence(q, k, v, out, args)) {
    log_once(str("attn-cudnn-perseq-", q.size(0), "-", q.size(1), "-", k.size(1)),
             str("attention: cuDNN fused SDPA, one unmasked call per sequence (B=", q.size(0),
                 ", padded length ", q.size(1), ")"));
    return true;
  }
  if (args.bias) {
    log_once("attn-cudnn-bias", "attention: cuDNN path skipped (additive bias); own kernel runs");
    return false;
  }
  const int64_t B = q.size(0), Lq = q.size(1), D = q.size(3);
  if (q.numel() == 0) return true;
  DevLens lens = device_lens(args, B);
  const float scale = softmax_scale(args, D);
  if (!attention_cudnn_impl(q, k, v, out, scale, lens.q, lens.kv)) return false;
  if (lens.q || lens.kv) {
    dim3 grid(unsigned(std::min<int64_t>(std::max<int64_t>(Lq, 1), 1024)), unsigned(B));
    zero_padded_rows_kernel<<<grid, 128, 0, stream()>>>(out.data<__nv_bfloat16>(), lens.q, lens.kv,
                                                        Lq, q.size(2) * D);
    OSP_CUDA_LAUNCH_CHECK("zero_padded_rows_kernel");
  }
  g_last_path = "cudnn";
  return true;
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
               const AttentionArgs& args) {
  const int f = forced_path();
  // Own Hopper kernel: forced (OSP_ATTENTION=hopper), or on auto where it beat cuDNN — head dim
  // 128, no bias, many keys (session 15, H100: 1.3B self-attention 9.4 vs 11.6 ms, 14B 179 vs
  // 199 ms; on 512 text keys cuDNN is faster, 1.34 vs 1.93 ms). The umT5's biased attention and
  // D = 64 never take it.
  if (!args.bias && q.size(3) == 128 &&
      (f == 3 || (f == 0 && k.size(1) >= kHopperMinKeys && hopper_attention_supported()))) {
    attention_hopper(q, k, v, out, args);
    log_once(str("attn-path-hopper-", q.size(1), "-", k.size(1)),
             str("attention: own Hopper kernel (TMA + wgmma), q ", q.desc(), " k ", k.desc(),
                 args.kv_lens || args.q_lens ? " (padding mask)" : ""));
    return;
  }
  if (f != 1 && !args.bias) {
    if (attention_cudnn(q, k, v, out, args)) {
      log_once(str("attn-path-cudnn-", q.size(1), "-", k.size(1), "-", q.size(3)),
               str("attention: cuDNN fused SDPA, q ", q.desc(), " k ", k.desc(),
                   args.kv_lens || args.q_lens ? " (padding mask)" : ""));
      return;
    }
    OSP_CHECK(f != 2, "cuda::attention: OSP_ATTENTION=cudnn but cuDNN cannot run q ", q.desc(),
              " k ", k.desc(), " (run with OSP_VERBOSE=1 for the reason)");
  }
  attention_flash(q, k, v, out, args);
  log_once(str("attn-path-flash-", q.size(1), "-", k.size(1), "-", q.size(3), "-", bool(args.bias)),
           str("attention: own flash kernel (mma.sync), q ", q.desc(), " k ", k.desc(),
               args.bias ? " with bias" : ""));
}

}  // namespace osp::ops::cuda
