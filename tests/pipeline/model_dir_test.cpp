// Model folder recognition (Wan2.1 original, diffusers, OSP-Next, demo) and the missing-file
// report; option validation (sizes, frames, prompt, output) before any work.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "osp/core/error.h"
#include "osp/pipeline/model_dir.h"
#include "osp/pipeline/pipeline.h"
#include "test_util.h"

using namespace osp;
using namespace osp::pipeline;
namespace fs = std::filesystem;

namespace {
struct TmpDir {
  fs::path p;
  explicit TmpDir(const std::string& n) {
    p = fs::temp_directory_path() / ("osp_modeldir_" + n + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TmpDir() { fs::remove_all(p); }
  void touch(const std::string& rel, const std::string& text = "x") const {
    fs::create_directories((p / rel).parent_path());
    std::ofstream(p / rel) << text;
  }
};
using osp::test::error_of;
}  // namespace

TEST(ModelDir, WanOriginalComplete) {
  TmpDir d("orig");
  d.touch("config.json", R"({"dim": 1536})");
  d.touch("diffusion_pytorch_model.safetensors");
  d.touch("models_t5_umt5-xxl-enc-bf16.pth");
  d.touch("Wan2.1_VAE.pth");
  d.touch("google/umt5-xxl/spiece.model");
  const ModelFiles f = detect_model_dir(d.p.string());
  EXPECT_EQ(f.layout, ModelLayout::WanOriginal);
  EXPECT_EQ(f.t5, (d.p / "models_t5_umt5-xxl-enc-bf16.pth").string());
  EXPECT_EQ(f.tokenizer, (d.p / "google/umt5-xxl/spiece.model").string());
}

TEST(ModelDir, OspNextFromConfig) {
  TmpDir d("ospnext");
  d.touch("config.json", R"({"dim": 5120, "skiparse_model_type": "dual_end", "sparse_ratio": 2})");
  d.touch("diffusion_pytorch_model-00001-of-00002.safetensors");
  d.touch("diffusion_pytorch_model.safetensors.index.json");
  d.touch("models_t5_umt5-xxl-enc-bf16.pth");
  d.touch("Wan2.1_VAE.pth");
  d.touch("google/umt5-xxl/spiece.model");
  EXPECT_EQ(detect_model_dir(d.p.string()).layout, ModelLayout::OspNext);
}

TEST(ModelDir, DiffusersLayout) {
  TmpDir d("diffusers");
  d.touch("model_index.json", "{}");
  d.touch("transformer/config.json", "{}");
  d.touch("transformer/diffusion_pytorch_model.safetensors");
  d.touch("text_encoder/model.safetensors");
  d.touch("vae/diffusion_pytorch_model.safetensors");
  d.touch("tokenizer/spiece.model");
  const ModelFiles f = detect_model_dir(d.p.string());
  EXPECT_EQ(f.layout, ModelLayout::WanDiffusers);
  EXPECT_TRUE(f.t5_hf_names);
}

TEST(ModelDir, ListsEveryMissingFile) {
  TmpDir d("missing");
  d.touch("config.json", "{}");
  d.touch("diffusion_pytorch_model.safetensors");
  const std::string e = error_of([&] { detect_model_dir(d.p.string()); });
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
  EXPECT_NE(e.find("models_t5_umt5-xxl-enc-bf16.pth"), std::string::npos) << e;
  EXPECT_NE(e.find("Wan2.1_VAE.pth"), std::string::npos) << e;
  EXPECT_NE(e.find("spiece.model"), std::string::npos) << e;
}

TEST(ModelDir, NotAModelFolder) {
  TmpDir d("empty");
  const std::string e = error_of([&] { detect_model_dir(d.p.string()); });
  EXPECT_NE(e.find("does not look like"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { detect_model_dir((d.p / "nope").string()); }).find("does not exist"), std::string::npos);
  d.touch("file.bin");
  EXPECT_NE(error_of([&] { detect_model_dir((d.p / "file.bin").string()); }).find("is a file"), std::string::npos);
}

TEST(Options, SizeParsing) {
  int w = 0, h = 0;
  parse_size("832x480", w, h);
  EXPECT_EQ(w, 832);
  EXPECT_EQ(h, 480);
  parse_size("1280*720", w, h);
  EXPECT_EQ(w, 1280);
  EXPECT_THROW(parse_size("1280", w, h), Error);
  EXPECT_THROW(parse_size("12a0x720", w, h), Error);
  EXPECT_THROW(parse_size("x720", w, h), Error);
}

TEST(Options, ValidationNamesTheRule) {
  GenerateOptions o;
  o.prompt = "a fox";
  o.out = (fs::temp_directory_path() / "osp_opts.mp4").string();
  EXPECT_NO_THROW(validate_options(o));
  auto bad = [&](auto mutate, const std::string& needle) {
    GenerateOptions b = o;
    mutate(b);
    const std::string e = error_of([&] { validate_options(b); });
    EXPECT_NE(e.find(needle), std::string::npos) << "got: " << e;
  };
  bad([](GenerateOptions& b) { b.prompt = "   "; }, "prompt is empty");
  bad([](GenerateOptions& b) { b.width = 1000; }, "multiple of 16");
  bad([](GenerateOptions& b) { b.height = 730; }, "multiple of 16");
  bad([](GenerateOptions& b) { b.frames = 80; }, "4n+1");
  bad([](GenerateOptions& b) { b.frames = 0; }, "4n+1");
  bad([](GenerateOptions& b) { b.steps = 0; }, "steps");
  bad([](GenerateOptions& b) { b.sampler = "ddim"; }, "unipc or euler");
  bad([](GenerateOptions& b) { b.guidance = -1; }, "guidance");
  bad([](GenerateOptions& b) { b.attention = "sparse"; }, "full or hybrid");
  bad([](GenerateOptions& b) { b.quant = "int4"; }, "none, hif8 or fp8");
  bad([](GenerateOptions& b) { b.quant = "fp8"; }, "needs --device cuda");
  bad([](GenerateOptions& b) { b.sp = "ring"; }, "ulysses or ssp");
  bad([](GenerateOptions& b) { b.device = "tpu"; }, "tpu");
  bad([](GenerateOptions& b) { b.out = "/no/such/folder/x.mp4"; }, "does not exist");
  bad([](GenerateOptions& b) { b.out = "video.avi"; }, "unsupported extension '.avi'");
  bad([](GenerateOptions& b) { b.out = "video"; }, "has no extension");
  bad([](GenerateOptions& b) { b.out = "/proc/video.mp4"; }, "/proc");
  bad([](GenerateOptions& b) { b.out = fs::temp_directory_path().string(); }, "already holds files");
  bad([](GenerateOptions& b) { b.seed = -2; }, "--seed");
  bad([](GenerateOptions& b) { b.prompt = "bad \xff byte"; }, "not valid UTF-8");
  if (!cuda_available()) bad([](GenerateOptions& b) { b.device = "cuda"; }, "no CUDA GPU");
}

TEST(Options, Geometry) {
  GenerateOptions o;
  o.width = 832;
  o.height = 480;
  o.frames = 81;
  const Geometry g = geometry(o);
  EXPECT_EQ(g.T, 21);
  EXPECT_EQ(g.h, 60);
  EXPECT_EQ(g.w, 104);
  EXPECT_EQ(g.tokens, 32760);  // wan-spec §1
  o.width = 1280;
  o.height = 720;
  EXPECT_EQ(geometry(o).tokens, 75600);
}
