// A trainable Wan-VAE: the same architecture, weights and math as model/vae.h, run on a whole
// clip at once (no chunking), with a backward into a ParamTable of the VAE's weights under the
// original Wan names — for training a small VAE for reconstruction (issue 16).
//
// Whole-clip formulation (wan-spec §5.4/§5.5: identical to the chunked inference algorithm):
//  * every causal 3×3×3 conv (and every 1³ conv) is an ordinary conv over all frames with 2
//    zero frames in front (the feature cache only re-supplies the frames a whole-clip conv sees);
//  * upsample3d: out = [X_0] ++ interleave(time_conv(X_1..X_{n−1}) with 2 zero front frames),
//    each input frame giving two output frames (channel halves), then nearest ×2 + Conv2d;
//  * downsample3d: y = Conv2d stride 2 (ZeroPad2d(0,1,0,1)); out = [y_0] ++ time_conv_stride2(
//    y_0..y_{n−1}) without padding (windows (0,1,2), (2,3,4), ...), which is what the chunked
//    encoder computes with its "last frame of the previous chunk" cache;
//  * the middle attention is per frame.
// The tests check encode/decode against WanVae::encode/decode on the same weights.
//
// Training objective (what forward_backward optimises), for a clip x in [−1, 1]:
//   moments = conv1(Encoder(x))                 [2z, T, h, w]: mu = first z channels, log_var
//                                               the rest, clamped to [−30, 20] (gradient 0
//                                               outside), before any latent normalisation
//   z = mu + exp(log_var / 2) · eps             eps ~ N(0, 1) from Philox(noise_seed, stream 0),
//                                               element n of the frame-major [T, z, h, w] latent
//                                               (sample_posterior = false: z = mu)
//   x̂ = Decoder(conv2(z))                       unclamped
//   loss = recon + kl_weight · KL
//   recon = mean over pixels of (x̂ − x)² (MSE) or |x̂ − x| (L1)
//   KL = mean over latent elements of 0.5·(mu² + exp(log_var) − 1 − log_var)
// The reported stats always include the pixel MSE and PSNR (10·log10(4 / MSE), range [−1, 1]).
//
// Memory: every block saves its input and the intermediate activations its backward needs
// (about 4 tensors of the block's size per residual block) for the whole clip; a 3×17×64×64
// clip at dim 32 needs a few hundred MB on the CPU.
//
// Devices: all weights and activations live on the model's device (CPU F32 or CUDA F32; the
// convolutions use the ops' TF32 GEMMs on CUDA); the loss, the KL and the reparameterisation run
// on the host over the (small) latent and the decoded clip.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "osp/core/param.h"
#include "osp/core/tensor.h"
#include "osp/model/vae.h"

namespace osp::model {

struct VaeLossConfig {
  enum class Recon { MSE, L1 };
  Recon recon = Recon::MSE;
  double kl_weight = 1e-6;       // 0 disables the KL term (log_var then still shapes z)
  bool sample_posterior = true;  // false: z = mu (a plain autoencoder; log_var gets no gradient
                                 // except from the KL)
};

struct VaeLossStats {
  double loss = 0;  // recon + kl_weight · KL (what the gradients are of)
  double recon = 0; // the reconstruction term (MSE or L1 as configured)
  double mse = 0;   // mean squared pixel error (always)
  double psnr = 0;  // 10·log10(4 / mse) in dB
  double kl = 0;    // mean KL per latent element
};

// A small random-init VAE config for training from scratch (issue 16): dim 32, z_dim 16,
// dim_mult [1, 2, 4, 4], 1 residual block per stage (2 in the decoder, as Wan: num_res_blocks + 1),
// temporal downsampling [false, true, true] (4× time, 8× space, like Wan2.1).
VaeConfig small_vae_config(int dim = 32, int num_res_blocks = 1);

class TrainableVae {
 public:
  // Random initial weights from Philox(seed) (stream = the tensor's index in vae_tensor_shapes):
  // conv weights U(±sqrt(3/fan_in)) (variance 1/fan_in; fan_in = Cin·kt·kh·kw), scaled by 0.1 on
  // the last conv of every residual block and the attention output projection (the residual
  // branches start small); biases 0; norm gammas 1.  cfg.has_encoder must be true.
  static TrainableVae from_scratch(const VaeConfig& cfg, uint64_t seed, Device dev = Device::cpu());
  // From existing weights (a Wan VAE checkpoint to fine-tune, or a saved training state): every
  // name of vae_tensor_shapes(cfg) must be present with that shape (any float dtype).
  static TrainableVae from_weights(const WeightGetter& get, const VaeConfig& cfg,
                                   Device dev = Device::cpu(), const std::string& prefix = "");

  const VaeConfig& config() const;
  Device device() const;

  // The parameters (Wan names, ckpt_shape as stored: gammas [C,1,1,1] or [C,1,1], Conv2d weights
  // [Cout,Cin,k,k]); value F32 on the device (Conv2d weights as [Cout,Cin,1,k,k] views of the
  // same numel); grad F32, accumulated by forward_backward, zeroed by zero_grad().
  ParamTable& params();
  void zero_grad();

  // The current weights in checkpoint shapes (views of the live values: clone to keep a copy).
  // WanVae::load(vae.weights(), dev) builds the inference VAE from them; save_safetensors of
  // named_weights() writes a checkpoint WanVae::load can read.
  WeightGetter weights() const;
  std::vector<std::pair<std::string, Tensor>> named_weights() const;

  // Whole-clip forward pieces (F32, any device in; results on the model's device).
  // video [3, F, H, W] (F = 1 + 4k, H and W multiples of 8) → raw moments [2z, 1+k, H/8, W/8]
  // (mu, log_var; not normalised by the latent statistics: WanVae::encode returns
  // (mu − mean)/std of the first z channels).
  Tensor encode_moments(const Tensor& video) const;
  // Raw latent [z, T, h, w] → video [3, 1+4(T−1), 8h, 8w], unclamped (WanVae::decode with
  // clamp = false takes the normalised latent (z − mean)/std).
  Tensor decode_raw(const Tensor& z) const;

  // Loss of one clip (forward only).  noise_seed picks eps (sample_posterior).
  VaeLossStats loss(const Tensor& video, const VaeLossConfig& lc, uint64_t noise_seed) const;
  // Forward and backward of one clip: every param's grad += d loss / d param.  When dvideo is
  // given (a preallocated F32 [3, F, H, W] on any device) it receives the total d loss / d video
  // (through the encoder and as the reconstruction target; overwritten).  Call zero_grad() between optimizer steps; several clips per step accumulate.
  VaeLossStats forward_backward(const Tensor& video, const VaeLossConfig& lc, uint64_t noise_seed,
                                Tensor* dvideo = nullptr);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace osp::model
