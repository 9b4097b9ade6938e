// The `osp` executable: argument errors are reported clearly BEFORE any work (exit code 1 and
// a message naming the rule), `inspect` shows the DiT block layout of a checkpoint, and
// `mpirun -np 2 osp generate --cfg-parallel` gives the frames of one rank.
#include <gtest/gtest.h>

#include <regex>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "osp/parallel/communicator.h"
#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "test_util.h"
#include "run_cmd.h"

namespace fs = std::filesystem;

namespace {
using osp::test::CmdResult;
using osp::test::run_shell;
CmdResult run(const std::string& args) { return run_shell(std::string(OSP_CLI_PATH) + " " + args); }
std::string tmp(const std::string& n) { return (fs::temp_directory_path() / n).string(); }
}  // namespace

TEST(Cli, HelpAndUnknownCommand) {
  EXPECT_EQ(run("--help").code, 0);
  EXPECT_NE(run("frobnicate").code, 0);
  const CmdResult r = run("generate --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--sampler"), std::string::npos);
}

// `osp --version` names what this build can do; scripts/demo.sh picks MP4 or PNG frames by it.
TEST(Cli, VersionSaysWhatThisBuildCanDo) {
  const CmdResult r = run("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(std::regex_search(r.out, std::regex("^osp [0-9]+\\.[0-9]+\\.[0-9]+ \\(CUDA "))) << r.out;  // the project version
  const std::string mp4 = std::string("MP4 output (FFmpeg) ") + (osp::io::video_writer_available() ? "on" : "off");
  EXPECT_NE(r.out.find(mp4), std::string::npos) << r.out;
#ifdef OSP_HAVE_HTTPLIB
  EXPECT_NE(r.out.find("osp serve (cpp-httplib) on"), std::string::npos) << r.out;
#else
  EXPECT_NE(r.out.find("osp serve (cpp-httplib) off"), std::string::npos) << r.out;
#endif
#ifdef OSP_HAVE_CUDA
  EXPECT_NE(r.out.find("CUDA on"), std::string::npos) << r.out;
#else
  EXPECT_NE(r.out.find("CUDA off"), std::string::npos) << r.out;
#endif
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

// CFG parallelism end to end through the executable: the shipped tiny model at 64x64x9 (its
// osp_generate.json: 30 UniPC steps, guidance 5) on the CFG pair (mpirun -np 2, cond on rank 0,
// uncond on rank 1) writes the PNG frames of the one-rank run, up to one level of 255 (the DiT's
// B = 1 forwards round a few last bits differently from the batch-2 one: cfg_parallel_mpi_test).
// On one rank the flag is refused before any work.
TEST(Cli, CfgParallelPairWritesTheFramesOfOneRank) {
  const std::string model = std::string(OSP_SOURCE_DIR) + "/models/osp-next-tiny";
  if (!fs::exists(model + "/diffusion_pytorch_model.safetensors")) GTEST_SKIP() << "SKIP: no " << model;
  const std::string args = "--quiet generate --model " + model + " --prompt 'a red circle moves left on a blue background' "
                           "--seed 11 --overwrite";
  const CmdResult one_rank = run(args + " --cfg-parallel --out " + tmp("osp_cfgp_refused/"));
  EXPECT_EQ(one_rank.code, 1) << one_rank.out;
  EXPECT_NE(one_rank.out.find("--cfg-parallel needs an even number of ranks"), std::string::npos) << one_rank.out;
  EXPECT_NE(one_rank.out.find("mpirun -np 2"), std::string::npos) << one_rank.out;
  if (!osp::parallel::mpi_built()) GTEST_SKIP() << "SKIP: this build has no MPI";
  CmdResult which = run_shell("command -v mpirun || command -v mpiexec");
  while (!which.out.empty() && std::isspace(static_cast<unsigned char>(which.out.back()))) which.out.pop_back();
  if (which.code != 0 || which.out.empty()) GTEST_SKIP() << "SKIP: no mpirun on PATH";

  const std::string d1 = tmp("osp_cfgp_one/"), d2 = tmp("osp_cfgp_pair/");
  const CmdResult r1 = run(args + " --out " + d1);
  ASSERT_EQ(r1.code, 0) << r1.out;
  const CmdResult r2 = run_shell(which.out + " --oversubscribe --allow-run-as-root -np 2 -x OMP_NUM_THREADS=1 " +
                                 std::string(OSP_CLI_PATH) + " " + args + " --cfg-parallel --out " + d2);
  ASSERT_EQ(r2.code, 0) << r2.out;
  int frames = 0;
  int64_t differ = 0, worst = 0;
  for (;; ++frames) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%04d.png", frames);
    if (!fs::exists(fs::path(d1) / name)) break;
    const osp::Tensor a = osp::io::read_png((fs::path(d1) / name).string());
    const osp::Tensor b = osp::io::read_png((fs::path(d2) / name).string());
    ASSERT_EQ(a.shape(), b.shape()) << name;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const int64_t dv = std::abs(int64_t(a.data<uint8_t>()[i]) - int64_t(b.data<uint8_t>()[i]));
      differ += dv != 0;
      worst = std::max(worst, dv);
    }
  }
  EXPECT_EQ(frames, 9);
  EXPECT_LE(worst, 1) << differ << " values differ";
  std::printf("cfg-parallel pair vs one rank: %lld RGB values of the %d frames differ, by at most %lld\n",
              (long long)differ, frames, (long long)worst);
  fs::remove_all(d1);
  fs::remove_all(d2);
  fs::remove_all(tmp("osp_cfgp_refused/"));
}

// A bad OSP_* override (core/settings.h) stops the command at once with the variable named,
// whatever the command would have used.
TEST(Cli, BadEnvironmentOverrideIsAnErrorAtStartup) {
  const CmdResult r = run_shell("OSP_CONV3D=winograd " + std::string(OSP_CLI_PATH) + " inspect " +
                                std::string(OSP_SOURCE_DIR) + "/models/osp-next-tiny");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("osp: error: OSP_CONV3D must be im2col or cudnn, got 'winograd'"), std::string::npos) << r.out;
}
