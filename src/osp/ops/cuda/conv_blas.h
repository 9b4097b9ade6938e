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
// conv3d's im2col on stream(), F32: col[k, p] for output rows [y0, y0 + nrows) of the frame
// whose tap 0 reads padded input frame t0, k = ((ci·kt + ta)·kh + b)·kw + c, p = (oy − y0)·Wo + ox
// (zero where a tap falls in the padding). Shared by conv3d (conv3d.cu) and its backward.
void im2col_f32(const float* x, float* col, int64_t T, int64_t Cin, int64_t H, int64_t W, int kt,
                int kh, int kw, int64_t t0, int sh, int sw, int pt, int pl, int64_t y0,
                int64_t nrows, int64_t Wo);
}  // namespace osp::ops::cuda
#endif
