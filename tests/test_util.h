// Shared helpers for tests: where the golden vectors are, and tolerance helpers.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "osp/core/device.h"
#include "osp/core/error.h"
#include "osp/core/tensor.h"

namespace osp::test {

// Where the golden vectors are: OSP_GOLDEN_DIR when set, else the copy CMake unpacked from
// tests/data/golden into the build folder (the repository is self-contained; ../shared/golden
// is only the source that scripts/update-test-data.sh packs from).
inline std::string golden_dir() {
  if (const char* e = std::getenv("OSP_GOLDEN_DIR"); e && *e) return e;
  return OSP_GOLDEN_BUILD_DIR;
}
inline std::string golden(const std::string& name) { return golden_dir() + "/" + name; }

// The message of the osp::Error that f throws ("" when it throws none): for tests that check
// what a bad input is told.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Skips a GPU test visibly where no GPU is present.
#define OSP_REQUIRE_GPU()                                                   \
  do {                                                                      \
    if (!::osp::cuda_available()) GTEST_SKIP() << "SKIP: no CUDA GPU here"; \
  } while (0)

// `got` (any device) holds the same bits as `want` (CPU) element by element, except that two
// NaNs match whatever their payloads; the first differing elements are reported.
inline void expect_same_bits(const Tensor& got, const Tensor& want, const char* what) {
  Tensor g = got.to(Device::cpu());
  ASSERT_EQ(g.numel(), want.numel()) << what;
  ASSERT_EQ(g.dtype(), want.dtype()) << what;
  const size_t es = dtype_size(want.dtype());
  const uint8_t* a = static_cast<const uint8_t*>(g.raw());
  const uint8_t* b = static_cast<const uint8_t*>(want.raw());
  auto both_nan = [&](size_t i) {
    if (want.dtype() == DType::F32) {
      float x, y;
      std::memcpy(&x, a + i, 4);
      std::memcpy(&y, b + i, 4);
      return std::isnan(x) && std::isnan(y);
    }
    if (want.dtype() == DType::BF16) {
      uint16_t x, y;
      std::memcpy(&x, a + i, 2);
      std::memcpy(&y, b + i, 2);
      return std::isnan(bf16_to_f32(x)) && std::isnan(bf16_to_f32(y));
    }
    return false;
  };
  int shown = 0;
  for (size_t i = 0; i < want.nbytes(); i += es)
    if (std::memcmp(a + i, b + i, es) != 0 && !both_nan(i)) {
      ADD_FAILURE() << what << ": element " << i / es << " differs";
      if (++shown > 10) return;
    }
}

}  // namespace osp::test
