// Training a small Wan-VAE for reconstruction on a synthetic clip dataset (issue 16,
// `osp train-vae`): AdamW over model/vae_train.h's ParamTable, MSE (or L1) + a small KL,
// global-norm clipping, warm-up + cosine learning rate, a JSON-lines log, held-out PSNR, and a
// latent calibration that makes the trained VAE's normalised latents zero-mean / unit-std per
// channel under the fixed Wan latent statistics the inference VAE applies.
//
// Ctrl-C (or --max-seconds) stops after the current step; the weights are then calibrated and
// written as at the end (the summary records the steps done).
// Step s (0-based) trains on `batch` clips: clip index = floor(u · N) with u a Philox uniform
// (seed, stream 0x7a31, element s·batch + i); the posterior noise seed is (seed ^ 0x5eed) + s·batch + i.
// Everything is a pure function of (options, dataset): the same command repeats the same losses.
//
// Calibration (calibrate_latents): over `calib_clips` training clips the raw posterior means mu
// of every channel c have mean m_c and std s_c. WanVae::encode returns (mu − M_c)/S_c with Wan's
// fixed statistics (M, S). With a_c = S_c / s_c and b_c = M_c − a_c·m_c the function rewrites
//   conv1 (mu rows):      W[c,:] ← a_c·W[c,:],  bias[c] ← a_c·bias[c] + b_c
//   conv1 (log_var rows): bias[z+c] ← bias[z+c] + 2·ln a_c
//   conv2 (input c):      W[:,c] ← W[:,c]/a_c,  bias ← bias − Σ_c W[:,c]·b_c/a_c
// so that decode(encode(x)) is unchanged (exactly, up to float rounding) while the normalised
// latents the DiT trains on have mean 0 and std 1 per channel.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "osp/model/vae_train.h"
#include "osp/train/clip_dataset.h"

namespace osp::train {

struct VaeTrainOptions {
  std::string data;          // training clips (osp make-dataset)
  std::string eval_data;     // optional held-out clips: PSNR at the end (and every eval_every)
  std::string out;           // run folder: vae_log.jsonl, Wan2.1_VAE.safetensors, vae_eval.json
  std::string init;          // optional: start from these VAE weights (safetensors, Wan names)
  std::string device = "cpu";
  int dim = 16;              // base width (Wan: 96)
  int res_blocks = 2;        // per encoder stage (decoder: +1); 2 = what `osp generate` loads
  int64_t steps = 1000, batch = 1, warmup = 50;
  double lr = 1e-3, min_lr_ratio = 0.1, weight_decay = 0.0;
  double clip = 1.0;         // global grad-norm clip (0 = off)
  double kl_weight = 1e-6;
  std::string recon = "mse"; // mse | l1
  uint64_t seed = 0;
  int64_t eval_every = 0;    // 0 = only at the end
  int64_t eval_clips = 32;   // held-out clips scored
  int64_t calib_clips = 64;  // clips for the latent statistics (0 = no calibration)
  int64_t save_every = 0;    // also write the weights every N steps
  double max_seconds = 0;    // > 0: also stop after this wall time; the cosine schedule then runs
                             // on max(step / steps, elapsed / max_seconds) (a time budget)
  bool overwrite = false;    // replace an existing run folder's files
  bool quiet = false;        // no progress line
  bool eval_only = false;    // with --init: no training, only the held-out evaluation (+ recon_out)
  std::string recon_out;     // safetensors of the held-out reconstructions (U8 [F, H, W, 3] per clip
                             // id: `osp eval --pred` scores what the detector sees through the VAE)
  void validate() const;     // throws osp::Error naming the option
};

struct VaeEvalResult {
  int64_t clips = 0;
  double mean_psnr = 0, min_psnr = 0, mean_mse = 0;
};

struct VaeTrainResult {
  int64_t steps = 0;
  double first_loss = 0, last_loss = 0;  // mean over the first / last 10% of steps
  VaeEvalResult eval;                    // held-out (clips = 0 without eval_data)
  std::vector<float> latent_mean, latent_std;  // raw mu statistics before calibration
  std::string weights;                   // the written Wan2.1_VAE.safetensors
};

// Runs the whole training; writes OUT/Wan2.1_VAE.safetensors (encoder + decoder, F32, Wan
// names; WanVae::load and `osp generate` read it), OUT/vae_log.jsonl and OUT/vae_eval.json.
VaeTrainResult train_vae(const VaeTrainOptions& o);

// PSNR of decode(encode(x)) (posterior mean, clamped to [−1, 1], on the [0, 1] scale as
// `osp eval --psnr`) over the first `limit` clips of `ds`, through the inference WanVae built
// from the trainable model's weights.
// `recon` (optional) receives each reconstruction as U8 [F, H, W, 3] under the clip id.
VaeEvalResult evaluate_vae(const model::TrainableVae& vae, const ClipDataset& ds, int64_t limit,
                           std::map<std::string, Tensor>* recon = nullptr);

// Raw posterior-mean statistics per latent channel over the first `limit` clips.
void latent_statistics(const model::TrainableVae& vae, const ClipDataset& ds, int64_t limit,
                       std::vector<float>& mean, std::vector<float>& std);
// Rewrites conv1/conv2 as in the header comment for measured (mean, std).
void calibrate_latents(model::TrainableVae& vae, const std::vector<float>& mean, const std::vector<float>& std);

}  // namespace osp::train
