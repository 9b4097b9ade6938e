// HiF8 linear forward: fake-quantize both operands, then the ordinary GEMM.
#include "osp/quant/hif8_linear.h"

#include "osp/quant/hif8.h"

namespace osp::quant {

void hif8_linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, ops::Act act,
                 Tensor* xq, Tensor* wq) {
  OSP_CHECK(x.defined() && w.defined(), "hif8_linear: x and w must be defined");
  Tensor xs = xq ? *xq : Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor ws = wq ? *wq : Tensor::empty(w.shape(), w.dtype(), w.device());
  hif8_fake_quant(x, xs, kHiF8ForwardMax);
  hif8_fake_quant(w, ws, kHiF8ForwardMax);
  ops::linear(xs, ws, bias, out, act);
}

}  // namespace osp::quant
