// The synthetic-data commands of `osp` (issue 16): make-dataset and eval. Each adds itself to the
// app and runs from its CLI11 callback at the end of parsing; an osp::Error prints
// "osp: error: ..." and ends the process with exit code 1, Ctrl-C (osp::Interrupted) with 130,
// any other exception with 2; success returns to main (exit 0).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace osp::cli {

// Both commands below (the one line main.cpp calls).
void add_data_commands(CLI::App& app);
void add_make_dataset_command(CLI::App& app);
void add_eval_command(CLI::App& app);

// Runs `body` with the exit-code convention above; applies the app's -q/-v flags first.
void run_command(CLI::App& app, const std::function<void()>& body);

}  // namespace osp::cli
