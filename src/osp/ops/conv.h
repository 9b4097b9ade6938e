// Convolutions for the Wan-VAE: one 3D convolution op over frame-major video tensors.
//
// Layout: x [T, Cin, H, W] ("frame-major": every frame is a contiguous [C, H, W] image), so
// causal caches are a concatenation of whole frames, a Conv2d is a Conv3d with kt = 1 applied to
// T "frames", and the temporal ×2 of the VAE's upsample3d is a free reshape
// ([T, 2C, H, W] → [2T, C, H, W]).  Weights use PyTorch's layout [Cout, Cin, kt, kh, kw].
//
// Padding: zeros, `pad_front` frames before the first frame only (causal; the reference's
// CausalConv3d), and independent top/bottom/left/right spatial pads (ZeroPad2d(0,1,0,1) of the
// VAE's downsample is pad_bottom = pad_right = 1).
//
// CPU: fp32, im2col over bands of output rows + OpenBLAS sgemm (the band keeps the column
// buffer ≤ 64 MiB), OpenMP over the im2col rows.
// CUDA: fp32 storage, TF32 tensor-core math (the reference's PyTorch default
// `cudnn.allow_tf32 = True` also runs its convolutions in TF32): cuDNN's backend-API convolution
// on channels-last copies (default), or an im2col kernel + cuBLAS GEMM (set_conv3d_path below).
#pragma once
#include <string>

#include "osp/core/tensor.h"

namespace osp::ops {

struct Conv3dArgs {
  int stride_t = 1, stride_h = 1, stride_w = 1;
  int pad_front = 0;                 // zero frames before frame 0 (none behind)
  int pad_top = 0, pad_bottom = 0;   // zero rows
  int pad_left = 0, pad_right = 0;   // zero columns
  static Conv3dArgs same_causal(int pt, int ph, int pw) {
    Conv3dArgs a;
    a.pad_front = 2 * pt;
    a.pad_top = a.pad_bottom = ph;
    a.pad_left = a.pad_right = pw;
    return a;
  }
};

// Output shape [T', Cout, H', W'] of conv3d for input x [T, Cin, H, W] and weight
// [Cout, Cin, kt, kh, kw]; throws osp::Error when the shapes do not fit.
Shape conv3d_out_shape(const Shape& x, const Shape& w, const Conv3dArgs& a);

// out = conv3d(x, w) + bias.  x [T, Cin, H, W], w [Cout, Cin, kt, kh, kw], bias [Cout] or null,
// out [T', Cout, H', W'] (preallocated, contiguous, not aliasing x).  All F32, same device.
void conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out);
// Allocating convenience overload.
Tensor conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a);

// The CUDA conv3d implementation: "cudnn" (the default; cuda/conv3d.cu: cuDNN's backend-API
// convolution on channels-last staging copies with TF32, or with OSP_VAE_FP32=1 its legacy
// convolution on NCDHW copies; shapes neither takes fall back to im2col, said once with
// OSP_VERBOSE) or "im2col" (im2col + cuBLAS TF32 GEMMs; the default before session 11: the 720P
// decode took 30.5 s on an H200 with it, 10.5 s on an H100 with cuDNN's graph — docs/PERF.md).
// The start value comes from OSP_CONV3D (unset: cudnn). Throws on another name. Process-wide.
void set_conv3d_path(const std::string& path);
std::string conv3d_path();

namespace cpu {
void conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out);
}
namespace cuda {
void conv3d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out);
// The cuDNN paths alone (shapes already checked by ops::conv3d): false, with the reason in *why,
// when it does not take the case (then nothing was written). _graph: the backend API on
// channels-last copies (TF32 engines; any pads); conv3d_cudnn: the legacy API on NCDHW copies
// (TF32 or FP32 math as conv_use_tf32 says; symmetric spatial pads only).
bool conv3d_cudnn_graph(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out,
                        std::string* why = nullptr);
bool conv3d_cudnn(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv3dArgs& a, Tensor& out,
                  std::string* why = nullptr);
}

}  // namespace osp::ops
