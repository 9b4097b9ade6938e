// CUDA side of quant::fp8_attention (compiled when OSP_HAVE_CUDA): cuDNN's fused FP8 SDPA
// forward through the backend graph API (fp8_attention_cudnn.cpp). Arguments are validated by
// quant/fp8_attention.cpp.
#pragma once
#include <cstdint>
#include <string>

#include "osp/ops/cuda/attention_paths.h"

namespace osp::quant::cuda {

// One FP8 SDPA call (ops/cuda/attention_paths.h; attn_scale must be set here).
using Fp8SdpaCall = ops::cuda::Fp8AttentionCall;

// Runs the call; false (with the reason in *why) where no cuDNN engine accepts the graph for
// this shape (the plan, or its absence, is cached per shape). Throws osp::Error on execution
// failures of a plan that did build.
bool fp8_sdpa_cudnn(const Fp8SdpaCall& c, std::string* why);

// Which graph variant built the last plan, or why none did (with OSP_FP8_SDPA_PROBE=1 every
// variant is tried and each outcome listed).
std::string fp8_sdpa_cudnn_note();
// How the plan of the last successful call stored O: 0 BF16 (our output directly), 1 F16,
// 2 E4M3 (both converted into the BF16 output).
int fp8_sdpa_cudnn_last_o_storage();

// fp8_attention_kernels.cu: *so16 = 1/dv, *inv16 = dv, *so8 = 448/(15·dv), *inv8 = 1/so8.
void fp8_attn_output_scales(const float* dv, float* so16, float* inv16, float* so8, float* inv8);
// out (BF16) = in (E4M3 or F16) · *scale, n elements per batch, B batches with the given strides.
void fp8_attn_o_to_bf16(const void* in, bool in_e4m3, const float* scale, void* out, int64_t B,
                        int64_t n, int64_t in_bstride, int64_t out_bstride);

}  // namespace osp::quant::cuda
