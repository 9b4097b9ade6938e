// Validation and device dispatch for ops/conv.h.
#include "osp/core/settings.h"
#include "osp/ops/conv.h"

#include <cstdlib>
#include <mutex>

namespace osp::ops {

namespace {
std::mutex g_conv_path_mu;
std::string& conv_path_ref() {
  static std::string p = engine_settings().conv3d;  // OSP_CONV3D until set_conv3d_path
  return p;
}
}  // namespace

void set_conv3d_path(const std::string& path) {
  OSP_CHECK(path == "im2col" || path == "cudnn", "conv3d path must be im2col or cudnn, got '", path, "'");
  std::lock_guard<std::mutex> lk(g_conv_path_mu);
  conv_path_ref() = path;
}

std::string conv3d_path() {
  std::lock_guard<std::mutex> lk(g_conv_path_mu);
  return conv_path_ref();
}

Shape conv3d_out_shape(const Shape& x, const Shape& w, const Conv3dArgs& a) {
  OSP_CHECK(x.size() == 4, "conv3d: input must be frame-major [T, Cin, H, W], got ", shape_str(x));
  OSP_CHECK(w.size() == 5, "conv3d: weight must be [Cout, Cin, kt, kh, kw], got ", shape_str(w));
  OSP_CHECK(w[1] == x[1], "conv3d: weight ", shape_str(w), " expects ", w[1],
            " input channels but the input ", shape_str(x), " has ", x[1]);
  OSP_CHECK(a.stride_t >= 1 && a.stride_h >= 1 && a.stride_w >= 1, "conv3d: strides must be >= 1");
  OSP_CHECK(a.pad_front >= 0 && a.pad_top >= 0 && a.pad_bottom >= 0 && a.pad_left >= 0 &&
                a.pad_right >= 0,
            "conv3d: paddings must be >= 0");
  const int64_t tp = x[0] + a.pad_front, hp = x[2] + a.pad_top + a.pad_bottom,
                wp = x[3] + a.pad_left + a.pad_right;
  OSP_CHECK(tp >= w[2] && hp >= w[3] && wp >= w[4], "conv3d: padded input [", tp, ", ", hp, ", ",
            wp, "] (T, H, W) is smaller than the kernel ", shape_str(w));
  return {(tp - w[2]) / a.stride_t + 1, w[0], (hp - w[3]) / a.stride_h + 1,
          (wp - w[4]) / a.stride_w + 1};
}

void conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out) {
  const Shape os = conv3d_out_shape(x.shape(), w.shape(), a);
  check_dtype(x, DType::F32, "conv3d input");
  check_dtype(w, DType::F32, "conv3d weight");
  check_dtype(out, DType::F32, "conv3d output");
  check_shape(out, os, "conv3d output");
  check_same_device(x, w, "conv3d input/weight");
  check_same_device(x, out, "conv3d input/output");
  OSP_CHECK(x.is_contiguous() && w.is_contiguous() && out.is_contiguous(),
            "conv3d: input, weight and output must be contiguous");
  if (bias) {
    check_dtype(*bias, DType::F32, "conv3d bias");
    check_shape(*bias, {w.size(0)}, "conv3d bias");
    check_same_device(x, *bias, "conv3d input/bias");
  }
  OSP_CHECK(x.raw() != out.raw(), "conv3d: output must not alias the input");
  if (x.device().is_cpu()) {
    cpu::conv3d(x, w, bias, a, out);
  } else {
#ifdef OSP_HAVE_CUDA
    cuda::conv3d(x, w, bias, a, out);
#else
    fail("conv3d: this build has no CUDA backend (input on " + x.device().name() + ")");
#endif
  }
}

Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a) {
  Tensor out = Tensor::empty(conv3d_out_shape(x.shape(), w.shape(), a), DType::F32, x.device());
  conv3d(x, w, bias, a, out);
  return out;
}

}  // namespace osp::ops
