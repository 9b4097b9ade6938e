// Minimal leveled logging to stderr. The CLI sets the level from --quiet / --verbose.
// "No silent fallbacks": code that picks a slower or different path logs it at Info.
#pragma once
#include <string>

#include "osp/core/error.h"

namespace osp {

enum class LogLevel : int { Quiet = 0, Warn = 1, Info = 2, Verbose = 3, Debug = 4 };

void set_log_level(LogLevel l);
LogLevel log_level();
// Writes "[osp] msg" (Info), "[osp] warning: msg" (Warn), "[osp:v] msg" (Verbose/Debug)
// when `l` is enabled. Thread-safe; also used by the progress bar to avoid interleaving.
void log_message(LogLevel l, const std::string& msg);

template <typename... A>
void log_info(const A&... a) {
  if (log_level() >= LogLevel::Info) log_message(LogLevel::Info, str(a...));
}
template <typename... A>
void log_warn(const A&... a) {
  if (log_level() >= LogLevel::Warn) log_message(LogLevel::Warn, str(a...));
}
template <typename... A>
void log_verbose(const A&... a) {
  if (log_level() >= LogLevel::Verbose) log_message(LogLevel::Verbose, str(a...));
}

}  // namespace osp
