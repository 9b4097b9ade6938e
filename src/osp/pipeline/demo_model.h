// `osp make-demo-model DIR`: a small RANDOM-weight model folder in the Wan2.1 original layout
// (tiny DiT with the OSP-Next dual-end Skiparse layout, tiny umT5, tiny Wan-VAE, and a
// SentencePiece model trained on the spot from a generated corpus). It exists to exercise the
// whole pipeline end to end in seconds on a CPU: its videos are noise.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "osp/core/tensor.h"

namespace osp::pipeline {

struct DemoModelOptions {
  uint64_t seed = 0;
  bool hybrid = true;     // dual-end Skiparse layout (OSP-Next style), else full attention
  int dit_layers = 8;     // dual-end with 4 full blocks: full full token group token group full full
  int dit_dim = 256, dit_heads = 4, dit_ffn = 512;
  int t5_dim = 64, t5_layers = 2, t5_heads = 4, t5_ffn = 160, t5_vocab = 320;
  int vae_dim = 16;       // base width (the real VAE has 96)
  // A DiT config.json (e.g. Wan2.1-T2V-1.3B's): the DiT takes its shapes and layout instead of
  // the dit_* / hybrid fields above, and the umT5 its text_dim (heads = text_dim / 64, FFN 2.5 ×
  // text_dim as umT5-XXL, t5_layers blocks). For timing real model sizes with random weights.
  std::string dit_config;
};

// Writes the folder (created if needed; existing demo files are overwritten). Throws if the
// folder holds something that is not a demo model.
void make_demo_model(const std::string& dir, const DemoModelOptions& opt = {});

// Wan names and shapes of the umT5 encoder (wan-spec §3.3) for the given sizes.
std::map<std::string, Shape> t5_shapes(int vocab, int dim, int dim_attn, int ffn, int heads,
                                       int layers, int buckets = 32);
// Wan names and shapes of the Wan-VAE decoder side (decoder.* and conv2.*; wan-spec App. A)
// for base width `dim`, z_dim 16, dim_mult [1,2,4,4], 2 res blocks, temporal upsample
// [true, true, false].
std::map<std::string, Shape> vae_decoder_shapes(int dim, int z_dim = 16);

}  // namespace osp::pipeline
