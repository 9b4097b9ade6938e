// Fuzz target: a YAML config file (io::parse_yaml: indentation, flow collections, quoting,
// escapes); every input parses or throws osp::Error.
#include <string>

#include "fuzz/fuzz_target.h"
#include "osp/io/yaml.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  osp::fuzz::expect_only_osp_errors([&] {
    const auto j = osp::io::parse_yaml(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
    volatile size_t sink = j.dump().size();
    (void)sink;
  });
  return 0;
}
