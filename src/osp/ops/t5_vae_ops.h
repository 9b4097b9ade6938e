// Ops the umT5 encoder and the Wan-VAE need beyond ops.h (elementwise add/mul, the VAE channel norm,
// nearest upsampling, the VAE spatial attention, T5 biased attention and relative bias). Same
// conventions as ops.h: free functions, validated here, dispatched to cpu:: / cuda::.
#pragma once
#include <cstdint>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::ops {

// ---------------------------------------------------------------- elementwise (F32 or BF16)
// x += y (same shape and dtype, contiguous).  BF16 math is done in fp32 and rounded once.
void add_(Tensor& x, const Tensor& y);
// x *= y (same shape and dtype, contiguous).
void mul_(Tensor& x, const Tensor& y);

// ---------------------------------------------------------------- VAE norm (F32)
// The Wan-VAE RMS_norm over the channel dim (F.normalize based), optionally followed by SiLU:
//   y[n, c, s] = x[n, c, s] / max(‖x[n, :, s]‖₂, 1e-12) · sqrt(C) · gamma[c]
// x, out [N, C, S...] (dim >= 2; S = product of the trailing dims), gamma [C] (any shape with C
// elements is accepted: [C,1,1,1] / [C,1,1] from the checkpoint).  In place allowed.
void channel_rms_norm(const Tensor& x, const Tensor& gamma, bool silu, Tensor& out);

// ---------------------------------------------------------------- resampling (F32)
// Nearest ×2 in H and W (PyTorch 'nearest-exact' at scale 2: src = dst / 2).
// x [N, C, H, W] → out [N, C, 2H, 2W].
void upsample_nearest2x(const Tensor& x, Tensor& out);

// ---------------------------------------------------------------- VAE attention (F32)
// Single-head self-attention inside every frame, channel-major (the VAE's AttentionBlock core):
//   qkv [N, 3C, L] with q = rows [0, C), k = [C, 2C), v = [2C, 3C) of each frame;
//   out[n, c, i] = Σ_j softmax_j(Σ_c' q[c', i]·k[c', j] / sqrt(C)) · v[c, j].
// out [N, C, L].  Queries are processed in blocks so the score buffer stays bounded.
void spatial_attention(const Tensor& qkv, Tensor& out);

// ---------------------------------------------------------------- biased attention
// umT5 self-attention core without 1/sqrt(D) scaling:
//   out[b, i, h, :] = Σ_{j < kv_len[b]} softmax_j(q[b,i,h,:]·k[b,j,h,:] + bias[h,i,j]) · v[b,j,h,:]
// q, k, v, out [B, L, H, D]; bias [H, L, L] F32; kv_lens I32 [B] on the CPU (host values).
// CPU: F32.  CUDA: BF16 v/out, q/k both BF16 or both F32 (fp32 softmax/accumulation), any
// D ≤ 256, L ≤ 4096.
// Rows whose kv_len is 0 get zeros.
void biased_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                      const std::vector<int32_t>& kv_lens, Tensor& out);

// umT5 relative-position bias expansion: out[h, i, j] = table[bucket[i, j], h].
// table [NB, H] F32, bucket I32 [Lq, Lk] (values in [0, NB)), out [H, Lq, Lk] F32; same device.
void relative_bias(const Tensor& table, const Tensor& bucket, Tensor& out);

namespace cpu {
void relative_bias(const Tensor& table, const Tensor& bucket, Tensor& out);
void add_(Tensor& x, const Tensor& y);
void mul_(Tensor& x, const Tensor& y);
void channel_rms_norm(const Tensor& x, const Tensor& gamma, bool silu, Tensor& out);
void upsample_nearest2x(const Tensor& x, Tensor& out);
void spatial_attention(const Tensor& qkv, Tensor& out);
void biased_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                      const std::vector<int32_t>& kv_lens, Tensor& out);
}  // namespace cpu
namespace cuda {
void relative_bias(const Tensor& table, const Tensor& bucket, Tensor& out);
void add_(Tensor& x, const Tensor& y);
void mul_(Tensor& x, const Tensor& y);
void channel_rms_norm(const Tensor& x, const Tensor& gamma, bool silu, Tensor& out);
void upsample_nearest2x(const Tensor& x, Tensor& out);
void spatial_attention(const Tensor& qkv, Tensor& out);
void biased_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                      const std::vector<int32_t>& kv_lens, Tensor& out);
}  // namespace cuda

}  // namespace osp::ops
