// Argument checks shared by the op dispatchers (ops.cpp, backward.cpp, vae_backward.cpp): each throws osp::Error
// with a message naming the op, the argument and what was expected. Internal to ops/.
#pragma once
#include <initializer_list>
#include <string>

#include "osp/core/error.h"
#include "osp/core/tensor.h"

namespace osp::ops::detail {

// Outputs must be preallocated, defined and contiguous.
inline void check_out(const Tensor& out, const char* op) {
  OSP_CHECK(out.defined(), op, ": the output tensor is undefined (outputs are preallocated by "
            "the caller)");
  OSP_CHECK(out.is_contiguous(), op, ": the output must be contiguous, got ", out.desc());
}

inline void check_defined(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.defined(), op, ": ", what, " is undefined");
}

// Every tensor of an op must live on one device.
inline void check_device(const Tensor& ref, const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.device() == ref.device(), op, ": ", what, " is on ", t.device().name(),
            " but the op runs on ", ref.device().name(), " (", t.desc(), ")");
}

// True when t is a CUDA tensor and this build has the CUDA backend; throws for a CUDA tensor
// in a CPU-only build.
inline bool on_cuda(const Tensor& t, const char* op) {
  if (!t.device().is_cuda()) return false;
#ifdef OSP_HAVE_CUDA
  return true;
#else
  fail(str(op, ": tensor ", t.desc(),
           " is on CUDA but this build has no CUDA backend (configure with OSP_CUDA=ON)"));
#endif
}

inline void check_f32(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.dtype() == DType::F32, op, ": ", what, " must be f32 on the CPU, got ", t.desc());
}
inline void check_f32_or_bf16(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": ", what,
            " must be f32 or bf16, got ", t.desc());
}

inline void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* what) {
  OSP_CHECK(a.shape() == b.shape(), op, ": ", what, " must have shape ", shape_str(a.shape()),
            ", got ", shape_str(b.shape()));
}

// [C] F32 parameter vector on the op's device.
inline void check_vec(const Tensor& v, int64_t C, const Tensor& ref, const char* op,
                      const char* what) {
  check_defined(v, op, what);
  check_device(ref, v, op, what);
  OSP_CHECK(v.dim() == 1 && v.size(0) == C, op, ": ", what, " must have shape [", C, "], got ",
            shape_str(v.shape()));
  OSP_CHECK(v.dtype() == DType::F32, op, ": ", what, " must be f32, got ", v.desc());
}

// Throws when out shares any byte with in.
inline void check_no_alias(const Tensor& in, const Tensor& out, const char* op, const char* what) {
  if (!in.defined() || !out.defined() || in.storage() != out.storage()) return;
  const char* a = static_cast<const char*>(in.raw());
  const char* b = static_cast<const char*>(out.raw());
  OSP_CHECK(a + in.nbytes() <= b || b + out.nbytes() <= a, op, ": the output may not overlap ",
            what, " (this op does not work in place)");
}

// An input of an op named for the messages (null: absent, skipped).
struct NamedInput {
  const Tensor* t;
  const char* what;
};

// Throws when an output (null: not wanted, skipped) overlaps an input: outputs in order, each
// against the inputs in order.
inline void check_outs_no_alias(std::initializer_list<const Tensor*> outs,
                                std::initializer_list<NamedInput> ins, const char* op) {
  for (const Tensor* o : outs) {
    if (!o) continue;
    for (const NamedInput& in : ins)
      if (in.t) check_no_alias(*in.t, *o, op, in.what);
  }
}

// An optional output (null = not wanted): preallocated, contiguous, the expected shape, f32 when
// `f32` is set, on the op's device. (Overlaps with the inputs are checked by the caller.)
inline void check_opt_out(const Tensor* t, const Shape& shape, const Tensor& ref, const char* op,
                          const char* what, bool f32 = false) {
  if (!t) return;
  OSP_CHECK(t->defined(), op, ": ", what,
            " is undefined (pass a preallocated tensor, or null to skip it)");
  OSP_CHECK(t->is_contiguous(), op, ": ", what, " must be contiguous, got ", t->desc());
  OSP_CHECK(t->shape() == shape, op, ": ", what, " must have shape ", shape_str(shape), ", got ",
            shape_str(t->shape()));
  if (f32) OSP_CHECK(t->dtype() == DType::F32, op, ": ", what, " must be f32, got ", t->desc());
  check_device(ref, *t, op, what);
}

// A [C, T, H, W] latent (named `what`) that pt×ph×pw patches tile exactly (pt = 1 only).
inline void check_patch_grid(const Tensor& z, const char* what, int pt, int ph, int pw,
                             const char* op) {
  OSP_CHECK(z.dim() == 4, op, ": ", what, " must be [C, T, H, W], got ", z.desc());
  OSP_CHECK(pt == 1, op, ": only temporal patch size 1 is supported, got pt = ", pt);
  OSP_CHECK(ph >= 1 && pw >= 1, op, ": patch sizes must be >= 1, got ", ph, "x", pw);
  OSP_CHECK(z.size(2) % ph == 0 && z.size(3) % pw == 0, op, ": latent height ", z.size(2),
            " and width ", z.size(3), " must be multiples of the patch size ", ph, "x", pw);
}

// RoPE data x (named `what`) [R, L, H, D] with D even, and its table cos_sin [Rt, L, D/2, 2]
// f32 whose Rt rows divide R.
inline void check_rope_table(const Tensor& x, const char* what, const Tensor& cs, const char* op) {
  OSP_CHECK(x.dim() == 4, op, ": ", what, " must be [R, L, H, D], got ", x.desc());
  const int64_t R = x.size(0), L = x.size(1), D = x.size(3);
  OSP_CHECK(D % 2 == 0, op, ": head dim D must be even, got ", D);
  OSP_CHECK(cs.dim() == 4 && cs.size(1) == L && cs.size(2) == D / 2 && cs.size(3) == 2, op,
            ": cos_sin must be [Rt, ", L, ", ", D / 2, ", 2], got ", shape_str(cs.shape()));
  const int64_t Rt = cs.size(0);
  OSP_CHECK(Rt >= 1 && (R % Rt) == 0, op, ": the table's ", Rt,
            " rows must divide the data's R = ", R);
  OSP_CHECK(cs.dtype() == DType::F32, op, ": cos_sin must be f32, got ", cs.desc());
}

}  // namespace osp::ops::detail
