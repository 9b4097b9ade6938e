// HiF8 linear layer, forward (osp-next-spec §5.6): out = act(Q(x,15) · Q(w,15)ᵀ + b), the
// bias is not quantized. Q is hif8_fake_quant (per-tensor amax scaling). The GEMM is
// ops::linear on the fake-quantized operands (CPU F32; CUDA BF16), so the result equals the
// float GEMM of the dequantized HiF8 operands. For a real 8-bit GEMM on Hopper see fp8.h.
#pragma once
#include "osp/core/tensor.h"
#include "osp/ops/ops.h"

namespace osp::quant {

// x [.., K], w [N, K], bias [N] or null, out [.., N] (as ops::linear). If xq / wq are given
// they receive Q(x,15) / Q(w,15) (preallocated, x's / w's shape and dtype) for the backward
// pass (STE: dx = Q(g,224)·wq, dW = Q(g,224)ᵀ·xq).
void hif8_linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out,
                 ops::Act act = ops::Act::None, Tensor* xq = nullptr, Tensor* wq = nullptr);

}  // namespace osp::quant
