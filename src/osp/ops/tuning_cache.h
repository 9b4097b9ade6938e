// What the autotuners chose, kept across processes: a small JSON file that maps a tuning key
// (what was tuned, on which card and library version, at which shape) to the chosen candidate's
// index in the library's own candidate list and a check string that must match again before the
// index is trusted (e.g. the list's length and the chosen engine).
//
// The file is read on first use; every put() merges what is on disk with this process's entries
// and replaces the file atomically (a temporary file, then rename), so processes that tune one
// after another keep each other's entries (two writing at the same instant can drop the other's
// newest entry: it is timed again in a later run; the file is never torn). A file that does not
// parse as a tuning cache is never overwritten: one warning names it and the cache then works in
// memory only. A write that fails (read-only home, full disk) warns once and leaves the cache in
// memory.
//
//   {"format": "osp-tuning-cache", "version": 1,
//    "entries": {"<key>": {"index": 3, "check": "8|engine 67"}, ...}}
#pragma once
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace osp::ops {

struct TuningChoice {
  int index = -1;
  std::string check;
};

class TuningCache {
 public:
  // path "" keeps everything in memory.
  explicit TuningCache(std::string path);
  std::optional<TuningChoice> find(const std::string& key);
  void put(const std::string& key, const TuningChoice& choice);
  const std::string& path() const { return path_; }
  // False when there is no path, or the file could not be read as a tuning cache or written.
  bool persistent();

 private:
  void load_locked();
  // The file is not (or no longer) ours to write: warn once with why, keep entries in memory.
  void stop_writing_locked(const std::string& why);
  std::string path_;
  bool loaded_ = false, writable_ = true;
  std::map<std::string, TuningChoice> entries_;
  std::mutex mu_;
};

// Where the process's cache lives: OSP_TUNING_CACHE (a path, or "off" for none; core/settings.h),
// else $XDG_CACHE_HOME/osp/tuning.json, else $HOME/.cache/osp/tuning.json, else none ("").
std::string tuning_cache_path(const std::string& setting, const std::function<const char*(const char*)>& getenv);

// The process's cache (at tuning_cache_path(engine_settings().tuning_cache, std::getenv)).
TuningCache& process_tuning_cache();

}  // namespace osp::ops
