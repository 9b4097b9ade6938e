// `osp make-dataset`: synthetic text-to-video clips (train/synthetic_clips.h) written as a dataset
// folder (train/clip_dataset.h; format in docs/USAGE.md).
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "osp/cli/data_commands.h"
#include "osp/cli/run_command.h"
#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/train/clip_dataset.h"

namespace osp::cli {

void add_data_commands(CLI::App& app) {
  add_make_dataset_command(app);
  add_eval_command(app);
}

void add_make_dataset_command(CLI::App& app) {
  struct Args {
    std::string out, size = "256x256", split = "train";
    int64_t count = 0, shard_clips = 0;
    uint64_t seed = 0;
    int frames = 17, fps = 16;
    bool mp4 = false, overwrite = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("make-dataset", "render a synthetic text-to-video dataset (captions + clips)");
  cmd->add_option("-o,--out", a->out, "output folder (must not exist or be empty)")->required();
  cmd->add_option("--count", a->count, "number of clips")->required();
  cmd->add_option("--seed", a->seed, "dataset seed (clip i is a pure function of seed, split, i)")
      ->capture_default_str();
  cmd->add_option("--size", a->size, "WIDTHxHEIGHT, multiples of 16")->capture_default_str();
  cmd->add_option("--frames", a->frames, "frames per clip, 4n+1 (17, 33, ...)")->capture_default_str();
  cmd->add_option("--split", a->split, "train | heldout (held-out compositions only)")->capture_default_str();
  cmd->add_option("--fps", a->fps, "frame rate recorded in the manifest and the previews")->capture_default_str();
  cmd->add_option("--shard-clips", a->shard_clips, "clips per safetensors shard (0 = ~128 MiB shards)")
      ->capture_default_str();
  cmd->add_flag("--mp4", a->mp4, "also write preview/<id>.mp4 (FFmpeg builds)");
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing non-empty output folder");
  cmd->callback([cmd, a] {
    run_command(*cmd, [&] {
      train::ClipDatasetOptions o;
      o.dir = a->out;
      o.count = a->count;
      o.seed = a->seed;
      train::parse_clip_size(a->size, o.width, o.height);
      o.frames = a->frames;
      o.fps = a->fps;
      o.split = train::parse_clip_split(a->split);
      o.clips_per_shard = a->shard_clips;
      o.mp4 = a->mp4;
      o.overwrite = a->overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse;
      install_interrupt_handler();
      const train::ClipDatasetSummary s = train::write_clip_dataset(o);
      if (log_level() >= LogLevel::Info)
        std::printf("wrote %lld %s clips (%dx%d, %d frames; %lld with two objects, %lld with held-out "
                  "compositions) in %lld shards, %.1f MiB, to %s\n",
                  (long long)s.clips, train::clip_split_name(o.split), o.width, o.height, o.frames,
                  (long long)s.two_object_clips, (long long)s.heldout_clips, (long long)s.shards,
                  double(s.bytes) / 1048576.0, o.dir.c_str());
      return 0;
    });
  });
}

}  // namespace osp::cli
