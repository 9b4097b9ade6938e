// Wan-VAE forward passes (wan-spec §5).  Shapes are frame-major [t, C, H, W] inside.
#include "osp/model/vae.h"

#include <algorithm>
#include <cmath>

#include "osp/ops/conv.h"
#include "osp/parallel/communicator.h"
#include "osp/ops/t5_vae_ops.h"

namespace osp::model {

WeightGetter weight_getter(io::Checkpoint ck) {
  OSP_CHECK(ck, "weight_getter: null checkpoint");
  return [ck](const std::string& n) { return ck->has(n) ? ck->get(n) : Tensor(); };
}

const std::vector<float>& vae_latent_mean() {
  static const std::vector<float> m = {-0.7571f, -0.7089f, -0.9113f, 0.1075f,  -0.1745f, 0.9653f,
                                       -0.1517f, 1.5508f,  0.4134f,  -0.0715f, 0.5517f,  -0.3632f,
                                       -0.1922f, -0.9497f, 0.2503f,  -0.2921f};
  return m;
}
const std::vector<float>& vae_latent_std() {
  static const std::vector<float> s = {2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f,
                                       2.6052f, 2.0743f, 3.2687f, 2.1526f, 2.8652f, 1.5579f,
                                       1.6382f, 1.1253f, 2.8251f, 1.9160f};
  return s;
}

namespace {

constexpr int64_t kCacheT = 2;  // frames a causal 3-tap conv remembers (the reference's CACHE_T)

// Per-call state: the feature cache of every cached conv / resample, by slot.
struct Cache {
  std::vector<Tensor> frames;
  std::vector<int> flag;
  explicit Cache(int slots) : frames(size_t(slots)), flag(size_t(slots), 0) {}
};

Tensor cat_frames(const Tensor& a, const Tensor& b) {
  Shape s = b.shape();
  s[0] = a.size(0) + b.size(0);
  Tensor out = Tensor::empty(s, DType::F32, b.device());
  Tensor head = out.slice(0, 0, a.size(0));
  head.copy_from(a);
  Tensor tail = out.slice(0, a.size(0), s[0]);
  tail.copy_from(b);
  return out;
}

Tensor last_frames(const Tensor& x, int64_t n) {
  const int64_t t = x.size(0);
  return x.slice(0, std::max<int64_t>(0, t - n), t).clone();
}

struct Conv {
  Tensor w, b;  // w [Cout, Cin, kt, kh, kw]
  ops::Conv3dArgs args;
  int slot = -1;  // >= 0: causal conv with a feature cache

  Tensor operator()(const Tensor& x) const { return ops::conv3d(x, w, &b, args); }
  // Cached causal conv (wan-spec §5.4): prev frames are prepended, the zero front pad shrinks
  // by their count, and the last 2 input frames are kept for the next chunk.
  Tensor cached(const Tensor& x, Cache& c) const {
    if (slot < 0) return (*this)(x);
    Tensor& prev = c.frames[size_t(slot)];
    const int64_t np = prev.defined() ? prev.size(0) : 0;
    Tensor in = np ? cat_frames(prev, x) : x;
    ops::Conv3dArgs a = args;
    a.pad_front = int(std::max<int64_t>(0, args.pad_front - np));
    Tensor y = ops::conv3d(in, w, &b, a);
    prev = last_frames(in, kCacheT);
    return y;
  }
};

Tensor norm(const Tensor& x, const Tensor& gamma, bool silu) {
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  ops::channel_rms_norm(x, gamma, silu, out);
  return out;
}

enum class Kind { Res, Attn, Up2d, Up3d, Down2d, Down3d };

struct Block {
  Kind kind;
  // Res: g0, c0 (3³), g1, c1 (3³), optional shortcut (1³).
  // Attn: g0 (norm), c0 = to_qkv (1×1), c1 = proj (1×1).
  // Resample: c0 = spatial conv, c1 = time conv; slot = its cache slot (3d modes).
  Tensor g0, g1;
  Conv c0, c1, shortcut;
  bool has_shortcut = false;
  int slot = -1;

  Tensor forward(const Tensor& x, Cache& c) const {
    switch (kind) {
      case Kind::Res: {
        Tensor h = has_shortcut ? shortcut(x) : x;
        Tensor r = c0.cached(norm(x, g0, true), c);
        r = c1.cached(norm(r, g1, true), c);
        ops::add_(r, h);
        return r;
      }
      case Kind::Attn: {
        const int64_t t = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
        Tensor qkv = c0(norm(x, g0, false));  // [t, 3C, H, W]
        Tensor a = Tensor::empty({t, C, H * W}, DType::F32, x.device());
        ops::spatial_attention(qkv.view({t, 3 * C, H * W}), a);
        Tensor y = c1(a.view({t, C, H, W}));
        ops::add_(y, x);
        return y;
      }
      case Kind::Up2d: return spatial_up(x);
      case Kind::Up3d: {
        Tensor y = x;
        int& f = c.flag[size_t(slot)];
        if (f == 0) {
          f = 1;  // chunk 0 ('Rep'): no temporal doubling of the first frame
        } else {
          if (f == 1) {  // chunk 1: zero front padding (frame 0 is not temporal context)
            c.frames[size_t(slot)] =
                Tensor::zeros({kCacheT, x.size(1), x.size(2), x.size(3)}, DType::F32, x.device());
            f = 2;
          }
          Tensor& prev = c.frames[size_t(slot)];
          Tensor in = cat_frames(prev, x);
          Tensor tc = c1(in);  // [t, 2C, H, W]; pad_front 0 since prev has 2 frames
          prev = last_frames(in, kCacheT);
          // channels [0, C) → frame 2i, [C, 2C) → frame 2i+1: a reshape in frame-major layout.
          y = tc.view({2 * x.size(0), x.size(1), x.size(2), x.size(3)});
        }
        return spatial_up(y);
      }
      case Kind::Down2d: return c0(x);
      case Kind::Down3d: {
        Tensor y = c0(x);
        int& f = c.flag[size_t(slot)];
        Tensor& prev = c.frames[size_t(slot)];
        if (f == 0) {  // first chunk: no temporal conv, remember the last frame
          f = 1;
          prev = last_frames(y, 1);
          return y;
        }
        Tensor out = c1(cat_frames(prev, y));  // stride-2 time conv, no padding
        prev = last_frames(y, 1);
        return out;
      }
    }
    fail("vae: unknown block kind");
  }

  Tensor spatial_up(const Tensor& x) const {
    Tensor u = Tensor::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, DType::F32,
                             x.device());
    ops::upsample_nearest2x(x, u);
    return c0(u);
  }
};

struct Stack {  // Encoder3d / Decoder3d
  Conv conv_in;
  std::vector<Block> blocks;  // downsamples/upsamples, then middle (3 blocks)
  Tensor head_gamma;
  Conv head_conv;

  Tensor forward(const Tensor& x, Cache& c) const {
    Tensor h = conv_in.cached(x, c);
    for (const Block& b : blocks) h = b.forward(h, c);
    return head_conv.cached(norm(h, head_gamma, true), c);
  }
};

class Binder {
 public:
  Binder(const WeightGetter& get, Device dev, std::string prefix)
      : get_(get), dev_(dev), prefix_(std::move(prefix)) {}

  Tensor raw(const std::string& name) const {
    Tensor t = get_(prefix_ + name);
    OSP_CHECK(t.defined(), "VAE checkpoint: tensor '", prefix_ + name,
              "' is missing (is this a Wan2.1 VAE file with original names?)");
    return t;
  }
  Tensor load(const std::string& name, const Shape& shape) const {
    if (record_) {  // shape listing: no weights, just names and shapes
      record_->emplace_back(name, shape);
      return Tensor::empty(shape, DType::F32);
    }
    Tensor t = raw(name);
    OSP_CHECK(t.shape() == shape, "VAE checkpoint: tensor '", prefix_ + name, "' has shape ",
              shape_str(t.shape()), ", expected ", shape_str(shape),
              " (the VAE config does not match the file)");
    OSP_CHECK(dtype_is_float(t.dtype()), "VAE checkpoint: tensor '", prefix_ + name,
              "' has dtype ", dtype_name(t.dtype()), ", expected a float type");
    return t.contiguous().to(DType::F32).to(dev_).contiguous();
  }
  Tensor gamma(const std::string& name, int64_t C, bool images) const {
    Shape s = images ? Shape{C, 1, 1} : Shape{C, 1, 1, 1};
    return load(name, s).view({C});
  }
  // Conv3d k×k×k (k = 1 or 3) with CausalConv3d padding.
  Conv conv3(const std::string& name, int64_t cin, int64_t cout, int k, int& slots) const {
    Conv c;
    c.w = load(name + ".weight", {cout, cin, k, k, k});
    c.b = load(name + ".bias", {cout});
    const int p = k / 2;
    c.args = ops::Conv3dArgs::same_causal(p, p, p);
    if (k == 3) c.slot = slots++;
    return c;
  }
  // Conv2d k×k stored [Cout, Cin, k, k] → a kt = 1 conv3d.
  Conv conv2(const std::string& name, int64_t cin, int64_t cout, int k) const {
    Conv c;
    c.w = load(name + ".weight", {cout, cin, k, k}).view({cout, cin, 1, k, k});
    c.b = load(name + ".bias", {cout});
    return c;
  }

  Block res(const std::string& name, int64_t in, int64_t out, int& slots) const {
    Block b;
    b.kind = Kind::Res;
    b.g0 = gamma(name + ".residual.0.gamma", in, false);
    b.c0 = conv3(name + ".residual.2", in, out, 3, slots);
    b.g1 = gamma(name + ".residual.3.gamma", out, false);
    b.c1 = conv3(name + ".residual.6", out, out, 3, slots);
    if (in != out) {
      b.has_shortcut = true;
      b.shortcut = conv3(name + ".shortcut", in, out, 1, slots);
    }
    return b;
  }
  Block attn(const std::string& name, int64_t C) const {
    Block b;
    b.kind = Kind::Attn;
    b.g0 = gamma(name + ".norm.gamma", C, true);
    b.c0 = conv2(name + ".to_qkv", C, 3 * C, 1);
    b.c1 = conv2(name + ".proj", C, C, 1);
    return b;
  }
  Block resample(const std::string& name, int64_t C, Kind kind, int& slots) const {
    Block b;
    b.kind = kind;
    if (kind == Kind::Up2d || kind == Kind::Up3d) {
      b.c0 = conv2(name + ".resample.1", C, C / 2, 3);
      b.c0.args.pad_top = b.c0.args.pad_bottom = b.c0.args.pad_left = b.c0.args.pad_right = 1;
    } else {
      b.c0 = conv2(name + ".resample.1", C, C, 3);
      b.c0.args.pad_bottom = b.c0.args.pad_right = 1;  // ZeroPad2d(0, 1, 0, 1)
      b.c0.args.stride_h = b.c0.args.stride_w = 2;
    }
    if (kind == Kind::Up3d) {
      b.c1.w = load(name + ".time_conv.weight", {2 * C, C, 3, 1, 1});
      b.c1.b = load(name + ".time_conv.bias", {2 * C});
      b.slot = slots++;
    } else if (kind == Kind::Down3d) {
      b.c1.w = load(name + ".time_conv.weight", {C, C, 3, 1, 1});
      b.c1.b = load(name + ".time_conv.bias", {C});
      b.c1.args.stride_t = 2;
      b.slot = slots++;
    }
    return b;
  }

 public:
  std::vector<std::pair<std::string, Shape>>* record_ = nullptr;

 private:
  WeightGetter get_;
  Device dev_;
  std::string prefix_;
};

// Host-side helpers (small tensors or final pixels).
// Always a fresh host copy (callers modify it in place).
Tensor to_frame_major(const Tensor& x) { return x.to(Device::cpu()).permute({1, 0, 2, 3}).clone(); }

}  // namespace

struct WanVae::Impl {
  VaeConfig cfg;
  Device dev;
  Stack decoder, encoder;
  Conv conv1, conv2;  // encoder-side 1³ (2z→2z), decoder-side 1³ (z→z)
  int dec_slots = 0, enc_slots = 0;

  Tensor decode_untiled(const Tensor& zraw_fm, const std::function<void()>& after_chunk = {}) const;
};

namespace {
std::shared_ptr<WanVae::Impl> build_vae(const Binder& B, VaeConfig cfg, Device dev);
}

std::vector<std::pair<std::string, Shape>> vae_tensor_shapes(const VaeConfig& cfg) {
  std::vector<std::pair<std::string, Shape>> out;
  Binder B([](const std::string&) { return Tensor(); }, Device::cpu(), "");
  B.record_ = &out;
  build_vae(B, cfg, Device::cpu());
  return out;
}

WanVae WanVae::load(const WeightGetter& get, Device dev, VaeConfig cfg, const std::string& prefix) {
  OSP_CHECK(get, "WanVae::load: no weight getter given");
  Binder B(get, dev, prefix);
  // Channel widths from the checkpoint.
  const Tensor head = B.raw("decoder.head.2.weight");
  OSP_CHECK(head.dim() == 5 && head.size(0) == 3,
            "VAE checkpoint: decoder.head.2.weight must be [3, dim, 3, 3, 3], got ",
            shape_str(head.shape()));
  OSP_CHECK(head.size(1) % cfg.dim_mult[0] == 0, "VAE checkpoint: head width ", head.size(1),
            " is not a multiple of dim_mult[0]");
  cfg.dim = int(head.size(1) / cfg.dim_mult[0]);
  const Tensor c2 = B.raw("conv2.weight");
  OSP_CHECK(c2.dim() == 5, "VAE checkpoint: conv2.weight must be 5-D, got ", shape_str(c2.shape()));
  cfg.z_dim = int(c2.size(0));
  WanVae v;
  v.impl_ = build_vae(B, cfg, dev);
  return v;
}

namespace {
std::shared_ptr<WanVae::Impl> build_vae(const Binder& B, VaeConfig cfg, Device dev) {
  OSP_CHECK(cfg.dim_mult.size() >= 2 && cfg.temporal_downsample.size() == cfg.dim_mult.size() - 1,
            "VaeConfig: dim_mult needs >= 2 entries and temporal_downsample one fewer");
  auto impl = std::make_shared<WanVae::Impl>();
  impl->cfg = cfg;
  impl->dev = dev;
  const int nm = int(cfg.dim_mult.size());
  int slots = 0;

  // ---- decoder (Decoder3d): dims = dim·[mult[-1], mult reversed...]
  {
    std::vector<int64_t> dims{int64_t(cfg.dim) * cfg.dim_mult.back()};
    for (int i = nm - 1; i >= 0; --i) dims.push_back(int64_t(cfg.dim) * cfg.dim_mult[size_t(i)]);
    Stack& D = impl->decoder;
    D.conv_in = B.conv3("decoder.conv1", cfg.z_dim, dims[0], 3, slots);
    std::vector<Block> middle = {B.res("decoder.middle.0", dims[0], dims[0], slots),
                                 B.attn("decoder.middle.1", dims[0]),
                                 B.res("decoder.middle.2", dims[0], dims[0], slots)};
    D.blocks = middle;  // the decoder runs middle first, then upsamples
    int idx = 0;
    int64_t out = dims[0];
    for (int i = 0; i + 1 < int(dims.size()); ++i) {
      int64_t in = dims[size_t(i)];
      out = dims[size_t(i) + 1];
      if (i == 1 || i == 2 || i == 3) in /= 2;  // the previous upsample halved the channels
      for (int r = 0; r < cfg.num_res_blocks + 1; ++r) {
        D.blocks.push_back(B.res(str("decoder.upsamples.", idx++), in, out, slots));
        in = out;
      }
      if (i != nm - 1) {
        const bool t_up = cfg.temporal_downsample[size_t(nm - 2 - i)];
        D.blocks.push_back(B.resample(str("decoder.upsamples.", idx++), out,
                                      t_up ? Kind::Up3d : Kind::Up2d, slots));
      }
    }
    D.head_gamma = B.gamma("decoder.head.0.gamma", out, false);
    D.head_conv = B.conv3("decoder.head.2", out, 3, 3, slots);
    impl->conv2 = B.conv3("conv2", cfg.z_dim, cfg.z_dim, 1, slots);
    impl->dec_slots = slots;
  }

  // ---- encoder (Encoder3d): dims = dim·[1, mult...]
  if (cfg.has_encoder) {
    slots = 0;
    std::vector<int64_t> dims{int64_t(cfg.dim)};
    for (int m : cfg.dim_mult) dims.push_back(int64_t(cfg.dim) * m);
    Stack& E = impl->encoder;
    E.conv_in = B.conv3("encoder.conv1", 3, dims[0], 3, slots);
    int idx = 0;
    int64_t out = dims[0];
    for (int i = 0; i + 1 < int(dims.size()); ++i) {
      int64_t in = dims[size_t(i)];
      out = dims[size_t(i) + 1];
      for (int r = 0; r < cfg.num_res_blocks; ++r) {
        E.blocks.push_back(B.res(str("encoder.downsamples.", idx++), in, out, slots));
        in = out;
      }
      if (i != nm - 1) {
        const bool t_down = cfg.temporal_downsample[size_t(i)];
        E.blocks.push_back(B.resample(str("encoder.downsamples.", idx++), out,
                                      t_down ? Kind::Down3d : Kind::Down2d, slots));
      }
    }
    E.blocks.push_back(B.res("encoder.middle.0", out, out, slots));
    E.blocks.push_back(B.attn("encoder.middle.1", out));
    E.blocks.push_back(B.res("encoder.middle.2", out, out, slots));
    E.head_gamma = B.gamma("encoder.head.0.gamma", out, false);
    E.head_conv = B.conv3("encoder.head.2", out, 2 * cfg.z_dim, 3, slots);
    impl->conv1 = B.conv3("conv1", 2 * cfg.z_dim, 2 * cfg.z_dim, 1, slots);
    impl->enc_slots = slots;
  }
  return impl;
}
}  // namespace

const VaeConfig& WanVae::config() const { return impl_->cfg; }
Device WanVae::device() const { return impl_->dev; }

// Decodes a de-normalised frame-major latent [T, z, h, w] (host) chunk by chunk into a host
// frame-major video [1 + 4(T-1), 3, 8h, 8w]; every chunk's frames leave the device at once.
Tensor WanVae::Impl::decode_untiled(const Tensor& zraw_fm, const std::function<void()>& after_chunk) const {
  const int64_t T = zraw_fm.size(0), h = zraw_fm.size(2), w = zraw_fm.size(3);
  const int64_t Ho = 8 * h, Wo = 8 * w;
  Tensor video = Tensor::empty({1 + 4 * (T - 1), 3, Ho, Wo}, DType::F32);
  Tensor x = conv2(zraw_fm.to(dev));  // [T, z, h, w]
  Cache cache(dec_slots);
  int64_t f0 = 0;
  for (int64_t i = 0; i < T; ++i) {
    Tensor y = decoder.forward(x.slice(0, i, i + 1), cache);  // [f, 3, Ho, Wo]
    const int64_t f = y.size(0);
    OSP_CHECK(f0 + f <= video.size(0) && y.size(1) == 3 && y.size(2) == Ho && y.size(3) == Wo,
              "vae decode: unexpected chunk shape ", y.desc());
    Tensor dst = video.slice(0, f0, f0 + f);
    dst.copy_from(y);
    f0 += f;
    if (after_chunk) after_chunk();
  }
  OSP_CHECK(f0 == video.size(0), "vae decode: produced ", f0, " frames, expected ", video.size(0));
  return video;
}

namespace {
// Tile starts along one axis: tiles of `tile` with at least `overlap` shared, covering [0, n).
std::vector<int64_t> tile_starts(int64_t n, int64_t tile, int64_t overlap) {
  if (tile <= 0 || tile >= n) return {0};
  std::vector<int64_t> s;
  const int64_t stride = std::max<int64_t>(1, tile - overlap);
  const int64_t count = 1 + (n - tile + stride - 1) / stride;
  for (int64_t i = 0; i < count; ++i) s.push_back(count == 1 ? 0 : (n - tile) * i / (count - 1));
  return s;
}
// Blend ramp (output pixels) of a tile [a, a+len) along an axis of n pixels whose neighbours
// start/end at prev_end / next_start: linear over the overlap, 1 elsewhere, never 0.
std::vector<float> ramp(int64_t a, int64_t len, int64_t prev_end, int64_t next_start) {
  std::vector<float> r(size_t(len), 1.f);
  for (int64_t i = 0; i < len; ++i) {
    const int64_t p = a + i;
    if (p < prev_end) {  // overlap with the previous tile: rises
      const int64_t o = prev_end - a;
      r[size_t(i)] = std::min(r[size_t(i)], float(p - a + 1) / float(o + 1));
    }
    if (p >= next_start) {  // overlap with the next tile: falls
      const int64_t o = a + len - next_start;
      r[size_t(i)] = std::min(r[size_t(i)], float(a + len - p) / float(o + 1));
    }
  }
  return r;
}

// The tiles of a decode and the ones this rank decodes (DecodeOptions::comm).
struct TileDeal {
  std::vector<int64_t> ys, xs;  // tile starts (latent pixels) along h and w
  int ranks = 1, rank = 0;
  bool spread = false;  // dealt out over the ranks (R > 1 and more than one tile)
  int64_t count() const { return int64_t(ys.size() * xs.size()); }
  bool mine(int64_t k) const { return !spread || k % ranks == rank; }  // k: row-major tile index
  int64_t count_mine() const { return spread ? (count() - rank + ranks - 1) / ranks : count(); }
};

TileDeal deal_tiles(int64_t h, int64_t w, const DecodeOptions& opt) {
  TileDeal d;
  d.ys = tile_starts(h, opt.tile_h, opt.overlap);
  d.xs = tile_starts(w, opt.tile_w, opt.overlap);
  if (opt.comm) d.ranks = opt.comm->size(), d.rank = opt.comm->rank();
  d.spread = d.ranks > 1 && d.count() > 1;
  return d;
}
}  // namespace

Tensor blend_tiles(int64_t h, int64_t w, const DecodeOptions& opt,
                   const std::function<Tensor(int64_t, int64_t, int64_t, int64_t)>& decode_tile) {
  OSP_CHECK(h >= 1 && w >= 1 && opt.overlap >= 0 && opt.tile_h >= 0 && opt.tile_w >= 0,
            "blend_tiles: bad sizes (latent ", h, "x", w, ", tile ", opt.tile_h, "x", opt.tile_w,
            ", overlap ", opt.overlap, ")");
  OSP_CHECK((opt.tile_h == 0 || opt.tile_h >= h || opt.tile_h > opt.overlap) &&
                (opt.tile_w == 0 || opt.tile_w >= w || opt.tile_w > opt.overlap),
            "blend_tiles: tiles (", opt.tile_h, "x", opt.tile_w, ") must be larger than the overlap ",
            opt.overlap);
  const TileDeal deal = deal_tiles(h, w, opt);
  const std::vector<int64_t>& ys = deal.ys;
  const std::vector<int64_t>& xs = deal.xs;
  if (ys.size() == 1 && xs.size() == 1) return decode_tile(0, 0, h, w);
  const int64_t th = ys.size() == 1 ? h : opt.tile_h, tw = xs.size() == 1 ? w : opt.tile_w;
  const int64_t H = 8 * h, W = 8 * w;
  Tensor video;
  std::vector<float> wsum(size_t(H * W), 0.f);
  int64_t k = -1;  // row-major tile index
  for (size_t iy = 0; iy < ys.size(); ++iy)
    for (size_t ix = 0; ix < xs.size(); ++ix) {
      const int64_t y0 = ys[iy], x0 = xs[ix];
      const auto ry = ramp(8 * y0, 8 * th, iy ? 8 * (ys[iy - 1] + th) : 0,
                           iy + 1 < ys.size() ? 8 * ys[iy + 1] : H);
      const auto rx = ramp(8 * x0, 8 * tw, ix ? 8 * (xs[ix - 1] + tw) : 0,
                           ix + 1 < xs.size() ? 8 * xs[ix + 1] : W);
      const int64_t Ht = 8 * th, Wt = 8 * tw;
      for (int64_t yy = 0; yy < Ht; ++yy)  // every rank: the weights of every tile
        for (int64_t xx = 0; xx < Wt; ++xx)
          wsum[size_t((8 * y0 + yy) * W + 8 * x0 + xx)] += ry[size_t(yy)] * rx[size_t(xx)];
      if (!deal.mine(++k)) continue;
      Tensor t = decode_tile(y0, x0, th, tw).contiguous();  // [F, C, 8th, 8tw]
      OSP_CHECK(t.dim() == 4 && t.size(2) == 8 * th && t.size(3) == 8 * tw && t.dtype() == DType::F32,
                "blend_tiles: tile decoder returned ", t.desc(), ", expected [F, C, ", 8 * th, ", ",
                8 * tw, "] F32");
      if (!video.defined()) video = Tensor::zeros({t.size(0), t.size(1), H, W}, DType::F32);
      OSP_CHECK(t.size(0) == video.size(0) && t.size(1) == video.size(1),
                "blend_tiles: tiles disagree on frames/channels");
      const int64_t FC = t.size(0) * t.size(1);
      const float* src = t.data<float>();
      float* dst = video.data<float>();
#pragma omp parallel for schedule(static) if (FC * Ht * Wt > (1 << 16))
      for (int64_t r = 0; r < FC * Ht; ++r) {
        const int64_t fc = r / Ht, yy = r % Ht;
        const float a = ry[size_t(yy)];
        const float* s = src + r * Wt;
        float* d = dst + (fc * H + 8 * y0 + yy) * W + 8 * x0;
        for (int64_t xx = 0; xx < Wt; ++xx) d[xx] += a * rx[size_t(xx)] * s[xx];
      }
    }
  if (deal.spread) {  // sum the ranks' parts; rank 0 (tile 0) says their shape to ranks without a tile
    const Device cd = opt.comm->device();
    Tensor fc = Tensor::from_vector({video.defined() ? float(video.size(0)) : 0.f,
                                     video.defined() ? float(video.size(1)) : 0.f}, {2});
    Tensor fcd = fc.to(cd);
    opt.comm->broadcast(fcd, 0);
    fc = fcd.to(Device::cpu());
    if (!video.defined())
      video = Tensor::zeros({int64_t(fc.data<float>()[0]), int64_t(fc.data<float>()[1]), H, W}, DType::F32);
    Tensor part = cd.is_cpu() ? video : video.to(cd);
    opt.comm->all_reduce(part);
    if (!cd.is_cpu()) video = part.to(Device::cpu());
  }
  float* p = video.data<float>();
  const int64_t FC = video.size(0) * video.size(1);
#pragma omp parallel for schedule(static) if (FC * H * W > (1 << 16))
  for (int64_t fc = 0; fc < FC; ++fc)
    for (int64_t i = 0; i < H * W; ++i) p[fc * H * W + i] /= wsum[size_t(i)];
  return video;
}

Tensor WanVae::decode(const Tensor& z, const DecodeOptions& opt) const {
  const int64_t zd = impl_->cfg.z_dim;
  OSP_CHECK(z.dim() == 4 && z.size(0) == zd, "WanVae::decode: latent must be [", zd,
            ", T, h, w], got ", z.desc());
  OSP_CHECK(z.dtype() == DType::F32, "WanVae::decode: latent must be F32, got ", z.desc());
  OSP_CHECK(z.size(1) >= 1 && z.size(2) >= 1 && z.size(3) >= 1, "WanVae::decode: empty latent ",
            z.desc());
  OSP_CHECK(zd == 16, "WanVae::decode: the latent statistics are for z_dim 16, model has ", zd);
  OSP_CHECK(opt.overlap >= 0, "WanVae::decode: overlap must be >= 0");
  const int64_t T = z.size(1), h = z.size(2), w = z.size(3);
  // z_raw = z / (1/std) + mean, per channel (the reference divides by the stored inverse).
  Tensor zr = to_frame_major(z);  // [T, 16, h, w] host
  {
    float* p = zr.data<float>();
    const auto& m = vae_latent_mean();
    const auto& s = vae_latent_std();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < zd; ++c) {
        const float inv = 1.0f / s[size_t(c)];
        float* q = p + (t * zd + c) * h * w;
        for (int64_t i = 0; i < h * w; ++i) q[i] = q[i] / inv + m[size_t(c)];
      }
  }
  const int64_t total = T * deal_tiles(h, w, opt).count_mine();
  int64_t done = 0;
  if (opt.on_chunk) opt.on_chunk(0, total);
  const std::function<void()> after_chunk = [&] {
    if (opt.on_chunk) opt.on_chunk(++done, total);
  };
  Tensor video = blend_tiles(h, w, opt, [&](int64_t y0, int64_t x0, int64_t th, int64_t tw) {
    return impl_->decode_untiled(zr.slice(2, y0, y0 + th).slice(3, x0, x0 + tw).contiguous(), after_chunk);
  });
  if (opt.clamp) {
    float* p = video.data<float>();
    const int64_t n = video.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) p[i] = std::clamp(p[i], -1.f, 1.f);
  }
  return video.permute({1, 0, 2, 3}).contiguous();  // [3, F, H, W]
}

Tensor WanVae::encode(const Tensor& video) const {
  OSP_CHECK(impl_->cfg.has_encoder, "WanVae::encode: the model was loaded without its encoder");
  OSP_CHECK(video.dim() == 4 && video.size(0) == 3, "WanVae::encode: video must be [3, F, H, W], got ",
            video.desc());
  OSP_CHECK(video.dtype() == DType::F32, "WanVae::encode: video must be F32, got ", video.desc());
  const int64_t F = video.size(1), H = video.size(2), W = video.size(3);
  OSP_CHECK(F >= 1 && (F - 1) % 4 == 0, "WanVae::encode: frame count ", F,
            " must be 1 + 4k (e.g. 81)");
  OSP_CHECK(H % 8 == 0 && W % 8 == 0 && H > 0 && W > 0, "WanVae::encode: size ", H, "x", W,
            " must be multiples of 8");
  const Impl& I = *impl_;
  const int64_t zd = I.cfg.z_dim;
  Tensor v = to_frame_major(video).to(I.dev);  // [F, 3, H, W]
  Cache cache(I.enc_slots);
  const int64_t n_chunks = 1 + (F - 1) / 4;
  std::vector<Tensor> outs;
  int64_t Tl = 0;
  for (int64_t i = 0; i < n_chunks; ++i) {
    const int64_t a = i == 0 ? 0 : 1 + 4 * (i - 1), b = i == 0 ? 1 : 1 + 4 * i;
    outs.push_back(I.encoder.forward(v.slice(0, a, b).contiguous(), cache));
    Tl += outs.back().size(0);
  }
  Tensor enc = Tensor::empty({Tl, 2 * zd, H / 8, W / 8}, DType::F32, I.dev);
  for (int64_t t = 0, i = 0; i < int64_t(outs.size()); ++i) {
    Tensor dst = enc.slice(0, t, t + outs[size_t(i)].size(0));
    dst.copy_from(outs[size_t(i)]);
    t += outs[size_t(i)].size(0);
  }
  Tensor mu = I.conv1(enc).to(Device::cpu()).slice(1, 0, zd).contiguous();  // [Tl, z, h, w]
  {
    float* p = mu.data<float>();
    const int64_t hw = (H / 8) * (W / 8);
    const auto& m = vae_latent_mean();
    const auto& s = vae_latent_std();
    for (int64_t t = 0; t < Tl; ++t)
      for (int64_t c = 0; c < zd; ++c) {
        const float inv = 1.0f / s[size_t(c)];
        float* q = p + (t * zd + c) * hw;
        for (int64_t i = 0; i < hw; ++i) q[i] = (q[i] - m[size_t(c)]) * inv;
      }
  }
  return mu.permute({1, 0, 2, 3}).contiguous();  // [z, Tl, h, w]
}

size_t decode_memory_estimate(int64_t latent_h, int64_t latent_w, int dim) {
  // Full-resolution stage dominates: a 4-frame chunk at `dim` channels is alive in ~6 tensors
  // (input, normed, cache-concatenated, conv out, shortcut, sum) plus 7 cached convs × 2 frames,
  // ≈ (6·4 + 14)·dim floats per output pixel, and the lower-resolution stages add about half.
  const double per_px = 1.5 * (6.0 * 4 + 14) * dim * 4.0;
  return size_t(per_px * double(latent_h * 8) * double(latent_w * 8)) + (size_t(256) << 20);
}

DecodeOptions tiles_for_budget(int64_t latent_h, int64_t latent_w, size_t budget_bytes,
                               int64_t overlap) {
  DecodeOptions o;
  o.overlap = overlap;
  if (decode_memory_estimate(latent_h, latent_w) <= budget_bytes) return o;
  // Square-ish tiles: shrink the longer side first until one tile fits.
  int64_t th = latent_h, tw = latent_w;
  while (decode_memory_estimate(th, tw) > budget_bytes && (th > 2 * overlap + 1 || tw > 2 * overlap + 1)) {
    if (tw >= th) tw = std::max<int64_t>(2 * overlap + 1, tw * 3 / 4);
    else th = std::max<int64_t>(2 * overlap + 1, th * 3 / 4);
  }
  o.tile_h = th < latent_h ? th : 0;
  o.tile_w = tw < latent_w ? tw : 0;
  return o;
}

}  // namespace osp::model
