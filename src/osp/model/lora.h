// LoRA adapters for the Wan2.1 / OSP-Next DiT (osp-next-spec §8.2; issue 15): creation as
// OSP-Next's PEFT config does it, a safetensors file format that other tools read, loading of
// the common Wan LoRA layouts, validation against a model, and merging into a Wan-named weight
// map before DiT::bind.
//
// An adapter on a linear W [out, in] (y = x·Wᵀ + b) adds  scale·(α/r)·(x·Aᵀ)·Bᵀ  with
// A [r, in], B [out, r]; merged: W ← W + scale·(α/r)·B·A. `scale` is the user's strength
// (`--lora FILE:SCALE`, default 1), α/r the adapter's own scale.
//
// OSP-Next defaults: r = 32, α = 64, targets self_attn.{q,k,v,o} and cross_attn.{q,k,v,o} of
// every block (full and sparse), PEFT init_lora_weights="gaussian": A ~ N(0, (1/r)²) (PEFT
// calls nn.init.normal_(A, std = 1/r)), B = 0, so a fresh LoRA leaves the model unchanged.
// Noise: Philox (core/philox.h), adapter k (in the sorted order of module names) uses
// stream k of the seed: A = randn([r, in], seed, k) / r.
//
// ---- File format written by save_lora (safetensors, F32) ----
//   blocks.<i>.self_attn.q.lora_A.weight   [r, in]
//   blocks.<i>.self_attn.q.lora_B.weight   [out, r]
//   ...
//   metadata: format = "osp-lora", lora_rank, lora_alpha (when uniform; else a 0-d
//             `<module>.alpha` tensor per adapter), target_modules = "self_attn.q,...",
//             plus Lora::metadata (e.g. base_model, step).
// These are PEFT's lora_A / lora_B names under the original Wan module names, the layout
// ComfyUI-style Wan LoRAs use (there with a `diffusion_model.` prefix).
//
// ---- Layouts load_lora accepts (anything else is rejected by name) ----
//   prefixes  (none), base_model.model. (PEFT), diffusion_model. (ComfyUI / original Wan),
//             transformer. (diffusers pipelines) — stripped, in any combination;
//   modules   original Wan names (blocks.3.self_attn.q) or diffusers names
//             (blocks.3.attn1.to_q, attn2.to_out.0, ...), mapped through io/name_map.h;
//   tensors   <module>.lora_A.weight / .lora_B.weight, <module>.lora_A.default.weight
//             (PEFT in-memory names), <module>.lora_down.weight / .lora_up.weight (kohya),
//             <module>.alpha (scalar, per module);
//   alpha     <module>.alpha tensor > metadata lora_alpha (ours) > "lora_alpha" inside the
//             diffusers `lora_adapter_metadata` JSON > α = r (scale 1, the convention of
//             loaders when a file states no alpha).
// Unsupported tensors (full-weight `.diff`/`.diff_b` patches, LoKr/LoHa factors, unknown
// names) give an error naming the tensor. Targets may be any 2-D linear weight of the DiT.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::model {

// self_attn.{q,k,v,o}, cross_attn.{q,k,v,o}.
const std::vector<std::string>& default_lora_targets();
// "self_attn.q, ffn.0" → {"self_attn.q", "ffn.0"} (spaces and empty items dropped; may be empty).
std::vector<std::string> split_lora_targets(const std::string& csv);

struct LoraAdapter {
  Tensor A;            // [r, in] F32 (CPU unless moved)
  Tensor B;            // [out, r] F32
  double alpha = 0;    // α; the adapter's scale is α/r
  std::string source;  // the A tensor's name in the file it came from (for messages)
  int64_t rank() const { return A.defined() ? A.size(0) : 0; }
  double scale() const { return alpha / double(rank()); }
};

struct Lora {
  // Keyed by the base linear's Wan module name ("blocks.0.self_attn.q"; the weight is
  // "<module>.weight").
  std::map<std::string, LoraAdapter> adapters;
  std::map<std::string, std::string> metadata;  // extra metadata, kept by save_lora
  std::string origin;                           // file path or "init" (for messages)

  // The rank / alpha shared by all adapters, or -1 when they differ (or there are none).
  int64_t rank() const;
  double alpha() const;
  // Distinct target suffixes ("self_attn.q", ...), in default order where they match.
  std::vector<std::string> targets() const;
  // "64 adapters, rank 32, alpha 64 (α/r 2), targets self_attn.q,...; 1.05M parameters".
  std::string summary() const;
};

struct LoraInit {
  int64_t rank = 32;
  double alpha = 64;
  std::vector<std::string> targets = default_lora_targets();
  uint64_t seed = 0;
};

// One adapter for every 2-D weight "<module>.weight" of base_shapes (Wan names, e.g.
// DiT::expected_shapes(cfg)) whose module equals a target or ends with "." + target.
// Throws when a target matches nothing or rank < 1.
Lora init_lora(const std::map<std::string, Shape>& base_shapes, const LoraInit& opt = {});
// The base linears init_lora puts adapters on (module → weight shape [out, in]), and the
// adapters' parameter count Σ r·(in + out) — without allocating them (memory plans).
std::map<std::string, Shape> lora_target_linears(const std::map<std::string, Shape>& base_shapes,
                                                 const std::vector<std::string>& targets);
int64_t lora_parameter_count(const std::map<std::string, Shape>& base_shapes, const LoraInit& opt);

// Writes the format above (tensors as F32). Overwrites an existing file.
void save_lora(const std::string& path, const Lora& lora);
// Reads any accepted layout; A and B become F32 CPU tensors. Errors name the file and tensor.
Lora load_lora(const std::string& path);
// The same from tensors already in memory (`where` names them in messages).
Lora lora_from_tensors(const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::string& where);

// Checks every adapter against the model's weights base[prefix + module + ".weight"]:
// present, 2-D, [B.rows, A.cols]. All problems in one osp::Error, each naming the LoRA
// tensor and the model tensor ("is this LoRA for another model?").
void check_lora(const Lora& lora, const std::map<std::string, Shape>& base,
                const std::string& prefix = "");

// W ← W + scale·(α/r)·B·A for every adapter, on a Wan-named weight map (as given to
// DiT::bind, with the same prefix). The sum is formed in f32 on the CPU; the merged weights are
// new tensors of out_dtype (moved back to a weight's device), so a read-only mmapped checkpoint
// is never written. F32 (default) keeps the CPU forward equal to the un-merged application to
// f32 rounding; BF16 halves the host memory for a CUDA run, whose bind rounds weights to bf16
// anyway (same single rounding). Validates first (check_lora): on error nothing is changed.
void merge_lora(std::map<std::string, Tensor>& weights, const Lora& lora, double scale = 1.0,
                const std::string& prefix = "", DType out_dtype = DType::F32);

// The un-merged application to one linear's output: y += scale·(α/r)·(x·Aᵀ)·Bᵀ.
// x [..., in], y [..., out] F32 contiguous (any device through ops::linear / ops::axpby;
// A and B must be on that device).
void lora_apply(const Tensor& x, const LoraAdapter& a, double scale, Tensor& y);

// "FILE" or "FILE:SCALE" (the CLI's --lora argument). A trailing ":<number>" is the scale;
// otherwise the whole string is the path. Throws on an empty path or a non-finite scale.
struct LoraSpec {
  std::string path;
  double scale = 1.0;
};
LoraSpec parse_lora_spec(const std::string& spec);

}  // namespace osp::model
