// Small atomic writers shared by the training outputs (cache shards, checkpoints, logs' state):
// every file goes through io::write_file_atomic (temporary beside the target, fsync, rename).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"

namespace osp::train {

using io::write_bytes_atomic;
using io::write_text_atomic;
void write_safetensors_atomic(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata, io::Overwrite ow);
// A tensor produced when the writer reaches it (one at a time: a checkpoint of a large model is
// streamed to disk without a second copy of it in memory). `get` returns any-device tensor of
// `shape` (numel) in `dtype`.
struct LazyTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::function<Tensor()> get;
};
// Streams a safetensors file (wider dtypes first, so every tensor is aligned to its element size)
// through io::write_file_atomic. No Ctrl-C safe point inside: a save requested by Ctrl-C finishes.
void write_safetensors_streaming(const std::string& path, const std::vector<LazyTensor>& tensors,
                                 const std::map<std::string, std::string>& metadata, io::Overwrite ow);

// Whole text file; throws osp::Error naming the path.
std::string read_text_file(const std::string& path);

}  // namespace osp::train
