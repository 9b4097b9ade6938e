// Shared helpers for tests: where the golden vectors are, and tolerance helpers.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "osp/core/device.h"
#include "osp/core/tensor.h"

namespace osp::test {

// ../shared/golden beside the repository (CI and sessions), or OSP_GOLDEN_DIR, or
// shared/golden inside the repository (the GPU machine's copy).
inline std::string golden_dir() {
  if (const char* e = std::getenv("OSP_GOLDEN_DIR")) return e;
  namespace fs = std::filesystem;
  fs::path src(OSP_SOURCE_DIR);
  for (auto p : {src / ".." / "shared" / "golden", src / "shared" / "golden"})
    if (fs::exists(p / "README.md") || fs::exists(p / "golden_dit.safetensors")) return p.string();
  return (src / ".." / "shared" / "golden").string();
}
inline std::string golden(const std::string& name) { return golden_dir() + "/" + name; }

// Skips a GPU test visibly where no GPU is present.
#define OSP_REQUIRE_GPU()                                                   \
  do {                                                                      \
    if (!::osp::cuda_available()) GTEST_SKIP() << "SKIP: no CUDA GPU here"; \
  } while (0)

}  // namespace osp::test
