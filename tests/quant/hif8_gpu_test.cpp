// CUDA HiF8 kernels against the CPU reference: encode/decode/round/stochastic bitwise equal on
// random and special values, amax and scaled fake quant bitwise equal (F32 and BF16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_linear.h"
#include "test_util.h"
#ifdef OSP_HAVE_CUDA
#include "osp/quant/cuda/fp8_cuda.h"
#include "osp/quant/cuda/hif8_cuda.h"
#endif

using namespace osp;
using namespace osp::quant;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Special values, every HiF8 value, the midpoints between neighbouring HiF8 values and their
// float neighbours, thresholds, plus log-uniform random values of both signs.
std::vector<float> test_values(size_t n_random) {
  std::vector<float> v = {0.f, -0.f, NAN, -NAN, INFINITY, -INFINITY, 40960.f, -40960.f,
                          std::nextafter(40960.f, 0.f), std::ldexp(1.f, -23),
                          std::nextafter(std::ldexp(1.f, -23), 0.f), 1e-40f, -1e-45f, 3e38f};
  // NaNs whose top mantissa bits are zero share the Inf prefix of the kernels' tables
  for (uint32_t nan : {0x7f800001u, 0x7f87ffffu, 0xff800001u, 0xff840000u}) {
    float f;
    std::memcpy(&f, &nan, 4);
    v.push_back(f);
  }
  std::vector<float> pos;
  for (int c = 0; c < 128; ++c) {
    float h = hif8_decode(uint8_t(c));
    if (std::isfinite(h)) pos.push_back(h);
  }
  std::sort(pos.begin(), pos.end());
  for (size_t i = 0; i + 1 < pos.size(); ++i) {
    float m = 0.5f * (pos[i] + pos[i + 1]);
    for (float f : {pos[i], m, std::nextafter(m, 0.f), std::nextafter(m, 1e9f)}) {
      v.push_back(f);
      v.push_back(-f);
    }
  }
  Tensor r = randn({int64_t(n_random)}, 77);
  for (size_t i = 0; i < n_random; ++i)
    v.push_back(r.data<float>()[i] * std::ldexp(1.0f, int(i % 48) - 30));
  return v;
}

}  // namespace

TEST(HiF8Gpu, EncodeDecodeBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  std::vector<float> v = test_values(100003);
  Tensor x = Tensor::from_vector(v, {int64_t(v.size())});
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor xc = x.to(dt);
    Tensor xg = xc.to(Device::cuda());
    for (bool sat : {false, true}) {
      Tensor cc = Tensor::empty(xc.shape(), DType::U8);
      hif8_encode(xc, cc, sat);
      Tensor cg = Tensor::empty(xc.shape(), DType::U8, Device::cuda());
      hif8_encode(xg, cg, sat);
      test::expect_same_bits(cg, cc, "encode");
      // misaligned start (scalar kernel path)
      Tensor xs = xg.slice(0, 1, xg.size(0));
      Tensor cs = Tensor::empty(xs.shape(), DType::U8, Device::cuda());
      hif8_encode(xs, cs, sat);
      test::expect_same_bits(cs, cc.slice(0, 1, cc.size(0)).contiguous(), "encode misaligned");
      // decode to f32 and bf16
      for (DType od : {DType::F32, DType::BF16}) {
        Tensor dc = Tensor::empty(xc.shape(), od);
        hif8_decode(cc, dc);
        Tensor dg = Tensor::empty(xc.shape(), od, Device::cuda());
        hif8_decode(cg, dg);
        test::expect_same_bits(dg, dc, "decode");
        Tensor ds = Tensor::empty(cs.shape(), od, Device::cuda());
        hif8_decode(cs, ds);
        test::expect_same_bits(ds, dc.slice(0, 1, dc.size(0)).contiguous(), "decode misaligned");
      }
    }
  }
  // all 256 codes
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[size_t(c)] = uint8_t(c);
  Tensor cc = Tensor::empty({256}, DType::HiF8);
  std::memcpy(cc.raw(), codes.data(), 256);
  Tensor dc = hif8_decode(cc);
  Tensor dg = hif8_decode(cc.to(Device::cuda()));
  test::expect_same_bits(dg, dc, "decode all codes");
}

TEST(HiF8Gpu, RoundAndStochasticBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  std::vector<float> v = test_values(50001);
  Tensor x = Tensor::from_vector(v, {int64_t(v.size())});
  for (DType ti : {DType::F32, DType::BF16})
    for (DType to : {DType::F32, DType::BF16}) {
      Tensor xc = x.to(ti);
      Tensor xg = xc.to(Device::cuda());
      Tensor rc = Tensor::empty(xc.shape(), to), rg = Tensor::empty(xc.shape(), to, Device::cuda());
      hif8_round(xc, rc);
      hif8_round(xg, rg);
      test::expect_same_bits(rg, rc, "round");
      hif8_round_stochastic(xc, rc, 2024, 77);
      hif8_round_stochastic(xg, rg, 2024, 77);
      test::expect_same_bits(rg, rc, "stochastic round");
      // offset views (not 4-element aligned): the scalar kernel path
      const int64_t n = xc.size(0);
      Tensor xs_c = xc.slice(0, 1, n), xs_g = xg.slice(0, 1, n);
      Tensor sc = Tensor::empty(xs_c.shape(), to), sg = Tensor::empty(xs_c.shape(), to, Device::cuda());
      hif8_round(xs_c, sc);
      hif8_round(xs_g, sg);
      test::expect_same_bits(sg, sc, "round misaligned");
      hif8_fake_quant(xs_c, sc);
      hif8_fake_quant(xs_g, sg);
      test::expect_same_bits(sg, sc, "fake quant misaligned");
      hif8_round_stochastic(xs_c, sc, 9);
      hif8_round_stochastic(xs_g, sg, 9);
      test::expect_same_bits(sg, sc, "stochastic round misaligned");
    }
}

TEST(HiF8Gpu, AmaxAndFakeQuantBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1) << 20}) {
    Tensor x = randn({n}, uint64_t(n));
    std::vector<float> v = x.to_float_vector();
    for (size_t i = 0; i < v.size(); i += 3) v[i] *= 1e-5f;
    if (n > 10) v[size_t(n / 2)] = NAN;  // ignored by amax
    x = Tensor::from_vector(v, {n});
    for (DType ti : {DType::F32, DType::BF16}) {
      Tensor xc = x.to(ti);
      Tensor xg = xc.to(Device::cuda());
      EXPECT_EQ(amax(xg), amax(xc));
      for (float smax : {kHiF8ForwardMax, kHiF8BackwardMax})
        for (DType to : {DType::F32, DType::BF16}) {
          Tensor oc = Tensor::empty(xc.shape(), to), og = Tensor::empty(xc.shape(), to, Device::cuda());
          hif8_fake_quant(xc, oc, smax);
          hif8_fake_quant(xg, og, smax);
          test::expect_same_bits(og, oc, "fake quant");
        }
      for (DType to : {DType::F32, DType::BF16}) {
        Tensor oc = Tensor::empty(xc.shape(), to), og = Tensor::empty(xc.shape(), to, Device::cuda());
        hif8_fake_quant_stochastic(xc, oc, 31, 7);
        hif8_fake_quant_stochastic(xg, og, 31, 7);
        test::expect_same_bits(og, oc, "stochastic fake quant");
      }
      // in place on the GPU
      Tensor ref = hif8_fake_quant(xc);
      hif8_fake_quant(xg, xg);
      test::expect_same_bits(xg, ref, "fake quant in place");
    }
  }
  // amax 0 → out = x
  Tensor z = Tensor::zeros({4096}, DType::BF16, Device::cuda());
  Tensor zq = hif8_fake_quant(z);
  test::expect_same_bits(zq, Tensor::zeros({4096}, DType::BF16), "amax 0");
}

TEST(HiF8Gpu, HiF8LinearMatchesCPU) {
  OSP_REQUIRE_GPU();
  // bf16 operands on both sides: the CPU fake quant of bf16 tensors has the GPU's numerics
  // (bitwise, tested above), so only the GEMM's summation order differs.
  Tensor x = randn({77, 256}, 5).to(DType::BF16), w = randn({96, 256}, 6).to(DType::BF16);
  Tensor b = randn({96}, 7).to(DType::BF16);
  Tensor xq = hif8_fake_quant(x).to(DType::F32), wq = hif8_fake_quant(w).to(DType::F32);
  Tensor bf = b.to(DType::F32);
  Tensor ref = Tensor::empty({77, 96}, DType::F32);
  ops::linear(xq, wq, &bf, ref);
  Tensor og = Tensor::empty({77, 96}, DType::F32, Device::cuda());
  Tensor bg = b.to(Device::cuda());
  hif8_linear(x.to(Device::cuda()), w.to(Device::cuda()), &bg, og);
  EXPECT_LT(relative_error(og, ref), 1e-4);
  // and it is a different function from the unquantized GEMM
  Tensor plain = Tensor::empty({77, 96}, DType::F32);
  Tensor xf = x.to(DType::F32), wf = w.to(DType::F32);
  ops::linear(xf, wf, &bf, plain);
  EXPECT_GT(relative_error(og, plain), 1e-3);
}

namespace {
// Random values over the whole HiF8 range and beyond, with specials sprinkled in.
Tensor wide_values(int64_t n, uint64_t seed) {
  Tensor r = randn({n}, seed);
  std::vector<float> v = r.to_float_vector();
  const std::vector<float> sp = test_values(0);
  for (int64_t i = 0; i < n; ++i) {
    v[size_t(i)] *= std::ldexp(1.0f, int(i % 50) - 30);
    if (i % 97 == 5) v[size_t(i)] = sp[size_t(i / 97) % sp.size()];
  }
  return Tensor::from_vector(v, {n});
}
}  // namespace

TEST(HiF8Gpu, OddSizesAndOffsetViewsBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  // sizes around the 16-element tile, starts that leave the pointer 16-byte aligned or not
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(15), int64_t(16), int64_t(17), int64_t(33),
                    int64_t(255), int64_t(4105)})
    for (DType ti : {DType::F32, DType::BF16}) {
      Tensor xc_full = wide_values(n + 16, uint64_t(n)).to(ti);
      Tensor xg_full = xc_full.to(Device::cuda());
      for (int64_t start : {int64_t(0), int64_t(1), int64_t(3), int64_t(8), int64_t(16)}) {
        Tensor xc = xc_full.slice(0, start, start + n), xg = xg_full.slice(0, start, start + n);
        SCOPED_TRACE(testing::Message() << "n " << n << " start " << start << " " << dtype_name(ti));
        for (bool sat : {false, true}) {
          Tensor cc = Tensor::empty({n}, DType::U8), cg = Tensor::empty({n}, DType::U8, Device::cuda());
          hif8_encode(xc, cc, sat);
          hif8_encode(xg, cg, sat);
          test::expect_same_bits(cg, cc, "encode");
        }
        // codes at an offset (decode of a view) into f32 / bf16
        Tensor codes_full = hif8_encode(xc_full);
        Tensor codes_g = codes_full.to(Device::cuda());
        for (DType to : {DType::F32, DType::BF16}) {
          Tensor dc = Tensor::empty({n}, to), dg = Tensor::empty({n}, to, Device::cuda());
          hif8_decode(codes_full.slice(0, start, start + n), dc);
          hif8_decode(codes_g.slice(0, start, start + n), dg);
          test::expect_same_bits(dg, dc, "decode");
          Tensor rc = Tensor::empty({n}, to), rg = Tensor::empty({n}, to, Device::cuda());
          hif8_round(xc, rc);
          hif8_round(xg, rg);
          test::expect_same_bits(rg, rc, "round");
          for (uint64_t offset : {0ull, 1ull, 2ull, 3ull, 1000001ull}) {
            hif8_round_stochastic(xc, rc, 5, offset);
            hif8_round_stochastic(xg, rg, 5, offset);
            test::expect_same_bits(rg, rc, "stochastic round");
          }
          hif8_fake_quant(xc, rc);
          hif8_fake_quant(xg, rg);
          test::expect_same_bits(rg, rc, "fake quant");
          hif8_fake_quant_stochastic(xc, rc, 3, 2);
          hif8_fake_quant_stochastic(xg, rg, 3, 2);
          test::expect_same_bits(rg, rc, "fake quant stochastic");
        }
        // an output that is an offset view (misaligned out, aligned x)
        Tensor big = Tensor::empty({n + 1}, ti, Device::cuda());
        Tensor og = big.slice(0, 1, n + 1);
        Tensor oc = Tensor::empty({n}, ti);
        hif8_round_stochastic(xc, oc, 11, 6);
        hif8_round_stochastic(xg, og, 11, 6);
        test::expect_same_bits(og, oc, "stochastic round into an offset view");
      }
    }
}

TEST(HiF8Gpu, ManyGridStridesAndInPlaceBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
  // more tiles than the persistent grid covers in one pass, with a partial last pass
  const int64_t n = (int64_t(1) << 23) + (int64_t(1) << 19) + 21;
  Tensor x = wide_values(n, 99);
  for (DType ti : {DType::F32, DType::BF16}) {
    Tensor xc = x.to(ti);
    Tensor xg = xc.to(Device::cuda());
    Tensor cc = hif8_encode(xc), cg = hif8_encode(xg);
    test::expect_same_bits(cg, cc, "encode");
    for (DType to : {DType::F32, DType::BF16}) {
      test::expect_same_bits(hif8_decode(cg, to), hif8_decode(cc, to), "decode");
      Tensor rc = Tensor::empty({n}, to), rg = Tensor::empty({n}, to, Device::cuda());
      hif8_round_stochastic(xc, rc, 1234, 3);
      hif8_round_stochastic(xg, rg, 1234, 3);
      test::expect_same_bits(rg, rc, "stochastic round");
    }
    // in place: TA round and stochastic round of x into itself
    Tensor ref = Tensor::empty({n}, ti);
    hif8_round(xc, ref);
    Tensor yg = xg.clone();
    hif8_round(yg, yg);
    test::expect_same_bits(yg, ref, "round in place");
    hif8_round_stochastic(xc, ref, 8, 0);
    yg = xg.clone();
    hif8_round_stochastic(yg, yg, 8, 0);
    test::expect_same_bits(yg, ref, "stochastic round in place");
  }
}

#ifdef OSP_HAVE_CUDA
namespace {
// The launch shapes of the streaming codec kernels (quant/cuda/hif8_cuda.h): every grid
// sizing × every walk of the op.
// wide: the ops whose output is as wide as their input or wider (walks: interleaved, bulk
// store), else the encode / E4M3 quantize (tile, interleaved).
std::vector<cuda::StreamShape> launch_shapes(bool wide) {
  std::vector<cuda::StreamShape> v;
  for (auto g : {cuda::Grid::kDefault, cuda::Grid::kPersistent, cuda::Grid::kFull})
    for (auto w : {cuda::Walk::kDefault, wide ? cuda::Walk::kInterleaved : cuda::Walk::kTile,
                   wide ? cuda::Walk::kBulkStore : cuda::Walk::kInterleaved})
      v.push_back({g, w});
  return v;
}
std::string shape_name(const cuda::StreamShape& s) {
  return str("grid ", int(s.grid), " walk ", int(s.walk));
}
}  // namespace
#endif

TEST(HiF8Gpu, LaunchShapesBitwiseEqualCPU) {
  OSP_REQUIRE_GPU();
#ifdef OSP_HAVE_CUDA
  // Every launch shape of encode, TA round, scaled fake quant, E4M3 quantize, decode and E4M3
  // dequantize gives the CPU's bits: sizes below one warp span, around the spans, and past one
  // round of the persistent grid (2^25 + 37: several rounds of the grid stride), plus an
  // offset view (not 16-byte aligned: the scalar path).
  for (int64_t n : {int64_t(9), int64_t(1024), int64_t(70001), (int64_t(1) << 25) + 37}) {
    const bool big = n > (1 << 20);
    for (DType dt : {DType::F32, DType::BF16}) {
      Tensor xc = wide_values(n, uint64_t(41 + n % 7)).to(dt);
      Tensor xg = xc.to(Device::cuda());
      std::vector<std::pair<Tensor, int64_t>> inputs = {{xg, 0}};
      if (!big) inputs.push_back({xg.slice(0, 5, n), 5});
      for (auto& [in, start] : inputs) {
        const int64_t m = in.numel();
        SCOPED_TRACE(testing::Message() << "n " << n << " start " << start << " " << dtype_name(dt));
        // encode, both overflow modes
        for (bool sat : {false, true}) {
          Tensor cc = Tensor::empty({n}, DType::U8);
          hif8_encode(xc, cc, sat);
          Tensor want = cc.slice(0, start, n).contiguous();
          for (const auto& sh : launch_shapes(false)) {
            SCOPED_TRACE(shape_name(sh) + (sat ? " saturate" : ""));
            Tensor cg = Tensor::empty({m}, DType::U8, Device::cuda());
            cuda::hif8_encode(in, cg, sat, sh);
            test::expect_same_bits(cg, want, "encode");
          }
        }
        // TA round into both output dtypes, and the scaled fake quant
        for (DType to : {DType::F32, DType::BF16}) {
          Tensor rc = Tensor::empty({m}, to), fc = Tensor::empty({m}, to);
          Tensor xin = xc.slice(0, start, n).contiguous();
          hif8_round(xin, rc, true);
          hif8_fake_quant(xin, fc);
          for (const auto& sh : launch_shapes(true)) {
            SCOPED_TRACE(shape_name(sh) + " -> " + dtype_name(to));
            Tensor rg = Tensor::empty({m}, to, Device::cuda());
            cuda::hif8_round(in, rg, true, sh);
            test::expect_same_bits(rg, rc, "round");
            cuda::hif8_fake_quant(in, rg, kHiF8ForwardMax, nullptr, sh);
            test::expect_same_bits(rg, fc, "fake quant");
          }
        }
        // HiF8 → E4M3 quantize (the encode kernel with the composed table, scaled)
        Fp8Tensor qc = hif8_quantize_e4m3(xc.slice(0, start, n).contiguous());
        for (const auto& sh : launch_shapes(false)) {
          SCOPED_TRACE(shape_name(sh));
          Tensor codes = Tensor::empty({m}, DType::F8E4M3, Device::cuda());
          Tensor si = Tensor::empty({1}, DType::F32, Device::cuda());
          cuda::hif8_quantize_e4m3(in, codes, si, kHiF8ForwardMax, sh);
          test::expect_same_bits(codes, qc.codes, "E4M3 quantize");
          EXPECT_EQ(si.to(Device::cpu()).data<float>()[0], qc.scale_inv.data<float>()[0]);
        }
      }
    }
    // decode and E4M3 dequantize: all 256 codes in a shuffled order
    std::vector<uint8_t> codes(size_t(n) + 16);
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = uint8_t((i * 167u + (i >> 8)) & 0xffu);
    Tensor cc = Tensor::empty({int64_t(codes.size())}, DType::U8);
    std::memcpy(cc.raw(), codes.data(), codes.size());
    Tensor cg = cc.to(Device::cuda());
    Tensor cc8 = Tensor::empty(cc.shape(), DType::F8E4M3);  // the same bytes as E4M3 codes
    std::memcpy(cc8.raw(), codes.data(), codes.size());
    Tensor cg8 = cc8.to(Device::cuda());
    Fp8Tensor qc;
    qc.scale_inv = Tensor::from_vector(std::vector<float>{0.375f}, {1});
    Tensor sig = qc.scale_inv.to(Device::cuda());
    for (int64_t start : big ? std::vector<int64_t>{0} : std::vector<int64_t>{0, 5, 16})
      for (DType od : {DType::F32, DType::BF16}) {
        Tensor cs = cc.slice(0, start, start + n).contiguous();
        Tensor want = Tensor::empty({n}, od), want8 = Tensor::empty({n}, od);
        hif8_decode(cs, want);
        qc.codes = cc8.slice(0, start, start + n).contiguous();
        fp8_dequantize(qc, want8);
        for (const auto& sh : launch_shapes(true)) {
          SCOPED_TRACE(testing::Message() << "n " << n << " start " << start << " "
                                          << dtype_name(od) << " " << shape_name(sh));
          Tensor got = Tensor::empty({n}, od, Device::cuda());
          cuda::hif8_decode(cg.slice(0, start, start + n), got, sh);
          test::expect_same_bits(got, want, "decode");
          cuda::fp8_dequantize(cg8.slice(0, start, start + n), sig, got, sh);
          test::expect_same_bits(got, want8, "E4M3 dequantize");
        }
      }
  }
#endif
}

TEST(HiF8Gpu, StreamCopyDiagnosticIsExact) {
  OSP_REQUIRE_GPU();
#ifdef OSP_HAVE_CUDA
  // bench_hif8_gpu's walk-only copy: every walk and grid copies exactly, aligned or not
  for (int64_t n : {int64_t(9), int64_t(70001), (int64_t(1) << 22) + 5}) {
    Tensor xc = wide_values(n, 3);
    Tensor xg = xc.to(Device::cuda());
    std::vector<cuda::StreamShape> shapes = launch_shapes(false);
    for (auto g : {cuda::Grid::kPersistent, cuda::Grid::kFull}) shapes.push_back({g, cuda::Walk::kBulkStore});
    for (const auto& sh : shapes)
      for (int64_t start : {int64_t(0), int64_t(1)}) {
        SCOPED_TRACE(testing::Message() << "n " << n << " start " << start << " " << shape_name(sh));
        Tensor got = Tensor::empty({n - start}, DType::F32, Device::cuda());
        cuda::stream_copy(xg.slice(0, start, n), got, sh);
        test::expect_same_bits(got, xc.slice(0, start, n).contiguous(), "stream copy");
      }
  }
  Tensor a = Tensor::empty({8}, DType::F32, Device::cuda());
  Tensor b = Tensor::empty({8}, DType::BF16, Device::cuda());
  EXPECT_THROW(cuda::stream_copy(a, b, {}), Error);
#endif
}
