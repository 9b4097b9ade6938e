// cuBLAS helpers shared by the conv3d and VAE-attention CUDA kernels.
#pragma once
#ifdef OSP_HAVE_CUDA
#include <cublas_v2.h>

#include <cstdint>

namespace osp::ops::cuda {
// A cuBLAS (not Lt) handle on stream(), created on first use.
cublasHandle_t conv_cublas();
// False when OSP_VAE_FP32=1 asks for plain fp32 GEMMs in the VAE convolutions.
bool conv_use_tf32();
// Strided-batched row-major F32 GEMM: for b in [0, batch): C_b[M, N] (row stride ldc) =
// A_b[M, K] · B_b[K, N], X_b = X + b·strideX (strideA 0 shares A across the batch).
void gemm_rm_f32_batched(int64_t batch, int64_t M, int64_t N, int64_t K, const float* A,
                         int64_t lda, int64_t strideA, const float* B, int64_t ldb,
                         int64_t strideB, float* C, int64_t ldc, int64_t strideC, bool tf32);
// conv3d's im2col on stream(), F32, for nf consecutive output frames (frame f's tap 0 reads padded
// input frame t0 + f·st) and output rows [y0, y0 + nrows) of each: col[k, f·nb + p] with
// k = ((ci·kt + ta)·kh + b)·kw + c, nb = nrows·Wo, p = (oy − y0)·Wo + ox (zero where a tap falls
// in the padding).  Shared by conv3d (conv3d.cu) and its backward (vae_backward.cu).
void im2col_f32(const float* x, float* col, int64_t T, int64_t Cin, int64_t H, int64_t W, int kt,
                int kh, int kw, int64_t t0, int st, int64_t nf, int sh, int sw, int pt, int pl,
                int64_t y0, int64_t nrows, int64_t Wo);
// How conv3d and its backward split To output frames of Ho×Wo for im2col buffers of at most
// cap_bytes (K = Cin·kt·kh·kw rows): whole frames, `frames` at a time (rows == Ho), when one frame
// fits; otherwise one frame at a time in bands of `rows` output rows (frames == 1).
struct ConvChunking {
  int64_t frames = 1;
  int64_t rows = 1;
};
ConvChunking conv_chunking(int64_t K, int64_t To, int64_t Ho, int64_t Wo, int64_t cap_bytes);
}  // namespace osp::ops::cuda
#endif
