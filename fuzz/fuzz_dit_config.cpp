// Fuzz target: a DiT config.json (model::DiTConfig::from_json: types, bounds, block layout).
#include <string>

#include "fuzz/fuzz_target.h"
#include "osp/model/dit_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  osp::fuzz::expect_only_osp_errors([&] {
    const auto c = osp::model::DiTConfig::from_json(std::string(reinterpret_cast<const char*>(data), size));
    volatile size_t sink = c.block_kinds().size() + c.summary().size();
    (void)sink;
  });
  return 0;
}
