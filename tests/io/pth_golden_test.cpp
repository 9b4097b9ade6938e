// The golden .pth files (written by torch.save) against their safetensors twins, bitwise.
#include <gtest/gtest.h>

#include <cstring>

#include "osp/io/checkpoint.h"
#include "osp/io/pth.h"
#include "osp/io/safetensors.h"
#include "io_test_util.h"
#include "test_util.h"

using namespace osp;
using namespace osp::io;

namespace {

// Bitwise equality of two tensors of the same dtype and shape (any strides).
void expect_bitwise(const Tensor& got, const Tensor& want, const std::string& name) {
  ASSERT_EQ(got.dtype(), want.dtype()) << name;
  ASSERT_EQ(got.shape(), want.shape()) << name;
  Tensor g = got.contiguous(), w = want.contiguous();
  ASSERT_EQ(g.nbytes(), w.nbytes()) << name;
  EXPECT_EQ(std::memcmp(g.raw(), w.raw(), g.nbytes()), 0) << name << " differs";
}

// The tensors of `st` under `prefix`, prefix removed.
std::map<std::string, Tensor> with_prefix(const SafetensorsFile& st, const std::string& prefix) {
  std::map<std::string, Tensor> m;
  for (const auto& n : st.names())
    if (n.rfind(prefix, 0) == 0) m[n.substr(prefix.size())] = st.get(n);
  return m;
}

}  // namespace

TEST(PthGolden, TinyT5Bf16EqualsSafetensorsBitwise) {
  PthFile p = PthFile::open(test::golden("tiny_t5_bf16.pth"));
  auto st = SafetensorsFile::open(test::golden("golden_t5_vae.safetensors"));
  auto want = with_prefix(st, "t5.weights.");
  ASSERT_FALSE(want.empty());
  ASSERT_EQ(p.names().size(), want.size());
  for (auto& [name, w] : want) {
    ASSERT_TRUE(p.has(name)) << name;
    EXPECT_EQ(p.get(name).dtype(), DType::BF16) << name;
    expect_bitwise(p.get(name), w, name);
  }
}

TEST(PthGolden, TinyVaeFp32EqualsSafetensorsConvertedBitwise) {
  PthFile p = PthFile::open(test::golden("tiny_vae_fp32.pth"));
  auto st = SafetensorsFile::open(test::golden("golden_t5_vae.safetensors"));
  auto want = with_prefix(st, "vae.weights.");
  ASSERT_FALSE(want.empty());
  ASSERT_EQ(p.names().size(), want.size());
  for (auto& [name, w] : want) {
    ASSERT_TRUE(p.has(name)) << name;
    expect_bitwise(p.get(name), w.to(DType::F32), name);  // bf16 -> f32 is exact
  }
}

TEST(PthGolden, MixedStateDictValues) {
  PthFile p = PthFile::open(test::golden("mixed_state_dict.pth"));
  EXPECT_EQ(p.names(), (std::vector<std::string>{"a.f32", "b.t_view", "c.slice", "d.f16", "e.bf16",
                                                 "f.i64", "g.scalar"}));
  Tensor a = p.get("a.f32"), t = p.get("b.t_view"), s = p.get("c.slice");
  EXPECT_EQ(a.shape(), (Shape{4, 6}));
  EXPECT_EQ(t.shape(), (Shape{6, 4}));
  EXPECT_EQ(t.strides(), (Shape{1, 6}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.storage(), a.storage());  // the transpose shares a.f32's storage
  EXPECT_EQ(s.shape(), (Shape{2, 6}));
  EXPECT_EQ(s.offset(), 6);
  EXPECT_EQ(s.storage(), a.storage());
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) {
      EXPECT_EQ(a.item({r, c}), r * 6 + c);
      EXPECT_EQ(t.item({c, r}), r * 6 + c);
    }
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 6; ++c) EXPECT_EQ(s.item({r, c}), (r + 1) * 6 + c);
  Tensor h = p.get("d.f16"), b = p.get("e.bf16"), i = p.get("f.i64"), g = p.get("g.scalar");
  EXPECT_EQ(h.dtype(), DType::F16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  EXPECT_EQ(h.shape(), (Shape{4, 6}));
  EXPECT_EQ(b.shape(), (Shape{4, 6}));
  for (int k = 0; k < 24; ++k) {
    EXPECT_EQ(h.item({k / 6, k % 6}), k);
    EXPECT_EQ(b.item({k / 6, k % 6}), k);
  }
  EXPECT_EQ(i.dtype(), DType::I64);
  EXPECT_EQ(i.shape(), (Shape{5}));
  for (int k = 0; k < 5; ++k) EXPECT_EQ(i.item({k}), k);
  EXPECT_EQ(g.dtype(), DType::F32);
  EXPECT_EQ(g.dim(), 0);
  EXPECT_EQ(g.item({}), 3.5);
}

TEST(PthGolden, OpensThroughCheckpoint) {
  Checkpoint ck = open_checkpoint(test::golden("tiny_t5_bf16.pth"));
  EXPECT_EQ(ck->format(), "pth");
  EXPECT_TRUE(ck->has("blocks.0.attn.q.weight"));
  EXPECT_EQ(ck->info("blocks.0.attn.q.weight").shape, (Shape{64, 64}));
  EXPECT_EQ(ck->get("blocks.0.attn.q.weight", {64, 64}).dtype(), DType::BF16);
}

TEST(PthGolden, ConvertsToSafetensorsBitwise) {
  osp::iotest::TempDir dir;
  Checkpoint src = open_checkpoint(test::golden("mixed_state_dict.pth"));
  save_as_safetensors(*src, dir.file("mixed.safetensors"), {{"converted_from", "mixed_state_dict.pth"}});
  Checkpoint dst = open_checkpoint(dir.file("mixed.safetensors"));
  EXPECT_EQ(dst->names(), src->names());
  EXPECT_EQ(dst->metadata().at("converted_from"), "mixed_state_dict.pth");
  for (const auto& n : src->names()) expect_bitwise(dst->get(n), src->get(n), n);  // incl. the transpose
}
