// Rectified-flow loss and the DiT training step (see flow_matching.h).
#include "osp/train/flow_matching.h"

#include <cmath>

#include "osp/ops/ops.h"

namespace osp::train {

Tensor forward_backward(model::DiT& dit, parallel::SequenceParallel& sp, const Tensor& x,
                        const std::vector<float>& t, const Tensor& context,
                        const std::function<Tensor(const Tensor& v)>& dloss_dv,
                        const FlowGrads& extra) {
  OSP_CHECK(dloss_dv != nullptr, "forward_backward: dloss_dv is empty");
  Tensor v = dit.forward_train(x, t, context, sp);
  Tensor dv = dloss_dv(v);
  OSP_CHECK(dv.defined() && dv.shape() == v.shape(), "forward_backward: dloss_dv returned ",
            dv.defined() ? dv.desc() : std::string("an undefined tensor"), ", expected v's shape ",
            shape_str(v.shape()));
  dit.backward(dv, sp, extra.dx_sigma, extra.dcontext);
  return v;
}

double flow_matching_loss_backward(model::DiT& dit, parallel::SequenceParallel& sp, const Tensor& x0,
                                   const Tensor& noise, const std::vector<float>& sigma,
                                   const Tensor& context, const FlowGrads& extra,
                                   Tensor* v_out) {
  OSP_CHECK(x0.defined() && noise.defined() && x0.shape() == noise.shape() &&
                (x0.dim() == 5 || x0.dim() == 4),
            "flow_matching_loss_backward: x0 and noise must be [B, C, F, H, W] (or [C, F, H, W]) ",
            "of one shape, got ", x0.defined() ? x0.desc() : std::string("undefined"), " and ",
            noise.defined() ? noise.desc() : std::string("undefined"));
  const int64_t B = x0.dim() == 5 ? x0.size(0) : 1;
  OSP_CHECK(int64_t(sigma.size()) == B, "flow_matching_loss_backward: got ", sigma.size(),
            " sigmas for ", B, " samples (one per sample)");
  for (float s : sigma)
    OSP_CHECK(std::isfinite(s) && s >= 0.f && s <= 1.f,
              "flow_matching_loss_backward: sigma ", s, " is outside [0, 1]");
  const Device dev = dit.options().device;
  const Shape shape5 = x0.dim() == 5 ? x0.shape() : Shape{1, x0.size(0), x0.size(1), x0.size(2),
                                                          x0.size(3)};
  Tensor a = Tensor::empty(shape5, DType::F32, dev), n = Tensor::empty(shape5, DType::F32, dev);
  a.copy_from(x0.contiguous().view(shape5));
  n.copy_from(noise.contiguous().view(shape5));
  // x_σ = σ·noise + (1 − σ)·x0 and the target noise − x0, per sample
  Tensor xs = Tensor::empty(shape5, DType::F32, dev), target = Tensor::empty(shape5, DType::F32, dev);
  std::vector<float> t(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const float s = sigma[size_t(b)];
    Tensor xb = xs.select(0, b), tb = target.select(0, b);
    ops::axpby(s, n.select(0, b), 1.f - s, a.select(0, b), xb);
    ops::axpby(1.f, n.select(0, b), -1.f, a.select(0, b), tb);
    t[size_t(b)] = 1000.f * s;
  }
  const Tensor x_in = x0.dim() == 5 ? xs : xs.select(0, 0);
  const double numel = double(xs.numel());
  double loss = 0;
  Tensor v = forward_backward(
      dit, sp, x_in, t, context,
      [&](const Tensor& vv) {
        const Tensor v5 = vv.view(shape5);
        Tensor diff = Tensor::empty(shape5, DType::F32, dev);
        ops::axpby(1.f, v5, -1.f, target, diff);  // v − (noise − x0)
        const Tensor dh = diff.to(Device::cpu());
        const float* p = dh.data<float>();
        double acc = 0;
        for (int64_t i = 0; i < dh.numel(); ++i) acc += double(p[i]) * double(p[i]);
        loss = acc / numel;
        Tensor dv = Tensor::empty(shape5, DType::F32, dev);
        ops::axpby(float(2.0 / numel), diff, 0.f, diff, dv);  // dL/dv = 2·diff / numel
        return dv.view(vv.shape());
      },
      extra);
  if (v_out) *v_out = v;
  return loss;
}

}  // namespace osp::train
