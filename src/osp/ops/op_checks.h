// Argument checks shared by the op dispatchers (ops.cpp, backward.cpp): each throws osp::Error
// with a message naming the op, the argument and what was expected. Internal to ops/.
#pragma once
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

}  // namespace osp::ops::detail
