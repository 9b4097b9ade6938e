// HiF8 tensor functions: validation, CPU implementations, and dispatch to quant/cuda.
#include "osp/quant/hif8.h"

#include <array>
#include <cmath>

#include "osp/quant/hif8_scalar.h"
#include "osp/quant/philox.h"
#ifdef OSP_HAVE_CUDA
#include "osp/quant/cuda/hif8_cuda.h"
#endif

namespace osp::quant {

namespace {

const std::array<float, 256>& table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> r{};
    for (int c = 0; c < 256; ++c) r[c] = detail::hif8_decode(uint8_t(c));
    return r;
  }();
  return t;
}

bool is_float_io(DType t) { return t == DType::F32 || t == DType::BF16; }

void check_float_input(const Tensor& x, const char* fn) {
  OSP_CHECK(x.defined(), fn, ": input tensor is undefined");
  OSP_CHECK(is_float_io(x.dtype()), fn, ": input must be f32 or bf16, got ", x.desc(),
            " (convert with .to(DType::F32) first)");
}

void check_out(const Tensor& x, const Tensor& out, const char* fn) {
  OSP_CHECK(out.defined(), fn, ": output tensor is undefined (preallocate it with x's shape)");
  OSP_CHECK(out.shape() == x.shape(), fn, ": output shape ", shape_str(out.shape()),
            " differs from input shape ", shape_str(x.shape()));
  OSP_CHECK(out.is_contiguous(), fn, ": output must be contiguous, got ", out.desc());
  check_same_device(x, out, fn);
}

#ifndef OSP_HAVE_CUDA
[[noreturn]] void not_built_with_cuda(const char* fn) {
  fail(str(fn, ": tensor is on CUDA but this build has no CUDA backend (rebuild with nvcc "
               "available, -DOSP_CUDA=ON)"));
}
#endif

// Element read/write helpers for the CPU paths (F32/BF16, contiguous).
inline float load(const void* p, DType t, int64_t i) {
  return t == DType::F32 ? static_cast<const float*>(p)[i]
                         : bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
inline void store(void* p, DType t, int64_t i, float v) {
  if (t == DType::F32) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}

float cpu_amax(const Tensor& xc) {
  const void* p = xc.raw();
  DType t = xc.dtype();
  int64_t n = xc.numel();
  float m = 0.0f;
#pragma omp parallel for reduction(max : m) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float a = std::fabs(load(p, t, i));
    if (a > m) m = a;  // NaN compares false: ignored
  }
  return m;
}

}  // namespace

// ------------------------------------------------------------------ scalar
uint8_t hif8_encode(float x, bool saturate) { return detail::hif8_encode_ta(x, saturate); }
float hif8_decode(uint8_t code) { return table()[code]; }
float hif8_round(float x, bool saturate) { return table()[detail::hif8_encode_ta(x, saturate)]; }
uint8_t hif8_encode_hybrid(float x, uint32_t random_word, bool saturate) {
  return detail::hif8_encode_hybrid(x, saturate, random_word);
}
const float* hif8_decode_table() { return table().data(); }

float hif8_scale_for(float amax_v, float max_target, DType dtype) {
  OSP_CHECK(std::isfinite(max_target) && max_target > 0, "hif8 scaling: max_target must be a ",
            "positive finite number (15 forward, 224 backward), got ", max_target);
  if (!std::isfinite(amax_v)) return 1.0f;
  if (dtype == DType::BF16) {
    float a = std::max(amax_v, round_bf16(kHiF8AmaxFloor));
    return round_bf16(max_target / a);
  }
  float a = std::max(amax_v, kHiF8AmaxFloor);
  return max_target / a;
}

// ------------------------------------------------------------------ encode / decode
void hif8_encode(const Tensor& x, Tensor& out, bool saturate) {
  check_float_input(x, "hif8_encode");
  check_out(x, out, "hif8_encode");
  OSP_CHECK(out.dtype() == DType::U8 || out.dtype() == DType::HiF8,
            "hif8_encode: output must be u8 or hif8, got ", out.desc());
  Tensor xc = x.contiguous();
  if (x.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    cuda::hif8_encode(xc, out, saturate);
    return;
#else
    not_built_with_cuda("hif8_encode");
#endif
  }
  const void* p = xc.raw();
  DType t = xc.dtype();
  uint8_t* o = out.data<uint8_t>();
  int64_t n = xc.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = detail::hif8_encode_ta(load(p, t, i), saturate);
}

Tensor hif8_encode(const Tensor& x, bool saturate) {
  Tensor out = Tensor::empty(x.shape(), DType::HiF8, x.device());
  hif8_encode(x, out, saturate);
  return out;
}

void hif8_decode(const Tensor& codes, Tensor& out) {
  OSP_CHECK(codes.defined(), "hif8_decode: input tensor is undefined");
  OSP_CHECK(codes.dtype() == DType::U8 || codes.dtype() == DType::HiF8,
            "hif8_decode: codes must be u8 or hif8, got ", codes.desc());
  check_out(codes, out, "hif8_decode");
  OSP_CHECK(is_float_io(out.dtype()), "hif8_decode: output must be f32 or bf16, got ",
            out.desc());
  Tensor cc = codes.contiguous();
  if (codes.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    cuda::hif8_decode(cc, out);
    return;
#else
    not_built_with_cuda("hif8_decode");
#endif
  }
  const uint8_t* c = cc.data<uint8_t>();
  const float* tab = table().data();
  void* o = out.raw();
  DType t = out.dtype();
  int64_t n = cc.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store(o, t, i, tab[c[i]]);
}

Tensor hif8_decode(const Tensor& codes, DType dtype) {
  Tensor out = Tensor::empty(codes.shape(), dtype, codes.device());
  hif8_decode(codes, out);
  return out;
}

// ------------------------------------------------------------------ rounding
namespace {
void check_round_args(const Tensor& x, const Tensor& out, const char* name) {
  check_float_input(x, name);
  check_out(x, out, name);
  OSP_CHECK(is_float_io(out.dtype()), name, ": output must be f32 or bf16, got ", out.desc());
}
// out[i] = decode(code(x[i], i)) on the CPU (x contiguous).
template <typename Code>
void round_cpu(const Tensor& xc, Tensor& out, Code&& code) {
  const void* p = xc.raw();
  DType ti = xc.dtype(), to = out.dtype();
  void* o = out.raw();
  const float* tab = table().data();
  int64_t n = xc.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store(o, to, i, tab[code(load(p, ti, i), i)]);
}
}  // namespace

void hif8_round(const Tensor& x, Tensor& out, bool saturate) {
  check_round_args(x, out, "hif8_round");
  Tensor xc = x.contiguous();
  if (x.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    cuda::hif8_round(xc, out, saturate);
    return;
#else
    not_built_with_cuda("hif8_round");
#endif
  }
  round_cpu(xc, out, [&](float v, int64_t) { return detail::hif8_encode_ta(v, saturate); });
}

void hif8_round_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                           bool saturate) {
  check_round_args(x, out, "hif8_round_stochastic");
  Tensor xc = x.contiguous();
  if (x.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    cuda::hif8_round_stochastic(xc, out, seed, offset, saturate);
    return;
#else
    not_built_with_cuda("hif8_round_stochastic");
#endif
  }
  round_cpu(xc, out, [&](float v, int64_t i) {
    return detail::hif8_encode_hybrid(v, saturate, detail::philox_word(seed, offset + uint64_t(i)));
  });
}

// ------------------------------------------------------------------ scaling
float amax(const Tensor& x) {
  check_float_input(x, "amax");
  if (x.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    return cuda::amax(x.contiguous());
#else
    not_built_with_cuda("amax");
#endif
  }
  return cpu_amax(x.contiguous());
}

namespace {
// Shared by the TA and the stochastic scaled fake quant (CPU path and validation).
void fake_quant_impl(const Tensor& x, Tensor& out, float max_target, bool stochastic,
                     uint64_t seed, uint64_t offset, const char* fn) {
  check_float_input(x, fn);
  check_out(x, out, fn);
  OSP_CHECK(is_float_io(out.dtype()), fn, ": output must be f32 or bf16, got ", out.desc());
  OSP_CHECK(std::isfinite(max_target) && max_target > 0 && max_target <= 32768.0f, fn,
            ": max_target must be in (0, 32768] (15 forward, 224 backward), got ", max_target);
  Tensor xc = x.contiguous();
  if (x.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    if (stochastic) cuda::hif8_fake_quant_stochastic(xc, out, max_target, seed, offset);
    else cuda::hif8_fake_quant(xc, out, max_target);
    return;
#else
    not_built_with_cuda(fn);
#endif
  }
  const DType ti = xc.dtype(), to = out.dtype();
  const bool bf16 = ti == DType::BF16;
  const float s = hif8_scale_for(cpu_amax(xc), max_target, ti);
  const void* p = xc.raw();
  void* o = out.raw();
  const float* tab = table().data();
  const int64_t n = xc.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float xs = load(p, ti, i) * s;
    if (bf16) xs = round_bf16(xs);
    uint8_t c = stochastic ? detail::hif8_encode_hybrid(
                                 xs, false, detail::philox_word(seed, offset + uint64_t(i)))
                           : detail::hif8_encode_ta(xs, false);
    float v = tab[c] / s;
    store(o, to, i, bf16 ? round_bf16(v) : v);
  }
}
}  // namespace

void hif8_fake_quant(const Tensor& x, Tensor& out, float max_target) {
  fake_quant_impl(x, out, max_target, false, 0, 0, "hif8_fake_quant");
}

void hif8_fake_quant_stochastic(const Tensor& x, Tensor& out, uint64_t seed, uint64_t offset,
                                float max_target) {
  fake_quant_impl(x, out, max_target, true, seed, offset, "hif8_fake_quant_stochastic");
}

Tensor hif8_fake_quant(const Tensor& x, float max_target) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  hif8_fake_quant(x, out, max_target);
  return out;
}

}  // namespace osp::quant
