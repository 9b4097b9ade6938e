#include "osp/core/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace osp {
namespace {
std::atomic<int> g_level{int(LogLevel::Info)};
std::mutex g_mu;
}  // namespace

void set_log_level(LogLevel l) { g_level = int(l); }
LogLevel log_level() { return LogLevel(g_level.load()); }

void log_message(LogLevel l, const std::string& msg) {
  if (int(l) > g_level.load()) return;
  std::lock_guard<std::mutex> lk(g_mu);
  const char* prefix = l == LogLevel::Warn ? "[osp] warning: "
                       : l >= LogLevel::Verbose ? "[osp:v] "
                                                : "[osp] ";
  std::fprintf(stderr, "%s%s\n", prefix, msg.c_str());
  std::fflush(stderr);
}

}  // namespace osp
