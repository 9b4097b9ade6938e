// RGB24 <-> YUV 4:2:0 (planar, 8-bit) in plain integer arithmetic: the same bytes for the same
// pixels on every machine, whatever the addresses or alignment of the buffers (unlike swscale,
// whose SIMD path, and so its rounding, depends on alignment). Used by the MP4 writer to fill
// the encoder's planes and by the reader to turn decoded yuv420p/yuvj420p frames back into RGB.
//
// Arithmetic: 16-bit fixed point, coefficients derived at compile time from Kr/Kb
// (BT.601: 0.299/0.114, BT.709: 0.2126/0.0722), round to nearest, results clamped to [0, 255].
// Limited ("tv") range: Y in [16, 235], Cb/Cr in [16, 240]; full ("pc") range: all in [0, 255].
// Chroma sits at the centre of each 2x2 block: the writer averages the block's RGB before
// converting, the reader gives every pixel of the block the same chroma sample.
// Needs no FFmpeg.
#pragma once
#include <cstdint>

namespace osp::io {

enum class YuvMatrix { Bt601, Bt709 };
enum class YuvRange { Limited, Full };

// One 8-bit plane: `data` points at the first pixel of the first row, rows `stride` bytes apart.
struct Plane {
  uint8_t* data = nullptr;
  int stride = 0;
};
struct ConstPlane {
  const uint8_t* data = nullptr;
  int stride = 0;
};

// rgb: w·h·3 bytes, RGB24, rows 3w bytes apart, at any address. w and h positive and even.
// Writes the first w bytes of each of the h rows of `y`, and the first w/2 bytes of each of the
// h/2 rows of `u` (Cb) and `v` (Cr); nothing else is touched. Chroma = the conversion of the
// 2x2 block's mean RGB.
void rgb_to_yuv420(const uint8_t* rgb, int w, int h, YuvMatrix m, YuvRange r, Plane y, Plane u,
                   Plane v);

// y: h rows of w bytes; u, v: ceil(h/2) rows of ceil(w/2) bytes (odd sizes allowed). Writes
// w·h·3 bytes RGB24 to `rgb` (rows 3w bytes apart); chroma sample (x/2, y/2) serves pixel (x, y).
void yuv420_to_rgb(ConstPlane y, ConstPlane u, ConstPlane v, int w, int h, YuvMatrix m, YuvRange r,
                   uint8_t* rgb);

}  // namespace osp::io
