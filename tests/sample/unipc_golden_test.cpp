// UniPC (Wan2.1 FlowUniPCMultistepScheduler, bh2, order 2) against the reference scheduler run
// with the stand-in model v = tanh(x·A + b·t/1000) (golden_sampler_hif8_skiparse.safetensors).
#include <gtest/gtest.h>

#include <cmath>

#include "osp/io/safetensors.h"
#include "osp/sample/sampler.h"
#include "test_util.h"

using namespace osp;

namespace {

Tensor stand_in(const Tensor& x, const Tensor& A, const Tensor& b, double t) {
  // fp32 like the reference: (x @ A) + b * (t / 1000), then tanh.
  Tensor v = Tensor::empty(x.shape(), DType::F32);
  const float* xp = x.data<float>();
  const float* ap = A.data<float>();
  const float* bp = b.data<float>();
  const float tt = float(t / 1000.0);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 8; ++c) {
      float s = 0;
      for (int k = 0; k < 8; ++k) s += xp[r * 8 + k] * ap[k * 8 + c];
      v.data<float>()[r * 8 + c] = std::tanh(s + bp[c] * tt);
    }
  return v;
}

void run_case(int steps, int shift) {
  const auto f = io::SafetensorsFile::open(test::golden("golden_sampler_hif8_skiparse.safetensors"));
  const std::string p = "unipc_" + std::to_string(steps) + "_" + std::to_string(shift);
  const Tensor A = f.get("unipc.A").contiguous(), b = f.get("unipc.b").contiguous();
  const Tensor ref_sig = f.get(p + ".sigmas"), ref_t = f.get(p + ".timesteps");
  const Tensor traj = f.get(p + ".trajectory");

  sample::UniPCSampler s(steps, double(shift));
  ASSERT_EQ(ref_sig.numel(), steps + 1);
  for (int i = 0; i <= steps; ++i) EXPECT_EQ(s.sigma(i), ref_sig.data<float>()[i]) << p << " sigma " << i;
  for (int i = 0; i < steps; ++i)
    EXPECT_EQ(int64_t(s.timestep(i)), ref_t.data<int64_t>()[i]) << p << " timestep " << i;

  Tensor x = f.get(p + ".x0").clone();
  for (int i = 0; i < steps; ++i) {
    Tensor v = stand_in(x, A, b, s.timestep(i));
    s.step(i, v, x);
    const Tensor ref = traj.select(0, i).contiguous();
    EXPECT_LE(relative_error(x, ref), 1e-6) << p << " after step " << i;
  }
}

}  // namespace

TEST(UniPCGolden, Steps10Shift5) { run_case(10, 5); }
TEST(UniPCGolden, Steps7Shift3) { run_case(7, 3); }
TEST(UniPCGolden, Steps50Shift5) { run_case(50, 5); }
