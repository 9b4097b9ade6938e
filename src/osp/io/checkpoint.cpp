#include "osp/io/checkpoint.h"

#include <algorithm>
#include <filesystem>

#include "osp/io/close_names.h"
#include "osp/io/pth.h"
#include "osp/io/safetensors.h"
#include "osp/io/safetensors_index.h"

namespace osp::io {

namespace fs = std::filesystem;

Tensor TensorSource::get(const std::string& name, const Shape& expected) const {
  Tensor t = get(name);
  OSP_CHECK(t.shape() == expected, "checkpoint '", path(), "': tensor '", name, "' has shape ",
            shape_str(t.shape()), ", expected ", shape_str(expected),
            " (does the model config match the checkpoint?)");
  return t;
}

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

class SafetensorsSource final : public TensorSource {
 public:
  explicit SafetensorsSource(SafetensorsFile f) : f_(std::move(f)) {}
  const std::string& path() const override { return f_.path(); }
  std::string format() const override { return "safetensors"; }
  std::vector<std::string> names() const override { return f_.names(); }
  bool has(const std::string& n) const override { return f_.has(n); }
  TensorInfo info(const std::string& n) const override {
    const auto& e = f_.entry(n);
    return {e.dtype, e.shape};
  }
  Tensor get(const std::string& n) const override { return f_.get(n); }
  const std::map<std::string, std::string>& metadata() const override { return f_.metadata(); }

 private:
  SafetensorsFile f_;
};

class ShardedSource final : public TensorSource {
 public:
  explicit ShardedSource(ShardedSafetensors s) : s_(std::move(s)) {}
  const std::string& path() const override { return s_.path(); }
  std::string format() const override { return "safetensors-sharded"; }
  std::vector<std::string> names() const override { return s_.names(); }
  bool has(const std::string& n) const override { return s_.has(n); }
  TensorInfo info(const std::string& n) const override {
    const auto& e = s_.shard_of(n).entry(n);
    return {e.dtype, e.shape};
  }
  Tensor get(const std::string& n) const override { return s_.get(n); }
  const std::map<std::string, std::string>& metadata() const override { return s_.metadata(); }

 private:
  ShardedSafetensors s_;
};

// Holds a name -> tensor map (a .pth file's views or in-memory tensors).
class MapSource final : public TensorSource {
 public:
  MapSource(std::string path, std::string format, std::map<std::string, Tensor> t,
            std::map<std::string, std::string> meta)
      : path_(std::move(path)), format_(std::move(format)), t_(std::move(t)), meta_(std::move(meta)) {}
  const std::string& path() const override { return path_; }
  std::string format() const override { return format_; }
  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (auto& [k, x] : t_) v.push_back(k);
    return v;
  }
  bool has(const std::string& n) const override { return t_.count(n) != 0; }
  TensorInfo info(const std::string& n) const override {
    const Tensor& t = find(n);
    return {t.dtype(), t.shape()};
  }
  Tensor get(const std::string& n) const override { return find(n); }
  const std::map<std::string, std::string>& metadata() const override { return meta_; }

 private:
  const Tensor& find(const std::string& n) const {
    auto it = t_.find(n);
    if (it == t_.end()) fail(missing_tensor_message(n, "'" + path_ + "'", names()));
    return it->second;
  }
  std::string path_, format_;
  std::map<std::string, Tensor> t_;
  std::map<std::string, std::string> meta_;
};

class RenamedSource final : public TensorSource {
 public:
  RenamedSource(Checkpoint inner, std::map<std::string, std::string> m, std::string what)
      : inner_(std::move(inner)), map_(std::move(m)), what_(std::move(what)) {}
  const std::string& path() const override { return inner_->path(); }
  std::string format() const override { return inner_->format() + "+" + what_; }
  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (auto& [k, x] : map_) v.push_back(k);
    return v;
  }
  bool has(const std::string& n) const override { return map_.count(n) != 0; }
  TensorInfo info(const std::string& n) const override { return inner_->info(inner(n)); }
  Tensor get(const std::string& n) const override { return inner_->get(inner(n)); }
  const std::map<std::string, std::string>& metadata() const override {
    return inner_->metadata();
  }

 private:
  const std::string& inner(const std::string& n) const {
    auto it = map_.find(n);
    if (it == map_.end())
      fail(missing_tensor_message(n, "'" + path() + "' (" + what_ + ")", names()));
    return it->second;
  }
  Checkpoint inner_;
  std::map<std::string, std::string> map_;
  std::string what_;
};

// The checkpoint file inside a directory, or "" when none fits (`why` says what was seen).
std::string pick_in_dir(const fs::path& dir, std::string* why) {
  std::vector<std::string> index, st, pth;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string n = e.path().filename().string();
    if (ends_with(n, ".safetensors.index.json")) index.push_back(n);
    else if (ends_with(n, ".safetensors")) st.push_back(n);
    else if (ends_with(n, ".pth") || ends_with(n, ".pt")) pth.push_back(n);
  }
  std::sort(index.begin(), index.end());
  std::sort(st.begin(), st.end());
  std::sort(pth.begin(), pth.end());
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  if (index.size() == 1) return (dir / index[0]).string();
  if (index.size() > 1) fail(str("'", dir.string(), "' holds several index files (", list(index),
                                 "); pass the one to load"));
  for (auto& n : st)
    if (n == "diffusion_pytorch_model.safetensors") return (dir / n).string();
  if (st.size() == 1) return (dir / st[0]).string();
  if (st.size() > 1)
    fail(str("'", dir.string(), "' holds several .safetensors files (", list(st),
             ") and no *.safetensors.index.json; pass the file to load"));
  if (pth.size() == 1) return (dir / pth[0]).string();
  if (pth.size() > 1)
    fail(str("'", dir.string(), "' holds several .pth files (", list(pth),
             "); pass the file to load"));
  *why = "no .safetensors, .safetensors.index.json or .pth file";
  return "";
}

}  // namespace

std::string resolve_checkpoint_path(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  OSP_CHECK(!ec && fs::exists(st), "checkpoint '", path, "' does not exist");
  if (!fs::is_directory(st)) return path;
  std::string why;
  std::string p = pick_in_dir(path, &why);
  if (!p.empty()) return p;
  fs::path sub = fs::path(path) / "transformer";
  if (fs::is_directory(sub)) {
    std::string why2;
    p = pick_in_dir(sub, &why2);
    if (!p.empty()) return p;
  }
  fail(str("checkpoint directory '", path, "' has ", why));
}

Checkpoint open_checkpoint(const std::string& path) {
  const std::string file = resolve_checkpoint_path(path);
  if (ends_with(file, ".index.json"))
    return std::make_shared<ShardedSource>(ShardedSafetensors::open(file));
  if (ends_with(file, ".safetensors"))
    return std::make_shared<SafetensorsSource>(SafetensorsFile::open(file));
  if (ends_with(file, ".pth") || ends_with(file, ".pt") || ends_with(file, ".bin") ||
      ends_with(file, ".ckpt")) {
    PthFile f = PthFile::open(file);
    return std::make_shared<MapSource>(file, "pth", f.tensors(), f.metadata());
  }
  // Unknown extension: sniff the first bytes (zip "PK\3\4" vs safetensors).
  Bytes b = map_file(file);
  if (b.size >= 4 && b.data[0] == 'P' && b.data[1] == 'K' && b.data[2] == 3 && b.data[3] == 4) {
    PthFile f = PthFile::parse(std::move(b));
    return std::make_shared<MapSource>(file, "pth", f.tensors(), f.metadata());
  }
  if (b.size >= 9 && b.data[8] == '{')
    return std::make_shared<SafetensorsSource>(SafetensorsFile::parse(std::move(b)));
  fail(str("checkpoint '", file, "': unknown format (expected .safetensors, "
           ".safetensors.index.json or a torch.save .pth)"));
}

Checkpoint memory_checkpoint(std::map<std::string, Tensor> tensors,
                             std::map<std::string, std::string> metadata, std::string name) {
  for (auto& [k, t] : tensors)
    OSP_CHECK(t.defined(), "memory_checkpoint: tensor '", k, "' is undefined");
  return std::make_shared<MapSource>(std::move(name), "memory", std::move(tensors),
                                     std::move(metadata));
}

Checkpoint renamed_checkpoint(Checkpoint inner, std::map<std::string, std::string> outer_to_inner,
                              std::string what) {
  OSP_CHECK(inner, "renamed_checkpoint: null checkpoint");
  for (auto& [o, i] : outer_to_inner)
    OSP_CHECK(inner->has(i), "renamed_checkpoint (", what, "): '", o, "' maps to '", i,
              "', which '", inner->path(), "' does not hold");
  return std::make_shared<RenamedSource>(std::move(inner), std::move(outer_to_inner),
                                         std::move(what));
}

void save_as_safetensors(const TensorSource& src, const std::string& path,
                         const std::map<std::string, std::string>& extra_metadata) {
  std::map<std::string, Tensor> all;
  for (const auto& n : src.names()) all.emplace(n, src.get(n));  // views: no copies yet
  std::map<std::string, std::string> meta = src.metadata();
  for (auto& [k, v] : extra_metadata) meta[k] = v;
  save_safetensors(path, all, meta);
}

Checkpoint strip_prefix(Checkpoint inner, const std::string& prefix) {
  OSP_CHECK(inner, "strip_prefix: null checkpoint");
  std::map<std::string, std::string> m;
  for (const auto& n : inner->names())
    if (n.size() > prefix.size() && n.compare(0, prefix.size(), prefix) == 0)
      m.emplace(n.substr(prefix.size()), n);
  OSP_CHECK(!m.empty(), "checkpoint '", inner->path(), "' has no tensor named '", prefix,
            "...'");
  return std::make_shared<RenamedSource>(std::move(inner), std::move(m), "prefix '" + prefix + "'");
}

}  // namespace osp::io
