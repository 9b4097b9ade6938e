// Backend parity (in the spirit of ggml's test-backend-ops): every CUDA op against its CPU
// fp32 reference on random shapes (odd sizes included) and fresh random values. GPU inputs
// are the CPU inputs rounded to bf16 where the CUDA op takes bf16, so both backends see the
// same values; GPU outputs are poisoned with NaN first so an unwritten element fails.
// Bound: ‖gpu − cpu‖ / ‖cpu‖ within bf16 bounds (≤ 1e-2; f32-only ops ≤ 1e-5).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "osp/core/settings.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/ops/ops.h"
#include "test_util.h"

namespace osp {
namespace {

const Device kGpu = Device::cuda(0);

uint32_t g_seed = 1234;  // every draw gets a fresh seed

Tensor rnd(const Shape& s, float scale = 1.f, bool bf16_exact = false) {
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
const char* dn(DType d) { return dtype_name(d); }

struct Case {
  std::string name;
  std::function<void()> run;  // builds inputs, runs both backends, asserts the bound
};

#define EXPECT_REL(gpu, cpu, tol)                                   \
  do {                                                              \
    double e_ = rel(gpu, cpu);                                      \
    EXPECT_LE(e_, tol) << "relative error " << e_;                  \
    EXPECT_FALSE(std::isnan(e_)) << "NaN: an output was not written"; \
  } while (0)

// ---------------------------------------------------------------- cases
void linear_case(int64_t M, int64_t K, int64_t N, int bias_kind, ops::Act act, DType out_dt) {
  Tensor x = rnd({M, K}, 1.f, true), w = rnd({N, K}, 1.f / std::sqrt(float(K)), true);
  Tensor b = rnd({N}, 0.5f, true);
  Tensor ref = Tensor::empty({M, N}, DType::F32);
  ops::linear(x, w, bias_kind ? &b : nullptr, ref, act);
  Tensor gx = on_gpu(x, DType::BF16), gw = on_gpu(w, DType::BF16);
  Tensor gb = on_gpu(b, bias_kind == 2 ? DType::F32 : DType::BF16);
  Tensor out = poisoned({M, N}, out_dt);
  ops::linear(gx, gw, bias_kind ? &gb : nullptr, out, act);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 5e-3);
}

// All-f32 small linear (time embedding): f32 accumulation on both sides.
void linear_f32_case(int64_t M, int64_t K, int64_t N, bool bias, ops::Act act) {
  Tensor x = rnd({M, K}, 1.f), w = rnd({N, K}, 1.f / std::sqrt(float(K))), b = rnd({N}, 0.5f);
  Tensor ref = Tensor::empty({M, N}, DType::F32);
  ops::linear(x, w, bias ? &b : nullptr, ref, act);
  Tensor gb = on_gpu(b, DType::F32);
  Tensor out = poisoned({M, N}, DType::F32);
  ops::linear(on_gpu(x, DType::F32), on_gpu(w, DType::F32), bias ? &gb : nullptr, out, act);
  EXPECT_REL(out, ref, 1e-5);
}

// Strided (permuted) copies on the GPU: 16-byte vectorised and element paths vs the CPU copy.
void permute_copy_case(const Shape& shape, const std::vector<int>& perm, DType dt) {
  Tensor x = rnd(shape, 1.f, dt == DType::BF16);
  Tensor ref = x.permute(perm).contiguous();
  Tensor got = on_gpu(x, dt).permute(perm).contiguous();
  EXPECT_REL(got, ref, 0.0);
}

void layer_norm_case(int64_t R, int64_t C, bool affine, DType in_dt, DType out_dt) {
  Tensor x = rnd({R, C}, 2.f, in_dt == DType::BF16), w = rnd({C}), b = rnd({C});
  Tensor ref = Tensor::empty({R, C}, DType::F32);
  ops::layer_norm(x, affine ? &w : nullptr, affine ? &b : nullptr, 1e-6f, ref);
  Tensor gw = on_gpu(w, DType::F32), gb = on_gpu(b, DType::F32);
  Tensor out = poisoned({R, C}, out_dt);
  ops::layer_norm(on_gpu(x, in_dt), affine ? &gw : nullptr, affine ? &gb : nullptr, 1e-6f, out);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
}

void ln_modulate_case(int64_t R, int64_t C, bool round, DType in_dt, DType out_dt) {
  Tensor x = rnd({R, C}, 1.f, in_dt == DType::BF16), sh = rnd({C}, 0.3f), sc = rnd({C}, 0.3f);
  Tensor ref = Tensor::empty({R, C}, DType::F32);
  ops::layer_norm_modulate(x, sh, sc, 1e-6f, ref, round);
  Tensor out = poisoned({R, C}, out_dt);
  ops::layer_norm_modulate(on_gpu(x, in_dt), on_gpu(sh, DType::F32), on_gpu(sc, DType::F32), 1e-6f,
                           out, round);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
}

void rms_case(int64_t R, int64_t C, DType in_dt, DType out_dt) {
  Tensor x = rnd({R, C}, 3.f, in_dt == DType::BF16), w = rnd({C});
  Tensor ref = Tensor::empty({R, C}, DType::F32);
  ops::rms_norm(x, w, 1e-6f, ref);
  Tensor out = poisoned({R, C}, out_dt);
  ops::rms_norm(on_gpu(x, in_dt), on_gpu(w, DType::F32), 1e-6f, out);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
}

void act_case(bool gelu, int64_t n, DType in_dt, DType out_dt, bool in_place) {
  Tensor x = rnd({n}, 2.f, in_dt == DType::BF16);
  Tensor ref = Tensor::empty({n}, DType::F32);
  if (gelu) ops::gelu_tanh(x, ref);
  else ops::silu(x, ref);
  Tensor gx = on_gpu(x, in_dt);
  Tensor out = in_place ? gx : poisoned({n}, out_dt);
  if (gelu) ops::gelu_tanh(gx, out);
  else ops::silu(gx, out);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
}

void add_gated_case(int64_t R, int64_t C, bool gated, DType y_dt) {
  Tensor x = rnd({R, C}), y = rnd({R, C}, 1.f, y_dt == DType::BF16), g = rnd({C});
  Tensor gx = on_gpu(x, DType::F32);
  Tensor ref = x.clone();
  ops::add_gated_(ref, y, gated ? &g : nullptr);
  Tensor gg = on_gpu(g, DType::F32);
  ops::add_gated_(gx, on_gpu(y, y_dt), gated ? &gg : nullptr);
  EXPECT_REL(gx, ref, 1e-6);
}

void axpby_case(int64_t n) {
  Tensor x = rnd({n}), y = rnd({n});
  Tensor ref = Tensor::empty({n}, DType::F32);
  ops::axpby(0.7f, x, -1.3f, y, ref);
  Tensor out = poisoned({n}, DType::F32);
  ops::axpby(0.7f, on_gpu(x, DType::F32), -1.3f, on_gpu(y, DType::F32), out);
  EXPECT_REL(out, ref, 1e-6);
}

// (cos θ, sin θ) pairs of uniform random angles: a RoPE table [Rt, L, D/2, 2].
Tensor random_rope_table(int64_t Rt, int64_t L, int64_t D) {
  std::vector<float> cs(size_t(Rt * L * D / 2 * 2));
  std::mt19937 g(g_seed++);
  std::uniform_real_distribution<float> u(-3.14159f, 3.14159f);
  for (size_t i = 0; i < cs.size(); i += 2) {
    float th = u(g);
    cs[i] = std::cos(th);
    cs[i + 1] = std::sin(th);
  }
  return Tensor::from_vector(cs, {Rt, L, D / 2, 2});
}

void rope_case(int64_t R, int64_t L, int64_t H, int64_t D, int64_t Rt, DType in_dt, DType out_dt,
               bool in_place) {
  Tensor x = rnd({R, L, H, D}, 1.f, in_dt == DType::BF16);
  Tensor table = random_rope_table(Rt, L, D);
  Tensor ref = Tensor::empty({R, L, H, D}, DType::F32);
  ops::rope(x, table, ref);
  Tensor gx = on_gpu(x, in_dt);
  Tensor out = in_place ? gx : poisoned({R, L, H, D}, out_dt);
  ops::rope(gx, on_gpu(table, DType::F32), out);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
}

// Fused q/k norm + RoPE: against the CPU, and against the two CUDA ops it replaces (rms_norm
// into f32, then rope) — the same arithmetic, so equal up to an FMA contraction the compiler
// may choose differently (printed: how many elements differ at all).
void rms_norm_rope_case(int64_t R, int64_t L, int64_t H, int64_t D, int64_t Rt, DType in_dt, DType out_dt) {
  Tensor x = rnd({R, L, H, D}, 3.f, in_dt == DType::BF16), w = rnd({H * D});
  Tensor table = random_rope_table(Rt, L, D);
  Tensor ref = Tensor::empty({R, L, H, D}, DType::F32);
  ops::rms_norm_rope(x, w, 1e-6f, table, ref);
  Tensor gx = on_gpu(x, in_dt), gw = on_gpu(w, DType::F32), gt = on_gpu(table, DType::F32);
  Tensor out = poisoned({R, L, H, D}, out_dt);
  ops::rms_norm_rope(gx, gw, 1e-6f, gt, out);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
  Tensor mid = poisoned({R, L, H, D}, DType::F32), seq = poisoned({R, L, H, D}, out_dt);
  Tensor midv = mid.view({R * L, H * D});
  ops::rms_norm(gx.view({R * L, H * D}), gw, 1e-6f, midv);
  ops::rope(mid, gt, seq);
  const auto a = out.to(Device::cpu()).to_float_vector(), b = seq.to(Device::cpu()).to_float_vector();
  size_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
  std::printf("[ info     ] rms_norm_rope %lldx%lldx%lldx%lld: %zu of %zu elements differ from rms_norm + rope\n",
              (long long)R, (long long)L, (long long)H, (long long)D, differ, a.size());
  EXPECT_REL(out, seq.to(Device::cpu()).to(DType::F32), out_dt == DType::BF16 ? 4e-3 : 1e-6);
}

// Fused residual update + LayerNorm (mode 0, affine) or + modulated LayerNorm (mode 1): the
// updated residual and the norm against the CPU and against add_gated_ then the CUDA norm.
void add_norm_case(int64_t R, int64_t C, int mode, bool gated, DType y_dt, DType out_dt) {
  Tensor x = rnd({R, C}, 2.f), y = rnd({R, C}, 1.f, y_dt == DType::BF16), g = rnd({C});
  Tensor w = rnd({C}), b = rnd({C}), sh = rnd({C}, 0.3f), sc = rnd({C}, 0.3f);
  Tensor rx = x.clone(), ref = Tensor::empty({R, C}, DType::F32);
  auto run = [&](Tensor& xx, const Tensor& yy, const Tensor& gg, const Tensor& ww, const Tensor& bb,
                 const Tensor& ssh, const Tensor& ssc, Tensor& o) {
    if (mode == 0) ops::add_gated_layer_norm_(xx, yy, gated ? &gg : nullptr, &ww, &bb, 1e-6f, o);
    else ops::add_gated_layer_norm_modulate_(xx, yy, gated ? &gg : nullptr, ssh, ssc, 1e-6f, o);
  };
  run(rx, y, g, w, b, sh, sc, ref);
  Tensor gx = on_gpu(x, DType::F32), gy = on_gpu(y, y_dt), gg = on_gpu(g, DType::F32);
  Tensor gw = on_gpu(w, DType::F32), gb = on_gpu(b, DType::F32), gsh = on_gpu(sh, DType::F32),
         gsc = on_gpu(sc, DType::F32);
  Tensor out = poisoned({R, C}, out_dt);
  run(gx, gy, gg, gw, gb, gsh, gsc, out);
  EXPECT_REL(gx, rx, 1e-6);
  EXPECT_REL(out, ref, out_dt == DType::BF16 ? 1e-2 : 1e-5);
  // the two CUDA ops it replaces
  Tensor sx = on_gpu(x, DType::F32), seq = poisoned({R, C}, out_dt);
  ops::add_gated_(sx, gy, gated ? &gg : nullptr);
  if (mode == 0) ops::layer_norm(sx, &gw, &gb, 1e-6f, seq);
  else ops::layer_norm_modulate(sx, gsh, gsc, 1e-6f, seq);
  EXPECT_REL(gx, sx.to(Device::cpu()), 1e-7);
  EXPECT_REL(out, seq.to(Device::cpu()).to(DType::F32), out_dt == DType::BF16 ? 4e-3 : 1e-6);
}

Tensor lens_tensor(const std::vector<int>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  for (size_t i = 0; i < v.size(); ++i) t.data<int32_t>()[i] = v[i];
  return t;
}

// path: 0 = cuda::attention (auto), 1 = own flash kernel, 2 = cuDNN (must run),
// 3 = cuDNN one unmasked call per sequence (must run), 4 / 5 = own Hopper kernel with / without
// pingpong scheduling, 6 / 7 = the same kernel with 176-key tiles without / with pingpong
// (4-7 skipped where it cannot run). nan_pad: the GPU's ignored key rows
// (>= kv[b]) hold NaN, which must not reach the output.
void attention_case(int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t D, int path,
                    std::vector<int> kv = {}, std::vector<int> ql = {}, bool bias = false,
                    float scale = 0.f, bool nan_pad = false) {
  if (path >= 4 && !ops::cuda::hopper_attention_supported())
    GTEST_SKIP() << "own Hopper attention needs an sm_90 GPU and an sm_90a build";
  Tensor q = rnd({B, Lq, H, D}, 1.f, true), k = rnd({B, Lk, H, D}, 1.f, true),
         v = rnd({B, Lk, H, D}, 1.f, true);
  Tensor bt = rnd({H, Lq, Lk}, 1.f);
  Tensor kvl = kv.empty() ? Tensor() : lens_tensor(kv), qll = ql.empty() ? Tensor() : lens_tensor(ql);
  ops::AttentionArgs a;
  a.scale = scale;
  a.kv_lens = kv.empty() ? nullptr : &kvl;
  a.q_lens = ql.empty() ? nullptr : &qll;
  if (bias) a.bias = &bt;
  Tensor ref = Tensor::empty({B, Lq, H, D}, DType::F32);
  ops::attention(q, k, v, ref, a);
  Tensor gbias = on_gpu(bt, DType::F32);
  if (bias) a.bias = &gbias;
  if (nan_pad)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = std::max<int64_t>(kv[size_t(b)], 0); r < Lk; ++r)
        for (int64_t i = 0; i < H * D; ++i) {
          k.data<float>()[(b * Lk + r) * H * D + i] = NAN;
          v.data<float>()[(b * Lk + r) * H * D + i] = NAN;
        }
  Tensor gq = on_gpu(q, DType::BF16), gk = on_gpu(k, DType::BF16), gv = on_gpu(v, DType::BF16);
  Tensor out = poisoned({B, Lq, H, D}, DType::BF16);
  if (path == 0) {
    ops::attention(gq, gk, gv, out, a);
  } else if (path == 1) {
    ops::cuda::attention_flash(gq, gk, gv, out, a);
  } else if (path >= 4) {
    ops::cuda::attention_hopper(gq, gk, gv, out, a, path == 4 || path == 7, path >= 6 ? 176 : 128);
  } else if (path == 3) {
    bool ran = ops::cuda::attention_cudnn_per_sequence(gq, gk, gv, out, a);
    ASSERT_TRUE(ran) << "cuDNN per-sequence path did not run for this case";
  } else {
    bool ran = ops::cuda::attention_cudnn(gq, gk, gv, out, a);
    ASSERT_TRUE(ran) << "cuDNN fused SDPA did not run for this case (OSP_VERBOSE=1 says why)";
  }
  EXPECT_REL(out, ref, 1e-2);
}

// Packed sub-sequences (AttentionArgs::seq_lens, as Skiparse blocks store them): CUDA vs CPU.
void packed_attention_case(int64_t B, std::vector<int> lens, int64_t H, int64_t D) {
  int64_t L = 0;
  for (int n : lens) L += n;
  Tensor q = rnd({B, L, H, D}, 1.f, true), k = rnd({B, L, H, D}, 1.f, true),
         v = rnd({B, L, H, D}, 1.f, true);
  Tensor sl = lens_tensor(lens);
  ops::AttentionArgs a;
  a.seq_lens = &sl;
  Tensor ref = Tensor::empty({B, L, H, D}, DType::F32);
  ops::attention(q, k, v, ref, a);
  Tensor out = poisoned({B, L, H, D}, DType::BF16);
  ops::attention(on_gpu(q, DType::BF16), on_gpu(k, DType::BF16), on_gpu(v, DType::BF16), out, a);
  EXPECT_REL(out, ref, 1e-2);
}

void gather_case(int64_t N, int64_t C, int64_t M, DType dt) {
  Tensor src = rnd({N, C}, 1.f, true);
  std::vector<int> idx(static_cast<size_t>(M));
  std::mt19937 g(g_seed++);
  for (auto& i : idx) i = int(g() % uint32_t(N + 3)) - 3;  // some negative (zero rows)
  Tensor index = lens_tensor(idx);
  Tensor ref = Tensor::empty({M, C}, DType::F32);
  ops::gather_rows(src, index, ref);
  Tensor out = poisoned({M, C}, dt);
  ops::gather_rows(on_gpu(src, dt), index.to(kGpu), out);
  EXPECT_REL(out, ref, 0.0);  // exact: a permutation of bf16-exact values
}

void patchify_case(int64_t C, int64_t T, int64_t H, int64_t W, DType in_dt, DType out_dt) {
  Tensor z = rnd({C, T, H, W}, 1.f, true);
  Shape os = {T * (H / 2) * (W / 2), C * 4};
  Tensor ref = Tensor::empty(os, DType::F32);
  ops::patchify(z, 1, 2, 2, ref);
  Tensor out = poisoned(os, out_dt);
  ops::patchify(on_gpu(z, in_dt), 1, 2, 2, out);
  EXPECT_REL(out, ref, 0.0);
}

void unpatchify_case(int64_t C, int64_t T, int64_t h, int64_t w, DType in_dt, DType out_dt) {
  Tensor y = rnd({T * h * w, 4 * C}, 1.f, true);
  Shape os = {C, T, 2 * h, 2 * w};
  Tensor ref = Tensor::empty(os, DType::F32);
  ops::unpatchify(y, T, h, w, 1, 2, 2, ref);
  Tensor out = poisoned(os, out_dt);
  ops::unpatchify(on_gpu(y, in_dt), T, h, w, 1, 2, 2, out);
  EXPECT_REL(out, ref, 0.0);
}

std::vector<Case> all_cases() {
  using A = ops::Act;
  const DType F = DType::F32, H = DType::BF16;
  std::vector<Case> c;
  auto add = [&](std::string n, std::function<void()> f) { c.push_back({std::move(n), std::move(f)}); };
  // linear: odd sizes, each bias kind (0 none, 1 bf16, 2 f32), each activation, both outputs
  add("linear_1x64x32", [=] { linear_case(1, 64, 32, 0, A::None, H); });
  // ≥ 2^30 multiply-adds: the first call of this shape autotunes among cuBLASLt's candidates
  add("linear_1024x1024x1024_bias_gelu_autotuned", [=] { linear_case(1024, 1024, 1024, 1, A::GeluTanh, H); });
  add("linear_f32_2x256x3072_bias_silu", [=] { linear_f32_case(2, 256, 3072, true, A::Silu); });
  add("linear_f32_11x97x33_nobias", [=] { linear_f32_case(11, 97, 33, false, A::None); });
  add("linear_f32_3x64x40_bias_gelu", [=] { linear_f32_case(3, 64, 40, true, A::GeluTanh); });
  add("permute_bf16_ulysses_2x37x4x64", [=] {
    permute_copy_case({2, 37, 4, 64}, {2, 0, 1, 3}, H);  // 16-byte path (128-byte rows)
  });
  add("permute_f32_3x5x7", [=] { permute_copy_case({3, 5, 7}, {2, 0, 1}, F); });  // element path
  add("permute_bf16_5x6x12", [=] { permute_copy_case({5, 6, 12}, {1, 0, 2}, H); });  // 24-byte rows
  add("linear_37x96x200_bias_bf16", [=] { linear_case(37, 96, 200, 1, A::None, H); });
  add("linear_37x96x200_bias_f32_out_f32", [=] { linear_case(37, 96, 200, 2, A::None, F); });
  add("linear_300x512x384_gelu_bias", [=] { linear_case(300, 512, 384, 1, A::GeluTanh, H); });
  add("linear_77x256x136_gelu_nobias_f32", [=] { linear_case(77, 256, 136, 0, A::GeluTanh, F); });
  add("linear_129x128x72_silu_bias_f32", [=] { linear_case(129, 128, 72, 2, A::Silu, H); });
  add("linear_513x1536x1536_bias_f32out", [=] { linear_case(513, 1536, 1536, 2, A::None, F); });
  // norms
  add("layer_norm_7x33_f32_bf16", [=] { layer_norm_case(7, 33, false, F, H); });
  add("layer_norm_64x1536_bf16_f32_affine", [=] { layer_norm_case(64, 1536, true, H, F); });
  add("layer_norm_3x5120_f32_f32_affine", [=] { layer_norm_case(3, 5120, true, F, F); });
  add("ln_modulate_5x257_f32_bf16", [=] { ln_modulate_case(5, 257, false, F, H); });
  add("ln_modulate_9x1536_bf16_f32_round", [=] { ln_modulate_case(9, 1536, true, H, F); });
  add("rms_norm_13x1000_bf16_bf16", [=] { rms_case(13, 1000, H, H); });
  add("rms_norm_4x5120_f32_f32", [=] { rms_case(4, 5120, F, F); });
  add("rms_norm_31x96_bf16_f32", [=] { rms_case(31, 96, H, F); });
  // elementwise
  add("gelu_1001_f32_bf16", [=] { act_case(true, 1001, F, H, false); });
  add("gelu_4097_bf16_inplace", [=] { act_case(true, 4097, H, H, true); });
  add("gelu_333_f32_f32", [=] { act_case(true, 333, F, F, false); });
  add("silu_999_bf16_f32", [=] { act_case(false, 999, H, F, false); });
  add("silu_2048_f32_inplace", [=] { act_case(false, 2048, F, F, true); });
  add("add_gated_17x129_bf16_gate", [=] { add_gated_case(17, 129, true, H); });
  add("add_gated_5x1536_f32_nogate", [=] { add_gated_case(5, 1536, false, F); });
  add("add_gated_7x256_bf16_gate_vec", [=] { add_gated_case(7, 256, true, H); });
  add("add_gated_3x5120_f32_gate_vec", [=] { add_gated_case(3, 5120, true, F); });
  add("ln_modulate_33x512_f32_bf16_vec", [=] { ln_modulate_case(33, 512, false, F, H); });
  add("layer_norm_5x20000_f32_bf16_rowcache_limit", [=] { layer_norm_case(5, 20000, true, F, H); });
  add("axpby_1003", [=] { axpby_case(1003); });
  // RoPE
  add("rope_1x37x3x128_bf16", [=] { rope_case(1, 37, 3, 128, 1, H, H, false); });
  add("rope_2x19x2x64_f32_bf16_Rt2", [=] { rope_case(2, 19, 2, 64, 2, F, H, false); });
  add("rope_4x11x5x128_f32_inplace_Rt2", [=] { rope_case(4, 11, 5, 128, 2, F, F, true); });
  add("rope_3x7x1x10_bf16_f32_Rt1", [=] { rope_case(3, 7, 1, 10, 1, H, F, false); });
  // fused norms (DiT block): vectorised rows (C % 4 == 0) and the two-op fallback (D = 10)
  add("rms_norm_rope_4x33x12x128_bf16_Rt2", [=] { rms_norm_rope_case(4, 33, 12, 128, 2, H, H); });
  add("rms_norm_rope_2x17x3x64_f32_f32_Rt1", [=] { rms_norm_rope_case(2, 17, 3, 64, 1, F, F); });
  add("rms_norm_rope_3x5x1x10_bf16_f32_fallback", [=] { rms_norm_rope_case(3, 5, 1, 10, 3, H, F); });
  add("add_ln_affine_65x1536_bf16_gate", [=] { add_norm_case(65, 1536, 0, true, H, H); });
  add("add_ln_modulate_33x5120_bf16_nogate", [=] { add_norm_case(33, 5120, 1, false, H, H); });
  add("add_ln_modulate_7x256_f32_gate_f32out", [=] { add_norm_case(7, 256, 1, true, F, F); });
  add("add_ln_affine_9x130_f32_fallback", [=] { add_norm_case(9, 130, 0, true, F, H); });
  // attention: auto path, own kernel, cuDNN; odd lengths, D 64/128, cross-attn Lk 512,
  // padded sub-sequences (kv_lens / q_lens), umT5-style bias
  add("attn_auto_1x77x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, 0); });
  add("attn_flash_1x77x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, 1); });
  add("attn_cudnn_1x77x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, 2); });
  add("attn_flash_2x130x512x3x64_cross", [=] { attention_case(2, 130, 512, 3, 64, 1); });
  add("attn_cudnn_2x130x512x3x64_cross", [=] { attention_case(2, 130, 512, 3, 64, 2); });
  add("attn_flash_1x1000x1000x2x128", [=] { attention_case(1, 1000, 1000, 2, 128, 1); });
  add("attn_cudnn_1x1000x1000x2x128", [=] { attention_case(1, 1000, 1000, 2, 128, 2); });
  add("attn_flash_4x100_kvlens_qlens", [=] {
    attention_case(4, 100, 100, 2, 128, 1, {100, 37, 1, 0}, {100, 50, 3, 64});
  });
  add("attn_cudnn_4x100_kvlens_qlens", [=] {
    attention_case(4, 100, 100, 2, 128, 2, {100, 37, 1, 64}, {100, 50, 3, 64});
  });
  add("attn_cudnn_perseq_3x300_kvlens_qlens", [=] {
    attention_case(3, 300, 300, 2, 128, 3, {300, 123, 0}, {300, 200, 50});
  });
  add("attn_cudnn_perseq_2x257x190_qlens_only", [=] {
    attention_case(2, 257, 190, 3, 64, 3, {}, {100, 257});
  });
  add("attn_packed_2x_300_0_171_256_x2x128", [=] { packed_attention_case(2, {300, 0, 171, 256}, 2, 128); });
  add("attn_packed_1x_4x96_equal_x3x64", [=] { packed_attention_case(1, {96, 96, 96, 96}, 3, 64); });
  add("attn_auto_4x96_kvlens_only", [=] { attention_case(4, 96, 96, 3, 64, 0, {96, 80, 17, 50}); });
  add("attn_flash_2x24x4x64_bias_t5", [=] {
    attention_case(2, 24, 24, 4, 64, 1, {24, 9}, {}, true, 1.f);
  });
  // own Hopper kernel: tails in Lq and Lk, several query and key tiles, B > 1, lengths (0, 1,
  // partial tiles), NaN in ignored keys, a large scale, cross-attention shapes
  add("attn_hopper_1x77x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, 4); });
  add("attn_hopper_1x1000x1000x2x128", [=] { attention_case(1, 1000, 1000, 2, 128, 4); });
  add("attn_hopper_nopp_1x1000x1000x2x128", [=] { attention_case(1, 1000, 1000, 2, 128, 5); });
  add("attn_hopper_2x256x384x3x128", [=] { attention_case(2, 256, 384, 3, 128, 4); });
  add("attn_hopper_2x700x512x3x128_cross", [=] { attention_case(2, 700, 512, 3, 128, 4); });
  add("attn_hopper_4x300x300x2x128_lens", [=] {
    attention_case(4, 300, 300, 2, 128, 4, {300, 123, 1, 0}, {300, 200, 3, 64});
  });
  add("attn_hopper_nopp_3x260x300x2x128_lens_nan_pad", [=] {
    attention_case(3, 260, 300, 2, 128, 5, {300, 129, 5}, {}, false, 0.f, true);
  });
  add("attn_hopper_3x260x300x2x128_lens_nan_pad", [=] {
    attention_case(3, 260, 300, 2, 128, 4, {256, 129, 5}, {260, 7, 130}, false, 0.f, true);
  });
  add("attn_hopper_1x129x640x2x128_scale1", [=] { attention_case(1, 129, 640, 2, 128, 4, {}, {}, false, 1.f); });
  // 176-key tiles: one partial tile, whole tiles, tails, lengths with NaN padding, cross shapes
  add("attn_hopper176_1x77x77x2x128", [=] { attention_case(1, 77, 77, 2, 128, 6); });
  add("attn_hopper176_pp_1x1000x1000x2x128", [=] { attention_case(1, 1000, 1000, 2, 128, 7); });
  add("attn_hopper176_1x1000x1000x2x128", [=] { attention_case(1, 1000, 1000, 2, 128, 6); });
  add("attn_hopper176_2x256x352x3x128", [=] { attention_case(2, 256, 352, 3, 128, 6); });
  add("attn_hopper176_2x700x512x3x128_cross", [=] { attention_case(2, 700, 512, 3, 128, 6); });
  add("attn_hopper176_3x260x400x2x128_lens_nan_pad", [=] {
    attention_case(3, 260, 400, 2, 128, 6, {400, 177, 5}, {260, 7, 130}, false, 0.f, true);
  });
  add("attn_hopper176_pp_4x300x300x2x128_lens", [=] {
    attention_case(4, 300, 300, 2, 128, 7, {300, 176, 1, 0}, {300, 200, 3, 64});
  });
  add("attn_auto_1x33x2x128_bias_scale", [=] { attention_case(1, 33, 33, 2, 128, 0, {}, {}, true, 0.3f); });
  // data movement
  add("gather_50x37_bf16", [=] { gather_case(50, 37, 61, H); });
  add("gather_40x64_f32", [=] { gather_case(40, 64, 33, F); });
  add("gather_9x3_f32", [=] { gather_case(9, 3, 20, F); });
  add("patchify_16x3x8x12_f32_bf16", [=] { patchify_case(16, 3, 8, 12, F, H); });
  add("patchify_5x2x6x10_bf16_f32", [=] { patchify_case(5, 2, 6, 10, H, F); });
  add("unpatchify_16x3x4x6_f32", [=] { unpatchify_case(16, 3, 4, 6, F, F); });
  add("unpatchify_3x2x5x7_bf16_f32", [=] { unpatchify_case(3, 2, 5, 7, H, F); });
  return c;
}

class BackendParity : public ::testing::TestWithParam<Case> {};

TEST_P(BackendParity, CudaMatchesCpu) {
  OSP_REQUIRE_GPU();
  GetParam().run();
}

INSTANTIATE_TEST_SUITE_P(Ops, BackendParity, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// Bad input gives a clear osp::Error, not a crash.
TEST(BackendParityErrors, RejectsUnsupportedInput) {
  OSP_REQUIRE_GPU();
  Tensor q = poisoned({1, 8, 2, 96}, DType::BF16), o = poisoned({1, 8, 2, 96}, DType::BF16);
  EXPECT_THROW(ops::attention(q, q, q, o), Error);  // D = 96 is not a CUDA head dim
  Tensor xf = poisoned({4, 8}, DType::F32), w = poisoned({3, 8}, DType::BF16);
  Tensor out = poisoned({4, 3}, DType::BF16);
  EXPECT_THROW(ops::linear(xf, w, nullptr, out), Error);  // CUDA linear takes bf16 x
  Tensor cpu_x = Tensor::zeros({4, 8}, DType::F32);
  Tensor gpu_o = poisoned({4, 8}, DType::F32);
  EXPECT_THROW(ops::gelu_tanh(cpu_x, gpu_o), Error);  // mixed devices
  EXPECT_THROW(ops::cuda::attention_flash(q, q, q, o, {}), Error);  // direct path validates too
}

// The path choice is visible: after a plain D=128 call, cuDNN ran (or OSP_ATTENTION forced one).
TEST(BackendParityPaths, AttentionPathIsReported) {
  OSP_REQUIRE_GPU();
  Tensor q = on_gpu(rnd({1, 64, 2, 128}, 1.f, true), DType::BF16);
  Tensor o = poisoned({1, 64, 2, 128}, DType::BF16);
  ops::attention(q, q, q, o);
  std::string p = ops::cuda::last_attention_path();
  EXPECT_TRUE(p == "cudnn" || p == "flash" || p == "hopper") << p;
  // many keys on a Hopper GPU: the own Hopper kernel, unless OSP_ATTENTION forces another
  Tensor k = on_gpu(rnd({1, 2048, 2, 128}, 1.f, true), DType::BF16);
  ops::attention(q, k, k, o);
  const auto forced = engine_settings().attention;
  if (ops::cuda::hopper_attention_supported() && (forced == EngineSettings::Attention::Auto ||
                                                  forced == EngineSettings::Attention::Hopper))
    EXPECT_EQ(std::string(ops::cuda::last_attention_path()), "hopper");
  ops::AttentionArgs a;
  Tensor bias = on_gpu(rnd({2, 64, 64}), DType::F32);
  a.bias = &bias;
  ops::attention(q, q, q, o, a);
  EXPECT_EQ(std::string(ops::cuda::last_attention_path()), "flash");  // bias → own kernel
}

// A view 2 bytes past a 16-byte boundary: every CUDA attention kernel reads 16-byte vectors
// (cp.async, TMA, cuDNN), so each path refuses it with an error before launching anything.
TEST(BackendParityErrors, MisalignedAttentionViewsAreRefused) {
  OSP_REQUIRE_GPU();
  const Shape s = {1, 2048, 1, 128};
  Tensor q = on_gpu(rnd(s, 1.f, true), DType::BF16), out = poisoned(s, DType::BF16);
  Tensor buf = Tensor::empty({2048 * 128 + 8}, DType::BF16, kGpu);
  Tensor kv = Tensor::from_blob(static_cast<uint16_t*>(buf.raw()) + 1, s, DType::BF16, kGpu, buf.storage());
  EXPECT_THROW(ops::attention(q, kv, kv, out), Error);
  EXPECT_THROW(ops::cuda::attention_flash(q, kv, kv, out, {}), Error);
  EXPECT_THROW(ops::cuda::attention_cudnn(q, kv, kv, out, {}), Error);
  EXPECT_THROW(ops::cuda::attention_hopper(q, kv, kv, out, {}), Error);
}

// The autotuners' timing helper (GEMM algorithms, cuDNN engine configs): a candidate that
// reports failure or throws is never chosen and gets an infinite time; one that runs gets a
// finite time; none running gives -1.
TEST(Autotune, FastestCandidateSkipsFailedAndThrowingCandidates) {
  OSP_REQUIRE_GPU();
  Tensor buf = Tensor::empty({1 << 20}, DType::F32, kGpu);
  std::vector<int> calls(4, 0);
  auto run = [&](int i) {
    ++calls[size_t(i)];
    if (i == 1) fail("candidate 1 cannot run");
    if (i != 2) return false;
    OSP_CUDA_CHECK(cudaMemsetAsync(buf.raw(), 0, buf.nbytes(), ops::cuda::stream()));
    return true;
  };
  std::vector<float> ms;
  EXPECT_EQ(ops::cuda::fastest_candidate(4, run, &ms, 3), 2);
  ASSERT_EQ(ms.size(), 4u);
  for (int i : {0, 1, 3}) EXPECT_TRUE(std::isinf(ms[size_t(i)])) << i;
  EXPECT_TRUE(std::isfinite(ms[2]) && ms[2] >= 0.f) << ms[2];
  EXPECT_EQ(calls[2], 4);  // one untimed call, then three timed
  EXPECT_EQ(calls[0], 1);  // a failed candidate is not retried
  EXPECT_EQ(ops::cuda::fastest_candidate(2, [](int) { return false; }, &ms), -1);
  EXPECT_TRUE(std::isinf(ms[0]) && std::isinf(ms[1]));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
}  // namespace osp
