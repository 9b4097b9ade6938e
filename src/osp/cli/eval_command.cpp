// `osp eval`: programmatic metrics (train/clip_metrics.h) of generated clips against the captions
// of a synthetic dataset: prompt adherence per attribute (with chance levels), temporal
// consistency and, with --psnr, PSNR against the dataset's clips (VAE reconstruction).
// `osp eval --video FILE --prompt TEXT` scores one clip against a caption of the synthetic grammar
// (what scripts/demo.sh prints for the default prompt).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "osp/cli/data_commands.h"
#include "osp/cli/run_command.h"
#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/io/atomic_file.h"
#include "osp/io/image_writer.h"
#include "osp/io/safetensors.h"
#include "osp/io/video_writer.h"
#include "osp/train/clip_dataset.h"
#include "osp/train/clip_metrics.h"
#include "osp/train/reward.h"

namespace fs = std::filesystem;

namespace osp::cli {

namespace {

// One clip file: an .mp4, a .safetensors (tensor "video", `name`, or its only tensor) or a folder of
// PNG frames (frame_0000.png, ... in name order).
Tensor load_clip(const fs::path& path, const std::string& name) {
  if (fs::is_directory(path)) {
    std::vector<std::string> pngs;
    for (const auto& e : fs::directory_iterator(path))
      if (e.path().extension() == ".png") pngs.push_back(e.path().string());
    OSP_CHECK(!pngs.empty(), path.string(), " holds no PNG frames");
    std::sort(pngs.begin(), pngs.end());
    std::vector<Tensor> imgs;
    for (const auto& p : pngs) imgs.push_back(io::read_png(p));
    const int64_t H = imgs[0].size(0), W = imgs[0].size(1);
    Tensor out = Tensor::empty({int64_t(imgs.size()), H, W, 3}, DType::U8);
    for (size_t i = 0; i < imgs.size(); ++i) {
      OSP_CHECK(imgs[i].size(0) == H && imgs[i].size(1) == W, pngs[i], " differs in size from ", pngs[0]);
      std::copy_n(imgs[i].contiguous().data<uint8_t>(), H * W * 3, out.data<uint8_t>() + int64_t(i) * H * W * 3);
    }
    return out;
  }
  OSP_CHECK(fs::exists(path), path.string(), " does not exist");
  if (path.extension() == ".safetensors") {
    const io::SafetensorsFile f = io::SafetensorsFile::open(path.string());
    if (f.has("video")) return f.get("video");
    if (f.has(name)) return f.get(name);
    OSP_CHECK(f.size() == 1, path.string(), " holds ", f.size(), " tensors; name the clip 'video' or '", name, "'");
    return f.get(f.names()[0]);
  }
  OSP_CHECK(path.extension() == ".mp4", path.string(), ": expected an .mp4, a .safetensors or a folder of PNG frames");
  Tensor rgb;
  io::probe_video(path.string(), &rgb);
  return rgb;
}

// A clip from a folder of predictions: <id>.mp4, <id>.safetensors or <id>/ with PNG frames;
// nullopt when none exists.
std::optional<Tensor> load_prediction(const fs::path& dir, const std::string& id) {
  for (const fs::path& p : {dir / (id + ".mp4"), dir / (id + ".safetensors"), dir / id})
    if (fs::exists(p)) return load_clip(p, id);
  return std::nullopt;
}

void write_json_report(const std::string& path, const std::string& text) {
  io::write_file_atomic(
      path,
      [&](const std::string& tmp) {
        FILE* f = std::fopen(tmp.c_str(), "wb");
        OSP_CHECK(f, "cannot write ", tmp);
        const size_t n = std::fwrite(text.data(), 1, text.size(), f);
        const bool ok = std::fclose(f) == 0 && n == text.size();
        OSP_CHECK(ok, "cannot write ", path, " (disk full?)");
      },
      io::Overwrite::Allow);
  if (log_level() >= LogLevel::Info) std::printf("wrote %s\n", path.c_str());
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string r;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) r += sep;
    r += v[i];
  }
  return r;
}

// --video FILE --prompt TEXT: the caption's intended attributes against what the detector sees.
void eval_one_video(const std::string& video, const std::string& prompt, const std::string& json) {
  const train::ClipAttributes want = train::parse_clip_caption(prompt);
  const Tensor clip = load_clip(video, "video");
  train::ClipDetection got;
  try {
    got = train::detect_clip(clip);
  } catch (const Error& ex) {
    fail(str(video, ": ", ex.what()));
  }
  const train::AdherenceScore s = train::score_adherence(want, got);
  std::printf("osp eval: %s against \"%s\"\n", video.c_str(), prompt.c_str());
  std::printf("  wanted:   background %s; %zu object(s):", join(want.background, " and ").c_str(), want.objects.size());
  for (const auto& o : want.objects) std::printf(" %s %s %s;", o.color.c_str(), o.shape.c_str(), o.motion.c_str());
  std::printf("\n  detected: background %s; %d object(s):", join(got.background, " and ").c_str(), got.count);
  for (const auto& o : got.objects) std::printf(" %s %s %s;", o.color.c_str(), o.shape.c_str(), o.motion.c_str());
  std::printf("\n  correct:  background %s, count %s, colour %d/%d, shape %d/%d, motion %d/%d -> %s\n",
              s.background ? "yes" : "no", s.count ? "yes" : "no", s.color, s.objects, s.shape, s.objects, s.motion,
              s.objects, s.all ? "all correct" : "not all correct");
  if (!json.empty()) {
    train::EvalTally tally;
    tally.add("video", want, got, s);
    write_json_report(json, tally.json());
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  struct Args {
    std::string dataset, videos, pred, json = "eval.json", video, prompt;
    bool psnr = false;
    int64_t limit = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("eval", "score generated clips against a synthetic dataset's captions");
  auto* dataset = cmd->add_option("-d,--dataset", a->dataset, "dataset folder from `osp make-dataset`");
  auto* videos = cmd->add_option("--videos", a->videos,
                                 "folder of generated clips named by clip id: <id>.mp4, <id>.safetensors or "
                                 "<id>/frame_*.png (default: evaluate the dataset's own clips)");
  cmd->add_option("--pred", a->pred, "one .safetensors holding a clip per id (U8 [F,H,W,3] or F32 [3,F,H,W])")
      ->excludes(videos);
  cmd->add_flag("--psnr", a->psnr, "also PSNR of each clip against the dataset's clip (VAE reconstruction)");
  auto* video = cmd->add_option("--video", a->video,
                                "instead of a dataset: one clip (.mp4, .safetensors or a folder of PNG frames) "
                                "scored against --prompt")
                    ->excludes(dataset)
                    ->excludes(videos);
  cmd->add_option("--prompt", a->prompt, "with --video: the caption it should show (the synthetic grammar)")
      ->needs(video);
  cmd->add_option("--json", a->json, "JSON report (replaced if it exists)")->capture_default_str();
  cmd->add_option("--limit", a->limit, "evaluate at most N clips (0 = all)")->capture_default_str();
  cmd->callback([cmd, a] {
    run_command(*cmd, [&] {
      if (!a->video.empty()) {
        OSP_CHECK(!a->prompt.empty(), "--video needs --prompt (the caption the clip should show)");
        OSP_CHECK(a->pred.empty() && !a->psnr, "--pred and --psnr need --dataset, not --video");
        eval_one_video(a->video, a->prompt, a->json);
        return 0;
      }
      OSP_CHECK(!a->dataset.empty(), "--dataset is required (or --video with --prompt)");
      OSP_CHECK(a->limit >= 0, "--limit must be >= 0, got ", a->limit);
      const train::ClipDataset ds = train::read_clip_dataset(a->dataset);
      OSP_CHECK(a->videos.empty() || fs::is_directory(a->videos), "--videos ", a->videos, " is not a folder");
      OSP_CHECK(a->pred.empty() || fs::exists(a->pred), "--pred ", a->pred, " does not exist");
      OSP_CHECK(!a->json.empty(), "--json needs a path");
      io::check_output_path(a->json, io::Overwrite::Allow);
      std::optional<io::SafetensorsFile> pred;
      if (!a->pred.empty()) pred = io::SafetensorsFile::open(a->pred);
      train::EvalTally tally;
      int64_t missing = 0;
      std::string first_missing;
      for (const auto& e : ds.clips) {
        if (a->limit > 0 && tally.clips() >= a->limit) break;
        Tensor clip;
        if (pred) {
          if (!pred->has(e.id)) {
            if (missing++ == 0) first_missing = e.id;
            continue;
          }
          clip = pred->get(e.id);
        } else if (!a->videos.empty()) {
          auto p = load_prediction(a->videos, e.id);
          if (!p) {
            if (missing++ == 0) first_missing = e.id;
            continue;
          }
          clip = *p;
        } else {
          clip = train::load_dataset_clip(ds, e);
        }
        train::ClipDetection d;
        try {
          d = train::detect_clip(clip);
        } catch (const Error& ex) {
          fail(str("clip ", e.id, ": ", ex.what()));
        }
        double p = -1;
        if (a->psnr) {
          try {
            p = train::psnr(clip, train::load_dataset_clip(ds, e));
          } catch (const Error& ex) {
            fail(str("--psnr, clip ", e.id, ": ", ex.what()));
          }
        }
        tally.add(e.id, e.attributes, d, train::score_adherence(e.attributes, d), p);
      }
      OSP_CHECK(tally.clips() > 0, "no predictions found for the ", ds.clips.size(), " clips of ", a->dataset,
                " (expected e.g. ",
                pred ? "a tensor named " + first_missing + " in " + a->pred
                     : (fs::path(a->videos) / (first_missing + ".mp4")).string(),
                ")");
      if (missing > 0)
        log_warn(missing, " of the dataset's clips have no prediction (first: ", first_missing, "); scored ",
                 tally.clips());
      const std::string source = pred ? a->pred : (a->videos.empty() ? a->dataset + " (its own clips)" : a->videos);
      std::printf("osp eval: %lld clips of %s (%s split), videos from %s\n%s", (long long)tally.clips(),
                  a->dataset.c_str(), ds.split.c_str(), source.c_str(), tally.table().c_str());
      write_json_report(a->json, tally.json());
      return 0;
    });
  });
}

}  // namespace osp::cli
