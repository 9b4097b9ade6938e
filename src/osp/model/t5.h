// umT5 encoder (Wan2.1 `wan/modules/t5.py` T5Encoder; wan-spec §4.1, §4.3).
//
// Per layer: pre-norm T5 RMSNorm (no mean, no bias) → self-attention without 1/sqrt(d) scaling,
// with this layer's own relative-position bias table (umT5: shared_pos = false; bidirectional
// 32 buckets, max distance 128) and the padding mask on keys → residual; T5 RMSNorm → gated-GELU
// FFN fc2(fc1(h) · gelu_tanh(gate(h))) → residual.  A final T5 RMSNorm.  No biases.
//
// The config is read from the checkpoint shapes (vocab, dim, heads from the bias table, layers
// by counting blocks).  Device-generic through ops::: CPU runs fp32 (weights converted at load;
// the source of truth), CUDA runs bf16 weights and activations with fp32 norms/softmax (the
// reference runs umT5 in bf16).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/model/vae.h"  // WeightGetter

namespace osp::model {

struct T5Config {
  int64_t vocab = 256384, dim = 4096, dim_attn = 4096, dim_ffn = 10240;
  int64_t num_heads = 64, num_layers = 24, num_buckets = 32;
  int64_t max_dist = 128;
  float eps = 1e-6f;
  int64_t head_dim() const { return dim_attn / num_heads; }
};

// Bidirectional relative-position bucket of r = key − query (32 buckets, max distance 128;
// the table of wan-spec §4.3, which the reference's float32 log formula produces exactly).
int t5_relative_bucket(int64_t r, int64_t num_buckets = 32, int64_t max_dist = 128);

class T5Encoder {
 public:
  // Binds weights by original Wan names ("token_embedding.weight", "blocks.N.attn.q.weight",
  // ...), after `prefix`, or by Hugging Face UMT5EncoderModel names ("shared.weight",
  // "encoder.block.N.layer.0.SelfAttention.q.weight", ...; detected automatically).  Throws
  // osp::Error naming any missing or mis-shaped tensor.
  static T5Encoder load(const WeightGetter& get, Device dev = Device::cpu(),
                        const std::string& prefix = "");

  const T5Config& config() const;
  Device device() const;

  // Raw encoder output at every position: ids, mask [B, L] I32 (host or device; mask must be
  // ones then zeros in each row, as the tokenizer pads on the right) → [B, L, dim] on the
  // model's device, F32 on the CPU, BF16 on CUDA.  Padded rows are computed too (they attend
  // to the real tokens only), as in the reference.
  Tensor forward(const Tensor& ids, const Tensor& mask) const;

  // The pipeline's form for one prompt: runs only the n_valid real tokens (the reference's
  // masked result for those rows is mathematically identical) and returns [text_len, dim]
  // with rows ≥ n_valid zero (the DiT's zero padding).  ids.size() ≥ n_valid ≥ 1.
  Tensor encode(const std::vector<int32_t>& ids, int64_t n_valid, int64_t text_len = 512) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace osp::model
