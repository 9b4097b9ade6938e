// cuBLAS helpers shared by the conv3d and VAE-attention CUDA kernels (t5vae engineer).
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cublas_v2.h>

#include <cstdint>

namespace osp::ops::cuda {
// A cuBLAS (not Lt) handle on stream(), created on first use.
cublasHandle_t conv_cublas();
// False when OSP_VAE_FP32=1 asks for plain fp32 GEMMs in the VAE convolutions.
bool conv_use_tf32();
// Row-major C[M, N] (row stride ldc) = A[M, K] (row stride lda) · B[K, N] (row stride ldb), F32.
void gemm_rm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                 int64_t ldb, float* C, int64_t ldc, bool tf32);
}  // namespace osp::ops::cuda
#endif
