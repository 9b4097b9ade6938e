// Helpers for the io tests: temp dirs, error expectations, a minimal zip writer (stored
// entries, optional zip64 records, torch-style 64-byte data alignment) and a pickle writer
// that produces what torch.save writes for a state dict.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "osp/core/error.h"
#include "osp/io/zip_reader.h"

namespace osp::iotest {

namespace fs = std::filesystem;
using ByteVec = std::vector<uint8_t>;

struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("osp_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline void write_bytes(const std::string& path, const ByteVec& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// Runs fn, requires an osp::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<const char*> parts) {
  try {
    fn();
  } catch (const osp::Error& e) {
    std::string m = e.what();
    for (const char* p : parts) EXPECT_NE(m.find(p), std::string::npos) << "message: " << m;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected osp::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected an osp::Error, nothing was thrown";
}

inline void put16(ByteVec& b, uint16_t v) {
  b.push_back(uint8_t(v));
  b.push_back(uint8_t(v >> 8));
}
inline void put32(ByteVec& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(uint8_t(v >> (8 * i)));
}
inline void put64(ByteVec& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(v >> (8 * i)));
}

struct ZipInput {
  std::string name;
  ByteVec data;
  uint16_t method = 0;  // pretend-compressed entries set 8 (the bytes are stored as they are)
};

enum class Zip64 {
  None,   // plain zip
  Auto,   // as PyTorch's miniz writes big archives: zip64 end records, and per-entry zip64
          // fields only for values that do not fit 32 bits
  Force,  // zip64 fields for every size and offset
};

// A zip archive split in two at entry `gap_at`: `gap` zero bytes (not materialized) lie
// between head and tail, and every offset after them accounts for the gap. Lets a test
// write a > 4 GiB archive as a sparse file.
struct ZipParts {
  ByteVec head, tail;
  uint64_t gap = 0;
};

inline ZipParts make_zip_parts(const std::vector<ZipInput>& entries, Zip64 mode, size_t gap_at,
                               uint64_t gap) {
  ZipParts z;
  z.gap = gap;
  ByteVec cd;
  ByteVec* out = &z.head;
  auto vpos = [&] { return out == &z.head ? uint64_t(z.head.size()) : gap + z.head.size() + z.tail.size(); };
  const bool z64 = mode != Zip64::None;
  for (size_t k = 0; k < entries.size(); ++k) {
    if (k == gap_at) out = &z.tail;
    const auto& e = entries[k];
    const uint64_t local = vpos();
    const uint32_t crc = osp::io::crc32(e.data.data(), e.data.size());
    const bool big_size = mode == Zip64::Force || e.data.size() >= 0xffffffffu;
    const bool big_off = mode == Zip64::Force || local >= 0xffffffffu;
    const uint16_t local_x = big_size ? 20 : 0;
    const uint16_t central_x = uint16_t((big_size || big_off) ? 4 + (big_size ? 16 : 0) + (big_off ? 8 : 0) : 0);
    const uint64_t fixed = 30 + e.name.size() + local_x;
    uint64_t pad = (64 - (local + fixed + 4) % 64) % 64;
    // local header
    put32(*out, 0x04034b50);
    put16(*out, z64 ? 45 : 20);
    put16(*out, 0);
    put16(*out, e.method);
    put32(*out, 0);  // time/date
    put32(*out, crc);
    put32(*out, big_size ? 0xffffffffu : uint32_t(e.data.size()));
    put32(*out, big_size ? 0xffffffffu : uint32_t(e.data.size()));
    put16(*out, uint16_t(e.name.size()));
    put16(*out, uint16_t(local_x + 4 + pad));
    out->insert(out->end(), e.name.begin(), e.name.end());
    if (big_size) {
      put16(*out, 1);
      put16(*out, 16);
      put64(*out, e.data.size());
      put64(*out, e.data.size());
    }
    put16(*out, 0x4246);  // "FB" padding, as PyTorch writes
    put16(*out, uint16_t(pad));
    out->insert(out->end(), pad, 'Z');
    out->insert(out->end(), e.data.begin(), e.data.end());
    // central directory entry
    put32(cd, 0x02014b50);
    put16(cd, 45);
    put16(cd, z64 ? 45 : 20);
    put16(cd, 0);
    put16(cd, e.method);
    put32(cd, 0);
    put32(cd, crc);
    put32(cd, big_size ? 0xffffffffu : uint32_t(e.data.size()));
    put32(cd, big_size ? 0xffffffffu : uint32_t(e.data.size()));
    put16(cd, uint16_t(e.name.size()));
    put16(cd, central_x);
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, 0);
    put32(cd, 0);
    put32(cd, big_off ? 0xffffffffu : uint32_t(local));
    cd.insert(cd.end(), e.name.begin(), e.name.end());
    if (central_x) {
      put16(cd, 1);
      put16(cd, uint16_t(central_x - 4));
      if (big_size) {
        put64(cd, e.data.size());
        put64(cd, e.data.size());
      }
      if (big_off) put64(cd, local);
    }
  }
  if (gap_at >= entries.size()) out = &z.tail;
  const uint64_t cd_off = vpos();
  out->insert(out->end(), cd.begin(), cd.end());
  if (z64) {
    const uint64_t rec = vpos();
    put32(*out, 0x06064b50);
    put64(*out, 44);
    put16(*out, 45);
    put16(*out, 45);
    put32(*out, 0);
    put32(*out, 0);
    put64(*out, entries.size());
    put64(*out, entries.size());
    put64(*out, cd.size());
    put64(*out, cd_off);
    put32(*out, 0x07064b50);
    put32(*out, 0);
    put64(*out, rec);
    put32(*out, 1);
  }
  const bool cd_big = mode == Zip64::Force || cd_off >= 0xffffffffu;
  put32(*out, 0x06054b50);
  put16(*out, 0);
  put16(*out, 0);
  put16(*out, mode == Zip64::Force ? 0xffff : uint16_t(entries.size()));
  put16(*out, mode == Zip64::Force ? 0xffff : uint16_t(entries.size()));
  put32(*out, mode == Zip64::Force ? 0xffffffffu : uint32_t(cd.size()));
  put32(*out, cd_big ? 0xffffffffu : uint32_t(cd_off));
  put16(*out, 0);
  return z;
}

// A zip archive as torch.save lays it out: each entry's data 64-byte aligned through a
// padding extra field. With zip64 = true every size/offset goes through zip64 records.
inline ByteVec make_zip(const std::vector<ZipInput>& entries, bool zip64 = false) {
  ZipParts z = make_zip_parts(entries, zip64 ? Zip64::Force : Zip64::None, SIZE_MAX, 0);
  z.head.insert(z.head.end(), z.tail.begin(), z.tail.end());
  return z.head;
}

// Pickle protocol-2 writer with the opcodes torch.save uses.
struct PickleWriter {
  ByteVec b;
  uint32_t next_memo = 0;
  PickleWriter& op(uint8_t c) {
    b.push_back(c);
    return *this;
  }
  PickleWriter& proto() { return op(0x80).op(2); }
  PickleWriter& mark() { return op('('); }
  PickleWriter& str(const std::string& s) {
    op('X');
    put32(b, uint32_t(s.size()));
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  PickleWriter& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').op(uint8_t(v));
    if (v >= 0 && v < 65536) {
      op('M');
      put16(b, uint16_t(v));
      return *this;
    }
    if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      put32(b, uint32_t(int32_t(v)));
      return *this;
    }
    op(0x8a).op(8);
    put64(b, uint64_t(v));
    return *this;
  }
  PickleWriter& global(const std::string& mod, const std::string& name) {
    op('c');
    b.insert(b.end(), mod.begin(), mod.end());
    op('\n');
    b.insert(b.end(), name.begin(), name.end());
    return op('\n');
  }
  PickleWriter& tuple_of(const std::vector<int64_t>& v) {
    if (v.empty()) return op(')');
    mark();
    for (auto x : v) integer(x);
    return op('t');
  }
  PickleWriter& put() { return op('q').op(uint8_t(next_memo++)); }
  // key, then the value of torch._utils._rebuild_tensor_v2(...) for one tensor.
  PickleWriter& tensor(const std::string& key, const std::string& storage_cls,
                       const std::string& storage_key, int64_t storage_numel, int64_t offset,
                       const std::vector<int64_t>& shape, const std::vector<int64_t>& strides) {
    str(key);
    return tensor_value(storage_cls, storage_key, storage_numel, offset, shape, strides);
  }
  PickleWriter& tensor_value(const std::string& storage_cls, const std::string& storage_key,
                             int64_t storage_numel, int64_t offset,
                             const std::vector<int64_t>& shape, const std::vector<int64_t>& strides) {
    global("torch._utils", "_rebuild_tensor_v2");
    mark();
    mark().str("storage").global("torch", storage_cls).str(storage_key).str("cpu");
    integer(storage_numel).op('t').op('Q');
    integer(offset).tuple_of(shape).tuple_of(strides).op(0x89);
    global("collections", "OrderedDict").op(')').op('R');
    op('t').op('R');
    return *this;
  }
  PickleWriter& stop() { return op('.'); }
};

// A torch.save-like archive: "<prefix>/data.pkl", "<prefix>/byteorder", storage records.
inline std::vector<ZipInput> pth_entries(const ByteVec& pickle,
                                         const std::vector<std::pair<std::string, ByteVec>>& storages,
                                         const std::string& prefix = "archive") {
  std::vector<ZipInput> in;
  in.push_back({prefix + "/data.pkl", pickle});
  in.push_back({prefix + "/byteorder", ByteVec{'l', 'i', 't', 't', 'l', 'e'}});
  for (auto& [k, v] : storages) in.push_back({prefix + "/data/" + k, v});
  in.push_back({prefix + "/version", ByteVec{'3', '\n'}});
  return in;
}
inline ByteVec make_pth(const ByteVec& pickle, const std::vector<std::pair<std::string, ByteVec>>& storages,
                        bool zip64 = false, const std::string& prefix = "archive") {
  return make_zip(pth_entries(pickle, storages, prefix), zip64);
}

template <typename T>
ByteVec as_bytes(const std::vector<T>& v) {
  ByteVec b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace osp::iotest
