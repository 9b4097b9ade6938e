// Small atomic writers shared by the training outputs (cache shards, checkpoints, logs' state):
// every file goes through io::write_file_atomic (temporary beside the target, fsync, rename).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"

namespace osp::train {

void write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes, io::Overwrite ow);
void write_text_atomic(const std::string& path, const std::string& text, io::Overwrite ow);
void write_safetensors_atomic(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata, io::Overwrite ow);
// Whole text file; throws osp::Error naming the path.
std::string read_text_file(const std::string& path);

}  // namespace osp::train
