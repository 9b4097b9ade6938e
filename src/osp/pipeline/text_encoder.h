// The text stage of the pipeline: Wan's prompt cleaning + umT5 SentencePiece tokenizer + the
// umT5-XXL encoder, returning per prompt the encoder output trimmed to its real tokens
// [n_valid, text_dim] (the DiT zero-pads to text_len). Wraps model/tokenizer.* and model/t5.*.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/pipeline/model_dir.h"

namespace osp::pipeline {

class TextEncoder {
 public:
  // Loads the tokenizer and the encoder weights onto `dev`.
  static std::unique_ptr<TextEncoder> load(const ModelFiles& files, Device dev, int64_t text_len);
  virtual ~TextEncoder() = default;
  // One trimmed embedding [n_valid, dim] (F32, on the device) per prompt.
  virtual std::vector<Tensor> encode(const std::vector<std::string>& prompts) = 0;
  virtual int64_t dim() const = 0;
};

// Parameter bytes of the encoder checkpoint (from its header; nothing is read).
size_t text_encoder_params(const ModelFiles& files);

}  // namespace osp::pipeline
