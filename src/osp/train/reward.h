// Rewards for Mix-GRPO (osp rl; osp-next-spec §8.4, issue 15): an interface, the built-in
// programmatic rewards of the synthetic-clip task (train/clip_metrics.h) and an external scorer
// process spoken to in JSON lines.
//
// ---- Built-in (RewardSpec "builtin:<kind>[:weight]") ---------------------------------------
// Every built-in reward runs the clip detector (detect_clip) on the decoded video and scores it
// against the prompt's intended attributes (the dataset record, or the caption parsed with the
// synthetic grammar, parse_clip_caption). With n intended objects and the adherence result s:
//   adherence  (bg + count + color/n + shape/n + motion/n) / 5          in [0, 1]
//   color      color/n,  shape  shape/n,  motion  motion/n,  background  bg (0/1)
//   temporal   max(0, 1 − 10·background_flicker)  (1 for a background that never changes,
//              0 for a flicker of 0.1 of the full scale — pure noise is ≈ 0.3)
// ---- External (--reward-cmd CMD[:weight is not parsed: use ExternalRewardOptions]) --------
// CMD runs once per run under /bin/sh -c, kept alive between calls (a served reward model). For
// every sample osp writes one line to its stdin:
//   {"id": <int>, "video": "<path>", "prompt": "<text>", "frames": F, "height": H,
//    "width": W, "fps": 16 [, "attributes": {...}]}
// and reads one line from its stdout: a JSON number, or an object with a numeric "score" (or
// "reward"). The video is the decoded clip written beside (OUT/rollouts/) as MP4 when this
// build has FFmpeg, else a folder of PNG frames, else a safetensors file holding the U8
// [F, H, W, 3] frames as "video". A reply that does not come within the timeout, a child that
// exits or closes its stdout, or a reply that is not a finite number ends the run with an
// osp::Error that names the command, the sample and the cause (the child is killed). SIGPIPE is
// ignored process-wide once an external reward starts (a dead child must give an error, not
// kill osp). stderr of the child passes through to osp's stderr.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/train/synthetic_clips.h"

namespace osp::train {

struct RewardSample {
  Tensor video;            // decoded clip, F32 [3, F, H, W] in [-1, 1], CPU
  std::string prompt;
  bool has_attributes = false;
  ClipAttributes attributes;  // intended attributes (synthetic clips)
  std::string attributes_json;  // the record as JSON ("" when unknown)
  int64_t id = 0;          // sample index in the iteration (external scorer's "id")
};

class Reward {
 public:
  virtual ~Reward() = default;
  virtual std::string name() const = 0;
  double weight() const { return weight_; }
  void set_weight(double w) { weight_ = w; }
  // One score per sample (finite; an osp::Error otherwise).
  virtual double score(const RewardSample& s) = 0;
  // Scores a whole rollout batch (default: one score() per sample).
  virtual std::vector<double> score_batch(const std::vector<RewardSample>& batch);

 private:
  double weight_ = 1.0;
};

// ---- built-in ----
enum class BuiltinReward { Adherence, Color, Shape, Motion, Background, Count, Temporal };
class BuiltinClipReward : public Reward {
 public:
  explicit BuiltinClipReward(BuiltinReward kind) : kind_(kind) {}
  std::string name() const override;
  double score(const RewardSample& s) override;

 private:
  BuiltinReward kind_;
};

// "builtin:adherence", "builtin:temporal:0.5", ... → a reward (weight default 1, > 0).
std::unique_ptr<Reward> make_builtin_reward(const std::string& spec);

// The synthetic grammar's caption → intended attributes (positions unknown: 0.5). Throws an
// osp::Error naming the caption when it is not of the grammar (synthetic_clips.h).
ClipAttributes parse_clip_caption(const std::string& caption);

// ---- external ----
struct ExternalRewardOptions {
  std::string command;
  std::string video_dir;   // where the videos for the scorer are written (created)
  double timeout_s = 120;  // per reply
  double weight = 1.0;
  int fps = 16;
  std::string name = "external";
};

class ExternalReward : public Reward {
 public:
  explicit ExternalReward(const ExternalRewardOptions& o);
  ~ExternalReward() override;  // closes stdin, waits briefly, kills the child if it lingers
  ExternalReward(const ExternalReward&) = delete;
  ExternalReward& operator=(const ExternalReward&) = delete;
  std::string name() const override { return opt_.name; }
  double score(const RewardSample& s) override;

 private:
  void start();
  [[noreturn]] void die(const std::string& why);
  std::string write_video(const RewardSample& s);
  ExternalRewardOptions opt_;
  int pid_ = -1, to_child_ = -1, from_child_ = -1;
  std::string pending_;  // bytes read past the last line
};

}  // namespace osp::train
