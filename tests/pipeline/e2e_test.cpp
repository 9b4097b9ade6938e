// End to end on the CPU: a tiny random-weight model (osp make-demo-model) generates a video
// through the real pipeline (tokenizer → umT5 → DiT with batched CFG and hybrid Skiparse
// attention → VAE → H.264 MP4). libavformat reads it back (frames, size, fps); the same seed
// gives the same frames and the same bytes; a different seed a different video.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "osp/core/progress.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/demo_model.h"
#include "osp/pipeline/pipeline.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {
std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
}  // namespace

TEST(EndToEnd, DemoModelVideoIsReproducible) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path dir = fs::temp_directory_path() / ("osp_e2e_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  pipeline::DemoModelOptions dm;
  dm.seed = 3;
  pipeline::make_demo_model((dir / "model").string(), dm);

  pipeline::GenerateOptions o;
  o.prompt = "a red fox runs through the snowy forest";
  o.width = 96;
  o.height = 64;
  o.frames = 5;
  o.steps = 3;
  o.seed = 1234;
  o.out = (dir / "a.mp4").string();
  const pipeline::Plan plan = pipeline::plan_generation((dir / "model").string(), o);
  EXPECT_EQ(plan.files.layout, pipeline::ModelLayout::Demo);
  const auto ra = pipeline::generate(plan);
  ASSERT_FALSE(ra.interrupted);

  Tensor fa;
  const io::VideoProbe p = io::probe_video(o.out, &fa);
  EXPECT_EQ(p.frames, 5);
  EXPECT_EQ(p.width, 96);
  EXPECT_EQ(p.height, 64);
  EXPECT_NEAR(p.fps, 16.0, 1e-9);
  EXPECT_EQ(p.metadata.at("title"), o.prompt);
  EXPECT_EQ(p.metadata.at("osp_seed"), "1234");

  pipeline::GenerateOptions o2 = o;
  o2.out = (dir / "b.mp4").string();
  const auto rb = pipeline::generate(pipeline::plan_generation((dir / "model").string(), o2));
  EXPECT_EQ(max_abs_diff(ra.rgb, rb.rgb), 0.0);            // same seed, same frames
  EXPECT_EQ(read_all(dir / "a.mp4"), read_all(dir / "b.mp4"));  // and the same bytes

  pipeline::GenerateOptions o3 = o;
  o3.seed = 99;
  o3.out = (dir / "c.mp4").string();
  const auto rc = pipeline::generate(pipeline::plan_generation((dir / "model").string(), o3));
  EXPECT_GT(max_abs_diff(ra.rgb, rc.rgb), 0.0);

  // PNG frames into a folder.
  pipeline::GenerateOptions o5 = o;
  o5.out = (dir / "frames/").string();
  o5.guidance = 1.0f;  // no CFG: one DiT forward per step
  pipeline::generate(pipeline::plan_generation((dir / "model").string(), o5));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(fs::exists(dir / "frames" / ("frame_000" + std::to_string(i) + ".png")));
  EXPECT_FALSE(fs::exists(dir / "frames" / "frame_0005.png"));

  // A size that cannot fit is refused by the plan, before any work.
  pipeline::GenerateOptions huge = o;
  huge.out = (dir / "huge.mp4").string();
  huge.width = huge.height = 8192;
  huge.frames = 1001;
  try {
    pipeline::plan_generation((dir / "model").string(), huge);
    ADD_FAILURE() << "expected a does-not-fit error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit"), std::string::npos) << e.what();
  }

  // Ctrl-C (the SIGINT flag) stops the run between stages/steps and writes nothing.
  pipeline::GenerateOptions o4 = o;
  o4.out = (dir / "d.mp4").string();
  const pipeline::Plan p4 = pipeline::plan_generation((dir / "model").string(), o4);
  set_interrupted(true);
  const auto rd = pipeline::generate(p4);
  set_interrupted(false);
  EXPECT_TRUE(rd.interrupted);
  EXPECT_FALSE(fs::exists(dir / "d.mp4"));
  fs::remove_all(dir);
}
