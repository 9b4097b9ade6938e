// The synthetic-data commands of `osp` (issue 16): make-dataset and eval. Each adds itself to the
// app and runs from its CLI11 callback at the end of parsing, ending the process with
// cli/run_command.h's exit codes.
#pragma once
#include <CLI/CLI.hpp>

namespace osp::cli {

// Both commands below (the one line main.cpp calls).
void add_data_commands(CLI::App& app);
void add_make_dataset_command(CLI::App& app);
void add_eval_command(CLI::App& app);

}  // namespace osp::cli
