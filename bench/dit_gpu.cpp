// DiT block and forward timing on one GPU at real Wan2.1 shapes, with random bf16 weights:
// 1.3B at 832×480×81 and 14B at 1280×720×81 and 1280×768×81; full blocks (dense attention)
// and OSP-Next sparse blocks (Skiparse-2D, P = 2: the residual stream is permuted by one
// gather per block into the 4 sub-sequences, stored without Skiparse padding as the model does;
// attention runs per sub-sequence through AttentionArgs::seq_lens). The block is written here with the ops of ops.h (the same
// calls the model makes), so it measures the CUDA backend, not the model code.
//
// A forward is estimated as layers × block + the embed/head GEMMs (+ for hybrid, the two
// full↔sparse transition gathers): hybrid = 8 full blocks (dual-end) + the rest sparse.
// Cross-attention K/V of the 512 text rows are per-prompt constants (cached once per prompt
// per block, as the engine does), so they are outside the per-step block time.
//   bench_dit_gpu [--quick] [--reps N]
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/ops/ops.h"
#include "osp/sparse/skiparse.h"
#ifdef OSP_HAVE_CUDA
#include "gpu_bench_util.h"
#include "osp/ops/cuda/attention_paths.h"
#endif

#ifdef OSP_HAVE_CUDA
namespace {
using namespace osp;

struct Model {
  const char* name;
  int64_t d, F, H, layers;
  int64_t T, h, w;  // token grid
  int64_t hp, wp;   // Skiparse-padded token grid (h, w multiples of 2P = 4)
};

struct BlockWeights {
  Tensor wq, wk, wv, wo, bq, bk, bv, bo, gq, gk;  // self-attention
  Tensor cq, co, cbq, cbo, cgq, kctx, vctx;       // cross-attention (k/v cached per prompt)
  Tensor g3, b3;                                  // norm3 (affine)
  Tensor w1, b1, w2, b2;                          // FFN
  Tensor mod;                                     // [6, d] f32 (modulation + e0)
};

BlockWeights make_weights(const Model& m, uint32_t& seed) {
  const int64_t d = m.d, F = m.F;
  const float s = 1.f / std::sqrt(float(d));
  auto bf = [&](Shape sh, float sc) { return bench::random_gpu(sh, DType::BF16, sc, seed++); };
  auto f32 = [&](Shape sh, float sc) { return bench::random_gpu(sh, DType::F32, sc, seed++); };
  BlockWeights w;
  w.wq = bf({d, d}, s); w.wk = bf({d, d}, s); w.wv = bf({d, d}, s); w.wo = bf({d, d}, s);
  w.bq = bf({d}, 0.02f); w.bk = bf({d}, 0.02f); w.bv = bf({d}, 0.02f); w.bo = bf({d}, 0.02f);
  w.gq = f32({d}, 1.f); w.gk = f32({d}, 1.f);
  w.cq = bf({d, d}, s); w.co = bf({d, d}, s); w.cbq = bf({d}, 0.02f); w.cbo = bf({d}, 0.02f);
  w.cgq = f32({d}, 1.f);
  w.kctx = bf({1, 512, m.H, d / m.H}, 1.f); w.vctx = bf({1, 512, m.H, d / m.H}, 1.f);
  w.g3 = f32({d}, 1.f); w.b3 = f32({d}, 0.1f);
  w.w1 = bf({F, d}, s); w.b1 = bf({F}, 0.02f);
  w.w2 = bf({d, F}, 1.f / std::sqrt(float(F))); w.b2 = bf({d}, 0.02f);
  w.mod = f32({6, d}, 0.1f);
  return w;
}

struct Acts {
  Tensor X, Xs, h, q, k, v, o, y, f, rope, perm;
};

Acts make_acts(const Model& m, int64_t L, uint32_t& seed) {
  const int64_t d = m.d, Dh = d / m.H;
  const Device g = Device::cuda(0);
  Acts a;
  a.X = bench::random_gpu({L, d}, DType::F32, 1.f, seed++);
  a.Xs = Tensor::empty({L, d}, DType::F32, g);
  for (Tensor* t : {&a.h, &a.q, &a.k, &a.v, &a.o, &a.y}) *t = Tensor::empty({L, d}, DType::BF16, g);
  a.f = Tensor::empty({L, m.F}, DType::BF16, g);
  // RoPE table [1, L, Dh/2, 2]: random angles (the values do not change the timing).
  std::vector<float> cs(size_t(L * Dh));
  for (size_t i = 0; i < cs.size(); i += 2) {
    float th = float((i * 7919) % 6283) * 1e-3f;
    cs[i] = std::cos(th);
    cs[i + 1] = std::sin(th);
  }
  a.rope = Tensor::from_vector(cs, {1, L, Dh / 2, 2}).to(g);
  // A token permutation (stands in for the token↔group switch; cost depends on size only).
  Tensor p = Tensor::empty({L}, DType::I32);
  for (int64_t i = 0; i < L; ++i) p.data<int32_t>()[i] = int32_t((i * 40503) % L);
  a.perm = p.to(g);
  return a;
}

// Accumulates GPU time per category between consecutive events.
struct Stages {
  std::vector<cudaEvent_t> ev;
  std::vector<std::string> cat;
  void mark(const std::string& c) {
    cudaEvent_t e;
    OSP_CUDA_CHECK(cudaEventCreate(&e));
    OSP_CUDA_CHECK(cudaEventRecord(e, 0));
    ev.push_back(e);
    cat.push_back(c);
  }
  std::map<std::string, double> collect() {
    OSP_CUDA_CHECK(cudaEventSynchronize(ev.back()));
    std::map<std::string, double> r;
    for (size_t i = 1; i < ev.size(); ++i) {
      float ms = 0;
      OSP_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[i - 1], ev[i]));
      r[cat[i]] += ms;
    }
    for (auto e : ev) cudaEventDestroy(e);
    ev.clear();
    cat.clear();
    return r;
  }
};

// One DiT block (wan-spec §2.2). sparse: Skiparse block over 4 sub-sequences of L/4 rows each
// with `real` real tokens per sub-sequence; preceded by the layout switch (one gather of X).
void block(const Model& m, const BlockWeights& w, Acts& a, int64_t L, bool sparse,
           const Tensor& seq_lens, Stages* st) {
  auto mark = [&](const char* c) {
    if (st) st->mark(c);
  };
  const int64_t d = m.d, H = m.H, Dh = d / H;
  const float eps = 1e-6f;
  mark("start");
  if (sparse) {  // token <-> group layout switch of the residual stream
    ops::gather_rows(a.X, a.perm, a.Xs);
    std::swap(a.X, a.Xs);
    mark("other");
  }
  Tensor sh1 = w.mod.select(0, 0), sc1 = w.mod.select(0, 1), g1 = w.mod.select(0, 2);
  Tensor sh2 = w.mod.select(0, 3), sc2 = w.mod.select(0, 4), g2 = w.mod.select(0, 5);
  // self-attention
  ops::layer_norm_modulate(a.X, sh1, sc1, eps, a.h);
  mark("other");
  ops::linear(a.h, w.wq, &w.bq, a.q);
  ops::linear(a.h, w.wk, &w.bk, a.k);
  ops::linear(a.h, w.wv, &w.bv, a.v);
  mark("gemm");
  ops::rms_norm(a.q, w.gq, eps, a.q);
  ops::rms_norm(a.k, w.gk, eps, a.k);
  Tensor q4 = a.q.view({1, L, H, Dh}), k4 = a.k.view({1, L, H, Dh});
  ops::rope(q4, a.rope, q4);
  ops::rope(k4, a.rope, k4);
  mark("other");
  ops::AttentionArgs aa;
  if (sparse) aa.seq_lens = &seq_lens;
  Tensor qa = a.q.view({1, L, H, Dh}), ka = a.k.view({1, L, H, Dh}), va = a.v.view({1, L, H, Dh}),
         oa = a.o.view({1, L, H, Dh});
  ops::attention(qa, ka, va, oa, aa);
  mark("self_attn");
  ops::linear(a.o, w.wo, &w.bo, a.y);
  mark("gemm");
  ops::add_gated_(a.X, a.y, &g1);
  // cross-attention (no modulation, no gate)
  ops::layer_norm(a.X, &w.g3, &w.b3, eps, a.h);
  mark("other");
  ops::linear(a.h, w.cq, &w.cbq, a.q);
  mark("gemm");
  ops::rms_norm(a.q, w.cgq, eps, a.q);
  mark("other");
  Tensor qc = a.q.view({1, L, H, Dh}), oc = a.o.view({1, L, H, Dh});
  ops::attention(qc, w.kctx, w.vctx, oc);
  mark("cross_attn");
  ops::linear(a.o, w.co, &w.cbo, a.y);
  mark("gemm");
  ops::add_gated_(a.X, a.y, nullptr);
  // FFN
  ops::layer_norm_modulate(a.X, sh2, sc2, eps, a.h);
  mark("other");
  ops::linear(a.h, w.w1, &w.b1, a.f, ops::Act::GeluTanh);
  ops::linear(a.f, w.w2, &w.b2, a.y);
  mark("gemm");
  ops::add_gated_(a.X, a.y, &g2);
  mark("other");
}

void print_block(const Model& m, const char* kind, int64_t L, const Tensor& seq_lens, double ms,
                 std::map<std::string, double> parts, int reps, const std::string& card) {
  const double d = double(m.d), F = double(m.F), Lr = double(L);
  const double gemm_flop = 8 * Lr * d * d + 4 * Lr * d * d + 4 * Lr * d * F;
  const bool sparse = std::string(kind) == "sparse";
  double attn_flop = 4.0 * Lr * Lr * d;
  if (sparse) {
    attn_flop = 0;
    for (int64_t i = 0; i < seq_lens.numel(); ++i)
      attn_flop += 4.0 * double(seq_lens.data<int32_t>()[i]) * double(seq_lens.data<int32_t>()[i]) * d;
  }
  const double cross_flop = 4.0 * Lr * 512 * d;
  for (auto& kv : parts) kv.second /= reps;
  std::printf("{\"bench\":\"dit_block\",\"model\":\"%s\",\"kind\":\"%s\",\"tokens\":%lld,"
              "\"ms\":%.3f,\"gemm_ms\":%.3f,\"gemm_tflops\":%.1f,\"self_attn_ms\":%.3f,"
              "\"attn_tflops\":%.1f,\"attn_path\":\"%s\",\"cross_attn_ms\":%.3f,\"other_ms\":%.3f,"
              "\"block_tflops\":%.1f,\"card\":\"%s\"}\n",
              m.name, kind, (long long)L, ms, parts["gemm"], gemm_flop / parts["gemm"] * 1e-9,
              parts["self_attn"], attn_flop / parts["self_attn"] * 1e-9,
              ops::cuda::last_attention_path(), parts["cross_attn"], parts["other"],
              (gemm_flop + attn_flop + cross_flop) / ms * 1e-9, card.c_str());
  std::fflush(stdout);
}
}  // namespace
#endif

int main(int argc, char** argv) {
#ifndef OSP_HAVE_CUDA
  std::printf("{\"bench\":\"dit_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
#else
  using namespace osp;
  if (!cuda_available()) {
    std::printf("{\"bench\":\"dit_gpu\",\"skipped\":\"no CUDA GPU\"}\n");
    return 0;
  }
  bool quick = false;
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  const std::string card = bench::card_name();
  std::vector<Model> models = {
      {"1.3B-832x480x81", 1536, 8960, 12, 30, 21, 30, 52, 32, 52},
      {"14B-1280x720x81", 5120, 13824, 40, 40, 21, 45, 80, 48, 80},
      {"14B-1280x768x81", 5120, 13824, 40, 40, 21, 48, 80, 48, 80},
  };
  if (quick) models.resize(1);
  uint32_t seed = 11;
  for (const Model& m : models) {
    cuda_empty_cache();
    cuda_reset_peak();
    BlockWeights w = make_weights(m, seed);
    const int64_t L = m.T * m.h * m.w;
    const auto lens = sparse::skiparse_row_lengths(sparse::Grid{m.T, m.h, m.w}, 2,
                                                   sparse::BlockKind::Token);
    Tensor seq_lens = Tensor::empty({int64_t(lens.size())}, DType::I32);
    std::copy(lens.begin(), lens.end(), seq_lens.data<int32_t>());
    double ms_kind[2] = {0, 0};
    for (int sparse = 0; sparse < 2; ++sparse) {
      const int64_t Lb = L;
      Acts a = make_acts(m, Lb, seed);
      auto run = [&] { block(m, w, a, Lb, sparse, seq_lens, nullptr); };
      double ms = bench::time_ms(run, 1, reps);
      Stages st;
      std::map<std::string, double> parts;
      for (int r = 0; r < reps; ++r) {
        block(m, w, a, Lb, sparse, seq_lens, &st);
        for (auto& kv : st.collect()) parts[kv.first] += kv.second;
      }
      print_block(m, sparse ? "sparse" : "full", Lb, seq_lens, ms, parts, reps, card);
      ms_kind[sparse] = ms;
    }
    // embed + head GEMMs (bf16 here; tiny) and the two full<->sparse transition gathers
    Acts a = make_acts(m, L, seed);
    Tensor patches = bench::random_gpu({L, 64}, DType::BF16, 1.f, seed++);
    Tensor wpe = bench::random_gpu({m.d, 64}, DType::BF16, 0.1f, seed++);
    Tensor whead = bench::random_gpu({64, m.d}, DType::BF16, 0.01f, seed++);
    Tensor emb = Tensor::empty({L, m.d}, DType::BF16, Device::cuda(0));
    Tensor head = Tensor::empty({L, 64}, DType::F32, Device::cuda(0));
    double eh = bench::time_ms([&] {
      ops::linear(patches, wpe, nullptr, emb);
      ops::linear(emb, whead, nullptr, head);
    }, 1, reps);
    double tr = bench::time_ms([&] { ops::gather_rows(a.X, a.perm, a.Xs); }, 1, reps);
    const int64_t nfull = 8, nsparse = m.layers - nfull;
    double full_fwd = m.layers * ms_kind[0] + eh;
    double hyb_fwd = nfull * ms_kind[0] + nsparse * ms_kind[1] + 2 * tr + eh;
    std::printf("{\"bench\":\"dit_forward\",\"model\":\"%s\",\"layers\":%lld,\"full_ms\":%.1f,"
                "\"hybrid_ms\":%.1f,\"hybrid_speedup\":%.3f,\"full_blocks_in_hybrid\":%lld,"
                "\"embed_head_ms\":%.3f,\"transition_ms\":%.3f,\"peak_gib\":%.2f,"
                "\"method\":\"layers x measured block + measured embed/head\",\"card\":\"%s\"}\n",
                m.name, (long long)m.layers, full_fwd, hyb_fwd, full_fwd / hyb_fwd,
                (long long)nfull, eh, tr, double(cuda_peak_bytes()) / double(1ull << 30),
                card.c_str());
    std::fflush(stdout);
  }
  return 0;
#endif
}
