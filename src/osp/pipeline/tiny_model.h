// Pieces of OSP-Next-Tiny (issue 16) that are neither the VAE trainer nor the DiT trainer:
//  * write_text_encoder: a SentencePiece tokenizer trained on the captions of a clip dataset plus
//    a frozen, random umT5 encoder (Wan names), written into a model folder;
//  * encode_clip_dataset: a clip dataset (osp make-dataset) → latent cache (train/latent_dataset.h)
//    through that text encoder and a Wan-VAE with encoder weights (osp train-vae).
// Why a frozen random umT5 is enough here: the caption grammar has ~40 words and the DiT's
// cross-attention only has to tell words apart and see their order; a random embedding table
// (N(0,1) rows, far apart in 64-D) followed by two random pre-norm attention blocks keeps every
// word distinguishable and mixes in position, and the DiT's text projection is trained.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::pipeline {

struct TextEncoderOptions {
  std::string dataset;   // clip dataset whose captions train the tokenizer
  std::string out;       // model folder (created if missing)
  uint64_t seed = 0;     // encoder weights
  int dim = 64, layers = 2, heads = 4, ffn = 160;
  int vocab = 256;       // upper bound (sentencepiece word model: as many as there are words)
};

// Writes OUT/google/umt5-xxl/spiece.model (and the caption corpus it was trained on,
// OUT/google/umt5-xxl/captions.txt is removed afterwards) and
// OUT/models_t5_umt5-xxl-enc-bf16.safetensors. Returns the encoder vocabulary (embedding rows).
int write_text_encoder(const TextEncoderOptions& o);

struct EncodeClipsOptions {
  std::string model;     // folder with the umT5 + tokenizer (write_text_encoder) and Wan2.1_VAE.safetensors
  std::string dataset;   // clip dataset
  std::string out;       // latent cache
  std::string device = "cpu";
  int64_t text_len = 64; // must equal the DiT config's text_len
  int64_t limit = 0;     // 0 = every clip
  int64_t per_shard = 256;
  double max_seconds = 0;  // > 0: stop adding clips after this wall time (the cache holds those done)
  bool overwrite = false;
};
// Returns the number of samples written.
int64_t encode_clip_dataset(const EncodeClipsOptions& o);

}  // namespace osp::pipeline
