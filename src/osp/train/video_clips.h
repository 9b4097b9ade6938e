// How `osp encode-dataset` turns a decoded video (or an image) into training clips the way
// OSP-Next's data pipeline does (osp-next-spec §7: 81 frames sampled at 16 fps with a temporal
// random crop, center-crop-resize with bicubic antialiasing, values in [-1, 1]) — offline: the
// cache holds a fixed set of windows per video (clips_per_video of them) instead of a new random
// window each epoch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::train {

// Where a video's windows start.
//   start   the first window at frame 0; more windows follow back to back
//   spread  the windows spread evenly over the video (first at 0, last at the end)
//   random  each window at a uniformly random start (Philox(seed) of the item and window)
enum class TemporalCrop { Start, Spread, Random };
TemporalCrop parse_temporal_crop(const std::string& s);  // "start" | "spread" | "random"

// The source frame indices of one clip of `frames` frames at `fps` from a video of `src_frames`
// frames at `src_fps` starting at source frame `first`: first + round(k·src_fps/fps), k < frames.
// fps <= 0 (or src_fps unknown, <= 0) takes consecutive frames (the video's own rate).
std::vector<int64_t> clip_frame_indices(int64_t first, int64_t frames, double src_fps, double fps);
// The source frames one clip spans (its last index − first + 1).
int64_t clip_span(int64_t frames, double src_fps, double fps);

// The start frames of `count` windows of `span` source frames in a video of `src_frames`
// (src_frames >= span). `item` and `seed` seed the random starts.
std::vector<int64_t> clip_starts(TemporalCrop crop, int64_t count, int64_t src_frames, int64_t span, uint64_t seed,
                                 uint64_t item);

// U8 [F, H, W, 3] RGB → F32 [3, F, out_h, out_w] in [-1, 1]: the largest centered crop of the
// target aspect, resized with the antialiased bicubic filter of torchvision / PIL (Keys cubic,
// a = −0.5, its support widened by the downscale factor so every source pixel contributes; at
// scale 1 on whole pixels it copies), then x / 127.5 − 1.
Tensor center_crop_resize(const Tensor& rgb, int64_t out_w, int64_t out_h);

}  // namespace osp::train
