// How every `osp` subcommand that runs from its CLI11 callback ends: one exit-code convention.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace osp::cli {

// Applies the root app's -q / -v flags, runs `body` and ends the process with its exit code:
// body's return value (0 done; train and rl return 130 after saving a checkpoint on Ctrl-C);
// osp::Interrupted (a Ctrl-C safe point fired outside the command's own handling: model loading,
// text encoding, writing) prints "osp: interrupted (Ctrl-C) during <stage>; <if_interrupted>" and
// gives 130; osp::Error prints "osp: error: ..." and gives 1; any other exception "osp: internal
// error: ..." and 2. Under mpirun a rank that fails (not 0, not 130) ends every rank
// (parallel::abort_all): the others may wait in a collective for it. Never returns.
[[noreturn]] void run_command(CLI::App& sub, const std::function<int()>& body,
                              const char* if_interrupted = "nothing written");

// Inside a catch block: prints the exception being handled as above and returns its exit code
// (osp::Interrupted 130, osp::Error 1, any other std::exception 2). What run_command and main's
// own commands (generate, convert, inspect, ...) both use.
int report_exception(const char* if_interrupted = "nothing written");

}  // namespace osp::cli
