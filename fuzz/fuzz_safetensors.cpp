// Fuzz target: the safetensors header and data offsets (io::SafetensorsFile::parse), then every
// tensor view is read completely.
#include "fuzz/fuzz_target.h"
#include "osp/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  osp::fuzz::expect_only_osp_errors([&] {
    const auto f = osp::io::SafetensorsFile::parse(
        osp::io::bytes_from_vector(std::vector<uint8_t>(data, data + size), "fuzz.safetensors"));
    volatile uint64_t sink = 0;
    for (const auto& name : f.names()) sink = sink + osp::fuzz::touch(f.get(name));
    for (const auto& [k, v] : f.metadata()) sink = sink + k.size() + v.size();
  });
  return 0;
}
