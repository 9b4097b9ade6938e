#include "osp/cli/dit_weights.h"

#include "osp/core/log.h"
#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/model/hif8_checkpoint.h"
#include "osp/pipeline/load_progress.h"

namespace osp::cli {

void load_dit_weights(const pipeline::ModelFiles& f, model::DiTConfig& cfg, std::map<std::string, Tensor>& weights) {
  io::Checkpoint ck = io::open_checkpoint(f.dit);
  if (model::is_hif8_checkpoint(*ck)) {
    log_info("DiT weights are HiF8 (8-bit); dequantizing on load");
    ck = model::hif8_dequantized(ck, DType::BF16);
  }
  ck = io::dit_with_original_names(ck);
  if (!f.dit_config.empty()) {
    cfg = model::DiTConfig::from_json_file(f.dit_config);
  } else {
    std::map<std::string, Shape> shapes;
    for (const auto& n : ck->names()) shapes[n] = ck->info(n).shape;
    cfg = model::DiTConfig::infer(shapes);
  }
  // As the pipeline loads: a Ctrl-C safe point ("model loading") and a NaN/Inf check per tensor.
  const std::vector<std::string> names = ck->names();
  pipeline::LoadProgress load("DiT", int(names.size()), log_level() >= LogLevel::Info);
  for (const auto& n : names) weights[n] = load.get(ck, n);
  load.finish();
}

}  // namespace osp::cli
