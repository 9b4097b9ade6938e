// The DiT's layers: forward (shared by inference and training) and backward side by side.
#include "osp/model/dit_layers.h"

#include <cmath>

#include "osp/ops/backward.h"
#include "osp/quant/hif8.h"

namespace osp::model::layers {

using sparse::BlockKind;

// ---------------------------------------------------------------- context, tape, params
const Tensor& Tape::at(const std::string& name) const {
  auto it = t.find(name);
  OSP_CHECK(it != t.end() && it->second.defined(),
            "DiT: internal error: the forward tape has no activation '", name, "'");
  return it->second;
}

const Tensor* Tape::find(const std::string& name) const {
  auto it = t.find(name);
  return it != t.end() && it->second.defined() ? &it->second : nullptr;
}

void Tape::drop(std::initializer_list<const char*> names) {
  for (const char* n : names) {
    t.erase(n);
    t.erase(std::string(n) + ".f");
  }
}

Tensor& Ctx::scratch(const std::string& name, const Shape& shape, DType dt) {
  Tensor& t = (*ws)[name];
  if (!t.defined() || t.shape() != shape || t.dtype() != dt || t.device() != dev)
    t = Tensor::empty(shape, dt, dev);
  return t;
}

Tensor& Ctx::buf(const std::string& name, const std::string& ws_name, const Shape& shape,
                 DType dt) {
  if (!tape) return scratch(ws_name, shape, dt);
  Tensor& t = tape->t[name];
  t = Tensor::empty(shape, dt, dev);
  return t;
}

void ParamSink::add(const std::string& name, Tensor& value, Tensor& grad) {
  // An absent parameter (no qk norm, an FP8 linear's float weight) has neither; a value released
  // between uses (weight sharding, transient weights) still counts while its gradient exists.
  if (!value.defined() && !(with_grads && grad.defined())) return;
  out.push_back(ParamRef{name, shapes.at(name), &value, with_grads ? &grad : nullptr});
}

// None: x itself. HiF8: Q(x, 15) into a workspace (or the tape). FP8: the E4M3 operand (plus
// Q(x, 15) when some linear falls back to the fake-quant GEMM).
LinIn quant_input(Ctx& c, const Tensor& x, const std::string& name) {
  LinIn in;
  in.x = &x;
  in.xf = &x;
  if (c.quant == DiTQuant::None) {
    if (c.tape) c.tape->t[name] = x;
    return in;
  }
  // The float input may be a reused workspace: the LoRA backward gets its own copy.
  if (c.tape && c.lora_inputs) c.tape->t[name + ".f"] = x.clone();
  if (c.quant == DiTQuant::HiF8 || c.fp8_fallback) {
    Tensor& q = c.buf(name, name, x.shape(), x.dtype());
    quant::hif8_fake_quant(x, q);
    in.x = &q;
  }
  if (c.quant == DiTQuant::FP8) {
    quant::Fp8Tensor& q8 = (*c.ws8)[name];
    quant::hif8_quantize_e4m3(x, q8);
    in.xq = &q8;
  }
  return in;
}

// ---------------------------------------------------------------- Linear
void Linear::refresh_quantized_weight(Device dev) {
  if (!wfq.defined() || wfq.shape() != w.shape() || wfq.dtype() != w.dtype())
    wfq = Tensor::empty(w.shape(), w.dtype(), dev);
  quant::hif8_fake_quant(w, wfq);  // Q(W, 15) of the current weight
}

void Linear::params(ParamSink& s, const std::string& prefix) {
  s.add(prefix + ".weight", w, gw);
  s.add(prefix + ".bias", b, gb);
}

size_t Linear::bytes() const {
  size_t n = 0;
  for (const Tensor* t : {&w, &b, &wfq, &wq.codes, &wq.scale_inv})
    if (t->defined()) n += t->nbytes();
  return n;
}

namespace {
// y += s·t (F32 directly; other dtypes through an F32 copy).
void add_scaled(Tensor& y, float s, const Tensor& t) {
  if (y.dtype() == DType::F32 && t.dtype() == DType::F32) {
    ops::axpby(1.f, y, s, t, y);
    return;
  }
  Tensor yf = y.to(DType::F32), tf = t.to(DType::F32);
  ops::axpby(1.f, yf, s, tf, yf);
  y.copy_from(yf);
}

// The activation a LoRA linear cannot fuse into its GEMM (the branch is added before it).
void apply_act(Tensor& y, ops::Act act) {
  if (act == ops::Act::None) return;
  const Tensor pre = y.clone();
  if (act == ops::Act::GeluTanh)
    ops::gelu_tanh(pre, y);
  else if (act == ops::Act::Silu)
    ops::silu(pre, y);
  else
    fail("DiT: a LoRA linear cannot apply this fused activation");
}
}  // namespace

// ---------------------------------------------------------------- LoRA branch
void LoraBranch::forward(const Tensor& x, Tensor& y) const {
  const DType dt = A.dtype();
  const Tensor xin = x.dtype() == dt ? x : x.to(dt);
  Shape us = x.shape();
  us.back() = A.size(0);
  Tensor u = Tensor::empty(us, dt, A.device());  //   u = x·Aᵀ       [..., r]
  ops::linear(xin, A, nullptr, u);
  Tensor t = Tensor::empty(y.shape(), dt, A.device());  //   t = u·Bᵀ       [..., out]
  ops::linear(u, B, nullptr, t);
  add_scaled(y, scale, t);  //   y += s·t
}

void LoraBranch::backward(const Tensor& x, const Tensor& dy, Tensor* dx) {
  const DType dt = A.dtype();
  const Device dev = A.device();
  const Tensor xin = x.dtype() == dt ? x : x.to(dt);
  Shape us = x.shape();
  us.back() = A.size(0);
  Tensor u = Tensor::empty(us, dt, dev);  // recomputed u = x·Aᵀ
  ops::linear(xin, A, nullptr, u);
  Tensor dys = Tensor::empty(dy.shape(), DType::F32, dev);  // s·dy
  const Tensor dyf = dy.dtype() == DType::F32 ? dy : dy.to(DType::F32);
  ops::axpby(scale, dyf, 0.f, dyf, dys);
  const Tensor dyg = dt == DType::F32 ? dys : dys.to(dt);
  Tensor du = Tensor::empty(us, dt == DType::F32 ? DType::F32 : dt, dev);
  ops::linear_backward(u, B, dyg, &du, gB.defined() ? &gB : nullptr, nullptr);  // du, gB
  if (!dx && !gA.defined()) return;
  Tensor dxl;
  if (dx) dxl = Tensor::empty(x.shape(), DType::F32, dev);
  ops::linear_backward(xin, A, du, dx ? &dxl : nullptr, gA.defined() ? &gA : nullptr, nullptr);
  if (dx) add_scaled(*dx, 1.f, dxl);
}

void Linear::forward(const Tensor& x, Tensor& out, ops::Act act) const {
  const bool lo = lora.active();
  ops::linear(x, weight(), &b, out, lo ? ops::Act::None : act);
  if (lo) {
    lora.forward(x, out);
    apply_act(out, act);
  }
}

void Linear::forward(const LinIn& in, Tensor& out, ops::Act act) const {
  const bool lo = lora.active();
  const ops::Act base_act = lo ? ops::Act::None : act;
  if (fp8()) {
    OSP_CHECK(in.xq != nullptr, "DiT: internal error: FP8 linear called without an FP8 input");
    quant::fp8_linear(*in.xq, wq, &b, out, {}, base_act);
  } else {
    ops::linear(*in.x, weight(), &b, out, base_act);
  }
  if (lo) {
    lora.forward(in.lora_x(), out);
    apply_act(out, act);
  }
}

void Linear::backward(const Ctx& c, const Tensor& x, const Tensor& dy, Tensor* dx,
                      const Tensor* xf) {
  Tensor g;  // G in the GEMM's dtype: Q(dy, 224) for HiF8 block linears (§5.6), else dy
  if (block && c.hif8_qat()) {
    g = Tensor::empty(dy.shape(), x.dtype(), c.dev);
    quant::hif8_fake_quant(dy, g, quant::kHiF8BackwardMax);
  } else {
    g = dy.dtype() == x.dtype() ? dy : dy.to(x.dtype());
  }
  ops::linear_backward(x, weight(), g, dx, gw.defined() ? &gw : nullptr,
                       gb.defined() ? &gb : nullptr);
  if (lora.active()) lora.backward(xf ? *xf : x, dy, dx);
}

// ---------------------------------------------------------------- self-attention
void SelfAttention::params(ParamSink& s, const std::string& p) {
  q.params(s, p + "q");
  k.params(s, p + "k");
  v.params(s, p + "v");
  o.params(s, p + "o");
  s.add(p + "norm_q.weight", norm_q);
  s.add(p + "norm_k.weight", norm_k);
}

size_t SelfAttention::bytes() const {
  size_t n = q.bytes() + k.bytes() + v.bytes() + o.bytes();
  for (const Tensor* t : {&norm_q.v, &norm_k.v})
    if (t->defined()) n += t->nbytes();
  return n;
}

void SelfAttention::forward(Ctx& c, const DiTConfig& cfg, int i, const Tensor& h, Tensor& y,
                            parallel::SequenceParallel& sp) const {
  const int64_t B = h.size(0), n = h.size(1), d = cfg.dim, H = cfg.num_heads, D = cfg.head_dim();
  const bool hif8 = c.quant != DiTQuant::None;  // HiF8 or FP8: Q(·, 15) on q, k, v
  const LinIn hq = quant_input(c, h, "hq");
  c.split(ProfStage::Quant);
  Tensor& qo = c.buf("q", "q", {B, n, d}, c.act);
  Tensor& ko = c.buf("k", "k", {B, n, d}, c.act);
  Tensor& vo = c.buf("v", "v", {B, n, d}, c.act);
  q.forward(hq, qo);
  k.forward(hq, ko);
  v.forward(hq, vo);
  c.lap(ProfStage::QKV);
  // q, k = RoPE(RMS(q)·g) (fp32 math, the norm over all d), with this rank's table
  // [Rt, n/Rt, D/2, 2] on q, k viewed [B·Rt, n/Rt, H, D]                 [B, n, H, D] act
  const Tensor& tab = sp.rope_table(i);
  OSP_CHECK(tab.dim() == 4 && tab.size(0) >= 1 && n % tab.size(0) == 0 &&
                tab.size(1) == n / tab.size(0) && tab.size(2) == D / 2,
            "DiT block ", i, ": RoPE table ", tab.desc(), " does not fit hidden rows ", n,
            " and head dim ", D);
  const int64_t Rt = tab.size(0);
  const Shape rope_shape{B * Rt, n / Rt, H, D};
  Tensor& qr = c.buf("qr", "qr", {B, n, H, D}, c.act);
  Tensor& kr = c.buf("kr", "kr", {B, n, H, D}, c.act);
  {
    Tensor qrv = qr.view(rope_shape), krv = kr.view(rope_shape);
    if (cfg.qk_norm) {
      ops::rms_norm_rope(qo.view(rope_shape), norm_q.v, cfg.eps, tab, qrv);
      ops::rms_norm_rope(ko.view(rope_shape), norm_k.v, cfg.eps, tab, krv);
    } else {
      ops::rope(qo.view(rope_shape), tab, qrv);
      ops::rope(ko.view(rope_shape), tab, krv);
    }
  }
  c.lap(ProfStage::NormRope);
  Tensor vh = vo.view({B, n, H, D});
  // FP8 attention quantizes q/k/v itself (the same Q(·, 15) values, as E4M3 codes).
  const bool fp8_attn = c.quant == DiTQuant::FP8 && c.fp8_attention && c.dev.is_cuda();
  if (hif8 && !fp8_attn) {  // the attention's inputs (recorded as such in the tape)
    quant::hif8_fake_quant(qr, qr);
    quant::hif8_fake_quant(kr, kr);
    quant::hif8_fake_quant(vh, vh);
    c.lap(ProfStage::Quant);
  }
  // (a handle: with attn_keep it may be a kept tensor instead of the tape's or workspace's)
  Tensor out;
  static const parallel::AttentionFn fp8_fn = [](const Tensor& aq, const Tensor& ak, const Tensor& av,
                                             Tensor& aout, const ops::AttentionArgs& a) {
    quant::hif8_attention_fp8(aq, ak, av, aout, a);
  };
  Tape* kept = c.training ? c.attn_keep : nullptr;
  if (kept && kept->find("o")) {  // checkpoint recompute: the forward's results
    out = kept->t.at("o");
    Tensor lse = kept->t.at("lse");
    OSP_CHECK(out.shape() == Shape({B, n, H, D}) && lse.shape() == Shape({B, H, n}),
              "DiT block ", i, ": the kept self-attention output ", out.desc(), " / lse ",
              lse.desc(), " do not match this recompute's [", B, ", ", n, ", ", H, ", ", D, "]");
    if (c.tape) c.tape->t["o"] = out, c.tape->t["lse"] = lse;
    kept->t.clear();
  } else if (c.training) {
    // Kept for the recompute, the results must outlive the workspaces: fresh tensors (a tape's
    // tensors are fresh anyway).
    auto result = [&](const char* name, const Shape& s, DType dt) {
      return kept && !c.tape ? Tensor::empty(s, dt, c.dev) : c.buf(name, name, s, dt);
    };
    out = result("o", {B, n, H, D}, c.act);
    Tensor lse = result("lse", {B, H, n}, DType::F32);
    sp.self_attention_train(i, qr, kr, vh, out, lse);
    c.lap(ProfStage::SelfAttn);
    if (kept) kept->t["o"] = out, kept->t["lse"] = lse;
  } else if (!c.prof->enabled()) {
    out = c.buf("o", "o", {B, n, H, D}, c.act);
    sp.self_attention(i, qr, kr, vh, out, fp8_attn ? fp8_fn : parallel::AttentionFn());
  } else {
    // Profiling: laps around the attention kernel itself split it from the sequence-parallel
    // layer's own work (Ulysses all-to-alls, layout copies) without touching parallel/.
    out = c.buf("o", "o", {B, n, H, D}, c.act);
    const parallel::AttentionFn& core = fp8_attn ? fp8_fn : parallel::default_attention();
    const parallel::AttentionFn timed = [&](const Tensor& aq, const Tensor& ak, const Tensor& av,
                                        Tensor& aout, const ops::AttentionArgs& a) {
      c.lap(ProfStage::SelfAttnComm);
      core(aq, ak, av, aout, a);
      c.lap(ProfStage::SelfAttn);
    };
    sp.self_attention(i, qr, kr, vh, out, timed);
    c.lap(ProfStage::SelfAttnComm);
  }
  const Tensor o2 = out.view({B, n, d});
  const LinIn oq = quant_input(c, o2, "oq");
  c.split(ProfStage::Quant);
  o.forward(oq, y);
}

void SelfAttention::backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, int i,
                             const Tensor& dy, Tensor& dh, parallel::SequenceParallel& sp) {
  const int64_t B = dy.size(0), n = dy.size(1), d = cfg.dim, H = cfg.num_heads,
                D = cfg.head_dim();
  const DType F32 = DType::F32;
  Tensor dob = Tensor::empty({B, n, d}, c.act, c.dev);
  o.backward(c, tp.at("oq"), dy, &dob, tp.find("oq.f"));
  c.lap(ProfStage::BwdOProj);
  Tensor dqr = Tensor::empty({B, n, H, D}, c.act, c.dev);
  Tensor dkr = Tensor::empty({B, n, H, D}, c.act, c.dev);
  Tensor dvh = Tensor::empty({B, n, H, D}, c.act, c.dev);
  sp.self_attention_backward(i, tp.at("qr"), tp.at("kr"), tp.at("v").view({B, n, H, D}),
                             tp.at("o"), tp.at("lse"), dob.view({B, n, H, D}), dqr, dkr, dvh);
  if (c.hif8_qat()) {  // dQ, dK, dV re-quantized (§5.7)
    for (Tensor* g : {&dqr, &dkr, &dvh}) quant::hif8_fake_quant(*g, *g, quant::kHiF8BackwardMax);
  }
  c.lap(ProfStage::BwdSelfAttn);
  const Tensor& tab = sp.rope_table(i);
  const Shape rope_shape{B * tab.size(0), n / tab.size(0), H, D};
  // dL/d(linear outputs) go straight into the dtype the q/k backward GEMMs read (same bits).
  Tensor dqn = Tensor::empty({B, n, d}, cfg.qk_norm ? F32 : q.grad_dtype(c), c.dev);
  Tensor dkn = Tensor::empty({B, n, d}, cfg.qk_norm ? F32 : k.grad_dtype(c), c.dev);
  {
    Tensor a = dqn.view(rope_shape), b = dkn.view(rope_shape);
    ops::rope_backward(dqr.view(rope_shape), tab, a);
    ops::rope_backward(dkr.view(rope_shape), tab, b);
  }
  Tensor dq = dqn, dk = dkn;  // dL/d(linear outputs)
  if (cfg.qk_norm) {
    dq = Tensor::empty({B, n, d}, q.grad_dtype(c), c.dev);
    dk = Tensor::empty({B, n, d}, k.grad_dtype(c), c.dev);
    ops::rms_norm_backward(tp.at("q"), norm_q.v, cfg.eps, dqn, dq, norm_q.grad());
    ops::rms_norm_backward(tp.at("k"), norm_k.v, cfg.eps, dkn, dk, norm_k.grad());
  }
  c.lap(ProfStage::BwdNormRope);
  const Tensor& hq = tp.at("hq");
  const Tensor* hqf = tp.find("hq.f");
  Tensor tmp = Tensor::empty({B, n, d}, F32, c.dev);
  q.backward(c, hq, dq, &dh, hqf);  // dh = Σ over q, k, v
  k.backward(c, hq, dk, &tmp, hqf);
  ops::add_gated_(dh, tmp, nullptr);
  v.backward(c, hq, dvh.view({B, n, d}), &tmp, hqf);
  ops::add_gated_(dh, tmp, nullptr);
  c.lap(ProfStage::BwdQKV);
}

// ---------------------------------------------------------------- cross-attention
void CrossAttention::params(ParamSink& s, const std::string& p) {
  q.params(s, p + "q");
  k.params(s, p + "k");
  v.params(s, p + "v");
  o.params(s, p + "o");
  s.add(p + "norm_q.weight", norm_q);
  s.add(p + "norm_k.weight", norm_k);
}

size_t CrossAttention::bytes() const {
  size_t n = q.bytes() + k.bytes() + v.bytes() + o.bytes();
  for (const Tensor* t : {&norm_q.v, &norm_k.v})
    if (t->defined()) n += t->nbytes();
  return n;
}

void CrossAttention::forward(Ctx& c, const DiTConfig& cfg, const Tensor& h3, const LinIn& ctx,
                             Tensor& y) const {
  const int64_t B = h3.size(0), n = h3.size(1), d = cfg.dim, H = cfg.num_heads,
                D = cfg.head_dim(), Lt = ctx.x->size(1);
  const LinIn h3q = quant_input(c, h3, "h3q");
  c.split(ProfStage::Quant);
  Tensor& cq0 = c.buf("cq_pre", "q", {B, n, d}, c.act);
  q.forward(h3q, cq0);
  Tensor& cq = c.buf("cq", "cq", {B, n, d}, c.act);
  Tensor& ck0 = c.buf("ck_pre", "ck0", {B, Lt, d}, c.act);
  Tensor& ck = c.buf("ck", "ck", {B, Lt, d}, c.act);
  Tensor& cv = c.buf("cv", "cv", {B, Lt, d}, c.act);
  k.forward(ctx, ck0);
  v.forward(ctx, cv);
  if (cfg.qk_norm) {
    ops::rms_norm(cq0, norm_q.v, cfg.eps, cq);
    ops::rms_norm(ck0, norm_k.v, cfg.eps, ck);
  } else {
    cq.copy_from(cq0);
    ck.copy_from(ck0);
  }
  if (c.quant != DiTQuant::None) {
    c.split(ProfStage::CrossAttn);
    quant::hif8_fake_quant(cq, cq);
    quant::hif8_fake_quant(ck, ck);
    quant::hif8_fake_quant(cv, cv);
    c.split(ProfStage::Quant);
  }
  Tensor& oc = c.buf("oc", "o", {B, n, H, D}, c.act);
  if (c.training) {
    Tensor& lse = c.buf("lse_c", "lse_c", {B, H, n}, DType::F32);
    ops::attention_forward_lse(cq.view({B, n, H, D}), ck.view({B, Lt, H, D}),
                               cv.view({B, Lt, H, D}), oc, lse);
  } else {
    ops::attention(cq.view({B, n, H, D}), ck.view({B, Lt, H, D}), cv.view({B, Lt, H, D}), oc);
  }
  c.split(ProfStage::CrossAttn);
  const Tensor oc2 = oc.view({B, n, d});
  const LinIn coq = quant_input(c, oc2, c.tape ? "ocq" : "oq");
  c.split(ProfStage::Quant);
  o.forward(coq, y);
}

void CrossAttention::backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg,
                              const LinIn& ctxin, const Tensor& dy, Tensor& dh3, Tensor& dctx) {
  const Tensor& ctx = *ctxin.x;
  const int64_t B = dy.size(0), n = dy.size(1), d = cfg.dim, H = cfg.num_heads,
                D = cfg.head_dim(), Lt = dctx.size(1);
  const DType F32 = DType::F32;
  Tensor doc = Tensor::empty({B, n, d}, c.act, c.dev);
  o.backward(c, tp.at("ocq"), dy, &doc, tp.find("ocq.f"));
  Tensor dcq = Tensor::empty({B, n, H, D}, c.act, c.dev);
  Tensor dck = Tensor::empty({B, Lt, H, D}, c.act, c.dev);
  Tensor dcv = Tensor::empty({B, Lt, H, D}, c.act, c.dev);
  ops::attention_backward(tp.at("cq").view({B, n, H, D}), tp.at("ck").view({B, Lt, H, D}),
                          tp.at("cv").view({B, Lt, H, D}), tp.at("oc"), tp.at("lse_c"),
                          doc.view({B, n, H, D}), dcq, dck, dcv);
  if (c.hif8_qat()) {
    for (Tensor* g : {&dcq, &dck, &dcv}) quant::hif8_fake_quant(*g, *g, quant::kHiF8BackwardMax);
  }
  Tensor dtc = Tensor::empty({B, Lt, d}, F32, c.dev);
  v.backward(c, ctx, dcv.view({B, Lt, d}), &dtc, ctxin.xf);
  ops::add_gated_(dctx, dtc, nullptr);
  Tensor dck0 = Tensor::empty({B, Lt, d}, k.grad_dtype(c), c.dev);
  if (cfg.qk_norm)
    ops::rms_norm_backward(tp.at("ck_pre"), norm_k.v, cfg.eps, dck.view({B, Lt, d}), dck0,
                           norm_k.grad());
  else
    dck0.copy_from(dck.view({B, Lt, d}));
  k.backward(c, ctx, dck0, &dtc, ctxin.xf);
  ops::add_gated_(dctx, dtc, nullptr);
  Tensor dcq0 = Tensor::empty({B, n, d}, q.grad_dtype(c), c.dev);
  if (cfg.qk_norm)
    ops::rms_norm_backward(tp.at("cq_pre"), norm_q.v, cfg.eps, dcq.view({B, n, d}), dcq0,
                           norm_q.grad());
  else
    dcq0.copy_from(dcq.view({B, n, d}));
  q.backward(c, tp.at("h3q"), dcq0, &dh3, tp.find("h3q.f"));
}

// ---------------------------------------------------------------- FFN
void FFN::params(ParamSink& s, const std::string& p) {
  fc1.params(s, p + "0");
  fc2.params(s, p + "2");
}

size_t FFN::bytes() const { return fc1.bytes() + fc2.bytes(); }

// The FFN's rows in `chunks` contiguous pieces of row_chunk(rows, chunks) = ⌈rows / chunks⌉ rows
// (the chunk buffers' size): for_row_chunks calls f(r0, r1) for each.
namespace {
int64_t row_chunk(int64_t rows, int chunks) { return (rows + chunks - 1) / chunks; }
template <typename F>
void for_row_chunks(int64_t rows, int chunks, F&& f) {
  const int64_t step = row_chunk(rows, chunks);
  for (int64_t r0 = 0; r0 < rows; r0 += step) f(r0, std::min(rows, r0 + step));
}
}  // namespace

void FFN::forward(Ctx& c, const DiTConfig& cfg, const Tensor& h, Tensor& y) const {
  const int64_t B = h.size(0), n = h.size(1);
  if (c.tape && c.ffn_chunks > 1) {
    // Chunked (training, unquantised): the tape keeps h only ("h2q"); fc1 + GELU + fc2 per row
    // chunk through one chunk's [rows, ffn] buffers. FFN::backward recomputes fc1 + GELU.
    OSP_CHECK(c.quant == DiTQuant::None, "FFN: row chunks need unquantised training");
    c.tape->t["h2q"] = h;
    const int64_t R = B * n, d = h.size(2), step = row_chunk(R, c.ffn_chunks);
    const Tensor hv = h.view({R, d});
    Tensor yv = y.view({R, d});
    Tensor f1p = Tensor::empty({step, cfg.ffn_dim}, c.act, c.dev);
    Tensor f1 = Tensor::empty({step, cfg.ffn_dim}, c.act, c.dev);
    for_row_chunks(R, c.ffn_chunks, [&](int64_t r0, int64_t r1) {
      Tensor p = f1p.slice(0, 0, r1 - r0), g = f1.slice(0, 0, r1 - r0), yc = yv.slice(0, r0, r1);
      fc1.forward(hv.slice(0, r0, r1), p);
      ops::gelu_tanh(p, g);
      fc2.forward(g, yc);
    });
    return;
  }
  const LinIn fq = quant_input(c, h, c.tape ? "h2q" : "hq");
  c.split(ProfStage::Quant);
  Tensor& f1 = c.linear_input("f1", "f1", {B, n, cfg.ffn_dim}, c.act);
  if (c.training) {  // keep the pre-activation for the GELU backward
    Tensor& f1p = c.buf("f1_pre", "f1_pre", {B, n, cfg.ffn_dim}, c.act);
    fc1.forward(fq, f1p);
    ops::gelu_tanh(f1p, f1);
  } else {
    fc1.forward(fq, f1, ops::Act::GeluTanh);
  }
  c.split(ProfStage::FFN);
  const LinIn f1q = quant_input(c, f1, "f1q");
  c.split(ProfStage::Quant);
  fc2.forward(f1q, y);
}

void FFN::backward(const Ctx& c, const Tape& tp, const Tensor& dy, Tensor& dh) {
  if (!tp.find("f1_pre")) {  // the forward ran in row chunks (Ctx::ffn_chunks): recompute them
    OSP_CHECK(c.ffn_chunks > 1, "FFN::backward: the tape has no fc1 activation and ffn_chunks is ", c.ffn_chunks);
    const Tensor& h = tp.at("h2q");
    const int64_t d = h.size(2), R = h.size(0) * h.size(1), F = fc1.w.size(0);  // w [ffn, d]
    const int64_t step = row_chunk(R, c.ffn_chunks);
    const Tensor hv = h.view({R, d}), dyv = dy.view({R, d});
    Tensor dhv = dh.view({R, d});
    Tensor f1p = Tensor::empty({step, F}, c.act, c.dev), f1 = Tensor::empty({step, F}, c.act, c.dev);
    Tensor df1 = Tensor::empty({step, F}, c.act, c.dev), df1p = Tensor::empty({step, F}, fc1.grad_dtype(c), c.dev);
    for_row_chunks(R, c.ffn_chunks, [&](int64_t r0, int64_t r1) {
      const int64_t m = r1 - r0;
      Tensor p = f1p.slice(0, 0, m), g = f1.slice(0, 0, m), dg = df1.slice(0, 0, m), dp = df1p.slice(0, 0, m);
      const Tensor hc = hv.slice(0, r0, r1);
      fc1.forward(hc, p);
      ops::gelu_tanh(p, g);
      fc2.backward(c, g, dyv.slice(0, r0, r1), &dg);
      ops::gelu_tanh_backward(p, dg, dp);
      Tensor dhc = dhv.slice(0, r0, r1);
      fc1.backward(c, hc, dp, &dhc);
    });
    return;
  }
  const Tensor& f1p = tp.at("f1_pre");
  // dL/d(GELU output) in the activation dtype (bf16 on CUDA, as autocast keeps it; F32 on the
  // CPU), dL/d(fc1 output) in what fc1's backward reads: two [n, ffn] buffers, the block's largest.
  Tensor df1 = Tensor::empty(f1p.shape(), c.act, c.dev);
  fc2.backward(c, tp.at("f1q"), dy, &df1, tp.find("f1q.f"));
  Tensor df1p = Tensor::empty(f1p.shape(), fc1.grad_dtype(c), c.dev);
  ops::gelu_tanh_backward(f1p, df1, df1p);
  fc1.backward(c, tp.at("h2q"), df1p, &dh, tp.find("h2q.f"));
}

// ---------------------------------------------------------------- block
void Block::params(ParamSink& s, const std::string& p) {
  s.add(p + "modulation", modulation);
  self_attn.params(s, p + "self_attn.");
  cross_attn.params(s, p + "cross_attn.");
  s.add(p + "norm3.weight", norm3_w);
  s.add(p + "norm3.bias", norm3_b);
  ffn.params(s, p + "ffn.");
}

std::vector<Tensor*> Block::weight_tensors() {
  std::vector<Tensor*> v{&modulation.v, &norm3_w.v, &norm3_b.v};
  for (Param* p : {&self_attn.norm_q, &self_attn.norm_k, &cross_attn.norm_q, &cross_attn.norm_k}) v.push_back(&p->v);
  for (Linear* l : linears())
    for (Tensor* t : {&l->w, &l->b, &l->wq.codes, &l->wq.scale_inv}) v.push_back(t);
  return v;
}

size_t Block::bytes() const {
  size_t n = self_attn.bytes() + cross_attn.bytes() + ffn.bytes();
  for (const Tensor* t : {&modulation.v, &norm3_w.v, &norm3_b.v})
    if (t->defined()) n += t->nbytes();
  return n;
}

std::vector<std::pair<std::string, Linear*>> Block::named_linears() {
  return {{"self_attn.q", &self_attn.q},   {"self_attn.k", &self_attn.k},
          {"self_attn.v", &self_attn.v},   {"self_attn.o", &self_attn.o},
          {"cross_attn.q", &cross_attn.q}, {"cross_attn.k", &cross_attn.k},
          {"cross_attn.v", &cross_attn.v}, {"cross_attn.o", &cross_attn.o},
          {"ffn.0", &ffn.fc1},             {"ffn.2", &ffn.fc2}};
}

std::vector<Linear*> Block::linears() {
  return {&self_attn.q,  &self_attn.k,  &self_attn.v,  &self_attn.o, &cross_attn.q,
          &cross_attn.k, &cross_attn.v, &cross_attn.o, &ffn.fc1,     &ffn.fc2};
}

void Block::forward(Ctx& c, const DiTConfig& cfg, int i, Tensor& x, const LinIn& ctx,
                    const Tensor& e0, parallel::SequenceParallel& sp) const {
  const int64_t B = x.size(0), n = x.size(1), d = cfg.dim;
  const float eps = cfg.eps;
  OSP_CHECK(x.dim() == 3 && x.size(2) == d && x.dtype() == DType::F32 && x.is_contiguous(),
            "DiT block ", i, ": the sequence-parallel layer returned hidden ", x.desc(),
            ", expected a contiguous f32 [B, n, ", d, "]");
  if (c.tape) c.tape->t["x0"] = x.clone();  // the block input (LN backward)

  // m = modulation + e0[b]: [B, 6, d] F32 → shift1, scale1, gate1, shift2, scale2, gate2
  Tensor& m = c.buf("mod", "mod", {B, 6, d}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    Tensor mb = m.select(0, b);
    ops::axpby(1.f, modulation.v, 1.f, e0.select(0, b), mb);
  }
  auto mod = [&](int64_t b, int j) { return m.select(0, b).select(0, j); };

  // ---- x += SelfAttn(LN(x)·(1 + scale1) + shift1) · gate1
  Tensor& h = c.linear_input("h", "h", {B, n, d}, c.act);
  const bool round0 = i == 0 && c.act == DType::BF16;  // block 0: x is still bf16 in the reference
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = h.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), mod(b, 0), mod(b, 1), eps, hb, round0);
  }
  c.lap(ProfStage::ModNorm);
  Tensor& y = c.buf("y", "y", {B, n, d}, c.act);
  self_attn.forward(c, cfg, i, h, y, sp);
  // x += y·gate1 and h3 = LN3(x) in one pass (ops::add_gated_layer_norm_)
  Tensor& h3 = c.linear_input("h3", "h3", {B, n, d}, c.act);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), g = mod(b, 2), h3b = h3.select(0, b);
    if (cfg.cross_attn_norm)
      ops::add_gated_layer_norm_(xb, y.select(0, b), &g, &norm3_w.v, &norm3_b.v, eps, h3b);
    else
      ops::add_gated_(xb, y.select(0, b), &g);
  }
  if (!cfg.cross_attn_norm) h3.copy_from(x);
  c.lap(ProfStage::OProj);
  if (c.tape) c.tape->t["x1"] = x.clone();

  // ---- x += CrossAttn(LN3(x), ctx)   (no modulation, no gate)
  Tensor& yc = c.scratch(c.tape ? "yc" : "y", {B, n, d}, c.act);  // no gate: not needed
  cross_attn.forward(c, cfg, h3, ctx, yc);
  // x += yc and h2 = LN(x)·(1 + scale2) + shift2 in one pass
  Tensor& h2 = c.linear_input("h2", "h", {B, n, d}, c.act);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), hb = h2.select(0, b);
    ops::add_gated_layer_norm_modulate_(xb, yc.select(0, b), nullptr, mod(b, 3), mod(b, 4), eps, hb);
  }
  c.lap(ProfStage::CrossAttn);
  if (c.tape) c.tape->t["x2"] = x.clone();

  // ---- x += FFN(h2) · gate2
  Tensor& y3 = c.buf("y3", "y", {B, n, d}, c.act);
  ffn.forward(c, cfg, h2, y3);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = x.select(0, b), g = mod(b, 5);
    ops::add_gated_(xb, y3.select(0, b), &g);
  }
  c.lap(ProfStage::FFN);
}

void Block::backward(const Ctx& c, Tape& tp, const DiTConfig& cfg, int i,
                     const LinIn& ctx, Tensor& dx, Tensor& de0, Tensor& dctx,
                     parallel::SequenceParallel& sp) {
  const int64_t B = dx.size(0), n = dx.size(1), d = cfg.dim;
  const float eps = cfg.eps;
  const DType F32 = DType::F32;
  const Tensor& m = tp.at("mod");
  auto mod = [&](int64_t b, int j) { return m.select(0, b).select(0, j); };
  Tensor dm = Tensor::zeros({B, 6, d}, F32, c.dev);  // dL/dm
  auto dmod = [&](int64_t b, int j) { return dm.select(0, b).select(0, j); };
  Tensor dy = Tensor::empty({B, n, d}, c.act, c.dev);
  Tensor dh = Tensor::empty({B, n, d}, F32, c.dev);
  Tensor tmp = Tensor::empty({B, n, d}, F32, c.dev);

  // ---- FFN: x3 = x2 + y3·gate2, y3 = FFN(h2), h2 = LN(x2)·(1 + scale2) + shift2
  for (int64_t b = 0; b < B; ++b) {
    Tensor dyb = dy.select(0, b), dg = dmod(b, 5);
    ops::add_gated_backward(dx.select(0, b), tp.at("y3").select(0, b), mod(b, 5), dyb, &dg);
  }
  ffn.backward(c, tp, dy, dh);
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = tmp.select(0, b), ds = dmod(b, 3), dc = dmod(b, 4);
    ops::layer_norm_modulate_backward(tp.at("x2").select(0, b), mod(b, 4), eps, dh.select(0, b),
                                      tb, &ds, &dc);
  }
  ops::add_gated_(dx, tmp, nullptr);  // dx = dL/dx2
  tp.drop({"h2", "h2q", "f1_pre", "f1", "f1q", "y3", "x2"});  // the FFN's part of the tape is done
  c.lap(ProfStage::BwdFFN);

  // ---- cross-attention: x2 = x1 + CrossAttn(h3, ctx), h3 = LN3(x1)
  cross_attn.backward(c, tp, cfg, ctx, dx, dh, dctx);
  if (cfg.cross_attn_norm) {
    ops::layer_norm_backward(tp.at("x1"), &norm3_w.v, eps, dh, tmp, norm3_w.grad(),
                             norm3_b.grad());
    ops::add_gated_(dx, tmp, nullptr);
  } else {
    ops::add_gated_(dx, dh, nullptr);
  }  // dx = dL/dx1
  tp.drop({"h3", "h3q", "cq_pre", "cq", "ck_pre", "ck", "cv", "oc", "lse_c", "ocq", "x1"});  // cross-attention's
  c.lap(ProfStage::BwdCrossAttn);

  // ---- self-attention: x1 = x0 + SelfAttn(h)·gate1, h = LN(x0)·(1 + scale1) + shift1
  for (int64_t b = 0; b < B; ++b) {
    Tensor dyb = dy.select(0, b), dg = dmod(b, 2);
    ops::add_gated_backward(dx.select(0, b), tp.at("y").select(0, b), mod(b, 2), dyb, &dg);
  }
  self_attn.backward(c, tp, cfg, i, dy, dh, sp);
  for (int64_t b = 0; b < B; ++b) {
    Tensor tb = tmp.select(0, b), ds = dmod(b, 0), dc = dmod(b, 1);
    ops::layer_norm_modulate_backward(tp.at("x0").select(0, b), mod(b, 1), eps, dh.select(0, b),
                                      tb, &ds, &dc);
  }
  ops::add_gated_(dx, tmp, nullptr);  // dx = dL/dx0

  // m = modulation + e0[b]
  if (modulation.g.defined()) {
    Tensor gm = modulation.g.view({6 * d});
    ops::sum_rows(dm.view({B, 6 * d}), gm);
  }
  ops::add_gated_(de0, dm, nullptr);
  c.lap(ProfStage::BwdModNorm);
}

// ---------------------------------------------------------------- time embedding
void TimeEmbedding::params(ParamSink& s) {
  fc1.params(s, "time_embedding.0");
  fc2.params(s, "time_embedding.2");
  proj.params(s, "time_projection.1");
}

size_t TimeEmbedding::bytes() const { return fc1.bytes() + fc2.bytes() + proj.bytes(); }

Tensor time_sinusoid(const DiTConfig& cfg, const std::vector<float>& t) {
  const int64_t B = int64_t(t.size()), half = cfg.freq_dim / 2;
  Tensor sinus = Tensor::empty({B, cfg.freq_dim}, DType::F32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < half; ++k) {
      const double arg = double(t[size_t(b)]) * std::pow(10000.0, -double(k) / double(half));
      sinus.data<float>()[b * cfg.freq_dim + k] = float(std::cos(arg));
      sinus.data<float>()[b * cfg.freq_dim + half + k] = float(std::sin(arg));
    }
  return sinus;
}

void TimeEmbedding::forward(Ctx& c, const DiTConfig& cfg, const Tensor& sinus_in, Tensor& e,
                            Tensor& e0) const {
  const int64_t B = sinus_in.size(0), d = cfg.dim;
  const Tensor sinus = sinus_in.to(c.dev);
  Tensor e_a = Tensor::empty({B, d}, DType::F32, c.dev);
  e = Tensor::empty({B, d}, DType::F32, c.dev);
  if (c.training) {  // keep the pre-activation for the SiLU backward
    Tensor ta = Tensor::empty({B, d}, DType::F32, c.dev);
    fc1.forward(sinus, ta);
    ops::silu(ta, e_a);
    if (c.tape) c.tape->t["time_pre"] = ta;
  } else {
    fc1.forward(sinus, e_a, ops::Act::Silu);
  }
  fc2.forward(e_a, e);
  Tensor e_silu = Tensor::empty({B, d}, DType::F32, c.dev);
  ops::silu(e, e_silu);
  Tensor e0f = Tensor::empty({B, 6 * d}, DType::F32, c.dev);
  proj.forward(e_silu, e0f);
  e0 = e0f.view({B, 6, d});
  if (c.tape) {
    c.tape->t["sinus"] = sinus;
    c.tape->t["time_a"] = e_a;
    c.tape->t["e"] = e;
    c.tape->t["e_silu"] = e_silu;
  }
}

void TimeEmbedding::backward(const Ctx& c, const Tape& tp, Tensor& de, const Tensor& de0) {
  const int64_t B = de.size(0), d = de.size(1);
  Tensor dsil = Tensor::empty({B, d}, DType::F32, c.dev), tmp = Tensor::empty({B, d}, DType::F32, c.dev);
  proj.backward(c, tp.at("e_silu"), de0.view({B, 6 * d}), &dsil);
  ops::silu_backward(tp.at("e"), dsil, tmp);
  ops::add_gated_(de, tmp, nullptr);
  fc2.backward(c, tp.at("time_a"), de, &dsil);
  ops::silu_backward(tp.at("time_pre"), dsil, tmp);
  fc1.backward(c, tp.at("sinus"), tmp, nullptr);
}

// ---------------------------------------------------------------- text embedding
void TextEmbedding::params(ParamSink& s) {
  fc1.params(s, "text_embedding.0");
  fc2.params(s, "text_embedding.2");
}

size_t TextEmbedding::bytes() const { return fc1.bytes() + fc2.bytes(); }

void TextEmbedding::forward(Ctx& c, const DiTConfig& cfg, const Tensor& context,
                            Tensor& out) const {
  const int64_t B = context.size(0), Lc = context.size(1), Lt = cfg.text_len, d = cfg.dim;
  Tensor& ctx_in = c.buf("ctx_in", "ctx_in", {B, Lt, cfg.text_dim}, c.act);
  {  // zero-padded to text_len, assembled on the model's device
    const Tensor cd = Lc > 0 ? context.to(c.dev) : Tensor();
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
  Tensor& c1 = c.buf("ctx1", "ctx1", {B, Lt, d}, c.act);
  if (c.training) {  // keep the pre-activation for the GELU backward
    Tensor& c1p = c.buf("ctx1_pre", "ctx1_pre", {B, Lt, d}, c.act);
    fc1.forward(ctx_in, c1p);
    ops::gelu_tanh(c1p, c1);
  } else {
    fc1.forward(ctx_in, c1, ops::Act::GeluTanh);
  }
  fc2.forward(c1, out);
}

void TextEmbedding::backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, int64_t Lc,
                             const Tensor& dctx, Tensor* dcontext) {
  const int64_t B = dctx.size(0), Lt = dctx.size(1), d = dctx.size(2);
  Tensor dc1 = Tensor::empty({B, Lt, d}, DType::F32, c.dev);
  Tensor dc1p = Tensor::empty({B, Lt, d}, DType::F32, c.dev);
  fc2.backward(c, tp.at("ctx1"), dctx, &dc1);
  ops::gelu_tanh_backward(tp.at("ctx1_pre"), dc1, dc1p);
  if (!dcontext) {
    fc1.backward(c, tp.at("ctx_in"), dc1p, nullptr);
    return;
  }
  Tensor dci = Tensor::empty({B, Lt, cfg.text_dim}, DType::F32, c.dev);
  fc1.backward(c, tp.at("ctx_in"), dc1p, &dci);
  *dcontext = dci.slice(1, 0, Lc).contiguous();  // the unpadded rows
}

// ---------------------------------------------------------------- patch embedding
void PatchEmbedding::params(ParamSink& s) { proj.params(s, "patch_embedding"); }

size_t PatchEmbedding::bytes() const { return proj.bytes(); }

void PatchEmbedding::forward(Ctx& c, const DiTConfig& cfg, const Tensor& x5,
                             const sparse::Grid& grid, Tensor& out) const {
  const int64_t B = x5.size(0), N = grid.numel(), K = cfg.in_dim * cfg.patch_volume();
  Tensor& patches = c.buf("patches", "patches", {B, N, K}, c.act);
  for (int64_t b = 0; b < B; ++b) {
    Tensor z = x5.select(0, b).contiguous().to(c.dev);
    z = z.to(c.act);  // F32 on the CPU; bf16 on CUDA (the reference's bf16 conv input)
    Tensor pb = patches.select(0, b);
    ops::patchify(z, cfg.patch_t, cfg.patch_h, cfg.patch_w, pb);
  }
  proj.forward(patches, out);
}

void PatchEmbedding::backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg,
                              const Tensor& dtok, Tensor* dx, const Shape& xshape) {
  const Tensor& patches = tp.at("patches");
  if (!dx) {
    proj.backward(c, patches, dtok, nullptr);
    return;
  }
  Tensor dpatches = Tensor::empty(patches.shape(), DType::F32, c.dev);
  proj.backward(c, patches, dtok, &dpatches);
  *dx = Tensor::empty(xshape, DType::F32, c.dev);
  for (int64_t b = 0; b < xshape[0]; ++b) {
    Tensor ob = dx->select(0, b);
    ops::patchify_backward(dpatches.select(0, b), cfg.patch_t, cfg.patch_h, cfg.patch_w, ob);
  }
}

// ---------------------------------------------------------------- head
void Head::params(ParamSink& s) {
  s.add("head.modulation", modulation);
  proj.params(s, "head.head");
}

size_t Head::bytes() const { return proj.bytes() + (modulation.v.defined() ? modulation.v.nbytes() : 0); }

void Head::forward(Ctx& c, const DiTConfig& cfg, const Tensor& x, const Tensor& e,
                   Tensor& y) const {
  const int64_t B = x.size(0), n = x.size(1), d = cfg.dim;
  Tensor hm = Tensor::empty({B, 2, d}, DType::F32, c.dev);  // (shift, scale) per sample
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < 2; ++j) {
      Tensor hbj = hm.select(0, b).select(0, j);
      ops::axpby(1.f, modulation.v.select(0, j), 1.f, e.select(0, b), hbj);
    }
  Tensor& hn = c.buf("head_in", "head_in", {B, n, d}, c.act);
  for (int64_t b = 0; b < B; ++b) {
    Tensor hb = hn.select(0, b);
    ops::layer_norm_modulate(x.select(0, b), hm.select(0, b).select(0, 0),
                             hm.select(0, b).select(0, 1), cfg.eps, hb);
  }
  if (c.tape) c.tape->t["head_mod"] = hm;
  proj.forward(hn, y);
}

void Head::backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, const Tensor& x,
                    const Tensor& dy, Tensor& dx, Tensor& de) {
  const int64_t B = x.size(0), n = x.size(1), d = cfg.dim;
  const Tensor& hm = tp.at("head_mod");
  Tensor dhn = Tensor::empty({B, n, d}, DType::F32, c.dev);
  proj.backward(c, tp.at("head_in"), dy, &dhn);
  Tensor dhm = Tensor::zeros({B, 2, d}, DType::F32, c.dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor xb = dx.select(0, b), ds = dhm.select(0, b).select(0, 0),
           dc = dhm.select(0, b).select(0, 1);
    ops::layer_norm_modulate_backward(x.select(0, b), hm.select(0, b).select(0, 1), cfg.eps,
                                      dhn.select(0, b), xb, &ds, &dc);
  }
  if (modulation.g.defined()) {
    Tensor g = modulation.g.view({2 * d});
    ops::sum_rows(dhm.view({B, 2 * d}), g);
  }
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < 2; ++j) {
      Tensor deb = de.select(0, b).view({1, d});
      ops::add_gated_(deb, dhm.select(0, b).select(0, j).view({1, d}), nullptr);
    }
}

}  // namespace osp::model::layers
