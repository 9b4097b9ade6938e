// Backward (vector-Jacobian products) of the Wan-VAE ops (ops/conv.h, ops/t5_vae_ops.h), for
// training the VAE (model/vae_train.h).  Conventions as ops/backward.h:
//  * `d<name>` is dL/d<name> for the forward argument <name>; dy is dL/d(output).
//  * Outputs marked "(+=)" ACCUMULATE into a preallocated F32 tensor (parameter gradients); all
//    other outputs are overwritten.  A null pointer means "not wanted" (skipped).
//  * Everything F32 (the VAE runs in fp32), contiguous, on one device.  CPU: the fp32 reference
//    (tests/ops/vae_backward_test.cpp checks it against float64 finite differences); CUDA: the
//    same math with cuBLAS GEMMs (TF32 tensor cores unless OSP_VAE_FP32=1, like the forward conv),
//    checked against the CPU in tests/ops/vae_backward_parity_gpu_test.cpp.
//  * Shapes are the forward op's shapes.
#pragma once
#include "osp/core/tensor.h"
#include "osp/ops/conv.h"

namespace osp::ops {

// ---------------------------------------------------------------- conv3d
// Forward y = conv3d(x, w, b, a) (ops/conv.h: frame-major x [T, Cin, H, W], w [Cout, Cin, kt,
// kh, kw], y [T', Cout, H', W'], any strides, causal front pad, spatial pads; a Conv2d is kt = 1).
//   dx[T, Cin, H, W]        overwritten (padding taps receive nothing)
//   dw[Cout, Cin, kt,kh,kw] (+=)  Σ_{t',y',x'} dy · x-tap
//   db[Cout]                (+=)  Σ_{t',y',x'} dy
// dy [T', Cout, H', W'] must be the forward output's shape (conv3d_out_shape).
void conv3d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv3dArgs& a,
                     Tensor* dx, Tensor* dw, Tensor* db);

// ---------------------------------------------------------------- channel RMS norm
// Forward y = [silu](x / max(‖x[n,:,s]‖₂, 1e-12) · sqrt(C) · gamma)  (ops::channel_rms_norm).
//   dx[N, C, S...]  overwritten (the clamp region ‖x‖ ≤ 1e-12 treats the norm as the constant)
//   dgamma[C]       (+=)
// gamma: C elements, any shape (as the forward); dgamma: same numel as gamma, F32.
void channel_rms_norm_backward(const Tensor& x, const Tensor& gamma, bool silu, const Tensor& dy,
                               Tensor& dx, Tensor* dgamma);

// ---------------------------------------------------------------- resampling
// Forward ops::upsample_nearest2x: dy [N, C, 2H, 2W] → dx [N, C, H, W] (overwritten),
// dx[n, c, y, x] = Σ of the 2×2 block of dy it was copied to.
void upsample_nearest2x_backward(const Tensor& dy, Tensor& dx);

// ---------------------------------------------------------------- VAE attention
// Forward ops::spatial_attention (qkv [N, 3C, L] → out [N, C, L], softmax over the L keys of
// each frame, scale 1/sqrt(C)).  dout [N, C, L] → dqkv [N, 3C, L] (overwritten; rows [0, C) dq,
// [C, 2C) dk, [2C, 3C) dv).  The probabilities are recomputed from qkv (query blocks, as the
// forward), so nothing but qkv needs to be saved.
void spatial_attention_backward(const Tensor& qkv, const Tensor& dout, Tensor& dqkv);

namespace cpu {
void conv3d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv3dArgs& a,
                     Tensor* dx, Tensor* dw, Tensor* db);
void channel_rms_norm_backward(const Tensor& x, const Tensor& gamma, bool silu, const Tensor& dy,
                               Tensor& dx, Tensor* dgamma);
void upsample_nearest2x_backward(const Tensor& dy, Tensor& dx);
void spatial_attention_backward(const Tensor& qkv, const Tensor& dout, Tensor& dqkv);
}  // namespace cpu
namespace cuda {
void conv3d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv3dArgs& a,
                     Tensor* dx, Tensor* dw, Tensor* db);
void channel_rms_norm_backward(const Tensor& x, const Tensor& gamma, bool silu, const Tensor& dy,
                               Tensor& dx, Tensor* dgamma);
void upsample_nearest2x_backward(const Tensor& dy, Tensor& dx);
void spatial_attention_backward(const Tensor& qkv, const Tensor& dout, Tensor& dqkv);
}  // namespace cuda

}  // namespace osp::ops
