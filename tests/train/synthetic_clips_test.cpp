// Synthetic clips: determinism (same seed → same bytes on any thread count), held-out
// compositions, captions, geometry, the dataset folder and `osp make-dataset`'s errors.
#include "osp/train/synthetic_clips.h"

#include <gtest/gtest.h>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "osp/io/video_writer.h"
#include "osp/train/clip_dataset.h"
#include "run_cmd.h"

namespace fs = std::filesystem;
using namespace osp;
using namespace osp::train;

namespace {

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
uint64_t clip_hash(const Tensor& t) { return fnv1a(t.raw(), t.nbytes()); }

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("osp_synth_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

using test::CmdResult;
using test::osp_exe;
using test::run_osp;

}  // namespace

TEST(SyntheticClips, SameSeedSameBytesOnAnyThreadCount) {
  const int saved = omp_get_max_threads();
  // 128x128x33 is above the size where rendering goes parallel over frames.
  omp_set_num_threads(1);
  const Tensor a = render_clip(sample_clip(7, ClipSplit::Train, 5, 128, 128, 33));
  omp_set_num_threads(3);
  const Tensor b = render_clip(sample_clip(7, ClipSplit::Train, 5, 128, 128, 33));
  omp_set_num_threads(saved);
  ASSERT_EQ(a.shape(), (Shape{33, 128, 128, 3}));
  EXPECT_EQ(a.dtype(), DType::U8);
  EXPECT_EQ(clip_hash(a), clip_hash(b));
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  // Another seed, another index or the other split gives another clip.
  const uint64_t h = clip_hash(a);
  EXPECT_NE(h, clip_hash(render_clip(sample_clip(8, ClipSplit::Train, 5, 128, 128, 33))));
  EXPECT_NE(h, clip_hash(render_clip(sample_clip(7, ClipSplit::Train, 6, 128, 128, 33))));
  EXPECT_NE(clip_caption(sample_clip(7, ClipSplit::Train, 5, 64, 64, 9)) +
                clip_attributes_json(sample_clip(7, ClipSplit::Train, 5, 64, 64, 9)),
            clip_caption(sample_clip(7, ClipSplit::Heldout, 5, 64, 64, 9)) +
                clip_attributes_json(sample_clip(7, ClipSplit::Heldout, 5, 64, 64, 9)));
  // Captions are a function of the seed alone (not of the size).
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(clip_caption(sample_clip(3, ClipSplit::Train, i, 64, 64, 9)),
              clip_caption(sample_clip(3, ClipSplit::Train, i, 320, 192, 33)));
  // Different seeds give different datasets (captions differ somewhere in the first 20 clips).
  int differ = 0;
  for (int i = 0; i < 20; ++i)
    differ += clip_caption(sample_clip(3, ClipSplit::Train, i, 64, 64, 9)) !=
              clip_caption(sample_clip(4, ClipSplit::Train, i, 64, 64, 9));
  EXPECT_GT(differ, 10);
}

TEST(SyntheticClips, HeldoutCompositionsNeverInTrain) {
  int held = 0, valid = 0;
  std::set<std::tuple<int, int>> cs, cm, sm;  // pairs seen in train triples
  for (int c = 0; c < kNumObjectColors; ++c)
    for (int s = 0; s < kNumShapes; ++s)
      for (int m = 0; m < kNumMotions; ++m) {
        if (!is_valid_composition(ObjectShape(s), Motion(m))) continue;
        ++valid;
        if (is_heldout(c, ObjectShape(s), Motion(m))) {
          ++held;
          continue;
        }
        cs.insert({c, s}), cm.insert({c, m}), sm.insert({s, m});
      }
  EXPECT_EQ(valid, 228);
  EXPECT_EQ(held, 33);  // about 1/7 of them (docs/USAGE.md states the number)
  // Every single attribute pair still appears in training: held-out clips test composition.
  EXPECT_EQ(cs.size(), size_t(kNumObjectColors * kNumShapes));
  EXPECT_EQ(cm.size(), size_t(kNumObjectColors * kNumMotions));
  EXPECT_EQ(sm.size(), size_t(kNumShapes * kNumMotions - 2));  // circle/ring never rotate
  std::set<std::tuple<int, int, int>> train_seen, held_seen;
  for (int64_t i = 0; i < 3000; ++i) {
    const ClipSpec t = sample_clip(1, ClipSplit::Train, i, 64, 64, 9);
    EXPECT_FALSE(t.heldout()) << clip_caption(t);
    for (const auto& o : t.objects) {
      EXPECT_FALSE(is_heldout(o.color, o.shape, o.motion)) << clip_caption(t);
      EXPECT_TRUE(is_valid_composition(o.shape, o.motion));
      train_seen.insert({o.color, int(o.shape), int(o.motion)});
    }
  }
  for (int64_t i = 0; i < 600; ++i) {
    const ClipSpec h = sample_clip(1, ClipSplit::Heldout, i, 64, 64, 9);
    EXPECT_TRUE(is_heldout(h.objects[0].color, h.objects[0].shape, h.objects[0].motion)) << clip_caption(h);
    EXPECT_NE(clip_attributes_json(h).find("\"heldout\":true"), std::string::npos);
    held_seen.insert({h.objects[0].color, int(h.objects[0].shape), int(h.objects[0].motion)});
  }
  EXPECT_EQ(int(train_seen.size()), valid - held);  // the train split reaches every training triple
  EXPECT_EQ(int(held_seen.size()), held);           // and the held-out split every held-out one
}

TEST(SyntheticClips, CaptionsFollowTheGrammar) {
  int two = 0, tone = 0;
  for (int64_t i = 0; i < 400; ++i) {
    const ClipSpec s = sample_clip(2, ClipSplit::Train, i, 64, 64, 9);
    const std::string c = clip_caption(s);
    const ClipAttributes a = clip_attributes(s);
    ASSERT_EQ(a.objects.size(), s.objects.size());
    std::string want = std::string("a ") + a.objects[0].color + " " + a.objects[0].shape;
    if (s.objects.size() == 2) {
      ++two;
      EXPECT_NE(s.objects[0].color, s.objects[1].color);
      EXPECT_EQ(s.objects[0].motion, s.objects[1].motion);
      want += " and a " + a.objects[1].color + " " + a.objects[1].shape;
    }
    EXPECT_EQ(c.rfind(want, 0), 0u) << c;
    const std::string bg = s.two_tone() ? a.background[0] + " and " + a.background[1] : a.background[0];
    EXPECT_EQ(c.substr(c.size() - bg.size() - 17), " on a " + bg + " background") << c;
    tone += s.two_tone();
  }
  EXPECT_GT(two, 100);
  EXPECT_GT(tone, 80);
  // Known phrases (verb agreement).
  for (int64_t i = 0; i < 400; ++i) {
    const ClipSpec s = sample_clip(2, ClipSplit::Train, i, 64, 64, 9);
    const std::string c = clip_caption(s);
    if (s.objects.size() == 1 && s.objects[0].motion == Motion::LeftToRight)
      EXPECT_NE(c.find(" moves from left to right on a "), std::string::npos) << c;
    if (s.objects.size() == 2 && s.objects[0].motion == Motion::Bounce)
      EXPECT_NE(c.find(" bounce up and down on a "), std::string::npos) << c;
  }
  // Attribute records parse back; broken ones are refused.
  const ClipSpec s = sample_clip(2, ClipSplit::Train, 0, 256, 256, 17);
  const auto j = nlohmann::json::parse(clip_attributes_json(s));
  EXPECT_EQ(j["split"], "train");
  EXPECT_EQ(j["objects"][0]["shape"], shape_name(s.objects[0].shape));
  EXPECT_THROW(parse_clip_attributes("{\"background\": [\"black\"]}"), Error);
  EXPECT_THROW(parse_clip_attributes("not json"), Error);
}

TEST(SyntheticClips, ObjectsStayInsideTheFrameAndApart) {
  for (const auto& [w, h, f] : {std::tuple{64, 64, 9}, std::tuple{256, 256, 17}, std::tuple{320, 192, 33},
                                std::tuple{192, 320, 17}}) {
    for (int64_t i = 0; i < 500; ++i) {
      const ClipSpec s = sample_clip(4, i % 2 ? ClipSplit::Train : ClipSplit::Heldout, i, w, h, f);
      for (int fr = 0; fr < f; ++fr) {
        std::vector<ObjectPose> poses;
        for (const auto& o : s.objects) {
          const ObjectPose p = object_pose(o, fr, f);
          const float e = p.radius * shape_extent(o.shape);
          EXPECT_GT(p.radius, 2.f);
          EXPECT_GE(p.cx - e, 2.f) << clip_caption(s);
          EXPECT_LE(p.cx + e, float(w) - 2.f) << clip_caption(s);
          EXPECT_GE(p.cy - e, 2.f) << clip_caption(s);
          EXPECT_LE(p.cy + e, float(h) - 2.f) << clip_caption(s);
          poses.push_back(p);
          if (::testing::Test::HasFailure()) return;
        }
        if (poses.size() == 2) {
          const float dx = poses[0].cx - poses[1].cx, dy = poses[0].cy - poses[1].cy;
          const float reach = poses[0].radius * shape_extent(s.objects[0].shape) +
                              poses[1].radius * shape_extent(s.objects[1].shape);
          ASSERT_GT(std::sqrt(dx * dx + dy * dy), reach + 2.f) << clip_caption(s);
        }
      }
    }
  }
  // Rendered border pixels are the background (two-tone: top colour above H/2, bottom below).
  for (int64_t i = 0; i < 30; ++i) {
    const ClipSpec s = sample_clip(4, ClipSplit::Train, i, 64, 64, 9);
    const Tensor c = render_clip(s);
    const uint8_t* p = c.data<uint8_t>();
    for (int fr = 0; fr < 9; ++fr)
      for (int y : {0, 1, 31, 32, 62, 63})
        for (int x = 0; x < 64; ++x) {
          const auto& want = background_color(y < 32 ? s.background_top : s.background_bottom).rgb;
          const uint8_t* q = p + ((size_t(fr) * 64 + y) * 64 + x) * 3;
          if (y == 31 || y == 32) {
            if (x > 1 && x < 62) continue;  // the middle rows hold objects
          }
          ASSERT_TRUE(q[0] == want[0] && q[1] == want[1] && q[2] == want[2]) << clip_caption(s) << " y " << y;
        }
  }
}

TEST(SyntheticClips, FloatLayoutAndRange) {
  const Tensor u8 = render_clip(sample_clip(9, ClipSplit::Train, 2, 64, 64, 9));
  const Tensor x = clip_to_float(u8);
  ASSERT_EQ(x.shape(), (Shape{3, 9, 64, 64}));
  ASSERT_EQ(x.dtype(), DType::F32);
  const float* d = x.data<float>();
  const uint8_t* s = u8.data<uint8_t>();
  float lo = 2, hi = -2;
  for (int64_t i = 0; i < x.numel(); ++i) lo = std::min(lo, d[i]), hi = std::max(hi, d[i]);
  EXPECT_GE(lo, -1.f);
  EXPECT_LE(hi, 1.f);
  // Element (c, f, y, x) is u8[f, y, x, c] / 127.5 − 1.
  const int64_t plane = 9 * 64 * 64;
  for (int64_t i : {int64_t(0), int64_t(777), plane - 1})
    for (int c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(d[c * plane + i], float(s[i * 3 + c]) / 127.5f - 1.f);
  // The Wan reference's conversion back (trunc((x + 1) / 2 · 255)) loses at most one level to f32
  // rounding (values just below an integer truncate down); a rounding conversion is exact.
  const Tensor back = io::video_to_rgb8(x).contiguous();
  ASSERT_EQ(back.shape(), u8.shape());
  int worst = 0;
  for (int64_t i = 0; i < u8.numel(); ++i)
    worst = std::max(worst, std::abs(int(back.data<uint8_t>()[i]) - int(s[i])));
  EXPECT_LE(worst, 1);
  for (int64_t i = 0; i < u8.numel(); ++i) {
    const int y = int(i % (64 * 64 * 3)) / (64 * 3), xx = int(i % (64 * 3)) / 3, c = int(i % 3), f = int(i / (64 * 64 * 3));
    ASSERT_EQ(int(std::lround((d[(c * 9 + f) * 64 * 64 + y * 64 + xx] + 1.f) * 127.5f)), int(s[i]));
  }
}

TEST(ClipDataset, WritesReadsAndRefuses) {
  const fs::path dir = fresh_dir("ds");
  ClipDatasetOptions o;
  o.dir = dir.string();
  o.count = 5;
  o.seed = 21;
  o.width = 64;
  o.height = 48;
  o.frames = 9;
  o.clips_per_shard = 2;
  const ClipDatasetSummary sum = write_clip_dataset(o);
  EXPECT_EQ(sum.clips, 5);
  EXPECT_EQ(sum.shards, 3);
  EXPECT_EQ(sum.bytes, uint64_t(5 * 9 * 48 * 64 * 3));
  const ClipDataset ds = read_clip_dataset(o.dir);
  EXPECT_EQ(ds.split, "train");
  EXPECT_EQ(ds.width, 64);
  EXPECT_EQ(ds.height, 48);
  EXPECT_EQ(ds.frames, 9);
  ASSERT_EQ(ds.clips.size(), 5u);
  for (int64_t i = 0; i < 5; ++i) {
    const ClipEntry& e = ds.clips[size_t(i)];
    const ClipSpec s = sample_clip(21, ClipSplit::Train, i, 64, 48, 9);
    EXPECT_EQ(e.id, clip_id(ClipSplit::Train, i));
    EXPECT_EQ(e.caption, clip_caption(s));
    EXPECT_EQ(e.file, i < 2 ? "clips-00000.safetensors" : (i < 4 ? "clips-00001.safetensors" : "clips-00002.safetensors"));
    EXPECT_EQ(e.attributes.objects.size(), s.objects.size());
    const Tensor c = load_dataset_clip(ds, e);
    ASSERT_EQ(c.shape(), (Shape{9, 48, 64, 3}));
    EXPECT_EQ(clip_hash(c), clip_hash(render_clip(s)));
  }
  const auto info = nlohmann::json::parse(read_file(dir / "dataset.json"));
  EXPECT_EQ(info["format"], "osp-synthetic-clips");
  EXPECT_EQ(info["count"], 5);
  EXPECT_EQ(info["shards"].size(), 3u);
  // Same options again, another thread count: the same bytes.
  const fs::path dir2 = fresh_dir("ds2");
  o.dir = dir2.string();
  const int saved = omp_get_max_threads();
  omp_set_num_threads(saved == 1 ? 2 : 1);
  write_clip_dataset(o);
  omp_set_num_threads(saved);
  for (const char* f : {"manifest.jsonl", "dataset.json", "clips-00000.safetensors", "clips-00002.safetensors"})
    EXPECT_EQ(read_file(dir / f), read_file(dir2 / f)) << f;
  // An existing non-empty folder is refused (nothing changes) unless overwrite.
  try {
    write_clip_dataset(o);
    ADD_FAILURE() << "an existing dataset folder was overwritten";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  o.count = 1;
  o.overwrite = io::Overwrite::Allow;
  write_clip_dataset(o);
  EXPECT_EQ(read_clip_dataset(o.dir).clips.size(), 1u);
  // Rules checked before any work.
  ClipDatasetOptions bad = o;
  bad.dir = fresh_dir("never").string();
  auto refuses = [&](ClipDatasetOptions b, const std::string& words) {
    try {
      validate_clip_dataset_options(b);
      ADD_FAILURE() << "accepted, expected an error with '" << words << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  ClipDatasetOptions b = bad;
  b.frames = 16;
  refuses(b, "4n+1");
  b = bad;
  b.width = 100;
  refuses(b, "multiples of 16");
  b = bad;
  b.count = 0;
  refuses(b, "--count");
  EXPECT_FALSE(fs::exists(bad.dir));
  int w = 0, h = 0;
  parse_clip_size("320x192", w, h);
  EXPECT_EQ(w, 320);
  EXPECT_EQ(h, 192);
  EXPECT_THROW(parse_clip_size("320", w, h), Error);
  EXPECT_THROW(parse_clip_size("axb", w, h), Error);
  EXPECT_EQ(parse_clip_split("heldout"), ClipSplit::Heldout);
  EXPECT_THROW(parse_clip_split("test"), Error);
  EXPECT_THROW(read_clip_dataset(bad.dir), Error);
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

TEST(ClipDataset, MakeDatasetCommand) {
  if (!fs::exists(osp_exe())) GTEST_SKIP() << "SKIP: " << osp_exe() << " is not built";
  const fs::path dir = fresh_dir("cli");
  const std::string base = "make-dataset --out " + dir.string() + " --count 3 --seed 5 --size 64x64 --frames 9";
  CmdResult r = run_osp(base + " --split heldout");
  ASSERT_EQ(r.code, 0) << r.out;
  const ClipDataset ds = read_clip_dataset(dir.string());
  ASSERT_EQ(ds.clips.size(), 3u);
  EXPECT_EQ(ds.clips[0].id, "heldout_000000");
  EXPECT_TRUE(ds.clips[0].attributes.heldout);
  r = run_osp(base);  // exists, not empty
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--overwrite"), std::string::npos) << r.out;
  r = run_osp(base + " --overwrite");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_clip_dataset(dir.string()).clips[0].id, "train_000000");
  const std::string other = "make-dataset --out " + fresh_dir("cli_bad").string() + " --count 3";
  r = run_osp(other + " --size 100x64");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("multiples of 16"), std::string::npos) << r.out;
  r = run_osp(other + " --size 64");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("WIDTHxHEIGHT"), std::string::npos) << r.out;
  r = run_osp(other + " --frames 16");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("4n+1"), std::string::npos) << r.out;
  r = run_osp(other + " --split test");
  EXPECT_EQ(r.code, 1) << r.out;
  r = run_osp("make-dataset --count 3");  // no --out
  EXPECT_EQ(r.code, 1) << r.out;
  if (!io::video_writer_available()) {
    r = run_osp(other + " --mp4");
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("FFmpeg"), std::string::npos) << r.out;
  }
  EXPECT_FALSE(fs::exists(fresh_dir("cli_bad")));
  fs::remove_all(dir);
}

TEST(ClipDataset, CtrlCLeavesNothingBehind) {
  if (!fs::exists(osp_exe())) GTEST_SKIP() << "SKIP: " << osp_exe() << " is not built";
  const fs::path dir = fresh_dir("sigint");
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const std::string exe = osp_exe(), out = dir.string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    setenv("OSP_TEST_HOLD_AT", "writing", 1);  // the first safe point of "writing" waits for SIGINT
    execl(exe.c_str(), "osp", "make-dataset", "--out", out.c_str(), "--count", "3", "--size", "64x64", "--frames",
          "5", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string err;
  char buf[512];
  ssize_t n;
  while (err.find("test hold: writing") == std::string::npos && (n = read(fds[0], buf, sizeof buf)) > 0)
    err.append(buf, size_t(n));
  ASSERT_NE(err.find("test hold: writing"), std::string::npos) << err;
  kill(pid, SIGINT);
  while ((n = read(fds[0], buf, sizeof buf)) > 0) err.append(buf, size_t(n));
  close(fds[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st)) << err;
  EXPECT_EQ(WEXITSTATUS(st), 130) << err;
  EXPECT_NE(err.find("nothing written"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir));
  for (const auto& e : fs::directory_iterator(dir.parent_path()))  // no temporary folder left beside it
    EXPECT_EQ(e.path().filename().string().find(dir.filename().string()), std::string::npos) << e.path();
}
