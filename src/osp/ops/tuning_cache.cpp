#include "osp/ops/tuning_cache.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/core/settings.h"

namespace osp::ops {
namespace {

constexpr const char* kFormat = "osp-tuning-cache";
constexpr int kVersion = 1;

// Reads path into *out. Missing file: true, nothing read. A file that is not a tuning cache of
// this version: false with the reason.
bool read_file(const std::string& path, std::map<std::string, TuningChoice>* out, std::string* why) {
  if (!std::filesystem::exists(path)) return true;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *why = "cannot be opened";
    return false;
  }
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    const nlohmann::json j = nlohmann::json::parse(ss.str());
    if (!j.is_object() || j.value("format", "") != kFormat) {
      *why = str("is not an osp tuning cache (no \"format\": \"", kFormat, "\")");
      return false;
    }
    if (j.value("version", 0) != kVersion) {
      *why = str("has version ", j.value("version", 0), ", this build reads ", kVersion);
      return false;
    }
    for (const auto& [key, e] : j.at("entries").items())
      (*out)[key] = TuningChoice{e.at("index").get<int>(), e.at("check").get<std::string>()};
  } catch (const nlohmann::json::exception& e) {
    *why = str("does not parse (", e.what(), ")");
    return false;
  }
  return true;
}

}  // namespace

TuningCache::TuningCache(std::string path) : path_(std::move(path)) {}

void TuningCache::load_locked() {
  if (loaded_) return;
  loaded_ = true;
  if (path_.empty()) return;
  std::string why;
  if (!read_file(path_, &entries_, &why)) {
    entries_.clear();
    stop_writing_locked(str(why, ": left untouched"));
  }
}

void TuningCache::stop_writing_locked(const std::string& why) {
  writable_ = false;
  log_warn("tuning cache ", path_, " ", why, ", tuning results are kept in memory only");
}

std::optional<TuningChoice> TuningCache::find(const std::string& key) {
  std::lock_guard<std::mutex> lk(mu_);
  load_locked();
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

bool TuningCache::persistent() {
  std::lock_guard<std::mutex> lk(mu_);
  load_locked();
  return !path_.empty() && writable_;
}

void TuningCache::put(const std::string& key, const TuningChoice& choice) {
  std::lock_guard<std::mutex> lk(mu_);
  load_locked();
  entries_[key] = choice;
  if (path_.empty() || !writable_) return;
  // Merge with what other processes wrote since we read, ours winning, then replace atomically.
  std::map<std::string, TuningChoice> merged;
  std::string why;
  if (!read_file(path_, &merged, &why)) {
    stop_writing_locked(str(why, ": left untouched"));
    return;
  }
  for (const auto& [k, v] : entries_) merged[k] = v;
  entries_ = merged;
  nlohmann::json j = {{"format", kFormat}, {"version", kVersion}, {"entries", nlohmann::json::object()}};
  for (const auto& [k, v] : merged) j["entries"][k] = {{"index", v.index}, {"check", v.check}};
  std::error_code ec;
  const std::filesystem::path p(path_);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  const std::string tmp = str(path_, ".tmp.", getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << j.dump(1) << "\n";
    if (!f.flush()) ec = std::make_error_code(std::errc::io_error);
  }
  if (!ec) std::filesystem::rename(tmp, p, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    stop_writing_locked("cannot be written");
  }
}

std::string tuning_cache_path(const std::string& setting, const std::function<const char*(const char*)>& getenv) {
  if (setting == "off") return "";
  if (!setting.empty()) return setting;
  const char* xdg = getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return str(xdg, "/osp/tuning.json");
  const char* home = getenv("HOME");
  if (home && *home) return str(home, "/.cache/osp/tuning.json");
  return "";
}

TuningCache& process_tuning_cache() {
  static TuningCache* c = new TuningCache(  // leaked on purpose: used until exit
      tuning_cache_path(engine_settings().tuning_cache, [](const char* n) { return std::getenv(n); }));
  return *c;
}

}  // namespace osp::ops
