#include "osp/io/safetensors_index.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "osp/io/close_names.h"

namespace osp::io {

namespace fs = std::filesystem;
using nlohmann::json;

ShardedSafetensors ShardedSafetensors::open(const std::string& index_path) {
  ShardedSafetensors s;
  s.path_ = index_path;
  const std::string& W = s.path_;
  std::vector<uint8_t> raw = read_file_bytes(index_path);
  OSP_CHECK(raw.size() <= (64u << 20), W, ": index file of ", raw.size(), " bytes is too large");
  // The JSON library keeps the last of duplicate keys silently; a tensor listed twice in
  // weight_map (possibly for two shards) must be an error instead.
  std::set<std::string> seen_keys;
  std::string top_key;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) &&
        depth >= 16)
      fail(str(W, ": index JSON nests too deeply"));
    if (ev == json::parse_event_t::key) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (depth == 1) top_key = k;
      if (depth == 2 && top_key == "weight_map" && !seen_keys.insert(k).second)
        fail(str(W, ": tensor '", k, "' is listed twice in weight_map"));
    }
    return true;
  };
  json j;
  try {
    j = json::parse(raw.begin(), raw.end(), cb);
  } catch (const json::exception& e) {
    fail(str(W, ": not valid JSON (", e.what(), ")"));
  }
  OSP_CHECK(j.is_object(), W, ": index must be a JSON object");
  auto wm = j.find("weight_map");
  OSP_CHECK(wm != j.end() && wm->is_object(), W, ": index has no \"weight_map\" object");
  OSP_CHECK(!wm->empty(), W, ": \"weight_map\" is empty");
  if (auto md = j.find("metadata"); md != j.end() && md->is_object())
    for (auto it = md->begin(); it != md->end(); ++it)
      s.metadata_["index." + it.key()] =
          it.value().is_string() ? it.value().get<std::string>() : it.value().dump();

  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> shard_index;  // file name -> shards_ slot
  std::map<std::string, std::string> listed;  // tensor -> shard file
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    OSP_CHECK(it.value().is_string(), W, ": weight_map value for '", it.key(),
              "' must be a shard file name");
    const std::string file = it.value().get<std::string>();
    const fs::path rel(file);
    OSP_CHECK(!file.empty() && rel.is_relative(), W, ": shard '", file,
              "' must be a file name relative to the index");
    for (const auto& part : rel)
      OSP_CHECK(part != "..", W, ": shard path '", file, "' may not leave the index's folder");
    if (!shard_index.count(file)) {
      const fs::path p = dir / rel;
      OSP_CHECK(fs::exists(p), W, ": shard '", file, "' (listed for tensor '", it.key(),
                "') is missing: expected at ", p.string());
      shard_index[file] = s.shards_.size();
      s.shards_.push_back(SafetensorsFile::open(p.string()));
    }
    listed[it.key()] = file;
  }
  // Every listed tensor is in its shard; every stored tensor is listed for that shard only.
  for (auto& [name, file] : listed) {
    const SafetensorsFile& sh = s.shards_[shard_index[file]];
    if (!sh.has(name))
      fail(str(W, ": tensor '", name, "' is listed in shard '", file, "' but that shard does not "
                  "hold it; ",
               missing_tensor_message(name, "'" + sh.path() + "'", sh.names())));
    s.where_[name] = shard_index[file];
  }
  for (auto& [file, idx] : shard_index) {
    for (const auto& name : s.shards_[idx].names()) {
      auto l = listed.find(name);
      OSP_CHECK(l != listed.end(), W, ": shard '", file, "' holds tensor '", name,
                "', which the index does not list");
      OSP_CHECK(l->second == file, W, ": tensor '", name, "' is stored in two shards ('", file,
                "' and '", l->second, "')");
    }
    for (auto& [k, v] : s.shards_[idx].metadata()) s.metadata_.emplace(k, v);
  }
  return s;
}

std::vector<std::string> ShardedSafetensors::names() const {
  std::vector<std::string> v;
  for (auto& [k, i] : where_) v.push_back(k);
  return v;
}

const SafetensorsFile& ShardedSafetensors::shard_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(missing_tensor_message(name, "'" + path_ + "'", names()));
  return shards_[it->second];
}

}  // namespace osp::io
