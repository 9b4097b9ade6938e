// Wan2.1 / OSP-Next DiT: weight binding and the device-generic forward (shapes next to steps).
#include "osp/model/dit.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "osp/core/log.h"
#include "osp/ops/backward.h"
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
  OSP_CHECK(!(opt.train && opt.quant == DiTQuant::FP8),
            "DiT::bind: FP8 mode is inference-only; train with quant = HiF8 (QAT) or None");
  // HiF8 inference caches Q(W, 15) in the weight itself; HiF8 training keeps W and recomputes
  // Q(W, 15) on every forward (refresh_quantized_weights).
  const bool hif8 = opt.quant == DiTQuant::HiF8 && !opt.train;
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
    if (!fp8) {
      Linear l = lin(n, gemm_w, gemm_w, dev, hif8);
      l.block = true;
      return l;
    }
    Linear l = lin(n, gemm_w, gemm_w, dev, false);
    l.block = true;
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
  m.head_modulation_.v = place(W("head.modulation"), DType::F32, dev).view({2, cfg.dim});
  m.blocks_.resize(size_t(cfg.num_layers));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    Block& b = m.blocks_[size_t(i)];
    const std::string p = str("blocks.", i, ".");
    b.modulation.v = f32(p + "modulation").view({6, cfg.dim});
    for (int a = 0; a < 2; ++a) {
      Attn& at = a == 0 ? b.self_attn : b.cross_attn;
      const std::string q = p + (a == 0 ? "self_attn." : "cross_attn.");
      at.q = blin(q + "q");
      at.k = blin(q + "k");
      at.v = blin(q + "v");
      at.o = blin(q + "o");
      if (cfg.qk_norm) {
        at.norm_q.v = f32(q + "norm_q.weight");
        at.norm_k.v = f32(q + "norm_k.weight");
      }
    }
    if (cfg.cross_attn_norm) {
      b.norm3_w.v = f32(p + "norm3.weight");
      b.norm3_b.v = f32(p + "norm3.bias");
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
  if (opt.train)  // an F32 gradient beside every parameter
    for (const ParamRef& p : m.parameters())
      *p.grad = Tensor::zeros(p.value->shape(), DType::F32, dev);
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
    add(l.wfq);
    add(l.wq.codes);
    add(l.wq.scale_inv);
  };
  for (const Linear* l : {&patch_, &text0_, &text2_, &head_, &time0_, &time2_, &time_proj_})
    addl(*l);
  add(head_modulation_.v);
  for (const Block& b : blocks_) {
    add(b.modulation.v);
    for (const Attn* a : {&b.self_attn, &b.cross_attn}) {
      addl(a->q), addl(a->k), addl(a->v), addl(a->o);
      add(a->norm_q.v), add(a->norm_k.v);
    }
    add(b.norm3_w.v), add(b.norm3_b.v);
    addl(b.ffn0), addl(b.ffn2);
  }
  return n;
}

// ---------------------------------------------------------------- parameter table
ParamTable DiT::parameters() {
  OSP_CHECK(opt_.quant != DiTQuant::FP8,
            "DiT::parameters: FP8 mode keeps only E4M3 weight codes (no trainable tensors)");
  const auto shapes = expected_shapes(cfg_);
  ParamTable t;
  auto add = [&](const std::string& n, Tensor& v, Tensor& g) {
    if (!v.defined()) return;
    t.push_back(ParamRef{n, shapes.at(n), &v, opt_.train ? &g : nullptr});
  };
  auto addl = [&](const std::string& n, Linear& l) {
    add(n + ".weight", l.w, l.gw);
    add(n + ".bias", l.b, l.gb);
  };
  addl("patch_embedding", patch_);
  addl("text_embedding.0", text0_);
  addl("text_embedding.2", text2_);
  addl("time_embedding.0", time0_);
  addl("time_embedding.2", time2_);
  addl("time_projection.1", time_proj_);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = blocks_[i];
    const std::string p = str("blocks.", i, ".");
    add(p + "modulation", b.modulation.v, b.modulation.g);
    for (int a = 0; a < 2; ++a) {
      Attn& at = a == 0 ? b.self_attn : b.cross_attn;
      const std::string q = p + (a == 0 ? "self_attn." : "cross_attn.");
      addl(q + "q", at.q);
      addl(q + "k", at.k);
      addl(q + "v", at.v);
      addl(q + "o", at.o);
      add(q + "norm_q.weight", at.norm_q.v, at.norm_q.g);
      add(q + "norm_k.weight", at.norm_k.v, at.norm_k.g);
    }
    add(p + "norm3.weight", b.norm3_w.v, b.norm3_w.g);
    add(p + "norm3.bias", b.norm3_b.v, b.norm3_b.g);
    addl(p + "ffn.0", b.ffn0);
    addl(p + "ffn.2", b.ffn2);
  }
  add("head.modulation", head_modulation_.v, head_modulation_.g);
  addl("head.head", head_);
  return t;
}

void DiT::zero_grad() {
  OSP_CHECK(opt_.train, "DiT::zero_grad: the model was bound without DiTOptions::train");
  for (const ParamRef& p : parameters()) p.grad->zero_();
}

std::vector<DiT::Linear*> DiT::linears() {
  std::vector<Linear*> v;
  for (Block& b : blocks_)
    for (Linear* l : {&b.self_attn.q, &b.self_attn.k, &b.self_attn.v, &b.self_attn.o,
                      &b.cross_attn.q, &b.cross_attn.k, &b.cross_attn.v, &b.cross_attn.o, &b.ffn0,
                      &b.ffn2})
      v.push_back(l);
  return v;
}

void DiT::refresh_quantized_weights() {
  for (Linear* l : linears()) {
    if (!l->wfq.defined() || l->wfq.shape() != l->w.shape() || l->wfq.dtype() != l->w.dtype())
      l->wfq = Tensor::empty(l->w.shape(), l->w.dtype(), opt_.device);
    quant::hif8_fake_quant(l->w, l->wfq);  // Q(W, 15) of the current weight
  }
}

// ---------------------------------------------------------------- forward helpers
Tensor& DiT::ws(const std::string& name, const Shape& shape, DType dt) {
  Tensor& t = ws_[name];
  if (!t.defined() || t.shape() != shape || t.dtype() != dt || t.device() != opt_.device)
    t = Tensor::empty(shape, dt, opt_.device);
  return t;
}

Tensor& DiT::act(Tape* tape, const std::string& name, const std::string& ws_name,
                 const Shape& shape, DType dt) {
  if (!tape) return ws(ws_name, shape, dt);
  Tensor& t = tape->t[name];
  t = Tensor::empty(shape, dt, opt_.device);
  return t;
}

const Tensor& DiT::Tape::at(const std::string& name) const {
  auto it = t.find(name);
  OSP_CHECK(it != t.end() && it->second.defined(),
            "DiT: internal error: the forward tape has no activation '", name, "'");
  return it->second;
}

void DiT::linear(const Tensor& x, const Linear& l, Tensor& out, ops::Act act) {
  ops::linear(x, l.weight(), &l.b, out, act);
}

void DiT::linear(const LinIn& in, const Linear& l, Tensor& out, ops::Act act) {
  if (l.fp8()) {
    OSP_CHECK(in.xq != nullptr, "DiT: internal error: FP8 linear called without an FP8 input");
    quant::fp8_linear(*in.xq, l.wq, &l.b, out, {}, act);
  } else {
    ops::linear(*in.x, l.weight(), &l.b, out, act);
  }
}

void DiT::linear_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx) {
  // G in the GEMM's dtype: Q(dy, 224) for HiF8 block linears (osp-next-spec §5.6), else dy.
  Tensor g;
  if (l.block && opt_.quant == DiTQuant::HiF8) {
    g = Tensor::empty(dy.shape(), x.dtype(), opt_.device);
    quant::hif8_fake_quant(dy, g, quant::kHiF8BackwardMax);
  } else {
    g = dy.dtype() == x.dtype() ? dy : dy.to(x.dtype());
  }
  ops::linear_backward(x, l.weight(), g, dx, l.gw.defined() ? &l.gw : nullptr,
                       l.gb.defined() ? &l.gb : nullptr);
}

// None: x itself. HiF8: Q(x, 15) into a workspace (or the tape). FP8: the E4M3 operand (plus
// Q(x, 15) when some linear falls back to the fake-quant GEMM). x must outlive the returned
// LinIn. With a tape, the GEMM input is recorded under `name` (x itself without quantization).
DiT::LinIn DiT::quant_input(const Tensor& x, const std::string& name, Tape* tape) {
  LinIn in;
  in.x = &x;
  if (opt_.quant == DiTQuant::None) {
    if (tape) tape->t[name] = x;
    return in;
  }
  if (opt_.quant == DiTQuant::HiF8 || fp8_fallback_) {
    Tensor& q = act(tape, name, name, x.shape(), x.dtype());
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
// Inference: tape null, training false (workspaces reused across blocks). Training: `training`
// selects the training numerics (unfused activations, attention with log-sum-exp); a tape
// records every activation backward needs (block_backward reads them by name).
void DiT::run_block(int i, Tensor& x, const LinIn& ctx, const Tensor& e0,
                    dist::SequenceParallel& sp, Tape* tape, bool training) {
  const Block& blk = blocks_[size_t(i)];
  const int64_t B = x.size(0), n = x.size(1), d = cfg_.dim, H = cfg_.num_heads,
                D = cfg_.head_dim(), Lt = ctx.x->size(1), Fd = cfg_.ffn_dim;
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
  if (tape) tape->t["x0"] = x.clone();  // the block input (LN backward)

  // m = modulation + e0[b]: [B, 6, d] F32 → shift1, scale1, gate1, shift2, scale2, gate2
  Tensor& m = act(tape, "mod", "mod", {B, 6, d}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    Tensor mb = m.select(0, b);
    ops::axpby(1.f, blk.modulation.v, 1.f, e0.select(0, b), mb);
  }
  auto mod = [&](int64_t b, int j) { return m.select(0, b).select(0, j); };

  // ---- self-attention: h = LN(x)·(1 + scale1) + shift1          [B, n, d] act
  Tensor& h = act(tape, "h", "h", {B, n, d}, act_);
  const bool round0 = i == 0 && act_ == DType::BF16;  // block 0: x is still bf16 in the reference
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = h.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), mod(b, 0), mod(b, 1), eps, hb, round0);
  }
  lap(ProfStage::ModNorm);
  const LinIn hq = quant_input(h, "hq", tape);
  split(ProfStage::Quant);
  Tensor& q = act(tape, "q", "q", {B, n, d}, act_);
  Tensor& k = act(tape, "k", "k", {B, n, d}, act_);
  Tensor& v = act(tape, "v", "v", {B, n, d}, act_);
  linear(hq, blk.self_attn.q, q);
  linear(hq, blk.self_attn.k, k);
  linear(hq, blk.self_attn.v, v);
  lap(ProfStage::QKV);
  // q, k = RMS(q)·g (fp32, over all d)                            [B, n, d] F32
  Tensor& qn = ws("qn", {B, n, d}, DType::F32);
  Tensor& kn = ws("kn", {B, n, d}, DType::F32);
  if (cfg_.qk_norm) {
    ops::rms_norm(q, blk.self_attn.norm_q.v, eps, qn);
    ops::rms_norm(k, blk.self_attn.norm_k.v, eps, kn);
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
  Tensor& qr = act(tape, "qr", "qr", {B, n, H, D}, act_);
  Tensor& kr = act(tape, "kr", "kr", {B, n, H, D}, act_);
  {
    Tensor qrv = qr.view(rope_shape), krv = kr.view(rope_shape);
    ops::rope(qn.view(rope_shape), tab, qrv);
    ops::rope(kn.view(rope_shape), tab, krv);
  }
  lap(ProfStage::NormRope);
  Tensor vh = v.view({B, n, H, D});
  // FP8 attention quantizes q/k/v itself (the same Q(·, 15) values, as E4M3 codes).
  const bool fp8_attn = opt_.quant == DiTQuant::FP8 && opt_.fp8_attention && opt_.device.is_cuda();
  if (hif8 && !fp8_attn) {  // the attention's inputs (recorded as such in the tape)
    quant::hif8_fake_quant(qr, qr);
    quant::hif8_fake_quant(kr, kr);
    quant::hif8_fake_quant(vh, vh);
    lap(ProfStage::Quant);
  }
  Tensor& o = act(tape, "o", "o", {B, n, H, D}, act_);
  static const dist::AttentionFn fp8_fn = [](const Tensor& q, const Tensor& k, const Tensor& v,
                                             Tensor& out, const ops::AttentionArgs& a) {
    quant::hif8_attention_fp8(q, k, v, out, a);
  };
  if (training) {
    Tensor& lse = act(tape, "lse", "lse", {B, H, n}, DType::F32);
    sp.self_attention_train(i, qr, kr, vh, o, lse);
    lap(ProfStage::SelfAttn);
  } else if (!prof_.enabled()) {
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
  Tensor& y = act(tape, "y", "y", {B, n, d}, act_);
  const Tensor o2 = o.view({B, n, d});
  const LinIn oq = quant_input(o2, "oq", tape);
  split(ProfStage::Quant);
  linear(oq, blk.self_attn.o, y);
  // x += y · gate1
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), g = mod(b, 2);
    ops::add_gated_(xb, y.select(0, b), &g);
  }
  lap(ProfStage::OProj);
  if (tape) tape->t["x1"] = x.clone();

  // ---- cross-attention: x += CrossAttn(LN_affine(x), ctx)   (no modulation, no gate)
  Tensor& h3 = act(tape, "h3", "h3", {B, n, d}, act_);
  if (cfg_.cross_attn_norm)
    ops::layer_norm(x, &blk.norm3_w.v, &blk.norm3_b.v, eps, h3);
  else
    h3.copy_from(x);
  split(ProfStage::CrossAttn);
  const LinIn h3q = quant_input(h3, "h3q", tape);
  split(ProfStage::Quant);
  Tensor& cq0 = act(tape, "cq_pre", "q", {B, n, d}, act_);
  linear(h3q, blk.cross_attn.q, cq0);
  Tensor& cq = act(tape, "cq", "cq", {B, n, d}, act_);
  Tensor& ck0 = act(tape, "ck_pre", "ck0", {B, Lt, d}, act_);
  Tensor& ck = act(tape, "ck", "ck", {B, Lt, d}, act_);
  Tensor& cv = act(tape, "cv", "cv", {B, Lt, d}, act_);
  linear(ctx, blk.cross_attn.k, ck0);
  linear(ctx, blk.cross_attn.v, cv);
  if (cfg_.qk_norm) {
    ops::rms_norm(cq0, blk.cross_attn.norm_q.v, eps, cq);
    ops::rms_norm(ck0, blk.cross_attn.norm_k.v, eps, ck);
  } else {
    cq.copy_from(cq0);
    ck.copy_from(ck0);
  }
  if (hif8) {
    split(ProfStage::CrossAttn);
    quant::hif8_fake_quant(cq, cq);
    quant::hif8_fake_quant(ck, ck);
    quant::hif8_fake_quant(cv, cv);
    split(ProfStage::Quant);
  }
  Tensor& oc = act(tape, "oc", "o", {B, n, H, D}, act_);
  if (training) {
    Tensor& lse = act(tape, "lse_c", "lse_c", {B, H, n}, DType::F32);
    ops::attention_forward_lse(cq.view({B, n, H, D}), ck.view({B, Lt, H, D}),
                               cv.view({B, Lt, H, D}), oc, lse);
  } else {
    ops::attention(cq.view({B, n, H, D}), ck.view({B, Lt, H, D}), cv.view({B, Lt, H, D}), oc);
  }
  split(ProfStage::CrossAttn);
  Tensor& yc = act(tape, "yc", "y", {B, n, d}, act_);
  const Tensor oc2 = oc.view({B, n, d});
  const LinIn coq = quant_input(oc2, tape ? "ocq" : "oq", tape);
  split(ProfStage::Quant);
  linear(coq, blk.cross_attn.o, yc);
  ops::add_gated_(x, yc, nullptr);
  lap(ProfStage::CrossAttn);
  if (tape) tape->t["x2"] = x.clone();

  // ---- FFN: x += Lin(gelu(Lin(LN(x)·(1 + scale2) + shift2))) · gate2
  Tensor& h2 = act(tape, "h2", "h", {B, n, d}, act_);
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = h2.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), mod(b, 3), mod(b, 4), eps, hb);
  }
  split(ProfStage::FFN);
  const LinIn fq = quant_input(h2, tape ? "h2q" : "hq", tape);
  split(ProfStage::Quant);
  Tensor& f1 = act(tape, "f1", "f1", {B, n, Fd}, act_);
  if (training) {  // keep the pre-activation for the GELU backward
    Tensor& f1p = act(tape, "f1_pre", "f1_pre", {B, n, Fd}, act_);
    linear(fq, blk.ffn0, f1p);
    ops::gelu_tanh(f1p, f1);
  } else {
    linear(fq, blk.ffn0, f1, ops::Act::GeluTanh);
  }
  split(ProfStage::FFN);
  const LinIn f1q = quant_input(f1, "f1q", tape);
  split(ProfStage::Quant);
  Tensor& y3 = act(tape, "y3", "y", {B, n, d}, act_);
  linear(f1q, blk.ffn2, y3);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), g = mod(b, 5);
    ops::add_gated_(xb, y3.select(0, b), &g);
  }
  lap(ProfStage::FFN);
}

// Backward of run_block from its tape (the steps of run_block in reverse; shapes as there).
// dx: dL/d(block output) [B, n, d] F32 in, dL/d(block input) out. de0 (+=) [B, 6, d] F32,
// dctx (+=) [B, Lt, d] F32 (dL/d of the k/v linears' input: the text context).
void DiT::block_backward(int i, const Tape& tp, Tensor& dx, Tensor& de0, Tensor& dctx,
                         dist::SequenceParallel& sp) {
  Block& blk = blocks_[size_t(i)];
  const Device dev = opt_.device;
  const int64_t B = dx.size(0), n = dx.size(1), d = cfg_.dim, H = cfg_.num_heads,
                D = cfg_.head_dim(), Lt = dctx.size(1), Fd = cfg_.ffn_dim;
  const float eps = cfg_.eps;
  const bool hif8 = opt_.quant == DiTQuant::HiF8;
  const DType F32 = DType::F32;
  auto T = [&](const char* name) -> const Tensor& { return tp.at(name); };
  auto gq224 = [&](Tensor& g) {  // HiF8 attention: dQ, dK, dV re-quantized (§5.7)
    if (hif8) quant::hif8_fake_quant(g, g, quant::kHiF8BackwardMax);
  };
  const Tensor& m = T("mod");
  auto mod = [&](int64_t b, int j) { return m.select(0, b).select(0, j); };
  Tensor dm = Tensor::zeros({B, 6, d}, F32, dev);  // dL/dm, m = modulation + e0[b]
  auto dmod = [&](int64_t b, int j) { return dm.select(0, b).select(0, j); };
  Tensor tmp = Tensor::empty({B, n, d}, F32, dev);
  const Tensor& ctx_in = train_.ctx_in_lin;

  // ---- FFN: x3 = x2 + y3·gate2, y3 = ffn2(gelu(ffn0(h2))), h2 = LN(x2)·(1 + scale2) + shift2
  Tensor dy = Tensor::empty({B, n, d}, act_, dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor dyb = dy.select(0, b), dg = dmod(b, 5);
    ops::add_gated_backward(dx.select(0, b), T("y3").select(0, b), mod(b, 5), dyb, &dg);
  }
  Tensor df1 = Tensor::empty({B, n, Fd}, F32, dev);
  linear_backward(blk.ffn2, T("f1q"), dy, &df1);
  Tensor df1p = Tensor::empty({B, n, Fd}, F32, dev);
  ops::gelu_tanh_backward(T("f1_pre"), df1, df1p);
  Tensor dh = Tensor::empty({B, n, d}, F32, dev);
  linear_backward(blk.ffn0, T("h2q"), df1p, &dh);
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = tmp.select(0, b), ds = dmod(b, 3), dc = dmod(b, 4);
    ops::layer_norm_modulate_backward(T("x2").select(0, b), mod(b, 4), eps, dh.select(0, b), tb,
                                      &ds, &dc);
  }
  ops::add_gated_(dx, tmp, nullptr);  // dx = dL/dx2

  // ---- cross-attention: x2 = x1 + o(attn(RMS(q(h3)), RMS(k(ctx)), v(ctx))), h3 = LN3(x1)
  Tensor doc = Tensor::empty({B, n, d}, act_, dev);
  linear_backward(blk.cross_attn.o, T("ocq"), dx, &doc);
  Tensor dcq = Tensor::empty({B, n, H, D}, act_, dev);
  Tensor dck = Tensor::empty({B, Lt, H, D}, act_, dev);
  Tensor dcv = Tensor::empty({B, Lt, H, D}, act_, dev);
  ops::attention_backward(T("cq").view({B, n, H, D}), T("ck").view({B, Lt, H, D}),
                          T("cv").view({B, Lt, H, D}), T("oc"), T("lse_c"),
                          doc.view({B, n, H, D}), dcq, dck, dcv);
  gq224(dcq);
  gq224(dck);
  gq224(dcv);
  Tensor dtc = Tensor::empty({B, Lt, d}, F32, dev);
  linear_backward(blk.cross_attn.v, ctx_in, dcv.view({B, Lt, d}), &dtc);
  ops::add_gated_(dctx, dtc, nullptr);
  Tensor dck0 = Tensor::empty({B, Lt, d}, F32, dev);
  if (cfg_.qk_norm)
    ops::rms_norm_backward(T("ck_pre"), blk.cross_attn.norm_k.v, eps, dck.view({B, Lt, d}), dck0,
                           &blk.cross_attn.norm_k.g);
  else
    dck0.copy_from(dck.view({B, Lt, d}));
  linear_backward(blk.cross_attn.k, ctx_in, dck0, &dtc);
  ops::add_gated_(dctx, dtc, nullptr);
  Tensor dcq0 = Tensor::empty({B, n, d}, F32, dev);
  if (cfg_.qk_norm)
    ops::rms_norm_backward(T("cq_pre"), blk.cross_attn.norm_q.v, eps, dcq.view({B, n, d}), dcq0,
                           &blk.cross_attn.norm_q.g);
  else
    dcq0.copy_from(dcq.view({B, n, d}));
  linear_backward(blk.cross_attn.q, T("h3q"), dcq0, &dh);  // dh = dL/dh3
  if (cfg_.cross_attn_norm) {
    ops::layer_norm_backward(T("x1"), &blk.norm3_w.v, eps, dh, tmp, &blk.norm3_w.g,
                             &blk.norm3_b.g);
    ops::add_gated_(dx, tmp, nullptr);
  } else {
    ops::add_gated_(dx, dh, nullptr);
  }  // dx = dL/dx1

  // ---- self-attention: x1 = x0 + o(attn(rope(RMS(q(h))), rope(RMS(k(h))), v(h)))·gate1
  for (int64_t b = 0; b < B; ++b) {
    Tensor dyb = dy.select(0, b), dg = dmod(b, 2);
    ops::add_gated_backward(dx.select(0, b), T("y").select(0, b), mod(b, 2), dyb, &dg);
  }
  Tensor dob = Tensor::empty({B, n, d}, act_, dev);
  linear_backward(blk.self_attn.o, T("oq"), dy, &dob);
  Tensor dqr = Tensor::empty({B, n, H, D}, act_, dev);
  Tensor dkr = Tensor::empty({B, n, H, D}, act_, dev);
  Tensor dv = Tensor::empty({B, n, H, D}, act_, dev);
  sp.self_attention_backward(i, T("qr"), T("kr"), T("v").view({B, n, H, D}), T("o"), T("lse"),
                             dob.view({B, n, H, D}), dqr, dkr, dv);
  gq224(dqr);
  gq224(dkr);
  gq224(dv);
  const Tensor& tab = sp.rope_table(i);
  const int64_t Rt = tab.size(0);
  const Shape rope_shape{B * Rt, n / Rt, H, D};
  Tensor dqn = Tensor::empty({B, n, d}, F32, dev), dkn = Tensor::empty({B, n, d}, F32, dev);
  {
    Tensor a = dqn.view(rope_shape), c = dkn.view(rope_shape);
    ops::rope_backward(dqr.view(rope_shape), tab, a);
    ops::rope_backward(dkr.view(rope_shape), tab, c);
  }
  Tensor dq0 = dqn, dk0 = dkn;
  if (cfg_.qk_norm) {
    dq0 = Tensor::empty({B, n, d}, F32, dev);
    dk0 = Tensor::empty({B, n, d}, F32, dev);
    ops::rms_norm_backward(T("q"), blk.self_attn.norm_q.v, eps, dqn, dq0, &blk.self_attn.norm_q.g);
    ops::rms_norm_backward(T("k"), blk.self_attn.norm_k.v, eps, dkn, dk0, &blk.self_attn.norm_k.g);
  }
  const Tensor& hq = T("hq");
  linear_backward(blk.self_attn.q, hq, dq0, &dh);  // dh = dL/dh, summed over q, k, v
  linear_backward(blk.self_attn.k, hq, dk0, &tmp);
  ops::add_gated_(dh, tmp, nullptr);
  linear_backward(blk.self_attn.v, hq, dv.view({B, n, d}), &tmp);
  ops::add_gated_(dh, tmp, nullptr);
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = tmp.select(0, b), ds = dmod(b, 0), dc = dmod(b, 1);
    ops::layer_norm_modulate_backward(T("x0").select(0, b), mod(b, 1), eps, dh.select(0, b), tb,
                                      &ds, &dc);
  }
  ops::add_gated_(dx, tmp, nullptr);  // dx = dL/dx0

  // m = modulation + e0[b]
  Tensor gm = blk.modulation.g.view({6 * d});
  ops::sum_rows(dm.view({B, 6 * d}), gm);
  ops::add_gated_(de0, dm, nullptr);
}

// ---------------------------------------------------------------- forward
Tensor DiT::forward(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                    dist::SequenceParallel& sp) {
  return forward_impl(x, t, context, sp, false);
}

Tensor DiT::forward_train(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                          dist::SequenceParallel& sp) {
  OSP_CHECK(opt_.train, "DiT::forward_train: the model was bound without DiTOptions::train");
  return forward_impl(x, t, context, sp, true);
}

Tensor DiT::forward_impl(const Tensor& x_in, const std::vector<float>& t, const Tensor& context,
                         dist::SequenceParallel& sp, bool training) {
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
  // Training records the activations of the embeddings and the head in train_.global.
  // An inference forward in between leaves a recorded training forward intact (it uses only
  // workspaces; backward sets the sequence-parallel plan up again).
  Tape* gt = nullptr;
  if (training) {
    train_ = TrainState{};
    train_.active = true;
    train_.batched = batched;
    train_.B = B, train_.Lc = Lc, train_.Fr = Fr, train_.Hl = Hl, train_.Wl = Wl;
    train_.grid = grid;
    train_.context_shape = context.shape();
    gt = &train_.global;
  }
  if (opt_.train && opt_.quant == DiTQuant::HiF8) refresh_quantized_weights();
  prof_.begin_forward();

  // (a) patch embedding: im2col + GEMM                               X [B, N, d]
  Tensor& patches = act(gt, "patches", "patches", {B, N, K}, act_);
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
  if (training) {  // keep the pre-activation for the SiLU backward
    Tensor ta = Tensor::empty({B, d}, DType::F32, dev);
    ops::linear(sinus, time0_.w, &time0_.b, ta);
    ops::silu(ta, e_a);
    gt->t["time_pre"] = ta;
  } else {
    ops::linear(sinus, time0_.w, &time0_.b, e_a, ops::Act::Silu);
  }
  ops::linear(e_a, time2_.w, &time2_.b, e);
  Tensor e_silu = Tensor::empty({B, d}, DType::F32, dev);
  ops::silu(e, e_silu);
  Tensor e0 = Tensor::empty({B, 6 * d}, DType::F32, dev);
  ops::linear(e_silu, time_proj_.w, &time_proj_.b, e0);
  Tensor e0_dev = e0.view({B, 6, d});
  if (training) {
    gt->t["sinus"] = sinus;
    gt->t["time_a"] = e_a;
    gt->t["e"] = e;
    gt->t["e_silu"] = e_silu;
    train_.e0 = e0_dev;
  }
  prof_.lap(ProfStage::TimeEmbed, none);

  // (c) text embedding: zero-pad to text_len, Lin → GELU → Lin      C [B, Lt, d]
  Tensor& ctx_in = act(gt, "ctx_in", "ctx_in", {B, Lt, c.text_dim}, act_);
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
  Tensor& c1 = act(gt, "ctx1", "ctx1", {B, Lt, d}, act_);
  Tensor& ctx = act(gt, "ctx", "ctx", {B, Lt, d}, act_);
  if (training) {  // keep the pre-activation for the GELU backward
    Tensor& c1p = act(gt, "ctx1_pre", "ctx1_pre", {B, Lt, d}, act_);
    linear(ctx_in, text0_, c1p);
    ops::gelu_tanh(c1p, c1);
  } else {
    linear(ctx_in, text0_, c1, ops::Act::GeluTanh);
  }
  linear(c1, text2_, ctx);
  const LinIn ctx_q = quant_input(ctx, "ctx_q", gt);  // HiF8/FP8: the k/v linears' input, once
  if (training) train_.ctx_in_lin = *ctx_q.x;
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
  if (training) train_.plan = plan;
  prof_.lap(ProfStage::SpSetup, none);
  Tensor x = sp.scatter_input(xfull);
  prof_.lap(ProfStage::ScatterInput, none);
  const bool ckpt = opt_.activation_checkpointing;
  if (training && ckpt) train_.block_in.resize(size_t(c.num_layers));
  if (training && !ckpt) train_.tapes.resize(size_t(c.num_layers));
  for (int i = 0; i < int(c.num_layers); ++i) {
    if (i > 0) x = sp.enter_block(i, x);
    if (!x.is_contiguous()) x = x.contiguous();
    if (i > 0)
      prof_.lap(ProfStage::EnterBlock,
                kinds_[size_t(i)] == BlockKind::Full ? ProfKind::Full : ProfKind::Sparse);
    if (!training) {
      run_block(i, x, ctx_q, e0_dev, sp);
    } else if (ckpt) {  // keep the input only; backward recomputes the block with a tape
      train_.block_in[size_t(i)] = x.clone();
      run_block(i, x, ctx_q, e0_dev, sp, nullptr, true);
    } else {
      run_block(i, x, ctx_q, e0_dev, sp, &train_.tapes[size_t(i)], true);
    }
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
      ops::axpby(1.f, head_modulation_.v.select(0, j), 1.f, e.select(0, b), hbj);
    }
  Tensor& hn = act(gt, "head_in", "head_in", {B, n_loc, d}, act_);
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = hn.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), hm_dev.select(0, b).select(0, 0),
                             hm_dev.select(0, b).select(0, 1), c.eps, hb);
  }
  if (training) {
    gt->t["head_mod"] = hm_dev;
    train_.x_last = x.clone();
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

// ---------------------------------------------------------------- backward
// The forward's steps in reverse: unpatchify → gather → head → blocks (each recomputed with a
// tape under activation checkpointing) with the layout adjoints between them → scatter → patch
// embedding; the time embedding gets dL/de0 (every block) + dL/de (head); the text embedding
// gets dL/dctx (every block's cross-attention k and v).
void DiT::backward(const Tensor& dv_in, dist::SequenceParallel& sp, Tensor* dx_out,
                   Tensor* dcontext_out) {
  OSP_CHECK(train_.active, "DiT::backward: no recorded forward (call forward_train first; each "
            "forward_train allows one backward)");
  const DiTConfig& c = cfg_;
  const Device dev = opt_.device;
  const DType F32 = DType::F32;
  const int64_t B = train_.B, d = c.dim, Lt = c.text_len, N = train_.grid.numel();
  const int64_t Kout = c.out_dim * c.patch_volume(), K = c.in_dim * c.patch_volume();
  const sparse::Grid grid = train_.grid;
  const Shape vshape{B, c.out_dim, train_.Fr, train_.Hl, train_.Wl};
  OSP_CHECK(dv_in.defined() && dv_in.numel() == shape_numel(vshape) &&
                dtype_is_float(dv_in.dtype()),
            "DiT::backward: dL/dv must be a float tensor with the forward output's shape ",
            shape_str(vshape), ", got ", dv_in.defined() ? dv_in.desc() : std::string("undefined"));
  sp.setup(train_.plan);  // cached when unchanged since forward_train
  const Tape& G = train_.global;
  auto Gt = [&](const char* name) -> const Tensor& { return G.at(name); };
  auto add_ = [](Tensor& acc, const Tensor& y) { ops::add_gated_(acc, y, nullptr); };

  // (f) unpatchify → (e) gather_output                               dyl [B, n_local, Kout]
  Tensor dv = Tensor::empty(vshape, F32, dev);
  dv.copy_from(dv_in.contiguous().view(vshape));
  Tensor dyh = Tensor::empty({B, N, Kout}, F32, dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor db = dyh.select(0, b);
    ops::unpatchify_backward(dv.select(0, b), grid.T, grid.H, grid.W, c.patch_t, c.patch_h,
                             c.patch_w, db);
  }
  Tensor dyl = sp.gather_output_backward(dyh).contiguous();
  // head: yl = Lin(LN(x)·(1 + scale) + shift), (shift, scale) = head.modulation + e
  const Tensor& hm = Gt("head_mod");
  const int64_t n_loc = train_.x_last.size(1);
  Tensor dhn = Tensor::empty({B, n_loc, d}, F32, dev);
  linear_backward(head_, Gt("head_in"), dyl, &dhn);
  Tensor dhm = Tensor::zeros({B, 2, d}, F32, dev);
  Tensor dx = Tensor::empty({B, n_loc, d}, F32, dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = dx.select(0, b), ds = dhm.select(0, b).select(0, 0),
           dc = dhm.select(0, b).select(0, 1);
    ops::layer_norm_modulate_backward(train_.x_last.select(0, b), hm.select(0, b).select(0, 1),
                                      c.eps, dhn.select(0, b), xb, &ds, &dc);
  }
  {
    Tensor g = head_modulation_.g.view({2 * d});
    ops::sum_rows(dhm.view({B, 2 * d}), g);
  }
  Tensor de = Tensor::zeros({B, d}, F32, dev);  // dL/de (head modulation; + time projection)
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < 2; ++j) {
      Tensor deb = de.select(0, b).view({1, d});
      add_(deb, dhm.select(0, b).select(0, j).view({1, d}));
    }
  train_.x_last = Tensor();

  // (d) blocks in reverse
  Tensor de0 = Tensor::zeros({B, 6, d}, F32, dev);
  Tensor dctx = Tensor::zeros({B, Lt, d}, F32, dev);
  const LinIn ctx_lin{&train_.ctx_in_lin, nullptr};
  const bool ckpt = !train_.block_in.empty();
  for (int i = int(c.num_layers) - 1; i >= 0; --i) {
    Tape tp;
    if (ckpt) {  // recompute block i from its saved input, recording the tape
      Tensor xr = train_.block_in[size_t(i)];
      run_block(i, xr, ctx_lin, train_.e0, sp, &tp, true);
      train_.block_in[size_t(i)] = Tensor();
    } else {
      tp = std::move(train_.tapes[size_t(i)]);
    }
    block_backward(i, tp, dx, de0, dctx, sp);
    if (i > 0) dx = sp.enter_block_backward(i, dx).contiguous();
  }
  Tensor dxfull = sp.scatter_input_backward(dx).contiguous();  //   [B, N, d] F32

  // (a) patch embedding (→ dL/dx through the im2col adjoint)
  Tensor dpatches;
  if (dx_out) dpatches = Tensor::empty({B, N, K}, F32, dev);
  linear_backward(patch_, Gt("patches"), dxfull, dx_out ? &dpatches : nullptr);
  if (dx_out) {
    Tensor dxs = Tensor::empty({B, c.in_dim, train_.Fr, train_.Hl, train_.Wl}, F32, dev);
    for (int64_t b = 0; b < B; ++b) {
      Tensor ob = dxs.select(0, b);
      ops::patchify_backward(dpatches.select(0, b), c.patch_t, c.patch_h, c.patch_w, ob);
    }
    *dx_out = train_.batched ? dxs : dxs.select(0, 0);
  }

  // (b) time embedding: e0 = proj(silu(e)), e = lin2(silu(lin0(sinus)))
  Tensor dsil = Tensor::empty({B, d}, F32, dev), tmp = Tensor::empty({B, d}, F32, dev);
  linear_backward(time_proj_, Gt("e_silu"), de0.view({B, 6 * d}), &dsil);
  ops::silu_backward(Gt("e"), dsil, tmp);
  add_(de, tmp);
  linear_backward(time2_, Gt("time_a"), de, &dsil);
  ops::silu_backward(Gt("time_pre"), dsil, tmp);
  linear_backward(time0_, Gt("sinus"), tmp, nullptr);

  // (c) text embedding: ctx = lin2(gelu(lin0(ctx_in))) (Q(ctx) in HiF8 is straight-through)
  Tensor dc1 = Tensor::empty({B, Lt, d}, F32, dev), dc1p = Tensor::empty({B, Lt, d}, F32, dev);
  linear_backward(text2_, Gt("ctx1"), dctx, &dc1);
  ops::gelu_tanh_backward(Gt("ctx1_pre"), dc1, dc1p);
  if (dcontext_out) {
    Tensor dci = Tensor::empty({B, Lt, c.text_dim}, F32, dev);
    linear_backward(text0_, Gt("ctx_in"), dc1p, &dci);
    Tensor dctx_u = dci.slice(1, 0, train_.Lc).contiguous();  // the unpadded rows
    *dcontext_out = dctx_u.view(train_.context_shape);
  } else {
    linear_backward(text0_, Gt("ctx_in"), dc1p, nullptr);
  }
  train_ = TrainState{};
}

}  // namespace osp::model
