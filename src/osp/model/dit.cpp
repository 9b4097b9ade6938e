// Wan2.1 / OSP-Next DiT: weight binding and the device-generic forward (shapes next to steps).
#include "osp/model/dit.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "osp/core/log.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8.h"

namespace osp::model {

using sparse::BlockKind;

// ---------------------------------------------------------------- FLOPs (wan-spec §7.1)
double dit_forward_flops(const DiTConfig& c, const sparse::Grid& g,
                         const std::vector<BlockKind>& kinds, int P, int64_t B) {
  const double d = double(c.dim), F = double(c.ffn_dim), Lt = double(c.text_len);
  const double N = double(g.numel());
  double total = 0;
  std::vector<int32_t> tok_len, grp_len;
  for (BlockKind k : kinds) {
    double rows = N, core = 0;
    if (k == BlockKind::Full) {
      core = 4 * N * N * d;
    } else {
      // Sub-sequences are stored without their padding rows (dist/sequence_parallel.h), so the
      // linears see the N real tokens.
      auto& lens = k == BlockKind::Token ? tok_len : grp_len;
      if (lens.empty()) lens = sparse::skiparse_row_lengths(g, P, k);
      for (int32_t l : lens) core += 4.0 * double(l) * double(l) * d;
    }
    total += 8 * rows * d * d + core;                             // self-attention
    total += 4 * rows * d * d + 4 * Lt * d * d + 4 * rows * Lt * d;  // cross-attention
    total += 4 * rows * d * F;                                     // FFN
  }
  const double K = double(c.in_dim) * double(c.patch_volume());
  total += 2 * N * K * d;                                          // patch embedding
  total += 2 * Lt * (double(c.text_dim) * d + d * d);              // text embedding
  total += 2 * N * d * double(c.out_dim) * double(c.patch_volume());  // head
  return total * double(B);
}

// ---------------------------------------------------------------- binding
std::map<std::string, Shape> DiT::expected_shapes(const DiTConfig& c) {
  const int64_t d = c.dim;
  std::map<std::string, Shape> s;
  s["patch_embedding.weight"] = {d, c.in_dim, c.patch_t, c.patch_h, c.patch_w};
  s["patch_embedding.bias"] = {d};
  s["text_embedding.0.weight"] = {d, c.text_dim};
  s["text_embedding.0.bias"] = {d};
  s["text_embedding.2.weight"] = {d, d};
  s["text_embedding.2.bias"] = {d};
  s["time_embedding.0.weight"] = {d, c.freq_dim};
  s["time_embedding.0.bias"] = {d};
  s["time_embedding.2.weight"] = {d, d};
  s["time_embedding.2.bias"] = {d};
  s["time_projection.1.weight"] = {6 * d, d};
  s["time_projection.1.bias"] = {6 * d};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = str("blocks.", i, ".");
    s[p + "modulation"] = {1, 6, d};
    for (const char* a : {"self_attn", "cross_attn"}) {
      for (const char* l : {"q", "k", "v", "o"}) {
        s[p + a + "." + l + ".weight"] = {d, d};
        s[p + a + "." + l + ".bias"] = {d};
      }
      if (c.qk_norm) {
        s[p + a + ".norm_q.weight"] = {d};
        s[p + a + ".norm_k.weight"] = {d};
      }
    }
    if (c.cross_attn_norm) {
      s[p + "norm3.weight"] = {d};
      s[p + "norm3.bias"] = {d};
    }
    s[p + "ffn.0.weight"] = {c.ffn_dim, d};
    s[p + "ffn.0.bias"] = {c.ffn_dim};
    s[p + "ffn.2.weight"] = {d, c.ffn_dim};
    s[p + "ffn.2.bias"] = {d};
  }
  s["head.modulation"] = {1, 2, d};
  s["head.head.weight"] = {c.out_dim * c.patch_volume(), d};
  s["head.head.bias"] = {c.out_dim * c.patch_volume()};
  return s;
}

namespace {
// Contiguous copy of t in dtype dt on device dev (never a view into the checkpoint).
Tensor place(const Tensor& t, DType dt, Device dev) {
  Tensor out = Tensor::empty(t.shape(), dt, dev);
  out.copy_from(t);
  return out;
}
}  // namespace

DiT DiT::bind(const DiTConfig& cfg, const std::map<std::string, Tensor>& weights,
              const DiTOptions& opt, const std::string& prefix) {
  cfg.validate();
  if (opt.device.is_cuda())
    OSP_CHECK(cuda_available(), "DiT::bind: device ", opt.device.name(),
              " requested but no CUDA GPU is available in this build/machine");
  // 1. Check every tensor first; report all problems at once.
  const auto expected = expected_shapes(cfg);
  std::vector<std::string> problems;
  for (const auto& [name, shape] : expected) {
    auto it = weights.find(prefix + name);
    if (it == weights.end()) {
      problems.push_back(str("missing ", prefix + name, " ", shape_str(shape)));
      continue;
    }
    const Tensor& t = it->second;
    if (!t.defined() || t.shape() != shape)
      problems.push_back(str("shape of ", prefix + name, ": expected ", shape_str(shape), ", got ",
                             t.defined() ? shape_str(t.shape()) : std::string("undefined")));
    else if (!dtype_is_float(t.dtype()))
      problems.push_back(str("dtype of ", prefix + name, ": expected a float type, got ",
                             dtype_name(t.dtype())));
  }
  if (!problems.empty()) {
    std::ostringstream os;
    os << "DiT::bind: " << problems.size() << " problem(s) with the checkpoint for config ("
       << cfg.summary() << "):";
    const size_t show = std::min<size_t>(problems.size(), 40);
    for (size_t i = 0; i < show; ++i) os << "\n  " << problems[i];
    if (show < problems.size()) os << "\n  ... and " << problems.size() - show << " more";
    fail(os.str());
  }

  DiT m;
  m.cfg_ = cfg;
  m.opt_ = opt;
  m.kinds_ = cfg.block_kinds();
  m.P_ = cfg.sparse_ratio;
  const Device dev = opt.device;
  const bool cuda = dev.is_cuda();
  m.act_ = cuda ? DType::BF16 : DType::F32;
  const DType gemm_w = m.act_;  // weights of bf16 GEMMs on CUDA
  const bool hif8 = opt.quant == DiTQuant::HiF8;
  const bool fp8 = opt.quant == DiTQuant::FP8;
  auto W = [&](const std::string& n) -> const Tensor& { return weights.at(prefix + n); };
  auto lin = [&](const std::string& n, DType wdt, DType bdt, Device where, bool quant) {
    Linear l;
    Tensor w = W(n + ".weight");
    l.w = place(w.dim() == 2 ? w : w.reshape({w.size(0), w.numel() / w.size(0)}), wdt, where);
    if (quant) quant::hif8_fake_quant(l.w, l.w);  // cached Q(W, 15), in place
    l.b = place(W(n + ".bias"), bdt, where);
    return l;
  };
  auto f32 = [&](const std::string& n) { return place(W(n), DType::F32, dev); };
  // Block linears: bf16/f32, HiF8 fake-quant weight, or (FP8) E4M3 codes only.
  std::vector<std::string> fallback;
  auto blin = [&](const std::string& n) {
    if (!fp8) return lin(n, gemm_w, gemm_w, dev, hif8);
    Linear l = lin(n, gemm_w, gemm_w, dev, false);
    const int64_t N = l.w.size(0), K = l.w.size(1);
    if (cuda && (K % 16 != 0 || N % 8 != 0)) {  // cuBLASLt FP8 rules (quant/fp8.h)
      quant::hif8_fake_quant(l.w, l.w);
      fallback.push_back(str(n, " [", N, ", ", K, "]"));
      return l;
    }
    l.wq = quant::hif8_quantize_e4m3(l.w);  // E4M3(HiF8(w·s)), from the bf16 (CUDA) weight
    l.w = Tensor();
    return l;
  };

  m.patch_ = lin("patch_embedding", gemm_w, gemm_w, dev, false);
  m.text0_ = lin("text_embedding.0", gemm_w, gemm_w, dev, false);
  m.text2_ = lin("text_embedding.2", gemm_w, gemm_w, dev, false);
  // The time embedding stays f32 (wan-spec §2.6) and runs where the model runs: on CUDA through
  // ops::linear's small-row f32 kernel (the [6·d, d] projection alone is 629 MB of f32 weights
  // at 14B — streaming it from host memory every forward cost ~0.1 s).
  m.time0_ = lin("time_embedding.0", DType::F32, DType::F32, dev, false);
  m.time2_ = lin("time_embedding.2", DType::F32, DType::F32, dev, false);
  m.time_proj_ = lin("time_projection.1", DType::F32, DType::F32, dev, false);
  // The reference's head GEMM is fp32; CUDA linear is bf16-only, so the CUDA head runs a bf16
  // GEMM with fp32 bias/output (documented deviation). CPU: fp32.
  m.head_ = lin("head.head", gemm_w, DType::F32, dev, false);
  m.head_modulation_ = place(W("head.modulation"), DType::F32, dev).view({2, cfg.dim});
  m.blocks_.resize(size_t(cfg.num_layers));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    Block& b = m.blocks_[size_t(i)];
    const std::string p = str("blocks.", i, ".");
    b.modulation = f32(p + "modulation").view({6, cfg.dim});
    for (int a = 0; a < 2; ++a) {
      Attn& at = a == 0 ? b.self_attn : b.cross_attn;
      const std::string q = p + (a == 0 ? "self_attn." : "cross_attn.");
      at.q = blin(q + "q");
      at.k = blin(q + "k");
      at.v = blin(q + "v");
      at.o = blin(q + "o");
      if (cfg.qk_norm) {
        at.norm_q = f32(q + "norm_q.weight");
        at.norm_k = f32(q + "norm_k.weight");
      }
    }
    if (cfg.cross_attn_norm) {
      b.norm3_w = f32(p + "norm3.weight");
      b.norm3_b = f32(p + "norm3.bias");
    }
    b.ffn0 = blin(p + "ffn.0");
    b.ffn2 = blin(p + "ffn.2");
  }
  if (!fallback.empty()) {
    m.fp8_fallback_ = true;
    log_info("DiT::bind: FP8 mode: ", fallback.size(), " block linear(s) break cuBLASLt FP8's ",
             "K % 16 == 0 / N % 8 == 0 rules and run the HiF8 fake-quant bf16 GEMM instead (e.g. ",
             fallback.front(), ")");
  }
  if (StageProfiler::env_enabled()) m.prof_.set_enabled(true, dev);
  return m;
}

void DiT::set_block_kinds(const std::vector<BlockKind>& kinds, int P) {
  OSP_CHECK(int64_t(kinds.size()) == cfg_.num_layers, "DiT::set_block_kinds: got ", kinds.size(),
            " kinds for ", cfg_.num_layers, " blocks");
  bool sparse = false;
  for (BlockKind k : kinds) sparse |= k != BlockKind::Full;
  OSP_CHECK(!sparse || P >= 2, "DiT::set_block_kinds: sparse blocks need P >= 2, got ", P);
  kinds_ = kinds;
  P_ = P;
}

size_t DiT::weight_bytes() const {
  size_t n = 0;
  auto add = [&](const Tensor& t) {
    if (t.defined()) n += t.nbytes();
  };
  auto addl = [&](const Linear& l) {
    add(l.w);
    add(l.b);
    add(l.wq.codes);
    add(l.wq.scale_inv);
  };
  for (const Linear* l : {&patch_, &text0_, &text2_, &head_, &time0_, &time2_, &time_proj_})
    addl(*l);
  for (const Block& b : blocks_) {
    add(b.modulation);
    for (const Attn* a : {&b.self_attn, &b.cross_attn}) {
      addl(a->q), addl(a->k), addl(a->v), addl(a->o);
      add(a->norm_q), add(a->norm_k);
    }
    add(b.norm3_w), add(b.norm3_b);
    addl(b.ffn0), addl(b.ffn2);
  }
  return n;
}

// ---------------------------------------------------------------- forward helpers
Tensor& DiT::ws(const std::string& name, const Shape& shape, DType dt) {
  Tensor& t = ws_[name];
  if (!t.defined() || t.shape() != shape || t.dtype() != dt || t.device() != opt_.device)
    t = Tensor::empty(shape, dt, opt_.device);
  return t;
}

void DiT::linear(const Tensor& x, const Linear& l, Tensor& out, ops::Act act) {
  ops::linear(x, l.w, &l.b, out, act);
}

void DiT::linear(const LinIn& in, const Linear& l, Tensor& out, ops::Act act) {
  if (l.fp8()) {
    OSP_CHECK(in.xq != nullptr, "DiT: internal error: FP8 linear called without an FP8 input");
    quant::fp8_linear(*in.xq, l.wq, &l.b, out, {}, act);
  } else {
    ops::linear(*in.x, l.w, &l.b, out, act);
  }
}

// None: x itself. HiF8: Q(x, 15) into a workspace. FP8: the E4M3 operand (plus Q(x, 15) when
// some linear falls back to the fake-quant GEMM). x must outlive the returned LinIn.
DiT::LinIn DiT::quant_input(const Tensor& x, const std::string& name) {
  LinIn in;
  in.x = &x;
  if (opt_.quant == DiTQuant::None) return in;
  if (opt_.quant == DiTQuant::HiF8 || fp8_fallback_) {
    Tensor& q = ws(name, x.shape(), x.dtype());
    quant::hif8_fake_quant(x, q);
    in.x = &q;
  }
  if (opt_.quant == DiTQuant::FP8) {
    quant::Fp8Tensor& q8 = ws8_[name];
    quant::hif8_quantize_e4m3(x, q8);
    in.xq = &q8;
  }
  return in;
}

// One block (wan-spec §2.2) on the hidden state x [B, n, d] F32 of this block's layout.
void DiT::run_block(int i, Tensor& x, const LinIn& ctx, const Tensor& e0,
                    dist::SequenceParallel& sp) {
  const Block& blk = blocks_[size_t(i)];
  const int64_t B = x.size(0), n = x.size(1), d = cfg_.dim, H = cfg_.num_heads,
                D = cfg_.head_dim(), Lt = ctx.x->size(1);
  const float eps = cfg_.eps;
  const bool hif8 = opt_.quant != DiTQuant::None;  // HiF8 or FP8: Q(·, 15) on q, k, v
  // Profiling laps (no-ops when off). split(): a lap only where quantization laps cut a stage.
  const ProfKind pk = kinds_[size_t(i)] == BlockKind::Full ? ProfKind::Full : ProfKind::Sparse;
  auto lap = [&](ProfStage s) { prof_.lap(s, pk); };
  auto split = [&](ProfStage s) {
    if (hif8) prof_.lap(s, pk);
  };
  OSP_CHECK(x.dim() == 3 && x.size(2) == d && x.dtype() == DType::F32 && x.is_contiguous(),
            "DiT block ", i, ": the sequence-parallel layer returned hidden ", x.desc(),
            ", expected a contiguous f32 [B, n, ", d, "]");

  // m = modulation + e0[b]: [B, 6, d] F32 → shift1, scale1, gate1, shift2, scale2, gate2
  Tensor& m = ws("mod", {B, 6, d}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    Tensor mb = m.select(0, b);
    ops::axpby(1.f, blk.modulation, 1.f, e0.select(0, b), mb);
  }
  auto mod = [&](int64_t b, int j) { return m.select(0, b).select(0, j); };

  // ---- self-attention: h = LN(x)·(1 + scale1) + shift1          [B, n, d] act
  Tensor& h = ws("h", {B, n, d}, act_);
  const bool round0 = i == 0 && act_ == DType::BF16;  // block 0: x is still bf16 in the reference
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = h.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), mod(b, 0), mod(b, 1), eps, hb, round0);
  }
  lap(ProfStage::ModNorm);
  const LinIn hq = quant_input(h, "hq");
  split(ProfStage::Quant);
  Tensor& q = ws("q", {B, n, d}, act_);
  Tensor& k = ws("k", {B, n, d}, act_);
  Tensor& v = ws("v", {B, n, d}, act_);
  linear(hq, blk.self_attn.q, q);
  linear(hq, blk.self_attn.k, k);
  linear(hq, blk.self_attn.v, v);
  lap(ProfStage::QKV);
  // q, k = RMS(q)·g (fp32, over all d)                            [B, n, d] F32
  Tensor& qn = ws("qn", {B, n, d}, DType::F32);
  Tensor& kn = ws("kn", {B, n, d}, DType::F32);
  if (cfg_.qk_norm) {
    ops::rms_norm(q, blk.self_attn.norm_q, eps, qn);
    ops::rms_norm(k, blk.self_attn.norm_k, eps, kn);
  } else {
    qn.copy_from(q);
    kn.copy_from(k);
  }
  // RoPE with this rank's table [Rt, n/Rt, D/2, 2] on q, k viewed [B·Rt, n/Rt, H, D]
  const Tensor& tab = sp.rope_table(i);
  OSP_CHECK(tab.dim() == 4 && tab.size(0) >= 1 && n % tab.size(0) == 0 &&
                tab.size(1) == n / tab.size(0) && tab.size(2) == D / 2,
            "DiT block ", i, ": RoPE table ", tab.desc(), " does not fit hidden rows ", n,
            " and head dim ", D);
  const int64_t Rt = tab.size(0);
  const Shape rope_shape{B * Rt, n / Rt, H, D};
  Tensor& qr = ws("qr", {B, n, H, D}, act_);
  Tensor& kr = ws("kr", {B, n, H, D}, act_);
  {
    Tensor qrv = qr.view(rope_shape), krv = kr.view(rope_shape);
    ops::rope(qn.view(rope_shape), tab, qrv);
    ops::rope(kn.view(rope_shape), tab, krv);
  }
  lap(ProfStage::NormRope);
  Tensor vh = v.view({B, n, H, D});
  // FP8 attention quantizes q/k/v itself (the same Q(·, 15) values, as E4M3 codes).
  const bool fp8_attn = opt_.quant == DiTQuant::FP8 && opt_.fp8_attention && opt_.device.is_cuda();
  if (hif8 && !fp8_attn) {
    quant::hif8_fake_quant(qr, qr);
    quant::hif8_fake_quant(kr, kr);
    quant::hif8_fake_quant(vh, vh);
    lap(ProfStage::Quant);
  }
  Tensor& o = ws("o", {B, n, H, D}, act_);
  static const dist::AttentionFn fp8_fn = [](const Tensor& q, const Tensor& k, const Tensor& v,
                                             Tensor& out, const ops::AttentionArgs& a) {
    quant::hif8_attention_fp8(q, k, v, out, a);
  };
  if (!prof_.enabled()) {
    sp.self_attention(i, qr, kr, vh, o, fp8_attn ? fp8_fn : dist::AttentionFn());
  } else {
    // Profiling: laps around the attention kernel itself split it from the sequence-parallel
    // layer's own work (Ulysses all-to-alls, layout copies) without touching dist/.
    const dist::AttentionFn& core = fp8_attn ? fp8_fn : dist::default_attention();
    const dist::AttentionFn timed = [&](const Tensor& aq, const Tensor& ak, const Tensor& av,
                                        Tensor& aout, const ops::AttentionArgs& a) {
      lap(ProfStage::SelfAttnComm);
      core(aq, ak, av, aout, a);
      lap(ProfStage::SelfAttn);
    };
    sp.self_attention(i, qr, kr, vh, o, timed);
    lap(ProfStage::SelfAttnComm);
  }
  Tensor& y = ws("y", {B, n, d}, act_);
  const Tensor o2 = o.view({B, n, d});
  const LinIn oq = quant_input(o2, "oq");
  split(ProfStage::Quant);
  linear(oq, blk.self_attn.o, y);
  // x += y · gate1
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), g = mod(b, 2);
    ops::add_gated_(xb, y.select(0, b), &g);
  }
  lap(ProfStage::OProj);

  // ---- cross-attention: x += CrossAttn(LN_affine(x), ctx)   (no modulation, no gate)
  Tensor& h3 = ws("h3", {B, n, d}, act_);
  if (cfg_.cross_attn_norm)
    ops::layer_norm(x, &blk.norm3_w, &blk.norm3_b, eps, h3);
  else
    h3.copy_from(x);
  split(ProfStage::CrossAttn);
  const LinIn h3q = quant_input(h3, "h3q");
  split(ProfStage::Quant);
  linear(h3q, blk.cross_attn.q, q);
  Tensor& cq = ws("cq", {B, n, d}, act_);
  Tensor& ck0 = ws("ck0", {B, Lt, d}, act_);
  Tensor& ck = ws("ck", {B, Lt, d}, act_);
  Tensor& cv = ws("cv", {B, Lt, d}, act_);
  linear(ctx, blk.cross_attn.k, ck0);
  linear(ctx, blk.cross_attn.v, cv);
  if (cfg_.qk_norm) {
    ops::rms_norm(q, blk.cross_attn.norm_q, eps, cq);
    ops::rms_norm(ck0, blk.cross_attn.norm_k, eps, ck);
  } else {
    cq.copy_from(q);
    ck.copy_from(ck0);
  }
  if (hif8) {
    split(ProfStage::CrossAttn);
    quant::hif8_fake_quant(cq, cq);
    quant::hif8_fake_quant(ck, ck);
    quant::hif8_fake_quant(cv, cv);
    split(ProfStage::Quant);
  }
  ops::attention(cq.view({B, n, H, D}), ck.view({B, Lt, H, D}), cv.view({B, Lt, H, D}), o);
  split(ProfStage::CrossAttn);
  const LinIn coq = quant_input(o2, "oq");
  split(ProfStage::Quant);
  linear(coq, blk.cross_attn.o, y);
  ops::add_gated_(x, y, nullptr);
  lap(ProfStage::CrossAttn);

  // ---- FFN: x += Lin(gelu(Lin(LN(x)·(1 + scale2) + shift2))) · gate2
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = h.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), mod(b, 3), mod(b, 4), eps, hb);
  }
  Tensor& f1 = ws("f1", {B, n, cfg_.ffn_dim}, act_);
  split(ProfStage::FFN);
  const LinIn fq = quant_input(h, "hq");
  split(ProfStage::Quant);
  linear(fq, blk.ffn0, f1, ops::Act::GeluTanh);
  split(ProfStage::FFN);
  const LinIn f1q = quant_input(f1, "f1q");
  split(ProfStage::Quant);
  linear(f1q, blk.ffn2, y);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), g = mod(b, 5);
    ops::add_gated_(xb, y.select(0, b), &g);
  }
  lap(ProfStage::FFN);
}

// ---------------------------------------------------------------- forward
Tensor DiT::forward(const Tensor& x_in, const std::vector<float>& t, const Tensor& context,
                    dist::SequenceParallel& sp) {
  OSP_CHECK(!blocks_.empty(), "DiT::forward: the model has no weights (use DiT::bind)");
  const DiTConfig& c = cfg_;
  const Device dev = opt_.device;
  OSP_CHECK(x_in.defined() && (x_in.dim() == 4 || x_in.dim() == 5),
            "DiT::forward: x must be [B, ", c.in_dim, ", F, H, W] or [", c.in_dim,
            ", F, H, W], got ", x_in.defined() ? x_in.desc() : std::string("undefined"));
  OSP_CHECK(dtype_is_float(x_in.dtype()), "DiT::forward: x must be a float tensor, got ",
            x_in.desc());
  const bool batched = x_in.dim() == 5;
  const Tensor x5 = batched ? x_in : x_in.unsqueeze(0);
  const int64_t B = x5.size(0), Fr = x5.size(2), Hl = x5.size(3), Wl = x5.size(4);
  OSP_CHECK(B >= 1 && x5.size(1) == c.in_dim, "DiT::forward: x has ", x5.size(1),
            " channels, the model expects in_dim = ", c.in_dim, " (", x_in.desc(), ")");
  OSP_CHECK(Fr >= 1 && Hl % c.patch_h == 0 && Wl % c.patch_w == 0 && Hl > 0 && Wl > 0,
            "DiT::forward: latent ", Fr, "x", Hl, "x", Wl, " must have H, W multiples of the patch ",
            c.patch_h, "x", c.patch_w);
  OSP_CHECK(int64_t(t.size()) == B, "DiT::forward: got ", t.size(), " timesteps for ", B,
            " samples (one per sample)");
  for (float tv : t)
    OSP_CHECK(std::isfinite(tv), "DiT::forward: timestep ", tv, " is not finite");
  OSP_CHECK(context.defined() && (context.dim() == 2 || context.dim() == 3),
            "DiT::forward: context must be [B, L, ", c.text_dim, "] or [L, ", c.text_dim,
            "], got ", context.defined() ? context.desc() : std::string("undefined"));
  const Tensor ctx3 = context.dim() == 3 ? context : context.unsqueeze(0);
  OSP_CHECK(ctx3.size(0) == B, "DiT::forward: context has ", ctx3.size(0),
            " samples but x has ", B);
  OSP_CHECK(ctx3.size(2) == c.text_dim, "DiT::forward: context width ", ctx3.size(2),
            " != text_dim ", c.text_dim);
  const int64_t Lc = ctx3.size(1), Lt = c.text_len, d = c.dim;
  OSP_CHECK(Lc <= Lt, "DiT::forward: context has ", Lc, " rows, more than text_len ", Lt,
            " (trim the text encoder output to its real tokens)");

  const sparse::Grid grid{Fr, Hl / c.patch_h, Wl / c.patch_w};
  const int64_t N = grid.numel(), K = c.in_dim * c.patch_volume();
  const ProfKind none = ProfKind::None;
  prof_.begin_forward();

  // (a) patch embedding: im2col + GEMM                               X [B, N, d]
  Tensor& patches = ws("patches", {B, N, K}, act_);
  for (int64_t b = 0; b < B; ++b) {
    Tensor z = x5.select(0, b).contiguous().to(dev);
    z = z.to(act_);  // F32 on the CPU; bf16 on CUDA (the reference's bf16 conv input)
    Tensor pb = patches.select(0, b);
    ops::patchify(z, c.patch_t, c.patch_h, c.patch_w, pb);
  }
  Tensor& xe = ws("x_embed", {B, N, d}, act_);
  linear(patches, patch_, xe);
  Tensor& xfull = ws("x_full", {B, N, d}, DType::F32);
  xfull.copy_from(xe);
  prof_.lap(ProfStage::PatchEmbed, none);

  // (b) time embedding in fp32 (sinusoid in fp64 on the host)      e [B, d], e0 [B, 6, d]
  const int64_t half = c.freq_dim / 2;
  Tensor sinus = Tensor::empty({B, c.freq_dim}, DType::F32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < half; ++k) {
      const double arg = double(t[size_t(b)]) * std::pow(10000.0, -double(k) / double(half));
      sinus.data<float>()[b * c.freq_dim + k] = float(std::cos(arg));
      sinus.data<float>()[b * c.freq_dim + half + k] = float(std::sin(arg));
    }
  sinus = sinus.to(dev);
  Tensor e_a = Tensor::empty({B, d}, DType::F32, dev), e = Tensor::empty({B, d}, DType::F32, dev);
  ops::linear(sinus, time0_.w, &time0_.b, e_a, ops::Act::Silu);
  ops::linear(e_a, time2_.w, &time2_.b, e);
  Tensor e_silu = Tensor::empty({B, d}, DType::F32, dev);
  ops::silu(e, e_silu);
  Tensor e0 = Tensor::empty({B, 6 * d}, DType::F32, dev);
  ops::linear(e_silu, time_proj_.w, &time_proj_.b, e0);
  Tensor e0_dev = e0.view({B, 6, d});
  prof_.lap(ProfStage::TimeEmbed, none);

  // (c) text embedding: zero-pad to text_len, Lin → GELU → Lin      C [B, Lt, d]
  Tensor& ctx_in = ws("ctx_in", {B, Lt, c.text_dim}, act_);
  {  // zero-padded to text_len, assembled on the model's device
    const Tensor cd = Lc > 0 ? ctx3.to(dev) : Tensor();
    for (int64_t b = 0; b < B; ++b) {
      Tensor cb = ctx_in.select(0, b);
      if (Lc < Lt) {
        Tensor tail = cb.slice(0, Lc, Lt);
        tail.zero_();
      }
      if (Lc > 0) {
        Tensor head = cb.slice(0, 0, Lc);
        head.copy_from(cd.select(0, b));
      }
    }
  }
  Tensor& c1 = ws("ctx1", {B, Lt, d}, act_);
  Tensor& ctx = ws("ctx", {B, Lt, d}, act_);
  linear(ctx_in, text0_, c1, ops::Act::GeluTanh);
  linear(c1, text2_, ctx);
  const LinIn ctx_q = quant_input(ctx, "ctx_q");  // HiF8/FP8: the k/v linears' input, once
  prof_.lap(ProfStage::TextEmbed, none);

  // (d) blocks, laid out by the sequence-parallel layer
  dist::ForwardPlan plan;
  plan.grid = grid;
  plan.kinds = kinds_;
  plan.P = P_;
  plan.heads = int(c.num_heads);
  plan.head_dim = int(c.head_dim());
  plan.device = dev;
  sp.setup(plan);
  prof_.lap(ProfStage::SpSetup, none);
  Tensor x = sp.scatter_input(xfull);
  prof_.lap(ProfStage::ScatterInput, none);
  for (int i = 0; i < int(c.num_layers); ++i) {
    if (i > 0) x = sp.enter_block(i, x);
    if (!x.is_contiguous()) x = x.contiguous();
    if (i > 0)
      prof_.lap(ProfStage::EnterBlock,
                kinds_[size_t(i)] == BlockKind::Full ? ProfKind::Full : ProfKind::Sparse);
    run_block(i, x, ctx_q, e0_dev, sp);
    if (hook_) hook_(i, x);
  }

  // (e) head on this rank's rows (every step is per token), then ONE gather of its
  // out_dim·patch_volume channels (64 for Wan) instead of the C-wide hidden state:
  // LN(x)·(1 + scale) + shift with (shift, scale) = head.modulation + e, then the head GEMM.
  OSP_CHECK(x.dim() == 3 && x.size(0) == B && x.size(2) == d,
            "DiT::forward: the last block's hidden state is ", x.desc(), ", expected [", B,
            ", n, ", d, "]");
  const int64_t n_loc = x.size(1);
  Tensor hm_dev = Tensor::empty({B, 2, d}, DType::F32, dev);
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < 2; ++j) {
      Tensor hbj = hm_dev.select(0, b).select(0, j);
      ops::axpby(1.f, head_modulation_.select(0, j), 1.f, e.select(0, b), hbj);
    }
  Tensor& hn = ws("head_in", {B, n_loc, d}, act_);
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = hn.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), hm_dev.select(0, b).select(0, 0),
                             hm_dev.select(0, b).select(0, 1), c.eps, hb);
  }
  const int64_t Kout = c.out_dim * c.patch_volume();
  Tensor& yl = ws("head_out", {B, n_loc, Kout}, DType::F32);  //   [B, n_local, Kout] F32
  linear(hn, head_, yl);
  prof_.lap(ProfStage::Head, none);
  Tensor yh = sp.gather_output(yl);                              //   [B, N, Kout]
  OSP_CHECK(yh.dim() == 3 && yh.size(0) == B && yh.size(1) == N && yh.size(2) == Kout,
            "DiT::forward: gather_output returned ", yh.desc(), ", expected [", B, ", ", N, ", ",
            Kout, "]");
  yh = yh.contiguous();
  prof_.lap(ProfStage::GatherOutput, none);

  // (f) unpatchify                                                   v [B, out, F, H, W]
  Tensor out = Tensor::empty({B, c.out_dim, Fr, Hl, Wl}, DType::F32, dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor ob = out.select(0, b);
    ops::unpatchify(yh.select(0, b), grid.T, grid.H, grid.W, c.patch_t, c.patch_h, c.patch_w, ob);
  }
  prof_.lap(ProfStage::Unpatchify, none);
  prof_.end_forward();
  return batched ? out : out.select(0, 0);
}

}  // namespace osp::model
