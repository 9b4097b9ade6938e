// Trainable Wan-VAE: whole-clip forward with a tape, and its backward (see vae_train.h).
// Activations are frame-major [t, C, H, W] (ops/conv.h), as in model/vae.cpp.
#include "osp/model/vae_train.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "osp/core/philox.h"
#include "osp/ops/conv.h"
#include "osp/ops/t5_vae_ops.h"
#include "osp/ops/vae_backward.h"

namespace osp::model {

VaeConfig small_vae_config(int dim, int num_res_blocks) {
  VaeConfig c;
  c.dim = dim;
  c.z_dim = 16;
  c.dim_mult = {1, 2, 4, 4};
  c.num_res_blocks = num_res_blocks;
  c.temporal_downsample = {false, true, true};
  c.has_encoder = true;
  return c;
}

namespace {

struct Param {
  std::string name;
  Shape ckpt_shape;
  Tensor value, grad;  // value in the compute shape (a view-compatible reshape of ckpt_shape)
};

struct Conv {
  Param* w = nullptr;
  Param* b = nullptr;
  ops::Conv3dArgs args;

  Tensor fwd(const Tensor& x) const { return ops::conv3d(x, w->value, &b->value, args); }
  // dy → dx (null: not wanted); weight and bias grads accumulate.
  void bwd(const Tensor& x, const Tensor& dy, Tensor* dx) const {
    ops::conv3d_backward(x, w->value, dy, args, dx, &w->grad, &b->grad);
  }
  Tensor bwd(const Tensor& x, const Tensor& dy) const {
    Tensor dx = Tensor::empty(x.shape(), DType::F32, x.device());
    bwd(x, dy, &dx);
    return dx;
  }
};

Tensor norm_fwd(const Tensor& x, const Param* g, bool silu) {
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  ops::channel_rms_norm(x, g->value, silu, out);
  return out;
}
Tensor norm_bwd(const Tensor& x, Param* g, bool silu, const Tensor& dy) {
  Tensor dx = Tensor::empty(x.shape(), DType::F32, x.device());
  ops::channel_rms_norm_backward(x, g->value, silu, dy, dx, &g->grad);
  return dx;
}

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

Tensor upsample(const Tensor& x) {
  Tensor u = Tensor::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, DType::F32,
                           x.device());
  ops::upsample_nearest2x(x, u);
  return u;
}

enum class Kind { Res, Attn, Up2d, Up3d, Down2d, Down3d };

// What one block's backward needs (meaning by kind; see Block::forward).
struct BlockTape {
  Tensor x, a, b, c;
};

struct Block {
  Kind kind;
  Param *g0 = nullptr, *g1 = nullptr;
  Conv c0, c1, shortcut;
  bool has_shortcut = false;

  Tensor forward(const Tensor& x, BlockTape* tp) const {
    switch (kind) {
      case Kind::Res: {  // out = c1(silu(norm(c0(silu(norm(x)))))) + shortcut(x)
        Tensor n0 = norm_fwd(x, g0, true);
        Tensor r0 = c0.fwd(n0);
        Tensor n1 = norm_fwd(r0, g1, true);
        Tensor out = c1.fwd(n1);
        if (has_shortcut)
          ops::add_(out, shortcut.fwd(x));
        else
          ops::add_(out, x);
        if (tp) *tp = {x, n0, r0, n1};
        return out;
      }
      case Kind::Attn: {  // out = proj(attn(to_qkv(norm(x)))) + x, per frame
        const int64_t t = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
        Tensor xn = norm_fwd(x, g0, false);
        Tensor qkv = c0.fwd(xn);  // [t, 3C, H, W]
        Tensor a = Tensor::empty({t, C, H * W}, DType::F32, x.device());
        ops::spatial_attention(qkv.view({t, 3 * C, H * W}), a);
        Tensor out = c1.fwd(a.view({t, C, H, W}));
        ops::add_(out, x);
        if (tp) *tp = {x, xn, qkv, a};
        return out;
      }
      case Kind::Up2d: {
        Tensor u = upsample(x);
        if (tp) *tp = {x, u, {}, {}};
        return c0.fwd(u);
      }
      case Kind::Up3d: {  // [X_0] ++ frames of time_conv(X_1..) (channel halves), then ×2 + conv
        const int64_t T = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
        Tensor y = x;
        if (T > 1) {
          Tensor tc = c1.fwd(x.slice(0, 1, T));  // [T-1, 2C, H, W], 2 zero frames in front
          y = cat_frames(x.slice(0, 0, 1), tc.view({2 * (T - 1), C, H, W}));
        }
        Tensor u = upsample(y);
        if (tp) *tp = {x, u, {}, {}};
        return c0.fwd(u);
      }
      case Kind::Down2d: {
        if (tp) *tp = {x, {}, {}, {}};
        return c0.fwd(x);
      }
      case Kind::Down3d: {  // y = conv2d stride 2; out = [y_0] ++ time_conv_stride2(y)
        Tensor y = c0.fwd(x);
        if (tp) *tp = {x, y, {}, {}};
        const int64_t T = y.size(0);
        OSP_CHECK(T % 2 == 1, "vae_train: downsample3d needs an odd frame count, got ", T,
                  " (the clip must have 1 + 4k frames)");
        if (T == 1) return y;
        return cat_frames(y.slice(0, 0, 1), c1.fwd(y));
      }
    }
    fail("vae_train: unknown block kind");
  }

  // dout → dx, consuming the tape; parameter grads accumulate.
  Tensor backward(BlockTape& tp, const Tensor& dout) const {
    switch (kind) {
      case Kind::Res: {
        Tensor dn1 = c1.bwd(tp.c, dout);
        tp.c = {};
        Tensor dr0 = norm_bwd(tp.b, g1, true, dn1);
        tp.b = {};
        Tensor dn0 = c0.bwd(tp.a, dr0);
        tp.a = {};
        Tensor dx = norm_bwd(tp.x, g0, true, dn0);
        if (has_shortcut)
          ops::add_(dx, shortcut.bwd(tp.x, dout));
        else
          ops::add_(dx, dout);
        tp.x = {};
        return dx;
      }
      case Kind::Attn: {
        const Tensor& x = tp.x;
        const int64_t t = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
        Tensor da = c1.bwd(tp.c.view({t, C, H, W}), dout);  // [t, C, H, W]
        Tensor dqkv = Tensor::empty({t, 3 * C, H * W}, DType::F32, x.device());
        ops::spatial_attention_backward(tp.b.view({t, 3 * C, H * W}), da.view({t, C, H * W}), dqkv);
        Tensor dxn = c0.bwd(tp.a, dqkv.view({t, 3 * C, H, W}));
        Tensor dx = norm_bwd(x, g0, false, dxn);
        ops::add_(dx, dout);
        tp = {};
        return dx;
      }
      case Kind::Up2d: {
        Tensor du = c0.bwd(tp.a, dout);
        Tensor dx = Tensor::empty(tp.x.shape(), DType::F32, dout.device());
        ops::upsample_nearest2x_backward(du, dx);
        tp = {};
        return dx;
      }
      case Kind::Up3d: {
        const Tensor& x = tp.x;
        const int64_t T = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
        Tensor du = c0.bwd(tp.a, dout);
        Tensor dy = Tensor::empty({1 + 2 * (T - 1), C, H, W}, DType::F32, dout.device());
        ops::upsample_nearest2x_backward(du, dy);
        if (T == 1) {
          tp = {};
          return dy;
        }
        Tensor dx = Tensor::empty(x.shape(), DType::F32, dout.device());
        Tensor dx0 = dx.slice(0, 0, 1), dxt = dx.slice(0, 1, T);
        dx0.copy_from(dy.slice(0, 0, 1));
        c1.bwd(x.slice(0, 1, T), dy.slice(0, 1, 1 + 2 * (T - 1)).view({T - 1, 2 * C, H, W}), &dxt);
        tp = {};
        return dx;
      }
      case Kind::Down2d: {
        Tensor dx = c0.bwd(tp.x, dout);
        tp = {};
        return dx;
      }
      case Kind::Down3d: {
        const Tensor& y = tp.a;
        const int64_t T = y.size(0);
        Tensor dy;
        if (T == 1) {
          dy = dout;
        } else {
          dy = c1.bwd(y, dout.slice(0, 1, dout.size(0)));
          Tensor dy0 = dy.slice(0, 0, 1);
          ops::add_(dy0, dout.slice(0, 0, 1));
        }
        Tensor dx = c0.bwd(tp.x, dy);
        tp = {};
        return dx;
      }
    }
    fail("vae_train: unknown block kind");
  }
};

struct StackTape {
  std::vector<BlockTape> blocks;
  Tensor x, h, n;  // stack input, head input, head norm output
};

struct Stack {  // Encoder3d / Decoder3d
  Conv conv_in;
  std::vector<Block> blocks;
  Param* head_gamma = nullptr;
  Conv head_conv;

  Tensor forward(const Tensor& x, StackTape* tp) const {
    if (tp) {
      tp->x = x;
      tp->blocks.assign(blocks.size(), {});
    }
    Tensor h = conv_in.fwd(x);
    for (size_t i = 0; i < blocks.size(); ++i) h = blocks[i].forward(h, tp ? &tp->blocks[i] : nullptr);
    Tensor n = norm_fwd(h, head_gamma, true);
    if (tp) {
      tp->h = h;
      tp->n = n;
    }
    return head_conv.fwd(n);
  }
  // dout → dx (null: input gradient not wanted).
  void backward(StackTape& tp, const Tensor& dout, Tensor* dx) const {
    Tensor dn = head_conv.bwd(tp.n, dout);
    tp.n = {};
    Tensor dh = norm_bwd(tp.h, head_gamma, true, dn);
    tp.h = {};
    for (size_t i = blocks.size(); i-- > 0;) dh = blocks[i].backward(tp.blocks[i], dh);
    conv_in.bwd(tp.x, dh, dx);
    tp = {};
  }
};

// Creates the parameters in vae.cpp's order and names (checked against vae_tensor_shapes).
class Builder {
 public:
  Builder(std::vector<std::unique_ptr<Param>>& ps, Device dev) : ps_(ps), dev_(dev) {}

  Param* param(const std::string& name, const Shape& ckpt, const Shape& compute) {
    auto p = std::make_unique<Param>();
    p->name = name;
    p->ckpt_shape = ckpt;
    p->value = Tensor::zeros(compute, DType::F32, dev_);
    p->grad = Tensor::zeros(compute, DType::F32, dev_);
    ps_.push_back(std::move(p));
    return ps_.back().get();
  }
  Param* gamma(const std::string& name, int64_t C, bool images) {
    return param(name, images ? Shape{C, 1, 1} : Shape{C, 1, 1, 1}, {C});
  }
  Conv conv3(const std::string& name, int64_t cin, int64_t cout, int k) {
    Conv c;
    c.w = param(name + ".weight", {cout, cin, k, k, k}, {cout, cin, k, k, k});
    c.b = param(name + ".bias", {cout}, {cout});
    const int p = k / 2;
    c.args = ops::Conv3dArgs::same_causal(p, p, p);
    return c;
  }
  Conv conv2(const std::string& name, int64_t cin, int64_t cout, int k) {
    Conv c;
    c.w = param(name + ".weight", {cout, cin, k, k}, {cout, cin, 1, k, k});
    c.b = param(name + ".bias", {cout}, {cout});
    return c;
  }
  Block res(const std::string& name, int64_t in, int64_t out) {
    Block b;
    b.kind = Kind::Res;
    b.g0 = gamma(name + ".residual.0.gamma", in, false);
    b.c0 = conv3(name + ".residual.2", in, out, 3);
    b.g1 = gamma(name + ".residual.3.gamma", out, false);
    b.c1 = conv3(name + ".residual.6", out, out, 3);
    if (in != out) {
      b.has_shortcut = true;
      b.shortcut = conv3(name + ".shortcut", in, out, 1);
    }
    return b;
  }
  Block attn(const std::string& name, int64_t C) {
    Block b;
    b.kind = Kind::Attn;
    b.g0 = gamma(name + ".norm.gamma", C, true);
    b.c0 = conv2(name + ".to_qkv", C, 3 * C, 1);
    b.c1 = conv2(name + ".proj", C, C, 1);
    return b;
  }
  Block resample(const std::string& name, int64_t C, Kind kind) {
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
      b.c1.w = param(name + ".time_conv.weight", {2 * C, C, 3, 1, 1}, {2 * C, C, 3, 1, 1});
      b.c1.b = param(name + ".time_conv.bias", {2 * C}, {2 * C});
      b.c1.args.pad_front = 2;  // CausalConv3d padding (1, 0, 0)
    } else if (kind == Kind::Down3d) {
      b.c1.w = param(name + ".time_conv.weight", {C, C, 3, 1, 1}, {C, C, 3, 1, 1});
      b.c1.b = param(name + ".time_conv.bias", {C}, {C});
      b.c1.args.stride_t = 2;
    }
    return b;
  }

 private:
  std::vector<std::unique_ptr<Param>>& ps_;
  Device dev_;
};

}  // namespace

struct TrainableVae::Impl {
  VaeConfig cfg;
  Device dev;
  std::vector<std::unique_ptr<Param>> ps;
  ParamTable table;
  Stack encoder, decoder;
  Conv conv1, conv2;

  void build();
  Tensor encode_fm(const Tensor& video_fm, StackTape* tp) const;  // [F,3,H,W] → [T,2z,h,w]
  Tensor decode_fm(const Tensor& z_fm, StackTape* tp, Tensor* dec_in) const;
  VaeLossStats run(const Tensor& video, const VaeLossConfig& lc, uint64_t seed, bool backward,
                   Tensor* dvideo);
};

void TrainableVae::Impl::build() {
  OSP_CHECK(cfg.has_encoder, "TrainableVae: the config must have the encoder (has_encoder)");
  OSP_CHECK(cfg.dim_mult.size() >= 2 && cfg.temporal_downsample.size() == cfg.dim_mult.size() - 1,
            "TrainableVae: dim_mult needs >= 2 entries and temporal_downsample one fewer");
  OSP_CHECK(cfg.dim >= 1 && cfg.z_dim >= 1 && cfg.num_res_blocks >= 1,
            "TrainableVae: dim, z_dim and num_res_blocks must be >= 1");
  Builder B(ps, dev);
  const int nm = int(cfg.dim_mult.size());
  {  // decoder (the order of vae.cpp's build_vae)
    std::vector<int64_t> dims{int64_t(cfg.dim) * cfg.dim_mult.back()};
    for (int i = nm - 1; i >= 0; --i) dims.push_back(int64_t(cfg.dim) * cfg.dim_mult[size_t(i)]);
    Stack& D = decoder;
    D.conv_in = B.conv3("decoder.conv1", cfg.z_dim, dims[0], 3);
    D.blocks.push_back(B.res("decoder.middle.0", dims[0], dims[0]));
    D.blocks.push_back(B.attn("decoder.middle.1", dims[0]));
    D.blocks.push_back(B.res("decoder.middle.2", dims[0], dims[0]));
    int idx = 0;
    int64_t out = dims[0];
    for (int i = 0; i + 1 < int(dims.size()); ++i) {
      int64_t in = dims[size_t(i)];
      out = dims[size_t(i) + 1];
      if (i == 1 || i == 2 || i == 3) in /= 2;  // the previous upsample halved the channels
      for (int r = 0; r < cfg.num_res_blocks + 1; ++r) {
        D.blocks.push_back(B.res(str("decoder.upsamples.", idx++), in, out));
        in = out;
      }
      if (i != nm - 1) {
        const bool t_up = cfg.temporal_downsample[size_t(nm - 2 - i)];
        D.blocks.push_back(
            B.resample(str("decoder.upsamples.", idx++), out, t_up ? Kind::Up3d : Kind::Up2d));
      }
    }
    D.head_gamma = B.gamma("decoder.head.0.gamma", out, false);
    D.head_conv = B.conv3("decoder.head.2", out, 3, 3);
    conv2 = B.conv3("conv2", cfg.z_dim, cfg.z_dim, 1);
  }
  {  // encoder
    std::vector<int64_t> dims{int64_t(cfg.dim)};
    for (int m : cfg.dim_mult) dims.push_back(int64_t(cfg.dim) * m);
    Stack& E = encoder;
    E.conv_in = B.conv3("encoder.conv1", 3, dims[0], 3);
    int idx = 0;
    int64_t out = dims[0];
    for (int i = 0; i + 1 < int(dims.size()); ++i) {
      int64_t in = dims[size_t(i)];
      out = dims[size_t(i) + 1];
      for (int r = 0; r < cfg.num_res_blocks; ++r) {
        E.blocks.push_back(B.res(str("encoder.downsamples.", idx++), in, out));
        in = out;
      }
      if (i != nm - 1) {
        const bool t_down = cfg.temporal_downsample[size_t(i)];
        E.blocks.push_back(B.resample(str("encoder.downsamples.", idx++), out,
                                      t_down ? Kind::Down3d : Kind::Down2d));
      }
    }
    E.blocks.push_back(B.res("encoder.middle.0", out, out));
    E.blocks.push_back(B.attn("encoder.middle.1", out));
    E.blocks.push_back(B.res("encoder.middle.2", out, out));
    E.head_gamma = B.gamma("encoder.head.0.gamma", out, false);
    E.head_conv = B.conv3("encoder.head.2", out, 2 * cfg.z_dim, 3);
    conv1 = B.conv3("conv1", 2 * cfg.z_dim, 2 * cfg.z_dim, 1);
  }
  // The inference model's tensor list is the contract: same names, same shapes, same order.
  const auto want = vae_tensor_shapes(cfg);
  OSP_CHECK(want.size() == ps.size(), "TrainableVae: ", ps.size(), " tensors, but the inference VAE has ",
            want.size(), " for this config");
  for (size_t i = 0; i < ps.size(); ++i)
    OSP_CHECK(want[i].first == ps[i]->name && want[i].second == ps[i]->ckpt_shape,
              "TrainableVae: tensor ", i, " is ", ps[i]->name, " ", shape_str(ps[i]->ckpt_shape),
              ", the inference VAE has ", want[i].first, " ", shape_str(want[i].second));
  table.clear();
  for (auto& p : ps) table.push_back({p->name, p->ckpt_shape, &p->value, &p->grad});
}

namespace {
void check_video(const Tensor& video, const char* who) {
  OSP_CHECK(video.dim() == 4 && video.size(0) == 3, who, ": video must be [3, F, H, W], got ",
            video.desc());
  OSP_CHECK(video.dtype() == DType::F32, who, ": video must be F32, got ", video.desc());
  const int64_t F = video.size(1), H = video.size(2), W = video.size(3);
  OSP_CHECK(F >= 1 && (F - 1) % 4 == 0, who, ": frame count ", F, " must be 1 + 4k");
  OSP_CHECK(H > 0 && W > 0 && H % 8 == 0 && W % 8 == 0, who, ": size ", H, "x", W,
            " must be multiples of 8");
}
// [C, T, H, W] (any device) → frame-major [T, C, H, W] on dev.
Tensor to_fm(const Tensor& x, Device dev) { return x.permute({1, 0, 2, 3}).contiguous().to(dev).contiguous(); }
}  // namespace

Tensor TrainableVae::Impl::encode_fm(const Tensor& v, StackTape* tp) const {
  return encoder.forward(v, tp);
}

Tensor TrainableVae::Impl::decode_fm(const Tensor& z, StackTape* tp, Tensor* dec_in) const {
  Tensor x = conv2.fwd(z);
  if (dec_in) *dec_in = x;
  return decoder.forward(x, tp);
}

VaeLossStats TrainableVae::Impl::run(const Tensor& video, const VaeLossConfig& lc, uint64_t seed,
                                     bool backward, Tensor* dvideo) {
  check_video(video, "TrainableVae");
  OSP_CHECK(lc.kl_weight >= 0 && std::isfinite(lc.kl_weight), "TrainableVae: kl_weight must be >= 0");
  if (dvideo) {
    OSP_CHECK(dvideo->defined() && dvideo->shape() == video.shape() &&
                  dvideo->dtype() == DType::F32 && dvideo->is_contiguous(),
              "TrainableVae: dvideo must be a contiguous F32 tensor of shape ",
              shape_str(video.shape()), ", got ", dvideo->desc());
  }
  const int64_t zd = cfg.z_dim;
  const Tensor v = to_fm(video, dev);  // [F, 3, H, W]
  StackTape etape, dtape;
  const Tensor enc = encode_fm(v, backward ? &etape : nullptr);  // [T, 2z, h, w]
  const Tensor mom = conv1.fwd(enc);
  const int64_t T = mom.size(0), hw = mom.size(2) * mom.size(3), nlat = T * zd * hw;

  // ---- latent (host): z = mu + exp(lv/2)·eps, KL
  const Tensor momh = mom.to(Device::cpu()).contiguous();
  const float* mp = momh.data<float>();
  std::vector<float> eps(size_t(lc.sample_posterior ? nlat : 0));
  if (lc.sample_posterior) philox_normal(seed, 0, 0, eps.data(), nlat);
  Tensor zh = Tensor::empty({T, zd, mom.size(2), mom.size(3)}, DType::F32);
  float* zp = zh.data<float>();
  double kl = 0;
  auto mu_at = [&](int64_t t, int64_t c, int64_t i) { return mp[(t * 2 * zd + c) * hw + i]; };
  auto lv_at = [&](int64_t t, int64_t c, int64_t i) {
    return std::clamp(mp[(t * 2 * zd + zd + c) * hw + i], -30.f, 20.f);
  };
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < zd; ++c)
      for (int64_t i = 0; i < hw; ++i) {
        const int64_t n = (t * zd + c) * hw + i;
        const float mu = mu_at(t, c, i), lv = lv_at(t, c, i);
        zp[n] = lc.sample_posterior ? mu + std::exp(0.5f * lv) * eps[size_t(n)] : mu;
        kl += 0.5 * (double(mu) * mu + std::exp(double(lv)) - 1.0 - lv);
      }
  kl /= double(nlat);

  // ---- decode and the reconstruction loss (host)
  Tensor dec_in;
  const Tensor rec = decode_fm(zh.to(dev), backward ? &dtape : nullptr, &dec_in);  // [F, 3, H, W]
  const Tensor rh = rec.to(Device::cpu()).contiguous();
  const Tensor vh = v.to(Device::cpu()).contiguous();
  const float* rp = rh.data<float>();
  const float* vp = vh.data<float>();
  const int64_t npx = rh.numel();
  double se = 0, ae = 0;
  for (int64_t i = 0; i < npx; ++i) {
    const double d = double(rp[i]) - vp[i];
    se += d * d;
    ae += std::abs(d);
  }
  VaeLossStats st;
  st.mse = se / double(npx);
  st.psnr = 10.0 * std::log10(4.0 / std::max(st.mse, 1e-30));
  st.recon = lc.recon == VaeLossConfig::Recon::MSE ? st.mse : ae / double(npx);
  st.kl = kl;
  st.loss = st.recon + lc.kl_weight * kl;
  if (!backward) return st;

  // ---- backward: d recon
  Tensor drh = Tensor::empty(rh.shape(), DType::F32);
  {
    float* d = drh.data<float>();
    const bool mse = lc.recon == VaeLossConfig::Recon::MSE;
    for (int64_t i = 0; i < npx; ++i) {
      const double diff = double(rp[i]) - vp[i];
      d[i] = mse ? float(2.0 * diff / double(npx))
                 : float((diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0) / double(npx));
    }
  }
  Tensor dx_dec = Tensor::empty(dec_in.shape(), DType::F32, dev);
  decoder.backward(dtape, drh.to(dev).contiguous(), &dx_dec);
  Tensor dz = Tensor::empty(zh.shape(), DType::F32, dev);
  conv2.bwd(zh.to(dev).contiguous(), dx_dec, &dz);
  const Tensor dzh = dz.to(Device::cpu()).contiguous();
  // d moments (host): mu ← dz + w·mu/n; lv ← dz·eps·exp(lv/2)/2 + w·(exp(lv) − 1)/(2n), 0 where
  // the clamp is active.
  Tensor dmh = Tensor::empty(momh.shape(), DType::F32);
  {
    const float* g = dzh.data<float>();
    float* d = dmh.data<float>();
    const double kw = lc.kl_weight / double(nlat);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < zd; ++c)
        for (int64_t i = 0; i < hw; ++i) {
          const int64_t n = (t * zd + c) * hw + i;
          const float mu = mu_at(t, c, i), lv = lv_at(t, c, i);
          const float raw_lv = mp[(t * 2 * zd + zd + c) * hw + i];
          const bool inside = raw_lv >= -30.f && raw_lv <= 20.f;
          d[(t * 2 * zd + c) * hw + i] = float(g[n] + kw * mu);
          double dlv = kw * 0.5 * (std::exp(double(lv)) - 1.0);
          if (lc.sample_posterior) dlv += double(g[n]) * eps[size_t(n)] * 0.5 * std::exp(0.5 * double(lv));
          d[(t * 2 * zd + zd + c) * hw + i] = inside ? float(dlv) : 0.f;
        }
  }
  Tensor denc = conv1.bwd(enc, dmh.to(dev).contiguous());
  Tensor dv;
  if (dvideo) dv = Tensor::empty(v.shape(), DType::F32, dev);
  encoder.backward(etape, denc, dvideo ? &dv : nullptr);
  if (dvideo) {
    // The clip is also the reconstruction target: d recon / d x = −d recon / d x̂.
    float* d = drh.data<float>();
    for (int64_t i = 0; i < npx; ++i) d[i] = -d[i];
    ops::add_(dv, drh.to(dev).contiguous());
    dvideo->copy_from(dv.permute({1, 0, 2, 3}));
  }
  return st;
}

// ---------------------------------------------------------------- public API

TrainableVae TrainableVae::from_scratch(const VaeConfig& cfg, uint64_t seed, Device dev) {
  TrainableVae m;
  m.impl_ = std::make_shared<Impl>();
  m.impl_->cfg = cfg;
  m.impl_->dev = dev;
  m.impl_->build();
  uint32_t stream = 0;
  for (auto& p : m.impl_->ps) {
    const std::string& n = p->name;
    auto ends = [&](const std::string& s) {
      return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    Tensor h = Tensor::empty(p->value.shape(), DType::F32);
    float* d = h.data<float>();
    const int64_t numel = h.numel();
    if (ends(".gamma")) {
      std::fill(d, d + numel, 1.f);
    } else if (ends(".bias")) {
      std::fill(d, d + numel, 0.f);
    } else {
      const int64_t fan_in = numel / p->value.size(0);
      double bound = std::sqrt(3.0 / double(fan_in));
      if (ends("residual.6.weight") || ends(".proj.weight")) bound *= 0.1;
      philox_uniform(seed, stream, 0, d, numel);
      for (int64_t i = 0; i < numel; ++i) d[i] = float((2.0 * d[i] - 1.0) * bound);
    }
    ++stream;
    p->value.copy_from(h);
  }
  return m;
}

TrainableVae TrainableVae::from_weights(const WeightGetter& get, const VaeConfig& cfg, Device dev,
                                        const std::string& prefix) {
  OSP_CHECK(get, "TrainableVae::from_weights: no weight getter");
  TrainableVae m;
  m.impl_ = std::make_shared<Impl>();
  m.impl_->cfg = cfg;
  m.impl_->dev = dev;
  m.impl_->build();
  for (auto& p : m.impl_->ps) {
    Tensor t = get(prefix + p->name);
    OSP_CHECK(t.defined(), "TrainableVae::from_weights: tensor '", prefix + p->name, "' is missing");
    OSP_CHECK(t.shape() == p->ckpt_shape, "TrainableVae::from_weights: tensor '", prefix + p->name,
              "' has shape ", shape_str(t.shape()), ", expected ", shape_str(p->ckpt_shape),
              " (the config does not match the weights)");
    OSP_CHECK(dtype_is_float(t.dtype()), "TrainableVae::from_weights: tensor '", prefix + p->name,
              "' is ", dtype_name(t.dtype()), ", expected a float type");
    p->value.copy_from(t.contiguous().to(DType::F32).view(p->value.shape()));
  }
  return m;
}

const VaeConfig& TrainableVae::config() const { return impl_->cfg; }
Device TrainableVae::device() const { return impl_->dev; }
ParamTable& TrainableVae::params() { return impl_->table; }

void TrainableVae::zero_grad() {
  for (auto& p : impl_->ps) p->grad.zero_();
}

std::vector<std::pair<std::string, Tensor>> TrainableVae::named_weights() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& p : impl_->ps) out.emplace_back(p->name, p->value.view(p->ckpt_shape));
  return out;
}

WeightGetter TrainableVae::weights() const {
  auto impl = impl_;
  return [impl](const std::string& name) {
    for (const auto& p : impl->ps)
      if (p->name == name) return p->value.view(p->ckpt_shape);
    return Tensor();
  };
}

Tensor TrainableVae::encode_moments(const Tensor& video) const {
  check_video(video, "TrainableVae::encode_moments");
  const Impl& I = *impl_;
  Tensor mom = I.conv1.fwd(I.encode_fm(to_fm(video, I.dev), nullptr));
  return mom.permute({1, 0, 2, 3}).contiguous();
}

Tensor TrainableVae::decode_raw(const Tensor& z) const {
  const Impl& I = *impl_;
  OSP_CHECK(z.dim() == 4 && z.size(0) == I.cfg.z_dim && z.dtype() == DType::F32,
            "TrainableVae::decode_raw: latent must be F32 [", I.cfg.z_dim, ", T, h, w], got ", z.desc());
  Tensor rec = I.decode_fm(to_fm(z, I.dev), nullptr, nullptr);
  return rec.permute({1, 0, 2, 3}).contiguous();
}

VaeLossStats TrainableVae::loss(const Tensor& video, const VaeLossConfig& lc,
                                uint64_t noise_seed) const {
  return impl_->run(video, lc, noise_seed, false, nullptr);
}

VaeLossStats TrainableVae::forward_backward(const Tensor& video, const VaeLossConfig& lc,
                                            uint64_t noise_seed, Tensor* dvideo) {
  return impl_->run(video, lc, noise_seed, true, dvideo);
}

}  // namespace osp::model
