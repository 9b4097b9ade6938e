// FP8 attention on the GPU (cuDNN's fused FP8 SDPA and the own Hopper FP8 kernel): against the
// CPU emulation of the same arithmetic on the same E4M3 codes (tight), and against bf16
// ops::attention on the same HiF8-rounded inputs (loose: the E4M3 rounding of P). Odd lengths, B > 1, Lq != Lk, packed
// sequences with a zero-length one, D = 128. Bad inputs give clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/quant/hif8.h"
#include "test_util.h"

#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace osp;
using namespace osp::quant;

namespace {

struct Case {
  const char* name;
  int64_t B, Lq, Lk, H;
  std::vector<int> seq_lens;  // empty: plain
};

int sm_major() {
#ifdef OSP_HAVE_CUDA
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return 0;
  return p.major;
#else
  return 0;
#endif
}

Tensor randn_scaled(const Shape& s, uint64_t seed, float scale) {
  Tensor t = randn(s, seed);
  std::vector<float> v = t.to_float_vector();
  for (float& x : v) x *= scale;
  return Tensor::from_vector(v, s);
}

Fp8Tensor to_cpu(const Fp8Tensor& t) { return {t.codes.to(Device::cpu()), t.scale_inv.to(Device::cpu())}; }


// One case on one kernel: against the emulation (tight) and bf16 attention (loose).
void check_case(const Case& c, Fp8AttentionKernel kernel, uint64_t seed) {
  const int64_t D = 128;
  const bool own = kernel == Fp8AttentionKernel::Hopper;
  Tensor q = randn_scaled({c.B, c.Lq, c.H, D}, seed, 2.5f).to(DType::BF16).to(Device::cuda());
  Tensor k = randn_scaled({c.B, c.Lk, c.H, D}, seed + 1, 1.0f).to(DType::BF16).to(Device::cuda());
  Tensor v = randn_scaled({c.B, c.Lk, c.H, D}, seed + 2, 1.0f).to(DType::BF16).to(Device::cuda());
  Tensor sl;
  ops::AttentionArgs args;
  if (!c.seq_lens.empty()) {
    sl = Tensor::empty({int64_t(c.seq_lens.size())}, DType::I32);
    for (size_t i = 0; i < c.seq_lens.size(); ++i) sl.data<int32_t>()[i] = c.seq_lens[i];
    args.seq_lens = &sl;
  }
  // NaN in the output's padding would show if a kernel skipped rows: start from NaN
  const Shape os = {c.B, c.Lq, c.H, D};
  Tensor out = Tensor::from_vector(std::vector<float>(size_t(c.B * c.Lq * c.H * D), std::nanf("")), os)
                   .to(DType::BF16)
                   .to(Device::cuda());
  hif8_attention_fp8(q, k, v, out, args, kernel);
  const std::string path = fp8_attention_last_path();
  std::printf("[fp8 attention] %s: path %s; %s\n", c.name, path.c_str(),
              own ? "" : fp8_attention_cudnn_note().c_str());
  if (own) EXPECT_EQ(path, "hopper_fp8");
  else if (sm_major() >= 9) EXPECT_EQ(path, "cudnn_fp8") << fp8_attention_cudnn_note();

  // the same codes on the CPU (the GPU quantizer is bitwise the CPU's: fp8_gpu_test)
  Fp8Tensor q8 = to_cpu(hif8_quantize_e4m3(q)), k8 = to_cpu(hif8_quantize_e4m3(k)),
            v8 = to_cpu(hif8_quantize_e4m3(v));
  Tensor got = out.to(Device::cpu()).to(DType::F32);
  // the own kernel: online softmax over its K/V tiles, O in bf16 (attention_paths.h)
  const Fp8AttentionOut ost = own ? Fp8AttentionOut::BF16 : fp8_attention_cudnn_o_storage();
  const int64_t own_block = own ? ops::cuda::hopper_fp8_key_tile() : 256;
  double best = 1e9;
  for (int64_t blk : {int64_t(0), int64_t(64), int64_t(128), int64_t(256)})
    for (bool rs : {false, true}) {
      Fp8AttentionEmulation emu;
      emu.kv_block = blk;
      emu.rowsum_of_rounded_p = rs;
      emu.o_storage = ost;
      Tensor ref = Tensor::empty(got.shape(), DType::F32);
      fp8_attention_emulate(q8, k8, v8, ref, args, emu);
      const double r = relative_error(got, ref);
      best = std::min(best, r);
      std::printf("[fp8 attention] %s: GPU vs emulation (kv_block %lld, rowsum of %s P): %.4g\n",
                  c.name, (long long)blk, rs ? "rounded" : "f32", r);
    }
  Tensor ref = Tensor::empty(got.shape(), DType::F32);
  Fp8AttentionEmulation same;
  same.o_storage = ost;
  same.kv_block = own_block;
  fp8_attention_emulate(q8, k8, v8, ref, args, same);
  const double r_emu = relative_error(got, ref);
  Tensor ref_o = Tensor::empty(got.shape(), DType::F32);
  fp8_attention_emulate(q8, k8, v8, ref_o, args);
  std::printf("[fp8 attention] %s: O stored as %s; GPU vs emulation without the O rounding %.4g\n",
              c.name, ost == Fp8AttentionOut::BF16 ? "bf16" : ost == Fp8AttentionOut::F16 ? "f16" : "e4m3",
              relative_error(got, ref_o));
  Fp8AttentionEmulation unrounded;
  unrounded.round_p = false;
  unrounded.o_storage = ost;
  Tensor ref_u = Tensor::empty(got.shape(), DType::F32);
  fp8_attention_emulate(q8, k8, v8, ref_u, args, unrounded);
  const double r_unrounded = relative_error(got, ref_u);

  // bf16 attention on the same HiF8-rounded inputs
  Tensor qb = Tensor::empty(q.shape(), DType::BF16, Device::cuda());
  Tensor kb = Tensor::empty(k.shape(), DType::BF16, Device::cuda());
  Tensor vb = Tensor::empty(v.shape(), DType::BF16, Device::cuda());
  fp8_dequantize(hif8_quantize_e4m3(q), qb);
  fp8_dequantize(hif8_quantize_e4m3(k), kb);
  fp8_dequantize(hif8_quantize_e4m3(v), vb);
  Tensor ob = Tensor::empty(out.shape(), DType::BF16, Device::cuda());
  if (c.seq_lens.empty()) {
    ops::attention(qb, kb, vb, ob);
  } else {  // one bf16 call per sequence
    int64_t off = 0;
    for (int n : c.seq_lens) {
      for (int64_t b = 0; b < c.B; ++b) {
        auto view = [&](const Tensor& t) {  // rows [off, off + n) of sample b, contiguous
          auto* p = static_cast<uint16_t*>(t.raw()) + (b * c.Lq + off) * c.H * D;
          return Tensor::from_blob(p, {1, n, c.H, D}, DType::BF16, t.device(), t.storage());
        };
        Tensor ov = view(ob);
        if (n > 0) ops::attention(view(qb), view(kb), view(vb), ov);
      }
      off += n;
    }
  }
  const double r_bf16 = relative_error(got, ob.to(Device::cpu()).to(DType::F32));
  std::printf("[fp8 attention] %s: GPU FP8 vs emulation (default) %.4g, best variant %.4g, vs "
              "unrounded emulation %.4g, vs bf16 cuDNN attention on the same HiF8 inputs %.4g\n",
              c.name, r_emu, best, r_unrounded, r_bf16);
  std::fflush(stdout);
  // Tight: the same arithmetic. What remains is the FP8 MMA accumulation and exp, whose
  // last-bit differences now and then flip the E4M3 rounding of a P and, where cuDNN stores O
  // in E4M3 (cuDNN 9.14), of an O element (one E4M3 step, 6-12 %, on that element). So with
  // E4M3 O the Frobenius error must stay below the 2.5-2.9 % that ignoring the P rounding
  // gives ("vs unrounded emulation" above); on an H200 it was 0.83-1.25 %, while a wrong row
  // sum or P blocking gave 1.6-2.3 %. The share of O elements a step off the emulation was
  // 2.8-7.4 % there (growing with Lk); a wrong O or P scale would put most of them off.
  if (ost == Fp8AttentionOut::E4M3) {
    const float dv = v8.scale_inv.data<float>()[0];
    const double s8 = 448.0 / (15.0 * double(dv));
    std::vector<float> g = got.to_float_vector(), e = ref.to_float_vector();
    int64_t flips = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      const double code = std::fabs(double(e[i])) * s8;  // the E4M3 value the emulation kept
      const double step =
          (code >= 1.0 / 64 ? std::exp2(std::floor(std::log2(code)) - 3) : 1.0 / 512) / s8;
      if (std::fabs(double(g[i]) - double(e[i])) > 0.5 * step) ++flips;
    }
    const double frac = double(flips) / double(g.size());
    std::printf("[fp8 attention] %s: O elements one E4M3 step off the emulation: %.3f %%\n",
                c.name, 100.0 * frac);
    EXPECT_LT(r_emu, 0.02);
    EXPECT_LT(frac, 0.15);
  } else {
    EXPECT_LT(r_emu, 0.01);
  }
  // Loose: each P and (E4M3 O) each O element carry at most 2^-4 relative rounding error,
  // rms about 2^-4/sqrt(3) each, so about 0.05 for both.
  EXPECT_LT(r_bf16, 0.0625);
}

}  // namespace

TEST(Fp8AttentionGpu, MatchesEmulationAndBf16) {
  OSP_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"plain B=2 L=257", 2, 257, 257, 3, {}},
      {"Lq=130 Lk=333", 1, 130, 333, 2, {}},
      {"packed {100,0,77,129} B=2", 2, 306, 306, 2, {100, 0, 77, 129}},
      {"plain L=1000", 1, 1000, 1000, 2, {}},
  };
  uint64_t seed = 1000;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    check_case(c, Fp8AttentionKernel::Cudnn, seed);
    seed += 3;
  }
}

// The own Hopper FP8 kernel (attention_hopper_fp8): the cases above and its own edges — one
// key, keys a multiple of the 128-key tile, one query row, many heads, a long row of keys.
TEST(Fp8AttentionGpu, HopperKernelMatchesEmulationAndBf16) {
  OSP_REQUIRE_GPU();
  if (!ops::cuda::hopper_attention_supported()) GTEST_SKIP() << "no sm_90a GPU / build";
  const std::vector<Case> cases = {
      {"plain B=2 L=257", 2, 257, 257, 3, {}},
      {"Lq=130 Lk=333", 1, 130, 333, 2, {}},
      {"packed {100,0,77,129} B=2", 2, 306, 306, 2, {100, 0, 77, 129}},
      {"plain L=1000", 1, 1000, 1000, 2, {}},
      {"Lq=5 Lk=1", 1, 5, 1, 2, {}},
      {"Lq=1 Lk=256 B=3 H=5", 3, 1, 256, 5, {}},
      {"Lq=128 Lk=4100", 1, 128, 4100, 2, {}},
  };
  uint64_t seed = 1000;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    check_case(c, Fp8AttentionKernel::Hopper, seed);
    seed += 3;
  }
}

// Both key tiles of the own FP8 kernel (128 and 224 keys; P rounded with each tile's running
// max), both schedulings, through its own entry point: against the emulation with blocks of that
// many keys. Lengths around the tile edges (1, 223, 224, 225, 449) and past several tiles.
TEST(Fp8AttentionGpu, HopperKeyTilesMatchEmulation) {
  OSP_REQUIRE_GPU();
  if (!ops::cuda::hopper_attention_supported()) GTEST_SKIP() << "no sm_90a GPU / build";
  const int64_t D = 128;
  const std::vector<Case> cases = {
      {"Lq=70 Lk=1", 1, 70, 1, 2, {}},          {"Lq=130 Lk=223 B=2", 2, 130, 223, 3, {}},
      {"Lq=129 Lk=224", 1, 129, 224, 2, {}},    {"Lq=64 Lk=225", 1, 64, 225, 1, {}},
      {"Lq=200 Lk=449 H=3", 1, 200, 449, 3, {}}, {"Lq=256 Lk=2100", 1, 256, 2100, 2, {}},
  };
  uint64_t seed = 2000;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Tensor q = randn_scaled({c.B, c.Lq, c.H, D}, seed, 2.5f).to(DType::BF16).to(Device::cuda());
    Tensor k = randn_scaled({c.B, c.Lk, c.H, D}, seed + 1, 1.0f).to(DType::BF16).to(Device::cuda());
    Tensor v = randn_scaled({c.B, c.Lk, c.H, D}, seed + 2, 1.0f).to(DType::BF16).to(Device::cuda());
    seed += 3;
    Fp8Tensor q8 = hif8_quantize_e4m3(q), k8 = hif8_quantize_e4m3(k), v8 = hif8_quantize_e4m3(v);
    Fp8Tensor qc = to_cpu(q8), kc = to_cpu(k8), vc = to_cpu(v8);
    for (int tile : {128, 224})
      for (bool pingpong : {false, true}) {
        Tensor out = Tensor::from_vector(std::vector<float>(size_t(c.B * c.Lq * c.H * D), std::nanf("")),
                                         {c.B, c.Lq, c.H, D})
                         .to(DType::BF16)
                         .to(Device::cuda());
        ops::cuda::attention_hopper_fp8(fp8_attention_call(q8, k8, v8, out), pingpong, tile);
        Tensor got = out.to(Device::cpu()).to(DType::F32);
        Fp8AttentionEmulation emu;
        emu.kv_block = tile;
        emu.o_storage = Fp8AttentionOut::BF16;
        Tensor ref = Tensor::empty(got.shape(), DType::F32);
        fp8_attention_emulate(qc, kc, vc, ref, {}, emu);
        const double r = relative_error(got, ref);
        std::printf("[fp8 attention] %s: key tile %d%s vs emulation (kv_block %d) %.4g\n", c.name, tile,
                    pingpong ? " pingpong" : "", tile, r);
        EXPECT_LT(r, 0.01) << "key tile " << tile << (pingpong ? " pingpong" : "");
      }
  }
  Tensor z = Tensor::zeros({1, 16, 1, 128}, DType::BF16, Device::cuda());
  Fp8Tensor z8 = hif8_quantize_e4m3(z);
  try {
    ops::cuda::attention_hopper_fp8(fp8_attention_call(z8, z8, z8, z), false, 176);
    ADD_FAILURE() << "key tile 176 accepted by the FP8 kernel";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key tile must be 128 or 224"), std::string::npos) << e.what();
  }
}

TEST(Fp8AttentionGpu, BadInputsGiveClearErrors) {
  OSP_REQUIRE_GPU();
  Tensor q = randn({1, 16, 2, 128}, 1).to(DType::BF16).to(Device::cuda());
  Tensor out32 = Tensor::empty({1, 16, 2, 128}, DType::F32, Device::cuda());
  try {
    hif8_attention_fp8(q, q, q, out32);
    ADD_FAILURE() << "f32 output on CUDA accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
  Tensor out = Tensor::empty({1, 16, 2, 128}, DType::BF16, Device::cuda());
  Tensor qc = q.to(Device::cpu());
  try {
    hif8_attention_fp8(q, qc, q, out);
    ADD_FAILURE() << "mixed devices accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("device"), std::string::npos) << e.what();
  }
  Fp8Tensor q8 = hif8_quantize_e4m3(q);
  try {
    fp8_attention_emulate(q8, q8, q8, out);
    ADD_FAILURE() << "emulation on CUDA tensors accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CPU"), std::string::npos) << e.what();
  }
  Tensor bias = Tensor::zeros({2, 16, 16}, DType::F32, Device::cuda());
  ops::AttentionArgs a;
  a.bias = &bias;
  try {
    fp8_attention(q8, q8, q8, out, a);
    ADD_FAILURE() << "bias accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bias"), std::string::npos) << e.what();
  }
}
