#include "osp/io/image_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#ifdef OSP_HAVE_PNG
#include <png.h>
#endif

namespace osp::io {

#ifndef OSP_HAVE_PNG
namespace {
[[noreturn]] void no_png() {
  fail("this osp build has no libpng support: install libpng-dev (scripts/install-deps.sh) and "
       "reconfigure, or write an MP4 instead");
}
}  // namespace
bool png_available() { return false; }
void write_png(const std::string&, const uint8_t*, int, int, const std::map<std::string, std::string>&) {
  no_png();
}
Tensor read_png(const std::string&) { no_png(); }
#else

bool png_available() { return true; }

namespace {
struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

[[noreturn]] void png_error_fn(png_structp png, png_const_charp msg) {
  // libpng requires this not to return; longjmp back to the setjmp in the caller.
  auto* buf = static_cast<std::string*>(png_get_error_ptr(png));
  if (buf) *buf = msg ? msg : "unknown libpng error";
  png_longjmp(png, 1);
}
void png_warn_fn(png_structp, png_const_charp) {}
}  // namespace

void write_png(const std::string& path, const uint8_t* rgb, int width, int height,
               const std::map<std::string, std::string>& text) {
  OSP_CHECK(rgb && width > 0 && height > 0, "write_png: bad image ", width, "x", height);
  FilePtr f(std::fopen(path.c_str(), "wb"));
  OSP_CHECK(f, "cannot open ", path, " for writing (does the folder exist and is it writable?)");
  std::string err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warn_fn);
  OSP_CHECK(png, "png_create_write_struct failed");
  png_infop info = png_create_info_struct(png);
  std::vector<png_text> chunks;
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fail(str("writing PNG ", path, " failed: ", err));
  }
  png_init_io(png, f.get());
  png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (const auto& [k, v] : text) {
    png_text t{};
    t.compression = PNG_TEXT_COMPRESSION_NONE;
    t.key = const_cast<char*>(k.c_str());
    t.text = const_cast<char*>(v.c_str());
    t.text_length = v.size();
    chunks.push_back(t);
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), int(chunks.size()));
  png_write_info(png, info);
  for (int y = 0; y < height; ++y)
    png_write_row(png, const_cast<png_bytep>(rgb + size_t(y) * width * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  const bool flushed = std::fflush(f.get()) == 0 && !std::ferror(f.get());
  const bool closed = std::fclose(f.release()) == 0;
  OSP_CHECK(flushed && closed, "writing ", path, " failed: ", std::strerror(errno), " (disk full?)");
}

Tensor read_png(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  OSP_CHECK(f, "cannot open PNG ", path);
  uint8_t sig[8];
  OSP_CHECK(std::fread(sig, 1, 8, f.get()) == 8 && png_sig_cmp(sig, 0, 8) == 0, path, " is not a PNG file");
  std::string err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warn_fn);
  OSP_CHECK(png, "png_create_read_struct failed");
  png_infop info = png_create_info_struct(png);
  Tensor out;
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(str("reading PNG ", path, " failed: ", err));
  }
  png_init_io(png, f.get());
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
  if (bd == 16) png_set_strip_16(png);
  if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  if (ct & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_read_update_info(png, info);
  OSP_CHECK(png_get_rowbytes(png, info) == size_t(w) * 3, path, ": unsupported PNG layout");
  out = Tensor::empty({int64_t(h), int64_t(w), 3}, DType::U8);
  for (png_uint_32 y = 0; y < h; ++y) png_read_row(png, out.data<uint8_t>() + size_t(y) * w * 3, nullptr);
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return out;
}
#endif

std::vector<std::string> write_png_frames(const std::string& dir, const Tensor& frames,
                                          const std::map<std::string, std::string>& text, Overwrite ow) {
  OSP_CHECK(frames.defined() && frames.dtype() == DType::U8 && frames.dim() == 4 &&
                frames.size(3) == 3,
            "write_png_frames: expected U8 RGB frames [F, H, W, 3], got ",
            frames.defined() ? frames.desc() : std::string("an undefined tensor"));
  const Tensor f = frames.to(Device::cpu()).contiguous();
  const int64_t per = f.size(1) * f.size(2) * 3;
  std::vector<std::string> names;
  write_dir_atomic(dir, [&](const std::string& tmp) {
    for (int64_t i = 0; i < f.size(0); ++i) {
      char name[32];
      std::snprintf(name, sizeof name, "frame_%04lld.png", (long long)i);
      write_png((std::filesystem::path(tmp) / name).string(), f.data<uint8_t>() + i * per, int(f.size(2)),
                int(f.size(1)), text);
      names.push_back(name);
    }
  }, ow);
  std::vector<std::string> paths;
  for (const auto& n : names) paths.push_back((std::filesystem::path(dir) / n).string());
  return paths;
}

}  // namespace osp::io
