// The golden DiT file (golden_dit.safetensors) shared by the DiT tests: its config, its weights
// ("weights.<wan name>") and the per-case tensors, opened once per test process.
#pragma once
#include <map>
#include <string>

#include "osp/io/safetensors.h"
#include "osp/model/dit_config.h"
#include "test_util.h"

namespace osp::test {

struct GoldenDiT {
  io::SafetensorsFile file;
  model::DiTConfig cfg;
  std::map<std::string, Tensor> weights;  // "weights.<wan name>"
};

inline const GoldenDiT& golden_dit() {
  static GoldenDiT* g = [] {
    auto* r = new GoldenDiT;
    r->file = io::SafetensorsFile::open(golden("golden_dit.safetensors"));
    r->cfg = model::DiTConfig::from_json(r->file.metadata().at("config"));
    for (const auto& name : r->file.names())
      if (name.rfind("weights.", 0) == 0) r->weights[name] = r->file.get(name);
    return r;
  }();
  return *g;
}

}  // namespace osp::test
