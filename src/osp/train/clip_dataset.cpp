#include "osp/train/clip_dataset.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/io/safetensors.h"
#include "osp/io/video_writer.h"

namespace fs = std::filesystem;

namespace osp::train {

namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "osp-synthetic-clips";
constexpr uint64_t kShardTargetBytes = 128ull << 20;

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  OSP_CHECK(f, "cannot create ", path.string());
  f << text;
  f.close();
  OSP_CHECK(f, "cannot write ", path.string(), " (disk full?)");
}

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  OSP_CHECK(f, "cannot read ", path.string());
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string shard_name(int64_t s) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "clips-%05lld.safetensors", (long long)s);
  return buf;
}

json vocabulary_json() {
  json colors = json::array(), bgs = json::array(), shapes = json::array(), motions = json::array();
  for (int i = 0; i < kNumObjectColors; ++i) {
    const auto& c = object_color(i);
    colors.push_back({{"name", c.name}, {"rgb", {c.rgb[0], c.rgb[1], c.rgb[2]}}});
  }
  for (int i = 0; i < kNumBackgrounds; ++i) {
    const auto& c = background_color(i);
    bgs.push_back({{"name", c.name}, {"rgb", {c.rgb[0], c.rgb[1], c.rgb[2]}}});
  }
  for (int i = 0; i < kNumShapes; ++i) shapes.push_back(shape_name(ObjectShape(i)));
  for (int i = 0; i < kNumMotions; ++i) motions.push_back(motion_name(Motion(i)));
  return {{"colors", colors}, {"backgrounds", bgs}, {"shapes", shapes}, {"motions", motions}};
}

}  // namespace

void parse_clip_size(const std::string& s, int& width, int& height) {
  const size_t p = s.find_first_of("x*X");
  OSP_CHECK(p != std::string::npos && p > 0 && p + 1 < s.size(), "--size must be WIDTHxHEIGHT (e.g. 256x256), got '",
            s, "'");
  try {
    size_t a = 0, b = 0;
    width = std::stoi(s.substr(0, p), &a);
    height = std::stoi(s.substr(p + 1), &b);
    OSP_CHECK(a == p && b == s.size() - p - 1, "");
  } catch (...) {
    fail(str("--size must be WIDTHxHEIGHT with integers (e.g. 320x192), got '", s, "'"));
  }
}

ClipSplit parse_clip_split(const std::string& s) {
  if (s == "train") return ClipSplit::Train;
  if (s == "heldout" || s == "held-out" || s == "eval") return ClipSplit::Heldout;
  fail(str("--split must be train or heldout, got '", s, "'"));
}

const char* clip_split_name(ClipSplit s) { return s == ClipSplit::Train ? "train" : "heldout"; }

std::string clip_id(ClipSplit split, int64_t index) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s_%06lld", clip_split_name(split), (long long)index);
  return buf;
}

void validate_clip_dataset_options(const ClipDatasetOptions& o) {
  OSP_CHECK(o.count >= 1 && o.count <= 10000000, "--count must be in 1..10000000, got ", o.count);
  OSP_CHECK(o.width % 16 == 0 && o.height % 16 == 0 && o.width >= 32 && o.height >= 32 && o.width <= 2048 &&
                o.height <= 2048,
            "--size: width and height must be multiples of 16 in 32..2048 (the model's size rule), got ", o.width,
            "x", o.height);
  OSP_CHECK(o.frames >= 5 && o.frames <= 257 && (o.frames - 1) % 4 == 0,
            "--frames must be 4n+1 in 5..257 (e.g. 17 or 33), got ", o.frames);
  OSP_CHECK(o.fps >= 1 && o.fps <= 120, "--fps must be in 1..120, got ", o.fps);
  OSP_CHECK(o.clips_per_shard >= 0, "clips per shard must be >= 0 (0 = automatic), got ", o.clips_per_shard);
  OSP_CHECK(!o.mp4 || io::video_writer_available(),
            "--mp4 needs a build with FFmpeg (install libavformat-dev libavcodec-dev libswscale-dev and "
            "reconfigure); the safetensors clips need no codec");
  OSP_CHECK(!o.dir.empty(), "--out: the dataset folder is empty");
  std::error_code ec;
  if (fs::is_directory(o.dir, ec) && !fs::is_empty(o.dir, ec))
    OSP_CHECK(o.overwrite == io::Overwrite::Allow, "the dataset folder ", o.dir,
              " already exists and is not empty; pass --overwrite to replace it");
  io::check_output_dir(o.dir, o.overwrite);
}

ClipDatasetSummary write_clip_dataset(const ClipDatasetOptions& o) {
  validate_clip_dataset_options(o);
  const uint64_t clip_bytes = uint64_t(o.frames) * o.height * o.width * 3;
  const int64_t per_shard =
      o.clips_per_shard > 0 ? o.clips_per_shard : std::max<int64_t>(1, int64_t(kShardTargetBytes / clip_bytes));
  ClipDatasetSummary sum;
  io::write_dir_atomic(
      o.dir,
      [&](const std::string& tmp) {
        const fs::path root(tmp);
        if (o.mp4) fs::create_directories(root / "preview");
        std::string manifest;
        json shards = json::array();
        for (int64_t first = 0; first < o.count; first += per_shard) {
          interruption_point("writing");  // Ctrl-C: the temporary folder is removed, DIR untouched
          const int64_t n = std::min(per_shard, o.count - first);
          std::vector<ClipSpec> specs(static_cast<size_t>(n));
          std::vector<Tensor> clips(static_cast<size_t>(n));
          // Clips in parallel (each one a pure function of (seed, split, index)); render_clip's own
          // loop then runs on one thread inside each.
#pragma omp parallel for schedule(dynamic, 1)
          for (int64_t k = 0; k < n; ++k) {
            specs[size_t(k)] = sample_clip(o.seed, o.split, first + k, o.width, o.height, o.frames);
            clips[size_t(k)] = render_clip(specs[size_t(k)]);
          }
          const std::string shard = shard_name(int64_t(shards.size()));
          std::map<std::string, Tensor> tensors;
          for (int64_t k = 0; k < n; ++k) {
            const ClipSpec& spec = specs[size_t(k)];
            const std::string id = clip_id(o.split, first + k);
            tensors[id] = clips[size_t(k)];
            json line = {{"id", id},
                         {"index", first + k},
                         {"caption", clip_caption(spec)},
                         {"attributes", json::parse(clip_attributes_json(spec))},
                         {"file", shard},
                         {"tensor", id},
                         {"frames", o.frames},
                         {"height", o.height},
                         {"width", o.width},
                         {"fps", o.fps}};
            if (o.mp4) {
              interruption_point("writing");
              const std::string rel = "preview/" + id + ".mp4";
              io::VideoOptions vo;
              vo.fps = o.fps;
              vo.metadata["title"] = clip_caption(spec);
              vo.metadata["comment"] = str("osp make-dataset seed ", o.seed, " ", id);
              io::write_mp4((root / rel).string(), clips[size_t(k)], vo);
              line["preview"] = rel;
            }
            manifest += line.dump() + "\n";
            sum.heldout_clips += spec.heldout() ? 1 : 0;
            sum.two_object_clips += spec.objects.size() == 2 ? 1 : 0;
            sum.bytes += clip_bytes;
          }
          io::save_safetensors((root / shard).string(), tensors, {{"format", kFormat}});
          shards.push_back(shard);
          sum.clips += n;
          log_info("make-dataset: ", sum.clips, "/", o.count, " clips (", shard, ")");
        }
        write_text(root / "manifest.jsonl", manifest);
        const json info = {{"format", kFormat},
                           {"version", 1},
                           {"split", clip_split_name(o.split)},
                           {"count", o.count},
                           {"seed", o.seed},
                           {"width", o.width},
                           {"height", o.height},
                           {"frames", o.frames},
                           {"fps", o.fps},
                           {"clip_tensor", "U8 [frames, height, width, 3] RGB"},
                           {"shards", shards},
                           {"heldout_rule", "(color + 2*shape + 3*motion) mod 7 == 0 (vocabulary indices)"},
                           {"vocabulary", vocabulary_json()}};
        write_text(root / "dataset.json", info.dump(2) + "\n");
        sum.shards = int64_t(shards.size());
      },
      o.overwrite);
  return sum;
}

ClipDataset read_clip_dataset(const std::string& dir) {
  const fs::path root(dir);
  OSP_CHECK(fs::is_directory(root), "dataset folder ", dir, " does not exist (make one with `osp make-dataset`)");
  const fs::path info_path = root / "dataset.json", manifest_path = root / "manifest.jsonl";
  OSP_CHECK(fs::exists(info_path) && fs::exists(manifest_path), dir,
            " is not an osp synthetic-clip dataset: dataset.json and manifest.jsonl are expected");
  ClipDataset ds;
  ds.dir = dir;
  try {
    const json info = json::parse(read_text(info_path));
    OSP_CHECK(info.value("format", "") == kFormat, info_path.string(), ": format is not ", kFormat);
    ds.split = info.at("split").get<std::string>();
    ds.width = info.at("width").get<int>();
    ds.height = info.at("height").get<int>();
    ds.frames = info.at("frames").get<int>();
    ds.fps = info.value("fps", 16);
    ds.seed = info.value("seed", uint64_t(0));
  } catch (const json::exception& e) {
    fail(str(info_path.string(), ": malformed (", e.what(), ")"));
  }
  std::ifstream f(manifest_path);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const json j = json::parse(line);
      ClipEntry e;
      e.id = j.at("id").get<std::string>();
      e.index = j.value("index", int64_t(0));
      e.caption = j.at("caption").get<std::string>();
      e.file = j.at("file").get<std::string>();
      e.tensor = j.value("tensor", e.id);
      e.preview = j.value("preview", "");
      e.frames = j.value("frames", ds.frames);
      e.height = j.value("height", ds.height);
      e.width = j.value("width", ds.width);
      e.attributes_json = j.at("attributes").dump();
      e.attributes = parse_clip_attributes(e.attributes_json);
      OSP_CHECK(e.file.find("..") == std::string::npos && !e.file.empty() && e.file[0] != '/',
                "shard file must be a plain name inside the dataset, got '", e.file, "'");
      ds.clips.push_back(std::move(e));
    } catch (const json::exception& ex) {
      fail(str(manifest_path.string(), " line ", lineno, ": malformed (", ex.what(), ")"));
    } catch (const Error& ex) {
      fail(str(manifest_path.string(), " line ", lineno, ": ", ex.what()));
    }
  }
  OSP_CHECK(!ds.clips.empty(), manifest_path.string(), " lists no clips");
  return ds;
}

Tensor load_dataset_clip(const ClipDataset& ds, const ClipEntry& e) {
  const std::string path = (fs::path(ds.dir) / e.file).string();
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  OSP_CHECK(file.has(e.tensor), path, " has no tensor '", e.tensor, "' (clip ", e.id, ")");
  Tensor t = file.get(e.tensor);
  OSP_CHECK(t.dtype() == DType::U8 && t.dim() == 4 && t.size(0) == e.frames && t.size(1) == e.height &&
                t.size(2) == e.width && t.size(3) == 3,
            path, ": clip ", e.id, " is ", t.desc(), ", expected u8[", e.frames, ", ", e.height, ", ", e.width,
            ", 3]");
  return t;
}

}  // namespace osp::train
