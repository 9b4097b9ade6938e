// Validation and device dispatch for ops/t5_vae_ops.h.
#include "osp/ops/t5_vae_ops.h"

#define OSP_EXTRA_DISPATCH(dev, name, ...)                                               \
  do {                                                                                 \
    if ((dev).is_cpu()) {                                                              \
      cpu::name(__VA_ARGS__);                                                          \
    } else {                                                                           \
      OSP_EXTRA_CUDA(name, __VA_ARGS__);                                               \
    }                                                                                  \
  } while (0)
#ifdef OSP_HAVE_CUDA
#define OSP_EXTRA_CUDA(name, ...) cuda::name(__VA_ARGS__)
#else
#define OSP_EXTRA_CUDA(name, ...) \
  fail(std::string(#name) + ": this build has no CUDA backend (tensor on a CUDA device)")
#endif

namespace osp::ops {
namespace {
void check_elementwise(const Tensor& x, const Tensor& y, const char* what) {
  OSP_CHECK(x.shape() == y.shape(), what, ": shapes differ: ", x.desc(), " vs ", y.desc());
  OSP_CHECK(x.dtype() == y.dtype(), what, ": dtypes differ: ", x.desc(), " vs ", y.desc());
  OSP_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::BF16, what,
            ": needs F32 or BF16 tensors, got ", x.desc());
  check_same_device(x, y, what);
  OSP_CHECK(x.is_contiguous() && y.is_contiguous(), what, ": tensors must be contiguous");
}
}  // namespace

void add_(Tensor& x, const Tensor& y) {
  check_elementwise(x, y, "add_");
  OSP_EXTRA_DISPATCH(x.device(), add_, x, y);
}

void mul_(Tensor& x, const Tensor& y) {
  check_elementwise(x, y, "mul_");
  OSP_EXTRA_DISPATCH(x.device(), mul_, x, y);
}

void channel_rms_norm(const Tensor& x, const Tensor& gamma, bool silu, Tensor& out) {
  OSP_CHECK(x.dim() >= 2, "channel_rms_norm: input must be [N, C, ...], got ", x.desc());
  check_dtype(x, DType::F32, "channel_rms_norm input");
  check_dtype(gamma, DType::F32, "channel_rms_norm gamma");
  check_dtype(out, DType::F32, "channel_rms_norm output");
  check_shape(out, x.shape(), "channel_rms_norm output");
  OSP_CHECK(gamma.numel() == x.size(1), "channel_rms_norm: gamma ", gamma.desc(), " must have ",
            x.size(1), " elements (the channel count of ", x.desc(), ")");
  check_same_device(x, gamma, "channel_rms_norm input/gamma");
  check_same_device(x, out, "channel_rms_norm input/output");
  OSP_CHECK(x.is_contiguous() && out.is_contiguous() && gamma.is_contiguous(),
            "channel_rms_norm: tensors must be contiguous");
  OSP_EXTRA_DISPATCH(x.device(), channel_rms_norm, x, gamma, silu, out);
}

void upsample_nearest2x(const Tensor& x, Tensor& out) {
  OSP_CHECK(x.dim() == 4, "upsample_nearest2x: input must be [N, C, H, W], got ", x.desc());
  check_dtype(x, DType::F32, "upsample_nearest2x input");
  check_dtype(out, DType::F32, "upsample_nearest2x output");
  check_shape(out, {x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, "upsample_nearest2x output");
  check_same_device(x, out, "upsample_nearest2x input/output");
  OSP_CHECK(x.is_contiguous() && out.is_contiguous(), "upsample_nearest2x: tensors must be contiguous");
  OSP_EXTRA_DISPATCH(x.device(), upsample_nearest2x, x, out);
}

void spatial_attention(const Tensor& qkv, Tensor& out) {
  OSP_CHECK(qkv.dim() == 3 && qkv.size(1) % 3 == 0,
            "spatial_attention: qkv must be [N, 3C, L], got ", qkv.desc());
  check_dtype(qkv, DType::F32, "spatial_attention qkv");
  check_dtype(out, DType::F32, "spatial_attention output");
  check_shape(out, {qkv.size(0), qkv.size(1) / 3, qkv.size(2)}, "spatial_attention output");
  check_same_device(qkv, out, "spatial_attention qkv/output");
  OSP_CHECK(qkv.is_contiguous() && out.is_contiguous(), "spatial_attention: tensors must be contiguous");
  OSP_EXTRA_DISPATCH(qkv.device(), spatial_attention, qkv, out);
}

void relative_bias(const Tensor& table, const Tensor& bucket, Tensor& out) {
  OSP_CHECK(table.dim() == 2 && bucket.dim() == 2, "relative_bias: table must be [NB, H] and bucket [Lq, Lk], got ",
            table.desc(), " and ", bucket.desc());
  check_dtype(table, DType::F32, "relative_bias table");
  check_dtype(bucket, DType::I32, "relative_bias bucket");
  check_dtype(out, DType::F32, "relative_bias out");
  check_shape(out, {table.size(1), bucket.size(0), bucket.size(1)}, "relative_bias out");
  check_same_device(table, bucket, "relative_bias table/bucket");
  check_same_device(table, out, "relative_bias table/out");
  OSP_CHECK(table.is_contiguous() && bucket.is_contiguous() && out.is_contiguous(),
            "relative_bias: tensors must be contiguous");
  OSP_EXTRA_DISPATCH(table.device(), relative_bias, table, bucket, out);
}

void biased_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                      const std::vector<int32_t>& kv_lens, Tensor& out) {
  OSP_CHECK(q.dim() == 4, "biased_attention: q must be [B, L, H, D], got ", q.desc());
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  check_shape(k, q.shape(), "biased_attention k");
  check_shape(v, q.shape(), "biased_attention v");
  check_shape(out, q.shape(), "biased_attention out");
  check_shape(bias, {H, L, L}, "biased_attention bias");
  check_dtype(bias, DType::F32, "biased_attention bias");
  // CPU: all F32. CUDA: v/out BF16, q/k BF16 or (both) F32 — the logits are unscaled in umT5,
  // so keeping q/k in fp32 removes most of the bf16 error.
  const bool cpu = q.device().is_cpu();
  const DType dt = cpu ? DType::F32 : DType::BF16;
  OSP_CHECK(q.dtype() == k.dtype() && (q.dtype() == dt || (!cpu && q.dtype() == DType::F32)),
            "biased_attention: q/k must both be ", cpu ? "f32" : "bf16 or f32", ", got ",
            q.desc(), " and ", k.desc());
  for (const Tensor* t : {&q, &k, &v, static_cast<const Tensor*>(&out)}) {
    if (t == &v || t == &out) check_dtype(*t, dt, "biased_attention v/out");
    check_same_device(q, *t, "biased_attention q/k/v/out");
    OSP_CHECK(t->is_contiguous(), "biased_attention: q/k/v/out must be contiguous");
  }
  check_same_device(q, bias, "biased_attention q/bias");
  OSP_CHECK(bias.is_contiguous(), "biased_attention: bias must be contiguous");
  OSP_CHECK(int64_t(kv_lens.size()) == B, "biased_attention: ", kv_lens.size(),
            " kv_lens for a batch of ", B);
  for (int32_t n : kv_lens)
    OSP_CHECK(n >= 0 && n <= L, "biased_attention: kv_len ", n, " outside [0, ", L, "]");
  if (q.device().is_cuda())
    OSP_CHECK(q.size(3) <= 256 && L <= 4096, "biased_attention (CUDA): head dim ", q.size(3),
              " / length ", L, " beyond the kernel's limits (D <= 256, L <= 4096)");
  OSP_EXTRA_DISPATCH(q.device(), biased_attention, q, k, v, bias, kv_lens, out);
}

}  // namespace osp::ops
