// Training clips from videos (train/video_clips.h): frames resampled to the training frame rate,
// where the windows start (start / spread / seeded random), and the center crop + antialiased
// bicubic resize (constant in → constant out, a copy at scale 1, linear ramps kept, no aliasing
// of a pattern finer than the output grid).
#include <gtest/gtest.h>

#include <cmath>

#include "osp/core/error.h"
#include "osp/train/video_clips.h"

using namespace osp;
using namespace osp::train;

TEST(VideoClips, FramesResampledToTheTrainingRate) {
  EXPECT_EQ(clip_frame_indices(0, 5, 32, 16), (std::vector<int64_t>{0, 2, 4, 6, 8}));
  EXPECT_EQ(clip_frame_indices(3, 5, 30, 16), (std::vector<int64_t>{3, 5, 7, 9, 11}));  // round(k·1.875)
  EXPECT_EQ(clip_frame_indices(0, 4, 24, 16), (std::vector<int64_t>{0, 2, 3, 5}));      // round(k·1.5), halves up
  EXPECT_EQ(clip_frame_indices(2, 3, 16, 16), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(clip_frame_indices(0, 3, 30, 0), (std::vector<int64_t>{0, 1, 2}));  // --fps 0: the video's own
  EXPECT_EQ(clip_frame_indices(0, 3, 0, 16), (std::vector<int64_t>{0, 1, 2}));  // rate unknown
  EXPECT_EQ(clip_frame_indices(0, 3, 8, 16), (std::vector<int64_t>{0, 1, 1}));  // slower source: frames repeat
  EXPECT_EQ(clip_span(81, 30, 16), 151);  // 81 frames at 16 fps of a 30 fps video: 5 s
  EXPECT_EQ(clip_span(81, 16, 16), 81);
}

TEST(VideoClips, WhereTheWindowsStart) {
  EXPECT_EQ(clip_starts(TemporalCrop::Start, 3, 100, 20, 0, 0), (std::vector<int64_t>{0, 20, 40}));
  EXPECT_EQ(clip_starts(TemporalCrop::Start, 3, 50, 20, 0, 0), (std::vector<int64_t>{0, 20, 30}));  // kept inside
  EXPECT_EQ(clip_starts(TemporalCrop::Spread, 3, 100, 20, 0, 0), (std::vector<int64_t>{0, 40, 80}));
  EXPECT_EQ(clip_starts(TemporalCrop::Spread, 1, 100, 20, 0, 0), (std::vector<int64_t>{0}));
  const auto r = clip_starts(TemporalCrop::Random, 64, 100, 20, 5, 3);
  int64_t lo = 100, hi = -1;
  for (int64_t s : r) lo = std::min(lo, s), hi = std::max(hi, s);
  EXPECT_GE(lo, 0);
  EXPECT_LE(hi, 80);
  EXPECT_GT(hi - lo, 40) << "64 uniform starts in [0, 80] spread out";
  EXPECT_EQ(r, clip_starts(TemporalCrop::Random, 64, 100, 20, 5, 3));  // seeded
  EXPECT_NE(r, clip_starts(TemporalCrop::Random, 64, 100, 20, 6, 3));  // another seed
  EXPECT_NE(r, clip_starts(TemporalCrop::Random, 64, 100, 20, 5, 4));  // another item
  EXPECT_EQ(clip_starts(TemporalCrop::Random, 2, 20, 20, 5, 3), (std::vector<int64_t>{0, 0}));  // no room
  EXPECT_THROW(clip_starts(TemporalCrop::Start, 1, 10, 20, 0, 0), Error);
  EXPECT_THROW(parse_temporal_crop("middle"), Error);
}

namespace {

// U8 [F, H, W, 3] with value(f, y, x, c).
template <typename Fn>
Tensor frames(int64_t F, int64_t H, int64_t W, Fn value) {
  Tensor t = Tensor::empty({F, H, W, 3}, DType::U8);
  uint8_t* p = t.data<uint8_t>();
  for (int64_t f = 0; f < F; ++f)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        for (int c = 0; c < 3; ++c) *p++ = uint8_t(value(f, y, x, c));
  return t;
}
float at(const Tensor& v, int c, int64_t f, int64_t y, int64_t x) {
  return v.data<float>()[((c * v.size(1) + f) * v.size(2) + y) * v.size(3) + x];
}

}  // namespace

TEST(VideoClips, CenterCropAndAntialiasedResize) {
  // constant in, constant out (weights sum to 1), any scale
  const Tensor grey = frames(2, 30, 50, [](auto, auto, auto, int c) { return 40 + 60 * c; });
  const Tensor g = center_crop_resize(grey, 16, 16);
  ASSERT_EQ(g.shape(), Shape({3, 2, 16, 16}));
  for (int c = 0; c < 3; ++c)
    for (int64_t y = 0; y < 16; ++y)
      for (int64_t x = 0; x < 16; ++x) EXPECT_NEAR(at(g, c, 1, y, x), (40 + 60 * c) / 127.5 - 1.0, 1e-6);
  // scale 1 on whole pixels: the centered crop itself (48x32 → 32x32: columns 8..39)
  auto pat = [](int64_t f, int64_t y, int64_t x, int c) { return (x * 7 + y * 13 + f * 31 + c * 50) % 256; };
  const Tensor p = frames(1, 32, 48, pat);
  const Tensor q = center_crop_resize(p, 32, 32);
  for (int c = 0; c < 3; ++c)
    for (int64_t y = 0; y < 32; ++y)
      for (int64_t x = 0; x < 32; ++x) ASSERT_EQ(at(q, c, 0, y, x), float(pat(0, y, x + 8, c) / 127.5 - 1.0));
  // a linear ramp downscaled by 2 keeps its values at the output pixels' centres (interior)
  const Tensor ramp = frames(1, 8, 64, [](auto, auto, int64_t x, int) { return 2 * x + 20; });
  const Tensor r = center_crop_resize(ramp, 32, 4);
  for (int64_t x = 4; x < 28; ++x) EXPECT_NEAR(at(r, 0, 0, 1, x), (2.0 * (2 * x + 0.5) + 20) / 127.5 - 1.0, 1e-6) << x;
  // 1-pixel stripes 0/255 downscaled by 3: the antialiasing filter averages them (~grey); point
  // sampling would alias them into full-contrast stripes
  const Tensor stripes = frames(1, 6, 48, [](auto, auto, int64_t x, int) { return x % 2 ? 255 : 0; });
  const Tensor s = center_crop_resize(stripes, 16, 2);
  for (int64_t x = 2; x < 14; ++x) EXPECT_NEAR(at(s, 0, 0, 1, x), 0.0, 0.2) << x;
  EXPECT_THROW(center_crop_resize(Tensor::empty({2, 8, 8}, DType::U8), 4, 4), Error);
}
