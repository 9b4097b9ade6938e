#include "osp/train/video_clips.h"

#include <algorithm>
#include <cmath>

#include "osp/core/error.h"
#include "osp/core/philox.h"

namespace osp::train {

TemporalCrop parse_temporal_crop(const std::string& s) {
  if (s == "start") return TemporalCrop::Start;
  if (s == "spread") return TemporalCrop::Spread;
  if (s == "random") return TemporalCrop::Random;
  fail(str("--temporal-crop must be start, spread or random, got '", s, "'"));
}

std::vector<int64_t> clip_frame_indices(int64_t first, int64_t frames, double src_fps, double fps) {
  OSP_CHECK(frames >= 1 && first >= 0, "clip_frame_indices: frames ", frames, ", first ", first);
  const double step = fps > 0 && src_fps > 0 ? src_fps / fps : 1.0;
  std::vector<int64_t> idx(static_cast<size_t>(frames));
  for (int64_t k = 0; k < frames; ++k) idx[size_t(k)] = first + int64_t(std::llround(double(k) * step));
  return idx;
}

int64_t clip_span(int64_t frames, double src_fps, double fps) {
  return clip_frame_indices(0, frames, src_fps, fps).back() + 1;
}

std::vector<int64_t> clip_starts(TemporalCrop crop, int64_t count, int64_t src_frames, int64_t span, uint64_t seed,
                                 uint64_t item) {
  OSP_CHECK(count >= 1 && span >= 1 && src_frames >= span, "clip_starts: ", count, " windows of ", span,
            " frames in a video of ", src_frames);
  const int64_t room = src_frames - span;  // the last possible start
  std::vector<int64_t> s(static_cast<size_t>(count));
  if (crop == TemporalCrop::Random) {
    std::vector<float> u(static_cast<size_t>(count));
    philox_uniform(seed, /*stream=*/0x7e1du, item << 16, u.data(), count);
    for (int64_t w = 0; w < count; ++w) s[size_t(w)] = std::min(room, int64_t(double(u[size_t(w)]) * double(room + 1)));
  } else if (crop == TemporalCrop::Spread) {
    for (int64_t w = 0; w < count; ++w)
      s[size_t(w)] = count == 1 ? 0 : int64_t(std::llround(double(w) * double(room) / double(count - 1)));
  } else {
    for (int64_t w = 0; w < count; ++w) s[size_t(w)] = std::min(room, w * span);
  }
  return s;
}

namespace {

// Keys' cubic convolution kernel with a = −0.5 (PIL's and torchvision's antialiased bicubic).
double cubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

// The taps of resizing `in` source pixels to `out`: for output i, the first source pixel and
// the normalised weights (support 2·max(scale, 1) around the output pixel's centre).
struct Taps {
  std::vector<int64_t> first;
  std::vector<std::vector<double>> w;
};
Taps resample_taps(int64_t in, int64_t out) {
  Taps t;
  const double scale = double(in) / double(out), filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  for (int64_t i = 0; i < out; ++i) {
    const double center = (double(i) + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(0, int64_t(std::floor(center - support + 0.5)));
    const int64_t hi = std::min<int64_t>(in, int64_t(std::floor(center + support + 0.5)));
    std::vector<double> w;
    double sum = 0;
    for (int64_t j = lo; j < hi; ++j) {
      w.push_back(cubic((double(j) + 0.5 - center) / filter_scale));
      sum += w.back();
    }
    for (double& x : w) x /= sum;
    t.first.push_back(lo);
    t.w.push_back(std::move(w));
  }
  return t;
}

}  // namespace

Tensor center_crop_resize(const Tensor& rgb, int64_t out_w, int64_t out_h) {
  OSP_CHECK(rgb.dim() == 4 && rgb.size(3) == 3 && rgb.dtype() == DType::U8 && rgb.device().is_cpu(),
            "center_crop_resize: expected U8 RGB frames [F, H, W, 3] on the CPU, got ", rgb.desc());
  OSP_CHECK(out_w >= 1 && out_h >= 1, "center_crop_resize: output ", out_w, "x", out_h);
  const Tensor src_t = rgb.contiguous();
  const int64_t F = src_t.size(0), H = src_t.size(1), W = src_t.size(2);
  // the largest centered crop of the target aspect, in whole pixels
  int64_t cw = W, ch = H;
  if (W * out_h > H * out_w) cw = std::max<int64_t>(1, int64_t(std::llround(double(H) * double(out_w) / double(out_h))));
  else ch = std::max<int64_t>(1, int64_t(std::llround(double(W) * double(out_h) / double(out_w))));
  const int64_t x0 = (W - cw) / 2, y0 = (H - ch) / 2;
  const Taps tx = resample_taps(cw, out_w), ty = resample_taps(ch, out_h);
  const uint8_t* src = src_t.data<uint8_t>();
  Tensor out = Tensor::empty({3, F, out_h, out_w}, DType::F32);
  float* dst = out.data<float>();
  std::vector<double> rows(size_t(ch * out_w * 3));  // one frame after the horizontal pass
  for (int64_t f = 0; f < F; ++f) {
    for (int64_t y = 0; y < ch; ++y) {
      const uint8_t* line = src + ((f * H + y0 + y) * W + x0) * 3;
      for (int64_t x = 0; x < out_w; ++x) {
        double acc[3] = {0, 0, 0};
        const auto& w = tx.w[size_t(x)];
        for (size_t k = 0; k < w.size(); ++k) {
          const uint8_t* p = line + (tx.first[size_t(x)] + int64_t(k)) * 3;
          for (int c = 0; c < 3; ++c) acc[c] += w[k] * double(p[c]);
        }
        for (int c = 0; c < 3; ++c) rows[size_t((y * out_w + x) * 3 + c)] = acc[c];
      }
    }
    for (int64_t y = 0; y < out_h; ++y) {
      const auto& w = ty.w[size_t(y)];
      for (int64_t x = 0; x < out_w; ++x)
        for (int c = 0; c < 3; ++c) {
          double acc = 0;
          for (size_t k = 0; k < w.size(); ++k) acc += w[k] * rows[size_t(((ty.first[size_t(y)] + int64_t(k)) * out_w + x) * 3 + c)];
          // the filter overshoots at edges (negative lobes): clamp to the pixel range first
          dst[((c * F + f) * out_h + y) * out_w + x] = float(std::clamp(acc, 0.0, 255.0) / 127.5 - 1.0);
        }
    }
  }
  return out;
}

}  // namespace osp::train
