// osp train-vae (train/vae_trainer.h): the latent calibration keeps decode(encode(x)) and makes
// the normalised latents zero-mean / unit-std per channel; a short training on rendered clips
// lowers the loss and writes weights the inference WanVae loads; option checks; the time budget.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "osp/core/philox.h"
#include "osp/io/checkpoint.h"
#include "osp/model/vae.h"
#include "osp/train/clip_dataset.h"
#include "osp/train/clip_metrics.h"
#include "osp/train/synthetic_clips.h"
#include "osp/train/vae_trainer.h"

namespace fs = std::filesystem;
using namespace osp;
using namespace osp::train;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("osp_vae_trainer_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

fs::path make_clips(const std::string& name, int64_t count, ClipSplit split = ClipSplit::Train) {
  const fs::path d = fresh_dir(name);
  ClipDatasetOptions o;
  o.dir = d.string();
  o.count = count;
  o.seed = 7;
  o.width = 32;
  o.height = 32;
  o.frames = 5;
  o.split = split;
  write_clip_dataset(o);
  return d;
}

double diff_max(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::cpu()).contiguous(), y = b.to(Device::cpu()).contiguous();
  EXPECT_EQ(x.shape(), y.shape());
  double m = 0;
  for (int64_t i = 0; i < x.numel(); ++i) m = std::max(m, std::abs(double(x.data<float>()[i]) - y.data<float>()[i]));
  return m;
}

}  // namespace

TEST(VaeTrainer, CalibrationKeepsTheReconstructionAndNormalisesTheLatents) {
  const fs::path d = make_clips("calib", 6);
  const ClipDataset ds = read_clip_dataset(d.string());
  model::TrainableVae vae = model::TrainableVae::from_scratch(model::small_vae_config(4, 1), 3);
  const Tensor x = clip_to_float(load_dataset_clip(ds, ds.clips[0]));
  const Tensor m0 = vae.encode_moments(x).contiguous();  // [32, 2, 4, 4]
  const int64_t zd = 16, per = m0.numel() / (2 * zd);
  const Tensor mu0 = m0.slice(0, 0, zd).contiguous();
  const Tensor rec0 = vae.decode_raw(mu0);

  std::vector<float> mean, stdv;
  latent_statistics(vae, ds, 6, mean, stdv);
  ASSERT_EQ(mean.size(), size_t(zd));
  calibrate_latents(vae, mean, stdv);

  // mu' = a·mu + b per channel, decode(mu') = decode(mu).
  const Tensor m1 = vae.encode_moments(x).contiguous();
  const Tensor mu1 = m1.slice(0, 0, zd).contiguous();
  EXPECT_LT(diff_max(vae.decode_raw(mu1), rec0), 2e-4);
  const auto& M = model::vae_latent_mean();
  const auto& S = model::vae_latent_std();
  for (int64_t c = 0; c < zd; ++c) {
    const double a = S[size_t(c)] / stdv[size_t(c)], b = M[size_t(c)] - a * mean[size_t(c)];
    for (int64_t k = 0; k < per; ++k) {
      const double want = a * mu0.data<float>()[c * per + k] + b;
      ASSERT_NEAR(mu1.data<float>()[c * per + k], want, 1e-4 * (1 + std::abs(want))) << "channel " << c;
    }
    // log-variance shifted by 2 ln a
    EXPECT_NEAR(m1.data<float>()[(zd + c) * per], m0.data<float>()[(zd + c) * per] + 2 * std::log(a), 1e-4);
  }
  // The statistics of the calibrated raw latents are Wan's: normalised latents ~ (0, 1).
  std::vector<float> mean1, std1;
  latent_statistics(vae, ds, 6, mean1, std1);
  for (int64_t c = 0; c < zd; ++c) {
    EXPECT_NEAR((mean1[size_t(c)] - M[size_t(c)]) / S[size_t(c)], 0.0, 1e-3) << c;
    EXPECT_NEAR(std1[size_t(c)] / S[size_t(c)], 1.0, 1e-3) << c;
  }
  fs::remove_all(d);
}

TEST(VaeTrainer, ShortTrainingLowersTheLossAndWritesLoadableWeights) {
  const fs::path train = make_clips("train", 8);
  const fs::path held = make_clips("held", 3, ClipSplit::Heldout);
  const fs::path out = fresh_dir("run");
  VaeTrainOptions o;
  o.data = train.string();
  o.eval_data = held.string();
  o.out = out.string();
  o.dim = 4;
  o.res_blocks = 2;
  o.steps = 80;
  o.batch = 1;
  o.warmup = 5;
  o.lr = 3e-3;
  o.kl_weight = 0;
  o.eval_clips = 3;
  o.calib_clips = 4;
  o.quiet = true;
  const VaeTrainResult r = train_vae(o);
  EXPECT_EQ(r.steps, 80);
  EXPECT_LT(r.last_loss, 0.75 * r.first_loss) << r.first_loss << " -> " << r.last_loss;
  EXPECT_EQ(r.eval.clips, 3);
  EXPECT_TRUE(std::isfinite(r.eval.mean_psnr));
  EXPECT_GE(r.eval.mean_psnr, r.eval.min_psnr);
  // One log line per step; the summary; the weights load into the inference VAE (dim from the file).
  std::ifstream log(out / "vae_log.jsonl");
  int lines = 0;
  for (std::string l; std::getline(log, l);) ++lines;
  EXPECT_EQ(lines, 80);
  EXPECT_TRUE(fs::exists(out / "vae_eval.json"));
  const model::WanVae inf = model::WanVae::load(model::weight_getter(io::open_checkpoint((out / "Wan2.1_VAE.safetensors").string())));
  EXPECT_EQ(inf.config().dim, 4);
  const ClipDataset ds = read_clip_dataset(held.string());
  const Tensor x = clip_to_float(load_dataset_clip(ds, ds.clips[0]));
  const Tensor z = inf.encode(x);
  EXPECT_EQ(z.shape(), (Shape{16, 2, 4, 4}));
  // A second run into the same folder is refused without --overwrite.
  EXPECT_THROW(train_vae(o), Error);

  // --eval-only --recon-out: the written weights, scored again; the reconstructions (U8, one
  // per held-out id) have the PSNR the evaluation reports (up to the U8 rounding).
  VaeTrainOptions e = o;
  e.eval_only = true;
  e.init = (out / "Wan2.1_VAE.safetensors").string();
  e.recon_out = (out / "recon.safetensors").string();
  const VaeTrainResult er = train_vae(e);
  EXPECT_EQ(er.eval.clips, 3);
  EXPECT_NEAR(er.eval.mean_psnr, r.eval.mean_psnr, 1e-6);
  io::Checkpoint rc = io::open_checkpoint(e.recon_out);
  double mean = 0;
  for (const auto& c : ds.clips) {
    const Tensor u = rc->get(c.id);
    ASSERT_TRUE(u.defined()) << c.id;
    EXPECT_EQ(u.dtype(), DType::U8);
    EXPECT_EQ(u.shape(), (Shape{5, 32, 32, 3}));
    mean += psnr(u, load_dataset_clip(ds, c)) / 3.0;
  }
  EXPECT_NEAR(mean, r.eval.mean_psnr, 0.3);
  fs::remove_all(train);
  fs::remove_all(held);
  fs::remove_all(out);
}

TEST(VaeTrainer, TimeBudgetStopsEarlyAndStillWritesTheWeights) {
  const fs::path train = make_clips("budget", 4);
  const fs::path out = fresh_dir("budget_run");
  VaeTrainOptions o;
  o.data = train.string();
  o.out = out.string();
  o.dim = 4;
  o.steps = 100000;
  o.max_seconds = 0.5;
  o.calib_clips = 2;
  o.quiet = true;
  const VaeTrainResult r = train_vae(o);
  EXPECT_GE(r.steps, 1);
  EXPECT_LT(r.steps, 100000);
  EXPECT_TRUE(fs::exists(out / "Wan2.1_VAE.safetensors"));
  fs::remove_all(train);
  fs::remove_all(out);
}

TEST(VaeTrainer, OptionsAreChecked) {
  VaeTrainOptions o;
  o.data = "d";
  o.out = "o";
  EXPECT_NO_THROW(o.validate());
  auto bad = [&](auto edit, const std::string& word) {
    VaeTrainOptions b = o;
    edit(b);
    try {
      b.validate();
      ADD_FAILURE() << "accepted: " << word;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  bad([](VaeTrainOptions& b) { b.recon = "l2"; }, "--recon");
  bad([](VaeTrainOptions& b) { b.steps = 0; }, "--steps");
  bad([](VaeTrainOptions& b) { b.dim = 6; }, "--dim");
  bad([](VaeTrainOptions& b) { b.lr = -1; }, "--lr");
  bad([](VaeTrainOptions& b) { b.data.clear(); }, "--data");
  bad([](VaeTrainOptions& b) { b.max_seconds = -1; }, "--max-seconds");
}
