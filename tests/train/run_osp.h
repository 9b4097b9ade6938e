// Runs the osp executable built next to the test (CMake puts every executable in the build
// folder) through the shell, for the train tests that drive `osp` subcommands.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

namespace osp::test {

struct CmdResult {
  int code = -1;    // exit status (-1: did not exit normally, or could not start)
  std::string out;  // stdout and stderr together
};

inline std::string osp_exe() {
  return (std::filesystem::canonical("/proc/self/exe").parent_path() / "osp").string();
}

// `osp <args> 2>&1` (args as shell words).
inline CmdResult run_osp(const std::string& args) {
  CmdResult r;
  FILE* p = popen((osp_exe() + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace osp::test
