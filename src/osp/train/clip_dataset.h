// A folder of synthetic clips (`osp make-dataset`) and its reader (`osp eval`, `osp encode-dataset`).
//
// Layout (docs/USAGE.md "osp make-dataset" is the user-facing description):
//   dataset.json               {"format": "osp-synthetic-clips", "version": 1, "split": "train",
//                               "count": N, "seed": S, "width": W, "height": H, "frames": F,
//                               "fps": 16, "shards": [...], "vocabulary": {...}, "heldout_rule": "..."}
//   manifest.jsonl             one JSON object per line, in clip order:
//                               {"id": "train_000012", "index": 12, "caption": "...",
//                                "attributes": {...synthetic_clips.h record...},
//                                "file": "clips-00000.safetensors", "tensor": "train_000012",
//                                "frames": F, "height": H, "width": W, "fps": 16
//                                [, "preview": "preview/train_000012.mp4"]}
//   clips-NNNNN.safetensors    one U8 tensor [F, H, W, 3] (RGB, row-major) per clip, named by id
//   preview/<id>.mp4           only with --mp4 (FFmpeg builds): H.264 previews
// The whole folder is written into a temporary folder beside DIR and renamed into place when
// complete (io::write_dir_atomic): it appears complete or not at all.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"
#include "osp/train/synthetic_clips.h"

namespace osp::train {

struct ClipDatasetOptions {
  std::string dir;
  int64_t count = 0;
  uint64_t seed = 0;
  int width = 256, height = 256, frames = 17, fps = 16;
  ClipSplit split = ClipSplit::Train;
  int64_t clips_per_shard = 0;  // 0 = as many as fit in ~128 MiB (at least 1)
  bool mp4 = false;             // MP4 previews (needs an FFmpeg build)
  io::Overwrite overwrite = io::Overwrite::Refuse;
};

// "WxH" (or "W*H") → width, height; throws osp::Error naming the expected form.
void parse_clip_size(const std::string& s, int& width, int& height);
// "train" | "heldout" (also "held-out", "eval").
ClipSplit parse_clip_split(const std::string& s);
const char* clip_split_name(ClipSplit s);
// Every rule checked before any work (throws osp::Error naming the rule): count 1..10^7, width and
// height multiples of 16 in 32..2048, frames 4n+1 in 5..257, fps 1..120, clips_per_shard ≥ 0,
// --mp4 only with FFmpeg, and the output folder (absent or empty unless overwrite).
void validate_clip_dataset_options(const ClipDatasetOptions& o);
// The id of clip i of a split: "train_000012", "heldout_000003".
std::string clip_id(ClipSplit split, int64_t index);

struct ClipDatasetSummary {
  int64_t clips = 0, shards = 0, heldout_clips = 0, two_object_clips = 0;
  uint64_t bytes = 0;  // clip bytes in the shards
};
// Validates, renders (clips in parallel; bytes independent of the thread count) and writes the
// folder atomically. Calls interruption_point("writing") between shards (and previews): after
// Ctrl-C (install_interrupt_handler) it throws osp::Interrupted and leaves nothing behind.
ClipDatasetSummary write_clip_dataset(const ClipDatasetOptions& o);

struct ClipEntry {
  std::string id, caption, file, tensor, preview, attributes_json;
  int64_t index = 0;
  int frames = 0, height = 0, width = 0;
  ClipAttributes attributes;
};
struct ClipDataset {
  std::string dir, split;
  int width = 0, height = 0, frames = 0, fps = 16;
  uint64_t seed = 0;
  std::vector<ClipEntry> clips;
};
// Reads dataset.json and manifest.jsonl (throws osp::Error naming the file and line on bad data).
ClipDataset read_clip_dataset(const std::string& dir);
// Clip `e` as U8 [F, H, W, 3] (a view of the mapped shard; clone() to write into it).
Tensor load_dataset_clip(const ClipDataset& ds, const ClipEntry& e);

}  // namespace osp::train
