// MP4 writer: write a short clip, read it back with libavformat (frame count, size, fps,
// metadata, pixels close to what was written); RGB conversion; PNG frames; bad input.
#include <gtest/gtest.h>
#if defined(__GLIBC__)
#include <malloc.h>  // mallopt(M_PERTURB)
#endif
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {
fs::path tmp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("osp_video_test_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}
// Smooth moving gradient frames (codec-friendly so the round trip is close).
Tensor test_frames(int F, int H, int W) {
  Tensor t = Tensor::empty({F, H, W, 3}, DType::U8);
  uint8_t* p = t.data<uint8_t>();
  for (int f = 0; f < F; ++f)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        uint8_t* px = p + ((size_t(f) * H + y) * W + x) * 3;
        px[0] = uint8_t(40 + 150 * x / W + 4 * f);
        px[1] = uint8_t(60 + 120 * y / H);
        px[2] = uint8_t(128 + 60 * std::sin(0.2 * (x + y + 3 * f)));
      }
  return t;
}
std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
double psnr(const Tensor& a, const Tensor& b) {
  double se = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = int(a.data<uint8_t>()[i]) - int(b.data<uint8_t>()[i]);
    se += d * d;
  }
  return 10 * std::log10(255.0 * 255.0 / (se / double(a.numel())));
}
}  // namespace

TEST(VideoWriter, RoundTripThroughLibavformat) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("rt");
  const std::string path = (d / "clip.mp4").string();
  const Tensor frames = test_frames(9, 48, 64);
  io::VideoOptions opt;
  opt.metadata = {{"title", "a red fox"}, {"comment", "osp test"}, {"osp_seed", "42"}};
  io::write_mp4(path, frames, opt);
  ASSERT_TRUE(fs::exists(path));
  Tensor back;
  const io::VideoProbe p = io::probe_video(path, &back);
  EXPECT_EQ(p.frames, 9);
  EXPECT_EQ(p.width, 64);
  EXPECT_EQ(p.height, 48);
  EXPECT_NEAR(p.fps, 16.0, 1e-9);
  if (io::video_encoder_name() == "libx264") EXPECT_EQ(p.codec, "h264");
  EXPECT_EQ(p.metadata.at("title"), "a red fox");
  EXPECT_EQ(p.metadata.at("osp_seed"), "42");
  ASSERT_EQ(back.shape(), frames.shape());
  // Lossy codec + yuv420p: pixels are close, not equal.
  double err = 0;
  for (int64_t i = 0; i < frames.numel(); ++i)
    err += std::abs(int(back.data<uint8_t>()[i]) - int(frames.data<uint8_t>()[i]));
  EXPECT_LT(err / frames.numel(), 6.0);
  fs::remove_all(d);
}

TEST(VideoWriter, SameInputSameBytes) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("det");
  const Tensor frames = test_frames(5, 32, 32);
  io::write_mp4((d / "a.mp4").string(), frames);
  io::write_mp4((d / "b.mp4").string(), frames);
  // Byte for byte (the encoder runs on one thread in every mode, whatever the machine's load).
  auto bytes = [](const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(bytes(d / "a.mp4"), bytes(d / "b.mp4"));
  Tensor a, b;
  io::probe_video((d / "a.mp4").string(), &a);
  io::probe_video((d / "b.mp4").string(), &b);
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  fs::remove_all(d);
}

// The bytes do not depend on where the caller's frames sit in memory: the RGB -> YUV conversion
// is the writer's own integer code (io/yuv.h), not swscale, whose SIMD path (and rounding)
// follows the input's alignment. Rows of 3·W = 210 bytes: no frame after the first is aligned.
TEST(VideoWriter, SameBytesWhateverTheInputAlignment) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("align");
  const int64_t F = 3, H = 38, W = 70;
  const Tensor frames = test_frames(F, H, W);
  const size_t per = size_t(H * W * 3);
  auto write = [&](const std::string& name, size_t offset) {
    std::vector<uint8_t> buf(per * size_t(F) + 64, 0xCD);
    std::memcpy(buf.data() + offset, frames.data<uint8_t>(), per * size_t(F));
    io::VideoWriter w((d / name).string(), int(W), int(H), {});
    for (int64_t f = 0; f < F; ++f) w.write_frame(buf.data() + offset + size_t(f) * per);
    w.close();
    return file_bytes(d / name);
  };
  const std::string a = write("a.mp4", 0), b = write("b.mp4", 1), c = write("c.mp4", 13);
  EXPECT_GT(a.size(), 100u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(a, write("a_again.mp4", 0));  // and two consecutive encodes agree
  fs::remove_all(d);
}

// The bytes do not depend on what the heap held before the encode. x264's AVX-512 code reads
// memory it never wrote (the writer keeps x264 off AVX-512): before that fix, on an AVX-512 CPU
// these files differed in size with the fill byte. glibc's M_PERTURB fills every new heap block
// with a byte of our choice; an encode of other frames beforehand leaves other contents behind.
// (Under AddressSanitizer mallopt does nothing; its allocator has its own fill.)
TEST(VideoWriter, SameBytesWhateverTheHeapHeld) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("heap");
  const Tensor frames = test_frames(5, 32, 32);
  auto write = [&](const std::string& name, int fill, int64_t before_h) {
    if (before_h > 0) io::write_mp4((d / "before.mp4").string(), test_frames(3, before_h, 2 * before_h), {});
#if defined(__GLIBC__)
    mallopt(M_PERTURB, fill);
#endif
    io::write_mp4((d / name).string(), frames);
#if defined(__GLIBC__)
    mallopt(M_PERTURB, 0);
#endif
    (void)fill;
    return file_bytes(d / name);
  };
  const std::string a = write("a.mp4", 0, 0);
  ASSERT_GT(a.size(), 100u);
  EXPECT_EQ(a, write("fill_5a.mp4", 0x5A, 0));
  EXPECT_EQ(a, write("fill_a5.mp4", 0xA5, 0));
  EXPECT_EQ(a, write("after_48.mp4", 0, 48));
  EXPECT_EQ(a, write("after_64.mp4", 0, 64));
  fs::remove_all(d);
}

// Nothing in the file depends on its path (names of different lengths, another folder, the
// atomic temporary) or on the time: the MP4 creation/modification times are left at zero.
TEST(VideoWriter, SameBytesWhateverTheOutputPath) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("paths");
  fs::create_directories(d / "a much longer folder name" / "nested");
  const fs::path p1 = d / "x.mp4", p2 = d / "a much longer folder name" / "nested" / "clip_0042.mp4";
  io::VideoOptions opt;
  opt.metadata = {{"title", "a red fox"}, {"osp_seed", "7"}};
  const Tensor frames = test_frames(4, 32, 48);
  io::write_mp4(p1.string(), frames, opt);
  io::write_mp4(p2.string(), frames, opt);
  const std::string a = file_bytes(p1), b = file_bytes(p2);
  ASSERT_GT(a.size(), 100u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.find("clip_0042"), std::string::npos);
  EXPECT_EQ(a.find("osp_video_test"), std::string::npos);
  // mvhd/tkhd/mdhd (version 0): creation and modification time, 4 bytes each after the
  // version+flags word.
  for (const char* box : {"mvhd", "tkhd", "mdhd"}) {
    const size_t at = a.find(box);
    ASSERT_NE(at, std::string::npos) << box;
    ASSERT_EQ(a[at + 4], 0) << box << " version";
    EXPECT_EQ(a.substr(at + 8, 8), std::string(8, '\0')) << box << " times";
  }
  fs::remove_all(d);
}

// The decoded frames are close to what was written: the matrix and range the writer converts
// with are the ones it declares, and the reader honours them. (Decoding with the other matrix
// costs ~10 dB on these saturated frames, far below the bound.)
TEST(VideoWriter, DecodedFramesAreCloseToTheInput) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("psnr");
  const Tensor frames = test_frames(6, 64, 96);
  io::write_mp4((d / "c.mp4").string(), frames);
  Tensor back;
  EXPECT_EQ(io::probe_video((d / "c.mp4").string(), &back).frames, 6);
  ASSERT_EQ(back.shape(), frames.shape());
  EXPECT_GT(psnr(frames, back), 36.0);
  Tensor again;
  io::probe_video((d / "c.mp4").string(), &again);
  EXPECT_EQ(max_abs_diff(back, again), 0.0);
  fs::remove_all(d);
}

TEST(VideoWriter, RejectsBadInput) {
  const fs::path d = tmp_dir("bad");
  if (!io::video_writer_available()) {
    EXPECT_THROW(io::write_mp4((d / "x.mp4").string(), test_frames(1, 16, 16)), Error);
    return;
  }
  EXPECT_THROW(io::write_mp4((d / "odd.mp4").string(), test_frames(2, 15, 16)), Error);
  EXPECT_THROW(io::write_mp4((d / "f32.mp4").string(), Tensor::zeros({2, 16, 16, 3}, DType::F32)), Error);
  EXPECT_THROW(io::write_mp4((d / "no_such_dir" / "x.mp4").string(), test_frames(1, 16, 16)), Error);
  EXPECT_THROW(io::probe_video((d / "missing.mp4").string()), Error);
  fs::remove_all(d);
}

TEST(VideoWriter, RgbConversionFollowsWanReference) {
  // [3, F=1, H=1, W=5]: clamp to [-1, 1], uint8 = trunc((x + 1) / 2 * 255).
  const Tensor v = Tensor::from_vector({-2.f, -1.f, 0.f, 0.5f, 1.5f,  // R
                                        0.f, 0.f, 0.f, 0.f, 0.f,      // G
                                        1.f, 1.f, 1.f, 1.f, 1.f},     // B
                                       {3, 1, 1, 5});
  const Tensor rgb = io::video_to_rgb8(v);
  ASSERT_EQ(rgb.shape(), (Shape{1, 1, 5, 3}));
  const uint8_t* p = rgb.data<uint8_t>();
  EXPECT_EQ(p[0 * 3], 0);
  EXPECT_EQ(p[1 * 3], 0);
  EXPECT_EQ(p[2 * 3], 127);  // 127.5 truncated
  EXPECT_EQ(p[3 * 3], 191);  // 191.25
  EXPECT_EQ(p[4 * 3], 255);
  EXPECT_EQ(p[1], 127);
  EXPECT_EQ(p[2], 255);
  EXPECT_THROW(io::video_to_rgb8(Tensor::zeros({4, 1, 2, 2}, DType::F32)), Error);
}

TEST(ImageWriter, PngFramesRoundTripExactly) {
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const fs::path d = tmp_dir("png");
  const Tensor frames = test_frames(3, 16, 24);
  const auto paths = io::write_png_frames((d / "frames").string(), frames, {{"prompt", "fox"}});
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_TRUE(fs::exists(d / "frames" / "frame_0002.png"));
  for (int i = 0; i < 3; ++i) {
    const Tensor img = io::read_png(paths[size_t(i)]);
    ASSERT_EQ(img.shape(), (Shape{16, 24, 3}));
    EXPECT_EQ(max_abs_diff(img, frames.select(0, i).contiguous()), 0.0);  // lossless
  }
  EXPECT_THROW(io::read_png((d / "nope.png").string()), Error);
  EXPECT_THROW(io::write_png_frames((d / "x").string(), Tensor::zeros({1, 4, 4}, DType::U8)), Error);
  fs::remove_all(d);
}

namespace {
// Runs `fn` in a child whose files may not grow past `limit` bytes (SIGXFSZ ignored: writes past
// it fail with EFBIG, as on a full disk). Returns 0 when fn threw an osp::Error, else 1..4.
int in_child_with_file_limit(size_t limit, const std::function<void()>& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl {limit, limit};
    if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(3);
    try {
      fn();
    } catch (const Error&) {
      ::_exit(0);
    } catch (...) {
      ::_exit(4);
    }
    ::_exit(1);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 2;
}
std::vector<std::string> names_in(const fs::path& d) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(d)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}
}  // namespace

TEST(VideoWriter, FullDiskKeepsPreviousFileAndLeavesNoPartialFile) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path d = tmp_dir("full");
  const std::string path = (d / "clip.mp4").string();
  io::write_mp4(path, test_frames(3, 32, 32));
  const auto before = fs::file_size(path);
  const Tensor big = test_frames(9, 256, 256);  // far more than 8 KiB of video
  EXPECT_EQ(in_child_with_file_limit(8 << 10, [&] { io::write_mp4(path, big); }), 0);
  EXPECT_EQ(fs::file_size(path), before);
  EXPECT_EQ(io::probe_video(path).frames, 3);
  EXPECT_EQ(names_in(d), std::vector<std::string>{"clip.mp4"});
  // Refused up front without --overwrite (Overwrite::Refuse).
  EXPECT_THROW(io::write_mp4(path, big, {}, io::Overwrite::Refuse), Error);
  EXPECT_EQ(fs::file_size(path), before);
  fs::remove_all(d);
}

TEST(ImageWriter, FullDiskKeepsPreviousFramesAndLeavesNoPartialFolder) {
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const fs::path d = tmp_dir("pngfull");
  const std::string dir = (d / "frames").string();
  io::write_png_frames(dir, test_frames(2, 16, 16));
  Tensor big = Tensor::empty({3, 128, 128, 3}, DType::U8);  // noise: incompressible
  uint32_t r = 12345;
  for (int64_t i = 0; i < big.numel(); ++i) big.data<uint8_t>()[i] = uint8_t((r = r * 1664525u + 1013904223u) >> 24);
  EXPECT_EQ(in_child_with_file_limit(16 << 10, [&] { io::write_png_frames(dir, big); }), 0);
  EXPECT_EQ(names_in(dir), (std::vector<std::string>{"frame_0000.png", "frame_0001.png"}));
  EXPECT_EQ(io::read_png(dir + "/frame_0000.png").size(0), 16);
  EXPECT_EQ(names_in(d), std::vector<std::string>{"frames"});
  EXPECT_THROW(io::write_png_frames(dir, big, {}, io::Overwrite::Refuse), Error);
  fs::remove_all(d);
}
