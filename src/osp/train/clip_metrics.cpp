#include "osp/train/clip_metrics.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "osp/core/error.h"

namespace osp::train {

namespace {

using Json = nlohmann::json;
using RGB = std::array<float, 3>;

constexpr int kBins = 32;
constexpr float kPi = 3.14159265358979f;

float dist2(const RGB& a, const RGB& b) {
  const float x = a[0] - b[0], y = a[1] - b[1], z = a[2] - b[2];
  return x * x + y * y + z * z;
}
RGB to_rgb(const std::array<uint8_t, 3>& c) { return {float(c[0]), float(c[1]), float(c[2])}; }
RGB pixel(const uint8_t* p) { return {float(p[0]), float(p[1]), float(p[2])}; }

float median(std::vector<float>& v) {
  if (v.empty()) return 0.f;
  const size_t m = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + m, v.end());
  return v[m];
}

int nearest_background(const RGB& c) {
  int best = 0;
  for (int i = 1; i < kNumBackgrounds; ++i)
    if (dist2(c, to_rgb(background_color(i).rgb)) < dist2(c, to_rgb(background_color(best).rgb))) best = i;
  return best;
}

// Shape features of one object in one frame, from its core pixels.
struct FrameShape {
  int64_t area = 0;
  float cx = 0, cy = 0;  // pixels
  float fill = 0, radial = 0, a3 = 0, a4 = 0;
  float phase3 = 0, phase4 = 0;  // arg c_3, arg c_4: a rotation by Δ adds k·Δ
  bool hole = false;
  std::array<float, kBins> profile{};  // max extent per angle bin, pixels
};

FrameShape measure_shape(const std::vector<std::pair<int, int>>& pts) {
  FrameShape s;
  s.area = int64_t(pts.size());
  if (pts.empty()) return s;
  double sx = 0, sy = 0;
  int xmin = pts[0].first, xmax = xmin, ymin = pts[0].second, ymax = ymin;
  for (const auto& [x, y] : pts) {
    sx += x + 0.5;
    sy += y + 0.5;
    xmin = std::min(xmin, x), xmax = std::max(xmax, x), ymin = std::min(ymin, y), ymax = std::max(ymax, y);
  }
  s.cx = float(sx / double(pts.size()));
  s.cy = float(sy / double(pts.size()));
  std::array<float, kBins> prof;
  prof.fill(-1.f);
  float rmax = 0.f;
  for (const auto& [x, y] : pts) {
    const float dx = float(x) + 0.5f - s.cx, dy = float(y) + 0.5f - s.cy;
    const float r = std::sqrt(dx * dx + dy * dy) + 0.5f;
    rmax = std::max(rmax, r);
    int b = int(std::floor((std::atan2(dy, dx) + kPi) / (2.f * kPi) * float(kBins)));
    b = ((b % kBins) + kBins) % kBins;
    prof[size_t(b)] = std::max(prof[size_t(b)], r);
  }
  // Angle bins without a pixel (tiny objects): interpolate between the nearest filled bins.
  std::array<float, kBins> filled = prof;
  for (int b = 0; b < kBins; ++b) {
    if (prof[size_t(b)] >= 0.f) continue;
    int l = 1, r = 1;
    while (l < kBins && prof[size_t((b - l + kBins) % kBins)] < 0.f) ++l;
    while (r < kBins && prof[size_t((b + r) % kBins)] < 0.f) ++r;
    const float vl = std::max(0.f, prof[size_t((b - l + kBins) % kBins)]);
    const float vr = std::max(0.f, prof[size_t((b + r) % kBins)]);
    filled[size_t(b)] = (vl * float(r) + vr * float(l)) / float(l + r);
  }
  s.profile = filled;
  const float pmin = *std::min_element(filled.begin(), filled.end());
  const float pmax = *std::max_element(filled.begin(), filled.end());
  s.radial = pmax > 0 ? pmin / pmax : 0.f;
  s.fill = rmax > 0 ? float(double(s.area) / (double(kPi) * rmax * rmax)) : 0.f;
  // Harmonics of the profile: |c_k| / c_0 for k = 3 (triangle) and 4 (square, cross).
  double c0 = 0;
  for (float v : filled) c0 += v;
  for (int k : {3, 4}) {
    double re = 0, im = 0;
    for (int b = 0; b < kBins; ++b) {
      re += filled[size_t(b)] * std::cos(2.0 * M_PI * k * b / kBins);
      im += filled[size_t(b)] * std::sin(2.0 * M_PI * k * b / kBins);
    }
    (k == 3 ? s.a3 : s.a4) = c0 > 0 ? float(std::sqrt(re * re + im * im) / c0) : 0.f;
    (k == 3 ? s.phase3 : s.phase4) = float(std::atan2(im, re));
  }
  // Holes: background inside the bounding box that a flood fill from the box's border cannot reach.
  const int bw = xmax - xmin + 3, bh = ymax - ymin + 3;
  std::vector<uint8_t> grid(size_t(bw) * bh, 0);  // 1 object, 2 reached
  for (const auto& [x, y] : pts) grid[size_t(y - ymin + 1) * bw + (x - xmin + 1)] = 1;
  std::vector<int> stack{0};
  grid[0] = 2;
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    const int x = i % bw, y = i / bw;
    const int nb[4][2] = {{x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1}};
    for (const auto& n : nb) {
      if (n[0] < 0 || n[1] < 0 || n[0] >= bw || n[1] >= bh) continue;
      const int j = n[1] * bw + n[0];
      if (grid[size_t(j)] == 0) {
        grid[size_t(j)] = 2;
        stack.push_back(j);
      }
    }
  }
  const int64_t holes = std::count(grid.begin(), grid.end(), uint8_t(0));
  s.hole = holes >= std::max<int64_t>(2, s.area / 20);
  return s;
}

// Thresholds measured on renders at 64x64 to 256x256, clean, blurred + noisy and through H.264
// (see the header): the angular profile's 3rd harmonic marks a triangle, a weak 4th a circle;
// square and cross (both 4-fold) differ in the depth of the 4th harmonic and the min/max ratio.
const char* classify_shape(const FrameShape& s) {
  if (s.area < 12) return "";
  if (s.hole) return "ring";
  if (s.a3 >= 0.09f && s.a3 > s.a4) return "triangle";
  if (s.a4 < 0.032f) return "circle";
  const float dsq = std::pow((s.a4 - 0.075f) / 0.085f, 2.f) + std::pow((s.radial - 0.70f) / 0.22f, 2.f);
  const float dcr = std::pow((s.a4 - 0.16f) / 0.085f, 2.f) + std::pow((s.radial - 0.48f) / 0.22f, 2.f);
  return dsq <= dcr ? "square" : "cross";
}

// Mean |a(i) − b(i − k)| of two angular profiles normalised by their means.
float profile_distance(const std::array<float, kBins>& a, const std::array<float, kBins>& b, int k) {
  float ma = 0, mb = 0;
  for (int i = 0; i < kBins; ++i) ma += a[size_t(i)], mb += b[size_t(i)];
  ma = std::max(ma / kBins, 1e-6f);
  mb = std::max(mb / kBins, 1e-6f);
  float d = 0;
  for (int i = 0; i < kBins; ++i) d += std::fabs(a[size_t(i)] / ma - b[size_t((i - k + kBins) % kBins)] / mb);
  return d / kBins;
}

struct Canon {
  int64_t F = 0, H = 0, W = 0;
};

}  // namespace

Tensor clip_to_rgb8(const Tensor& clip) {
  OSP_CHECK(clip.defined() && clip.dim() == 4, "a clip must be U8 [F, H, W, 3] or float [3, F, H, W], got ",
            clip.defined() ? clip.desc() : std::string("an undefined tensor"));
  if (clip.dtype() == DType::U8) {
    OSP_CHECK(clip.size(3) == 3, "a U8 clip must be [F, H, W, 3] (RGB), got ", clip.desc());
    return clip.to(Device::cpu()).contiguous();
  }
  OSP_CHECK(clip.dtype() == DType::F32 || clip.dtype() == DType::BF16 || clip.dtype() == DType::F16,
            "a clip must be U8 [F, H, W, 3] or float [3, F, H, W], got ", clip.desc());
  OSP_CHECK(clip.size(0) == 3, "a float clip must be [3, F, H, W] (channels first, like the VAE), got ",
            clip.desc());
  const Tensor f = clip.to(Device::cpu()).to(DType::F32).contiguous();
  const int64_t F = f.size(1), H = f.size(2), W = f.size(3), plane = F * H * W;
  Tensor out = Tensor::empty({F, H, W, 3}, DType::U8);
  const float* s = f.data<float>();
  uint8_t* d = out.data<uint8_t>();
#pragma omp parallel for if (plane > (1 << 18))
  for (int64_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) {
      const float x = std::clamp(s[c * plane + i], -1.f, 1.f);
      d[i * 3 + c] = uint8_t(std::lround((x + 1.f) * 127.5f));
    }
  return out;
}

ClipDetection detect_clip(const Tensor& clip) {
  const Tensor v = clip_to_rgb8(clip);
  const int F = int(v.size(0)), H = int(v.size(1)), W = int(v.size(2));
  OSP_CHECK(F >= 1 && H >= 8 && W >= 8, "detect_clip: clip too small: ", v.desc());
  const uint8_t* px = v.data<uint8_t>();
  const size_t frame_px = size_t(H) * W;
  auto at = [&](int f, int y, int x) { return px + ((size_t(f) * H + y) * W + x) * 3; };
  ClipDetection det;

  // ---- background: medians of the border, top and bottom halves
  std::array<std::vector<float>, 3> top, bot;
  for (int f = 0; f < F; ++f)
    for (int y = 0; y < H; ++y) {
      const bool edge_row = y < 2 || y >= H - 2;
      for (int x = 0; x < W; ++x) {
        if (!edge_row && x >= 2 && x < W - 2) continue;
        const uint8_t* p = at(f, y, x);
        auto& dst = y < H / 2 ? top : bot;
        for (int c = 0; c < 3; ++c) dst[size_t(c)].push_back(float(p[c]));
      }
    }
  RGB bt, bb;
  for (int c = 0; c < 3; ++c) bt[size_t(c)] = median(top[size_t(c)]), bb[size_t(c)] = median(bot[size_t(c)]);
  const int nt = nearest_background(bt), nb = nearest_background(bb);
  det.background.push_back(background_color(nt).name);
  if (nb != nt) det.background.push_back(background_color(nb).name);
  std::vector<RGB> bg_cands;
  for (float w : {0.f, 0.25f, 0.5f, 0.75f, 1.f})
    bg_cands.push_back({bt[0] * (1 - w) + bb[0] * w, bt[1] * (1 - w) + bb[1] * w, bt[2] * (1 - w) + bb[2] * w});
  std::array<RGB, kNumObjectColors> palette;
  for (int i = 0; i < kNumObjectColors; ++i) palette[size_t(i)] = to_rgb(object_color(i).rgb);

  // ---- per-pixel labels: 255 background, else the nearest object colour; bgd = distance² to background
  std::vector<uint8_t> label(size_t(F) * frame_px);
  std::vector<float> bgd(size_t(F) * frame_px);
#pragma omp parallel for if (int64_t(F) * int64_t(frame_px) > (1 << 18))
  for (int64_t i = 0; i < int64_t(F) * int64_t(frame_px); ++i) {
    const RGB c = pixel(px + size_t(i) * 3);
    float db = std::numeric_limits<float>::max();
    for (const auto& b : bg_cands) db = std::min(db, dist2(c, b));
    int best = 0;
    float dobj = dist2(c, palette[0]);
    for (int k = 1; k < kNumObjectColors; ++k) {
      const float d = dist2(c, palette[size_t(k)]);
      if (d < dobj) dobj = d, best = k;
    }
    label[size_t(i)] = dobj < db ? uint8_t(best) : uint8_t(255);
    bgd[size_t(i)] = db;
  }

  // ---- components per frame; per colour the largest one, reduced to its core pixels
  const int64_t min_area = std::max<int64_t>(4, int64_t(frame_px) / 2000);
  std::vector<int> counts(size_t(F), 0);
  // shapes[colour][frame]
  std::vector<std::vector<FrameShape>> shapes(kNumObjectColors, std::vector<FrameShape>(size_t(F)));
  std::vector<int> comp(frame_px);
  for (int f = 0; f < F; ++f) {
    const uint8_t* lab = label.data() + size_t(f) * frame_px;
    std::fill(comp.begin(), comp.end(), -1);
    std::array<std::vector<int>, kNumObjectColors> best_pix;
    int ncomp = 0;
    std::vector<int> pix, stack;
    for (size_t s0 = 0; s0 < frame_px; ++s0) {
      if (lab[s0] == 255 || comp[s0] >= 0) continue;
      pix.clear();
      stack.assign(1, int(s0));
      comp[s0] = ncomp;
      while (!stack.empty()) {
        const int i = stack.back();
        stack.pop_back();
        pix.push_back(i);
        const int x = i % W, y = i / W;
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const int xx = x + dx, yy = y + dy;
            if (xx < 0 || yy < 0 || xx >= W || yy >= H) continue;
            const int j = yy * W + xx;
            if (lab[j] != 255 && comp[size_t(j)] < 0) {
              comp[size_t(j)] = ncomp;
              stack.push_back(j);
            }
          }
      }
      ++ncomp;
      if (int64_t(pix.size()) < min_area) continue;
      ++counts[size_t(f)];
      std::array<int64_t, kNumObjectColors> votes{};
      for (int i : pix) ++votes[lab[i]];
      const int col = int(std::max_element(votes.begin(), votes.end()) - votes.begin());
      if (pix.size() > best_pix[size_t(col)].size()) best_pix[size_t(col)] = pix;
    }
    for (int col = 0; col < kNumObjectColors; ++col) {
      const auto& bp = best_pix[size_t(col)];
      if (bp.empty()) continue;
      // The object's own colour: the median of its pixels labelled with it.
      std::array<std::vector<float>, 3> ch;
      for (int i : bp)
        if (lab[i] == col)
          for (int c = 0; c < 3; ++c) ch[size_t(c)].push_back(float(px[(size_t(f) * frame_px + size_t(i)) * 3 + c]));
      const RGB oc{median(ch[0]), median(ch[1]), median(ch[2])};
      std::vector<std::pair<int, int>> core;
      for (int i : bp) {
        const size_t g = size_t(f) * frame_px + size_t(i);
        if (dist2(pixel(px + g * 3), oc) < bgd[g]) core.push_back({i % W, i / W});
      }
      if (core.empty())
        for (int i : bp) core.push_back({i % W, i / W});
      shapes[size_t(col)][size_t(f)] = measure_shape(core);
    }
  }
  {
    std::map<int, int> freq;
    for (int c : counts) ++freq[c];
    int best = 0, bestn = -1;
    for (const auto& [c, n] : freq)
      if (n > bestn) best = c, bestn = n;
    det.count = best;
  }

  // ---- objects: colours present in at least half of the frames
  for (int col = 0; col < kNumObjectColors; ++col) {
    const auto& tr = shapes[size_t(col)];
    std::vector<int> seen;
    for (int f = 0; f < F; ++f)
      if (tr[size_t(f)].area > 0) seen.push_back(f);
    if (seen.empty() || 2 * int(seen.size()) < F) continue;
    DetectedObject o;
    o.color = object_color(col).name;
    o.frames_seen = int(seen.size());
    const FrameShape& first = tr[size_t(seen.front())];
    const FrameShape& last = tr[size_t(seen.back())];
    o.start_x = first.cx / float(W), o.start_y = first.cy / float(H);
    o.end_x = last.cx / float(W), o.end_y = last.cy / float(H);
    int64_t amax = 0;
    double asum = 0;
    float ymin = 1e9f, ymax = -1e9f;
    for (int f : seen) {
      amax = std::max(amax, tr[size_t(f)].area);
      asum += double(tr[size_t(f)].area);
      ymin = std::min(ymin, tr[size_t(f)].cy / float(H));
      ymax = std::max(ymax, tr[size_t(f)].cy / float(H));
    }
    o.mean_area = float(asum / double(seen.size()) / double(frame_px));
    // Shape: majority over the frames with at least half the largest area.
    std::map<std::string, int> votes;
    int voters = 0;
    for (int f : seen) {
      const FrameShape& s = tr[size_t(f)];
      if (2 * s.area < amax) continue;
      const std::string name = classify_shape(s);
      if (name.empty()) continue;
      ++votes[name];
      ++voters;
      if (s.area == amax) o.fill = s.fill, o.radial = s.radial, o.a3 = s.a3, o.a4 = s.a4;
    }
    o.shape = "unknown";
    int top_votes = 0;
    for (const auto& [name, n] : votes)
      if (n > top_votes) o.shape = name, top_votes = n;
    o.shape_stability = voters > 0 ? float(top_votes) / float(voters) : 0.f;
    // Motion.
    const size_t n = seen.size();
    const double a0 = n >= 2 ? 0.5 * double(tr[size_t(seen[0])].area + tr[size_t(seen[1])].area) : double(first.area);
    const double a1 =
        n >= 2 ? 0.5 * double(tr[size_t(seen[n - 1])].area + tr[size_t(seen[n - 2])].area) : double(last.area);
    o.area_ratio = float(a1 / std::max(a0, 1.0));
    const float dx = o.end_x - o.start_x, dy = o.end_y - o.start_y;
    const float travel = std::max(std::fabs(dx), std::fabs(dy));
    if (travel < 0.2f && o.area_ratio > 1.6f) {  // a large displacement is a move, whatever the area does
      o.motion = "grow";
    } else if (travel < 0.2f && o.area_ratio < 1.f / 1.6f) {
      o.motion = "shrink";
    } else if (travel >= 0.12f) {
      if (std::fabs(dx) >= std::fabs(dy))
        o.motion = dx > 0 ? "left_to_right" : "right_to_left";
      else
        o.motion = dy > 0 ? "down" : "up";
    } else if (ymax - ymin >= 0.1f) {
      o.motion = "bounce";
    } else {
      float best = std::numeric_limits<float>::max();
      for (int k = 1; k < kBins; ++k) best = std::min(best, profile_distance(last.profile, first.profile, k));
      const float d0 = profile_distance(last.profile, first.profile, 0);
      // Orientation change from the phase of the dominant harmonic (k = 3 or 4): robust to blur.
      const bool tri = first.a3 > first.a4;
      const float ak0 = tri ? first.a3 : first.a4, ak1 = tri ? last.a3 : last.a4;
      float dphase = tri ? last.phase3 - first.phase3 : last.phase4 - first.phase4;
      dphase = std::remainder(dphase, 2.f * kPi);
      const bool turned = ak0 >= 0.02f && ak1 >= 0.02f && std::fabs(dphase) >= 0.6f;
      o.motion = (n >= 2 && (turned || (d0 > 0.04f && d0 > 2.f * best))) ? "rotate" : "static";
    }
    det.objects.push_back(o);
  }
  std::sort(det.objects.begin(), det.objects.end(),
            [](const DetectedObject& a, const DetectedObject& b) { return a.mean_area > b.mean_area; });

  // ---- temporal consistency
  if (F >= 2) {
    // near[f]: foreground dilated by 2 px (Chebyshev).
    std::vector<uint8_t> near(size_t(F) * frame_px, 0), tmp(frame_px);
    for (int f = 0; f < F; ++f) {
      const uint8_t* lab = label.data() + size_t(f) * frame_px;
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          uint8_t m = 0;
          for (int k = std::max(0, x - 2); k <= std::min(W - 1, x + 2) && !m; ++k) m = lab[size_t(y) * W + k] != 255;
          tmp[size_t(y) * W + x] = m;
        }
      uint8_t* nr = near.data() + size_t(f) * frame_px;
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          uint8_t m = 0;
          for (int k = std::max(0, y - 2); k <= std::min(H - 1, y + 2) && !m; ++k) m = tmp[size_t(k) * W + x];
          nr[size_t(y) * W + x] = m;
        }
    }
    double all = 0, bgsum = 0;
    int64_t bgn = 0;
    for (int f = 0; f + 1 < F; ++f)
      for (size_t i = 0; i < frame_px; ++i) {
        const uint8_t* a = px + (size_t(f) * frame_px + i) * 3;
        const uint8_t* b = a + frame_px * 3;
        const double d = (std::abs(int(a[0]) - int(b[0])) + std::abs(int(a[1]) - int(b[1])) +
                          std::abs(int(a[2]) - int(b[2]))) /
                         (3.0 * 255.0);
        all += d;
        if (!near[size_t(f) * frame_px + i] && !near[size_t(f + 1) * frame_px + i]) bgsum += d, ++bgn;
      }
    det.frame_change = all / (double(F - 1) * double(frame_px));
    // Hardly any stable background (a clip of noise): every pixel counts as background.
    const bool enough = double(bgn) >= 0.05 * double(F - 1) * double(frame_px);
    det.background_flicker = enough ? bgsum / double(bgn) : det.frame_change;
  }
  return det;
}

AdherenceScore score_adherence(const ClipAttributes& want, const ClipDetection& got) {
  AdherenceScore s;
  s.background = want.background == got.background;
  s.count = got.count == int(want.objects.size());
  s.objects = int(want.objects.size());
  // Only the largest detected objects, as many as intended, can match: a clip full of coloured
  // blobs (noise) must not find every intended colour somewhere.
  const size_t candidates = std::min(got.objects.size(), want.objects.size());
  std::vector<bool> used(candidates, false);
  std::vector<int> match(want.objects.size(), -1);
  for (size_t i = 0; i < want.objects.size(); ++i)  // by colour
    for (size_t j = 0; j < candidates; ++j)
      if (!used[j] && got.objects[j].color == want.objects[i].color) {
        match[i] = int(j);
        used[j] = true;
        break;
      }
  for (size_t i = 0; i < want.objects.size(); ++i) {  // the rest by position (mean of start and end)
    if (match[i] >= 0) continue;
    const auto& w = want.objects[i];
    const float wx = (w.start_x + w.end_x) / 2, wy = (w.start_y + w.end_y) / 2;
    float best = std::numeric_limits<float>::max();
    for (size_t j = 0; j < candidates; ++j) {
      if (used[j]) continue;
      const auto& g = got.objects[j];
      const float gx = (g.start_x + g.end_x) / 2 - wx, gy = (g.start_y + g.end_y) / 2 - wy;
      if (gx * gx + gy * gy < best) best = gx * gx + gy * gy, match[i] = int(j);
    }
    if (match[i] >= 0) used[size_t(match[i])] = true;
  }
  for (size_t i = 0; i < want.objects.size(); ++i) {
    if (match[i] < 0) continue;
    const auto& w = want.objects[i];
    const auto& g = got.objects[size_t(match[i])];
    s.color += g.color == w.color;
    s.shape += g.shape == w.shape;
    s.motion += g.motion == w.motion;
  }
  s.all = s.background && s.count && s.color == s.objects && s.shape == s.objects && s.motion == s.objects;
  return s;
}

double psnr(const Tensor& a, const Tensor& b) {
  // Both to [F, H, W, 3] on the [0, 1] scale (float clips are not clamped, so no rounding here).
  auto unit = [](const Tensor& t, Canon& c) {
    OSP_CHECK(t.defined() && t.dim() == 4, "psnr: a clip must be U8 [F, H, W, 3] or float [3, F, H, W], got ",
              t.defined() ? t.desc() : std::string("an undefined tensor"));
    std::vector<double> out;
    if (t.dtype() == DType::U8) {
      OSP_CHECK(t.size(3) == 3, "psnr: a U8 clip must be [F, H, W, 3], got ", t.desc());
      const Tensor u = t.to(Device::cpu()).contiguous();
      c = {u.size(0), u.size(1), u.size(2)};
      const uint8_t* s = u.data<uint8_t>();
      out.resize(size_t(u.numel()));
      for (size_t i = 0; i < out.size(); ++i) out[i] = double(s[i]) / 255.0;
    } else {
      OSP_CHECK(t.size(0) == 3, "psnr: a float clip must be [3, F, H, W], got ", t.desc());
      const Tensor f = t.to(Device::cpu()).to(DType::F32).contiguous();
      c = {f.size(1), f.size(2), f.size(3)};
      const int64_t plane = c.F * c.H * c.W;
      const float* s = f.data<float>();
      out.resize(size_t(plane * 3));
      for (int64_t i = 0; i < plane; ++i)
        for (int ch = 0; ch < 3; ++ch) out[size_t(i * 3 + ch)] = (double(s[ch * plane + i]) + 1.0) / 2.0;
    }
    return out;
  };
  Canon ca, cb;
  const std::vector<double> x = unit(a, ca), y = unit(b, cb);
  OSP_CHECK(ca.F == cb.F && ca.H == cb.H && ca.W == cb.W, "psnr: clips differ in size: ", ca.F, " frames ", ca.W,
            "x", ca.H, " vs ", cb.F, " frames ", cb.W, "x", cb.H);
  OSP_CHECK(!x.empty(), "psnr: empty clips");
  double se = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = x[i] - y[i];
    se += d * d;
  }
  const double mse = se / double(x.size());
  if (mse == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(1.0 / mse);
}

// ---- EvalTally

void EvalTally::add(const std::string& id, const ClipAttributes& want, const ClipDetection& got,
                    const AdherenceScore& s, double psnr_db) {
  ++clips_;
  bg_ += s.background, count_ += s.count, all_ += s.all;
  objects_ += s.objects, color_ += s.color, shape_ += s.shape, motion_ += s.motion;
  frame_change_ += got.frame_change;
  flicker_ += got.background_flicker;
  Json row = {{"id", id},
              {"detected_background", got.background},
              {"detected_count", got.count},
              {"correct",
               {{"background", s.background},
                {"count", s.count},
                {"color", s.color},
                {"shape", s.shape},
                {"motion", s.motion},
                {"objects", s.objects},
                {"all", s.all}}},
              {"frame_change", got.frame_change},
              {"background_flicker", got.background_flicker}};
  Json intended = {{"background", want.background}};
  Json iobjs = Json::array();
  for (const auto& o : want.objects) iobjs.push_back({{"color", o.color}, {"shape", o.shape}, {"motion", o.motion}});
  intended["objects"] = iobjs;
  row["intended"] = intended;
  Json dobjs = Json::array();
  for (const auto& o : got.objects)
    dobjs.push_back({{"color", o.color},
                     {"shape", o.shape},
                     {"motion", o.motion},
                     {"start", {o.start_x, o.start_y}},
                     {"end", {o.end_x, o.end_y}},
                     {"area_ratio", o.area_ratio},
                     {"fill", o.fill},
                     {"radial", o.radial},
                     {"a3", o.a3},
                     {"a4", o.a4},
                     {"shape_stability", o.shape_stability}});
  row["detected_objects"] = dobjs;
  if (psnr_db >= 0) {
    if (std::isinf(psnr_db)) {
      ++psnr_inf_;
      row["psnr"] = "inf";
    } else {
      psnr_min_ = psnr_n_ == 0 ? psnr_db : std::min(psnr_min_, psnr_db);
      psnr_sum_ += psnr_db;
      ++psnr_n_;
      row["psnr"] = psnr_db;
    }
  }
  rows_.push_back(row.dump());
}

double EvalTally::accuracy(const std::string& a) const {
  if (clips_ == 0) return 0;
  const double c = double(clips_), o = double(std::max<int64_t>(objects_, 1));
  if (a == "background") return double(bg_) / c;
  if (a == "count") return double(count_) / c;
  if (a == "all") return double(all_) / c;
  if (a == "color") return double(color_) / o;
  if (a == "shape") return double(shape_) / o;
  if (a == "motion") return double(motion_) / o;
  fail(str("unknown attribute '", a, "' (background, count, color, shape, motion, all)"));
}

std::string EvalTally::table() const {
  std::string t;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%-12s %9s %9s %8s\n", "attribute", "correct", "accuracy", "chance");
  t += buf;
  auto row = [&](const char* name, int64_t ok, int64_t n, double chance) {
    char b[160];
    std::snprintf(b, sizeof b, "%-12s %4lld/%-4lld %8.1f%% %7.1f%%\n", name, (long long)ok, (long long)n,
                  n ? 100.0 * double(ok) / double(n) : 0.0, 100.0 * chance);
    t += b;
  };
  row("background", bg_, clips_, kChanceBackground);
  row("count", count_, clips_, kChanceCount);
  row("color", color_, objects_, kChanceColor);
  row("shape", shape_, objects_, kChanceShape);
  row("motion", motion_, objects_, kChanceMotion);
  std::snprintf(buf, sizeof buf, "%-12s %4lld/%-4lld %8.1f%%\n", "all", (long long)all_, (long long)clips_,
                clips_ ? 100.0 * double(all_) / double(clips_) : 0.0);
  t += buf;
  std::snprintf(buf, sizeof buf, "temporal: mean frame change %.4f, background flicker %.5f (0..1 scale)\n",
                clips_ ? frame_change_ / double(clips_) : 0.0, clips_ ? flicker_ / double(clips_) : 0.0);
  t += buf;
  if (psnr_n_ + psnr_inf_ > 0) {
    if (psnr_n_ > 0)
      std::snprintf(buf, sizeof buf, "PSNR vs dataset: mean %.2f dB, min %.2f dB over %lld clips (%lld identical)\n",
                    psnr_sum_ / double(psnr_n_), psnr_min_, (long long)psnr_n_, (long long)psnr_inf_);
    else
      std::snprintf(buf, sizeof buf, "PSNR vs dataset: inf (all %lld clips identical)\n", (long long)psnr_inf_);
    t += buf;
  }
  return t;
}

std::string EvalTally::json() const {
  nlohmann::json summary = {
      {"clips", clips_},
      {"objects", objects_},
      {"accuracy",
       {{"background", accuracy("background")},
        {"count", accuracy("count")},
        {"color", accuracy("color")},
        {"shape", accuracy("shape")},
        {"motion", accuracy("motion")},
        {"all", accuracy("all")}}},
      {"chance",
       {{"background", kChanceBackground},
        {"count", kChanceCount},
        {"color", kChanceColor},
        {"shape", kChanceShape},
        {"motion", kChanceMotion}}},
      {"frame_change", clips_ ? frame_change_ / double(clips_) : 0.0},
      {"background_flicker", clips_ ? flicker_ / double(clips_) : 0.0}};
  if (psnr_n_ + psnr_inf_ > 0) {
    summary["psnr_clips"] = psnr_n_ + psnr_inf_;
    summary["psnr_identical"] = psnr_inf_;
    summary["psnr_mean_db"] = psnr_n_ ? nlohmann::json(psnr_sum_ / double(psnr_n_)) : nlohmann::json("inf");
    summary["psnr_min_db"] = psnr_n_ ? nlohmann::json(psnr_min_) : nlohmann::json("inf");
  }
  std::string out = "{\"summary\": " + summary.dump(2) + ",\n\"clips\": [\n";
  for (size_t i = 0; i < rows_.size(); ++i) out += rows_[i] + (i + 1 < rows_.size() ? ",\n" : "\n");
  out += "]}\n";
  return out;
}

}  // namespace osp::train
