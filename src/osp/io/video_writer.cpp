#include "osp/io/video_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "osp/core/log.h"
#include "osp/io/yuv.h"

#ifdef OSP_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/cpu.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace osp::io {

Tensor video_to_rgb8(const Tensor& video) {
  OSP_CHECK(video.defined() && video.dim() == 4 && video.size(0) == 3,
            "video_to_rgb8: expected a decoded video [3, F, H, W], got ",
            video.defined() ? video.desc() : std::string("an undefined tensor"));
  const Tensor v = video.to(Device::cpu()).to(DType::F32).contiguous();
  const int64_t F = v.size(1), H = v.size(2), W = v.size(3), plane = F * H * W;
  Tensor out = Tensor::empty({F, H, W, 3}, DType::U8);
  const float* src = v.data<float>();
  uint8_t* dst = out.data<uint8_t>();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < plane; ++p)
    for (int c = 0; c < 3; ++c) {
      float x = src[c * plane + p];
      if (std::isnan(x)) x = -1.0f;
      x = std::min(1.0f, std::max(-1.0f, x));
      dst[p * 3 + c] = uint8_t((x + 1.0f) / 2.0f * 255.0f);  // truncation, as torch's .to(uint8)
    }
  return out;
}

#ifndef OSP_HAVE_FFMPEG

namespace {
[[noreturn]] void no_ffmpeg() {
  fail("this osp build has no FFmpeg support, so it cannot write or read MP4 files: install "
       "libavformat-dev libavcodec-dev libswscale-dev (scripts/install-deps.sh) and reconfigure, "
       "or write PNG frames instead (--out DIR/)");
}
}  // namespace
bool video_writer_available() { return false; }
std::string video_encoder_name() { return ""; }
struct VideoWriter::Impl {};
VideoWriter::VideoWriter(const std::string&, int, int, const VideoOptions&) { no_ffmpeg(); }
VideoWriter::~VideoWriter() = default;
void VideoWriter::write_frame(const uint8_t*) { no_ffmpeg(); }
void VideoWriter::close() {}
const std::string& VideoWriter::encoder() const { no_ffmpeg(); }
int VideoWriter::frames_written() const { return 0; }
void write_mp4(const std::string&, const Tensor&, const VideoOptions&, Overwrite) { no_ffmpeg(); }
VideoProbe probe_video(const std::string&, Tensor*) { no_ffmpeg(); }

#else

namespace {

std::string av_err(int e) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(e, buf, sizeof buf);
  return buf;
}
#define OSP_AV_CHECK(call, what)                                              \
  do {                                                                        \
    const int osp_av_rc_ = (call);                                            \
    if (osp_av_rc_ < 0) fail(str(what, " failed: ", av_err(osp_av_rc_)));     \
  } while (0)

const AVCodec* pick_encoder(bool* fallback) {
  *fallback = false;
  if (const AVCodec* c = avcodec_find_encoder_by_name("libx264")) return c;
  if (const AVCodec* c = avcodec_find_encoder(AV_CODEC_ID_H264)) return c;
  *fallback = true;
  return avcodec_find_encoder(AV_CODEC_ID_MPEG4);
}

// The matrix write_frame converts with; the stream declares it (AVCOL_SPC_BT709).
constexpr YuvMatrix kYuvMatrix = YuvMatrix::Bt709;

// x264's AVX-512 code reads memory it never wrote: with it, the same frames give different bytes
// depending on what the heap held before (a previous encode in the process, another output path,
// AddressSanitizer's allocator; reproduced with glibc's M_PERTURB, see video_writer_test). Every
// other instruction set gives the same bytes as x264's plain C code. So on a CPU with AVX-512,
// x264 gets the instruction sets FFmpeg detected on this CPU minus AVX-512, as x264's "asm"
// names (each name implies only sets below it, so nothing is claimed that the CPU lacks).
// "" = leave x264's own detection (no AVX-512 here, or not x86).
std::string x264_asm_without_avx512() {
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
  const int f = av_get_cpu_flags();
  if (!(f & (AV_CPU_FLAG_AVX512 | AV_CPU_FLAG_AVX512ICL))) return "";
  static const struct {
    int flag;
    const char* name;
  } sets[] = {{AV_CPU_FLAG_MMXEXT, "MMX2"}, {AV_CPU_FLAG_SSE, "SSE"},     {AV_CPU_FLAG_SSE2, "SSE2"},
              {AV_CPU_FLAG_SSE3, "SSE3"},   {AV_CPU_FLAG_SSSE3, "SSSE3"}, {AV_CPU_FLAG_SSE4, "SSE4.1"},
              {AV_CPU_FLAG_SSE42, "SSE4.2"}, {AV_CPU_FLAG_AVX, "AVX"},    {AV_CPU_FLAG_XOP, "XOP"},
              {AV_CPU_FLAG_FMA4, "FMA4"},   {AV_CPU_FLAG_FMA3, "FMA3"},   {AV_CPU_FLAG_BMI1, "BMI1"},
              {AV_CPU_FLAG_BMI2, "BMI2"},   {AV_CPU_FLAG_AVX2, "AVX2"}};
  std::string names;
  for (const auto& s : sets)
    if (f & s.flag) names += (names.empty() ? "" : ",") + std::string(s.name);
  return names.empty() ? "0" : names;
#else
  return "";
#endif
}

}  // namespace

bool video_writer_available() {
  bool fb;
  return pick_encoder(&fb) != nullptr;
}
std::string video_encoder_name() {
  bool fb;
  const AVCodec* c = pick_encoder(&fb);
  return c ? c->name : "";
}

struct VideoWriter::Impl {
  std::string path, encoder;
  int w = 0, h = 0, fps = 16, frames = 0;
  AVFormatContext* fmt = nullptr;
  AVCodecContext* enc = nullptr;
  AVStream* st = nullptr;
  AVFrame* frame = nullptr;      // yuv420p, filled by rgb_to_yuv420 (io/yuv.h), never by swscale
  const uint8_t* zeroed = nullptr;  // frame buffer whose every byte (padding too) was zeroed
  AVPacket* pkt = nullptr;
  bool header = false, closed = false;

  void drain(bool flush) {
    if (flush) OSP_AV_CHECK(avcodec_send_frame(enc, nullptr), "flushing the video encoder");
    for (;;) {
      const int rc = avcodec_receive_packet(enc, pkt);
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      OSP_AV_CHECK(rc, "encoding a video frame");
      av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
      pkt->stream_index = st->index;
      const int wr = av_interleaved_write_frame(fmt, pkt);
      av_packet_unref(pkt);
      OSP_AV_CHECK(wr, str("writing to ", path));
    }
  }
  void release() {
    if (frame) av_frame_free(&frame);
    if (pkt) av_packet_free(&pkt);
    if (enc) avcodec_free_context(&enc);
    if (fmt) {
      if (fmt->pb) avio_closep(&fmt->pb);
      avformat_free_context(fmt);
    }
    fmt = nullptr;
  }
};

VideoWriter::VideoWriter(const std::string& path, int width, int height, const VideoOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  OSP_CHECK(width > 0 && height > 0 && width % 2 == 0 && height % 2 == 0,
            "video size must be positive and even for yuv420p, got ", width, "x", height);
  OSP_CHECK(opt.fps > 0 && opt.fps <= 240, "video fps must be in [1, 240], got ", opt.fps);
  m.path = path;
  m.w = width;
  m.h = height;
  m.fps = opt.fps;
  av_log_set_level(AV_LOG_ERROR);
  try {
    OSP_AV_CHECK(avformat_alloc_output_context2(&m.fmt, nullptr, "mp4", path.c_str()),
                 str("creating the MP4 container for ", path));
    bool fallback = false;
    const AVCodec* codec = pick_encoder(&fallback);
    OSP_CHECK(codec, "libavcodec has neither an H.264 nor an MPEG-4 encoder; cannot write ", path,
              " (install a full libavcodec, or write PNG frames with --out DIR/)");
    m.encoder = codec->name;
    if (fallback)
      log_warn("no H.264 encoder in this libavcodec; writing MPEG-4 Part 2 (", codec->name,
               ") video instead");
    else
      log_verbose("video encoder: ", codec->name);
    m.st = avformat_new_stream(m.fmt, nullptr);
    OSP_CHECK(m.st, "avformat_new_stream failed for ", path);
    m.enc = avcodec_alloc_context3(codec);
    OSP_CHECK(m.enc, "avcodec_alloc_context3 failed");
    m.enc->width = width;
    m.enc->height = height;
    m.enc->pix_fmt = AV_PIX_FMT_YUV420P;
    // What write_frame's conversion produces (kYuvMatrix, limited range, chroma at the centre of
    // each 2x2 block), declared in the stream so that players convert back the same way.
    m.enc->colorspace = AVCOL_SPC_BT709;
    m.enc->color_range = AVCOL_RANGE_MPEG;
    m.enc->color_primaries = AVCOL_PRI_BT709;
    m.enc->color_trc = AVCOL_TRC_BT709;
    m.enc->chroma_sample_location = AVCHROMA_LOC_CENTER;
    m.enc->time_base = AVRational{1, opt.fps};
    m.enc->framerate = AVRational{opt.fps, 1};
    m.enc->gop_size = 12;
    m.enc->thread_count = 1;  // deterministic bytes (see video_writer.h)
    if (fallback) m.enc->bit_rate = int64_t(width) * height * opt.fps / 2;  // ~0.5 bit/pixel
    if (m.fmt->oformat->flags & AVFMT_GLOBALHEADER) m.enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    AVDictionary* eopts = nullptr;
    if (std::string(codec->name) == "libx264") {
      av_dict_set(&eopts, "crf", std::to_string(opt.crf).c_str(), 0);
      av_dict_set(&eopts, "preset", opt.preset.c_str(), 0);
      if (const std::string a = x264_asm_without_avx512(); !a.empty())
        av_dict_set(&eopts, "x264-params", ("asm=" + a).c_str(), 0);
    }
    const int orc = avcodec_open2(m.enc, codec, &eopts);
    av_dict_free(&eopts);
    OSP_AV_CHECK(orc, str("opening the ", codec->name, " encoder"));
    OSP_AV_CHECK(avcodec_parameters_from_context(m.st->codecpar, m.enc), "copying encoder parameters");
    m.st->time_base = m.enc->time_base;
    m.st->avg_frame_rate = m.enc->framerate;
    for (const auto& [k, v] : opt.metadata) av_dict_set(&m.fmt->metadata, k.c_str(), v.c_str(), 0);
    av_dict_set(&m.fmt->metadata, "encoder_app", "osp", 0);
    OSP_AV_CHECK(avio_open(&m.fmt->pb, path.c_str(), AVIO_FLAG_WRITE),
                 str("opening ", path, " for writing (does the folder exist and is it writable?)"));
    AVDictionary* mopts = nullptr;
    av_dict_set(&mopts, "movflags", "+use_metadata_tags+faststart", 0);
    const int hrc = avformat_write_header(m.fmt, &mopts);
    av_dict_free(&mopts);
    OSP_AV_CHECK(hrc, str("writing the MP4 header of ", path));
    m.header = true;
    m.frame = av_frame_alloc();
    m.pkt = av_packet_alloc();
    OSP_CHECK(m.frame && m.pkt, "out of memory allocating FFmpeg frames");
    m.frame->format = AV_PIX_FMT_YUV420P;
    m.frame->width = width;
    m.frame->height = height;
    m.frame->colorspace = m.enc->colorspace;
    m.frame->color_range = m.enc->color_range;
    m.frame->color_primaries = m.enc->color_primaries;
    m.frame->color_trc = m.enc->color_trc;
    m.frame->chroma_location = m.enc->chroma_sample_location;
    OSP_AV_CHECK(av_frame_get_buffer(m.frame, 0), "allocating a video frame");
  } catch (...) {
    m.release();
    throw;
  }
}

void VideoWriter::write_frame(const uint8_t* rgb) {
  Impl& m = *impl_;
  OSP_CHECK(!m.closed, "VideoWriter: write_frame after close (", m.path, ")");
  OSP_CHECK(rgb, "VideoWriter: null frame");
  OSP_AV_CHECK(av_frame_make_writable(m.frame), "making a video frame writable");
  // Every byte the encoder may read is ours: a buffer seen for the first time (the first frame,
  // or a fresh copy made by av_frame_make_writable) is zeroed whole, row padding and the rows
  // below the picture included, and the conversion then rewrites the same picture bytes each
  // frame. (Uninitialised padding made encodes differ under AddressSanitizer's allocator.)
  if (m.frame->buf[0]->data != m.zeroed) {
    for (AVBufferRef* b : m.frame->buf)
      if (b) std::memset(b->data, 0, b->size);
    m.zeroed = m.frame->buf[0]->data;
  }
  // Plain integer arithmetic: the bytes do not depend on where `rgb` sits in memory.
  rgb_to_yuv420(rgb, m.w, m.h, kYuvMatrix, YuvRange::Limited, {m.frame->data[0], m.frame->linesize[0]},
                {m.frame->data[1], m.frame->linesize[1]}, {m.frame->data[2], m.frame->linesize[2]});
  m.frame->pts = m.frames++;
  OSP_AV_CHECK(avcodec_send_frame(m.enc, m.frame), "sending a frame to the encoder");
  m.drain(false);
}

void VideoWriter::close() {
  Impl& m = *impl_;
  if (m.closed) return;
  m.closed = true;
  try {
    m.drain(true);
    OSP_AV_CHECK(av_write_trailer(m.fmt), str("finishing ", m.path));
    // Buffered bytes reach the file here: a full disk shows up now, not as a truncated video.
    OSP_AV_CHECK(avio_closep(&m.fmt->pb), str("writing ", m.path, " (disk full?)"));
  } catch (...) {
    m.release();
    throw;
  }
  m.release();
}

VideoWriter::~VideoWriter() {
  if (!impl_) return;
  try {
    close();
  } catch (...) {
  }
}

const std::string& VideoWriter::encoder() const { return impl_->encoder; }
int VideoWriter::frames_written() const { return impl_->frames; }

void write_mp4(const std::string& path, const Tensor& frames, const VideoOptions& opt, Overwrite ow) {
  OSP_CHECK(frames.defined() && frames.dtype() == DType::U8 && frames.dim() == 4 &&
                frames.size(3) == 3,
            "write_mp4: expected U8 RGB frames [F, H, W, 3], got ",
            frames.defined() ? frames.desc() : std::string("an undefined tensor"));
  OSP_CHECK(frames.size(0) >= 1, "write_mp4: no frames to write");
  const Tensor f = frames.to(Device::cpu()).contiguous();
  write_file_atomic(path, [&](const std::string& tmp) {
    VideoWriter w(tmp, int(f.size(2)), int(f.size(1)), opt);
    const int64_t per = f.size(1) * f.size(2) * 3;
    for (int64_t i = 0; i < f.size(0); ++i) w.write_frame(f.data<uint8_t>() + i * per);
    w.close();
  }, ow);
}

VideoProbe probe_video(const std::string& path, Tensor* rgb) {
  av_log_set_level(AV_LOG_ERROR);
  AVFormatContext* fmt = nullptr;
  OSP_AV_CHECK(avformat_open_input(&fmt, path.c_str(), nullptr, nullptr), str("opening video ", path));
  AVCodecContext* dec = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* pkt = nullptr;
  SwsContext* sws = nullptr;  // only for pixel formats other than yuv420p / yuvj420p
  AVFrame* staged = nullptr;  // swscale's RGB24 output (FFmpeg-aligned, the same every frame)
  VideoProbe out;
  std::vector<uint8_t> pixels;
  auto cleanup = [&] {
    if (sws) sws_freeContext(sws);
    if (staged) av_frame_free(&staged);
    if (frame) av_frame_free(&frame);
    if (pkt) av_packet_free(&pkt);
    if (dec) avcodec_free_context(&dec);
    avformat_close_input(&fmt);
  };
  try {
    OSP_AV_CHECK(avformat_find_stream_info(fmt, nullptr), str("reading stream info of ", path));
    const int si = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
    OSP_CHECK(si >= 0, path, " has no video stream");
    AVStream* st = fmt->streams[si];
    const AVCodec* codec = avcodec_find_decoder(st->codecpar->codec_id);
    OSP_CHECK(codec, "no decoder for the video stream of ", path);
    out.codec = codec->name;
    out.width = st->codecpar->width;
    out.height = st->codecpar->height;
    out.fps = st->avg_frame_rate.den ? av_q2d(st->avg_frame_rate) : 0.0;
    const AVDictionaryEntry* e = nullptr;
    while ((e = av_dict_get(fmt->metadata, "", e, AV_DICT_IGNORE_SUFFIX)))
      out.metadata[e->key] = e->value;
    dec = avcodec_alloc_context3(codec);
    OSP_CHECK(dec, "avcodec_alloc_context3 failed");
    OSP_AV_CHECK(avcodec_parameters_to_context(dec, st->codecpar), "copying decoder parameters");
    OSP_AV_CHECK(avcodec_open2(dec, codec, nullptr), "opening the video decoder");
    frame = av_frame_alloc();
    pkt = av_packet_alloc();
    const size_t per = size_t(out.width) * out.height * 3;
    auto take = [&](bool flush) {
      if (flush) avcodec_send_packet(dec, nullptr);
      for (;;) {
        const int rc = avcodec_receive_frame(dec, frame);
        if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
        OSP_AV_CHECK(rc, "decoding a video frame");
        ++out.frames;
        if (rgb) {
          OSP_CHECK(frame->width == out.width && frame->height == out.height,
                    "frame size changed inside ", path);
          pixels.resize(pixels.size() + per);
          uint8_t* dst = pixels.data() + pixels.size() - per;
          const AVPixelFormat pf = AVPixelFormat(frame->format);
          if (pf == AV_PIX_FMT_YUV420P || pf == AV_PIX_FMT_YUVJ420P) {
            // What VideoWriter writes: converted back by io/yuv.h with the matrix and range the
            // stream declares (unspecified matrix = BT.601, as swscale assumes), independent
            // of buffer addresses.
            const YuvMatrix mx =
                frame->colorspace == AVCOL_SPC_BT709 ? YuvMatrix::Bt709 : YuvMatrix::Bt601;
            const YuvRange rg = pf == AV_PIX_FMT_YUVJ420P || frame->color_range == AVCOL_RANGE_JPEG
                                    ? YuvRange::Full
                                    : YuvRange::Limited;
            yuv420_to_rgb({frame->data[0], frame->linesize[0]}, {frame->data[1], frame->linesize[1]},
                          {frame->data[2], frame->linesize[2]}, out.width, out.height, mx, rg, dst);
          } else {
            if (!sws) {
              sws = sws_getContext(frame->width, frame->height, pf, frame->width, frame->height,
                                   AV_PIX_FMT_RGB24, SWS_BICUBIC, nullptr, nullptr, nullptr);
              OSP_CHECK(sws, "sws_getContext failed while decoding ", path);
              staged = av_frame_alloc();
              OSP_CHECK(staged, "out of memory allocating FFmpeg frames");
              staged->format = AV_PIX_FMT_RGB24;
              staged->width = frame->width;
              staged->height = frame->height;
              OSP_AV_CHECK(av_frame_get_buffer(staged, 0), "allocating a video frame");
            }
            sws_scale(sws, frame->data, frame->linesize, 0, frame->height, staged->data,
                      staged->linesize);
            for (int y = 0; y < out.height; ++y)
              std::memcpy(dst + size_t(y) * size_t(3 * out.width),
                          staged->data[0] + size_t(y) * size_t(staged->linesize[0]),
                          size_t(3 * out.width));
          }
        }
        av_frame_unref(frame);
      }
    };
    while (av_read_frame(fmt, pkt) >= 0) {
      if (pkt->stream_index == si) {
        const int rc = avcodec_send_packet(dec, pkt);
        av_packet_unref(pkt);
        OSP_AV_CHECK(rc, "sending a packet to the decoder");
        take(false);
      } else {
        av_packet_unref(pkt);
      }
    }
    take(true);
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  if (rgb) {
    *rgb = Tensor::empty({out.frames, out.height, out.width, 3}, DType::U8);
    if (!pixels.empty()) std::memcpy(rgb->data<uint8_t>(), pixels.data(), pixels.size());
  }
  return out;
}

#endif  // OSP_HAVE_FFMPEG

}  // namespace osp::io
