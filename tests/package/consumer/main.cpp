// A program outside the osp tree that links the installed library (tests/package): it reads a
// YAML string, builds the Wan2.1-1.3B DiT config, runs one op on tensors and finds the shipped
// tiny model's files — code from io, model, ops and pipeline through libosp.so.
#include <cstdio>

#include "osp/core/tensor.h"
#include "osp/io/yaml.h"
#include "osp/model/dit_config.h"
#include "osp/ops/ops.h"
#include "osp/pipeline/model_dir.h"

int main(int argc, char** argv) {
  const auto j = osp::io::parse_yaml("steps: 3\nlr: 1e-4\n", "inline.yaml");
  const osp::model::DiTConfig c = osp::model::DiTConfig::wan_1_3b();
  const osp::Tensor a = osp::Tensor::from_vector({2, 2, 2, 2}, {4}), b = osp::Tensor::from_vector({3, 3, 3, 3}, {4});
  osp::Tensor y = osp::Tensor::empty({4}, osp::DType::F32);
  osp::ops::axpby(2.0f, a, 1.0f, b, y);  // 2·2 + 3 = 7
  std::printf("yaml steps %d lr %g | %s | axpby %g\n", j["steps"].get<int>(), j["lr"].get<double>(), c.summary().c_str(),
              double(y.to_float_vector()[0]));
  if (argc > 1) {
    const osp::pipeline::ModelFiles f = osp::pipeline::detect_model_dir(argv[1]);
    std::printf("model: dit config %s\n", f.dit_config.empty() ? "missing" : "found");
  }
  return 0;
}
