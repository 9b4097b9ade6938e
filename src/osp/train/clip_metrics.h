// Programmatic metrics for the synthetic-clip task (issue 16), independent of any model: read a
// clip (rendered or generated), detect what it shows, and score it against the intended attributes.
//
// Detector (works on any size; thresholds are relative to the frame):
//   background  channel-wise median of the outer two rows/columns, top half and bottom half
//               separately, over all frames → nearest named background; two names when the halves
//               differ (two-tone, top first).
//   foreground  a pixel whose nearest colour among {object palette} is closer than its nearest
//               among {measured top, bottom and their 25/50/75 % blends}.
//   count       8-connected foreground components of ≥ max(4, H·W/2000) pixels per frame; the
//               most frequent count over frames.
//   colour      majority nearest-object-colour label of a component's pixels; an object is a
//               colour whose largest component is present in ≥ half of the frames.
//   shape       on the component's core pixels (closer to the object's median colour than to the
//               background), from its angular extent profile r(θ) (32 bins around the centroid)
//               and its harmonics a_k = |c_k| / c_0: a hole (enclosed background ≥ 5 % of the
//               area) → ring; a3 ≥ 0.09 → triangle; a4 < 0.032 → circle; else square or cross,
//               whichever is nearer in (a4, min/max of r): square (0.075, 0.70), cross (0.16, 0.48).
//               Measured on renders from 64x64 to 256x256, clean, blurred + noisy and through
//               H.264: triangle a3 ≥ 0.11 (others ≤ 0.07), circle a4 ≤ 0.02, square a4 0.05–0.09,
//               cross a4 0.09–0.21. Majority vote over frames whose area is ≥ half the largest.
//   motion      from the centroid and area tracks: with a net displacement < 0.2 of the frame, an
//               area ratio (last/first) > 1.6 → grow, < 1/1.6 → shrink; else a net displacement
//               ≥ 0.12 of the frame → left_to_right / right_to_left / up / down along the larger
//               axis; else a vertical range ≥ 0.1 → bounce; else a turned outline → rotate: the
//               phase of the profile's dominant
//               harmonic (k = 3 or 4, amplitude ≥ 0.02) moved by ≥ 0.6 rad (k·angle), or the last
//               profile matches the first better after a circular shift; else "static".
// Temporal consistency: frame_change = mean |x(t+1) − x(t)| over all pixels (0..1 scale);
// background_flicker = the same over pixels that are background and ≥ 2 px away from the
// foreground in both frames (0 for a clean render: the background never changes; the frame change
// itself when under 5 % of the pixels are such background, e.g. a clip of noise).
// Chance levels (uniform guessing): background 1/6 (plain), colour 1/6, shape 1/5, motion 1/8,
// count 1/2.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/train/synthetic_clips.h"

namespace osp::train {

// Any supported clip layout → CPU U8 [F, H, W, 3]: U8 [F, H, W, 3] as is; F32/BF16/F16
// [3, F, H, W] in [-1, 1] → clamp, round((x + 1) · 127.5). Throws osp::Error on other shapes.
Tensor clip_to_rgb8(const Tensor& clip);

struct DetectedObject {
  std::string color, shape, motion;
  int frames_seen = 0;
  float start_x = 0, start_y = 0, end_x = 0, end_y = 0;  // centroid / (W, H), first and last frame seen
  float area_ratio = 1;      // area last / first
  float mean_area = 0;       // fraction of the frame
  float fill = 0, radial = 0;  // shape features of the largest frame
  float a3 = 0, a4 = 0;        // 3rd / 4th harmonic of its angular extent profile (÷ mean)
  float shape_stability = 0;   // fraction of the voting frames that agree with the chosen shape
};

struct ClipDetection {
  std::vector<std::string> background;  // 1 name (plain) or 2 (top, bottom)
  int count = 0;
  std::vector<DetectedObject> objects;  // largest first
  double frame_change = 0, background_flicker = 0;
};

ClipDetection detect_clip(const Tensor& clip);

struct AdherenceScore {
  bool background = false, count = false;
  int objects = 0;  // intended objects
  int color = 0, shape = 0, motion = 0;  // correct among them
  bool all = false;  // everything above correct
};
// Intended objects are matched to the largest detected ones (as many as intended: extra blobs
// never help) by colour first, then by nearest position.
AdherenceScore score_adherence(const ClipAttributes& want, const ClipDetection& got);

// PSNR in dB between two clips of the same size (any layouts clip_to_rgb8 takes, mixed allowed),
// on the [0, 1] scale: U8 u → u/255, float x → (x + 1)/2 (not clamped).
// 10·log10(1 / MSE); +inf for identical clips.
double psnr(const Tensor& a, const Tensor& b);

inline constexpr double kChanceBackground = 1.0 / 6, kChanceColor = 1.0 / 6, kChanceShape = 1.0 / 5,
                        kChanceMotion = 1.0 / 8, kChanceCount = 1.0 / 2;

// Sums per-clip results into the table `osp eval` prints and the JSON it writes.
class EvalTally {
 public:
  void add(const std::string& id, const ClipAttributes& want, const ClipDetection& got, const AdherenceScore& s,
           double psnr_db = -1);  // psnr_db < 0: none
  int64_t clips() const { return clips_; }
  double accuracy(const std::string& attribute) const;  // background count color shape motion all
  std::string table() const;
  std::string json() const;  // {"summary": {...}, "clips": [...]}

 private:
  int64_t clips_ = 0, bg_ = 0, count_ = 0, all_ = 0, objects_ = 0, color_ = 0, shape_ = 0, motion_ = 0;
  double frame_change_ = 0, flicker_ = 0, psnr_sum_ = 0, psnr_min_ = 0;
  int64_t psnr_n_ = 0, psnr_inf_ = 0;
  std::vector<std::string> rows_;  // per-clip JSON objects
};

}  // namespace osp::train
