#include "osp/train/adamw.h"

#include <cmath>
#include <set>

#include "osp/core/error.h"
#ifdef OSP_HAVE_CUDA
#include "osp/train/cuda/train_kernels.h"
#endif

namespace osp::train {

void AdamWConfig::validate() const {
  auto finite = [](double x) { return std::isfinite(x); };
  OSP_CHECK(finite(lr) && lr >= 0, "AdamW: lr must be a finite number >= 0, got ", lr);
  OSP_CHECK(finite(beta1) && beta1 >= 0 && beta1 < 1, "AdamW: beta1 must be in [0, 1), got ", beta1);
  OSP_CHECK(finite(beta2) && beta2 >= 0 && beta2 < 1, "AdamW: beta2 must be in [0, 1), got ", beta2);
  OSP_CHECK(finite(eps) && eps > 0, "AdamW: eps must be > 0, got ", eps);
  OSP_CHECK(finite(weight_decay) && weight_decay >= 0, "AdamW: weight decay must be >= 0, got ",
            weight_decay);
}

void check_param_table(const ParamTable& params, bool need_grads, bool need_values) {
  std::set<std::string> seen;
  for (const auto& p : params) {
    OSP_CHECK(!p.name.empty(), "parameter table: a parameter has an empty name");
    OSP_CHECK(seen.insert(p.name).second, "parameter table: '", p.name, "' appears twice");
    if (!need_values && (!p.value || !p.value->defined())) {  // a released value: the gradient alone
      OSP_CHECK(p.grad && p.grad->defined(), "parameter '", p.name, "' has no gradient tensor");
      OSP_CHECK(p.grad->dtype() == DType::F32 && p.grad->is_contiguous() &&
                    p.grad->numel() == shape_numel(p.ckpt_shape),
                "parameter '", p.name, "': gradient must be a contiguous f32 tensor of ", shape_numel(p.ckpt_shape),
                " elements, got ", p.grad->desc());
      continue;
    }
    OSP_CHECK(p.value && p.value->defined(), "parameter '", p.name, "' has no value tensor");
    const Tensor& v = *p.value;
    OSP_CHECK(v.is_contiguous(), "parameter '", p.name, "': value must be contiguous, got ", v.desc());
    OSP_CHECK(v.dtype() == DType::F32 || v.dtype() == DType::BF16, "parameter '", p.name,
              "': value must be f32 or bf16, got ", v.desc());
    OSP_CHECK(shape_numel(p.ckpt_shape) == v.numel(), "parameter '", p.name, "': checkpoint shape ",
              shape_str(p.ckpt_shape), " does not have the value's ", v.numel(), " elements");
    if (!need_grads) continue;
    OSP_CHECK(p.grad && p.grad->defined(), "parameter '", p.name, "' has no gradient tensor");
    const Tensor& g = *p.grad;
    OSP_CHECK(g.dtype() == DType::F32 && g.is_contiguous() && g.numel() == v.numel() &&
                  g.device() == v.device(),
              "parameter '", p.name, "': gradient must be a contiguous f32 tensor with the value's ",
              v.numel(), " elements on ", v.device().name(), ", got ", g.desc());
  }
}

AdamW::AdamW(const ParamTable& params, const AdamWConfig& cfg) : params_(params), cfg_(cfg) {
  cfg_.validate();
  check_param_table(params_, /*need_grads=*/true);
  slots_.reserve(params_.size());
  for (const auto& p : params_) {
    Slot s;
    s.master = Tensor::empty(p.value->shape(), DType::F32, p.value->device());
    s.master.copy_from(*p.value);
    s.m = Tensor::zeros(p.value->shape(), DType::F32, p.value->device());
    s.v = Tensor::zeros(p.value->shape(), DType::F32, p.value->device());
    slots_.push_back(std::move(s));
  }
}

namespace {

void adamw_cpu(float* master, float* m, float* v, const float* g, Tensor& value, int64_t n, float decay,
               float b1, float b2, float step_size, float bc2_sqrt, float eps) {
  float* vf = value.defined() && value.dtype() == DType::F32 ? value.data<float>() : nullptr;
  uint16_t* vb = value.defined() && value.dtype() == DType::BF16 ? value.data<uint16_t>() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float p = master[i] * decay;
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    p = p - step_size * (mi / denom);
    master[i] = p;
    if (vf) vf[i] = p;
    if (vb) vb[i] = f32_to_bf16(p);
  }
}

}  // namespace

void AdamW::step(double lr) {
  OSP_CHECK(std::isfinite(lr) && lr >= 0, "AdamW: learning rate must be finite and >= 0, got ", lr);
  const int64_t t = step_ + 1;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(t));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, double(t));
  const float decay = float(1.0 - lr * cfg_.weight_decay);
  const float step_size = float(lr / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  const float b1 = float(cfg_.beta1), b2 = float(cfg_.beta2), eps = float(cfg_.eps);
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& value = *params_[k].value;
    const Tensor& grad = *params_[k].grad;
    Slot& s = slots_[k];
    const int64_t n = s.master.numel();  // (the value may be released: then only the master moves)
    if (s.master.device().is_cpu()) {
      adamw_cpu(s.master.data<float>(), s.m.data<float>(), s.v.data<float>(), grad.data<float>(), value, n,
                decay, b1, b2, step_size, bc2_sqrt, eps);
    } else {
#ifdef OSP_HAVE_CUDA
      cuda::adamw_step(s.master.data<float>(), s.m.data<float>(), s.v.data<float>(), grad.data<float>(),
                       value.defined() ? value.raw() : nullptr, value.defined() && value.dtype() == DType::BF16, n,
                       decay, b1, b2, step_size, bc2_sqrt, eps);
#else
      fail(str("AdamW: parameter '", params_[k].name, "' is on ", s.master.device().name(),
               " but this build has no CUDA"));
#endif
    }
  }
  step_ = t;
}

void AdamW::restore(int64_t steps) {
  OSP_CHECK(steps >= 0, "AdamW: restored step count must be >= 0, got ", steps);
  OSP_CHECK(slots_.size() == params_.size(), "AdamW: state has ", slots_.size(), " slots for ",
            params_.size(), " parameters");
  for (size_t k = 0; k < params_.size(); ++k) {
    const Tensor& v = *params_[k].value;
    for (const Tensor* t : {&slots_[k].master, &slots_[k].m, &slots_[k].v})
      OSP_CHECK(t->defined() && t->dtype() == DType::F32 && t->numel() == v.numel() &&
                    t->device() == v.device() && t->is_contiguous(),
                "AdamW: restored state of '", params_[k].name, "' does not match its parameter ", v.desc());
  }
  step_ = steps;
  refresh_values();
}

void AdamW::refresh_values() {
  for (size_t k = 0; k < params_.size(); ++k)  // a value may be its own master (ShardedAdamW)
    if (params_[k].value->defined() && params_[k].value->raw() != slots_[k].master.raw())
      params_[k].value->copy_from(slots_[k].master);
}

}  // namespace osp::train
