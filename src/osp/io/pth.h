// PyTorch checkpoint reader for the torch.save zip format (e.g. Wan's
// models_t5_umt5-xxl-enc-bf16.pth and Wan2.1_VAE.pth).
//
// The archive holds <prefix>/data.pkl (the pickled state dict) and <prefix>/data/<key> (one
// uncompressed record per storage). Tensors are zero-copy strided views into the mapped file
// (storage offset and strides honoured, views share their storage). Nested dicts are flattened
// with '.'-joined keys; non-tensor leaves (ints, strings, ...) go to metadata() as text.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/bytes.h"
#include "osp/io/pickle.h"
#include "osp/io/zip_reader.h"

namespace osp::io {

class PthFile {
 public:
  static constexpr uint64_t kMaxPickleBytes = 64ull << 20;
  static constexpr int kMaxDictDepth = 8;

  PthFile() = default;
  static PthFile open(const std::string& path);  // mmaps the file
  static PthFile parse(Bytes bytes, const pickle::Limits& lim = {});

  const std::string& path() const { return zip_.path(); }
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return tensors_.size(); }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // The tensor (a read-only view into the mapped file: clone() before writing).
  Tensor get(const std::string& name) const;
  const std::map<std::string, Tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  ZipReader zip_;
  std::map<std::string, Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace osp::io
