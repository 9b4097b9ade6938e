// PNG frames via libpng (built with OSP_HAVE_PNG; a clear osp::Error otherwise).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"

namespace osp::io {

bool png_available();
// Writes one 8-bit RGB image (rgb: width·height·3 bytes, row-major). `text` becomes PNG tEXt
// chunks (e.g. {"prompt", ...}).
void write_png(const std::string& path, const uint8_t* rgb, int width, int height,
               const std::map<std::string, std::string>& text = {});
// frames: U8 [F, H, W, 3]. Writes frame_0000.png, frame_0001.png, ... into `dir` atomically
// (io/atomic_file.h: a temporary folder beside it, renamed when every frame is written; a
// failure leaves nothing and any previous `dir` intact). `ow` = Refuse refuses a folder that
// already holds files; Allow replaces the whole folder. Returns the paths written.
std::vector<std::string> write_png_frames(const std::string& dir, const Tensor& frames,
                                          const std::map<std::string, std::string>& text = {},
                                          Overwrite ow = Overwrite::Allow);
// Reads an 8-bit RGB or RGBA PNG back as U8 [H, W, 3] (alpha dropped); tests use it.
Tensor read_png(const std::string& path);

}  // namespace osp::io
