// `osp encode-dataset` on PNG images with captions: a demo model folder whose VAE is the golden
// tiny Wan-VAE with encoder weights (tiny_vae_fp32.pth). The cache holds, per image, exactly the
// VAE encoding of the image (a 32×32 image at --size 32x32 is not resampled) and the umT5
// embedding of its caption, plus the empty-prompt embedding; `osp train` then fine-tunes on it.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "osp/io/checkpoint.h"
#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "osp/model/vae.h"
#include "osp/train/latent_dataset.h"
#include "test_util.h"
#include "run_cmd.h"

namespace fs = std::filesystem;
using namespace osp;

namespace {

using test::osp_exe;

int run(const std::string& args, std::string* out) {
  const test::CmdResult r = test::run_osp(args);
  out->append(r.out);
  return r.code;
}

std::vector<uint8_t> pattern(int w, int h, int seed) {
  std::vector<uint8_t> rgb(size_t(w * h * 3));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[size_t((y * w + x) * 3)];
      p[0] = uint8_t((x * 7 + y * 3 + seed * 50) % 256);
      p[1] = uint8_t((x * y + seed) % 256);
      p[2] = uint8_t((y * 5) % 256);
    }
  return rgb;
}

// A demo model folder whose VAE has encoder weights (the golden tiny Wan-VAE), and that VAE.
void make_encoder_model(const fs::path& dir) {
  std::string out;
  ASSERT_EQ(run("make-demo-model " + dir.string(), &out), 0) << out;
  fs::remove(dir / "Wan2.1_VAE.safetensors");
  fs::copy_file(test::golden("tiny_vae_fp32.pth"), dir / "Wan2.1_VAE.pth");
}
model::WanVae tiny_vae() {
  return model::WanVae::load(model::weight_getter(io::open_checkpoint(test::golden("tiny_vae_fp32.pth"))));
}

}  // namespace

TEST(EncodeDatasetCli, PngFolderToCacheToTraining) {
  if (!fs::exists(osp_exe())) GTEST_SKIP() << "SKIP: the osp executable is not built next to the test";
  const fs::path w = fs::temp_directory_path() / ("osp_encode_cli_" + std::to_string(::getpid()));
  fs::remove_all(w);
  fs::create_directories(w / "imgs");
  std::string out;
  ASSERT_NO_FATAL_FAILURE(make_encoder_model(w / "model"));
  for (int i = 0; i < 3; ++i) {
    io::write_png((w / "imgs" / ("img" + std::to_string(i) + ".png")).string(), pattern(32, 32, i).data(), 32, 32);
    std::ofstream(w / "imgs" / ("img" + std::to_string(i) + ".txt")) << "a picture number " << i << "\n";
  }
  // A missing caption file is named.
  io::write_png((w / "imgs" / "lonely.png").string(), pattern(32, 32, 9).data(), 32, 32);
  out.clear();
  EXPECT_EQ(run("encode-dataset --model " + (w / "model").string() + " --input " + (w / "imgs").string() + " --out " +
                    (w / "cache").string() + " --size 32x32 --frames 1",
                &out),
            1);
  EXPECT_NE(out.find("lonely.txt"), std::string::npos) << out;
  fs::remove(w / "imgs" / "lonely.png");
  out.clear();
  ASSERT_EQ(run("encode-dataset --model " + (w / "model").string() + " --input " + (w / "imgs").string() + " --out " +
                    (w / "cache").string() + " --size 32x32 --frames 1",
                &out),
            0)
      << out;

  train::LatentDataset d = train::LatentDataset::open((w / "cache").string(), {});
  ASSERT_EQ(d.size(), 3);
  EXPECT_EQ(d.text_dim(), 64);
  EXPECT_TRUE(d.has_empty_context());
  const model::WanVae vae = tiny_vae();
  for (int i = 0; i < 3; ++i) {
    const train::LatentSample s = d.load(i);
    EXPECT_EQ(s.caption, "a picture number " + std::to_string(i));
    EXPECT_EQ(d.samples()[size_t(i)].source, "img" + std::to_string(i) + ".png");
    const auto rgb = pattern(32, 32, i);
    Tensor video = Tensor::empty({3, 1, 32, 32}, DType::F32);
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 32 * 32; ++k) video.data<float>()[c * 1024 + k] = float(rgb[size_t(k * 3 + c)] / 127.5 - 1.0);
    EXPECT_LE(relative_error(s.latent, vae.encode(video)), 1e-6) << "sample " << i;
  }
  // And it trains.
  out.clear();
  ASSERT_EQ(run("train --model " + (w / "model").string() + " --data " + (w / "cache").string() + " --out " +
                    (w / "run").string() + " --steps 2 --lr 1e-4",
                &out),
            0)
      << out;
  EXPECT_TRUE(fs::exists(w / "run" / "checkpoint-00000002" / "CHECKPOINT_COMPLETE"));
  fs::remove_all(w);
}

// A video (MP4 written by osp's writer, decoded by FFmpeg): its first --frames frames, center
// cropped (48×32 → 32×32 takes columns 8..39 without resampling), through the VAE encoder.
TEST(EncodeDatasetCli, VideoClip) {
  if (!fs::exists(osp_exe())) GTEST_SKIP() << "SKIP: the osp executable is not built next to the test";
  const fs::path w = fs::temp_directory_path() / ("osp_encode_video_" + std::to_string(::getpid()));
  fs::remove_all(w);
  fs::create_directories(w / "clips");
  std::string out;
  ASSERT_NO_FATAL_FAILURE(make_encoder_model(w / "model"));
  std::ofstream(w / "clips" / "clip.txt") << "a moving pattern";
  const std::string cmd = "encode-dataset --model " + (w / "model").string() + " --input " + (w / "clips").string() +
                          " --out " + (w / "cache").string() + " --size 32x32 --frames 5";
  if (!io::video_writer_available()) {
    std::ofstream(w / "clips" / "clip.mp4") << "not a video";
    out.clear();
    EXPECT_EQ(run(cmd, &out), 1);
    EXPECT_NE(out.find("FFmpeg"), std::string::npos) << out;
    fs::remove_all(w);
    return;
  }
  {
    io::VideoWriter vw((w / "clips" / "clip.mp4").string(), 48, 32);
    for (int f = 0; f < 7; ++f) vw.write_frame(pattern(48, 32, f).data());
    vw.close();
  }
  out.clear();
  ASSERT_EQ(run(cmd, &out), 0) << out;
  train::LatentDataset d = train::LatentDataset::open((w / "cache").string(), {});
  ASSERT_EQ(d.size(), 1);
  const train::LatentSample s = d.load(0);
  EXPECT_EQ(s.latent.shape(), Shape({16, 2, 4, 4}));
  Tensor rgb;
  io::probe_video((w / "clips" / "clip.mp4").string(), &rgb);  // U8 [F, 32, 48, 3]
  Tensor video = Tensor::empty({3, 5, 32, 32}, DType::F32);
  for (int c = 0; c < 3; ++c)
    for (int f = 0; f < 5; ++f)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x)
          video.data<float>()[((c * 5 + f) * 32 + y) * 32 + x] =
              float(rgb.data<uint8_t>()[((f * 32 + y) * 48 + (x + 8)) * 3 + c] / 127.5 - 1.0);
  const model::WanVae vae = tiny_vae();
  EXPECT_LE(relative_error(s.latent, vae.encode(video)), 1e-6);
  // Too few frames for --frames: named.
  out.clear();
  EXPECT_EQ(run("encode-dataset --model " + (w / "model").string() + " --input " + (w / "clips").string() + " --out " +
                    (w / "cache2").string() + " --size 32x32 --frames 9",
                &out),
            1);
  EXPECT_NE(out.find("has 7 frames"), std::string::npos) << out;
  fs::remove_all(w);
}

// A 32 fps video sampled at --fps 16 (every other frame, as OSP-Next samples its clips), two
// clips spread over it (--clips-per-video 2 --temporal-crop spread): two cache samples named by
// their source frames, the first the VAE encoding of frames 0, 2, 4, 6, 8; a window that does not
// fit the video is an error naming the frames it needs.
TEST(EncodeDatasetCli, VideoClipsAtTheTrainingFrameRate) {
  if (!fs::exists(osp_exe())) GTEST_SKIP() << "SKIP: the osp executable is not built next to the test";
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: this build has no FFmpeg (VideoClip covers the error)";
  const fs::path w = fs::temp_directory_path() / ("osp_encode_fps_" + std::to_string(::getpid()));
  fs::remove_all(w);
  fs::create_directories(w / "clips");
  std::string out;
  ASSERT_NO_FATAL_FAILURE(make_encoder_model(w / "model"));
  std::ofstream(w / "clips" / "clip.txt") << "a moving pattern";
  {
    io::VideoOptions vo;
    vo.fps = 32;
    io::VideoWriter vw((w / "clips" / "clip.mp4").string(), 32, 32, vo);
    for (int f = 0; f < 20; ++f) vw.write_frame(pattern(32, 32, f).data());
    vw.close();
  }
  const std::string base = "encode-dataset --model " + (w / "model").string() + " --input " + (w / "clips").string() +
                           " --size 32x32 --frames 5 --fps 16";
  out.clear();
  ASSERT_EQ(run(base + " --out " + (w / "cache").string() + " --clips-per-video 2 --temporal-crop spread", &out), 0) << out;
  train::LatentDataset d = train::LatentDataset::open((w / "cache").string(), {});
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.samples()[0].source, "clip.mp4#frames=0-8");
  EXPECT_EQ(d.samples()[1].source, "clip.mp4#frames=11-19");
  Tensor rgb;
  io::probe_video((w / "clips" / "clip.mp4").string(), &rgb);  // U8 [20, 32, 32, 3]
  Tensor video = Tensor::empty({3, 5, 32, 32}, DType::F32);
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 5; ++k)
      for (int i = 0; i < 32 * 32; ++i)
        video.data<float>()[(c * 5 + k) * 1024 + i] = float(rgb.data<uint8_t>()[((2 * k) * 1024 + i) * 3 + c] / 127.5 - 1.0);
  const model::WanVae vae = tiny_vae();
  EXPECT_LE(relative_error(d.load(0).latent, vae.encode(video)), 1e-6);
  // 17 frames at 16 fps need 33 of the video's 20
  out.clear();
  EXPECT_EQ(run("encode-dataset --model " + (w / "model").string() + " --input " + (w / "clips").string() +
                    " --size 32x32 --frames 17 --fps 16 --out " + (w / "cache2").string(),
                &out),
            1);
  EXPECT_NE(out.find("has 20 frames (32 fps); --frames 17 at --fps 16 needs 33"), std::string::npos) << out;
  fs::remove_all(w);
}
