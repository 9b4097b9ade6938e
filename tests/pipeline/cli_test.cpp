// The `osp` executable: argument errors are reported clearly BEFORE any work (exit code 1 and
// a message naming the rule), `inspect` shows the DiT block layout of a checkpoint.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {
struct CmdResult {
  int code = -1;
  std::string out;
};
CmdResult run(const std::string& args) {
  const std::string cmd = std::string(OSP_CLI_PATH) + " " + args + " 2>&1";
  CmdResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}
std::string tmp(const std::string& n) { return (fs::temp_directory_path() / n).string(); }
}  // namespace

TEST(Cli, HelpAndUnknownCommand) {
  EXPECT_EQ(run("--help").code, 0);
  EXPECT_NE(run("frobnicate").code, 0);
  const CmdResult r = run("generate --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--sampler"), std::string::npos);
}

TEST(Cli, GenerateRejectsBadArgumentsBeforeWork) {
  const std::string base = "generate --model /nonexistent-osp-model --out " + tmp("osp_cli.mp4");
  CmdResult r = run(base + " --prompt '' ");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("prompt is empty"), std::string::npos) << r.out;
  r = run(base + " --prompt fox --size 1000x720");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("multiple of 16"), std::string::npos) << r.out;
  r = run(base + " --prompt fox --frames 80");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("4n+1"), std::string::npos) << r.out;
  r = run(base + " --prompt fox");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("does not exist"), std::string::npos) << r.out;
  r = run(base + " --prompt fox --size 12x");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("WIDTHxHEIGHT"), std::string::npos) << r.out;
}

TEST(Cli, InspectShowsDiTLayout) {
  const CmdResult r = run("inspect " + osp::test::golden("golden_dit.safetensors"));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("249 tensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("detected a Wan DiT checkpoint"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("block layout (8 blocks)"), std::string::npos) << r.out;
  const CmdResult m = run("inspect " + osp::test::golden("no_such_file.safetensors"));
  EXPECT_EQ(m.code, 1);
}
