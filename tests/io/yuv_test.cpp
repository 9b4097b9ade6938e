// RGB24 <-> YUV 4:2:0 integer conversion (io/yuv.h): the standards' reference values, chroma as
// the 2x2 mean, output independent of buffer addresses, and a round trip close to the input.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "osp/core/error.h"
#include "osp/io/yuv.h"

using namespace osp;
using namespace osp::io;

namespace {
struct Yuv {
  int w, h;
  std::vector<uint8_t> y, u, v;
  Yuv(int w_, int h_) : w(w_), h(h_), y(size_t(w * h)), u(size_t(w * h / 4)), v(size_t(w * h / 4)) {}
};
Yuv to_yuv(const uint8_t* rgb, int w, int h, YuvMatrix m, YuvRange r) {
  Yuv o(w, h);
  rgb_to_yuv420(rgb, w, h, m, r, {o.y.data(), w}, {o.u.data(), w / 2}, {o.v.data(), w / 2});
  return o;
}
std::vector<uint8_t> to_rgb(const Yuv& o, YuvMatrix m, YuvRange r) {
  std::vector<uint8_t> rgb(size_t(o.w * o.h * 3));
  yuv420_to_rgb({o.y.data(), o.w}, {o.u.data(), o.w / 2}, {o.v.data(), o.w / 2}, o.w, o.h, m, r,
                rgb.data());
  return rgb;
}
// A 2x2 image of one colour -> its (Y, Cb, Cr).
std::array<int, 3> convert(int R, int G, int B, YuvMatrix m, YuvRange r) {
  uint8_t rgb[2 * 2 * 3];
  for (int i = 0; i < 4; ++i) {
    rgb[3 * i] = uint8_t(R);
    rgb[3 * i + 1] = uint8_t(G);
    rgb[3 * i + 2] = uint8_t(B);
  }
  const Yuv o = to_yuv(rgb, 2, 2, m, r);
  for (uint8_t yv : o.y) EXPECT_EQ(yv, o.y[0]);
  return {o.y[0], o.u[0], o.v[0]};
}
// Smooth, saturated test picture (w x h RGB24).
std::vector<uint8_t> picture(int w, int h) {
  std::vector<uint8_t> p(size_t(w * h * 3));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* px = &p[size_t((y * w + x) * 3)];
      px[0] = uint8_t(255 * x / (w - 1));
      px[1] = uint8_t(255 * y / (h - 1));
      px[2] = uint8_t(127.5 + 127.5 * std::sin(0.05 * (x - y)));
    }
  return p;
}
double psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double se = 0;
  for (size_t i = 0; i < a.size(); ++i) se += double(int(a[i]) - int(b[i])) * (int(a[i]) - int(b[i]));
  return 10 * std::log10(255.0 * 255.0 / (se / double(a.size())));
}
}  // namespace

TEST(Yuv, ReferenceValues) {
  using A = std::array<int, 3>;
  const auto L = YuvRange::Limited, F = YuvRange::Full;
  const auto m709 = YuvMatrix::Bt709, m601 = YuvMatrix::Bt601;
  // Limited range: black 16, white 235, chroma 16..240.
  EXPECT_EQ(convert(0, 0, 0, m709, L), (A{16, 128, 128}));
  EXPECT_EQ(convert(255, 255, 255, m709, L), (A{235, 128, 128}));
  EXPECT_EQ(convert(128, 128, 128, m709, L), (A{126, 128, 128}));  // 16 + 219·128/255 = 125.9
  EXPECT_EQ(convert(255, 0, 0, m709, L), (A{63, 102, 240}));   // BT.709 red
  EXPECT_EQ(convert(0, 0, 255, m709, L), (A{32, 240, 118}));   // BT.709 blue
  EXPECT_EQ(convert(255, 0, 0, m601, L), (A{81, 90, 240}));    // BT.601 red
  EXPECT_EQ(convert(0, 255, 0, m601, L), (A{145, 54, 34}));    // BT.601 green
  EXPECT_EQ(convert(255, 255, 255, m601, F), (A{255, 128, 128}));
  EXPECT_EQ(convert(255, 0, 0, m601, F), (A{76, 85, 255}));    // JPEG (JFIF) red
}

TEST(Yuv, ChromaIsTheBlockMean) {
  // Four different pixels whose mean is grey: each keeps its own luma, the block gets Cb=Cr=128.
  const uint8_t rgb[2 * 2 * 3] = {200, 100, 0, 0, 100, 200, 100, 100, 100, 100, 100, 100};
  const Yuv o = to_yuv(rgb, 2, 2, YuvMatrix::Bt709, YuvRange::Limited);
  EXPECT_EQ(o.u[0], 128);
  EXPECT_EQ(o.v[0], 128);
  EXPECT_NE(o.y[0], o.y[1]);
  EXPECT_EQ(o.y[2], o.y[3]);
}

TEST(Yuv, BytesDoNotDependOnBufferAddresses) {
  const int w = 38, h = 22;  // rows of 114 bytes: no alignment anywhere
  const std::vector<uint8_t> pic = picture(w, h);
  const Yuv ref = to_yuv(pic.data(), w, h, YuvMatrix::Bt709, YuvRange::Limited);
  for (size_t off : {1, 7, 13}) {
    std::vector<uint8_t> in(pic.size() + 64);
    std::memcpy(in.data() + off, pic.data(), pic.size());
    // Destination planes at odd offsets with padded strides; the padding stays untouched.
    std::vector<uint8_t> y(size_t((w + 5) * h) + 64, 0xAB), u(size_t((w / 2 + 3) * h / 2) + 64, 0xAB),
        v = u;
    rgb_to_yuv420(in.data() + off, w, h, YuvMatrix::Bt709, YuvRange::Limited,
                  {y.data() + off, w + 5}, {u.data() + off, w / 2 + 3}, {v.data() + off, w / 2 + 3});
    for (int r = 0; r < h; ++r) {
      EXPECT_EQ(0, std::memcmp(y.data() + off + size_t(r * (w + 5)), &ref.y[size_t(r * w)], size_t(w)));
      EXPECT_EQ(y[off + size_t(r * (w + 5) + w)], 0xAB);
    }
    for (int r = 0; r < h / 2; ++r) {
      EXPECT_EQ(0, std::memcmp(u.data() + off + size_t(r * (w / 2 + 3)), &ref.u[size_t(r * w / 2)], size_t(w / 2)));
      EXPECT_EQ(0, std::memcmp(v.data() + off + size_t(r * (w / 2 + 3)), &ref.v[size_t(r * w / 2)], size_t(w / 2)));
    }
    std::vector<uint8_t> back(pic.size() + 64);
    yuv420_to_rgb({ref.y.data(), w}, {ref.u.data(), w / 2}, {ref.v.data(), w / 2}, w, h,
                  YuvMatrix::Bt709, YuvRange::Limited, back.data() + off);
    EXPECT_EQ(0, std::memcmp(back.data() + off, to_rgb(ref, YuvMatrix::Bt709, YuvRange::Limited).data(),
                             pic.size()));
  }
}

TEST(Yuv, RoundTripIsCloseOnlyWithTheSameMatrixAndRange) {
  const int w = 64, h = 48;
  const std::vector<uint8_t> pic = picture(w, h);
  for (YuvMatrix m : {YuvMatrix::Bt601, YuvMatrix::Bt709})
    for (YuvRange r : {YuvRange::Limited, YuvRange::Full}) {
      const Yuv o = to_yuv(pic.data(), w, h, m, r);
      const double same = psnr(pic, to_rgb(o, m, r));
      EXPECT_GT(same, 37.0) << int(m) << " " << int(r);  // 4:2:0 chroma loss only
      const YuvMatrix other = m == YuvMatrix::Bt601 ? YuvMatrix::Bt709 : YuvMatrix::Bt601;
      EXPECT_LT(psnr(pic, to_rgb(o, other, r)), same - 10.0);  // measured: ~39 vs ~27 dB
    }
  // Greys have no chroma to lose: limited range round-trips them within 1.
  std::vector<uint8_t> grey(size_t(16 * 16 * 3));
  for (size_t i = 0; i < grey.size(); ++i) grey[i] = uint8_t(i / 3);
  const Yuv g = to_yuv(grey.data(), 16, 16, YuvMatrix::Bt709, YuvRange::Limited);
  const std::vector<uint8_t> gb = to_rgb(g, YuvMatrix::Bt709, YuvRange::Limited);
  for (size_t i = 0; i < grey.size(); ++i) EXPECT_LE(std::abs(int(gb[i]) - int(grey[i])), 1) << i;
}

TEST(Yuv, OddSizesDecodeAndBadArgumentsThrow) {
  // 3x3 picture: chroma planes 2x2.
  const uint8_t y[9] = {16, 126, 235, 16, 126, 235, 16, 126, 235}, c[4] = {128, 128, 128, 128};
  uint8_t rgb[27];
  yuv420_to_rgb({y, 3}, {c, 2}, {c, 2}, 3, 3, YuvMatrix::Bt709, YuvRange::Limited, rgb);
  EXPECT_EQ(rgb[0], 0);
  EXPECT_EQ(rgb[3 * 2 + 1], 255);
  uint8_t p[64] = {};
  EXPECT_THROW(rgb_to_yuv420(p, 3, 2, YuvMatrix::Bt709, YuvRange::Limited, {p, 4}, {p, 2}, {p, 2}), Error);
  EXPECT_THROW(rgb_to_yuv420(p, 4, 2, YuvMatrix::Bt709, YuvRange::Limited, {p, 3}, {p, 2}, {p, 2}), Error);
  EXPECT_THROW(yuv420_to_rgb({p, 4}, {p, 1}, {p, 2}, 4, 2, YuvMatrix::Bt709, YuvRange::Limited, p), Error);
}
