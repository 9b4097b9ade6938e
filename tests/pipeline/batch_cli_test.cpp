// `osp generate --prompts FILE` as a user runs it (a child process on the demo model): plain and
// JSON lines, predictable output names, a failing line reported and skipped without losing the
// others, a summary, exit code 1 when any line failed (0 when none did), and the same frames as
// separate `osp generate` runs with the same settings. Also the CLI wiring of --lora and `osp inspect LORA`.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "osp/io/image_writer.h"
#include "osp/model/dit.h"
#include "osp/model/dit_config.h"
#include "osp/model/lora.h"
#include "osp/pipeline/demo_model.h"
#include "run_cmd.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {
using test::CmdResult;
CmdResult run(const std::string& args) {
  return test::run_shell("OMP_NUM_THREADS=1 " + std::string(OSP_CLI_PATH) + " " + args);
}
std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST(BatchCli, LinesRunSkipFailuresAndMatchSingleRuns) {
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const fs::path root = fs::temp_directory_path() / ("osp_batch_cli_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  pipeline::make_demo_model((root / "model").string());
  const std::string model = (root / "model").string();
  {
    std::ofstream f(root / "prompts.txt");
    f << "a red fox in the snow\n"
         "\n"
         "# a comment\n"
         "{\"prompt\": \"a blue bird\", \"seed\": 3, \"guidance\": 1}\n"
         "{\"prompt\": \"four frames\", \"frames\": 4}\n"
         "{\"prompt\": \"x\", \"bogus\": 1}\n"
         "{\"prompt\": \"broken json\"\n"
         "{\"prompt\": \"named\", \"out\": \"named/\"}\n";
  }
  // PNG frames (the builds without FFmpeg too): the folder is made for the batch.
  const std::string common = " --size 32x32 --frames 1 --steps 2 --seed 5 ";
  const CmdResult r = run("generate -m " + model + " --prompts " + (root / "prompts.txt").string() + common +
                          "-o " + (root / "out").string() + "/");
  EXPECT_EQ(r.code, 1) << r.out;  // some lines failed
  EXPECT_TRUE(has(r.out, "line 5 FAILED: --frames must be 4n+1")) << r.out;
  EXPECT_TRUE(has(r.out, "line 6 FAILED: unknown field 'bogus'")) << r.out;
  EXPECT_TRUE(has(r.out, "line 7 FAILED: line 7 is not valid JSON")) << r.out;
  EXPECT_TRUE(has(r.out, "batch: 3 of 6 written, 3 failed (lines 5, 6, 7)")) << r.out;
  const bool mp4 = has(r.out, "0001-a-red-fox-in-the-snow.mp4");
  const std::string ext = mp4 ? ".mp4" : "";
  EXPECT_TRUE(fs::exists(root / "out" / ("0001-a-red-fox-in-the-snow" + ext))) << r.out;
  EXPECT_TRUE(fs::exists(root / "out" / ("0004-a-blue-bird" + ext))) << r.out;
  EXPECT_TRUE(fs::exists(root / "out" / "named" / "frame_0000.png")) << r.out;
  EXPECT_FALSE(fs::exists(root / "out" / ("0005-four-frames" + ext)));

  // Line 8 equals a single `osp generate` with the same settings (seed 5 from the command line).
  const CmdResult one = run("generate -m " + model + " -p named" + common + "-o " + (root / "one").string() + "/");
  ASSERT_EQ(one.code, 0) << one.out;
  const std::string a = read_file(root / "out" / "named" / "frame_0000.png");
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == read_file(root / "one" / "frame_0000.png"));

  // All lines good: exit 0. Existing outputs are refused (and reported) without --overwrite.
  {
    std::ofstream f(root / "good.txt");
    f << "{\"prompt\": \"named\", \"out\": \"named/\"}\n";
  }
  CmdResult g = run("generate -m " + model + " --prompts " + (root / "good.txt").string() + common + "-o " +
                    (root / "out").string() + "/");
  EXPECT_EQ(g.code, 1) << g.out;
  EXPECT_TRUE(has(g.out, "line 1 FAILED")) << g.out;
  g = run("generate -m " + model + " --prompts " + (root / "good.txt").string() + common + "--overwrite -o " +
          (root / "out").string() + "/");
  EXPECT_EQ(g.code, 0) << g.out;
  EXPECT_TRUE(has(g.out, "batch: 1 of 1 written, 0 failed")) << g.out;

  // A batch needs a folder for --out, and a file that holds prompts.
  g = run("generate -m " + model + " --prompts " + (root / "good.txt").string() + " -o " + (root / "x.mp4").string());
  EXPECT_EQ(g.code, 1);
  EXPECT_TRUE(has(g.out, "give --out DIR/")) << g.out;
  g = run("generate -m " + model + " -p also --prompts " + (root / "good.txt").string() + " -o " + (root / "o3").string() + "/");
  EXPECT_EQ(g.code, 1);
  EXPECT_TRUE(has(g.out, "--prompt and --prompts contradict")) << g.out;
  { std::ofstream f(root / "empty.txt"); f << "\n# nothing\n"; }
  g = run("generate -m " + model + " --prompts " + (root / "empty.txt").string() + " -o " + (root / "o2").string() + "/");
  EXPECT_EQ(g.code, 1);
  EXPECT_TRUE(has(g.out, "holds no prompt")) << g.out;
  fs::remove_all(root);
}

// The CLI wiring of LoRAs: `osp generate --lora FILE[:SCALE]` (a zero-B LoRA gives the same
// frames, byte for byte; another model's LoRA is refused before loading, exit 1) and
// `osp inspect LORA`.
TEST(BatchCli, LoraFlagAndInspect) {
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const fs::path root = fs::temp_directory_path() / ("osp_lora_cli_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  pipeline::make_demo_model((root / "model").string());
  const std::string model = (root / "model").string();
  const auto cfg = model::DiTConfig::from_json_file((root / "model" / "config.json").string());
  model::LoraInit li;
  li.rank = 4;
  li.alpha = 8;
  model::save_lora((root / "zero.safetensors").string(), model::init_lora(model::DiT::expected_shapes(cfg), li));
  model::DiTConfig other = cfg;
  other.dim = 128;
  other.ffn_dim = 256;
  model::save_lora((root / "other.safetensors").string(), model::init_lora(model::DiT::expected_shapes(other), li));

  const std::string common = " -m " + model + " -p 'a red fox' --size 32x32 --frames 1 --steps 2 --seed 5 ";
  CmdResult r = run("generate" + common + "-o " + (root / "base").string() + "/");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("generate" + common + "--lora " + (root / "zero.safetensors").string() + ":0.5 -o " +
          (root / "zero").string() + "/");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "merged with scale 0.5")) << r.out;
  const std::string a = read_file(root / "base" / "frame_0000.png");
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == read_file(root / "zero" / "frame_0000.png"));
  r = run("generate" + common + "--lora " + (root / "other.safetensors").string() + " -o " +
          (root / "other").string() + "/");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "lora_A")) << r.out;
  EXPECT_FALSE(has(r.out, "sampling")) << "refused before any work: " << r.out;
  EXPECT_FALSE(fs::exists(root / "other"));
  r = run("inspect " + (root / "zero.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, ": LoRA, ") && has(r.out, "rank 4")) << r.out;
  fs::remove_all(root);
}
