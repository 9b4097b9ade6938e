// "Did you mean" helper for missing-name errors.
#pragma once
#include <string>
#include <vector>

namespace osp::io {

// Up to `k` candidates closest to `name` (edit distance, ties by shared suffix), best first.
std::vector<std::string> close_names(const std::string& name,
                                     const std::vector<std::string>& candidates, size_t k = 5);

// "tensor 'x' not found in <where> (N tensors); close names: a, b, c" — the message used by
// every TensorSource.
std::string missing_tensor_message(const std::string& name, const std::string& where,
                                   const std::vector<std::string>& candidates);

}  // namespace osp::io
