// Wan-VAE (Wan2.1 `WanVAE_`): causal 3D video autoencoder, z 16, 4× time and 8×8 space
// compression (wan-spec §5, Appendix A).
//
// Layout.  The public API uses the reference's channel-major tensors: a latent [16, T, h, w]
// (normalised, as the DiT sees it) and a video [3, F, H, W] in [-1, 1] with F = 1 + 4(T-1).
// Inside, activations are frame-major [t, C, H, W] (see ops/conv.h): the causal caches are then
// whole frames and the temporal ×2 of upsample3d is a free reshape.
//
// Decoding is the reference's chunked algorithm (wan-spec §5.4): the latent is decoded one
// latent frame at a time and every causal 3×3×3 conv keeps the last 2 input frames of the
// previous chunk (CACHE_T = 2); upsample3d skips its time conv on chunk 0 ('Rep') and runs it
// with zero front padding on chunk 1.  Encoding uses chunks [frame 0], [1..4], [5..8], ...
// with the stride-2 downsample3d cache rule (§5.5).  Peak activation memory is therefore set
// by one chunk (≤ 4 output frames), not by the video length.
//
// Spatial tiling (decode only, optional): the latent is cut into overlapping tiles, every tile
// is decoded on its own (full time range, its own caches), and the tiles are blended with
// linear ramps over the overlap (see DecodeOptions).  The VAE's receptive field (≈17 latent
// pixels of convolutions, plus the middle attention, which is global per frame) exceeds any
// practical overlap, so tiled output is close to, not equal to, the untiled one; with overlap
// ≥ 8 latent pixels the seams are not visible.
//
// Precision: fp32 everywhere (the reference runs the VAE in fp32; on CUDA the convolutions use
// TF32 tensor cores, as PyTorch's default cudnn.allow_tf32 does).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/checkpoint.h"

namespace osp::parallel {
class Communicator;
}

namespace osp::model {

// Looks a weight up by its original Wan name (e.g. "decoder.conv1.weight"); returns an
// undefined Tensor when the name is absent.  Any dtype/device: the model converts.
using WeightGetter = std::function<Tensor(const std::string& name)>;
// A WeightGetter over a checkpoint (safetensors, sharded, .pth: io/checkpoint.h).
WeightGetter weight_getter(io::Checkpoint ck);

struct VaeConfig {
  int dim = 96;       // base channels (decoder output side)
  int z_dim = 16;     // latent channels
  std::vector<int> dim_mult = {1, 2, 4, 4};
  int num_res_blocks = 2;
  std::vector<bool> temporal_downsample = {false, true, true};
  bool has_encoder = true;  // load encoder.* and conv1.* as well
};

// The official 16-channel latent statistics (wan-spec §5.1).
const std::vector<float>& vae_latent_mean();
const std::vector<float>& vae_latent_std();

struct DecodeOptions {
  // Spatial tile size in latent pixels (0 = no tiling in that direction) and the overlap
  // between neighbouring tiles in latent pixels.  Tiles are blended with linear weights over
  // the overlap (in output pixels: 8·overlap).
  int64_t tile_h = 0, tile_w = 0;
  int64_t overlap = 8;
  bool clamp = true;  // clamp the video to [-1, 1] (decode(); the golden raw output is unclamped)
  // Called once with (0, total) before decoding and after every decoded latent frame (of every
  // tile) with (done, total): progress bars, and a Ctrl-C safe point (it may throw; decoding
  // then stops).
  std::function<void(int64_t done, int64_t total)> on_chunk;
  // Several ranks (size R > 1; every rank calls decode with the same latent and options): the
  // tiles are dealt out — tile k of the row-major order to rank k mod R (ranks beyond the tile
  // count get none) — and the ranks' blended parts are summed over `comm` (all_reduce, on its
  // device), so every rank returns the whole video: the single-rank decode with the same tiles
  // up to the order of that sum. The tiling itself is not changed (an untiled decode runs whole
  // on every rank), so a run on R ranks gives the single-rank video. on_chunk counts this
  // rank's tiles. Null or one rank: everything here.
  std::shared_ptr<parallel::Communicator> comm;
};

// Tile options that keep one decode under about `budget_bytes` of activation memory (fp32):
// the estimate is ≈ 40 KiB per output pixel per frame of a 4-frame chunk at 96 channels
// (see vae.cpp: decode_memory_estimate).  Returns no tiling when the whole frame fits.
DecodeOptions tiles_for_budget(int64_t latent_h, int64_t latent_w, size_t budget_bytes,
                               int64_t overlap = 8);
// Estimated peak activation bytes of decoding a latent of h×w (per tile) with dim channels.
size_t decode_memory_estimate(int64_t latent_h, int64_t latent_w, int dim = 96);

// The tiling used by WanVae::decode, exposed for tests: calls decode_tile(y0, x0, th, tw)
// (latent coordinates) for every tile, each returning a host F32 frame-major [F, C, 8·th, 8·tw],
// and blends them with linear ramps over the overlaps into [F, C, 8h, 8w] (weights normalised
// to sum to 1 at every pixel).  Without tiling it returns decode_tile(0, 0, h, w).  With
// opt.comm over R > 1 ranks and more than one tile it calls decode_tile for this rank's tiles
// only and sums the ranks' parts (DecodeOptions::comm; a collective: every rank calls it).
Tensor blend_tiles(int64_t h, int64_t w, const DecodeOptions& opt,
                   const std::function<Tensor(int64_t, int64_t, int64_t, int64_t)>& decode_tile);

// Every tensor name and shape a VAE with this config has (original Wan names, decoder then
// encoder; cfg.dim / z_dim as given) — for random models in benchmarks and for converters.
std::vector<std::pair<std::string, Shape>> vae_tensor_shapes(const VaeConfig& cfg);

class WanVae {
 public:
  // Binds the weights (original Wan names — wrap a diffusers AutoencoderKLWan checkpoint in
  // io::vae_with_original_names, as pipeline::open_vae does; a prefix such as "vae.weights." can
  // be given) and moves them to `dev` as F32.  Channel widths are read from the checkpoint (dim from
  // decoder.head.2.weight, z_dim from conv2.weight); the rest of cfg must match the file.
  static WanVae load(const WeightGetter& get, Device dev = Device::cpu(), VaeConfig cfg = {},
                     const std::string& prefix = "");

  const VaeConfig& config() const;
  Device device() const;

  // Normalised latent z [z_dim, T, h, w] (F32, any device) → video [3, 1+4(T-1), 8h, 8w] on
  // the model's device.  clamp as in DecodeOptions.
  Tensor decode(const Tensor& z, const DecodeOptions& opt = {}) const;
  // Video [3, F, H, W] (F = 1 + 4k, H and W multiples of 8; values in [-1, 1]) → normalised
  // latent mean [z_dim, 1+k, H/8, W/8].
  Tensor encode(const Tensor& video) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace osp::model
