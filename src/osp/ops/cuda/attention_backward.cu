// Training attention on CUDA: attention_forward_lse (output + log-sum-exp per query row) and
// attention_backward (dQ, dK, dV), q/k/v/out/dout bf16 [B, L, H, D], D ∈ {64, 128},
// lse f32 [B, H, Lq] in natural log. This file is the dispatcher; the kernels live elsewhere.
//
// Paths (cuda_backward.h: AttnPath): the forward on the own Hopper kernel (attention_hopper.cu)
// where it runs and the sequences are long, else cuDNN's fused SDPA forward-with-stats graph,
// else the own mma.sync flash forward (attention.cu) with its statistics; the backward cuDNN's
// fused SDPA backward graph (attention_backward_cudnn.cpp) where cuDNN takes the shape, else the
// own tensor-core backward (attention_flash_backward.cu).
// Packed sequences (args.seq_lens, Lq = Lk) run as batches of sequences, on every path: all of
// them in one call when the lengths are equal ([B·R, L/R, H, D] views), else one call per run of
// consecutive equal lengths, with the statistics gathered into / scattered from a packed
// [batch, H, n] buffer.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "osp/core/settings.h"
#include "osp/ops/backward.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_backward.h"
#include "osp/ops/cuda/cuda_context.h"

namespace osp::ops::cuda {

// attention_backward_cudnn.cpp
bool sdpa_forward_stats_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                              float* stats, float scale, std::string* why);
bool sdpa_backward_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                         const Tensor& dout, const float* stats, Tensor& dq, Tensor& dk,
                         Tensor& dv, float scale, std::string* why);

namespace {

using bf16 = __nv_bfloat16;
// Moves statistics between lse [B, H, Lq] and a packed buffer tmp [nb·cnt, H, n]:
// tmp[(bb·cnt + r), h, i] ↔ lse[b0 + bb, h, off + r·n + i]. to_tmp: gather, else scatter.
__global__ void lse_pack_kernel(float* lse, float* tmp, int64_t H, int64_t Lq, int64_t b0,
                                int64_t nb, int64_t off, int64_t cnt, int64_t n, bool to_tmp) {
  const int64_t total = nb * cnt * H * n;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = x % n, h = (x / n) % H, br = x / (n * H);
    const int64_t bb = br / cnt, r = br % cnt;
    float* l = lse + ((b0 + bb) * H + h) * Lq + off + r * n + i;
    if (to_tmp) tmp[x] = *l;
    else *l = tmp[x];
  }
}

// dst[b, i] = Σ_s src[b·S + s, i] (F32 sum, one bf16 rounding): the query chunks' dK/dV partials
// of the chunked backward below. src [B·S, per], dst [B, per].
__global__ void sum_chunks_kernel(const bf16* __restrict__ src, bf16* __restrict__ dst, int64_t B,
                                  int64_t S, int64_t per) {
  const int64_t total = B * per;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < total;
       x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = x / per, i = x % per;
    float acc = 0.f;
    for (int64_t s = 0; s < S; ++s) acc += __bfloat162float(src[(b * S + s) * per + i]);
    dst[x] = __float2bfloat16_rn(acc);
  }
}

// ---------------------------------------------------------------- host side
// OSP_ATTENTION (core/settings.h) until set_attention_train_path; read on first use.
AttnPath g_path_set = AttnPath::Auto;
bool g_path_is_set = false;
AttnPath path() {
  if (g_path_is_set) return g_path_set;
  switch (engine_settings().attention) {
    case EngineSettings::Attention::Flash: return AttnPath::Own;
    case EngineSettings::Attention::Cudnn: return AttnPath::Cudnn;
    case EngineSettings::Attention::Hopper: return AttnPath::Hopper;
    default: return AttnPath::Auto;
  }
}
const char* g_last_fwd = "";
const char* g_last_bwd = "";
int g_query_chunks = -1;  // set_attention_backward_query_chunks: −1 = OSP_ATTN_BWD_CHUNKS, 0 = auto

// How many query chunks the unpacked cuDNN backward runs as one batch (1 = none). cuDNN's fused
// backward parallelises over key blocks × heads × batch: with few keys (the DiT's cross-attention:
// 512 text keys, 12 heads → 48 work units on 132 SMs) most of the GPU idles while each unit loops
// over all 32,760 queries. Chunking the queries multiplies the units; the keys are repeated per
// chunk (cheap: Lk is small) and the chunks' dK/dV summed. Auto: the smallest divisor S of Lq with
// B·H·⌈Lk/128⌉·S ≥ 2 × the SMs and chunks of ≥ 1024 queries; none when Lk > 1024.
int64_t query_chunks(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int device) {
  const int64_t n = g_query_chunks >= 0 ? g_query_chunks : engine_settings().attn_bwd_chunks;
  if (n > 0) return Lq % n == 0 ? n : 1;
  if (Lk > 1024 || Lq < 4 * Lk) return 1;
  const int64_t units = B * H * ((Lk + 127) / 128), want = 2 * int64_t(cuda_sm_count(device));
  if (units >= want) return 1;
  for (int64_t S = 2; S <= 64 && Lq / S >= 1024; ++S)
    if (Lq % S == 0 && units * S >= want) return S;
  return 1;
}

// The packed-sequence layout: host lengths (empty without packing) and their offsets.
struct Packing {
  std::vector<int32_t> lens;  // [R]
  std::vector<int32_t> offs;  // [R + 1]
  bool all_equal = false;
};
Packing packing(const AttentionArgs& a, int64_t Lq, int64_t Lk, const char* op) {
  Packing pk;
  OSP_CHECK(!a.bias && !a.kv_lens && !a.q_lens, "cuda::", op,
            ": only scale and seq_lens are supported (no bias, kv_lens or q_lens)");
  if (!a.seq_lens) return pk;
  const Tensor sl = a.seq_lens->to(Device::cpu()).contiguous();
  OSP_CHECK(sl.dtype() == DType::I32 && sl.dim() == 1 && sl.size(0) >= 1, "cuda::", op,
            ": seq_lens must be i32 [R], got ", sl.desc());
  OSP_CHECK(Lq == Lk, "cuda::", op, ": packed sequences need Lq == Lk, got ", Lq, " and ", Lk);
  const int32_t* l = sl.data<int32_t>();
  pk.lens.assign(l, l + sl.size(0));
  pk.offs.assign(1, 0);
  for (int32_t n : pk.lens) {
    OSP_CHECK(n >= 0, "cuda::", op, ": negative sequence length ", n);
    pk.offs.push_back(pk.offs.back() + n);
  }
  OSP_CHECK(pk.offs.back() == Lq, "cuda::", op, ": seq_lens sum to ", pk.offs.back(), ", not Lq = ", Lq);
  pk.all_equal = true;
  for (int32_t n : pk.lens) pk.all_equal = pk.all_equal && n == pk.lens[0];
  return pk;
}

// A contiguous [nb, n, H, D] view starting at row `row0` of t's [B·L] rows.
Tensor rows_view(const Tensor& t, int64_t row0, int64_t nb, int64_t n) {
  const int64_t H = t.size(2), D = t.size(3);
  auto* p = static_cast<bf16*>(t.raw()) + row0 * H * D;
  return Tensor::from_blob(p, {nb, n, H, D}, DType::BF16, t.device(), t.storage());
}

// One cuDNN call: a batch of nb·cnt sequences of n query rows over nk keys (nk = n for packed
// self-attention; Lk for an unpacked call, where Lq may differ from Lk).
struct Group {
  int64_t b0, nb, off, cnt, n, nk;
};
std::vector<Group> groups(const Packing& pk, int64_t B, int64_t Lq, int64_t Lk) {
  std::vector<Group> g;
  if (pk.lens.empty()) return {{0, B, 0, 1, Lq, Lk}};
  if (pk.all_equal && pk.lens[0] > 0)
    return {{0, B, 0, int64_t(pk.lens.size()), pk.lens[0], pk.lens[0]}};
  for (int64_t b = 0; b < B; ++b) {
    size_t r = 0;
    while (r < pk.lens.size()) {
      size_t e = r + 1;
      while (e < pk.lens.size() && pk.lens[e] == pk.lens[r]) ++e;
      if (pk.lens[r] > 0) g.push_back({b, 1, pk.offs[r], int64_t(e - r), pk.lens[r], pk.lens[r]});
      r = e;
    }
  }
  return g;
}

void lse_pack(float* lse, float* tmp, int64_t H, int64_t Lq, const Group& g, bool to_tmp) {
  const int64_t total = g.nb * g.cnt * H * g.n;
  lse_pack_kernel<<<grid_for(total), 256, 0, stream()>>>(lse, tmp, H, Lq, g.b0, g.nb, g.off, g.cnt,
                                                         g.n, to_tmp);
  OSP_CUDA_LAUNCH_CHECK("lse_pack_kernel");
}

// Batch view of one group: rows (b0·L + off) onwards, nb·cnt sequences of len rows (g.n for
// query-side tensors, g.nk for key-side ones). A group that spans several samples (nb > 1) is
// only made when the sequences tile every sample exactly (or there is no packing).
Tensor group_view(const Tensor& t, int64_t L, const Group& g, int64_t len) {
  return rows_view(t, g.b0 * L + g.off, g.nb * g.cnt, len);
}

bool group_is_whole(const Group& g, int64_t B, int64_t L) {
  return g.b0 == 0 && g.nb == B && g.off == 0 && g.cnt == 1 && g.n == L;
}

void validate(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  require_bthd(q, op, "q");
  require_bthd(k, op, "k");
  require_bthd(v, op, "v");
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3), Lk = k.size(1);
  OSP_CHECK(D == 64 || D == 128, "cuda::", op, ": head dim must be 64 or 128, got ", D);
  OSP_CHECK(k.shape() == Shape({B, Lk, H, D}) && v.shape() == k.shape(), "cuda::", op,
            ": k/v must be [", B, ", Lk, ", H, ", ", D, "], got ", k.desc(), ", ", v.desc());
  OSP_CHECK(H <= 65535 && B <= 65535, "cuda::", op, ": H and B must be <= 65535");
}

void check_lse(const Tensor& lse, int64_t B, int64_t H, int64_t Lq, const char* op) {
  require_cuda(lse, op, "lse");
  require_contiguous(lse, op, "lse");
  OSP_CHECK(lse.dtype() == DType::F32 && lse.numel() == B * H * Lq, "cuda::", op,
            ": lse must be f32 [", B, ", ", H, ", ", Lq, "], got ", lse.desc());
}

// Whether attention_forward_lse runs the own Hopper kernel (attention_paths.h) on these groups:
// Hopper forces it for head dim 128 (other head dims take the auto choice); Auto where the GPU
// and build allow it, D = 128 and every group has at least kHopperMinKeys keys (where it measured
// faster than cuDNN's forward; below that cuDNN's statistics graph runs).
bool use_hopper_forward(const std::vector<Group>& gs, int64_t D) {
  const AttnPath pp = path();
  if ((pp != AttnPath::Auto && pp != AttnPath::Hopper) || D != 128) return false;
  if (pp == AttnPath::Hopper) return true;  // attention_hopper says where it cannot run
  if (!hopper_attention_supported()) return false;
  for (const Group& g : gs)
    if (g.nk < kHopperMinKeys) return false;
  return true;
}

float scale_of(const AttentionArgs& a, int64_t D) {
  return a.scale > 0 ? a.scale : 1.f / std::sqrt(float(D));
}
}  // namespace

void set_attention_train_path(AttnPath p) { g_path_set = p, g_path_is_set = true; }
void set_attention_backward_query_chunks(int n) {
  OSP_CHECK(n >= -1, "set_attention_backward_query_chunks: n must be >= -1, got ", n);
  g_query_chunks = n;
}
const char* last_attention_forward_lse_path() { return g_last_fwd; }
const char* last_attention_backward_path() { return g_last_bwd; }

void attention_forward_lse(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                           Tensor& lse, const AttentionArgs& args) {
  const char* op = "attention_forward_lse";
  validate(q, k, v, op);
  require_bthd(out, op, "out");
  OSP_CHECK(out.shape() == q.shape(), "cuda::", op, ": out must have q's shape ", q.desc(), ", got ",
            out.desc());
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  check_lse(lse, B, H, Lq, op);
  const Packing pk = packing(args, Lq, Lk, op);
  const float scale = scale_of(args, D);
  if (q.numel() == 0) return;

  // One fused forward-with-statistics per group (as cuDNN's graphs take them): fn(gq, gk, gv, go,
  // stats) with stats = lse itself for a whole call, else a [nb·cnt, H, n] buffer scattered into
  // lse after fn succeeds. False as soon as fn is.
  const std::vector<Group> gs = groups(pk, B, Lq, Lk);
  auto per_group = [&](auto&& fn) {
    for (const Group& g : gs) {
      Tensor gq = group_view(q, Lq, g, g.n), gk = group_view(k, Lk, g, g.nk);
      Tensor gv = group_view(v, Lk, g, g.nk), go = group_view(out, Lq, g, g.n);
      if (group_is_whole(g, B, Lq)) {
        if (!fn(gq, gk, gv, go, lse.data<float>())) return false;
      } else {
        Tensor tmp = Tensor::empty({g.nb * g.cnt, H, g.n}, DType::F32, q.device());
        if (!fn(gq, gk, gv, go, tmp.data<float>())) return false;
        lse_pack(lse.data<float>(), tmp.data<float>(), H, Lq, g, false);
      }
    }
    return true;
  };
  const std::string packs = pk.lens.empty() ? "" : str(", ", pk.lens.size(), " packed sequences");
  if (use_hopper_forward(gs, D)) {
    AttentionArgs ha;
    ha.scale = scale;
    per_group([&](const Tensor& gq, const Tensor& gk, const Tensor& gv, Tensor& go, float* st) {
      attention_hopper(gq, gk, gv, go, ha, false, 0, st);
      return true;
    });
    g_last_fwd = "hopper";
    log_once(str("attn-fwd-lse-hopper-", Lq, "-", Lk, "-", pk.lens.size()),
             str("attention_forward_lse: own Hopper kernel with statistics, q ", q.desc(), " k ", k.desc(), packs));
    return;
  }
  if (path() != AttnPath::Own) {
    std::string why;
    const bool ok = per_group([&](const Tensor& gq, const Tensor& gk, const Tensor& gv, Tensor& go, float* st) {
      return sdpa_forward_stats_cudnn(gq, gk, gv, go, st, scale, &why);
    });
    if (ok) {
      g_last_fwd = "cudnn";
      log_once(str("attn-fwd-lse-cudnn-", Lq, "-", Lk, "-", D, "-", pk.lens.size()),
               str("attention_forward_lse: cuDNN fused SDPA (stats), q ", q.desc(), " k ", k.desc(), packs));
      return;
    }
    OSP_CHECK(path() != AttnPath::Cudnn, "cuda::", op, ": cuDNN cannot run q ", q.desc(), " k ",
              k.desc(), ": ", why);
    log_once(str("attn-fwd-lse-own-", Lq, "-", Lk, "-", D),
             str("attention_forward_lse: cuDNN cannot run q ", q.desc(), " k ", k.desc(), " (", why,
                 "); our own kernel runs"));
  }
  AttentionArgs fa;
  fa.scale = scale;
  per_group([&](const Tensor& gq, const Tensor& gk, const Tensor& gv, Tensor& go, float* st) {
    attention_flash(gq, gk, gv, go, fa, st);
    return true;
  });
  g_last_fwd = "own";
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionArgs& args) {
  const char* op = "attention_backward";
  validate(q, k, v, op);
  require_bthd(out, op, "out");
  require_bthd(dout, op, "dout");
  require_bthd(dq, op, "dq");
  require_bthd(dk, op, "dk");
  require_bthd(dv, op, "dv");
  OSP_CHECK(out.shape() == q.shape() && dout.shape() == q.shape() && dq.shape() == q.shape() &&
                dk.shape() == k.shape() && dv.shape() == v.shape(),
            "cuda::", op, ": out/dout/dq must have q's shape and dk/dv k's shape");
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  check_lse(lse, B, H, Lq, op);
  const Packing pk = packing(args, Lq, Lk, op);
  const float scale = scale_of(args, D);
  if (q.numel() == 0 && k.numel() == 0) return;

  // One fused backward per group (packed sequences as batches, groups()): fn(gq, gk, gv, go, gdo,
  // gdq, gdk, gdv, stats) with stats = lse itself for a whole call, else the group's statistics
  // gathered into a [nb·cnt, H, n] buffer. False as soon as fn is.
  auto per_group = [&](auto&& fn) {
    for (const Group& g : groups(pk, B, Lq, Lk)) {
      Tensor gq = group_view(q, Lq, g, g.n), gk = group_view(k, Lk, g, g.nk);
      Tensor gv = group_view(v, Lk, g, g.nk), go = group_view(out, Lq, g, g.n);
      Tensor gdo = group_view(dout, Lq, g, g.n), gdq = group_view(dq, Lq, g, g.n);
      Tensor gdk = group_view(dk, Lk, g, g.nk), gdv = group_view(dv, Lk, g, g.nk);
      bool ok;
      if (group_is_whole(g, B, Lq)) {
        ok = fn(gq, gk, gv, go, gdo, gdq, gdk, gdv, lse.data<float>());
      } else {
        Tensor tmp = Tensor::empty({g.nb * g.cnt, H, g.n}, DType::F32, q.device());
        lse_pack(const_cast<float*>(lse.data<float>()), tmp.data<float>(), H, Lq, g, true);
        ok = fn(gq, gk, gv, go, gdo, gdq, gdk, gdv, tmp.data<float>());
      }
      if (!ok) return false;
    }
    return true;
  };

  // Deterministic training takes our own backward (no atomics) wherever cuDNN's would run.
  const bool deterministic = ops::deterministic_backward();
  OSP_CHECK(!(deterministic && path() == AttnPath::Cudnn), "cuda::", op,
            ": OSP_ATTENTION=cudnn and deterministic training (--deterministic / OSP_DETERMINISTIC) exclude each "
            "other: cuDNN's attention backward differs from run to run");
  if (path() != AttnPath::Own && !deterministic && q.numel() > 0) {
    std::string why;
    bool ok = true;
    const int64_t S = pk.lens.empty() ? query_chunks(B, H, Lq, Lk, q.device().index) : 1;
    if (S > 1) {
      // The queries as S chunks of n rows, a batch of B·S over the keys repeated per chunk.
      const int64_t n = Lq / S;
      const Group g{0, B, 0, S, n, Lk};
      Tensor kr = Tensor::empty({B * S, Lk, H, D}, DType::BF16, q.device());
      Tensor vr = Tensor::empty(kr.shape(), DType::BF16, q.device());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s) {
          Tensor kd = rows_view(kr, (b * S + s) * Lk, 1, Lk), vd = rows_view(vr, (b * S + s) * Lk, 1, Lk);
          kd.copy_from(rows_view(k, b * Lk, 1, Lk));
          vd.copy_from(rows_view(v, b * Lk, 1, Lk));
        }
      Tensor dkr = Tensor::empty(kr.shape(), DType::BF16, q.device()), dvr = Tensor::empty(kr.shape(), DType::BF16, q.device());
      Tensor tmp = Tensor::empty({B * S, H, n}, DType::F32, q.device());
      lse_pack(const_cast<float*>(lse.data<float>()), tmp.data<float>(), H, Lq, g, true);
      Tensor cq = group_view(q, Lq, g, n), co = group_view(out, Lq, g, n);
      Tensor cdo = group_view(dout, Lq, g, n), cdq = group_view(dq, Lq, g, n);
      ok = sdpa_backward_cudnn(cq, kr, vr, co, cdo, tmp.data<float>(), cdq, dkr, dvr, scale, &why);
      if (ok) {
        const int64_t per = Lk * H * D;
        sum_chunks_kernel<<<grid_for(B * per), 256, 0, stream()>>>(dkr.data<bf16>(), dk.data<bf16>(), B, S, per);
        OSP_CUDA_LAUNCH_CHECK("sum_chunks_kernel");
        sum_chunks_kernel<<<grid_for(B * per), 256, 0, stream()>>>(dvr.data<bf16>(), dv.data<bf16>(), B, S, per);
        OSP_CUDA_LAUNCH_CHECK("sum_chunks_kernel");
        g_last_bwd = "cudnn";
        log_once(str("attn-bwd-cudnn-chunked-", Lq, "-", Lk, "-", D),
                 str("attention_backward: cuDNN fused SDPA backward, q ", q.desc(), " k ", k.desc(), " as ", S,
                     " query chunks of ", n));
        return;
      }
      log_once(str("attn-bwd-chunks-refused-", Lq, "-", Lk, "-", D),
               str("attention_backward: cuDNN refused the query-chunked batch (", why, "); unchunked"));
      ok = true;
    }
    ok = per_group([&](const Tensor& gq, const Tensor& gk, const Tensor& gv, const Tensor& go, const Tensor& gdo,
                       Tensor& gdq, Tensor& gdk, Tensor& gdv, const float* st) {
      return sdpa_backward_cudnn(gq, gk, gv, go, gdo, st, gdq, gdk, gdv, scale, &why);
    });
    if (ok) {
      // Rows of zero-length sequences do not exist; nothing else is left unwritten.
      g_last_bwd = "cudnn";
      log_once(str("attn-bwd-cudnn-", Lq, "-", Lk, "-", D, "-", pk.lens.size()),
               str("attention_backward: cuDNN fused SDPA backward, q ", q.desc(), " k ", k.desc(),
                   pk.lens.empty() ? "" : str(", ", pk.lens.size(), " packed sequences")));
      return;
    }
    OSP_CHECK(path() != AttnPath::Cudnn, "cuda::", op, ": cuDNN cannot run q ", q.desc(), " k ",
              k.desc(), ": ", why);
    log_once(str("attn-bwd-own-", Lq, "-", Lk, "-", D),
             str("attention_backward: cuDNN cannot run q ", q.desc(), " k ", k.desc(), " (", why,
                 "); our own kernels run"));
  }
  if (deterministic)
    log_once(str("attn-bwd-deterministic-", Lq, "-", Lk, "-", D),
             str("attention_backward: deterministic training: our own backward (no atomics), q ", q.desc(), " k ",
                 k.desc()));
  per_group([&](const Tensor& gq, const Tensor& gk, const Tensor& gv, const Tensor& go, const Tensor& gdo,
                Tensor& gdq, Tensor& gdk, Tensor& gdv, const float* st) {
    Tensor delta = Tensor::empty({gq.size(0), H, gq.size(1)}, DType::F32, q.device());
    attention_flash_backward(gq, gk, gv, go, st, gdo, gdq, gdk, gdv, scale, delta.data<float>());
    return true;
  });
  g_last_bwd = "own";
}

}  // namespace osp::ops::cuda
