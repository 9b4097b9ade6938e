// CUDA side of quant/fp8.h (compiled when OSP_HAVE_CUDA); arguments validated by fp8.cpp.
#pragma once
#include <cstdint>

#include "osp/core/tensor.h"
#include "osp/quant/cuda/hif8_cuda.h"

namespace osp::quant::cuda {
// codes = E4M3(HiF8(x·s)), scale_inv[0] = 1/s, s from the device amax (no host sync).
// shape: the launch shape (bench and test knob, hif8_cuda.h); the default is production's.
void hif8_quantize_e4m3(const Tensor& x, Tensor& codes, Tensor& scale_inv, float max_target,
                        StreamShape shape = {});
void fp8_dequantize(const Tensor& codes, const Tensor& scale_inv, Tensor& out,
                    StreamShape shape = {});
// out[M,N] = (*sx)(*sw) · X[M,K] · W[N,K]ᵀ + bias through cuBLASLt (E4M3 × E4M3, fp32 accum).
// gelu: fuse GELU-tanh into the epilogue when cuBLASLt has such an algorithm; returns whether
// it was fused (if not, the caller applies it).
bool fp8_gemm(const uint8_t* x, const uint8_t* w, const float* sx, const float* sw,
              const Tensor* bias, Tensor& out, int64_t M, int64_t N, int64_t K, bool fast_accum,
              bool gelu);
}  // namespace osp::quant::cuda
