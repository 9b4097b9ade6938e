// Skiparse-2D index maps against the reference (OSP-Next's einops layouts) stored in
// golden_sampler_hif8_skiparse.safetensors: skiparse_T*_H*_W*_P*.token / .group, exact, for
// every grid in the file (P = 2, 3, 4). Lives in tests/model because it needs osp_io.
#include <gtest/gtest.h>

#include <regex>

#include "osp/io/safetensors.h"
#include "osp/sparse/skiparse.h"
#include "test_util.h"

using namespace osp;
using sparse::BlockKind;

TEST(SkiparseGolden, IndexMapsEqualTheReferenceExactly) {
  auto f = io::SafetensorsFile::open(test::golden("golden_sampler_hif8_skiparse.safetensors"));
  const std::regex re(R"(skiparse_T(\d+)_H(\d+)_W(\d+)_P(\d+)\.(token|group))");
  int checked = 0;
  std::set<int> ps;
  for (const auto& name : f.names()) {
    std::smatch m;
    if (!std::regex_match(name, m, re)) continue;
    const sparse::Grid g{std::stoll(m[1]), std::stoll(m[2]), std::stoll(m[3])};
    const int P = std::stoi(m[4]);
    const BlockKind kind = m[5] == "token" ? BlockKind::Token : BlockKind::Group;
    Tensor ref = f.get(name);
    Tensor got = sparse::skiparse_index(g, P, kind, /*padding_last=*/false);
    ASSERT_EQ(ref.shape(), got.shape()) << name;
    const std::vector<float> rv = ref.to_float_vector();  // small ints: exact in f32
    const int32_t* gv = got.data<int32_t>();
    int64_t mismatches = 0;
    for (int64_t i = 0; i < got.numel(); ++i) mismatches += int32_t(rv[size_t(i)]) != gv[i];
    EXPECT_EQ(mismatches, 0) << name;
    // Every token of the (unpadded) golden grids appears exactly once.
    Tensor inv = sparse::inverse_to_full(got, g.numel());
    EXPECT_EQ(inv.numel(), g.numel());
    ++checked;
    ps.insert(P);
  }
  EXPECT_EQ(checked, 10) << "5 grids × (token, group) expected in the golden file";
  EXPECT_EQ(ps, (std::set<int>{2, 3, 4}));
}
