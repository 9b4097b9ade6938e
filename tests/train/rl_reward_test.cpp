// Rewards for osp rl (train/reward.h): the caption grammar parsed back, built-in rewards on
// rendered clips (the intended prompt scores 1, a wrong one less, noise has no temporal
// consistency), and the external JSON-lines scorer: a good scorer, one that crashes, one that
// hangs (short timeout) and one that answers garbage each give the expected score or a clear
// error.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "osp/core/philox.h"
#include "osp/train/reward.h"
#include "osp/train/synthetic_clips.h"

using namespace osp;
using namespace osp::train;
namespace fs = std::filesystem;

namespace {

fs::path tmp_dir() {
  const fs::path d = fs::temp_directory_path() / ("osp_rl_reward_test_" + std::to_string(getpid()));
  fs::create_directories(d);
  return d;
}

std::string script(const std::string& name, const std::string& body) {
  const fs::path p = tmp_dir() / name;
  std::ofstream(p) << "#!/bin/sh\n" << body;
  fs::permissions(p, fs::perms::owner_all);
  return p.string();
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an osp::Error";
  } catch (const Error& e) {
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message '" << e.what() << "' does not mention '" << n << "'";
  }
}

RewardSample sample_of(const ClipSpec& spec, int64_t id) {
  RewardSample s;
  s.video = clip_to_float(render_clip(spec));
  s.prompt = clip_caption(spec);
  s.id = id;
  return s;
}

}  // namespace

TEST(RlReward, CaptionGrammarParsesBack) {
  for (int64_t i = 0; i < 60; ++i) {
    const ClipSpec spec = sample_clip(3, ClipSplit::Train, i, 64, 64, 9);
    const ClipAttributes want = clip_attributes(spec);
    const ClipAttributes got = parse_clip_caption(clip_caption(spec));
    ASSERT_EQ(got.background, want.background) << clip_caption(spec);
    ASSERT_EQ(got.objects.size(), want.objects.size());
    for (size_t k = 0; k < got.objects.size(); ++k) {
      EXPECT_EQ(got.objects[k].color, want.objects[k].color);
      EXPECT_EQ(got.objects[k].shape, want.objects[k].shape);
      EXPECT_EQ(got.objects[k].motion, want.objects[k].motion);
    }
  }
  expect_error([] { parse_clip_caption("a cat on a mat"); }, {"a cat on a mat", "grammar"});
  expect_error([] { parse_clip_caption("a purple circle moves up on a black background"); },
               {"unknown colour 'purple'"});
}

TEST(RlReward, BuiltinRewardsOnRenderedClips) {
  auto adh = make_builtin_reward("builtin:adherence");
  auto tmp = make_builtin_reward("builtin:temporal:0.5");
  auto cnt = make_builtin_reward("builtin:count");
  EXPECT_EQ(cnt->name(), "count");
  int count_right = 0, count_swapped = 0, count_mismatched = 0;
  EXPECT_EQ(adh->name(), "adherence");
  EXPECT_EQ(tmp->weight(), 0.5);
  double sum_right = 0, sum_wrong = 0;
  const int n = 8;
  for (int64_t i = 0; i < n; ++i) {
    const ClipSpec spec = sample_clip(5, ClipSplit::Train, i, 128, 128, 9);
    RewardSample s = sample_of(spec, i);
    sum_right += adh->score(s);
    EXPECT_DOUBLE_EQ(tmp->score(s), 1.0) << "a clean render never flickers";
    const double c = cnt->score(s);
    EXPECT_TRUE(c == 0.0 || c == 1.0) << c;
    count_right += int(c);
    // the same clip against a caption with the other object count (1 <-> 2 objects): wrong count
    {
      RewardSample t = s;
      const ClipAttributes a = clip_attributes(spec);
      for (int64_t j = 1000; j < 1100; ++j) {
        const ClipSpec other = sample_clip(5, ClipSplit::Train, j, 128, 128, 9);
        if (clip_attributes(other).objects.size() != a.objects.size()) {
          t.prompt = clip_caption(other);
          break;
        }
      }
      ASSERT_NE(t.prompt, s.prompt);
      count_swapped += int(cnt->score(t));
      ++count_mismatched;
    }
    // the same clip against another clip's prompt
    s.prompt = clip_caption(sample_clip(5, ClipSplit::Train, i + 100, 128, 128, 9));
    sum_wrong += adh->score(s);
    // attributes win over the caption
    s.has_attributes = true;
    s.attributes = clip_attributes(spec);
    EXPECT_EQ(adh->score(s), adh->score(sample_of(spec, i)));
  }
  EXPECT_GE(sum_right / n, 0.9);
  EXPECT_GE(count_right, n - 1) << "the detector counts clean renders";
  EXPECT_LE(count_swapped, 1) << "a caption with the other object count scores 0";
  EXPECT_EQ(count_mismatched, n);
  EXPECT_LT(sum_wrong / n, sum_right / n - 0.2);
  RewardSample noise;
  noise.video = randn({3, 9, 64, 64}, 1);
  noise.prompt = "a red circle moves up on a black background";
  EXPECT_LT(tmp->score(noise), 0.2);
  expect_error([] { make_builtin_reward("builtin:beauty"); }, {"unknown built-in 'beauty'"});
  expect_error([] { make_builtin_reward("builtin:shape:-1"); }, {"weight"});
}

TEST(RlReward, ExternalScorerGoodCrashHangGarbage) {
  const ClipSpec spec = sample_clip(7, ClipSplit::Train, 0, 64, 64, 5);
  RewardSample s = sample_of(spec, 3);
  ExternalRewardOptions o;
  o.video_dir = (tmp_dir() / "videos").string();
  o.timeout_s = 10;
  // good: answers 0.25 for every request whose video file exists.
  o.command = script("good.sh",
                     "while IFS= read -r line; do\n"
                     "  v=$(printf '%s' \"$line\" | sed 's/.*\"video\":\"\\([^\"]*\\)\".*/\\1/')\n"
                     "  if [ -e \"$v\" ]; then echo '{\"score\": 0.25}'; else echo 'missing'; fi\n"
                     "done\n");
  {
    ExternalReward r(o);
    EXPECT_EQ(r.score(s), 0.25);
    s.id = 4;
    EXPECT_EQ(r.score(s), 0.25);  // the process stays alive between samples
    const std::vector<double> b = r.score_batch({s, s});
    EXPECT_EQ(b, (std::vector<double>{0.25, 0.25}));
  }
  o.command = "while IFS= read -r line; do echo 1.5; done";
  {
    ExternalReward r(o);
    EXPECT_EQ(r.score(s), 1.5);  // a bare number is accepted
  }
  o.command = script("crash.sh", "read line\necho 'oops' >&2\nexit 3\n");
  {
    ExternalReward r(o);
    expect_error([&] { r.score(s); }, {"crash.sh", "closed its output", "status 3"});
    expect_error([&] { r.score(s); }, {"no longer running"});
  }
  o.command = script("hang.sh", "read line\nsleep 30\n");
  o.timeout_s = 0.5;
  {
    ExternalReward r(o);
    const auto t0 = std::chrono::steady_clock::now();
    expect_error([&] { r.score(s); }, {"hang.sh", "no reply", "0.5 s"});
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  }
  o.timeout_s = 10;
  o.command = script("garbage.sh", "while IFS= read -r line; do echo 'hello world'; done\n");
  {
    ExternalReward r(o);
    expect_error([&] { r.score(s); }, {"garbage.sh", "not a finite number", "hello world"});
  }
  o.command = "while IFS= read -r line; do echo '{\"score\": \"high\"}'; done";
  {
    ExternalReward r(o);
    expect_error([&] { r.score(s); }, {"not a finite number"});
  }
  fs::remove_all(tmp_dir());
}
