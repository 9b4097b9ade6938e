// The op dispatcher: validates shapes, dtypes and devices with actionable messages, then calls
// the CPU reference (ops/cpu/) or, for CUDA tensors in a CUDA build, the CUDA backend.
#include "osp/ops/ops.h"

#include <algorithm>
#include <string>

#include "osp/ops/cpu/cpu_ops.h"
#include "osp/ops/op_checks.h"
#ifdef OSP_HAVE_CUDA
#include "osp/ops/cuda/cuda_ops.h"
#endif

namespace osp::ops {
using namespace detail;

// ---------------------------------------------------------------- GEMM
void linear(const Tensor& x0, const Tensor& w0, const Tensor* bias0, Tensor& out, Act act) {
  const char* op = "ops::linear";
  check_defined(x0, op, "x");
  check_defined(w0, op, "w");
  check_out(out, op);
  OSP_CHECK(x0.dim() >= 1, op, ": x must have at least one dim, got ", x0.desc());
  OSP_CHECK(w0.dim() == 2, op, ": w must be [N, K], got ", w0.desc());
  const int64_t K = x0.size(-1), N = w0.size(0);
  OSP_CHECK(w0.size(1) == K, op, ": x has K = ", K, " (", x0.desc(), ") but w is ", w0.desc(),
            " (expected [N, ", K, "])");
  Shape os = x0.shape();
  os.back() = N;
  OSP_CHECK(out.shape() == os, op, ": out must have shape ", shape_str(os), ", got ",
            shape_str(out.shape()));
  check_device(x0, w0, op, "w");
  check_device(x0, out, op, "out");
  if (bias0) {
    check_defined(*bias0, op, "bias");
    check_device(x0, *bias0, op, "bias");
    OSP_CHECK(bias0->dim() == 1 && bias0->size(0) == N, op, ": bias must be [", N, "], got ",
              bias0->desc());
  }
  check_no_alias(x0, out, op, "x");
  Tensor x = x0.contiguous(), w = w0.contiguous();
  Tensor bias;
  if (bias0) bias = bias0->contiguous();
  const Tensor* bp = bias0 ? &bias : nullptr;
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    if (x.dtype() == DType::F32 && w.dtype() == DType::F32) {
      const int64_t M = x.numel() / std::max<int64_t>(K, 1);
      OSP_CHECK(M <= 256, op, ": CUDA f32 linear is for small layers (at most 256 rows), got x ",
                x.desc(), "; use bf16 operands for large GEMMs");
      if (bp) check_f32(*bp, op, "bias");
      check_f32(out, op, "out");
      cuda::linear_f32_rows(x, w, bp, out, act);
      return;
    }
    OSP_CHECK(x.dtype() == DType::BF16 && w.dtype() == DType::BF16, op,
              ": CUDA linear takes bf16 x and w (or all-f32 operands for at most 256 rows), got x ",
              x.desc(), ", w ", w.desc());
    if (bp) check_f32_or_bf16(*bp, op, "bias");
    check_f32_or_bf16(out, op, "out");
    cuda::linear(x, w, bp, out, act);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(w, op, "w");
  if (bp) check_f32(*bp, op, "bias");
  check_f32(out, op, "out");
  cpu::linear(x, w, bp, out, act);
}

// ---------------------------------------------------------------- norms
void layer_norm(const Tensor& x0, const Tensor* w, const Tensor* b, float eps, Tensor& out) {
  const char* op = "ops::layer_norm";
  check_defined(x0, op, "x");
  check_out(out, op);
  OSP_CHECK(x0.dim() >= 1 && x0.size(-1) > 0, op, ": x must have a non-empty last dim, got ",
            x0.desc());
  check_same_shape(x0, out, op, "out");
  check_device(x0, out, op, "out");
  OSP_CHECK((w == nullptr) == (b == nullptr), op,
            ": pass both weight and bias, or neither (no affine)");
  OSP_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  const int64_t C = x0.size(-1);
  if (w) {
    check_vec(*w, C, x0, op, "weight");
    check_vec(*b, C, x0, op, "bias");
  }
  Tensor x = x0.contiguous();
  Tensor wc, bc;
  if (w) wc = w->contiguous(), bc = b->contiguous();
  const Tensor* wp = w ? &wc : nullptr;
  const Tensor* bp = b ? &bc : nullptr;
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(x, op, "x");
    check_f32_or_bf16(out, op, "out");
    cuda::layer_norm(x, wp, bp, eps, out);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(out, op, "out");
  cpu::layer_norm(x, wp, bp, eps, out);
}

void layer_norm_modulate(const Tensor& x0, const Tensor& shift, const Tensor& scale, float eps,
                         Tensor& out, bool round_ln_to_bf16) {
  const char* op = "ops::layer_norm_modulate";
  check_defined(x0, op, "x");
  check_out(out, op);
  OSP_CHECK(x0.dim() >= 1 && x0.size(-1) > 0, op, ": x must have a non-empty last dim, got ",
            x0.desc());
  check_same_shape(x0, out, op, "out");
  check_device(x0, out, op, "out");
  OSP_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  const int64_t C = x0.size(-1);
  check_vec(shift, C, x0, op, "shift");
  check_vec(scale, C, x0, op, "scale");
  Tensor x = x0.contiguous(), sh = shift.contiguous(), sc = scale.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(x, op, "x");
    check_f32_or_bf16(out, op, "out");
    cuda::layer_norm_modulate(x, sh, sc, eps, out, round_ln_to_bf16);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(out, op, "out");
  cpu::layer_norm_modulate(x, sh, sc, eps, out, round_ln_to_bf16);
}

void rms_norm(const Tensor& x0, const Tensor& w, float eps, Tensor& out) {
  const char* op = "ops::rms_norm";
  check_defined(x0, op, "x");
  check_out(out, op);
  OSP_CHECK(x0.dim() >= 1 && x0.size(-1) > 0, op, ": x must have a non-empty last dim, got ",
            x0.desc());
  check_same_shape(x0, out, op, "out");
  check_device(x0, out, op, "out");
  OSP_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  check_vec(w, x0.size(-1), x0, op, "weight");
  Tensor x = x0.contiguous(), wc = w.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(x, op, "x");
    check_f32_or_bf16(out, op, "out");
    cuda::rms_norm(x, wc, eps, out);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(out, op, "out");
  cpu::rms_norm(x, wc, eps, out);
}

// ---------------------------------------------------------------- elementwise
namespace {
template <typename CpuFn, typename CudaFn>
void unary(const char* op, const Tensor& x0, Tensor& out, CpuFn cpu_fn, CudaFn cuda_fn) {
  check_defined(x0, op, "x");
  check_out(out, op);
  check_same_shape(x0, out, op, "out");
  check_device(x0, out, op, "out");
  Tensor x = x0.contiguous();
  if (x.storage() == out.storage() && x.raw() != out.raw()) check_no_alias(x, out, op, "x");
  if (on_cuda(x, op)) {
    check_f32_or_bf16(x, op, "x");
    check_f32_or_bf16(out, op, "out");
    cuda_fn(x, out);
    return;
  }
  check_f32(x, op, "x");
  check_f32(out, op, "out");
  cpu_fn(x, out);
}
}  // namespace

void gelu_tanh(const Tensor& x, Tensor& out) {
  unary("ops::gelu_tanh", x, out, [](const Tensor& a, Tensor& o) { cpu::gelu_tanh(a, o); },
        [](const Tensor& a, Tensor& o) {
#ifdef OSP_HAVE_CUDA
          cuda::gelu_tanh(a, o);
#endif
        });
}

void silu(const Tensor& x, Tensor& out) {
  unary("ops::silu", x, out, [](const Tensor& a, Tensor& o) { cpu::silu(a, o); },
        [](const Tensor& a, Tensor& o) {
#ifdef OSP_HAVE_CUDA
          cuda::silu(a, o);
#endif
        });
}

void add_gated_(Tensor& x, const Tensor& y0, const Tensor* gate) {
  const char* op = "ops::add_gated_";
  check_defined(x, op, "x");
  check_defined(y0, op, "y");
  OSP_CHECK(x.is_contiguous(), op, ": x (updated in place) must be contiguous, got ", x.desc());
  check_same_shape(x, y0, op, "y");
  check_device(x, y0, op, "y");
  OSP_CHECK(x.dim() >= 1, op, ": x must have at least one dim");
  if (gate) check_vec(*gate, x.size(-1), x, op, "gate");
  check_no_alias(y0, x, op, "y");
  Tensor y = y0.contiguous();
  Tensor g;
  if (gate) g = gate->contiguous();
  const Tensor* gp = gate ? &g : nullptr;
  OSP_CHECK(x.dtype() == DType::F32, op, ": x (the residual stream) must be f32, got ", x.desc());
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(y, op, "y");
    cuda::add_gated_(x, y, gp);
#endif
    return;
  }
  check_f32(y, op, "y");
  cpu::add_gated_(x, y, gp);
}

void axpby(float a, const Tensor& x0, float b, const Tensor& y0, Tensor& out) {
  const char* op = "ops::axpby";
  check_defined(x0, op, "x");
  check_defined(y0, op, "y");
  check_out(out, op);
  check_same_shape(x0, y0, op, "y");
  check_same_shape(x0, out, op, "out");
  check_device(x0, y0, op, "y");
  check_device(x0, out, op, "out");
  OSP_CHECK(x0.dtype() == DType::F32 && y0.dtype() == DType::F32 && out.dtype() == DType::F32,
            op, ": x, y and out must be f32, got ", x0.desc(), ", ", y0.desc(), ", ", out.desc());
  Tensor x = x0.contiguous(), y = y0.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    cuda::axpby(a, x, b, y, out);
#endif
    return;
  }
  cpu::axpby(a, x, b, y, out);
}

// ---------------------------------------------------------------- RoPE
void rope(const Tensor& x0, const Tensor& cs0, Tensor& out) {
  const char* op = "ops::rope";
  check_defined(x0, op, "x");
  check_defined(cs0, op, "cos_sin");
  check_out(out, op);
  check_rope_table(x0, "x", cs0, op);
  check_same_shape(x0, out, op, "out");
  check_device(x0, cs0, op, "cos_sin");
  check_device(x0, out, op, "out");
  Tensor x = x0.contiguous(), cs = cs0.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(x, op, "x");
    check_f32_or_bf16(out, op, "out");
    cuda::rope(x, cs, out);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(out, op, "out");
  cpu::rope(x, cs, out);
}

// ---------------------------------------------------------------- fused norms
void rms_norm_rope(const Tensor& x0, const Tensor& w, float eps, const Tensor& cs0, Tensor& out) {
  const char* op = "ops::rms_norm_rope";
  check_defined(x0, op, "x");
  check_defined(cs0, op, "cos_sin");
  check_out(out, op);
  check_rope_table(x0, "x", cs0, op);
  check_same_shape(x0, out, op, "out");
  check_device(x0, cs0, op, "cos_sin");
  check_device(x0, out, op, "out");
  check_no_alias(x0, out, op, "x");
  OSP_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  const int64_t C = x0.size(2) * x0.size(3);
  check_vec(w, C, x0, op, "weight");
  Tensor x = x0.contiguous(), cs = cs0.contiguous(), wc = w.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(x, op, "x");
    check_f32_or_bf16(out, op, "out");
    cuda::rms_norm_rope(x, wc, eps, cs, out);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(out, op, "out");
  Tensor t = Tensor::empty(x.shape(), DType::F32, x.device());
  Tensor tv = t.view({-1, C});
  cpu::rms_norm(x.view({-1, C}), wc, eps, tv);
  cpu::rope(t, cs, out);
}

namespace {
// add_gated_layer_norm_ (mode 0) and add_gated_layer_norm_modulate_ (mode 1).
void add_gated_norm(const char* op, Tensor& x, const Tensor& y0, const Tensor* gate, int mode,
                    const Tensor* w, const Tensor* b, const Tensor* shift, const Tensor* scale,
                    float eps, Tensor& out) {
  check_defined(x, op, "x");
  check_defined(y0, op, "y");
  check_out(out, op);
  OSP_CHECK(x.is_contiguous(), op, ": x (updated in place) must be contiguous, got ", x.desc());
  OSP_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": x must have a non-empty last dim, got ", x.desc());
  OSP_CHECK(x.dtype() == DType::F32, op, ": x (the residual stream) must be f32, got ", x.desc());
  check_same_shape(x, y0, op, "y");
  check_same_shape(x, out, op, "out");
  check_device(x, y0, op, "y");
  check_device(x, out, op, "out");
  check_no_alias(y0, x, op, "y");
  check_no_alias(x, out, op, "out");
  OSP_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  OSP_CHECK((w == nullptr) == (b == nullptr), op, ": pass both weight and bias, or neither (no affine)");
  const int64_t C = x.size(-1);
  Tensor y = y0.contiguous(), g, wc, bc, shc, scc;
  if (gate) check_vec(*gate, C, x, op, "gate"), g = gate->contiguous();
  if (w) check_vec(*w, C, x, op, "weight"), check_vec(*b, C, x, op, "bias"), wc = w->contiguous(), bc = b->contiguous();
  if (mode == 1) check_vec(*shift, C, x, op, "shift"), check_vec(*scale, C, x, op, "scale"),
                 shc = shift->contiguous(), scc = scale->contiguous();
  const Tensor* gp = gate ? &g : nullptr;
  const Tensor* wp = w ? &wc : nullptr;
  const Tensor* bp = b ? &bc : nullptr;
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(y, op, "y");
    check_f32_or_bf16(out, op, "out");
    if (mode == 0) cuda::add_gated_layer_norm_(x, y, gp, wp, bp, eps, out);
    else cuda::add_gated_layer_norm_modulate_(x, y, gp, shc, scc, eps, out);
#endif
    return;
  }
  check_f32(y, op, "y");
  check_f32(out, op, "out");
  cpu::add_gated_(x, y, gp);
  if (mode == 0) cpu::layer_norm(x, wp, bp, eps, out);
  else cpu::layer_norm_modulate(x, shc, scc, eps, out, false);
}
}  // namespace

void add_gated_layer_norm_(Tensor& x, const Tensor& y, const Tensor* gate, const Tensor* w,
                           const Tensor* b, float eps, Tensor& out) {
  add_gated_norm("ops::add_gated_layer_norm_", x, y, gate, 0, w, b, nullptr, nullptr, eps, out);
}

void add_gated_layer_norm_modulate_(Tensor& x, const Tensor& y, const Tensor* gate,
                                    const Tensor& shift, const Tensor& scale, float eps, Tensor& out) {
  add_gated_norm("ops::add_gated_layer_norm_modulate_", x, y, gate, 1, nullptr, nullptr, &shift,
                 &scale, eps, out);
}

// ---------------------------------------------------------------- attention
void attention(const Tensor& q0, const Tensor& k0, const Tensor& v0, Tensor& out,
               const AttentionArgs& args) {
  const char* op = "ops::attention";
  check_defined(q0, op, "q");
  check_defined(k0, op, "k");
  check_defined(v0, op, "v");
  check_out(out, op);
  OSP_CHECK(q0.dim() == 4, op, ": q must be [B, Lq, H, D], got ", q0.desc());
  OSP_CHECK(k0.dim() == 4, op, ": k must be [B, Lk, H, D], got ", k0.desc());
  const int64_t B = q0.size(0), Lq = q0.size(1), H = q0.size(2), D = q0.size(3);
  const int64_t Lk = k0.size(1);
  OSP_CHECK(k0.size(0) == B && k0.size(2) == H && k0.size(3) == D, op, ": k must be [", B,
            ", Lk, ", H, ", ", D, "] to match q ", shape_str(q0.shape()), ", got ",
            shape_str(k0.shape()));
  OSP_CHECK(Lk >= 1 && D >= 1, op, ": empty keys or head dim (k ", k0.desc(), ")");
  check_same_shape(k0, v0, op, "v");
  check_same_shape(q0, out, op, "out");
  check_device(q0, k0, op, "k");
  check_device(q0, v0, op, "v");
  check_device(q0, out, op, "out");
  check_no_alias(q0, out, op, "q");
  check_no_alias(k0, out, op, "k");
  check_no_alias(v0, out, op, "v");
  OSP_CHECK(args.scale >= 0, op, ": scale must be >= 0 (0 means 1/sqrt(D)), got ", args.scale);
  Tensor bias;
  AttentionArgs a = args;
  if (args.bias) {
    check_defined(*args.bias, op, "bias");
    check_shape(*args.bias, {H, Lq, Lk}, "ops::attention: bias");
    check_device(q0, *args.bias, op, "bias");
    OSP_CHECK(args.bias->dtype() == DType::F32, op, ": bias must be f32, got ",
              args.bias->desc());
    bias = args.bias->contiguous();
    a.bias = &bias;
  }
  Tensor kvl, ql;
  for (int i = 0; i < 2; ++i) {
    const Tensor* lens = i == 0 ? args.kv_lens : args.q_lens;
    const char* what = i == 0 ? "kv_lens" : "q_lens";
    if (!lens) continue;
    check_defined(*lens, op, what);
    OSP_CHECK(lens->dtype() == DType::I32 && lens->dim() == 1 && lens->size(0) == B, op, ": ",
              what, " must be i32 [", B, "], got ", lens->desc());
    OSP_CHECK(lens->device().is_cpu(), op, ": ", what,
              " must be a CPU (host) tensor, got ", lens->desc());
    Tensor c = lens->contiguous();
    const int32_t* p = c.data<int32_t>();
    const int64_t lim = i == 0 ? Lk : Lq;
    for (int64_t b = 0; b < B; ++b)
      OSP_CHECK(p[b] >= 0 && p[b] <= lim, op, ": ", what, "[", b, "] = ", p[b],
                " is outside [0, ", lim, "]");
    (i == 0 ? kvl : ql) = c;
    (i == 0 ? a.kv_lens : a.q_lens) = i == 0 ? &kvl : &ql;
  }
  Tensor q = q0.contiguous(), k = k0.contiguous(), v = v0.contiguous();
  if (args.seq_lens) {
    // Packed sequences: one attention per (sample, sequence) on contiguous row ranges.
    const Tensor& sl = *args.seq_lens;
    check_defined(sl, op, "seq_lens");
    OSP_CHECK(sl.dtype() == DType::I32 && sl.dim() == 1 && sl.size(0) >= 1 && sl.device().is_cpu(),
              op, ": seq_lens must be a host i32 [R] tensor, got ", sl.desc());
    OSP_CHECK(!args.bias && !args.kv_lens && !args.q_lens, op,
              ": seq_lens (packed sequences) cannot be combined with bias, kv_lens or q_lens");
    OSP_CHECK(Lq == Lk, op, ": packed sequences need Lq == Lk (self-attention), got q ", q0.desc(),
              " and k ", k0.desc());
    const Tensor slc = sl.contiguous();
    const int32_t* lp = slc.data<int32_t>();
    int64_t total = 0;
    for (int64_t r = 0; r < slc.size(0); ++r) {
      OSP_CHECK(lp[r] >= 0, op, ": seq_lens[", r, "] = ", lp[r], " is negative");
      total += lp[r];
    }
    OSP_CHECK(total == Lq, op, ": seq_lens sum to ", total, " but each sample has ", Lq,
              " rows (q ", q0.desc(), ")");
    AttentionArgs one;
    one.scale = args.scale;
    const int64_t R = slc.size(0);
    if (Lq % R == 0 && std::all_of(lp, lp + R, [&](int32_t n) { return n == Lq / R; })) {
      // Equal lengths: one batched call on [B·R, L/R, H, D].
      const Shape sub{B * R, Lq / R, H, D};
      Tensor ov = out.view(sub);
      attention(q.view(sub), k.view(sub), v.view(sub), ov, one);
      return;
    }
    for (int64_t b = 0; b < B; ++b) {
      int64_t off = 0;
      for (int64_t r = 0; r < slc.size(0); ++r) {
        const int64_t n = lp[r];
        if (n == 0) continue;
        auto rows = [&](const Tensor& t) { return t.select(0, b).slice(0, off, off + n).unsqueeze(0); };
        Tensor ob = rows(out);
        attention(rows(q), rows(k), rows(v), ob, one);
        off += n;
      }
    }
    return;
  }
  if (on_cuda(q, op)) {
#ifdef OSP_HAVE_CUDA
    OSP_CHECK(q.dtype() == DType::BF16 && k.dtype() == DType::BF16 && v.dtype() == DType::BF16 &&
                  out.dtype() == DType::BF16,
              op, ": CUDA attention takes and returns bf16, got q ", q.desc(), ", k ", k.desc(),
              ", v ", v.desc(), ", out ", out.desc());
    OSP_CHECK(D == 64 || D == 128, op, ": CUDA attention supports head dim 64 or 128, got ", D);
    cuda::attention(q, k, v, out, a);
#endif
    return;
  }
  check_f32(q, op, "q");
  check_f32(k, op, "k");
  check_f32(v, op, "v");
  check_f32(out, op, "out");
  cpu::attention(q, k, v, out, a);
}

// ---------------------------------------------------------------- data movement
void gather_rows(const Tensor& src0, const Tensor& index0, Tensor& out) {
  const char* op = "ops::gather_rows";
  check_defined(src0, op, "src");
  check_defined(index0, op, "index");
  check_out(out, op);
  OSP_CHECK(src0.dim() == 2, op, ": src must be [N, C], got ", src0.desc());
  OSP_CHECK(index0.dim() == 1 && index0.dtype() == DType::I32, op,
            ": index must be i32 [M], got ", index0.desc());
  const int64_t M = index0.size(0), C = src0.size(1);
  check_shape(out, {M, C}, "ops::gather_rows: out");
  OSP_CHECK(out.dtype() == src0.dtype(), op, ": out dtype must equal src dtype (",
            dtype_name(src0.dtype()), "), got ", out.desc());
  check_device(src0, index0, op, "index");
  check_device(src0, out, op, "out");
  check_no_alias(src0, out, op, "src");
  Tensor src = src0.contiguous(), index = index0.contiguous();
  if (on_cuda(src, op)) {
#ifdef OSP_HAVE_CUDA
    cuda::gather_rows(src, index, out);
#endif
    return;
  }
  const int32_t* ip = index.data<int32_t>();
  const int64_t N = src.size(0);
  for (int64_t i = 0; i < M; ++i)
    OSP_CHECK(ip[i] < N, op, ": index[", i, "] = ", ip[i], " is out of range for src with ", N,
              " rows");
  cpu::gather_rows(src, index, out);
}

void patchify(const Tensor& z0, int pt, int ph, int pw, Tensor& out) {
  const char* op = "ops::patchify";
  check_defined(z0, op, "z");
  check_out(out, op);
  check_patch_grid(z0, "z", pt, ph, pw, op);
  const int64_t C = z0.size(0), T = z0.size(1), H = z0.size(2), W = z0.size(3);
  check_shape(out, {T * (H / ph) * (W / pw), C * pt * ph * pw}, "ops::patchify: out");
  check_device(z0, out, op, "out");
  Tensor z = z0.contiguous();
  if (on_cuda(z, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(z, op, "z");
    check_f32_or_bf16(out, op, "out");
    cuda::patchify(z, pt, ph, pw, out);
#endif
    return;
  }
  check_f32(z, op, "z");
  check_f32(out, op, "out");
  cpu::patchify(z, pt, ph, pw, out);
}

void unpatchify(const Tensor& y0, int64_t T, int64_t h, int64_t w, int pt, int ph, int pw,
                Tensor& out) {
  const char* op = "ops::unpatchify";
  check_defined(y0, op, "y");
  check_out(out, op);
  OSP_CHECK(pt == 1, op, ": only temporal patch size 1 is supported, got pt = ", pt);
  OSP_CHECK(ph >= 1 && pw >= 1 && T >= 1 && h >= 1 && w >= 1, op,
            ": sizes must be positive, got T=", T, " h=", h, " w=", w, " patch ", ph, "x", pw);
  OSP_CHECK(y0.dim() == 2 && y0.size(0) == T * h * w && y0.size(1) % (pt * ph * pw) == 0, op,
            ": y must be [T·h·w = ", T * h * w, ", pt·ph·pw·C], got ", y0.desc());
  const int64_t C = y0.size(1) / (pt * ph * pw);
  check_shape(out, {C, T * pt, h * ph, w * pw}, "ops::unpatchify: out");
  check_device(y0, out, op, "out");
  check_no_alias(y0, out, op, "y");
  Tensor y = y0.contiguous();
  if (on_cuda(y, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(y, op, "y");
    check_f32_or_bf16(out, op, "out");
    cuda::unpatchify(y, T, h, w, pt, ph, pw, out);
#endif
    return;
  }
  check_f32(y, op, "y");
  check_f32(out, op, "out");
  cpu::unpatchify(y, T, h, w, pt, ph, pw, out);
}

}  // namespace osp::ops
