// Fuzz target: a sharded checkpoint's model.safetensors.index.json (io::ShardedSafetensors),
// next to two small valid shards the target writes once into a private temporary folder.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "fuzz/fuzz_target.h"
#include "osp/io/safetensors.h"
#include "osp/io/safetensors_index.h"

namespace {
std::string folder() {
  static const std::string dir = [] {
    const auto d = std::filesystem::temp_directory_path() / ("osp_fuzz_index_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    osp::io::save_safetensors((d / "model-00001-of-00002.safetensors").string(),
                              {{"a", osp::Tensor::from_vector({1, 2}, {2})}, {"b", osp::Tensor::from_vector({3}, {1})}});
    osp::io::save_safetensors((d / "model-00002-of-00002.safetensors").string(),
                              {{"c", osp::Tensor::from_vector({4, 5, 6}, {3})}});
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                      ("osp_fuzz_index_" + std::to_string(::getpid())),
                                  ec);
    });
    return d.string();
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string index = folder() + "/model.safetensors.index.json";
  {
    std::ofstream f(index, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  }
  osp::fuzz::expect_only_osp_errors([&] {
    const auto s = osp::io::ShardedSafetensors::open(index);
    volatile uint64_t sink = 0;
    for (const auto& n : s.names()) sink = sink + osp::fuzz::touch(s.get(n));
    for (const auto& [k, v] : s.metadata()) sink = sink + k.size() + v.size();
  });
  return 0;
}
