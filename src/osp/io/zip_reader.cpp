#include "osp/io/zip_reader.h"

#include <array>

namespace osp::io {

namespace {
constexpr uint32_t kSigLocal = 0x04034b50, kSigCentral = 0x02014b50, kSigEocd = 0x06054b50,
                   kSigZip64Locator = 0x07064b50, kSigZip64Eocd = 0x06064b50;
constexpr uint64_t kEocdSize = 22, kCentralSize = 46, kLocalSize = 30, kLocatorSize = 20,
                   kZip64EocdSize = 56;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}
}  // namespace

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

ZipReader ZipReader::parse(Bytes bytes) {
  ZipReader z;
  z.bytes_ = std::move(bytes);
  const uint8_t* b = z.bytes_.data;
  const uint64_t size = z.bytes_.size;
  const std::string& W = z.bytes_.name;
  OSP_CHECK(size >= kEocdSize, W, ": ", size, " bytes is too short for a zip archive (truncated?)");

  // End of central directory: the last record whose comment runs exactly to the end.
  uint64_t eocd = UINT64_MAX;
  const uint64_t lowest = size > kEocdSize + 0xffff ? size - kEocdSize - 0xffff : 0;
  for (uint64_t p = size - kEocdSize + 1; p-- > lowest;) {
    if (le32(b + p) == kSigEocd && p + kEocdSize + le16(b + p + 20) == size) {
      eocd = p;
      break;
    }
  }
  if (eocd == UINT64_MAX) {
    if (size >= 2 && b[0] == 0x80 && b[1] <= 5)
      fail(str(W, ": this is a legacy (pre-1.6) torch.save file, not a zip archive; re-save it "
                  "with a recent PyTorch or convert it to safetensors"));
    fail(str(W, ": no zip end-of-central-directory record found (file truncated or not a zip "
                "archive)"));
  }
  const uint8_t* e = b + eocd;
  OSP_CHECK(le16(e + 4) == 0 && le16(e + 6) == 0, W, ": multi-disk zip archives are not supported");
  uint64_t n_entries = le16(e + 10), cd_size = le32(e + 12), cd_offset = le32(e + 16);
  uint64_t cd_limit = eocd;  // the central directory ends before this

  // Zip64: a locator right before the EOCD points at the zip64 EOCD record.
  if (eocd >= kLocatorSize && le32(b + eocd - kLocatorSize) == kSigZip64Locator) {
    const uint8_t* loc = b + eocd - kLocatorSize;
    uint64_t z64 = le64(loc + 8);
    OSP_CHECK(z64 <= eocd - kLocatorSize && kZip64EocdSize <= eocd - kLocatorSize - z64, W,
              ": zip64 end-of-central-directory offset ", z64, " is out of range");
    const uint8_t* r = b + z64;
    OSP_CHECK(le32(r) == kSigZip64Eocd, W, ": bad zip64 end-of-central-directory signature");
    OSP_CHECK(le32(r + 16) == 0 && le32(r + 20) == 0, W,
              ": multi-disk zip archives are not supported");
    n_entries = le64(r + 32);
    cd_size = le64(r + 40);
    cd_offset = le64(r + 48);
    cd_limit = z64;
  } else {
    OSP_CHECK(n_entries != 0xffff && cd_size != 0xffffffffu && cd_offset != 0xffffffffu, W,
              ": the archive needs zip64 records but has none (truncated or corrupt)");
  }
  OSP_CHECK(range_ok(cd_offset, cd_size, cd_limit), W, ": central directory [", cd_offset, ", +",
            cd_size, ") lies outside the archive (", cd_limit, " bytes before its end record)");
  OSP_CHECK(n_entries <= kMaxEntries, W, ": ", n_entries, " zip entries exceeds the limit ",
            kMaxEntries);
  OSP_CHECK(n_entries * kCentralSize <= cd_size, W, ": central directory of ", cd_size,
            " bytes cannot hold ", n_entries, " entries");

  z.entries_.reserve(size_t(n_entries));
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < n_entries; ++i) {
    OSP_CHECK(range_ok(pos, kCentralSize, cd_end) && le32(b + pos) == kSigCentral, W,
              ": bad central directory entry ", i, " at offset ", pos);
    const uint8_t* c = b + pos;
    ZipEntry en;
    en.flags = le16(c + 8);
    en.method = le16(c + 10);
    en.crc32 = le32(c + 16);
    en.compressed_size = le32(c + 20);
    en.size = le32(c + 24);
    const uint64_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
    const uint32_t disk = le16(c + 34);
    en.local_offset = le32(c + 42);
    OSP_CHECK(range_ok(pos + kCentralSize, name_len + extra_len + comment_len, cd_end), W,
              ": central directory entry ", i, " runs past the directory");
    en.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    // Zip64 extended information: 64-bit values for the fields that hold 0xffffffff.
    const uint8_t* x = c + kCentralSize + name_len;
    const uint8_t* xend = x + extra_len;
    while (xend - x >= 4) {
      uint16_t id = le16(x), len = le16(x + 2);
      OSP_CHECK(uint64_t(xend - x - 4) >= len, W, ": zip entry '", en.name,
                "' has a malformed extra field");
      if (id == 0x0001) {
        const uint8_t* q = x + 4;
        const uint8_t* qend = q + len;
        auto take = [&](uint64_t& v) {
          OSP_CHECK(qend - q >= 8, W, ": zip entry '", en.name, "' has a short zip64 field");
          v = le64(q);
          q += 8;
        };
        if (en.size == 0xffffffffu) take(en.size);
        if (en.compressed_size == 0xffffffffu) take(en.compressed_size);
        if (en.local_offset == 0xffffffffu) take(en.local_offset);
      }
      x += 4 + len;
    }
    OSP_CHECK(disk == 0 || disk == 0xffff, W, ": zip entry '", en.name, "' is on another disk");
    // Local header: must lie, with its data, before the central directory.
    OSP_CHECK(range_ok(en.local_offset, kLocalSize, cd_offset) &&
                  le32(b + en.local_offset) == kSigLocal,
              W, ": zip entry '", en.name, "' has a bad local header offset ", en.local_offset);
    const uint8_t* l = b + en.local_offset;
    const uint64_t lname = le16(l + 26), lextra = le16(l + 28);
    OSP_CHECK(range_ok(en.local_offset + kLocalSize, lname + lextra, cd_offset), W,
              ": zip entry '", en.name, "' local header runs past the data area");
    OSP_CHECK(lname == name_len && std::memcmp(l + kLocalSize, en.name.data(), name_len) == 0, W,
              ": zip entry '", en.name, "' has a different name in its local header");
    en.data_offset = en.local_offset + kLocalSize + lname + lextra;
    OSP_CHECK(range_ok(en.data_offset, en.compressed_size, cd_offset), W, ": zip entry '", en.name,
              "' data [", en.data_offset, ", +", en.compressed_size,
              ") runs past the data area (file truncated?)");
    OSP_CHECK(en.method != 0 || en.compressed_size == en.size, W, ": stored zip entry '", en.name,
              "' has compressed size ", en.compressed_size, " != size ", en.size);
    OSP_CHECK(z.index_.emplace(en.name, z.entries_.size()).second, W, ": zip entry '", en.name,
              "' appears twice");
    z.entries_.push_back(std::move(en));
    pos += kCentralSize + name_len + extra_len + comment_len;
  }
  return z;
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const uint8_t* ZipReader::data(const ZipEntry& e) const {
  OSP_CHECK(!(e.flags & 1), path(), ": zip entry '", e.name, "' is encrypted");
  OSP_CHECK(e.method == 0, path(), ": zip entry '", e.name, "' is compressed (method ", e.method,
            "); osp reads only stored (uncompressed) entries, as torch.save writes them; "
            "re-save the checkpoint with torch.save or convert it to safetensors");
  return bytes_.data + e.data_offset;
}

void ZipReader::verify_crc(const ZipEntry& e) const {
  const uint8_t* p = data(e);
  uint32_t c = crc32(p, size_t(e.size));
  OSP_CHECK(c == e.crc32, path(), ": zip entry '", e.name, "' fails its CRC-32 check (file corrupt)");
}

}  // namespace osp::io
