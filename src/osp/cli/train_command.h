// `osp train` and `osp encode-dataset` (train_command.cpp), registered on the main CLI app.
#pragma once
#include <CLI/CLI.hpp>

namespace osp::cli {

// Adds the subcommands; each runs from its CLI11 callback and ends the process with its exit
// code (0 done, 1 a clear error, 2 an internal error, 130 Ctrl-C after saving a checkpoint).
void add_train_commands(CLI::App& app);

}  // namespace osp::cli
