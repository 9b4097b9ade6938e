#include "osp/cli/run_command.h"

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/parallel/communicator.h"

namespace osp::cli {

void run_command(CLI::App& sub, const std::function<int()>& body, const char* if_interrupted) {
  const CLI::App* root = &sub;
  while (root->get_parent()) root = root->get_parent();
  const CLI::Option* quiet = root->get_option_no_throw("--quiet");
  const CLI::Option* verbose = root->get_option_no_throw("--verbose");
  if (quiet && quiet->count() > 0) set_log_level(LogLevel::Warn);
  if (verbose && verbose->count() > 0) set_log_level(LogLevel::Verbose);
  int rc = 0;
  try {
    rc = body();
  } catch (const std::exception&) {
    rc = report_exception(if_interrupted);
  }
  std::fflush(stdout);
  std::fflush(stderr);
  if (rc != 0 && rc != 130 && parallel::launcher_size() > 1) parallel::abort_all(rc);
  std::exit(rc);
}

int report_exception(const char* if_interrupted) {
  try {
    throw;
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "osp: %s; %s\n", e.what(), if_interrupted);
    return 130;
  } catch (const Error& e) {
    std::fprintf(stderr, "osp: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "osp: internal error: %s\n", e.what());
    return 2;
  }
}

}  // namespace osp::cli
