#include "osp/train/latent_dataset.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/io/safetensors.h"
#include "osp/train/output_files.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace osp::train {
namespace {

constexpr const char* kFormat = "osp-latent-cache";
constexpr uint32_t kShuffleTag = 0x5348;  // "SH"

std::string shard_name(size_t k) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05zu.safetensors", k);
  return buf;
}

Tensor to_cpu_f32(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape(), DType::F32);
  out.copy_from(t);
  return out;
}

bool all_finite(const Tensor& t) {
  const float* p = t.data<float>();
  const int64_t n = t.numel();
  bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static)
  for (int64_t i = 0; i < n; ++i) ok = ok && std::isfinite(p[i]);
  return ok;
}

}  // namespace

// ------------------------------------------------------------------------------------ writer

LatentCacheWriter::LatentCacheWriter(const std::string& dir, int64_t samples_per_shard, io::Overwrite ow)
    : dir_(dir), per_shard_(samples_per_shard), ow_(ow) {
  OSP_CHECK(samples_per_shard >= 1, "latent cache: samples per shard must be >= 1, got ", samples_per_shard);
  std::error_code ec;
  fs::create_directories(dir, ec);
  OSP_CHECK(fs::is_directory(dir), "latent cache: cannot create the folder ", dir,
            ec ? " (" + ec.message() + ")" : std::string());
  io::check_output_path((fs::path(dir) / "manifest.json").string(), ow);
}

LatentCacheWriter::~LatentCacheWriter() = default;

void LatentCacheWriter::add(const Tensor& latent, const Tensor& context, const std::string& caption,
                            const std::string& source) {
  OSP_CHECK(!finished_, "latent cache: add() after finish()");
  OSP_CHECK(latent.dim() == 4, "latent cache: a latent must be [C, F, H, W], got ", shape_str(latent.shape()));
  OSP_CHECK(context.dim() == 2 && context.size(0) >= 1,
            "latent cache: a context must be [L, text_dim] with L >= 1, got ", shape_str(context.shape()));
  if (channels_ < 0) channels_ = latent.size(0);
  if (text_dim_ < 0) text_dim_ = context.size(1);
  OSP_CHECK(latent.size(0) == channels_, "latent cache: latent has ", latent.size(0),
            " channels, the cache holds ", channels_);
  OSP_CHECK(context.size(1) == text_dim_, "latent cache: context width ", context.size(1),
            " differs from the cache's text_dim ", text_dim_);
  LatentSampleInfo s;
  s.id = int64_t(samples_.size());
  s.shard = int(shards_.size());
  s.latent_shape = latent.shape();
  s.context_rows = context.size(0);
  s.caption = caption;
  s.source = source;
  const Tensor l = to_cpu_f32(latent), c = to_cpu_f32(context);
  OSP_CHECK(all_finite(l) && all_finite(c), "latent cache: sample ", s.id, " (", source,
            ") has NaN/Inf values");
  pending_[str(s.id, ".latent")] = l;
  pending_[str(s.id, ".context")] = c;
  samples_.push_back(std::move(s));
  if (int64_t(pending_.size()) >= 2 * per_shard_) flush_shard();
}

void LatentCacheWriter::set_empty_context(const Tensor& context) {
  OSP_CHECK(context.dim() == 2 && context.size(0) >= 1, "latent cache: the empty context must be [L, text_dim], got ",
            shape_str(context.shape()));
  if (text_dim_ < 0) text_dim_ = context.size(1);
  OSP_CHECK(context.size(1) == text_dim_, "latent cache: empty context width ", context.size(1),
            " differs from text_dim ", text_dim_);
  empty_ = to_cpu_f32(context);
}

void LatentCacheWriter::flush_shard() {
  if (pending_.empty()) return;
  const std::string name = shard_name(shards_.size());
  write_safetensors_atomic((fs::path(dir_) / name).string(), pending_, {{"format", kFormat}}, io::Overwrite::Allow);
  shards_.push_back(name);
  pending_.clear();
}

int64_t LatentCacheWriter::finish() {
  OSP_CHECK(!finished_, "latent cache: finish() called twice");
  OSP_CHECK(!samples_.empty(), "latent cache: no samples were added to ", dir_);
  flush_shard();
  json m;
  m["format"] = kFormat;
  m["version"] = 1;
  m["latent_channels"] = channels_;
  m["text_dim"] = text_dim_;
  m["shards"] = shards_;
  if (empty_.defined()) {
    write_safetensors_atomic((fs::path(dir_) / "empty_context.safetensors").string(), {{"context", empty_}}, {},
                             io::Overwrite::Allow);
    m["empty_context"] = "empty_context.safetensors";
  } else {
    m["empty_context"] = nullptr;
  }
  json arr = json::array();
  for (const auto& s : samples_)
    arr.push_back({{"id", s.id},
                   {"shard", s.shard},
                   {"latent_shape", s.latent_shape},
                   {"context_rows", s.context_rows},
                   {"caption", s.caption},
                   {"source", s.source}});
  m["samples"] = std::move(arr);
  write_text_atomic((fs::path(dir_) / "manifest.json").string(), m.dump(1) + "\n", ow_);
  finished_ = true;
  return int64_t(samples_.size());
}

// ------------------------------------------------------------------------------------ reader

struct LatentDataset::ShardCache {
  std::map<int, io::SafetensorsFile> open;
};

LatentDataset LatentDataset::open(const std::string& dir, const LatentDatasetOptions& opt) {
  OSP_CHECK(opt.batch >= 1, "batch size must be >= 1, got ", opt.batch);
  OSP_CHECK(fs::is_directory(dir), "dataset ", dir, " is not a folder (expected a latent cache written by `osp encode-dataset`)");
  const std::string mpath = (fs::path(dir) / "manifest.json").string();
  OSP_CHECK(fs::exists(mpath), "dataset ", dir, ": ", mpath,
            " is missing (not a latent cache, or its writing did not finish)");
  json m;
  try {
    m = json::parse(read_text_file(mpath));
  } catch (const json::exception& e) {
    fail(str("dataset manifest ", mpath, " is not valid JSON: ", e.what()));
  }
  LatentDataset d;
  d.dir_ = dir;
  d.opt_ = opt;
  d.shards_ = std::make_shared<ShardCache>();
  try {
    OSP_CHECK(m.is_object() && m.value("format", "") == kFormat, "not an osp latent cache (format field is not '",
              kFormat, "')");
    OSP_CHECK(m.value("version", 0) == 1, "unsupported version ", m.value("version", 0), " (this osp reads 1)");
    d.channels_ = m.at("latent_channels").get<int64_t>();
    d.text_dim_ = m.at("text_dim").get<int64_t>();
    OSP_CHECK(d.channels_ >= 1 && d.text_dim_ >= 1, "latent_channels and text_dim must be >= 1");
    d.shard_files_ = m.at("shards").get<std::vector<std::string>>();
    for (const auto& s : d.shard_files_)
      OSP_CHECK(!s.empty() && s.find('/') == std::string::npos && s != "." && s != "..",
                "shard name '", s, "' must be a plain file name inside the cache folder");
    if (m.contains("empty_context") && !m["empty_context"].is_null())
      d.empty_file_ = (fs::path(dir) / m["empty_context"].get<std::string>()).string();
    for (const auto& js : m.at("samples")) {
      LatentSampleInfo s;
      s.id = js.at("id").get<int64_t>();
      s.shard = js.at("shard").get<int>();
      s.latent_shape = js.at("latent_shape").get<Shape>();
      s.context_rows = js.at("context_rows").get<int64_t>();
      s.caption = js.value("caption", "");
      s.source = js.value("source", "");
      OSP_CHECK(s.shard >= 0 && size_t(s.shard) < d.shard_files_.size(), "sample ", s.id, " names shard ", s.shard,
                " but there are ", d.shard_files_.size());
      OSP_CHECK(s.latent_shape.size() == 4 && s.latent_shape[0] == d.channels_, "sample ", s.id,
                ": latent_shape must be [", d.channels_, ", F, H, W], got ", shape_str(s.latent_shape));
      for (int64_t x : s.latent_shape) OSP_CHECK(x >= 1, "sample ", s.id, ": bad latent_shape ", shape_str(s.latent_shape));
      OSP_CHECK(s.context_rows >= 1, "sample ", s.id, ": context_rows must be >= 1");
      OSP_CHECK(d.by_id_.emplace(s.id, d.samples_.size()).second, "sample id ", s.id, " appears twice");
      d.samples_.push_back(std::move(s));
    }
  } catch (const json::exception& e) {
    fail(str("dataset manifest ", mpath, ": missing or mistyped field (", e.what(), ")"));
  } catch (const Error& e) {
    fail(str("dataset manifest ", mpath, ": ", e.what()));
  }
  OSP_CHECK(!d.samples_.empty(), "dataset ", dir, " holds no samples (", mpath, ")");
  if (!opt.skip_bad_samples) {
    for (const auto& s : d.shard_files_) {
      const fs::path p = fs::path(dir) / s;
      OSP_CHECK(fs::is_regular_file(p), "dataset ", dir, ": shard file ", p.string(),
                " is missing (listed in manifest.json; --skip-bad-samples skips its samples)");
    }
  }
  if (!d.empty_file_.empty())
    OSP_CHECK(fs::is_regular_file(d.empty_file_), "dataset ", dir, ": empty-prompt embedding ", d.empty_file_, " is missing");
  std::map<Shape, int64_t> per_size;
  for (const auto& s : d.samples_) per_size[s.latent_shape]++;
  int64_t best = 0;
  for (const auto& [sh, n] : per_size) best = std::max(best, n);
  OSP_CHECK(best >= opt.batch, "dataset ", dir, ": a batch holds one latent size, and no size has ", opt.batch,
            " samples (largest bucket: ", best, "); lower --batch");
  return d;
}

Tensor LatentDataset::empty_context() const {
  OSP_CHECK(!empty_file_.empty(), "dataset ", dir_,
            " has no empty-prompt embedding (empty_context in manifest.json); caption dropout needs it");
  try {
    const io::SafetensorsFile f = io::SafetensorsFile::open(empty_file_);
    Tensor c = to_cpu_f32(f.get("context"));
    OSP_CHECK(c.dim() == 2 && c.size(1) == text_dim_, "tensor 'context' must be [L, ", text_dim_, "], got ",
              shape_str(c.shape()));
    OSP_CHECK(all_finite(c), "tensor 'context' has NaN/Inf values");
    return c;
  } catch (const Error& e) {
    fail(str("dataset ", dir_, ": empty-prompt embedding ", empty_file_, ": ", e.what()));
  }
}

std::vector<std::vector<int64_t>> LatentDataset::epoch_batches(int64_t epoch) const {
  if (epoch == cached_epoch_) return cached_batches_;
  const size_t n = samples_.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  const PhiloxKey key = {uint32_t(opt_.seed & 0xffffffffu), uint32_t(opt_.seed >> 32)};
  for (size_t i = n; i-- > 1;) {
    const PhiloxCounter r = philox4x32_10({uint32_t(i), uint32_t(uint64_t(i) >> 32), uint32_t(epoch), kShuffleTag}, key);
    const uint64_t x = uint64_t(r[0]) | (uint64_t(r[1]) << 32);
    std::swap(order[i], order[size_t(x % (i + 1))]);
  }
  std::vector<std::vector<int64_t>> batches;
  std::map<Shape, std::vector<int64_t>> pending;
  for (size_t k : order) {
    auto& p = pending[samples_[k].latent_shape];
    p.push_back(samples_[k].id);
    if (int64_t(p.size()) == opt_.batch) {
      batches.push_back(std::move(p));
      p.clear();
    }
  }
  cached_epoch_ = epoch;
  cached_batches_ = batches;
  return batches;
}

LatentSample LatentDataset::load(int64_t id) const {
  auto it = by_id_.find(id);
  OSP_CHECK(it != by_id_.end(), "dataset ", dir_, ": no sample with id ", id);
  const LatentSampleInfo& info = samples_[it->second];
  const std::string file = (fs::path(dir_) / shard_files_[size_t(info.shard)]).string();
  try {
    auto sit = shards_->open.find(info.shard);
    if (sit == shards_->open.end()) {
      OSP_CHECK(fs::is_regular_file(file), "the file is missing");
      sit = shards_->open.emplace(info.shard, io::SafetensorsFile::open(file)).first;
    }
    const io::SafetensorsFile& f = sit->second;
    const std::string ln = str(id, ".latent"), cn = str(id, ".context");
    OSP_CHECK(f.has(ln) && f.has(cn), "tensors '", ln, "' / '", cn, "' are missing");
    LatentSample s;
    s.id = id;
    s.caption = info.caption;
    s.latent = to_cpu_f32(f.get(ln));
    s.context = to_cpu_f32(f.get(cn));
    OSP_CHECK(s.latent.shape() == info.latent_shape, "'", ln, "' has shape ", shape_str(s.latent.shape()),
              ", the manifest says ", shape_str(info.latent_shape));
    OSP_CHECK(s.context.shape() == Shape({info.context_rows, text_dim_}), "'", cn, "' has shape ",
              shape_str(s.context.shape()), ", the manifest says [", info.context_rows, ", ", text_dim_, "]");
    OSP_CHECK(all_finite(s.latent) && all_finite(s.context), "sample has NaN/Inf values");
    return s;
  } catch (const Error& e) {
    fail(str("dataset shard ", file, " (sample ", id, (info.source.empty() ? "" : ", source " + info.source),
             "): ", e.what()));
  }
}

std::vector<LatentSample> LatentDataset::next_batch() {
  const int64_t limit = 2 * int64_t(samples_.size()) + 2;  // batches to try before giving up
  for (int64_t tries = 0; tries < limit; ++tries) {
    auto batches = epoch_batches(pos_.epoch);
    if (pos_.batch >= int64_t(batches.size())) {
      OSP_CHECK(!batches.empty(), "dataset ", dir_, ": an epoch yields no batch");
      pos_.epoch++;
      pos_.batch = 0;
      continue;
    }
    const std::vector<int64_t> ids = batches[size_t(pos_.batch)];
    pos_.batch++;
    std::vector<LatentSample> out;
    for (int64_t id : ids) {
      if (!opt_.skip_bad_samples) {
        out.push_back(load(id));
        continue;
      }
      try {
        out.push_back(load(id));
      } catch (const Error& e) {
        skipped_++;
        log_warn("skipping a bad sample (", skipped_, " so far): ", e.what());
      }
    }
    if (!out.empty()) return out;
  }
  fail(str("dataset ", dir_, ": every sample tried was bad (", skipped_, " skipped)"));
}

void LatentDataset::set_position(const DataPosition& p) {
  OSP_CHECK(p.epoch >= 0 && p.batch >= 0, "data position must be >= 0, got epoch ", p.epoch, " batch ", p.batch);
  pos_ = p;
}

}  // namespace osp::train
