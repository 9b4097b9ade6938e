// The shipped tiny model (models/osp-next-tiny in this checkout) and the small generation the
// pipeline tests run with it: 64x64, 9 frames, guidance 5, no output file; each test picks the
// steps and the seed (and sets anything else it varies).
#pragma once
#include <cstdint>
#include <string>

#include "osp/pipeline/pipeline.h"

namespace osp::test {

inline std::string tiny_model_dir() { return std::string(OSP_SOURCE_DIR) + "/models/osp-next-tiny"; }

inline pipeline::GenerateOptions tiny_generate_options(int steps, int64_t seed) {
  pipeline::GenerateOptions o;
  o.prompt = "a red circle moves left on a blue background";
  o.width = 64;
  o.height = 64;
  o.frames = 9;
  o.steps = steps;
  o.guidance = 5;
  o.seed = seed;
  o.no_output = true;
  return o;
}

}  // namespace osp::test
