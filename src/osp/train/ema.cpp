#include "osp/train/ema.h"

#include <cmath>

#include "osp/core/error.h"
#ifdef OSP_HAVE_CUDA
#include "osp/train/cuda/train_kernels.h"
#endif

namespace osp::train {

Ema::Ema(const std::vector<Tensor>& weights, double decay) : decay_(decay) {
  OSP_CHECK(std::isfinite(decay) && decay >= 0 && decay < 1, "EMA decay must be in [0, 1), got ", decay);
  ema_.reserve(weights.size());
  for (const Tensor& w : weights) {
    Tensor e = Tensor::empty(w.shape(), DType::F32, w.device());
    e.copy_from(w);
    ema_.push_back(std::move(e));
  }
}

void Ema::update(const std::vector<Tensor>& weights) {
  OSP_CHECK(weights.size() == ema_.size(), "EMA update: ", weights.size(), " tensors for an EMA of ",
            ema_.size());
  const float one_minus = float(1.0 - decay_);
  for (size_t k = 0; k < ema_.size(); ++k) {
    Tensor& e = ema_[k];
    const Tensor& w = weights[k];
    OSP_CHECK(w.dtype() == DType::F32 && w.is_contiguous() && w.numel() == e.numel() && w.device() == e.device(),
              "EMA update: tensor ", k, " is ", w.desc(), ", expected contiguous f32 like ", e.desc());
    const int64_t n = e.numel();
    if (e.device().is_cpu()) {
      float* pe = e.data<float>();
      const float* pw = w.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) pe[i] += one_minus * (pw[i] - pe[i]);
    } else {
#ifdef OSP_HAVE_CUDA
      cuda::ema_update(e.data<float>(), w.data<float>(), n, float(decay_));
#else
      fail("EMA update: CUDA tensor in a build without CUDA");
#endif
    }
  }
}

}  // namespace osp::train
