// Video output: H.264 MP4 through FFmpeg's libraries (libavformat/libavcodec), yuv420p
// (BT.709 matrix, limited range, declared in the stream; the RGB -> YUV conversion is our own
// integer code in io/yuv.h, not swscale), 16 fps by default, the prompt and settings in the
// container metadata; plus a reader (libavformat) used by tests, `osp inspect`, `osp eval` and
// training to read videos back.
//
// Built only with OSP_HAVE_FFMPEG; without it every call throws an osp::Error that says how
// to get MP4 output (install libav*-dev and reconfigure) or to use PNG frames instead.
//
// Encoder choice: libx264 when libavcodec has it (Debian's libavcodec59 does), else any other
// H.264 encoder, else MPEG-4 Part 2 — and the fallback is logged, never silent.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"

namespace osp::io {

struct VideoOptions {
  int fps = 16;
  int crf = 18;                 // x264 quality (lower = better); ignored by other encoders
  std::string preset = "medium";
  // Container metadata: "title", "comment", plus any custom keys (written as mp4 "mdta"
  // tags via movflags use_metadata_tags, readable with ffprobe).
  std::map<std::string, std::string> metadata;
};

// True when this build can write MP4 files.
bool video_writer_available();
// The encoder write_mp4 would use ("libx264", "mpeg4", ...) or "" without FFmpeg.
std::string video_encoder_name();

// Streams RGB frames into an MP4 file. The same frames and options give byte-identical files
// (with the same libx264/libavformat), whatever the load, the output path, the address of the
// caller's buffer or what the process did before: the RGB -> YUV conversion is io/yuv.h, encoding
// runs on one thread (x264's threaded modes do not promise the same bytes), and on a CPU with
// AVX-512 x264 runs without it (its AVX-512 code reads memory it never wrote, so the bytes
// followed the heap's contents). The file is written in place: write_mp4 adds the atomic
// temporary.
class VideoWriter {
 public:
  VideoWriter(const std::string& path, int width, int height, const VideoOptions& opt = {});
  ~VideoWriter();  // closes (finishes the file) if close() was not called; never throws
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;
  // rgb: width·height·3 bytes, row-major, RGB24.
  void write_frame(const uint8_t* rgb);
  void close();
  const std::string& encoder() const;
  int frames_written() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// frames: U8 [F, H, W, 3] (CPU). Writes the whole clip atomically (io/atomic_file.h): a failure
// leaves no partial file and any previous `path` intact; `ow` = Refuse refuses an existing path.
void write_mp4(const std::string& path, const Tensor& frames, const VideoOptions& opt = {},
               Overwrite ow = Overwrite::Allow);

// Converts a decoded video [3, F, H, W] (F32, values ≈ [-1, 1], any device) to U8 RGB frames
// [F, H, W, 3] the way the Wan2.1 reference saves videos: clamp to [-1, 1], then
// uint8 = trunc((x + 1) / 2 · 255).
Tensor video_to_rgb8(const Tensor& video);

struct VideoProbe {
  int width = 0, height = 0, frames = 0;  // frames counted by decoding every packet
  double fps = 0;
  std::string codec;                      // e.g. "h264"
  std::map<std::string, std::string> metadata;  // container tags
};
// Opens a video with libavformat, decodes it and reports what it holds. If `rgb` is not
// null it receives the decoded frames as U8 [F, H, W, 3].
VideoProbe probe_video(const std::string& path, Tensor* rgb = nullptr);

}  // namespace osp::io
