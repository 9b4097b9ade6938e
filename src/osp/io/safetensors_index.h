// Sharded safetensors: "<name>.safetensors.index.json" with a "weight_map" from tensor name to
// shard file (relative to the index). Every shard is opened (mmapped) once and validated:
// a missing shard, a tensor listed in two shards (or stored in a shard the index does not
// name for it), or a listed tensor missing from its shard is an osp::Error.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "osp/io/safetensors.h"

namespace osp::io {

class ShardedSafetensors {
 public:
  static ShardedSafetensors open(const std::string& index_path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return where_.size(); }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& shard_of(const std::string& name) const;  // throws with close names
  Tensor get(const std::string& name) const { return shard_of(name).get(name); }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // The shards' __metadata__ (first shard wins on conflicts) plus the index's "metadata"
  // object as "index.<key>" (non-string values as JSON text).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t> where_;  // tensor -> shard
  std::map<std::string, std::string> metadata_;
};

}  // namespace osp::io
