// What `osp generate` takes when the command line leaves it out (cli/generate_defaults.h): the
// model folder's osp_generate.json fills the flags not given (given flags win; unknown keys and
// wrong types are errors naming the file), and without --model the shipped OSP-Next-Tiny
// (models/osp-next-tiny, found beside the binary) runs with its own settings.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "osp/io/image_writer.h"
#include "osp/pipeline/demo_model.h"
#include "run_cmd.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {
using test::run_osp;
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
int count_frames(const fs::path& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().extension() == ".png";
  return n;
}
void write(const fs::path& p, const std::string& text) {
  std::ofstream f(p);
  f << text;
}
}  // namespace

TEST(GenerateDefaults, ModelFolderSettingsFillTheFlagsNotGiven) {
  ::setenv("OMP_NUM_THREADS", "1", 1);  // the child osp runs single-threaded (small models)
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const fs::path root = fs::temp_directory_path() / ("osp_gen_defaults_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  const std::string model = (root / "model").string();
  pipeline::make_demo_model(model);
  write(root / "model" / "osp_generate.json", R"({"size": "32x48", "frames": 5, "steps": 2, "guidance": 1})");
  // Nothing given: 5 frames of 32x48.
  test::CmdResult r = run_osp("generate -m " + model + " --prompt fox --seed 1 --out " + (root / "a/").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "osp_generate.json")) << r.out;
  EXPECT_EQ(count_frames(root / "a"), 5);
  const Tensor f0 = io::read_png((root / "a" / "frame_0000.png").string());
  EXPECT_EQ(f0.size(0), 48);
  EXPECT_EQ(f0.size(1), 32);
  // A flag given on the command line wins over the file.
  r = run_osp("generate -m " + model + " --prompt fox --seed 1 --frames 9 --out " + (root / "b/").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count_frames(root / "b"), 9);
  // Unknown keys and wrong types are refused, naming the file and the key.
  write(root / "model" / "osp_generate.json", R"({"size": "32x48", "colour": "red"})");
  r = run_osp("generate -m " + model + " --prompt fox --out " + (root / "c/").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "osp_generate.json") && has(r.out, "unknown setting \"colour\"")) << r.out;
  write(root / "model" / "osp_generate.json", R"({"frames": "nine"})");
  r = run_osp("generate -m " + model + " --prompt fox --out " + (root / "c/").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "\"frames\" must be an integer")) << r.out;
  EXPECT_FALSE(fs::exists(root / "c"));
  fs::remove_all(root);
}

TEST(GenerateDefaults, WithoutModelTheShippedTinyModelRuns) {
  ::setenv("OMP_NUM_THREADS", "1", 1);
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const fs::path self = fs::path(test::osp_exe()).parent_path();
  if (!fs::exists(self.parent_path() / "models/osp-next-tiny/osp_generate.json"))
    GTEST_SKIP() << "SKIP: the build folder is not inside a checkout with models/osp-next-tiny";
  const fs::path out = fs::temp_directory_path() / ("osp_gen_tiny_" + std::to_string(::getpid()));
  fs::remove_all(out);
  // From a working directory without models/: found beside the binary; 2 steps keep it short.
  const test::CmdResult r = run_osp("generate --prompt 'a red circle moves up on a black background' --steps 2 --seed 3 --out " +
                          (out / "").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "osp-next-tiny")) << r.out;
  EXPECT_EQ(count_frames(out), 9);
  const Tensor f0 = io::read_png((out / "frame_0000.png").string());
  EXPECT_EQ(f0.size(0), 64);
  EXPECT_EQ(f0.size(1), 64);
  fs::remove_all(out);
}
