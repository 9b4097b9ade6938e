// FP8 E4M3 path: scalar helpers, HiF8→E4M3 operand quantization and the GEMM (CPU reference
// here, cuBLASLt in cuda/fp8_linear.cu).
#include "osp/quant/fp8.h"

#include <cmath>

#include "osp/ops/ops.h"
#include "osp/quant/e4m3_scalar.h"
#include "osp/quant/hif8_scalar.h"
#ifdef OSP_HAVE_CUDA
#include "osp/quant/cuda/fp8_cuda.h"
#endif

namespace osp::quant {

uint8_t e4m3_encode(float x) { return detail::e4m3_encode_rne(x); }
float e4m3_decode(uint8_t code) { return detail::e4m3_decode_bits(code); }
bool is_e4m3_exact(float v) {
  if (!std::isfinite(v) || std::fabs(v) > 448.0f) return false;
  return e4m3_decode(e4m3_encode(v)) == v;
}

namespace {
void ensure(Tensor& t, const Shape& shape, DType dt, Device dev) {
  if (!t.defined() || t.shape() != shape || t.dtype() != dt || t.device() != dev ||
      !t.is_contiguous())
    t = Tensor::empty(shape, dt, dev);
}

void check_fp8(const Fp8Tensor& q, const char* fn, const char* what) {
  OSP_CHECK(q.codes.defined() && q.scale_inv.defined(), fn, ": ", what,
            " is not quantized (use hif8_quantize_e4m3 first)");
  OSP_CHECK(q.codes.dtype() == DType::F8E4M3, fn, ": ", what, ".codes must be f8e4m3, got ",
            q.codes.desc());
  OSP_CHECK(q.scale_inv.dtype() == DType::F32 && q.scale_inv.numel() == 1, fn, ": ", what,
            ".scale_inv must be a single f32, got ", q.scale_inv.desc());
  OSP_CHECK(q.codes.is_contiguous(), fn, ": ", what, ".codes must be contiguous");
  check_same_device(q.codes, q.scale_inv, fn);
}
}  // namespace

void hif8_quantize_e4m3(const Tensor& x, Fp8Tensor& out, float max_target) {
  OSP_CHECK(x.defined(), "hif8_quantize_e4m3: input tensor is undefined");
  OSP_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::BF16,
            "hif8_quantize_e4m3: input must be f32 or bf16, got ", x.desc());
  OSP_CHECK(std::isfinite(max_target) && max_target > 0 && max_target <= 448.0f,
            "hif8_quantize_e4m3: max_target must be in (0, 448] (the E4M3 range; 15 forward, "
            "224 backward), got ", max_target);
  ensure(out.codes, x.shape(), DType::F8E4M3, x.device());
  ensure(out.scale_inv, {1}, DType::F32, x.device());
  Tensor xc = x.contiguous();
  if (x.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    cuda::hif8_quantize_e4m3(xc, out.codes, out.scale_inv, max_target);
    return;
#else
    fail("hif8_quantize_e4m3: tensor is on CUDA but this build has no CUDA backend");
#endif
  }
  const bool bf16 = x.dtype() == DType::BF16;
  const float s = hif8_scale_for(amax(xc), max_target, x.dtype());
  out.scale_inv.data<float>()[0] = 1.0f / s;
  uint8_t* o = out.codes.data<uint8_t>();
  const int64_t n = xc.numel();
  const void* p = xc.raw();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float xs = bf16 ? round_bf16(bf16_to_f32(static_cast<const uint16_t*>(p)[i]) * s)
                    : static_cast<const float*>(p)[i] * s;
    float v = detail::hif8_decode(detail::hif8_encode_ta(xs, false));
    o[i] = detail::e4m3_encode_rne(v);
  }
}

Fp8Tensor hif8_quantize_e4m3(const Tensor& x, float max_target) {
  Fp8Tensor q;
  hif8_quantize_e4m3(x, q, max_target);
  return q;
}

void fp8_dequantize(const Fp8Tensor& q, Tensor& out) {
  check_fp8(q, "fp8_dequantize", "q");
  OSP_CHECK(out.defined() && out.shape() == q.codes.shape() && out.is_contiguous() &&
                (out.dtype() == DType::F32 || out.dtype() == DType::BF16),
            "fp8_dequantize: out must be a contiguous f32/bf16 tensor of shape ",
            shape_str(q.codes.shape()), ", got ", out.defined() ? out.desc() : "undefined");
  check_same_device(q.codes, out, "fp8_dequantize");
  if (out.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    cuda::fp8_dequantize(q.codes, q.scale_inv, out);
    return;
#else
    fail("fp8_dequantize: tensor is on CUDA but this build has no CUDA backend");
#endif
  }
  const float si = q.scale_inv.data<float>()[0];
  const uint8_t* c = q.codes.data<uint8_t>();
  const int64_t n = q.codes.numel();
  if (out.dtype() == DType::F32) {
    float* o = out.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = detail::e4m3_decode_bits(c[i]) * si;
  } else {
    uint16_t* o = out.data<uint16_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(detail::e4m3_decode_bits(c[i]) * si);
  }
}

Fp8Tensor fp8_from_hif8_codes(const Tensor& codes, float scale) {
  OSP_CHECK(codes.defined() && (codes.dtype() == DType::U8 || codes.dtype() == DType::HiF8),
            "fp8_from_hif8_codes: codes must be u8 or hif8, got ",
            codes.defined() ? codes.desc() : "undefined");
  OSP_CHECK(codes.device().is_cpu(), "fp8_from_hif8_codes: codes must be on the CPU, got ",
            codes.desc());
  OSP_CHECK(std::isfinite(scale) && scale > 0, "fp8_from_hif8_codes: scale must be positive ",
            "and finite, got ", scale);
  uint8_t lut[256];
  for (int c = 0; c < 256; ++c) lut[c] = detail::e4m3_encode_rne(detail::hif8_decode(uint8_t(c)));
  Tensor cc = codes.contiguous();
  const uint8_t* p = static_cast<const uint8_t*>(cc.raw());
  const int64_t n = cc.numel();
  for (int64_t i = 0; i < n; ++i) {
    float v = detail::hif8_decode(p[i]);
    OSP_CHECK(std::isfinite(v) && std::fabs(v) <= 448.0f, "fp8_from_hif8_codes: element ", i,
              " is ", v, ", outside E4M3's range (was the checkpoint converted with max_target ",
              "> 448?)");
  }
  Fp8Tensor q;
  q.codes = Tensor::empty(codes.shape(), DType::F8E4M3);
  uint8_t* o = q.codes.data<uint8_t>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = lut[p[i]];
  q.scale_inv = Tensor::from_vector({1.0f / scale}, {1});
  return q;
}

void fp8_linear(const Fp8Tensor& x, const Fp8Tensor& w, const Tensor* bias, Tensor& out,
                const Fp8LinearOptions& opt, ops::Act act) {
  check_fp8(x, "fp8_linear", "x");
  check_fp8(w, "fp8_linear", "w");
  const Tensor& xc = x.codes;
  const Tensor& wc = w.codes;
  OSP_CHECK(wc.dim() == 2, "fp8_linear: w must be [N, K], got ", shape_str(wc.shape()));
  OSP_CHECK(xc.dim() >= 1 && xc.size(-1) == wc.size(1), "fp8_linear: x ",
            shape_str(xc.shape()), " and w ", shape_str(wc.shape()),
            " disagree on K (x's last dim must equal w's second)");
  const int64_t K = wc.size(1), N = wc.size(0), M = xc.numel() / std::max<int64_t>(K, 1);
  Shape oshape = xc.shape();
  oshape.back() = N;
  OSP_CHECK(out.defined() && out.shape() == oshape && out.is_contiguous(),
            "fp8_linear: out must be a contiguous tensor of shape ", shape_str(oshape), ", got ",
            out.defined() ? out.desc() : "undefined");
  check_same_device(xc, wc, "fp8_linear");
  check_same_device(xc, out, "fp8_linear");
  if (bias) {
    OSP_CHECK(bias->defined() && bias->numel() == N &&
                  (bias->dtype() == DType::F32 || bias->dtype() == DType::BF16),
              "fp8_linear: bias must be f32/bf16 with N = ", N, " elements, got ",
              bias->defined() ? bias->desc() : "undefined");
    check_same_device(xc, *bias, "fp8_linear");
  }
  if (xc.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    OSP_CHECK(out.dtype() == DType::F32 || out.dtype() == DType::BF16,
              "fp8_linear (CUDA): out must be bf16 or f32, got ", out.desc());
    OSP_CHECK(K % 16 == 0 && N % 8 == 0, "fp8_linear (CUDA): cuBLASLt FP8 needs K % 16 == 0 and ",
              "N % 8 == 0, got K = ", K, ", N = ", N, " (pad the weight)");
    const bool fused = cuda::fp8_gemm(xc.data<uint8_t>(), wc.data<uint8_t>(),
                                      x.scale_inv.data<float>(), w.scale_inv.data<float>(), bias,
                                      out, M, N, K, opt.fast_accum, act == ops::Act::GeluTanh);
    if (act == ops::Act::GeluTanh && !fused) ops::gelu_tanh(out, out);
    if (act == ops::Act::Silu) ops::silu(out, out);
    return;
#else
    fail("fp8_linear: tensor is on CUDA but this build has no CUDA backend");
#endif
  }
  OSP_CHECK(out.dtype() == DType::F32, "fp8_linear (CPU reference): out must be f32, got ",
            out.desc());
  // Reference: float GEMM of the E4M3 values (exact in f32), then the two scales and the bias.
  Tensor xv = Tensor::empty({M, K}, DType::F32), wv = Tensor::empty({N, K}, DType::F32);
  Fp8Tensor xone{xc, Tensor::from_vector({1.0f}, {1})}, wone{wc, Tensor::from_vector({1.0f}, {1})};
  xone.codes = xc.view({M, K});
  fp8_dequantize(xone, xv);
  fp8_dequantize(wone, wv);
  Tensor o2 = out.view({M, N});
  ops::linear(xv, wv, nullptr, o2);
  const float sc = x.scale_inv.data<float>()[0] * w.scale_inv.data<float>()[0];
  Tensor bf = bias ? bias->to(DType::F32).contiguous() : Tensor();
  float* o = o2.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      o[m * N + n] = o[m * N + n] * sc + (bias ? bf.data<float>()[n] : 0.0f);
  if (act == ops::Act::GeluTanh) ops::gelu_tanh(out, out);
  if (act == ops::Act::Silu) ops::silu(out, out);
}

void fp8_linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out,
                const Fp8LinearOptions& opt, ops::Act act) {
  Fp8Tensor xq = hif8_quantize_e4m3(x, kHiF8ForwardMax);
  Fp8Tensor wq = hif8_quantize_e4m3(w, kHiF8ForwardMax);
  fp8_linear(xq, wq, bias, out, opt, act);
}

}  // namespace osp::quant
