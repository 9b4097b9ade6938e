// The backward dispatcher: validates shapes, dtypes, devices and the null / accumulate rules of
// backward.h with actionable messages, then calls the CPU reference (ops/cpu/backward.cpp) or,
// for CUDA tensors in a CUDA build, the CUDA backend (ops/cuda/cuda_backward.h).
#include "osp/ops/backward.h"

#include <string>
#include <utility>

#include "osp/core/settings.h"
#include "osp/ops/cpu/cpu_backward.h"
#include "osp/ops/op_checks.h"
#ifdef OSP_HAVE_CUDA
#include "osp/ops/cuda/cuda_backward.h"
#endif

namespace osp::ops {
using namespace detail;
namespace {

// An accumulated (+=) parameter gradient: an optional F32 output of the parameter's shape.
void check_param_grad(const Tensor* g, const Shape& shape, const Tensor& ref, const char* op,
                      const char* what) {
  check_opt_out(g, shape, ref, op, what);
  if (g)
    OSP_CHECK(g->dtype() == DType::F32, op, ": ", what,
              " (an accumulated parameter gradient) must be f32, got ", g->desc());
}

// x [..., C] with C > 0 and dy of the same shape and device (the norms' inputs).
void check_rows_input(const Tensor& x, const Tensor& dy, const char* op) {
  check_defined(x, op, "x");
  check_defined(dy, op, "dy");
  OSP_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": x must have a non-empty last dim, got ",
            x.desc());
  check_same_shape(x, dy, op, "dy");
  check_device(x, dy, op, "dy");
}

// dx: the overwritten same-shape activation gradient of the norms and elementwise ops.
void check_dx(const Tensor& x, const Tensor& dx, const char* op, const char* what = "dx") {
  check_defined(dx, op, what);
  check_out(dx, op);
  check_same_shape(x, dx, op, what);
  check_device(x, dx, op, what);
}

// Activation dtypes: f32 on the CPU, f32 or bf16 on CUDA.
void check_act(const Tensor& t, bool cuda, const char* op, const char* what) {
  if (cuda)
    check_f32_or_bf16(t, op, what);
  else
    check_f32(t, op, what);
}


// x, dy and dx of a norm backward (check_rows_input, check_dx) and eps > 0; returns C.
int64_t check_norm_input(const Tensor& x, const Tensor& dy, const Tensor& dx, float eps,
                         const char* op) {
  check_rows_input(x, dy, op);
  check_dx(x, dx, op);
  OSP_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  return x.size(-1);
}

// True when the op runs on CUDA; checks the activation dtypes of x, dy and dx for that backend.
bool acts_on_cuda(const Tensor& x, const Tensor& dy, const Tensor& dx, const char* op) {
  const bool cuda = on_cuda(x, op);
  check_act(x, cuda, op, "x");
  check_act(dy, cuda, op, "dy");
  check_act(dx, cuda, op, "dx");
  return cuda;
}

}  // namespace

// ---------------------------------------------------------------- GEMM
void linear_backward(const Tensor& x0, const Tensor& w0, const Tensor& dy0, Tensor* dx,
                     Tensor* dw, Tensor* db) {
  const char* op = "ops::linear_backward";
  check_defined(x0, op, "x");
  check_defined(w0, op, "w");
  check_defined(dy0, op, "dy");
  OSP_CHECK(x0.dim() >= 1, op, ": x must have at least one dim, got ", x0.desc());
  OSP_CHECK(w0.dim() == 2, op, ": w must be [N, K], got ", w0.desc());
  const int64_t K = x0.size(-1), N = w0.size(0);
  OSP_CHECK(w0.size(1) == K, op, ": x has K = ", K, " (", x0.desc(), ") but w is ", w0.desc(),
            " (expected [N, ", K, "])");
  Shape ys = x0.shape();
  ys.back() = N;
  OSP_CHECK(dy0.shape() == ys, op, ": dy must have the forward output's shape ", shape_str(ys),
            ", got ", shape_str(dy0.shape()));
  check_device(x0, w0, op, "w");
  check_device(x0, dy0, op, "dy");
  check_opt_out(dx, x0.shape(), x0, op, "dx");
  check_param_grad(dw, {N, K}, x0, op, "dw");
  check_param_grad(db, {N}, x0, op, "db");
  check_outs_no_alias({dx, dw, db}, {{&x0, "x"}, {&w0, "w"}, {&dy0, "dy"}}, op);
  Tensor x = x0.contiguous(), w = w0.contiguous(), dy = dy0.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    const bool all_f32 =
        x.dtype() == DType::F32 && w.dtype() == DType::F32 && dy.dtype() == DType::F32;
    const bool all_bf16 =
        x.dtype() == DType::BF16 && w.dtype() == DType::BF16 && dy.dtype() == DType::BF16;
    OSP_CHECK(all_f32 || all_bf16, op, ": CUDA linear_backward takes x, w and dy all bf16 or all "
              "f32, got x ", x.desc(), ", w ", w.desc(), ", dy ", dy.desc());
    if (dx) check_f32_or_bf16(*dx, op, "dx");
    cuda::linear_backward(x, w, dy, dx, dw, db);
#endif
    return;
  }
  check_f32(x, op, "x");
  check_f32(w, op, "w");
  check_f32(dy, op, "dy");
  if (dx) check_f32(*dx, op, "dx");
  cpu::linear_backward(x, w, dy, dx, dw, db);
}

// ---------------------------------------------------------------- reductions
void sum_rows(const Tensor& x0, Tensor& out) {
  const char* op = "ops::sum_rows";
  check_defined(x0, op, "x");
  OSP_CHECK(x0.dim() >= 1, op, ": x must be [rows, C] (any leading dims), got ", x0.desc());
  const int64_t C = x0.size(-1);
  check_defined(out, op, "out");
  check_param_grad(&out, {C}, x0, op, "out");
  check_no_alias(x0, out, op, "x");
  Tensor x = x0.contiguous();
  if (on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(x, op, "x");
    cuda::sum_rows(x, out);
#endif
    return;
  }
  check_f32(x, op, "x");
  cpu::sum_rows(x, out);
}

// ---------------------------------------------------------------- norms
void layer_norm_backward(const Tensor& x0, const Tensor* w, float eps, const Tensor& dy0,
                         Tensor& dx, Tensor* dw, Tensor* db) {
  const char* op = "ops::layer_norm_backward";
  const int64_t C = check_norm_input(x0, dy0, dx, eps, op);
  if (w) {
    check_vec(*w, C, x0, op, "weight");
  } else {
    OSP_CHECK(!dw && !db, op, ": without a weight (no affine) there is no dw or db: pass null "
              "for both");
  }
  check_param_grad(dw, {C}, x0, op, "dw");
  check_param_grad(db, {C}, x0, op, "db");
  check_outs_no_alias({&dx, dw, db}, {{&x0, "x"}, {&dy0, "dy"}, {w, "weight"}}, op);
  Tensor x = x0.contiguous(), dy = dy0.contiguous(), wc;
  if (w) wc = w->contiguous();
  const Tensor* wp = w ? &wc : nullptr;
  const bool cuda = acts_on_cuda(x, dy, dx, op);
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::layer_norm_backward(x, wp, eps, dy, dx, dw, db);
#endif
    return;
  }
  cpu::layer_norm_backward(x, wp, eps, dy, dx, dw, db);
}

void layer_norm_modulate_backward(const Tensor& x0, const Tensor& scale0, float eps,
                                  const Tensor& dy0, Tensor& dx, Tensor* dshift, Tensor* dscale) {
  const char* op = "ops::layer_norm_modulate_backward";
  const int64_t C = check_norm_input(x0, dy0, dx, eps, op);
  check_vec(scale0, C, x0, op, "scale");
  check_param_grad(dshift, {C}, x0, op, "dshift");
  check_param_grad(dscale, {C}, x0, op, "dscale");
  OSP_CHECK(!dshift || !dscale || dshift->storage() != dscale->storage() ||
                dshift->raw() != dscale->raw(),
            op, ": dshift and dscale must be different tensors");
  check_outs_no_alias({&dx, dshift, dscale}, {{&x0, "x"}, {&dy0, "dy"}, {&scale0, "scale"}}, op);
  Tensor x = x0.contiguous(), dy = dy0.contiguous(), sc = scale0.contiguous();
  const bool cuda = acts_on_cuda(x, dy, dx, op);
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::layer_norm_modulate_backward(x, sc, eps, dy, dx, dshift, dscale);
#endif
    return;
  }
  cpu::layer_norm_modulate_backward(x, sc, eps, dy, dx, dshift, dscale);
}

void rms_norm_backward(const Tensor& x0, const Tensor& w0, float eps, const Tensor& dy0,
                       Tensor& dx, Tensor* dw) {
  const char* op = "ops::rms_norm_backward";
  const int64_t C = check_norm_input(x0, dy0, dx, eps, op);
  check_vec(w0, C, x0, op, "weight");
  check_param_grad(dw, {C}, x0, op, "dw");
  check_outs_no_alias({&dx, dw}, {{&x0, "x"}, {&dy0, "dy"}, {&w0, "weight"}}, op);
  Tensor x = x0.contiguous(), dy = dy0.contiguous(), w = w0.contiguous();
  const bool cuda = acts_on_cuda(x, dy, dx, op);
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::rms_norm_backward(x, w, eps, dy, dx, dw);
#endif
    return;
  }
  cpu::rms_norm_backward(x, w, eps, dy, dx, dw);
}

// ---------------------------------------------------------------- elementwise
namespace {
template <typename CpuFn, typename CudaFn>
void unary_backward(const char* op, const Tensor& x0, const Tensor& dy0, Tensor& dx,
                    CpuFn cpu_fn, CudaFn cuda_fn) {
  check_defined(x0, op, "x");
  check_defined(dy0, op, "dy");
  check_same_shape(x0, dy0, op, "dy");
  check_device(x0, dy0, op, "dy");
  check_dx(x0, dx, op);
  check_no_alias(x0, dx, op, "x");
  check_no_alias(dy0, dx, op, "dy");
  Tensor x = x0.contiguous(), dy = dy0.contiguous();
  const bool cuda = acts_on_cuda(x, dy, dx, op);
  if (cuda)
    cuda_fn(x, dy, dx);
  else
    cpu_fn(x, dy, dx);
}
}  // namespace

void gelu_tanh_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  unary_backward(
      "ops::gelu_tanh_backward", x, dy, dx,
      [](const Tensor& a, const Tensor& g, Tensor& o) { cpu::gelu_tanh_backward(a, g, o); },
      [](const Tensor& a, const Tensor& g, Tensor& o) {
#ifdef OSP_HAVE_CUDA
        cuda::gelu_tanh_backward(a, g, o);
#endif
      });
}

void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  unary_backward(
      "ops::silu_backward", x, dy, dx,
      [](const Tensor& a, const Tensor& g, Tensor& o) { cpu::silu_backward(a, g, o); },
      [](const Tensor& a, const Tensor& g, Tensor& o) {
#ifdef OSP_HAVE_CUDA
        cuda::silu_backward(a, g, o);
#endif
      });
}

void add_gated_backward(const Tensor& dx0, const Tensor& y0, const Tensor& gate0, Tensor& dy,
                        Tensor* dgate) {
  const char* op = "ops::add_gated_backward";
  check_defined(dx0, op, "dx");
  check_defined(y0, op, "y");
  OSP_CHECK(dx0.dim() >= 1, op, ": dx must be [rows, C], got ", dx0.desc());
  check_same_shape(dx0, y0, op, "y");
  check_device(dx0, y0, op, "y");
  const int64_t C = dx0.size(-1);
  check_vec(gate0, C, dx0, op, "gate");
  check_dx(dx0, dy, op, "dy");
  check_param_grad(dgate, {C}, dx0, op, "dgate");
  check_outs_no_alias({&dy, dgate}, {{&dx0, "dx"}, {&y0, "y"}, {&gate0, "gate"}}, op);
  if (dgate) check_no_alias(dy, *dgate, op, "dy");
  OSP_CHECK(dx0.dtype() == DType::F32, op,
            ": dx (the residual stream's gradient) must be f32, got ", dx0.desc());
  Tensor dx = dx0.contiguous(), y = y0.contiguous(), gate = gate0.contiguous();
  const bool cuda = on_cuda(dx, op);
  check_act(y, cuda, op, "y");
  check_act(dy, cuda, op, "dy");
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::add_gated_backward(dx, y, gate, dy, dgate);
#endif
    return;
  }
  cpu::add_gated_backward(dx, y, gate, dy, dgate);
}

// ---------------------------------------------------------------- RoPE
void rope_backward(const Tensor& dy0, const Tensor& cs0, Tensor& dx) {
  const char* op = "ops::rope_backward";
  check_defined(dy0, op, "dy");
  check_defined(cs0, op, "cos_sin");
  check_rope_table(dy0, "dy", cs0, op);
  check_device(dy0, cs0, op, "cos_sin");
  check_dx(dy0, dx, op);
  check_no_alias(cs0, dx, op, "cos_sin");
  // In place (dx is dy) is allowed; a partial overlap is not.
  const bool in_place = dy0.storage() == dx.storage() && dy0.raw() == dx.raw() &&
                        dy0.dtype() == dx.dtype() && dy0.is_contiguous();
  if (!in_place) check_no_alias(dy0, dx, op, "dy (only exactly in place is allowed)");
  Tensor dy = dy0.contiguous(), cs = cs0.contiguous();
  const bool cuda = on_cuda(dy, op);
  check_act(dy, cuda, op, "dy");
  check_act(dx, cuda, op, "dx");
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::rope_backward(dy, cs, dx);
#endif
    return;
  }
  cpu::rope_backward(dy, cs, dx);
}

// ---------------------------------------------------------------- attention
namespace {

// Shapes and args shared by attention_forward_lse and attention_backward. Returns the args to
// pass on (seq_lens made contiguous into *seq_holder).
AttentionArgs check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionArgs& args, Tensor* seq_holder) {
  check_defined(q, op, "q");
  check_defined(k, op, "k");
  check_defined(v, op, "v");
  OSP_CHECK(q.dim() == 4, op, ": q must be [B, Lq, H, D], got ", q.desc());
  OSP_CHECK(k.dim() == 4, op, ": k must be [B, Lk, H, D], got ", k.desc());
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  OSP_CHECK(k.size(0) == B && k.size(2) == H && k.size(3) == D, op, ": k must be [", B, ", Lk, ",
            H, ", ", D, "] to match q ", shape_str(q.shape()), ", got ", shape_str(k.shape()));
  OSP_CHECK(Lk >= 1 && D >= 1, op, ": empty keys or head dim (k ", k.desc(), ")");
  check_same_shape(k, v, op, "v");
  check_device(q, k, op, "k");
  check_device(q, v, op, "v");
  OSP_CHECK(args.scale >= 0, op, ": scale must be >= 0 (0 means 1/sqrt(D)), got ", args.scale);
  OSP_CHECK(!args.bias && !args.kv_lens && !args.q_lens, op,
            ": the training attention supports scale and seq_lens only; bias, kv_lens and "
            "q_lens are not supported (pack variable-length sequences with seq_lens instead)");
  AttentionArgs a;
  a.scale = args.scale;
  if (args.seq_lens) {
    const Tensor& sl = *args.seq_lens;
    check_defined(sl, op, "seq_lens");
    OSP_CHECK(sl.dtype() == DType::I32 && sl.dim() == 1 && sl.size(0) >= 1 && sl.device().is_cpu(),
              op, ": seq_lens must be a host i32 [R] tensor with R >= 1, got ", sl.desc());
    OSP_CHECK(Lq == Lk, op, ": packed sequences need Lq == Lk (self-attention), got q ", q.desc(),
              " and k ", k.desc());
    *seq_holder = sl.contiguous();
    const int32_t* lp = seq_holder->data<int32_t>();
    int64_t total = 0;
    for (int64_t r = 0; r < seq_holder->size(0); ++r) {
      OSP_CHECK(lp[r] >= 0, op, ": seq_lens[", r, "] = ", lp[r], " is negative");
      total += lp[r];
    }
    OSP_CHECK(total == Lq, op, ": seq_lens sum to ", total, " but each sample has ", Lq,
              " rows (q ", q.desc(), ")");
    a.seq_lens = seq_holder;
  }
  return a;
}

void check_lse(const Tensor& lse, const Tensor& q, const char* op) {
  check_defined(lse, op, "lse");
  const Shape want{q.size(0), q.size(2), q.size(1)};
  OSP_CHECK(lse.shape() == want, op, ": lse must be [B, H, Lq] = ", shape_str(want), ", got ",
            shape_str(lse.shape()));
  OSP_CHECK(lse.dtype() == DType::F32, op, ": lse must be f32, got ", lse.desc());
  check_device(q, lse, op, "lse");
}

// CUDA attention tensors are bf16 (lse f32); CPU ones f32.
void check_attn_dtype(const Tensor& t, bool cuda, const char* op, const char* what) {
  if (cuda)
    OSP_CHECK(t.dtype() == DType::BF16, op, ": CUDA attention takes bf16 tensors; ", what,
              " is ", t.desc());
  else
    check_f32(t, op, what);
}

}  // namespace

void attention_forward_lse(const Tensor& q0, const Tensor& k0, const Tensor& v0, Tensor& out,
                           Tensor& lse, const AttentionArgs& args) {
  const char* op = "ops::attention_forward_lse";
  Tensor seq;
  const AttentionArgs a = check_attention(op, q0, k0, v0, args, &seq);
  check_defined(out, op, "out");
  check_out(out, op);
  check_same_shape(q0, out, op, "out");
  check_device(q0, out, op, "out");
  check_lse(lse, q0, op);
  check_out(lse, op);
  check_outs_no_alias({&out, &lse}, {{&q0, "q"}, {&k0, "k"}, {&v0, "v"}}, op);
  check_no_alias(out, lse, op, "out (lse)");
  Tensor q = q0.contiguous(), k = k0.contiguous(), v = v0.contiguous();
  const bool cuda = on_cuda(q, op);
  check_attn_dtype(q, cuda, op, "q");
  check_attn_dtype(k, cuda, op, "k");
  check_attn_dtype(v, cuda, op, "v");
  check_attn_dtype(out, cuda, op, "out");
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::attention_forward_lse(q, k, v, out, lse, a);
#endif
    return;
  }
  cpu::attention_forward_lse(q, k, v, out, lse, a);
}

namespace {
int g_deterministic = -1;  // −1: OSP_DETERMINISTIC
}  // namespace
void set_deterministic_backward(bool on) { g_deterministic = on ? 1 : 0; }
bool deterministic_backward() {
  return g_deterministic < 0 ? engine_settings().deterministic : g_deterministic == 1;
}

void attention_backward(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& out0,
                        const Tensor& lse0, const Tensor& dout0, Tensor& dq, Tensor& dk,
                        Tensor& dv, const AttentionArgs& args) {
  const char* op = "ops::attention_backward";
  Tensor seq;
  const AttentionArgs a = check_attention(op, q0, k0, v0, args, &seq);
  check_defined(out0, op, "out");
  check_defined(dout0, op, "dout");
  check_same_shape(q0, out0, op, "out");
  check_same_shape(q0, dout0, op, "dout");
  check_device(q0, out0, op, "out");
  check_device(q0, dout0, op, "dout");
  check_lse(lse0, q0, op);
  const std::pair<Tensor*, const Tensor*> grads[] = {{&dq, &q0}, {&dk, &k0}, {&dv, &v0}};
  const char* names[] = {"dq", "dk", "dv"};
  for (int g = 0; g < 3; ++g) {
    Tensor& d = *grads[g].first;
    check_defined(d, op, names[g]);
    check_out(d, op);
    check_same_shape(*grads[g].second, d, op, names[g]);
    check_device(q0, d, op, names[g]);
    for (const Tensor* in : {&q0, &k0, &v0, &out0, &lse0, &dout0})
      check_no_alias(*in, d, op, "an input (q, k, v, out, lse or dout)");
    for (int h = 0; h < g; ++h) check_no_alias(*grads[h].first, d, op, names[h]);
  }
  Tensor q = q0.contiguous(), k = k0.contiguous(), v = v0.contiguous();
  Tensor out = out0.contiguous(), lse = lse0.contiguous(), dout = dout0.contiguous();
  const bool cuda = on_cuda(q, op);
  check_attn_dtype(q, cuda, op, "q");
  check_attn_dtype(k, cuda, op, "k");
  check_attn_dtype(v, cuda, op, "v");
  check_attn_dtype(out, cuda, op, "out");
  check_attn_dtype(dout, cuda, op, "dout");
  check_attn_dtype(dq, cuda, op, "dq");
  check_attn_dtype(dk, cuda, op, "dk");
  check_attn_dtype(dv, cuda, op, "dv");
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, a);
#endif
    return;
  }
  cpu::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, a);
}

// ---------------------------------------------------------------- data movement
void scatter_add_rows(const Tensor& src0, const Tensor& index0, Tensor& out) {
  const char* op = "ops::scatter_add_rows";
  check_defined(src0, op, "src");
  check_defined(index0, op, "index");
  check_defined(out, op, "out");
  check_out(out, op);
  OSP_CHECK(src0.dim() == 2, op, ": src must be [M, C], got ", src0.desc());
  OSP_CHECK(index0.dim() == 1 && index0.dtype() == DType::I32 && index0.size(0) == src0.size(0),
            op, ": index must be i32 [", src0.size(0), "] (one per src row), got ", index0.desc());
  OSP_CHECK(out.dim() == 2 && out.size(1) == src0.size(1), op, ": out must be [N, ",
            src0.size(1), "], got ", out.desc());
  OSP_CHECK(out.dtype() == DType::F32, op, ": out (accumulated) must be f32, got ", out.desc());
  check_device(src0, index0, op, "index");
  check_device(src0, out, op, "out");
  check_no_alias(src0, out, op, "src");
  check_no_alias(index0, out, op, "index");
  Tensor src = src0.contiguous(), index = index0.contiguous();
  if (on_cuda(src, op)) {
#ifdef OSP_HAVE_CUDA
    check_f32_or_bf16(src, op, "src");
    cuda::scatter_add_rows(src, index, out);
#endif
    return;
  }
  check_f32(src, op, "src");
  const int32_t* ip = index.data<int32_t>();
  const int64_t N = out.size(0);
  for (int64_t i = 0; i < index.size(0); ++i)
    OSP_CHECK(ip[i] < N, op, ": index[", i, "] = ", ip[i], " is out of range for out with ", N,
              " rows");
  cpu::scatter_add_rows(src, index, out);
}

void patchify_backward(const Tensor& dp0, int pt, int ph, int pw, Tensor& dz) {
  const char* op = "ops::patchify_backward";
  check_defined(dp0, op, "dpatches");
  check_defined(dz, op, "dz");
  check_out(dz, op);
  check_patch_grid(dz, "dz", pt, ph, pw, op);
  const int64_t C = dz.size(0), T = dz.size(1), H = dz.size(2), W = dz.size(3);
  const Shape want{T * (H / ph) * (W / pw), C * pt * ph * pw};
  OSP_CHECK(dp0.shape() == want, op, ": dpatches must be [T·(H/ph)·(W/pw), C·pt·ph·pw] = ",
            shape_str(want), " for dz ", shape_str(dz.shape()), ", got ", shape_str(dp0.shape()));
  check_device(dz, dp0, op, "dpatches");
  check_no_alias(dp0, dz, op, "dpatches");
  Tensor dp = dp0.contiguous();
  const bool cuda = on_cuda(dp, op);
  check_act(dp, cuda, op, "dpatches");
  check_act(dz, cuda, op, "dz");
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::patchify_backward(dp, pt, ph, pw, dz);
#endif
    return;
  }
  cpu::patchify_backward(dp, pt, ph, pw, dz);
}

void unpatchify_backward(const Tensor& dout0, int64_t T, int64_t h, int64_t w, int pt, int ph,
                         int pw, Tensor& dy) {
  const char* op = "ops::unpatchify_backward";
  check_defined(dout0, op, "dout");
  check_defined(dy, op, "dy");
  check_out(dy, op);
  OSP_CHECK(pt == 1, op, ": only temporal patch size 1 is supported, got pt = ", pt);
  OSP_CHECK(ph >= 1 && pw >= 1 && T >= 1 && h >= 1 && w >= 1, op,
            ": sizes must be positive, got T=", T, " h=", h, " w=", w, " patch ", ph, "x", pw);
  OSP_CHECK(dout0.dim() == 4 && dout0.size(1) == T * pt && dout0.size(2) == h * ph &&
                dout0.size(3) == w * pw,
            op, ": dout must be [C, T = ", T * pt, ", h·ph = ", h * ph, ", w·pw = ", w * pw,
            "], got ", dout0.desc());
  const int64_t C = dout0.size(0);
  const Shape want{T * h * w, pt * ph * pw * C};
  OSP_CHECK(dy.shape() == want, op, ": dy must be [T·h·w, pt·ph·pw·C] = ", shape_str(want),
            ", got ", shape_str(dy.shape()));
  check_device(dout0, dy, op, "dy");
  check_no_alias(dout0, dy, op, "dout");
  Tensor dout = dout0.contiguous();
  const bool cuda = on_cuda(dout, op);
  check_act(dout, cuda, op, "dout");
  check_act(dy, cuda, op, "dy");
  if (cuda) {
#ifdef OSP_HAVE_CUDA
    cuda::unpatchify_backward(dout, T, h, w, pt, ph, pw, dy);
#endif
    return;
  }
  cpu::unpatchify_backward(dout, T, h, w, pt, ph, pw, dy);
}

}  // namespace osp::ops
