#include "osp/train/output_files.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "osp/core/error.h"
#include "osp/io/safetensors.h"

namespace osp::train {

void write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes, io::Overwrite ow) {
  io::write_file_atomic(
      path,
      [&](const std::string& tmp) {
        std::FILE* f = std::fopen(tmp.c_str(), "wb");
        OSP_CHECK(f, "cannot open ", tmp, " for writing");
        const size_t n = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
        const bool ok = n == bytes.size() && std::fflush(f) == 0;
        const bool closed = std::fclose(f) == 0;
        OSP_CHECK(ok && closed, "writing ", path, " failed (disk full?)");
      },
      ow);
}

void write_text_atomic(const std::string& path, const std::string& text, io::Overwrite ow) {
  write_bytes_atomic(path, std::vector<uint8_t>(text.begin(), text.end()), ow);
}

void write_safetensors_atomic(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata, io::Overwrite ow) {
  write_bytes_atomic(path, io::serialize_safetensors(tensors, metadata), ow);
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  OSP_CHECK(f, "cannot read ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace osp::train
