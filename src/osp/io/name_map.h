// Tensor-name maps between the original Wan2.1 checkpoints and diffusers
// (wan-spec §3.2 for the DiT, §3.3 for the umT5 encoder), so loaders accept either naming.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "osp/io/checkpoint.h"

namespace osp::io {

enum class DitNaming { Original, Diffusers };
const char* dit_naming_name(DitNaming n);  // "original", "diffusers"

// One DiT tensor name to the other naming; std::nullopt when the name is not a Wan2.1 T2V DiT
// tensor of that naming. Examples:
//   blocks.3.self_attn.o.weight  <-> blocks.3.attn1.to_out.0.weight
//   blocks.3.norm3.bias          <-> blocks.3.norm2.bias   (the cross-attention LayerNorm)
//   head.modulation              <-> scale_shift_table
std::optional<std::string> dit_original_to_diffusers(const std::string& name);
std::optional<std::string> dit_diffusers_to_original(const std::string& name);

// Which naming a DiT checkpoint uses, from its tensor names (names valid in both, such as
// patch_embedding.*, do not vote). Throws an osp::Error when the names mix both namings or
// match neither (with examples).
DitNaming detect_dit_naming(const std::vector<std::string>& names);

// The checkpoint under original Wan names: itself if it already uses them, else a renamed
// view of the diffusers tensors. Names that are not DiT tensors pass through unchanged.
Checkpoint dit_with_original_names(Checkpoint ck);

// umT5 encoder: Wan names (models_t5_umt5-xxl-enc-bf16.pth) <-> HF UMT5EncoderModel names.
//   blocks.N.attn.q.weight <-> encoder.block.N.layer.0.SelfAttention.q.weight
std::optional<std::string> t5_wan_to_hf(const std::string& name);
std::optional<std::string> t5_hf_to_wan(const std::string& name);  // shared.weight and
                                                                    // encoder.embed_tokens.weight
                                                                    // both -> token_embedding.weight
// The umT5 checkpoint under Wan names (HF checkpoints are renamed; others returned as is).
Checkpoint t5_with_wan_names(Checkpoint ck);

// Wan-VAE: original names (Wan2.1_VAE.pth) <-> diffusers AutoencoderKLWan names (wan-spec §3.4).
//   decoder.upsamples.4.shortcut.weight  <-> decoder.up_blocks.1.resnets.0.conv_shortcut.weight
//   decoder.upsamples.7.resample.1.bias  <-> decoder.up_blocks.1.upsamplers.0.resample.1.bias
//   encoder.downsamples.3.residual.6.weight <-> encoder.down_blocks.3.conv2.weight
std::optional<std::string> vae_original_to_diffusers(const std::string& name);
std::optional<std::string> vae_diffusers_to_original(const std::string& name);
// The VAE checkpoint under original names (diffusers checkpoints are renamed; a checkpoint
// already in original names is returned as is; a mix is an error).
Checkpoint vae_with_original_names(Checkpoint ck);

}  // namespace osp::io
