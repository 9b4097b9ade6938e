// The user-facing commands around the loaded pipeline (issue 18): `osp serve` (HTTP API + web
// page, cli/serve_command.cpp), `osp generate --prompts FILE` (batches) and `osp inspect` of a
// LoRA file (cli/batch_command.cpp).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "osp/pipeline/pipeline.h"

namespace osp::cli {

// `osp serve` (the one line main.cpp calls).
void add_serve_command(CLI::App& app);

// `osp generate --prompts FILE`: returns the exit code (0 all written, 1 any failed, 130 Ctrl-C).
int generate_batch(const std::string& model_dir, const pipeline::GenerateOptions& base,
                   const std::string& prompts_file);

// `osp inspect FILE` for a LoRA file: prints its summary and returns true; false when the file
// is not a LoRA (inspect then shows it as a checkpoint).
bool inspect_lora(const std::string& path);

}  // namespace osp::cli
