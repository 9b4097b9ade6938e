// HiF8 weight checkpoints: convert a checkpoint's block linear weights to 8-bit HiF8 codes with
// one scale per tensor, and read such checkpoints back (dequantized, or as raw bytes).
//
// File layout (plain safetensors, readable by any tool):
//   "<name>"             U8  codes, the weight's shape: code = HiF8_TA(w · s)
//   "<name>.hif8_scale"  F32 [1], s = max_target / max|w|   (hif8_scale_for: bf16-rounded for
//                        bf16 weights, as the bf16 fake-quant path computes it)
//   every other tensor copied unchanged; __metadata__ copied plus
//   osp_quant = "hif8", osp_hif8_max_target = "15", osp_hif8_rule = "w = hif8_decode(code) / scale"
// Dequantizing gives exactly quant::hif8_fake_quant(w) (the weight a HiF8-trained model runs
// with): in bf16 for bf16 weights (dequantize to BF16), in f32 for f32 weights (to F32).
// Which tensors: by default the weights OSP-Next quantizes (spec §1.11): the 2-D ".weight" of
// every block's self_attn/cross_attn q, k, v, o and ffn.0, ffn.2 (Wan naming).
#pragma once
#include <functional>
#include <map>
#include <string>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"
#include "osp/io/checkpoint.h"

namespace osp::model {

// The default rule: Wan-named block linear weights ("blocks.<i>.self_attn.q.weight", ...,
// "blocks.<i>.ffn.0.weight"), with any prefix before "blocks.".
bool is_hif8_block_linear_weight(const std::string& name);

struct Hif8ConvertOptions {
  float max_target = 15.0f;  // amax maps here (OSP-Next's forward target)
  // An existing output is replaced only with Allow; the input itself never is (an error).
  io::Overwrite overwrite = io::Overwrite::Refuse;
  // Which tensors to quantize (must be F32/BF16 with dim ≥ 2); null = the default rule.
  std::function<bool(const std::string& name)> select;
};

struct Hif8ConvertReport {
  size_t quantized = 0, copied = 0;
  uint64_t bytes_before = 0, bytes_after = 0;  // of the tensor data
};

// In memory: the converted tensor map and metadata (copied tensors are zero-copy views).
std::map<std::string, Tensor> hif8_quantize_checkpoint(const io::TensorSource& src,
                                                       const Hif8ConvertOptions& opt,
                                                       std::map<std::string, std::string>* metadata,
                                                       Hif8ConvertReport* report = nullptr);

// `osp convert --quant hif8 IN OUT`: reads any checkpoint io::open_checkpoint accepts, writes
// one .safetensors file. Throws if IN is already a HiF8 checkpoint or nothing matched.
Hif8ConvertReport convert_checkpoint_hif8(const std::string& in_path, const std::string& out_path,
                                          const Hif8ConvertOptions& opt = {});

// ---- loading ----
// True when the metadata says osp_quant = hif8.
bool is_hif8_checkpoint(const io::TensorSource& src);

// A view that dequantizes on get(): quantized names give decode(code)/scale as `dtype`
// (F32 or BF16), the ".hif8_scale" companions are hidden, everything else passes through.
io::Checkpoint hif8_dequantized(io::Checkpoint inner, DType dtype = DType::BF16);

// Keeps the bytes: the codes as a zero-copy DType::HiF8 view and the scale s (w ≈ v / s).
struct Hif8Weight {
  Tensor codes;
  float scale = 1.0f;
};
Hif8Weight load_hif8_weight(const io::TensorSource& src, const std::string& name);

}  // namespace osp::model
