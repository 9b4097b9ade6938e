// Random bf16 host weights for model::DiT::bind at a config's real shapes, shared by the DiT
// benchmarks (bench/dit_multi_gpu.cpp, bench/pipeline_gpu.cpp). Every weight is a view of the
// first numel values of one shared buffer (timing does not depend on the values; host memory
// stays at one tensor of the largest weight's size instead of the model's parameters); bind
// copies each to the device, so device memory is that of the real model.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "osp/core/dtype.h"
#include "osp/core/tensor.h"
#include "osp/model/dit.h"

namespace osp::bench {

inline std::map<std::string, Tensor> random_dit_weights(const model::DiTConfig& cfg) {
  const auto shapes = model::DiT::expected_shapes(cfg);
  int64_t maxn = 0;
  for (const auto& [n, s] : shapes) maxn = std::max(maxn, shape_numel(s));
  auto buf = std::shared_ptr<uint16_t[]>(new uint16_t[size_t(maxn)]);
  std::mt19937 g(1234);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<uint16_t> period(1 << 16);
  for (auto& v : period) v = f32_to_bf16(nd(g));
  for (int64_t i = 0; i < maxn; ++i) buf[size_t(i)] = period[size_t((i * 2654435761u) >> 16) & 0xffff];
  std::map<std::string, Tensor> w;
  for (const auto& [n, s] : shapes) w[n] = Tensor::from_blob(buf.get(), s, DType::BF16, Device::cpu(), buf);
  return w;
}

}  // namespace osp::bench
