// The HiF8 → E4M3 operand quantization and the E4M3 dequantization on the GPU against the CPU,
// bit for bit, where the streaming kernels change path: sizes around the 16-element tile,
// offset views (16-byte aligned or not), special values (NaN payloads that share the Inf
// prefix of the kernels' table, zeros, tiny values, a large value) and a tensor
// large enough for several passes of the persistent grid.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/fp8.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

namespace {

Tensor values(int64_t n, uint64_t seed) {
  Tensor r = randn({n}, seed);
  std::vector<float> v = r.to_float_vector();
  // (no ±Inf: an infinite amax turns the scaling off, s = 1)
  const uint32_t specials[] = {0x7f800001u, 0xff87ffffu, 0x7fc00000u, 0x33800000u, 0xb4400000u,
                               0x00000000u, 0x80000000u, 0x00000001u, 0x34000000u, 0x47200000u};
  for (int64_t i = 0; i < n; ++i) {
    v[size_t(i)] *= std::ldexp(1.0f, int(i % 24) - 12);
    if (i % 101 == 3) std::memcpy(&v[size_t(i)], &specials[size_t(i / 101) % 10], 4);
  }
  return Tensor::from_vector(v, {n});
}


void check(const Tensor& xc, const Tensor& xg, float smax, const char* what) {
  Fp8Tensor qc = hif8_quantize_e4m3(xc, smax);
  Fp8Tensor qg = hif8_quantize_e4m3(xg, smax);
  test::expect_same_bits(qg.codes, qc.codes, what);
  EXPECT_EQ(qg.scale_inv.to(Device::cpu()).data<float>()[0], qc.scale_inv.data<float>()[0]) << what;
  for (DType od : {DType::F32, DType::BF16}) {
    Tensor dc = Tensor::empty(xc.shape(), od), dg = Tensor::empty(xc.shape(), od, Device::cuda());
    fp8_dequantize(qc, dc);
    fp8_dequantize(qg, dg);
    test::expect_same_bits(dg, dc, what);
  }
}

}  // namespace

TEST(HiF8E4m3Gpu, OddSizesViewsAndSpecialsBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  for (int64_t n : {int64_t(1), int64_t(15), int64_t(16), int64_t(17), int64_t(47), int64_t(3001)})
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor xc_full = values(n + 16, uint64_t(n) + 3).to(dt);
      Tensor xg_full = xc_full.to(Device::cuda());
      for (int64_t start : {int64_t(0), int64_t(1), int64_t(8), int64_t(16)}) {
        SCOPED_TRACE(testing::Message() << "n " << n << " start " << start << " " << dtype_name(dt));
        Tensor xc = xc_full.slice(0, start, start + n), xg = xg_full.slice(0, start, start + n);
        for (float smax : {kHiF8ForwardMax, kHiF8BackwardMax}) check(xc, xg, smax, "quantize");
      }
    }
}

TEST(HiF8E4m3Gpu, ManyGridStridesBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  const int64_t n = (int64_t(1) << 23) + 77;
  Tensor x = values(n, 5);
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor xc = x.to(dt);
    check(xc, xc.to(Device::cuda()), kHiF8ForwardMax, "quantize large");
  }
}

TEST(HiF8E4m3Gpu, EmptyTensorStillWritesTheScale) {
  OSP_REQUIRE_GPU();
  Tensor e = Tensor::empty({0}, DType::BF16, Device::cuda());
  Fp8Tensor q = hif8_quantize_e4m3(e);
  EXPECT_EQ(q.codes.numel(), 0);
  // amax 0 → s = 15 / bf16(1e-8), scale_inv = 1/s (the CPU's rule)
  Fp8Tensor qc = hif8_quantize_e4m3(Tensor::empty({0}, DType::BF16));
  EXPECT_EQ(q.scale_inv.to(Device::cpu()).data<float>()[0], qc.scale_inv.data<float>()[0]);
}
