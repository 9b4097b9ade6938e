#include <gtest/gtest.h>

#include <cmath>

#include "osp/core/tensor.h"
#include "test_util.h"

using namespace osp;

TEST(Tensor, CreateViewSliceTranspose) {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = float(i);
  Tensor t = Tensor::from_vector(v, {4, 6});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_TRUE(t.is_contiguous());
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.item({5, 3}), 23.0);
  Tensor c = tt.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.item({1, 2}), 13.0);
  Tensor s = t.slice(0, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 6}));
  EXPECT_EQ(s.item({0, 0}), 6.0);
  EXPECT_EQ(t.view({2, -1}).shape(), (Shape{2, 12}));
  EXPECT_THROW(t.view({5, 5}), Error);
  EXPECT_THROW(t.slice(0, 3, 5), Error);
}

TEST(Tensor, DtypeConversionRoundTrips) {
  Tensor t = Tensor::from_vector({1.0f, -2.5f, 3.140625f, 65504.0f}, {4});
  Tensor b = t.to(DType::BF16).to(DType::F32);
  EXPECT_EQ(b.item({1}), -2.5);
  EXPECT_EQ(b.item({2}), 3.140625);
  Tensor h = t.to(DType::F16).to(DType::F32);
  EXPECT_EQ(h.item({3}), 65504.0);
  EXPECT_EQ(round_bf16(1.00390625f), 1.0f);  // tie rounds to even
  EXPECT_THROW(dtype_from_name("Q4_K"), Error);
}

TEST(Tensor, RelativeError) {
  Tensor a = Tensor::from_vector({1, 2, 3}, {3});
  Tensor b = Tensor::from_vector({1, 2, 3.3f}, {3});
  EXPECT_NEAR(relative_error(b, a), 0.3 / std::sqrt(14.0), 1e-6);
}
