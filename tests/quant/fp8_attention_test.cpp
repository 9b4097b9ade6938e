// FP8 attention on the CPU: the emulation of cuDNN's FP8 SDPA arithmetic (quant/fp8.h)
// against a plain f64 attention on the HiF8-rounded operands, a hand-computed case of the E4M3
// rounding of P, packed sequences, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

namespace {

// f64 softmax(q kᵀ·scale) v per (b, h) over F32 [B, L, H, D] values, attention inside the
// packed sequences `segs` (each a length; empty = one sequence per sample, Lq may differ from Lk).
Tensor attention_f64(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                     const std::vector<int>& segs = {}) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  std::vector<float> qv = q.to_float_vector(), kv = k.to_float_vector(), vv = v.to_float_vector();
  std::vector<float> o(qv.size(), 0.0f);
  std::vector<int64_t> q0, nq, k0, nk;
  if (segs.empty()) {
    q0 = {0}, nq = {Lq}, k0 = {0}, nk = {Lk};
  } else {
    int64_t off = 0;
    for (int n : segs) {
      q0.push_back(off), nq.push_back(n), k0.push_back(off), nk.push_back(n);
      off += n;
    }
  }
  for (size_t sgi = 0; sgi < q0.size(); ++sgi)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = q0[sgi]; i < q0[sgi] + nq[sgi]; ++i) {
          std::vector<double> s(size_t(nk[sgi]));
          double m = -1e300;
          for (int64_t j = 0; j < nk[sgi]; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d)
              dot += double(qv[size_t(((b * Lq + i) * H + h) * D + d)]) *
                     double(kv[size_t(((b * Lk + k0[sgi] + j) * H + h) * D + d)]);
            s[size_t(j)] = dot * scale;
            m = std::max(m, s[size_t(j)]);
          }
          double l = 0;
          for (double& x : s) l += (x = std::exp(x - m));
          for (int64_t d = 0; d < D; ++d) {
            double acc = 0;
            for (int64_t j = 0; j < nk[sgi]; ++j)
              acc += s[size_t(j)] * double(vv[size_t(((b * Lk + k0[sgi] + j) * H + h) * D + d)]);
            o[size_t(((b * Lq + i) * H + h) * D + d)] = float(acc / l);
          }
        }
  return Tensor::from_vector(o, q.shape());
}

Tensor dequant(const Fp8Tensor& t) {
  Tensor out = Tensor::empty(t.codes.shape(), DType::F32);
  fp8_dequantize(t, out);
  return out;
}

// Random operands with logits of a few units (q scaled up so the softmax is not flat).
struct Operands {
  Tensor q, k, v;
};
Operands make(int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t D, uint64_t seed) {
  Operands o;
  o.q = randn({B, Lq, H, D}, seed);
  std::vector<float> qv = o.q.to_float_vector();
  for (float& x : qv) x *= 2.5f;
  o.q = Tensor::from_vector(qv, o.q.shape());
  o.k = randn({B, Lk, H, D}, seed + 1);
  o.v = randn({B, Lk, H, D}, seed + 2);
  return o;
}

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an osp::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Fp8Attention, UnroundedEmulationIsPlainAttentionOnHiF8Values) {
  // With the E4M3 rounding of P switched off, the emulation (online softmax in blocks, the
  // descale factors) must be plain attention on the dequantized codes, to f32 accuracy.
  const int64_t B = 2, Lq = 37, Lk = 53, H = 3, D = 40;
  Operands x = make(B, Lq, Lk, H, D, 100);
  Fp8Tensor q = hif8_quantize_e4m3(x.q), k = hif8_quantize_e4m3(x.k), v = hif8_quantize_e4m3(x.v);
  const float scale = 1.0f / std::sqrt(float(D));
  Tensor ref = attention_f64(dequant(q), dequant(k), dequant(v), scale);
  for (int64_t blk : {int64_t(0), int64_t(16), int64_t(7)}) {
    Fp8AttentionEmulation emu;
    emu.round_p = false;
    emu.kv_block = blk;
    Tensor out = Tensor::empty({B, Lq, H, D}, DType::F32);
    fp8_attention_emulate(q, k, v, out, {}, emu);
    EXPECT_LT(relative_error(out, ref), 2e-6) << "kv_block " << blk;
  }
}

TEST(Fp8Attention, EmulationVsF64AttentionOnHiF8RoundedInputs) {
  // The full arithmetic (P rounded to E4M3 at scale 448) against f64 attention on the HiF8
  // fake-quantized q/k/v (what the HiF8 mode computes). Each P carries at most 2^-4 relative
  // rounding error (E4M3 round to nearest, normal range), so |δo| ≤ 2^-4 · Σ p|v| / Σ p; for
  // zero-mean v the Frobenius ratio is the rms rounding error, about 2.5-3.6 %.
  const int64_t B = 2, Lq = 61, Lk = 75, H = 2, D = 64;
  Operands x = make(B, Lq, Lk, H, D, 200);
  Tensor qh = hif8_fake_quant(x.q), kh = hif8_fake_quant(x.k), vh = hif8_fake_quant(x.v);
  Tensor ref = attention_f64(qh, kh, vh, 1.0 / std::sqrt(double(D)));
  Tensor out = Tensor::empty({B, Lq, H, D}, DType::F32);
  hif8_attention_fp8(x.q, x.k, x.v, out);
  EXPECT_STREQ(fp8_attention_last_path(), "cpu_emulation");
  const double r = relative_error(out, ref);
  std::printf("[fp8 attention] CPU emulation vs f64 attention on HiF8 values: rel error %.4g\n", r);
  EXPECT_LT(r, 0.0625);
  // the same with the online-softmax blocking a flash kernel uses
  Fp8AttentionEmulation emu;
  emu.kv_block = 16;
  Tensor ob = Tensor::empty({B, Lq, H, D}, DType::F32);
  fp8_attention_emulate(hif8_quantize_e4m3(x.q), hif8_quantize_e4m3(x.k), hif8_quantize_e4m3(x.v),
                        ob, {}, emu);
  EXPECT_LT(relative_error(ob, ref), 0.0625);
  // bf16 output is the f32 output rounded
  Tensor o16 = Tensor::empty({B, Lq, H, D}, DType::BF16);
  hif8_attention_fp8(x.q, x.k, x.v, o16);
  EXPECT_LT(relative_error(o16, out), 4e-3);
}

TEST(Fp8Attention, HandComputedRoundingOfP) {
  // D = 1, scale 1, unit scales: q = 1, k = (0, -1), v = (1, 2): logits (0, -1),
  // P = (1, e^-1), P·448 = (448, 164.8) → E4M3 (448, 160) (step 16 in [128, 256)),
  // out = (448·1 + 160·2) / (1 + e^-1) / 448.
  auto op = [](std::vector<float> vals, int64_t L) {
    Fp8Tensor t;
    t.codes = Tensor::empty({1, L, 1, 1}, DType::F8E4M3);
    for (int64_t i = 0; i < L; ++i) t.codes.data<uint8_t>()[i] = e4m3_encode(vals[size_t(i)]);
    t.scale_inv = Tensor::from_vector({1.0f}, {1});
    return t;
  };
  Fp8Tensor q = op({1}, 1), k = op({0, -1}, 2), v = op({1, 2}, 2);
  ops::AttentionArgs a;
  a.scale = 1.0f;
  Tensor out = Tensor::empty({1, 1, 1, 1}, DType::F32);
  fp8_attention(q, k, v, out, a);
  const double expect = (448.0 + 160.0 * 2.0) / (1.0 + std::exp(-1.0)) / 448.0;
  EXPECT_NEAR(out.data<float>()[0], expect, 1e-6);
  // unrounded it would be (1 + 2e^-1)/(1 + e^-1) = 1.2689: the rounding is visible
  EXPECT_GT(std::fabs(out.data<float>()[0] - (1.0 + 2.0 * std::exp(-1.0)) / (1.0 + std::exp(-1.0))),
            1e-2);
  // one key: P = 1 → 448 exactly, out = v
  Fp8Tensor k1 = op({0.5f}, 1), v1 = op({-3.25f}, 1);
  fp8_attention(q, k1, v1, out, a);
  EXPECT_NEAR(out.data<float>()[0], -3.25, 1e-6);
  // O stored in E4M3 at 448/(15·dv) (dv = 1): -3.25·29.87 = -97.07 → -96 (step 8 in [64, 128))
  Fp8AttentionEmulation e8;
  e8.o_storage = Fp8AttentionOut::E4M3;
  fp8_attention_emulate(q, k1, v1, out, a, e8);
  EXPECT_NEAR(out.data<float>()[0], -96.0 * 15.0 / 448.0, 1e-6);
  // F16 storage of O/dv: -3.25 is exact
  e8.o_storage = Fp8AttentionOut::F16;
  fp8_attention_emulate(q, k1, v1, out, a, e8);
  EXPECT_EQ(out.data<float>()[0], -3.25f);
}

TEST(Fp8Attention, PackedSequencesEqualSeparateCalls) {
  const int64_t B = 2, H = 2, D = 32;
  const std::vector<int> lens = {9, 0, 13, 1, 6};
  const int64_t L = 29;
  Operands x = make(B, L, L, H, D, 300);
  Fp8Tensor q = hif8_quantize_e4m3(x.q), k = hif8_quantize_e4m3(x.k), v = hif8_quantize_e4m3(x.v);
  Tensor sl = Tensor::empty({int64_t(lens.size())}, DType::I32);
  for (size_t i = 0; i < lens.size(); ++i) sl.data<int32_t>()[i] = lens[i];
  ops::AttentionArgs a;
  a.seq_lens = &sl;
  Tensor out = Tensor::empty({B, L, H, D}, DType::F32);
  fp8_attention(q, k, v, out, a);
  // each sequence alone (same codes and scales) gives bitwise the same rows
  int64_t off = 0;
  for (int n : lens) {
    if (n > 0) {
      auto part = [&](const Fp8Tensor& t) {
        return Fp8Tensor{t.codes.slice(1, off, off + n).contiguous(), t.scale_inv};
      };
      Tensor o = Tensor::empty({B, n, H, D}, DType::F32);
      fp8_attention(part(q), part(k), part(v), o);
      Tensor want = out.slice(1, off, off + n).contiguous();
      EXPECT_EQ(max_abs_diff(o, want), 0.0) << "sequence at " << off;
    }
    off += n;
  }
  // and unrounded it is f64 attention inside each sequence
  Fp8AttentionEmulation emu;
  emu.round_p = false;
  fp8_attention_emulate(q, k, v, out, a, emu);
  Tensor ref = attention_f64(dequant(q), dequant(k), dequant(v), 1.0 / std::sqrt(double(D)), lens);
  EXPECT_LT(relative_error(out, ref), 2e-6);
}

TEST(Fp8Attention, BadInputsGiveClearErrors) {
  Operands x = make(1, 8, 8, 2, 16, 400);
  Fp8Tensor q = hif8_quantize_e4m3(x.q), k = hif8_quantize_e4m3(x.k), v = hif8_quantize_e4m3(x.v);
  Tensor out = Tensor::empty({1, 8, 2, 16}, DType::F32);
  Tensor bias = Tensor::zeros({2, 8, 8}, DType::F32);
  ops::AttentionArgs ab;
  ab.bias = &bias;
  expect_error([&] { fp8_attention(q, k, v, out, ab); }, "bias");
  Tensor lens = Tensor::empty({1}, DType::I32);
  lens.data<int32_t>()[0] = 5;
  ops::AttentionArgs aq;
  aq.kv_lens = &lens;
  expect_error([&] { fp8_attention(q, k, v, out, aq); }, "kv_lens");
  ops::AttentionArgs as;
  as.seq_lens = &lens;  // sums to 5, not 8
  expect_error([&] { fp8_attention(q, k, v, out, as); }, "sum to 5");
  Tensor neg = Tensor::empty({2}, DType::I32);
  neg.data<int32_t>()[0] = 10;
  neg.data<int32_t>()[1] = -2;
  as.seq_lens = &neg;
  expect_error([&] { fp8_attention(q, k, v, out, as); }, "negative");
  Tensor f = Tensor::zeros({1}, DType::F32);
  as.seq_lens = &f;
  expect_error([&] { fp8_attention(q, k, v, out, as); }, "i32");
  Fp8Tensor k6 = hif8_quantize_e4m3(randn({1, 6, 2, 16}, 5)), v6 = hif8_quantize_e4m3(randn({1, 6, 2, 16}, 6));
  Tensor l8 = Tensor::empty({1}, DType::I32);
  l8.data<int32_t>()[0] = 8;
  as.seq_lens = &l8;
  expect_error([&] { fp8_attention(q, k6, v6, out, as); }, "Lq == Lk");
  expect_error([&] { fp8_attention(q, k, v6, out); }, "one shape");
  Tensor wrong = Tensor::empty({1, 8, 2, 8}, DType::F32);
  expect_error([&] { fp8_attention(q, k, v, wrong); }, "out must be");
  Tensor oi = Tensor::empty({1, 8, 2, 16}, DType::I32);
  expect_error([&] { fp8_attention(q, k, v, oi); }, "f32 or bf16");
  expect_error([&] { fp8_attention(Fp8Tensor{}, k, v, out); }, "not quantized");
  Fp8Tensor q3{q.codes.view({8, 2, 16}), q.scale_inv};
  expect_error([&] { fp8_attention(q3, k, v, out); }, "[B, L, H, D]");
  expect_error([&] { hif8_attention_fp8(x.q.to(DType::I32), x.k, x.v, out); }, "f32 or bf16");
  expect_error([&] { hif8_attention_fp8(x.q, x.k, randn({1, 8, 2, 8}, 7), out); }, "one shape");
  Fp8AttentionEmulation emu;
  emu.kv_block = -1;
  expect_error([&] { fp8_attention_emulate(q, k, v, out, {}, emu); }, "kv_block");
}

// The whole-tensor call for the FP8 kernels' own entry points: shapes, strides, pointers, and
// clear errors for shapes that disagree.
TEST(Fp8Attention, KernelCallDescribesTheTensors) {
  Fp8Tensor q = hif8_quantize_e4m3(Tensor::zeros({2, 5, 3, 128}, DType::F32));
  Fp8Tensor kv = hif8_quantize_e4m3(Tensor::zeros({2, 7, 3, 128}, DType::F32));
  Tensor out = Tensor::empty({2, 5, 3, 128}, DType::BF16);
  const ops::cuda::Fp8AttentionCall c = fp8_attention_call(q, kv, kv, out, 0.25f);
  EXPECT_EQ(c.B, 2);
  EXPECT_EQ(c.Lq, 5);
  EXPECT_EQ(c.Lk, 7);
  EXPECT_EQ(c.H, 3);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.q_bstride, 5 * 3 * 128);
  EXPECT_EQ(c.o_bstride, 5 * 3 * 128);
  EXPECT_EQ(c.kv_bstride, 7 * 3 * 128);
  EXPECT_EQ(c.q, q.codes.raw());
  EXPECT_EQ(c.k, kv.codes.raw());
  EXPECT_EQ(c.out, out.raw());
  EXPECT_EQ(c.descale_v, kv.scale_inv.data<float>());
  EXPECT_EQ(c.attn_scale, 0.25f);
  Tensor wrong = Tensor::empty({2, 5, 3, 64}, DType::BF16);
  try {
    fp8_attention_call(q, kv, kv, wrong);
    ADD_FAILURE() << "an output of another shape accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shapes disagree"), std::string::npos) << e.what();
  }
}
