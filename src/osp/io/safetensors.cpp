#include "osp/io/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "osp/core/interrupt.h"
#include "osp/io/close_names.h"

namespace osp::io {

using nlohmann::json;

namespace {

// Dtypes accepted from a header. Anything else is an error naming the dtype and tensor.
bool parse_st_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32},  {"BF16", DType::BF16}, {"F16", DType::F16},
      {"F8_E4M3", DType::F8E4M3}, {"I32", DType::I32}, {"I64", DType::I64},
      {"U8", DType::U8},    {"BOOL", DType::U8},   {"F64", DType::F64},
      {"HIF8", DType::HiF8}};
  for (auto& [n, d] : table)
    if (s == n) {
      *out = d;
      return true;
    }
  return false;
}

// JSON nesting depth allowed in a header (a valid header needs 3: root, tensor, shape).
constexpr int kMaxJsonDepth = 8;

// Parses the header with a callback that refuses deep nesting and duplicate keys (the JSON
// library would silently keep the last duplicate).
json parse_header_json(const uint8_t* p, size_t n, const std::string& where) {
  std::vector<std::set<std::string>> keys_at_depth;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    if (ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) {
      if (depth >= kMaxJsonDepth)
        fail(str(where, ": header JSON nests deeper than ", kMaxJsonDepth, " levels"));
      if (ev == json::parse_event_t::object_start) {
        if (int(keys_at_depth.size()) <= depth + 1) keys_at_depth.resize(depth + 2);
        keys_at_depth[depth + 1].clear();
      }
    } else if (ev == json::parse_event_t::key) {
      if (int(keys_at_depth.size()) <= depth) keys_at_depth.resize(depth + 1);
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys_at_depth[depth].insert(k).second)
        fail(str(where, ": header JSON has the key '", k, "' twice"));
    }
    return true;
  };
  try {
    return json::parse(p, p + n, cb, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    fail(str(where, ": header is not valid JSON (", e.what(), ")"));
  }
}

uint64_t get_u64(const json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    OSP_CHECK(x >= 0, what, " is negative (", x, ")");
    return uint64_t(x);
  }
  fail(str(what, " must be a non-negative integer, got ", v.dump()));
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F8E4M3: return "F8_E4M3";
    case DType::HiF8: return "HIF8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::F64: return "F64";
  }
  fail("safetensors_dtype_name: invalid dtype");
}

SafetensorsFile SafetensorsFile::open(const std::string& path) { return parse(map_file(path)); }

SafetensorsFile SafetensorsFile::parse(Bytes bytes) {
  SafetensorsFile f;
  f.bytes_ = std::move(bytes);
  const std::string& W = f.bytes_.name;
  const uint64_t size = f.bytes_.size;
  OSP_CHECK(size >= 8, W, ": file is ", size,
            " bytes, too short for a safetensors file (needs an 8-byte header length)");
  const uint64_t n = le64(f.bytes_.data);
  OSP_CHECK(n <= kMaxHeaderBytes, W, ": header length ", n, " bytes is absurdly large (limit ",
            kMaxHeaderBytes, "); the file is corrupt or not safetensors");
  OSP_CHECK(n <= size - 8, W, ": header length ", n, " reaches past the end of the file (",
            size, " bytes); the file is truncated or not safetensors");
  OSP_CHECK(n >= 2, W, ": header length ", n, " is too small to hold a JSON object");
  f.data_start_ = 8 + n;
  const uint64_t data_size = size - f.data_start_;

  json h = parse_header_json(f.bytes_.data + 8, size_t(n), W);
  OSP_CHECK(h.is_object(), W, ": header must be a JSON object, got ", h.type_name());

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      OSP_CHECK(v.is_object(), W, ": __metadata__ must be an object of strings, got ",
                v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        OSP_CHECK(m.value().is_string(), W, ": __metadata__ value for '", m.key(),
                  "' must be a string, got ", m.value().type_name());
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string T = str(W, ": tensor '", name, "'");
    OSP_CHECK(!name.empty(), W, ": a tensor has an empty name");
    OSP_CHECK(v.is_object(), T, ": entry must be an object, got ", v.type_name());
    SafetensorsEntry e;
    e.name = name;
    auto dt = v.find("dtype");
    OSP_CHECK(dt != v.end(), T, ": missing 'dtype'");
    OSP_CHECK(dt->is_string(), T, ": 'dtype' must be a string, got ", dt->dump());
    e.dtype_name = dt->get<std::string>();
    OSP_CHECK(parse_st_dtype(e.dtype_name, &e.dtype), T, ": unsupported dtype '", e.dtype_name,
              "' (osp reads F32 BF16 F16 F8_E4M3 I32 I64 U8 BOOL F64 HIF8); convert the "
              "checkpoint to one of these");
    auto sh = v.find("shape");
    OSP_CHECK(sh != v.end(), T, ": missing 'shape'");
    OSP_CHECK(sh->is_array(), T, ": 'shape' must be an array, got ", sh->dump());
    OSP_CHECK(sh->size() <= size_t(kMaxRank), T, ": rank ", sh->size(), " exceeds the limit ",
              kMaxRank);
    int64_t numel = 1;
    for (const auto& d : *sh) {
      OSP_CHECK(d.is_number_integer(), T, ": shape entries must be integers, got ", sh->dump());
      OSP_CHECK(d.is_number_unsigned() || d.get<int64_t>() >= 0, T, ": negative dimension in shape ",
                sh->dump());
      OSP_CHECK(!d.is_number_unsigned() || d.get<uint64_t>() <= uint64_t(INT64_MAX), T,
                ": dimension too large in shape ", sh->dump());
      int64_t x = d.get<int64_t>();
      e.shape.push_back(x);
      OSP_CHECK(!__builtin_mul_overflow(numel, x, &numel), T, ": element count of shape ",
                sh->dump(), " overflows");
    }
    uint64_t nbytes;
    OSP_CHECK(!__builtin_mul_overflow(uint64_t(numel), uint64_t(dtype_size(e.dtype)), &nbytes), T,
              ": byte size of shape ", sh->dump(), " overflows");
    auto off = v.find("data_offsets");
    OSP_CHECK(off != v.end(), T, ": missing 'data_offsets'");
    OSP_CHECK(off->is_array() && off->size() == 2, T,
              ": 'data_offsets' must be [begin, end], got ", off->dump());
    e.begin = get_u64((*off)[0], T + " data_offsets[0]");
    e.end = get_u64((*off)[1], T + " data_offsets[1]");
    OSP_CHECK(e.end >= e.begin, T, ": data_offsets end ", e.end, " < begin ", e.begin);
    OSP_CHECK(e.end <= data_size, T, ": data_offsets [", e.begin, ", ", e.end,
              "] reach past the data section (", data_size, " bytes); the file is truncated");
    OSP_CHECK(e.end - e.begin == nbytes, T, ": holds ", e.end - e.begin, " bytes but ",
              e.dtype_name, shape_str(e.shape), " needs ", nbytes);
    f.entries_.emplace(name, std::move(e));
  }

  // No two tensors may share bytes.
  std::vector<const SafetensorsEntry*> order;
  for (auto& [k, e] : f.entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < order.size(); ++i)
    OSP_CHECK(order[i]->begin >= order[i - 1]->end, W, ": tensors '", order[i - 1]->name, "' [",
              order[i - 1]->begin, ", ", order[i - 1]->end, ") and '", order[i]->name, "' [",
              order[i]->begin, ", ", order[i]->end, ") overlap");
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> v;
  v.reserve(entries_.size());
  for (auto& [k, e] : entries_) v.push_back(k);
  return v;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(missing_tensor_message(name, "'" + path() + "'", names()));
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint8_t* p = bytes_.data + data_start_ + e.begin;
  const size_t es = dtype_size(e.dtype);
  if (reinterpret_cast<uintptr_t>(p) % es != 0) {  // misaligned: copy
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw(), p, e.end - e.begin);
    return t;
  }
  return Tensor::from_blob(const_cast<uint8_t*>(p), e.shape, e.dtype, Device::cpu(), bytes_.owner);
}

namespace {
// Data order: larger elements first (then by name), as the reference writer does, so every
// tensor starts at a multiple of its element size with no gaps (readers that require a
// gap-free data section accept the file).
std::vector<std::pair<const std::string*, const Tensor*>> data_order(
    const std::map<std::string, Tensor>& tensors) {
  std::vector<std::pair<const std::string*, const Tensor*>> v;
  for (auto& [name, t] : tensors) {
    OSP_CHECK(!name.empty(), "save_safetensors: empty tensor name");
    OSP_CHECK(name != "__metadata__", "save_safetensors: '__metadata__' is reserved");
    OSP_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    v.emplace_back(&name, &t);
  }
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second->dtype()) > dtype_size(b.second->dtype());
  });
  return v;
}
// The header, padded with spaces so the data section starts 8-byte aligned.
std::string build_header(const std::vector<std::pair<const std::string*, const Tensor*>>& order,
                         const std::map<std::string, std::string>& metadata, uint64_t* data_bytes) {
  json h = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (auto& [name, t] : order) {
    json shape = json::array();
    for (auto d : t->shape()) shape.push_back(d);
    h[*name] = {{"dtype", safetensors_dtype_name(t->dtype())},
                {"shape", shape},
                {"data_offsets", {off, off + t->nbytes()}}};
    off += t->nbytes();
  }
  std::string hs = h.dump();
  while ((8 + hs.size()) % 8 != 0) hs.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char(uint8_t(uint64_t(hs.size()) >> (8 * i)));
  *data_bytes = off;
  return out + hs;
}
Tensor host_contiguous(const Tensor& t) {
  return t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu()).contiguous();
}
}  // namespace

std::vector<uint8_t> serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  uint64_t data_bytes = 0;
  const auto order = data_order(tensors);
  std::string head = build_header(order, metadata, &data_bytes);
  std::vector<uint8_t> out(head.size() + data_bytes);
  std::memcpy(out.data(), head.data(), head.size());
  uint8_t* d = out.data() + head.size();
  for (auto& [name, t] : order) {
    Tensor c = host_contiguous(*t);
    if (c.nbytes()) std::memcpy(d, c.raw(), c.nbytes());
    d += c.nbytes();
  }
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata, Overwrite ow) {
  uint64_t data_bytes = 0;
  const auto order = data_order(tensors);
  const std::string head = build_header(order, metadata, &data_bytes);
  write_file_atomic(path, [&](const std::string& tmp) {
    FILE* fp = std::fopen(tmp.c_str(), "wb");
    OSP_CHECK(fp, "cannot create '", tmp, "': ", std::strerror(errno));
    bool ok = std::fwrite(head.data(), 1, head.size(), fp) == head.size();
    try {
      for (auto it = order.begin(); ok && it != order.end(); ++it) {
        interruption_point("writing");
        Tensor c = host_contiguous(*it->second);
        if (c.nbytes()) ok = std::fwrite(c.raw(), 1, c.nbytes(), fp) == c.nbytes();
      }
    } catch (...) {
      std::fclose(fp);
      throw;
    }
    const int err = ok ? 0 : errno;
    ok = std::fflush(fp) == 0 && ok;
    const int err2 = ok ? 0 : (err ? err : errno);
    ok = (std::fclose(fp) == 0) && ok;
    OSP_CHECK(ok, "writing ", path, " failed: ", std::strerror(err2 ? err2 : errno), " (disk full?)");
  }, ow);
}

}  // namespace osp::io
