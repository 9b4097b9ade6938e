// Small kernels around cuDNN's FP8 SDPA (fp8_attention_cudnn.cpp): the output scales derived
// on the device from v's scale_inv (no host sync), and the conversion of an F16 / E4M3 O into
// our BF16 output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "osp/core/cuda_check.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/quant/cuda/fp8_attention_cuda.h"
#include "osp/quant/e4m3_scalar.h"

namespace osp::quant::cuda {

namespace {

__global__ void output_scales_kernel(const float* dv, float* so16, float* inv16, float* so8,
                                     float* inv8) {
  const float d = *dv;
  *so16 = 1.0f / d;  // O in F16 holds O / dv (v's code units, |O| ≤ 15)
  *inv16 = d;
  const float s8 = 448.0f / (15.0f * d);  // O in E4M3 spans the whole range: |O·s8| ≤ 448
  *so8 = s8;
  *inv8 = 1.0f / s8;
}

// out[b·ob + i] = bf16(in[b·ib + i] · *scale) for i < n, per batch b (grid.y).
template <typename In>
__global__ void to_bf16_kernel(const In* in, const float* scale, __nv_bfloat16* out, int64_t n,
                               int64_t ib, int64_t ob) {
  const float s = *scale;
  const In* src = in + int64_t(blockIdx.y) * ib;
  __nv_bfloat16* dst = out + int64_t(blockIdx.y) * ob;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float x;
    if constexpr (sizeof(In) == 1)
      x = detail::e4m3_decode_bits(src[i]);
    else
      x = __half2float(src[i]);
    dst[i] = __float2bfloat16(x * s);
  }
}

}  // namespace

void fp8_attn_output_scales(const float* dv, float* so16, float* inv16, float* so8, float* inv8) {
  output_scales_kernel<<<1, 1, 0, ops::cuda::stream()>>>(dv, so16, inv16, so8, inv8);
  OSP_CUDA_LAUNCH_CHECK("fp8 attention output_scales_kernel");
}

void fp8_attn_o_to_bf16(const void* in, bool in_e4m3, const float* scale, void* out, int64_t B,
                        int64_t n, int64_t in_bstride, int64_t out_bstride) {
  if (B == 0 || n == 0) return;
  dim3 grid(ops::cuda::grid_for(n), unsigned(B));
  if (in_e4m3)
    to_bf16_kernel<uint8_t><<<grid, 256, 0, ops::cuda::stream()>>>(
        static_cast<const uint8_t*>(in), scale, static_cast<__nv_bfloat16*>(out), n, in_bstride,
        out_bstride);
  else
    to_bf16_kernel<__half><<<grid, 256, 0, ops::cuda::stream()>>>(
        static_cast<const __half*>(in), scale, static_cast<__nv_bfloat16*>(out), n, in_bstride,
        out_bstride);
  OSP_CUDA_LAUNCH_CHECK("fp8 attention to_bf16_kernel");
}

}  // namespace osp::quant::cuda
