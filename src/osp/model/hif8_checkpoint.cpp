// HiF8 weight checkpoints: conversion (block linears → U8 codes + per-tensor scale) and the
// dequantizing / byte-keeping readers.
#include "osp/model/hif8_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <regex>

#include "osp/core/interrupt.h"
#include "osp/io/bytes.h"
#include "osp/io/safetensors.h"
#include "osp/quant/hif8.h"

namespace osp::model {

namespace {
const char* kScaleSuffix = ".hif8_scale";

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

bool is_hif8_block_linear_weight(const std::string& name) {
  static const std::regex re(R"((^|.*\.)blocks\.[0-9]+\.((self_attn|cross_attn)\.[qkvo]|ffn\.[02])\.weight$)");
  return std::regex_match(name, re);
}

std::map<std::string, Tensor> hif8_quantize_checkpoint(const io::TensorSource& src,
                                                       const Hif8ConvertOptions& opt,
                                                       std::map<std::string, std::string>* metadata,
                                                       Hif8ConvertReport* report) {
  OSP_CHECK(!is_hif8_checkpoint(src), "hif8 convert: '", src.path(),
            "' is already a HiF8 checkpoint (metadata osp_quant=hif8)");
  OSP_CHECK(std::isfinite(opt.max_target) && opt.max_target > 0 && opt.max_target <= 32768.0f,
            "hif8 convert: max_target must be in (0, 32768], got ", opt.max_target);
  auto select = opt.select ? opt.select : is_hif8_block_linear_weight;
  Hif8ConvertReport rep;
  std::map<std::string, Tensor> out;
  for (const std::string& name : src.names()) {
    interruption_point("converting");
    OSP_CHECK(!ends_with(name, kScaleSuffix), "hif8 convert: input tensor '", name,
              "' already ends with ", kScaleSuffix, "; refusing to overwrite it");
    Tensor t = src.get(name);
    rep.bytes_before += t.nbytes();
    if (!select(name)) {
      out[name] = t;
      rep.bytes_after += t.nbytes();
      ++rep.copied;
      continue;
    }
    OSP_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, "hif8 convert: tensor '", name,
              "' is ", t.desc(), "; only f32/bf16 weights can be quantized");
    OSP_CHECK(t.dim() >= 2, "hif8 convert: tensor '", name, "' is ", t.desc(),
              "; only matrices are quantized (check the selection)");
    const float am = quant::amax(t);
    OSP_CHECK(std::isfinite(am), "hif8 convert: tensor '", name,
              "' contains Inf; cannot choose a per-tensor scale");
    const float s = quant::hif8_scale_for(am, opt.max_target, t.dtype());
    // codes = HiF8(w·s) with the same numerics as hif8_fake_quant (bf16 product for bf16)
    Tensor tc = t.contiguous();
    Tensor codes = Tensor::empty(t.shape(), DType::U8);
    const int64_t n = tc.numel();
    uint8_t* c = codes.data<uint8_t>();
    if (tc.dtype() == DType::F32) {
      const float* p = tc.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) c[i] = quant::hif8_encode(p[i] * s);
    } else {
      const uint16_t* p = tc.data<uint16_t>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) c[i] = quant::hif8_encode(round_bf16(bf16_to_f32(p[i]) * s));
    }
    out[name] = codes;
    out[name + kScaleSuffix] = Tensor::from_vector({s}, {1});
    rep.bytes_after += codes.nbytes() + 4;
    ++rep.quantized;
  }
  OSP_CHECK(rep.quantized > 0, "hif8 convert: no tensor of '", src.path(),
            "' matched the selection (default: Wan block linears 'blocks.<i>.self_attn.q.weight' "
            "... 'ffn.2.weight')");
  if (metadata) {
    *metadata = src.metadata();
    (*metadata)["osp_quant"] = "hif8";
    (*metadata)["osp_hif8_max_target"] = str(opt.max_target);
    (*metadata)["osp_hif8_rule"] = "w = hif8_decode(code) / scale; scale tensor '<name>.hif8_scale'";
  }
  if (report) *report = rep;
  return out;
}

Hif8ConvertReport convert_checkpoint_hif8(const std::string& in_path, const std::string& out_path,
                                          const Hif8ConvertOptions& opt) {
  // The output must not be the input (or one of its shards): the result is written beside the
  // target and renamed over it, which would replace the checkpoint being converted.
  std::error_code ec;
  const bool out_exists = std::filesystem::exists(out_path, ec);
  if (out_exists) {
    const std::filesystem::path resolved = io::resolve_checkpoint_path(in_path);
    bool same = std::filesystem::equivalent(resolved, out_path, ec) ||
                std::filesystem::equivalent(in_path, out_path, ec);
    if (!same && resolved.extension() == ".json" &&
        std::filesystem::equivalent(resolved.parent_path(), std::filesystem::absolute(out_path).parent_path(), ec)) {
      // A sharded checkpoint: is the output one of the files its index names?
      const std::vector<uint8_t> idx = io::read_file_bytes(resolved.string());
      const std::string text(idx.begin(), idx.end());
      same = text.find("\"" + std::filesystem::path(out_path).filename().string() + "\"") != std::string::npos;
    }
    OSP_CHECK(!same, "osp convert: the output ", out_path, " is the input checkpoint (", resolved.string(),
              "); write the converted file under another name");
  }
  OSP_CHECK(std::filesystem::path(out_path).extension() == ".safetensors", "osp convert: the output ", out_path,
            " must end in .safetensors (the converted checkpoint is a safetensors file)");
  io::check_output_path(out_path, opt.overwrite);  // before the (long) conversion
  io::Checkpoint ck = io::open_checkpoint(in_path);
  std::map<std::string, std::string> meta;
  Hif8ConvertReport rep;
  std::map<std::string, Tensor> t = hif8_quantize_checkpoint(*ck, opt, &meta, &rep);
  io::save_safetensors(out_path, t, meta, opt.overwrite);
  return rep;
}

bool is_hif8_checkpoint(const io::TensorSource& src) {
  auto it = src.metadata().find("osp_quant");
  return it != src.metadata().end() && it->second == "hif8";
}

namespace {

bool is_quantized(const io::TensorSource& src, const std::string& name) {
  if (ends_with(name, kScaleSuffix) || !src.has(name + kScaleSuffix)) return false;
  DType dt = src.info(name).dtype;
  return dt == DType::U8 || dt == DType::HiF8;
}

float read_scale(const io::TensorSource& src, const std::string& name) {
  Tensor s = src.get(name + kScaleSuffix);
  OSP_CHECK(s.numel() == 1 && s.dtype() == DType::F32, "HiF8 checkpoint '", src.path(),
            "': '", name, kScaleSuffix, "' must be a single f32, got ", s.desc());
  float v = s.to_float_vector()[0];
  OSP_CHECK(std::isfinite(v) && v > 0, "HiF8 checkpoint '", src.path(), "': scale of '", name,
            "' is ", v, " (must be positive and finite; the file is corrupt)");
  return v;
}

class DequantizedSource final : public io::TensorSource {
 public:
  DequantizedSource(io::Checkpoint inner, DType dt) : inner_(std::move(inner)), dt_(dt) {}
  const std::string& path() const override { return inner_->path(); }
  std::string format() const override { return inner_->format() + "+hif8-dequantized"; }
  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (auto& n : inner_->names())
      if (!ends_with(n, kScaleSuffix)) v.push_back(n);
    return v;
  }
  bool has(const std::string& n) const override {
    return !ends_with(n, kScaleSuffix) && inner_->has(n);
  }
  io::TensorInfo info(const std::string& n) const override {
    io::TensorInfo i = inner_->info(n);
    if (is_quantized(*inner_, n)) i.dtype = dt_;
    return i;
  }
  Tensor get(const std::string& n) const override {
    OSP_CHECK(!ends_with(n, kScaleSuffix), "HiF8 checkpoint '", path(), "': '", n,
              "' is a scale companion, hidden by the dequantizing reader");
    if (!is_quantized(*inner_, n)) return inner_->get(n);
    const float s = read_scale(*inner_, n);
    Tensor codes = inner_->get(n);
    Tensor v = quant::hif8_decode(codes, DType::F32);
    Tensor out = Tensor::empty(codes.shape(), dt_);
    const float* p = v.data<float>();
    const int64_t cnt = v.numel();
    if (dt_ == DType::F32) {
      float* o = out.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < cnt; ++i) o[i] = p[i] / s;
    } else {
      uint16_t* o = out.data<uint16_t>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < cnt; ++i) o[i] = f32_to_bf16(p[i] / s);
    }
    return out;
  }
  const std::map<std::string, std::string>& metadata() const override { return inner_->metadata(); }

 private:
  io::Checkpoint inner_;
  DType dt_;
};

}  // namespace

io::Checkpoint hif8_dequantized(io::Checkpoint inner, DType dtype) {
  OSP_CHECK(inner, "hif8_dequantized: checkpoint is null");
  OSP_CHECK(dtype == DType::F32 || dtype == DType::BF16,
            "hif8_dequantized: dtype must be f32 or bf16, got ", dtype_name(dtype));
  OSP_CHECK(is_hif8_checkpoint(*inner), "hif8_dequantized: '", inner->path(),
            "' is not a HiF8 checkpoint (metadata osp_quant != hif8); convert it with "
            "`osp convert --quant hif8 IN OUT`");
  return std::make_shared<DequantizedSource>(std::move(inner), dtype);
}

Hif8Weight load_hif8_weight(const io::TensorSource& src, const std::string& name) {
  OSP_CHECK(is_quantized(src, name), "HiF8 checkpoint '", src.path(), "': '", name,
            "' is not a HiF8-quantized tensor (needs u8 data and '", name, kScaleSuffix, "')");
  Hif8Weight w;
  w.scale = read_scale(src, name);
  Tensor c = src.get(name);
  w.codes = Tensor::from_blob(c.raw(), c.shape(), DType::HiF8, c.device(), c.storage());
  return w;
}

}  // namespace osp::model
