// HiF8 weight checkpoints: conversion, file round trip, dequantization equal to the fake-quant
// weights bitwise, byte-keeping loader, selection rule and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <unistd.h>

#include "osp/core/philox.h"
#include "osp/io/safetensors.h"
#include "osp/model/hif8_checkpoint.h"
#include "osp/quant/hif8.h"
#include "test_util.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {
bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() &&
         std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

std::map<std::string, Tensor> tiny_model() {
  std::map<std::string, Tensor> t;
  t["model.blocks.0.self_attn.q.weight"] = randn({16, 16}, 1).to(DType::BF16);
  t["model.blocks.0.self_attn.q.bias"] = randn({16}, 2).to(DType::BF16);
  t["model.blocks.0.cross_attn.o.weight"] = randn({16, 16}, 3).to(DType::BF16);
  t["model.blocks.1.ffn.0.weight"] = randn({32, 16}, 4);  // f32
  t["model.blocks.1.ffn.2.weight"] = randn({16, 32}, 5).to(DType::BF16);
  t["model.blocks.1.norm3.weight"] = randn({16}, 6);
  t["model.patch_embedding.weight"] = randn({16, 4, 1, 2, 2}, 7).to(DType::BF16);
  t["model.head.head.weight"] = randn({8, 16}, 8).to(DType::BF16);
  return t;
}

struct TempDir {
  fs::path p;
  TempDir() {
    p = fs::temp_directory_path() / ("osp_hif8_ck_" + std::to_string(::getpid()));
    fs::create_directories(p);
  }
  ~TempDir() { fs::remove_all(p); }
};
}  // namespace

TEST(HiF8Checkpoint, SelectionRule) {
  using model::is_hif8_block_linear_weight;
  for (const char* n : {"blocks.0.self_attn.q.weight", "blocks.39.self_attn.o.weight",
                        "blocks.3.cross_attn.k.weight", "blocks.3.cross_attn.v.weight",
                        "blocks.1.ffn.0.weight", "blocks.1.ffn.2.weight",
                        "weights.blocks.7.ffn.2.weight", "model.blocks.2.self_attn.v.weight"})
    EXPECT_TRUE(is_hif8_block_linear_weight(n)) << n;
  for (const char* n : {"blocks.0.self_attn.q.bias", "blocks.0.self_attn.norm_q.weight",
                        "blocks.0.ffn.1.weight", "blocks.0.modulation", "head.head.weight",
                        "patch_embedding.weight", "text_embedding.0.weight",
                        "time_embedding.0.weight", "blocks.0.cross_attn.k_img.weight",
                        "myblocks.0.ffn.0.weight"})
    EXPECT_FALSE(is_hif8_block_linear_weight(n)) << n;
}

TEST(HiF8Checkpoint, ConvertFileAndDequantizeEqualsFakeQuant) {
  TempDir dir;
  auto src = tiny_model();
  const std::string in = (dir.p / "in.safetensors").string(), out = (dir.p / "out.safetensors").string();
  io::save_safetensors(in, src, {{"config", "{\"dim\": 16}"}});
  model::Hif8ConvertReport rep = model::convert_checkpoint_hif8(in, out);
  EXPECT_EQ(rep.quantized, 4u);
  EXPECT_EQ(rep.copied, 4u);
  EXPECT_LT(rep.bytes_after, rep.bytes_before);

  // raw file: U8 codes + F32 scale companions, metadata kept and tagged
  io::SafetensorsFile f = io::SafetensorsFile::open(out);
  EXPECT_EQ(f.metadata().at("osp_quant"), "hif8");
  EXPECT_EQ(f.metadata().at("config"), "{\"dim\": 16}");
  EXPECT_EQ(f.entry("model.blocks.0.self_attn.q.weight").dtype, DType::U8);
  EXPECT_EQ(f.entry("model.blocks.0.self_attn.q.weight.hif8_scale").dtype, DType::F32);
  EXPECT_FALSE(f.has("model.head.head.weight.hif8_scale"));
  EXPECT_TRUE(same_bytes(f.get("model.head.head.weight"), src["model.head.head.weight"]));
  EXPECT_TRUE(same_bytes(f.get("model.patch_embedding.weight"), src["model.patch_embedding.weight"]));

  io::Checkpoint ck = io::open_checkpoint(out);
  ASSERT_TRUE(model::is_hif8_checkpoint(*ck));
  // dequantized in bf16: bitwise the bf16 fake-quant weight
  io::Checkpoint dq = model::hif8_dequantized(ck, DType::BF16);
  EXPECT_FALSE(dq->has("model.blocks.0.self_attn.q.weight.hif8_scale"));
  EXPECT_EQ(dq->names().size(), src.size());
  for (const char* n : {"model.blocks.0.self_attn.q.weight", "model.blocks.0.cross_attn.o.weight",
                        "model.blocks.1.ffn.2.weight"}) {
    EXPECT_EQ(dq->info(n).dtype, DType::BF16);
    Tensor got = dq->get(n);
    Tensor want = quant::hif8_fake_quant(src[n]);
    EXPECT_TRUE(same_bytes(got, want)) << n;
    EXPECT_GT(relative_error(got, src[n]), 1e-3) << "really quantized";
  }
  // the f32 weight dequantized in f32: bitwise the f32 fake-quant weight
  io::Checkpoint dq32 = model::hif8_dequantized(ck, DType::F32);
  EXPECT_TRUE(same_bytes(dq32->get("model.blocks.1.ffn.0.weight"),
                         quant::hif8_fake_quant(src["model.blocks.1.ffn.0.weight"])));
  EXPECT_TRUE(same_bytes(dq->get("model.blocks.1.norm3.weight"), src["model.blocks.1.norm3.weight"]));

  // keeping bytes
  model::Hif8Weight w = model::load_hif8_weight(*ck, "model.blocks.0.self_attn.q.weight");
  EXPECT_EQ(w.codes.dtype(), DType::HiF8);
  EXPECT_EQ(w.codes.shape(), (Shape{16, 16}));
  Tensor wb = src["model.blocks.0.self_attn.q.weight"];
  EXPECT_EQ(w.scale, quant::hif8_scale_for(quant::amax(wb), 15.f, DType::BF16));
  Tensor v = quant::hif8_decode(w.codes);
  EXPECT_EQ(round_bf16(v.data<float>()[0] / w.scale),
                  bf16_to_f32(dq->get("model.blocks.0.self_attn.q.weight").data<uint16_t>()[0]));
  // max |code value| is the target 15
  float m = 0;
  for (int64_t i = 0; i < v.numel(); ++i) m = std::max(m, std::fabs(v.data<float>()[i]));
  EXPECT_EQ(m, 15.0f);
}

TEST(HiF8Checkpoint, Errors) {
  TempDir dir;
  auto src = tiny_model();
  io::Checkpoint mem = io::memory_checkpoint(src);
  std::map<std::string, std::string> meta;
  auto q = model::hif8_quantize_checkpoint(*mem, {}, &meta);
  io::Checkpoint qck = io::memory_checkpoint(q, meta);
  // converting twice
  EXPECT_THROW(model::hif8_quantize_checkpoint(*qck, {}, nullptr), Error);
  // dequantizing a plain checkpoint
  EXPECT_THROW(model::hif8_dequantized(mem), Error);
  EXPECT_THROW(model::load_hif8_weight(*qck, "model.head.head.weight"), Error);
  // nothing selected
  model::Hif8ConvertOptions none;
  none.select = [](const std::string&) { return false; };
  EXPECT_THROW(model::hif8_quantize_checkpoint(*mem, none, nullptr), Error);
  // selecting a non-matrix
  model::Hif8ConvertOptions bias;
  bias.select = [](const std::string& n) { return n == "model.blocks.0.self_attn.q.bias"; };
  EXPECT_THROW(model::hif8_quantize_checkpoint(*mem, bias, nullptr), Error);
  // a corrupt scale
  q["model.blocks.0.self_attn.q.weight.hif8_scale"] = Tensor::from_vector({-1.0f}, {1});
  io::Checkpoint bad = model::hif8_dequantized(io::memory_checkpoint(q, meta));
  EXPECT_THROW(bad->get("model.blocks.0.self_attn.q.weight"), Error);
  // bad output dtype
  EXPECT_THROW(model::hif8_dequantized(qck, DType::I32), Error);
}
