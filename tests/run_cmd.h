// Runs a command line through the shell and captures what it prints, for the tests that drive
// the `osp` executable (CMake puts it in the build folder next to every test).
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

namespace osp::test {

struct CmdResult {
  int code = -1;    // exit status (-1: did not exit normally, or could not start)
  std::string out;  // stdout (and stderr, merged by default)
};

// `cmd` through /bin/sh; with merge_stderr, `cmd 2>&1` (stdout and stderr together).
inline CmdResult run_shell(const std::string& cmd, bool merge_stderr = true) {
  CmdResult r;
  FILE* p = popen((merge_stderr ? cmd + " 2>&1" : cmd).c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// The osp executable next to the running test.
inline std::string osp_exe() {
  return (std::filesystem::canonical("/proc/self/exe").parent_path() / "osp").string();
}

// `osp <args> 2>&1` (args as shell words).
inline CmdResult run_osp(const std::string& args) { return run_shell(osp_exe() + " " + args); }

}  // namespace osp::test
