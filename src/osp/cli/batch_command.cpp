// `osp generate --prompts FILE` and `osp inspect LORA` (see serve_command.h).
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "osp/cli/serve_command.h"
#include "osp/core/log.h"
#include "osp/io/checkpoint.h"
#include "osp/model/lora.h"
#include "osp/pipeline/batch.h"

namespace fs = std::filesystem;

namespace osp::cli {

int generate_batch(const std::string& model_dir, const pipeline::GenerateOptions& base,
                   const std::string& prompts_file) {
  const pipeline::BatchResult r = pipeline::run_batch(model_dir, base, prompts_file);
  if (r.interrupted) return 130;
  return r.failed ? 1 : 0;
}

bool inspect_lora(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  // A LoRA holds lora_A/lora_B (or lora_down/lora_up) tensors; anything else is shown as a
  // checkpoint.
  bool looks = false;
  try {
    const io::Checkpoint ck = io::open_checkpoint(path);
    for (const auto& n : ck->names())
      if (n.find(".lora_A.") != std::string::npos || n.find(".lora_down.") != std::string::npos) {
        looks = true;
        break;
      }
  } catch (const Error&) {
    return false;
  }
  if (!looks) return false;
  const model::Lora l = model::load_lora(path);  // errors (unsupported tensors) are reported
  std::cout << path << ": LoRA, " << l.summary() << "\n";
  for (const auto& [k, v] : l.metadata) std::cout << "  metadata " << k << ": " << (v.size() > 200 ? v.substr(0, 200) + "..." : v) << "\n";
  return true;
}

}  // namespace osp::cli
