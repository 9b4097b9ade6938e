// Read-only byte ranges: a memory-mapped file or an in-memory buffer, kept alive by a
// shared owner so that zero-copy tensors can point into them. Bounds-checked little-endian
// readers for the file parsers (safetensors, zip, pickle).
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/error.h"

namespace osp::io {

// A contiguous, read-only range of bytes. `owner` keeps the memory alive (the mapping or
// the vector); tensors that view these bytes hold a copy of it.
struct Bytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::shared_ptr<void> owner;
  std::string name;  // file path or a description, for error messages
};

// Maps a whole file read-only (PROT_READ, MAP_PRIVATE). Empty files give size 0 and no
// mapping. Throws osp::Error naming the path when it cannot be opened or mapped.
Bytes map_file(const std::string& path);

// Wraps a buffer (copied) as Bytes; used by tests and for in-memory parsing.
Bytes bytes_from_vector(std::vector<uint8_t> v, const std::string& name = "<memory>");

// Whole file into a vector (small files: index json).
std::vector<uint8_t> read_file_bytes(const std::string& path);

// Bounds checks used by the parsers: [off, off+len) inside [0, size) without overflow.
inline bool range_ok(uint64_t off, uint64_t len, uint64_t size) {
  return off <= size && len <= size - off;
}

inline uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t le64(const uint8_t* p) { return uint64_t(le32(p)) | (uint64_t(le32(p + 4)) << 32); }

}  // namespace osp::io
