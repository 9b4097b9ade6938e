#include "osp/io/yuv.h"

#include "osp/core/error.h"

namespace osp::io {

namespace {

constexpr int kShift = 16;  // fixed point: value · 2^16
constexpr int kHalf = 1 << (kShift - 1);

constexpr int fixed(double x) {  // round half away from zero, at compile time
  return x >= 0 ? int(x * (1 << kShift) + 0.5) : -int(-x * (1 << kShift) + 0.5);
}

// Forward coefficients: Y = yr·R + yg·G + yb·B (+ y_off), Cb = ur·R + ug·G + ub·B (+ 128),
// Cr = vr·R + vg·G + vb·B (+ 128). yg and ug/vg are derived so that the sums are exact:
// white maps to 235 (255 full) and every grey to chroma 128.
struct Forward {
  int yr, yg, yb, ur, ug, ub, vr, vg, vb, y_off;
};
constexpr Forward forward(double kr, double kb, bool full) {
  const double sy = full ? 1.0 : 219.0 / 255.0, sc = full ? 1.0 : 224.0 / 255.0;
  Forward f{};
  f.yr = fixed(sy * kr);
  f.yb = fixed(sy * kb);
  f.yg = fixed(sy) - f.yr - f.yb;
  f.ub = fixed(sc * 0.5);
  f.ur = fixed(-sc * 0.5 * kr / (1.0 - kb));
  f.ug = -f.ub - f.ur;
  f.vr = fixed(sc * 0.5);
  f.vb = fixed(-sc * 0.5 * kb / (1.0 - kr));
  f.vg = -f.vr - f.vb;
  f.y_off = full ? 0 : 16;
  return f;
}

// Inverse: R = cy·(Y - y_off) + crv·(Cr - 128); G = cy·(Y - y_off) - cgu·(Cb - 128) - cgv·(Cr - 128);
// B = cy·(Y - y_off) + cbu·(Cb - 128).
struct Inverse {
  int cy, crv, cgu, cgv, cbu, y_off;
};
constexpr Inverse inverse(double kr, double kb, bool full) {
  const double kg = 1.0 - kr - kb;
  const double sy = full ? 1.0 : 219.0 / 255.0, sc = full ? 1.0 : 224.0 / 255.0;
  Inverse i{};
  i.cy = fixed(1.0 / sy);
  i.crv = fixed(2.0 * (1.0 - kr) / sc);
  i.cbu = fixed(2.0 * (1.0 - kb) / sc);
  i.cgu = fixed(2.0 * (1.0 - kb) * kb / kg / sc);
  i.cgv = fixed(2.0 * (1.0 - kr) * kr / kg / sc);
  i.y_off = full ? 0 : 16;
  return i;
}

constexpr double kKr601 = 0.299, kKb601 = 0.114, kKr709 = 0.2126, kKb709 = 0.0722;
constexpr Forward kForward[2][2] = {
    {forward(kKr601, kKb601, false), forward(kKr601, kKb601, true)},
    {forward(kKr709, kKb709, false), forward(kKr709, kKb709, true)}};
constexpr Inverse kInverse[2][2] = {
    {inverse(kKr601, kKb601, false), inverse(kKr601, kKb601, true)},
    {inverse(kKr709, kKb709, false), inverse(kKr709, kKb709, true)}};

// Limited-range white and grey land exactly where the standards put them.
static_assert(kForward[1][0].yr + kForward[1][0].yg + kForward[1][0].yb == fixed(219.0 / 255.0));
static_assert(kForward[0][0].ur + kForward[0][0].ug + kForward[0][0].ub == 0);

inline uint8_t clamp8(int x) { return uint8_t(x < 0 ? 0 : (x > 255 ? 255 : x)); }

}  // namespace

void rgb_to_yuv420(const uint8_t* rgb, int w, int h, YuvMatrix m, YuvRange r, Plane y, Plane u,
                   Plane v) {
  OSP_CHECK(rgb && y.data && u.data && v.data, "rgb_to_yuv420: null buffer");
  OSP_CHECK(w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0,
            "rgb_to_yuv420: size must be positive and even, got ", w, "x", h);
  OSP_CHECK(y.stride >= w && u.stride >= w / 2 && v.stride >= w / 2,
            "rgb_to_yuv420: a plane stride is shorter than its row");
  const Forward& f = kForward[int(m)][int(r)];
  const int y_bias = (f.y_off << kShift) + kHalf;
  // Chroma from the sum of 4 pixels: shift by 2 more bits; the bias keeps the sum non-negative.
  const int c_bias = (128 << (kShift + 2)) + (1 << (kShift + 1));
  const size_t row = size_t(w) * 3;
  for (int cy = 0; cy < h / 2; ++cy) {
    const uint8_t* p0 = rgb + size_t(2 * cy) * row;
    const uint8_t* p1 = p0 + row;
    uint8_t* y0 = y.data + size_t(2 * cy) * size_t(y.stride);
    uint8_t* y1 = y0 + y.stride;
    uint8_t* ur = u.data + size_t(cy) * size_t(u.stride);
    uint8_t* vr = v.data + size_t(cy) * size_t(v.stride);
    for (int x = 0; x < w; ++x) {
      const uint8_t* a = p0 + 3 * size_t(x);
      const uint8_t* b = p1 + 3 * size_t(x);
      y0[x] = clamp8((f.yr * a[0] + f.yg * a[1] + f.yb * a[2] + y_bias) >> kShift);
      y1[x] = clamp8((f.yr * b[0] + f.yg * b[1] + f.yb * b[2] + y_bias) >> kShift);
    }
    for (int cx = 0; cx < w / 2; ++cx) {
      const uint8_t* a = p0 + 6 * size_t(cx);
      const uint8_t* b = p1 + 6 * size_t(cx);
      const int sr = a[0] + a[3] + b[0] + b[3], sg = a[1] + a[4] + b[1] + b[4],
                sb = a[2] + a[5] + b[2] + b[5];
      ur[cx] = clamp8((f.ur * sr + f.ug * sg + f.ub * sb + c_bias) >> (kShift + 2));
      vr[cx] = clamp8((f.vr * sr + f.vg * sg + f.vb * sb + c_bias) >> (kShift + 2));
    }
  }
}

void yuv420_to_rgb(ConstPlane y, ConstPlane u, ConstPlane v, int w, int h, YuvMatrix m, YuvRange r,
                   uint8_t* rgb) {
  OSP_CHECK(rgb && y.data && u.data && v.data, "yuv420_to_rgb: null buffer");
  OSP_CHECK(w > 0 && h > 0, "yuv420_to_rgb: size must be positive, got ", w, "x", h);
  OSP_CHECK(y.stride >= w && u.stride >= (w + 1) / 2 && v.stride >= (w + 1) / 2,
            "yuv420_to_rgb: a plane stride is shorter than its row");
  const Inverse& c = kInverse[int(m)][int(r)];
  for (int py = 0; py < h; ++py) {
    const uint8_t* yr = y.data + size_t(py) * size_t(y.stride);
    const uint8_t* ur = u.data + size_t(py / 2) * size_t(u.stride);
    const uint8_t* vr = v.data + size_t(py / 2) * size_t(v.stride);
    uint8_t* out = rgb + size_t(py) * size_t(w) * 3;
    for (int x = 0; x < w; ++x) {
      // C++20: >> of a negative int is an arithmetic (flooring) shift.
      const int l = c.cy * (int(yr[x]) - c.y_off) + kHalf;
      const int cb = int(ur[x / 2]) - 128, cr = int(vr[x / 2]) - 128;
      out[3 * size_t(x) + 0] = clamp8((l + c.crv * cr) >> kShift);
      out[3 * size_t(x) + 1] = clamp8((l - c.cgu * cb - c.cgv * cr) >> kShift);
      out[3 * size_t(x) + 2] = clamp8((l + c.cbu * cb) >> kShift);
    }
  }
}

}  // namespace osp::io
