// The DiT of a model folder for the training commands (`osp train`, `osp rl`).
#pragma once
#include <map>
#include <string>

#include "osp/core/tensor.h"
#include "osp/model/dit_config.h"
#include "osp/pipeline/model_dir.h"

namespace osp::cli {

// Reads the DiT weights of `f` (HiF8 8-bit DiTs are dequantized to BF16, names mapped to the
// original Wan layout) and its config (the folder's config file, else inferred from the shapes).
// Each tensor is checked for NaN/Inf; Ctrl-C throws osp::Interrupted("model loading") between
// tensors; a progress bar on a terminal at Info level.
void load_dit_weights(const pipeline::ModelFiles& f, model::DiTConfig& cfg, std::map<std::string, Tensor>& weights);

}  // namespace osp::cli
