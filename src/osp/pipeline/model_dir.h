// Model directory recognition: which layout a folder has and where each component lives.
//
//   Wan2.1 original   config.json, diffusion_pytorch_model*.safetensors (or an index json),
//                     models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth,
//                     google/umt5-xxl/spiece.model
//   Wan2.1 diffusers  transformer/ (config.json + diffusion_pytorch_model*.safetensors),
//                     text_encoder/ (HF UMT5EncoderModel), vae/, tokenizer/spiece.model
//   OSP-Next          the Wan2.1 original file set whose config.json declares the Skiparse
//                     layout (skiparse_model_type / skiparse_mode, sparse_ratio, num_full_blocks)
//   osp demo          the Wan2.1 original file set with .safetensors in place of the .pth files
//                     and a marker file OSP_DEMO_RANDOM_WEIGHTS (osp make-demo-model)
// The umT5 and VAE files may be .pth or .safetensors in every layout.
#pragma once
#include <string>
#include <vector>

#include "osp/io/checkpoint.h"

namespace osp::pipeline {

enum class ModelLayout { WanOriginal, WanDiffusers, OspNext, Demo };
const char* layout_name(ModelLayout l);

struct ModelFiles {
  ModelLayout layout = ModelLayout::WanOriginal;
  std::string root;
  std::string dit;         // file or folder for io::open_checkpoint
  std::string dit_config;  // config.json ("" = infer from the tensor shapes)
  std::string t5;          // umT5 encoder weights
  std::string vae;         // Wan-VAE weights
  std::string tokenizer;   // SentencePiece model (spiece.model)
  bool t5_hf_names = false;  // diffusers text_encoder: HF UMT5 names
};

// Recognises `dir`. Throws an osp::Error that names the layout it looks like and lists every
// missing file (with the expected path), or says that nothing looks like a model.
ModelFiles detect_model_dir(const std::string& dir);

// The missing files for a layout (empty when complete); detect_model_dir's check, exposed for
// tests and `osp inspect`.
std::vector<std::string> missing_files(const ModelFiles& f);

// The Wan-VAE checkpoint of `f` under original Wan names (a diffusers AutoencoderKLWan file is
// renamed on the fly: io::vae_with_original_names), for every loader of a model folder's VAE.
io::Checkpoint open_vae(const ModelFiles& f);

}  // namespace osp::pipeline
