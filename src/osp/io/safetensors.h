// safetensors reader (mmap, zero-copy, fully validated header) and writer.
//
// Format: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// then the raw little-endian data; offsets are relative to the end of the header.
// Supported dtypes: F32 BF16 F16 F8_E4M3 I32 I64 U8 BOOL(read as u8) F64, plus HIF8, an osp
// extension for HiF8 weight storage (other tools will not read such files).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"
#include "osp/io/bytes.h"

namespace osp::io {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  std::string dtype_name;  // as written in the header ("BOOL" stays "BOOL")
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

class SafetensorsFile {
 public:
  // Header limit: the official implementation refuses headers over 100 MB.
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
  static constexpr int kMaxRank = 16;

  SafetensorsFile() = default;
  // mmaps the file read-only and validates the whole header. Throws osp::Error naming the
  // file and the problem.
  static SafetensorsFile open(const std::string& path);
  // Parses bytes already in memory (tests, fuzzing); tensors keep `bytes.owner` alive.
  static SafetensorsFile parse(Bytes bytes);

  const std::string& path() const { return bytes_.name; }
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return entries_.size(); }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // throws with close names
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A CPU tensor viewing the mapped bytes (zero-copy; it keeps the mapping alive). The
  // memory is read-only: clone() before writing into it. Data that is not aligned to the
  // element size (possible with foreign writers) is copied instead.
  Tensor get(const std::string& name) const;

 private:
  Bytes bytes_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The safetensors name of a dtype ("F32", "BF16", ..., "HIF8").
const char* safetensors_dtype_name(DType t);

// Serializes tensors (any device, any strides; copied to contiguous CPU) in name order,
// header padded with spaces to a multiple of 8 bytes so every tensor is 8-byte aligned.
std::vector<uint8_t> serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                           const std::map<std::string, std::string>& metadata = {});
// Writes serialize_safetensors() output to `path` atomically (io/atomic_file.h: a hidden
// temporary beside it, fsync'ed and renamed; a failure or Ctrl-C leaves any previous file
// intact). `ow` = Refuse throws before writing if `path` exists.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      Overwrite ow = Overwrite::Allow);

}  // namespace osp::io
