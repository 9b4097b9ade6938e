// CUDA kernels behind the training utilities (adamw.cpp, grad_clip.cpp, ema.cpp). Every kernel
// runs on the legacy default stream, like the op backend, and does its math in fp32 (the grad
// sum of squares accumulates in double). Each has a CPU twin in the calling .cpp, which is the
// reference it is checked against.
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cstdint>

namespace osp::train::cuda {

// One AdamW step over n elements (torch.optim.AdamW semantics, see adamw.h):
//   master *= decay_factor;  m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²;
//   master -= step_size · m / (sqrt(v)/bc2_sqrt + eps);  value = cast(master)
// value is F32 (value_bf16 false) or BF16; it may alias master when F32 (then pass nullptr).
void adamw_step(float* master, float* m, float* v, const float* grad, void* value, bool value_bf16,
                int64_t n, float decay_factor, float beta1, float beta2, float step_size,
                float bc2_sqrt, float eps);

// Σ g² over n F32 elements, accumulated in double (fixed grid: the same sum for the same input).
double sum_squares(const float* g, int64_t n);

// g *= s.
void scale(float* g, int64_t n, float s);

// ema += (1 − decay)·(src − ema).
void ema_update(float* ema, const float* src, int64_t n, float decay);

}  // namespace osp::train::cuda
#endif
