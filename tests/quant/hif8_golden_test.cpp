// Golden parity with the HiFloat8 numpy reference (To_HiF8): hif8.input → hif8.output,
// bitwise, through the scalar codec and the tensor path (f32 and the encode→decode route).
// osp_quant does not link osp_io, so the two tensors are read with a small safetensors
// reader here (header JSON → data_offsets).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "osp/quant/hif8.h"
#include "test_util.h"

using namespace osp;

namespace {

std::vector<float> read_f32(const std::string& path, const std::string& name) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open golden file " + path);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), std::streamsize(n));
  auto j = nlohmann::json::parse(header);
  auto e = j.at(name);
  if (e.at("dtype") != "F32") throw Error(name + " is not F32");
  uint64_t b = e.at("data_offsets")[0], end = e.at("data_offsets")[1];
  std::vector<float> v((end - b) / 4);
  f.seekg(std::streamoff(8 + n + b));
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(end - b));
  if (!f) throw Error("short read of " + name);
  return v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace

TEST(HiF8Golden, InputToOutputBitwise) {
  const std::string file = test::golden("golden_sampler_hif8_skiparse.safetensors");
  std::vector<float> in = read_f32(file, "hif8.input");
  std::vector<float> out = read_f32(file, "hif8.output");
  ASSERT_EQ(in.size(), out.size());
  ASSERT_GT(in.size(), 1000u);

  // scalar path
  size_t mismatches = 0, specials = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    float r = quant::hif8_round(in[i]);
    bool same = bits(r) == bits(out[i]) || (std::isnan(r) && std::isnan(out[i]));
    if (!same && ++mismatches <= 10)
      ADD_FAILURE() << "element " << i << ": input " << in[i] << " → " << r << ", golden "
                    << out[i];
    if (!std::isfinite(out[i]) || out[i] == 0) ++specials;
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(specials, 0u) << "the golden set is expected to cover Inf/zero cases";

  // tensor path: hif8_round and encode → decode agree with the golden output too
  Tensor x = Tensor::from_vector(in, {int64_t(in.size())});
  Tensor y = Tensor::empty(x.shape(), DType::F32);
  quant::hif8_round(x, y);
  Tensor y2 = quant::hif8_decode(quant::hif8_encode(x));
  for (size_t i = 0; i < in.size(); ++i) {
    float a = y.data<float>()[i], b = y2.data<float>()[i];
    if (std::isnan(out[i])) {
      EXPECT_TRUE(std::isnan(a) && std::isnan(b)) << i;
    } else {
      ASSERT_EQ(bits(a), bits(out[i])) << "hif8_round tensor, element " << i;
      ASSERT_EQ(bits(b), bits(out[i])) << "encode/decode tensor, element " << i;
    }
  }
}
