// FP8 path on the GPU: HiF8→E4M3 quantization bitwise equal to the CPU, and the cuBLASLt
// E4M3 GEMM (bf16/f32 out, bias, fast accumulation on/off) against the CPU reference.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8_linear.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

TEST(Fp8Gpu, QuantizeBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  Tensor x = randn({333, 160}, 9);
  std::vector<float> v = x.to_float_vector();
  for (size_t i = 0; i < v.size(); i += 4) v[i] *= 1e-4f;
  x = Tensor::from_vector(v, {333, 160});
  for (DType dt : {DType::F32, DType::BF16})
    for (float smax : {kHiF8ForwardMax, kHiF8BackwardMax}) {
      Tensor xc = x.to(dt);
      Fp8Tensor qc = hif8_quantize_e4m3(xc, smax);
      Fp8Tensor qg = hif8_quantize_e4m3(xc.to(Device::cuda()), smax);
      ASSERT_TRUE(qg.codes.device().is_cuda());
      Tensor cg = qg.codes.to(Device::cpu());
      ASSERT_EQ(std::memcmp(cg.raw(), qc.codes.raw(), qc.codes.nbytes()), 0);
      EXPECT_EQ(qg.scale_inv.to(Device::cpu()).data<float>()[0], qc.scale_inv.data<float>()[0]);
      // a view starting one element in (not 4-element aligned): the scalar kernel path
      const int64_t n = xc.numel();
      Fp8Tensor sc = hif8_quantize_e4m3(xc.view({n}).slice(0, 1, n), smax);
      Fp8Tensor so = hif8_quantize_e4m3(xc.to(Device::cuda()).view({n}).slice(0, 1, n), smax);
      Tensor soc = so.codes.to(Device::cpu());
      EXPECT_EQ(std::memcmp(soc.raw(), sc.codes.raw(), sc.codes.nbytes()), 0);
      EXPECT_EQ(so.scale_inv.to(Device::cpu()).data<float>()[0], sc.scale_inv.data<float>()[0]);
      for (DType od : {DType::F32, DType::BF16}) {
        Tensor dc = Tensor::empty(xc.shape(), od), dg = Tensor::empty(xc.shape(), od, Device::cuda());
        fp8_dequantize(qc, dc);
        fp8_dequantize(qg, dg);
        Tensor dgc = dg.to(Device::cpu());
        EXPECT_EQ(std::memcmp(dgc.raw(), dc.raw(), dc.nbytes()), 0);
      }
    }
}

TEST(Fp8Gpu, LinearMatchesCPUReference) {
  OSP_REQUIRE_GPU();
  const int64_t M = 77, K = 256, N = 96;
  Tensor x = randn({M, K}, 11), w = randn({N, K}, 12);
  Tensor b = randn({N}, 13).to(DType::BF16).to(DType::F32);  // bf16-exact bias
  Fp8Tensor xq = hif8_quantize_e4m3(x), wq = hif8_quantize_e4m3(w);
  Fp8Tensor xg{xq.codes.to(Device::cuda()), xq.scale_inv.to(Device::cuda())};
  Fp8Tensor wg{wq.codes.to(Device::cuda()), wq.scale_inv.to(Device::cuda())};
  Tensor bg = b.to(Device::cuda());
  for (bool with_bias : {false, true}) {
    Tensor ref = Tensor::empty({M, N}, DType::F32);
    fp8_linear(xq, wq, with_bias ? &b : nullptr, ref);
    for (bool fast : {false, true})
      for (DType od : {DType::F32, DType::BF16}) {
        Tensor og = Tensor::empty({M, N}, od, Device::cuda());
        fp8_linear(xg, wg, with_bias ? &bg : nullptr, og, Fp8LinearOptions{fast});
        double r = relative_error(og, ref);
        // products of E4M3 values are exact; only the accumulation (and bf16 output) round
        // (Hopper's FP8 MMA accumulator keeps fewer bits than fp32 between promotions)
        double bound = od == DType::BF16 ? 8e-3 : (fast ? 3e-3 : 5e-4);
        EXPECT_LT(r, bound) << "bias " << with_bias << " fast " << fast << " out "
                            << dtype_name(od);
      }
  }
}

TEST(Fp8Gpu, LinearFromBf16TensorsMatchesCPU) {
  OSP_REQUIRE_GPU();
  // quantization from bf16 on the GPU equals the CPU's (bitwise), so the CPU reference on the
  // same bf16 tensors differs only by the GEMM accumulation
  Tensor x = randn({2, 40, 128}, 21).to(DType::BF16), w = randn({64, 128}, 22).to(DType::BF16);
  Tensor ref = Tensor::empty({2, 40, 64}, DType::F32);
  fp8_linear(x, w, nullptr, ref);
  Tensor og = Tensor::empty({2, 40, 64}, DType::F32, Device::cuda());
  fp8_linear(x.to(Device::cuda()), w.to(Device::cuda()), nullptr, og);
  EXPECT_LT(relative_error(og, ref), 5e-4);
  // and close to the HiF8 fake-quant linear of the same tensors (FP8 ≈ HiF8, fp8.h)
  Tensor hq = Tensor::empty({2, 40, 64}, DType::F32);
  hif8_linear(x.to(DType::F32), w.to(DType::F32), nullptr, hq);
  EXPECT_LT(relative_error(og, hq), 1e-1);  // bf16 vs f32 scaling flips ~3% of roundings
}

TEST(Fp8Gpu, LinearWithActivationMatchesCPU) {
  OSP_REQUIRE_GPU();
  const int64_t M = 50, K = 128, N = 64;
  Tensor x = randn({M, K}, 31), w = randn({N, K}, 32);
  Tensor b = randn({N}, 33).to(DType::BF16).to(DType::F32);
  Fp8Tensor xq = hif8_quantize_e4m3(x), wq = hif8_quantize_e4m3(w);
  Fp8Tensor xg{xq.codes.to(Device::cuda()), xq.scale_inv.to(Device::cuda())};
  Fp8Tensor wg{wq.codes.to(Device::cuda()), wq.scale_inv.to(Device::cuda())};
  Tensor bg = b.to(Device::cuda());
  for (ops::Act act : {ops::Act::GeluTanh, ops::Act::Silu})
    for (DType od : {DType::BF16, DType::F32}) {
      Tensor ref = Tensor::empty({M, N}, DType::F32);
      fp8_linear(xq, wq, &b, ref, {}, act);
      Tensor og = Tensor::empty({M, N}, od, Device::cuda());
      fp8_linear(xg, wg, &bg, og, {}, act);
      EXPECT_LT(relative_error(og, ref), od == DType::BF16 ? 8e-3 : 5e-4)
          << "act " << int(act) << " out " << dtype_name(od);
    }
}

TEST(Fp8Gpu, LinearRejectsUnalignedK) {
  OSP_REQUIRE_GPU();
  Tensor x = randn({8, 24}, 1).to(Device::cuda()), w = randn({16, 24}, 2).to(Device::cuda());
  Tensor out = Tensor::empty({8, 16}, DType::BF16, Device::cuda());
  EXPECT_THROW(fp8_linear(x, w, nullptr, out), Error);
}
