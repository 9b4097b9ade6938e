#include "osp/core/log.h"

#include "osp/core/error.h"
#include "osp/core/settings.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace osp {
namespace {
constexpr int kUnset = -1;
std::atomic<int> g_level{kUnset};  // until set: Info, or Verbose with OSP_VERBOSE=1
std::mutex g_mu;

int level() {
  int l = g_level.load();
  if (l != kUnset) return l;
  bool verbose = false;
  try {
    verbose = engine_settings().verbose;
  } catch (const Error&) {  // another OSP_* variable is bad: said where it is used (and by the CLI)
  }
  l = int(verbose ? LogLevel::Verbose : LogLevel::Info);
  int unset = kUnset;
  g_level.compare_exchange_strong(unset, l);
  return g_level.load();
}
}  // namespace

void set_log_level(LogLevel l) { g_level = int(l); }
LogLevel log_level() { return LogLevel(level()); }

void log_message(LogLevel l, const std::string& msg) {
  if (int(l) > level()) return;
  std::lock_guard<std::mutex> lk(g_mu);
  const char* prefix = l == LogLevel::Warn ? "[osp] warning: "
                       : l >= LogLevel::Verbose ? "[osp:v] "
                                                : "[osp] ";
  std::fprintf(stderr, "%s%s\n", prefix, msg.c_str());
  std::fflush(stderr);
}

}  // namespace osp
