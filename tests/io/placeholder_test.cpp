#include <gtest/gtest.h>

#include "osp/core/tensor.h"

// Replaced by the safetensors / .pth tests; keeps the io test target non-empty meanwhile.
TEST(IoPlaceholder, TensorFromBlobKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3});
  osp::Tensor t = osp::Tensor::from_blob(owner->data(), {3}, osp::DType::F32, osp::Device::cpu(), owner);
  owner.reset();
  EXPECT_EQ(t.item({2}), 3.0);
}
