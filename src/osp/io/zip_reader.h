// A read-only zip archive reader for PyTorch checkpoints (torch.save writes an uncompressed
// zip: data.pkl + one record per storage). Reads the central directory (zip64 included, for
// multi-GB files), validates every offset and size against the file, and exposes stored
// entries zero-copy. Compressed or encrypted entries are listed but refused on access.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/io/bytes.h"

namespace osp::io {

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;  // 0 = stored, 8 = deflate, ...
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;          // uncompressed
  uint64_t local_offset = 0;  // of the local file header
  uint64_t data_offset = 0;   // of the entry's bytes
};

class ZipReader {
 public:
  static constexpr uint64_t kMaxEntries = 1u << 20;

  ZipReader() = default;
  // Parses and validates the archive; throws osp::Error naming the file and the problem.
  static ZipReader parse(Bytes bytes);

  const Bytes& bytes() const { return bytes_; }
  const std::string& path() const { return bytes_.name; }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;  // null if absent
  // Pointer to a stored entry's bytes (entry.size of them). Throws for compressed or
  // encrypted entries.
  const uint8_t* data(const ZipEntry& e) const;
  // Checks the entry's CRC-32 against the central directory (throws on mismatch).
  void verify_crc(const ZipEntry& e) const;

 private:
  Bytes bytes_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t> index_;
};

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0);

}  // namespace osp::io
