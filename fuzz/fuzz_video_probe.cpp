// Fuzz target: osp inspect's video probe (io::probe_video: libavformat demuxing, decoding every
// frame to RGB) on a file holding the input.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "fuzz/fuzz_target.h"
#include "osp/io/video_writer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      (std::filesystem::temp_directory_path() / ("osp_fuzz_probe_" + std::to_string(::getpid()) + ".mp4")).string();
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  }
  osp::fuzz::expect_only_osp_errors([&] {
    osp::Tensor rgb;
    const auto p = osp::io::probe_video(path, &rgb);
    volatile uint64_t sink = uint64_t(p.frames) + osp::fuzz::touch(rgb);
    (void)sink;
  });
  std::error_code ec;
  std::filesystem::remove(path, ec);
  return 0;
}
