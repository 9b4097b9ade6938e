#include "osp/train/output_files.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "osp/core/error.h"
#include "osp/io/safetensors.h"

namespace osp::train {

void write_safetensors_atomic(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata, io::Overwrite ow) {
  write_bytes_atomic(path, io::serialize_safetensors(tensors, metadata), ow);
}

void write_safetensors_streaming(const std::string& path, const std::vector<LazyTensor>& tensors,
                                 const std::map<std::string, std::string>& metadata, io::Overwrite ow) {
  std::vector<const LazyTensor*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(),
                   [](const LazyTensor* a, const LazyTensor* b) { return dtype_size(a->dtype) > dtype_size(b->dtype); });
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (const LazyTensor* t : order) {
    OSP_CHECK(!t->name.empty() && t->name != "__metadata__" && !h.contains(t->name), "safetensors writer: bad or repeated name '",
              t->name, "'");
    const uint64_t bytes = uint64_t(shape_numel(t->shape)) * dtype_size(t->dtype);
    h[t->name] = {{"dtype", io::safetensors_dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string hs = h.dump();
  while (hs.size() % 8 != 0) hs.push_back(' ');
  std::string head(8, '\0');
  for (int i = 0; i < 8; ++i) head[size_t(i)] = char(uint8_t(uint64_t(hs.size()) >> (8 * i)));
  head += hs;
  io::write_file_atomic(
      path,
      [&](const std::string& tmp) {
        std::FILE* f = std::fopen(tmp.c_str(), "wb");
        OSP_CHECK(f, "cannot open ", tmp, " for writing");
        bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
        try {
          for (const LazyTensor* t : order) {
            if (!ok) break;
            Tensor c = t->get();
            OSP_CHECK(c.dtype() == t->dtype && c.numel() == shape_numel(t->shape), "safetensors writer: '", t->name,
                      "' produced ", c.desc(), ", expected ", dtype_name(t->dtype), shape_str(t->shape));
            c = c.to(Device::cpu()).contiguous();
            if (c.nbytes()) ok = std::fwrite(c.raw(), 1, c.nbytes(), f) == c.nbytes();
          }
        } catch (...) {
          std::fclose(f);
          throw;
        }
        ok = std::fflush(f) == 0 && ok;
        ok = std::fclose(f) == 0 && ok;
        OSP_CHECK(ok, "writing ", path, " failed (disk full?)");
      },
      ow);
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  OSP_CHECK(f, "cannot read ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace osp::train
