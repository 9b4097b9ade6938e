// Hyper-parameters of the Wan2.1 / OSP-Next DiT (wan-spec §2.1, osp-next-spec §2.1–2.2):
// parsed from a checkpoint's config.json (Wan original, diffusers WanTransformer3DModel, or the
// golden files' metadata `config`), or inferred from tensor shapes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/sparse/skiparse.h"

namespace osp::model {

struct DiTConfig {
  int64_t dim = 1536;       // d
  int64_t ffn_dim = 8960;   // F
  int64_t num_heads = 12;   // H (head dim = dim / num_heads)
  int64_t num_layers = 30;
  int64_t text_dim = 4096;  // umT5 width
  int64_t text_len = 512;   // context rows after zero padding
  int64_t freq_dim = 256;   // timestep sinusoid width
  int64_t in_dim = 16, out_dim = 16;
  int patch_t = 1, patch_h = 2, patch_w = 2;
  float eps = 1e-6f;
  bool qk_norm = true;          // RMSNorm over the full d on q and k
  bool cross_attn_norm = true;  // affine LayerNorm (norm3) before cross-attention
  // OSP-Next extras. skiparse_mode "full" = Wan2.1 (every block full attention).
  std::string skiparse_mode = "full";  // "full" | "dual_end"
  int sparse_ratio = 2;                // P
  int num_full_blocks = 0;

  int64_t head_dim() const { return dim / num_heads; }
  int64_t patch_volume() const { return int64_t(patch_t) * patch_h * patch_w; }
  // Throws osp::Error naming the broken rule.
  void validate() const;
  // One kind per block (sparse::plan_blocks for dual_end; all Full for "full").
  std::vector<sparse::BlockKind> block_kinds() const;
  std::string summary() const;  // one line, for logs and errors

  // Presets of the released models (wan-spec §2.1).
  static DiTConfig wan_1_3b();
  static DiTConfig wan_14b();

  // Parses config.json text. Accepts Wan keys (dim, ffn_dim, num_heads, num_layers, text_len,
  // freq_dim, text_dim, in_dim, out_dim, patch_size, eps, qk_norm, cross_attn_norm), diffusers
  // keys (num_attention_heads, attention_head_dim, in_channels, out_channels, ...), and the
  // OSP-Next keys (skiparse_model_type / skiparse_mode, sparse_ratio, num_full_blocks). Missing
  // keys keep the Wan defaults above. Unknown keys are ignored.
  static DiTConfig from_json(const std::string& json_text);
  static DiTConfig from_json_file(const std::string& path);

  // Infers the shape hyper-parameters from tensor shapes keyed by Wan names (wan-spec §3.2;
  // `prefix` is stripped first, e.g. "weights."). num_heads assumes head dim 128 (every Wan
  // model) unless heads_hint > 0; text_len/eps keep their defaults.
  static DiTConfig infer(const std::map<std::string, Shape>& shapes,
                         const std::string& prefix = "", int64_t heads_hint = 0);
};

}  // namespace osp::model
