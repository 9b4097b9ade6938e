// Backward backend parity: every CUDA backward op (backward.h) against its CPU fp32 reference
// on random shapes (odd row counts, packed sequences of unequal lengths, Lq ≠ Lk) and fresh
// random values. GPU inputs are the CPU inputs rounded to bf16 where the CUDA op takes bf16, so
// both backends see the same values. Overwritten GPU outputs are poisoned with NaN first (an
// unwritten element fails); accumulated (+=) outputs start from the same random values on both
// sides, so "+=" rather than "=" is checked too.
// Bound: ‖gpu − cpu‖ / ‖cpu‖ within bf16 bounds (1e-2 for bf16 outputs, 2e-2 for attention
// gradients, which pass P and dS through bf16 GEMMs); f32-only math ≤ 1e-5.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "osp/ops/backward.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_backward.h"
#include "osp/ops/ops.h"
#include "test_util.h"

namespace osp {
namespace {

const Device kGpu = Device::cuda(0);
const DType F = DType::F32, H = DType::BF16;

uint32_t g_seed = 4321;  // every draw gets a fresh seed

Tensor rnd(const Shape& s, float scale = 1.f, bool bf16_exact = true) {
  std::mt19937 g(g_seed++);
  std::normal_distribution<float> n(0.f, scale);
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = bf16_exact ? round_bf16(n(g)) : n(g);
  return Tensor::from_vector(v, s);
}
Tensor on_gpu(const Tensor& cpu_f32, DType dt) { return cpu_f32.to(dt).to(kGpu); }
Tensor poisoned(const Shape& s, DType dt) {
  std::vector<float> v(size_t(shape_numel(s)), std::numeric_limits<float>::quiet_NaN());
  return Tensor::from_vector(v, s).to(dt).to(kGpu);
}
double rel(const Tensor& gpu, const Tensor& cpu) {
  return relative_error(gpu.to(Device::cpu()).to(DType::F32), cpu);
}
// Round-trips a CPU tensor through dtype dt (what the GPU sees).
Tensor as(const Tensor& cpu_f32, DType dt) { return cpu_f32.to(dt).to(DType::F32); }
double tol_for(DType out) { return out == DType::BF16 ? 1e-2 : 2e-3; }

#define EXPECT_REL(gpu, cpu, tol)                                     \
  do {                                                                \
    double e_ = rel(gpu, cpu);                                        \
    EXPECT_LE(e_, tol) << #gpu << ": relative error " << e_;          \
    EXPECT_FALSE(std::isnan(e_)) << #gpu << ": NaN (an output was not written)"; \
  } while (0)

struct Case {
  std::string name;
  std::function<void()> run;
};

// ---------------------------------------------------------------- GEMM
// x [M, K] (as lead × M/lead rows), w [N, K], dy [M, N]. dx dtype dx_dt (or skipped),
// dw / db accumulate into random starting values (or skipped).
void linear_case(int64_t lead, int64_t M, int64_t K, int64_t N, DType in_dt, DType dx_dt,
                 bool want_dx, bool want_dw, bool want_db) {
  Tensor x = rnd({lead, M / lead, K}), w = rnd({N, K}, 1.f / std::sqrt(float(K)));
  Tensor dy = rnd({lead, M / lead, N});
  Tensor dw0 = rnd({N, K}, 1.f, false), db0 = rnd({N}, 1.f, false);
  Tensor dx_ref = Tensor::empty({lead, M / lead, K}, F);
  Tensor dw_ref = dw0.contiguous().clone(), db_ref = db0.clone();
  ops::linear_backward(x, w, dy, want_dx ? &dx_ref : nullptr, want_dw ? &dw_ref : nullptr,
                       want_db ? &db_ref : nullptr);
  Tensor gdx = poisoned({lead, M / lead, K}, dx_dt);
  Tensor gdw = on_gpu(dw0, F), gdb = on_gpu(db0, F);
  ops::linear_backward(on_gpu(x, in_dt), on_gpu(w, in_dt), on_gpu(dy, in_dt),
                       want_dx ? &gdx : nullptr, want_dw ? &gdw : nullptr,
                       want_db ? &gdb : nullptr);
  const double t_acc = in_dt == F ? 1e-5 : 1e-4;  // same products, f32 accumulation order
  if (want_dx) EXPECT_REL(gdx, dx_ref, in_dt == F ? 1e-5 : tol_for(dx_dt));
  if (want_dw) EXPECT_REL(gdw, dw_ref, t_acc);
  else EXPECT_REL(gdw, dw0, 0.0);  // untouched
  if (want_db) EXPECT_REL(gdb, db_ref, t_acc);
  else EXPECT_REL(gdb, db0, 0.0);
}

// ---------------------------------------------------------------- norms
// kind 0 layer_norm (affine if `affine`), 1 layer_norm_modulate, 2 rms_norm.
void norm_case_with(int kind, int64_t rows, int64_t C, bool affine, DType x_dt, DType dy_dt,
                    DType dx_dt, bool want_params);
// Both norm backward kernels (one block per row, one warp per row) against the CPU.
void norm_case(int kind, int64_t rows, int64_t C, bool affine, DType x_dt, DType dy_dt,
               DType dx_dt, bool want_params) {
  for (int warp : {0, 1}) {
    SCOPED_TRACE(warp ? "one warp per row" : "one block per row");
    ops::cuda::set_norm_backward_warp(warp);
    norm_case_with(kind, rows, C, affine, x_dt, dy_dt, dx_dt, want_params);
  }
  ops::cuda::set_norm_backward_warp(-1);
}
void norm_case_with(int kind, int64_t rows, int64_t C, bool affine, DType x_dt, DType dy_dt,
                    DType dx_dt, bool want_params) {
  const float eps = 1e-6f;
  Tensor x = as(rnd({rows, C}, 2.f), x_dt), dy = as(rnd({rows, C}), dy_dt);
  // shift the mean so the LayerNorm's centring matters
  {
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = round_bf16(p[i] + 0.75f);
  }
  Tensor w = rnd({C}, 0.5f, false);
  Tensor pa0 = rnd({C}, 1.f, false), pb0 = rnd({C}, 1.f, false);
  Tensor dx_ref = Tensor::empty({rows, C}, F), pa = pa0.clone(), pb = pb0.clone();
  Tensor gw = on_gpu(w, F), gx = on_gpu(x, x_dt), gdy = on_gpu(dy, dy_dt);
  Tensor gdx = poisoned({rows, C}, dx_dt), gpa = on_gpu(pa0, F), gpb = on_gpu(pb0, F);
  Tensor* A = want_params ? &pa : nullptr;
  Tensor* B = want_params ? &pb : nullptr;
  Tensor* gA = want_params ? &gpa : nullptr;
  Tensor* gB = want_params ? &gpb : nullptr;
  if (kind == 0) {
    if (!affine) A = B = gA = gB = nullptr;
    ops::layer_norm_backward(x, affine ? &w : nullptr, eps, dy, dx_ref, A, B);
    ops::layer_norm_backward(gx, affine ? &gw : nullptr, eps, gdy, gdx, gA, gB);
  } else if (kind == 1) {
    // (dshift, dscale) = (B, A)
    ops::layer_norm_modulate_backward(x, w, eps, dy, dx_ref, B, A);
    ops::layer_norm_modulate_backward(gx, gw, eps, gdy, gdx, gB, gA);
  } else {
    B = gB = nullptr;
    ops::rms_norm_backward(x, w, eps, dy, dx_ref, A);
    ops::rms_norm_backward(gx, gw, eps, gdy, gdx, gA);
  }
  EXPECT_REL(gdx, dx_ref, dx_dt == F ? 1e-4 : 1e-2);
  if (A) EXPECT_REL(gpa, pa, 1e-4);
  else EXPECT_REL(gpa, pa0, 0.0);
  if (B) EXPECT_REL(gpb, pb, 1e-4);
  else EXPECT_REL(gpb, pb0, 0.0);
}

// ---------------------------------------------------------------- elementwise
void act_case(bool gelu, int64_t n, DType x_dt, DType dy_dt, DType dx_dt) {
  Tensor x = as(rnd({n}, 2.f), x_dt), dy = as(rnd({n}), dy_dt);
  Tensor ref = Tensor::empty({n}, F), out = poisoned({n}, dx_dt);
  if (gelu) {
    ops::gelu_tanh_backward(x, dy, ref);
    ops::gelu_tanh_backward(on_gpu(x, x_dt), on_gpu(dy, dy_dt), out);
  } else {
    ops::silu_backward(x, dy, ref);
    ops::silu_backward(on_gpu(x, x_dt), on_gpu(dy, dy_dt), out);
  }
  EXPECT_REL(out, ref, dx_dt == F ? 1e-5 : 1e-2);
}

void add_gated_case(int64_t rows, int64_t C, DType y_dt, DType dy_dt, bool want_dgate) {
  Tensor dx = rnd({rows, C}, 1.f, false), y = as(rnd({rows, C}), y_dt), gate = rnd({C}, 0.5f, false);
  Tensor dg0 = rnd({C}, 1.f, false), dg = dg0.clone();
  Tensor dy_ref = Tensor::empty({rows, C}, F);
  ops::add_gated_backward(dx, y, gate, dy_ref, want_dgate ? &dg : nullptr);
  Tensor gdy = poisoned({rows, C}, dy_dt), gdg = on_gpu(dg0, F);
  ops::add_gated_backward(on_gpu(dx, F), on_gpu(y, y_dt), on_gpu(gate, F), gdy,
                          want_dgate ? &gdg : nullptr);
  EXPECT_REL(gdy, dy_ref, dy_dt == F ? 1e-6 : 1e-2);
  EXPECT_REL(gdg, want_dgate ? dg : dg0, want_dgate ? 1e-4 : 0.0);
}

void sum_rows_case(int64_t rows, int64_t C, DType x_dt) {
  Tensor x = as(rnd({rows, C}), x_dt), o0 = rnd({C}, 1.f, false), o = o0.clone();
  ops::sum_rows(x, o);
  Tensor go = on_gpu(o0, F);
  ops::sum_rows(on_gpu(x, x_dt), go);
  EXPECT_REL(go, o, 1e-5);
}

void rope_case(int64_t R, int64_t L, int64_t Hh, int64_t D, int64_t Rt, DType in_dt, DType out_dt,
               bool in_place) {
  Tensor dy = as(rnd({R, L, Hh, D}), in_dt);
  std::vector<float> t(size_t(Rt * L * (D / 2) * 2));
  std::mt19937 g(g_seed++);
  std::uniform_real_distribution<float> ang(-3.f, 3.f);
  for (size_t i = 0; i < t.size(); i += 2) {
    const float a = ang(g);
    t[i] = std::cos(a);
    t[i + 1] = std::sin(a);
  }
  Tensor cs = Tensor::from_vector(t, {Rt, L, D / 2, 2});
  Tensor ref = Tensor::empty({R, L, Hh, D}, F);
  ops::rope_backward(dy, cs, ref);
  Tensor gcs = on_gpu(cs, F);
  if (in_place) {
    Tensor x = on_gpu(dy, in_dt);
    ops::rope_backward(x, gcs, x);
    EXPECT_REL(x, ref, in_dt == F ? 1e-5 : 1e-2);
  } else {
    Tensor out = poisoned({R, L, Hh, D}, out_dt);
    ops::rope_backward(on_gpu(dy, in_dt), gcs, out);
    EXPECT_REL(out, ref, out_dt == F ? 1e-5 : 1e-2);
  }
  // rope_backward undoes rope: rope then rope_backward is the identity (on the GPU, f32).
  Tensor fx = on_gpu(dy, F), fy = poisoned({R, L, Hh, D}, F), back = poisoned({R, L, Hh, D}, F);
  ops::rope(fx, gcs, fy);
  ops::rope_backward(fy, gcs, back);
  EXPECT_REL(back, dy, 1e-5);
}

// ---------------------------------------------------------------- data movement
void scatter_case(int64_t M, int64_t N, int64_t C, DType src_dt) {
  Tensor src = as(rnd({M, C}), src_dt);
  Tensor idx = Tensor::empty({M}, DType::I32);
  std::mt19937 g(g_seed++);
  for (int64_t i = 0; i < M; ++i)
    idx.data<int32_t>()[i] = i % 7 == 3 ? -1 : int32_t(g() % uint32_t(N));  // repeats and skips
  Tensor o0 = rnd({N, C}, 1.f, false), o = o0.clone();
  ops::scatter_add_rows(src, idx, o);
  Tensor go = on_gpu(o0, F);
  ops::scatter_add_rows(on_gpu(src, src_dt), idx.to(kGpu), go);
  EXPECT_REL(go, o, 1e-6);
}

void patchify_bwd_case(int64_t C, int64_t T, int64_t Hh, int64_t W, DType in_dt, DType out_dt) {
  const int ph = 2, pw = 2;
  const int64_t toks = T * (Hh / ph) * (W / pw);
  Tensor dp = as(rnd({toks, C * ph * pw}), in_dt);
  Tensor ref = Tensor::empty({C, T, Hh, W}, F), out = poisoned({C, T, Hh, W}, out_dt);
  ops::patchify_backward(dp, 1, ph, pw, ref);
  ops::patchify_backward(on_gpu(dp, in_dt), 1, ph, pw, out);
  EXPECT_REL(out, ref, out_dt == in_dt || out_dt == F ? 0.0 : 1e-2);
}

void unpatchify_bwd_case(int64_t C, int64_t T, int64_t h, int64_t w, DType in_dt, DType out_dt) {
  const int ph = 2, pw = 2;
  Tensor dout = as(rnd({C, T, h * ph, w * pw}), in_dt);
  Tensor ref = Tensor::empty({T * h * w, ph * pw * C}, F), out = poisoned({T * h * w, ph * pw * C}, out_dt);
  ops::unpatchify_backward(dout, T, h, w, 1, ph, pw, ref);
  ops::unpatchify_backward(on_gpu(dout, in_dt), T, h, w, 1, ph, pw, out);
  EXPECT_REL(out, ref, out_dt == in_dt || out_dt == F ? 0.0 : 1e-2);
}

// ---------------------------------------------------------------- attention
// path: Auto, Own, Cudnn (cuDNN must run) or Hopper (the forward on the own Hopper kernel; skipped
// without an sm_90a GPU). seq_lens: packed sequences (Lq = Lk). chunks: the cuDNN backward's query
// chunks (set_attention_backward_query_chunks; −1 = the setting's).
void attention_case(int64_t B, int64_t Lq, int64_t Lk, int64_t Hh, int64_t D,
                    ops::cuda::AttnPath path, std::vector<int32_t> seq = {}, float scale = 0.f, int chunks = -1) {
  if (path == ops::cuda::AttnPath::Hopper && !ops::cuda::hopper_attention_supported())
    GTEST_SKIP() << "no sm_90a GPU / build for the own Hopper kernel";
  Tensor q = rnd({B, Lq, Hh, D}), k = rnd({B, Lk, Hh, D}), v = rnd({B, Lk, Hh, D});
  Tensor dout = rnd({B, Lq, Hh, D});
  Tensor sl;
  ops::AttentionArgs a;
  a.scale = scale;
  if (!seq.empty()) {
    sl = Tensor::empty({int64_t(seq.size())}, DType::I32);
    std::copy(seq.begin(), seq.end(), sl.data<int32_t>());
    a.seq_lens = &sl;
  }
  // CPU reference forward (f32) and backward on the bf16-rounded output.
  Tensor out = Tensor::empty({B, Lq, Hh, D}, F), lse = Tensor::empty({B, Hh, Lq}, F);
  ops::attention_forward_lse(q, k, v, out, lse, a);
  Tensor out_b = as(out, H);
  Tensor dq = Tensor::empty(q.shape(), F), dk = Tensor::empty(k.shape(), F), dv = Tensor::empty(v.shape(), F);
  ops::attention_backward(q, k, v, out_b, lse, dout, dq, dk, dv, a);

  ops::cuda::set_attention_train_path(path);
  Tensor gq = on_gpu(q, H), gk = on_gpu(k, H), gv = on_gpu(v, H);
  Tensor gout = poisoned({B, Lq, Hh, D}, H), glse = poisoned({B, Hh, Lq}, F);
  ops::attention_forward_lse(gq, gk, gv, gout, glse, a);
  const std::string fwd_path = ops::cuda::last_attention_forward_lse_path();
  EXPECT_REL(gout, out, 1e-2);
  EXPECT_REL(glse, lse, 1e-4);
  // The backward from the CPU's (bf16-rounded) output and lse, so it is judged on its own.
  Tensor gdq = poisoned(q.shape(), H), gdk = poisoned(k.shape(), H), gdv = poisoned(v.shape(), H);
  ops::cuda::set_attention_backward_query_chunks(chunks);
  ops::attention_backward(gq, gk, gv, on_gpu(out_b, H), on_gpu(lse, F), on_gpu(dout, H), gdq, gdk,
                          gdv, a);
  ops::cuda::set_attention_backward_query_chunks(-1);
  const std::string bwd_path = ops::cuda::last_attention_backward_path();
  ops::cuda::set_attention_train_path(ops::cuda::AttnPath::Auto);
  EXPECT_REL(gdq, dq, 2e-2);
  EXPECT_REL(gdk, dk, 2e-2);
  EXPECT_REL(gdv, dv, 2e-2);
  if (path == ops::cuda::AttnPath::Own) {
    EXPECT_EQ(fwd_path, "own");
    EXPECT_EQ(bwd_path, "own");
  }
  if (path == ops::cuda::AttnPath::Cudnn) {
    EXPECT_EQ(fwd_path, "cudnn");
    EXPECT_EQ(bwd_path, "cudnn");
  }
  if (path == ops::cuda::AttnPath::Hopper) EXPECT_EQ(fwd_path, "hopper");
  // the auto choice takes the own Hopper forward for long keys at head dim 128 where it runs
  if (path == ops::cuda::AttnPath::Auto && D == 128 && seq.empty() && Lk >= ops::cuda::kHopperMinKeys &&
      ops::cuda::hopper_attention_supported())
    EXPECT_EQ(fwd_path, "hopper");
  std::printf("[ attn    ] B=%lld Lq=%lld Lk=%lld H=%lld D=%lld packs=%zu: forward %s, backward %s\n",
              (long long)B, (long long)Lq, (long long)Lk, (long long)Hh, (long long)D, seq.size(),
              fwd_path.c_str(), bwd_path.c_str());
}

std::vector<Case> all_cases() {
  using P = ops::cuda::AttnPath;
  std::vector<Case> c;
  auto add = [&](std::string n, std::function<void()> f) { c.push_back({std::move(n), std::move(f)}); };
  // linear: odd M, leading dims, every subset of outputs, bf16 and f32 operands
  add("linear_77x96x136_bf16_all", [=] { linear_case(1, 77, 96, 136, H, H, true, true, true); });
  add("linear_3x25x64x40_bf16_dxf32", [=] { linear_case(3, 75, 64, 40, H, F, true, true, true); });
  add("linear_513x256x384_bf16_nodb", [=] { linear_case(1, 513, 256, 384, H, H, true, true, false); });
  add("linear_129x128x72_bf16_only_db", [=] { linear_case(1, 129, 128, 72, H, H, false, false, true); });
  add("linear_1x64x32_bf16_dwdb", [=] { linear_case(1, 1, 64, 32, H, H, false, true, true); });
  add("linear_4096x1536x1536_bf16_all", [=] { linear_case(1, 4096, 1536, 1536, H, H, true, true, true); });
  add("linear_37x97x33_f32_all", [=] { linear_case(1, 37, 97, 33, F, F, true, true, true); });
  add("linear_11x64x40_f32_dx_only", [=] { linear_case(1, 11, 64, 40, F, F, true, false, false); });
  // norms: odd rows, C not a multiple of 4, many rows (two-stage reduction over chunks)
  add("layer_norm_37x96_affine_bf16", [=] { norm_case(0, 37, 96, true, H, H, H, true); });
  add("layer_norm_1x33_plain_f32", [=] { norm_case(0, 1, 33, false, F, F, F, false); });
  add("layer_norm_5001x256_affine_f32_bf16", [=] { norm_case(0, 5001, 256, true, F, H, F, true); });
  add("layer_norm_7x5120_affine_dx_only", [=] { norm_case(0, 7, 5120, true, H, F, H, false); });
  add("ln_modulate_333x1536_bf16", [=] { norm_case(1, 333, 1536, false, H, H, F, true); });
  add("ln_modulate_3x130_f32", [=] { norm_case(1, 3, 130, false, F, F, F, true); });
  add("ln_modulate_20000x64_f32_bf16", [=] { norm_case(1, 20000, 64, false, F, H, H, true); });
  add("rms_norm_13x1000_bf16", [=] { norm_case(2, 13, 1000, false, H, H, H, true); });
  add("rms_norm_4099x128_f32", [=] { norm_case(2, 4099, 128, false, F, F, F, true); });
  add("rms_norm_2x12000_bf16_f32_smem", [=] { norm_case(2, 2, 12000, false, H, F, F, true); });
  // elementwise
  add("gelu_bwd_1001_f32_bf16_f32", [=] { act_case(true, 1001, F, H, F); });
  add("gelu_bwd_4097_bf16", [=] { act_case(true, 4097, H, H, H); });
  add("silu_bwd_999_bf16_f32_f32", [=] { act_case(false, 999, H, F, F); });
  add("silu_bwd_2048_f32", [=] { act_case(false, 2048, F, F, F); });
  add("add_gated_bwd_17x129_bf16", [=] { add_gated_case(17, 129, H, H, true); });
  add("add_gated_bwd_3001x256_f32", [=] { add_gated_case(3001, 256, F, F, true); });
  add("add_gated_bwd_5x1536_nodgate", [=] { add_gated_case(5, 1536, H, F, false); });
  add("sum_rows_1x77_f32", [=] { sum_rows_case(1, 77, F); });
  add("sum_rows_10007x96_bf16", [=] { sum_rows_case(10007, 96, H); });
  // RoPE
  add("rope_bwd_1x37x3x128_bf16", [=] { rope_case(1, 37, 3, 128, 1, H, H, false); });
  add("rope_bwd_2x19x2x64_f32_bf16_Rt2", [=] { rope_case(2, 19, 2, 64, 2, F, H, false); });
  add("rope_bwd_4x11x5x10_f32_inplace", [=] { rope_case(4, 11, 5, 10, 2, F, F, true); });
  // data movement
  add("scatter_add_300x50x37_f32", [=] { scatter_case(300, 50, 37, F); });
  add("scatter_add_64x64x256_bf16", [=] { scatter_case(64, 64, 256, H); });
  add("patchify_bwd_16x3x8x12_f32", [=] { patchify_bwd_case(16, 3, 8, 12, F, F); });
  add("patchify_bwd_5x2x6x10_bf16_f32", [=] { patchify_bwd_case(5, 2, 6, 10, H, F); });
  add("unpatchify_bwd_16x3x4x6_f32", [=] { unpatchify_bwd_case(16, 3, 4, 6, F, F); });
  add("unpatchify_bwd_3x2x5x7_bf16_f32", [=] { unpatchify_bwd_case(3, 2, 5, 7, H, F); });
  // attention: auto / own / cuDNN; odd lengths, D 64 and 128, Lq ≠ Lk, packed sequences of
  // equal and unequal lengths (zero-length ones too), an explicit scale
  add("attn_auto_1x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, P::Auto); });
  add("attn_own_1x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, P::Own); });
  add("attn_cudnn_2x256x3x64", [=] { attention_case(2, 256, 256, 3, 64, P::Cudnn); });
  add("attn_own_2x130x333x3x64_cross", [=] { attention_case(2, 130, 333, 3, 64, P::Own); });
  add("attn_auto_2x130x333x3x64_cross", [=] { attention_case(2, 130, 333, 3, 64, P::Auto); });
  add("attn_cudnn_1x200x77x2x128_cross", [=] { attention_case(1, 200, 77, 2, 128, P::Cudnn); });
  // the cross-attention's query-chunked backward (keys repeated per chunk, dK/dV summed), forced
  add("attn_cudnn_2x1200x77x2x128_cross_4chunks", [=] { attention_case(2, 1200, 77, 2, 128, P::Cudnn, {}, 0.f, 4); });
  add("attn_cudnn_1x3000x512x3x64_cross_6chunks", [=] { attention_case(1, 3000, 512, 3, 64, P::Cudnn, {}, 0.f, 6); });
  add("attn_auto_1x1000x2x128_scale", [=] { attention_case(1, 1000, 1000, 2, 128, P::Auto, {}, 0.05f); });
  add("attn_own_packed_unequal", [=] {
    attention_case(2, 300, 300, 2, 128, P::Own, {37, 0, 135, 64, 64});
  });
  add("attn_auto_packed_unequal", [=] {
    attention_case(2, 300, 300, 2, 128, P::Auto, {37, 0, 135, 64, 64});
  });
  add("attn_own_packed_equal_4x96", [=] { attention_case(2, 384, 384, 3, 64, P::Own, {96, 96, 96, 96}); });
  // the own tensor-core backward over many tiles both ways, partial last tiles, Lq ≠ Lk, a scale
  add("attn_own_1x1000x700x2x128_scale", [=] { attention_case(1, 1000, 700, 2, 128, P::Own, {}, 0.07f); });
  add("attn_own_2x321x1100x3x64_cross", [=] { attention_case(2, 321, 1100, 3, 64, P::Own); });
  add("attn_auto_packed_equal_4x96", [=] { attention_case(2, 384, 384, 3, 64, P::Auto, {96, 96, 96, 96}); });
  // the forward with statistics on the own Hopper kernel (forced; head dim 128), its output and
  // log-sum-exp against the CPU, the backward (cuDNN's) from the CPU's: odd lengths, Lq ≠ Lk
  // (fewer keys than one tile, and a partial last tile), an explicit scale, packed sequences of
  // unequal (zero-length too) and equal lengths; and the auto choice over 2,100 keys
  add("attn_hopper_1x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, P::Hopper); });
  add("attn_hopper_2x130x333x2x128_cross", [=] { attention_case(2, 130, 333, 2, 128, P::Hopper); });
  add("attn_hopper_1x1000x2x128_scale", [=] { attention_case(1, 1000, 1000, 2, 128, P::Hopper, {}, 0.05f); });
  add("attn_hopper_packed_unequal", [=] {
    attention_case(2, 300, 300, 2, 128, P::Hopper, {37, 0, 135, 64, 64});
  });
  add("attn_hopper_packed_equal_4x96", [=] { attention_case(2, 384, 384, 3, 128, P::Hopper, {96, 96, 96, 96}); });
  add("attn_auto_1x2100x2x128", [=] { attention_case(1, 2100, 2100, 2, 128, P::Auto); });
  return c;
}

// The own backward adds no atomics: two calls give the same bits (cuDNN's need not).
TEST(BackwardParityOwn, BackwardIsDeterministic) {
  OSP_REQUIRE_GPU();
  const int64_t B = 1, L = 700, Hh = 2, D = 128;
  Tensor q = on_gpu(rnd({B, L, Hh, D}), H), k = on_gpu(rnd({B, L, Hh, D}), H), v = on_gpu(rnd({B, L, Hh, D}), H);
  Tensor dout = on_gpu(rnd({B, L, Hh, D}), H);
  Tensor o = Tensor::empty(q.shape(), H, kGpu), lse = Tensor::empty({B, Hh, L}, F, kGpu);
  ops::cuda::set_attention_train_path(ops::cuda::AttnPath::Own);
  ops::attention_forward_lse(q, k, v, o, lse, {});
  Tensor g[2][3];
  for (auto& run : g) {
    for (Tensor& t : run) t = poisoned(q.shape(), H);
    ops::attention_backward(q, k, v, o, lse, dout, run[0], run[1], run[2], {});
  }
  const std::string path = ops::cuda::last_attention_backward_path();
  ops::cuda::set_attention_train_path(ops::cuda::AttnPath::Auto);
  EXPECT_EQ(path, "own");
  for (int i = 0; i < 3; ++i) {
    Tensor a = g[0][i].to(Device::cpu()), b = g[1][i].to(Device::cpu());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), size_t(a.numel()) * 2), 0) << "gradient " << i;
  }
}

class BackwardParity : public ::testing::TestWithParam<Case> {};

TEST_P(BackwardParity, CudaMatchesCpu) {
  OSP_REQUIRE_GPU();
  GetParam().run();
}

INSTANTIATE_TEST_SUITE_P(Ops, BackwardParity, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// Two calls accumulate: dw after two identical backward calls is twice one call's (+= really
// adds on the GPU, also through the fused db epilogue).
TEST(BackwardParityAccumulate, TwoCallsAddUp) {
  OSP_REQUIRE_GPU();
  Tensor x = on_gpu(rnd({65, 64}), H), w = on_gpu(rnd({48, 64}), H), dy = on_gpu(rnd({65, 48}), H);
  Tensor dw1 = Tensor::zeros({48, 64}, F, kGpu), db1 = Tensor::zeros({48}, F, kGpu);
  Tensor dw2 = Tensor::zeros({48, 64}, F, kGpu), db2 = Tensor::zeros({48}, F, kGpu);
  ops::linear_backward(x, w, dy, nullptr, &dw1, &db1);
  ops::linear_backward(x, w, dy, nullptr, &dw2, &db2);
  ops::linear_backward(x, w, dy, nullptr, &dw2, &db2);
  Tensor dw1c = dw1.to(Device::cpu()), db1c = db1.to(Device::cpu());
  for (Tensor* t : {&dw1c, &db1c})
    for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] *= 2.f;
  EXPECT_REL(dw2, dw1c, 1e-6);
  EXPECT_REL(db2, db1c, 1e-6);
}

#ifdef OSP_HAVE_CUDNN
// The fast paths take the DiT's shapes (full self-attention and Skiparse packs): the forward the
// own Hopper kernel where it runs and the sequences are long (2,048 keys), else cuDNN's fused graph
// (512-key packs), the backward cuDNN's — the auto path must not silently fall back to the slow
// own kernels there.
TEST(BackwardParityPaths, FastPathsRunTheDiTShapes) {
  OSP_REQUIRE_GPU();
  for (std::vector<int32_t> seq : {std::vector<int32_t>{}, std::vector<int32_t>{512, 512, 512, 512}}) {
    Tensor q = on_gpu(rnd({1, 2048, 2, 128}), H);
    Tensor o = poisoned({1, 2048, 2, 128}, H), lse = poisoned({1, 2, 2048}, F);
    Tensor sl;
    ops::AttentionArgs a;
    if (!seq.empty()) {
      sl = Tensor::empty({int64_t(seq.size())}, DType::I32);
      std::copy(seq.begin(), seq.end(), sl.data<int32_t>());
      a.seq_lens = &sl;
    }
    ops::attention_forward_lse(q, q, q, o, lse, a);
    const bool hopper = seq.empty() && ops::cuda::hopper_attention_supported();
    EXPECT_EQ(std::string(ops::cuda::last_attention_forward_lse_path()), hopper ? "hopper" : "cudnn");
    Tensor dq = poisoned(q.shape(), H), dk = poisoned(q.shape(), H), dv = poisoned(q.shape(), H);
    ops::attention_backward(q, q, q, o, lse, o, dq, dk, dv, a);
    EXPECT_EQ(std::string(ops::cuda::last_attention_backward_path()), "cudnn");
  }
}
// The DiT's cross-attention at 1.3B 480P (32,760 queries, 512 text keys, 12 heads): the automatic
// query chunking gives the unchunked backward's gradients (dK/dV summed over chunks in F32).
TEST(BackwardParityPaths, CrossAttentionQueryChunksMatchUnchunked) {
  OSP_REQUIRE_GPU();
  Tensor q = on_gpu(rnd({1, 32760, 12, 128}), H), k = on_gpu(rnd({1, 512, 12, 128}), H);
  Tensor v = on_gpu(rnd({1, 512, 12, 128}), H), dout = on_gpu(rnd({1, 32760, 12, 128}), H);
  Tensor o = poisoned(q.shape(), H), lse = poisoned({1, 12, 32760}, F);
  ops::attention_forward_lse(q, k, v, o, lse);
  Tensor dq[2], dk[2], dv[2];
  for (int run = 0; run < 2; ++run) {
    ops::cuda::set_attention_backward_query_chunks(run == 0 ? 1 : 0);  // never, then auto
    dq[run] = poisoned(q.shape(), H), dk[run] = poisoned(k.shape(), H), dv[run] = poisoned(v.shape(), H);
    ops::attention_backward(q, k, v, o, lse, dout, dq[run], dk[run], dv[run]);
  }
  ops::cuda::set_attention_backward_query_chunks(-1);
  EXPECT_REL(dq[1], dq[0], 1e-2);
  EXPECT_REL(dk[1], dk[0], 1e-2);
  EXPECT_REL(dv[1], dv[0], 1e-2);
}
#endif

}  // namespace
}  // namespace osp
