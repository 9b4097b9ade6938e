// What `osp generate` uses when the command line leaves it out:
//  * the model: without -m/--model, models/osp-next-tiny (the model osp trained itself, issue 16),
//    looked up under the working directory, then beside the osp binary (../ and ../../ of it);
//  * the model folder's own generation settings: an optional `osp_generate.json` in the folder,
//    {"size": "64x64", "frames": 9, "steps": 30, "guidance": 5, "sampler": "unipc", "shift": 5,
//     "fps": 8} (every key optional), applied to each flag the command line did not give.
//    Unknown keys and wrong types are errors naming the file.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "osp/pipeline/pipeline.h"

namespace osp::cli {

inline constexpr const char* kDefaultModel = "models/osp-next-tiny";

// The model folder to use: `given` when not empty, else the default model's folder (or an
// osp::Error saying where it was looked for).
std::string resolve_generate_model(const std::string& given);

// Applies MODEL_DIR/osp_generate.json (when present) to `size` and `g` for every flag that `gen`
// did not receive; returns a one-line summary of what it applied ("" when nothing).
std::string apply_generate_defaults(const CLI::App& gen, const std::string& model_dir, std::string& size,
                                    pipeline::GenerateOptions& g);

}  // namespace osp::cli
