#include "osp/train/vae_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/core/progress.h"
#include "osp/io/atomic_file.h"
#include "osp/io/checkpoint.h"
#include "osp/io/safetensors.h"
#include "osp/model/vae.h"
#include "osp/train/adamw.h"
#include "osp/train/grad_clip.h"
#include "osp/train/synthetic_clips.h"

namespace fs = std::filesystem;

namespace osp::train {

void VaeTrainOptions::validate() const {
  OSP_CHECK(!data.empty(), "train-vae: --data is required");
  OSP_CHECK(!out.empty(), "train-vae: --out is required");
  OSP_CHECK(dim >= 4 && dim <= 256 && dim % 4 == 0, "train-vae: --dim must be a multiple of 4 in 4..256, got ", dim);
  OSP_CHECK(res_blocks >= 1 && res_blocks <= 4, "train-vae: --res-blocks must be 1..4, got ", res_blocks);
  OSP_CHECK(steps >= 1, "train-vae: --steps must be >= 1, got ", steps);
  OSP_CHECK(batch >= 1 && batch <= 1024, "train-vae: --batch must be 1..1024, got ", batch);
  OSP_CHECK(warmup >= 0, "train-vae: --warmup must be >= 0, got ", warmup);
  OSP_CHECK(std::isfinite(lr) && lr > 0, "train-vae: --lr must be > 0, got ", lr);
  OSP_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1, "train-vae: --min-lr-ratio must be in [0, 1], got ", min_lr_ratio);
  OSP_CHECK(weight_decay >= 0, "train-vae: --weight-decay must be >= 0, got ", weight_decay);
  OSP_CHECK(clip >= 0 && std::isfinite(clip), "train-vae: --clip must be >= 0, got ", clip);
  OSP_CHECK(kl_weight >= 0 && std::isfinite(kl_weight), "train-vae: --kl-weight must be >= 0, got ", kl_weight);
  OSP_CHECK(recon == "mse" || recon == "l1", "train-vae: --recon must be mse or l1, got '", recon, "'");
  OSP_CHECK(max_seconds >= 0 && std::isfinite(max_seconds), "train-vae: --max-seconds must be >= 0");
  OSP_CHECK(eval_every >= 0 && eval_clips >= 1 && calib_clips >= 0 && save_every >= 0,
            "train-vae: --eval-every, --save-every and --calib-clips must be >= 0, --eval-clips >= 1");
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double lr_at(const VaeTrainOptions& o, int64_t s, double elapsed) {
  if (s < o.warmup) return o.lr * double(s + 1) / double(o.warmup);
  const double span = double(std::max<int64_t>(o.steps - o.warmup, 1));
  double p = std::clamp(double(s - o.warmup) / span, 0.0, 1.0);
  if (o.max_seconds > 0) p = std::max(p, std::clamp(elapsed / o.max_seconds, 0.0, 1.0));
  const double lo = o.lr * o.min_lr_ratio;
  return lo + (o.lr - lo) * 0.5 * (1.0 + std::cos(M_PI * p));
}

ParamRef& find_param(ParamTable& t, const std::string& name) {
  for (auto& p : t)
    if (p.name == name) return p;
  fail(str("train-vae: the VAE has no parameter ", name));
}

// Weights rounded to bf16 (what is shipped), as the inference VAE reads them.
std::map<std::string, Tensor> bf16_weights(const model::TrainableVae& vae) {
  std::map<std::string, Tensor> w;
  for (const auto& [n, t] : vae.named_weights()) w[n] = t.to(Device::cpu()).contiguous().to(DType::BF16);
  return w;
}

void write_weights(const model::TrainableVae& vae, const std::string& path, int64_t step) {
  const std::map<std::string, std::string> meta = {
      {"osp_vae", str("trained by osp train-vae, step ", step)},
      {"dim", std::to_string(vae.config().dim)},
      {"num_res_blocks", std::to_string(vae.config().num_res_blocks)}};
  io::save_safetensors(path, bf16_weights(vae), meta, io::Overwrite::Allow);
}

std::string eval_json(const VaeEvalResult& r) {
  return str("{\"clips\": ", r.clips, ", \"mean_psnr\": ", r.mean_psnr, ", \"min_psnr\": ", r.min_psnr,
             ", \"mean_mse\": ", r.mean_mse, "}");
}

}  // namespace

VaeEvalResult evaluate_vae(const model::TrainableVae& vae, const ClipDataset& ds, int64_t limit,
                           std::map<std::string, Tensor>* recon) {
  const std::map<std::string, Tensor> w = bf16_weights(vae);
  model::VaeConfig cfg = vae.config();
  cfg.has_encoder = true;
  const model::WanVae inf = model::WanVae::load(
      [&](const std::string& n) {
        auto it = w.find(n);
        return it == w.end() ? Tensor() : it->second;
      },
      vae.device(), cfg);
  VaeEvalResult r;
  r.min_psnr = 1e30;
  const int64_t n = std::min<int64_t>(limit, int64_t(ds.clips.size()));
  for (int64_t i = 0; i < n; ++i) {
    const Tensor x = clip_to_float(load_dataset_clip(ds, ds.clips[size_t(i)]));
    model::DecodeOptions dopt;
    dopt.clamp = true;
    const Tensor y = inf.decode(inf.encode(x.to(vae.device())), dopt).to(Device::cpu()).contiguous();
    // decode returns [3, F, H, W] like the input
    OSP_CHECK(y.shape() == x.shape(), "train-vae: reconstruction shape ", shape_str(y.shape()), " != ",
              shape_str(x.shape()));
    const float* a = x.data<float>();
    const float* b = y.data<float>();
    double se = 0;
    for (int64_t k = 0; k < x.numel(); ++k) {
      const double d = 0.5 * (double(a[k]) - double(b[k]));  // [0, 1] scale
      se += d * d;
    }
    if (recon) {
      const int64_t C = y.size(0), F = y.size(1), H = y.size(2), W = y.size(3);
      Tensor u = Tensor::empty({F, H, W, C}, DType::U8);
      uint8_t* up = u.data<uint8_t>();
      for (int64_t c = 0; c < C; ++c)
        for (int64_t f = 0; f < F; ++f)
          for (int64_t i = 0; i < H * W; ++i) {
            const double v = std::clamp((double(b[(c * F + f) * H * W + i]) + 1.0) * 127.5, 0.0, 255.0);
            up[(f * H * W + i) * C + c] = uint8_t(std::lround(v));
          }
      (*recon)[ds.clips[size_t(i)].id] = u;
    }
    const double mse = se / double(x.numel());
    const double psnr = 10.0 * std::log10(1.0 / std::max(mse, 1e-30));
    r.mean_mse += mse;
    r.mean_psnr += psnr;
    r.min_psnr = std::min(r.min_psnr, psnr);
    ++r.clips;
  }
  if (r.clips) {
    r.mean_mse /= double(r.clips);
    r.mean_psnr /= double(r.clips);
  } else {
    r.min_psnr = 0;
  }
  return r;
}

void latent_statistics(const model::TrainableVae& vae, const ClipDataset& ds, int64_t limit,
                       std::vector<float>& mean, std::vector<float>& stdv) {
  const int64_t zd = vae.config().z_dim;
  std::vector<double> s1(size_t(zd), 0.0), s2(size_t(zd), 0.0);
  int64_t count = 0;
  const int64_t n = std::min<int64_t>(limit, int64_t(ds.clips.size()));
  OSP_CHECK(n > 0, "train-vae: no clips for the latent statistics");
  for (int64_t i = 0; i < n; ++i) {
    const Tensor x = clip_to_float(load_dataset_clip(ds, ds.clips[size_t(i)]));
    const Tensor m = vae.encode_moments(x).to(Device::cpu()).contiguous();  // [2z, T, h, w]
    const int64_t per = m.size(1) * m.size(2) * m.size(3);
    const float* p = m.data<float>();
    for (int64_t c = 0; c < zd; ++c)
      for (int64_t k = 0; k < per; ++k) {
        const double v = p[c * per + k];
        s1[size_t(c)] += v;
        s2[size_t(c)] += v * v;
      }
    count += per;
  }
  mean.assign(size_t(zd), 0.f);
  stdv.assign(size_t(zd), 1.f);
  for (int64_t c = 0; c < zd; ++c) {
    const double m = s1[size_t(c)] / double(count);
    const double var = std::max(s2[size_t(c)] / double(count) - m * m, 0.0);
    mean[size_t(c)] = float(m);
    stdv[size_t(c)] = float(std::max(std::sqrt(var), 1e-4));
  }
}

void calibrate_latents(model::TrainableVae& vae, const std::vector<float>& mean, const std::vector<float>& stdv) {
  const int64_t zd = vae.config().z_dim;
  OSP_CHECK(int64_t(mean.size()) == zd && int64_t(stdv.size()) == zd, "calibrate_latents: need ", zd,
            " channel statistics");
  const std::vector<float>& M = model::vae_latent_mean();
  const std::vector<float>& S = model::vae_latent_std();
  OSP_CHECK(int64_t(M.size()) == zd, "calibrate_latents: the Wan statistics have ", M.size(), " channels, the VAE ", zd);
  std::vector<double> a(static_cast<size_t>(zd)), b(static_cast<size_t>(zd));
  for (int64_t c = 0; c < zd; ++c) {
    OSP_CHECK(stdv[size_t(c)] > 0, "calibrate_latents: channel ", c, " has std ", stdv[size_t(c)]);
    a[size_t(c)] = double(S[size_t(c)]) / double(stdv[size_t(c)]);
    b[size_t(c)] = double(M[size_t(c)]) - a[size_t(c)] * double(mean[size_t(c)]);
  }
  ParamTable& t = vae.params();
  auto edit = [&](const std::string& name, const std::function<void(float*, const Shape&)>& f) {
    ParamRef& p = find_param(t, name);
    Tensor h = p.value->to(Device::cpu()).contiguous().clone();
    OSP_CHECK(h.dtype() == DType::F32, "calibrate_latents: ", name, " is not F32");
    f(h.data<float>(), p.ckpt_shape);
    p.value->copy_from(h.to(p.value->device()));
  };
  // conv1: [2z, 2z, 1, 1, 1] and [2z]
  const int64_t cin1 = 2 * zd;
  edit("conv1.weight", [&](float* w, const Shape& s) {
    OSP_CHECK(s[0] == 2 * zd && s[1] == cin1, "calibrate_latents: conv1.weight has shape ", shape_str(s));
    for (int64_t c = 0; c < zd; ++c)
      for (int64_t k = 0; k < cin1; ++k) w[c * cin1 + k] = float(a[size_t(c)] * w[c * cin1 + k]);
  });
  edit("conv1.bias", [&](float* bias, const Shape&) {
    for (int64_t c = 0; c < zd; ++c) {
      bias[c] = float(a[size_t(c)] * bias[c] + b[size_t(c)]);
      bias[zd + c] = float(bias[zd + c] + 2.0 * std::log(a[size_t(c)]));
    }
  });
  // conv2: [z, z, 1, 1, 1] and [z]; the bias first (it needs the old weights).
  Tensor w2 = find_param(t, "conv2.weight").value->to(Device::cpu()).contiguous().clone();
  const float* w2p = w2.data<float>();
  edit("conv2.bias", [&](float* bias, const Shape&) {
    for (int64_t o = 0; o < zd; ++o) {
      double s = 0;
      for (int64_t c = 0; c < zd; ++c) s += double(w2p[o * zd + c]) * b[size_t(c)] / a[size_t(c)];
      bias[o] = float(double(bias[o]) - s);
    }
  });
  edit("conv2.weight", [&](float* w, const Shape& s) {
    OSP_CHECK(s[0] == zd && s[1] == zd, "calibrate_latents: conv2.weight has shape ", shape_str(s));
    for (int64_t o = 0; o < zd; ++o)
      for (int64_t c = 0; c < zd; ++c) w[o * zd + c] = float(w[o * zd + c] / a[size_t(c)]);
  });
}

VaeTrainResult train_vae(const VaeTrainOptions& o) {
  o.validate();
  const ClipDataset ds = read_clip_dataset(o.data);
  OSP_CHECK(!ds.clips.empty(), "train-vae: ", o.data, " holds no clips");
  OSP_CHECK(ds.width % 8 == 0 && ds.height % 8 == 0 && (ds.frames - 1) % 4 == 0, "train-vae: clips of ",
            ds.width, "x", ds.height, "x", ds.frames, " do not fit the VAE (sizes multiples of 8, frames 4n+1)");
  ClipDataset eval_ds;
  if (!o.eval_data.empty()) eval_ds = read_clip_dataset(o.eval_data);
  const Device dev = parse_device(o.device);

  std::error_code ec;
  fs::create_directories(o.out, ec);
  OSP_CHECK(!ec, "train-vae: cannot create ", o.out, ": ", ec.message());
  const std::string weights_path = (fs::path(o.out) / "Wan2.1_VAE.safetensors").string();
  const std::string log_path = (fs::path(o.out) / "vae_log.jsonl").string();
  const std::string eval_path = (fs::path(o.out) / "vae_eval.json").string();
  if (o.eval_only) {
    OSP_CHECK(!o.init.empty() && !eval_ds.clips.empty(), "train-vae: --eval-only needs --init and --eval-data");
    io::Checkpoint ck = io::open_checkpoint(o.init);
    const model::TrainableVae vae =
        model::TrainableVae::from_weights(model::weight_getter(ck), model::small_vae_config(o.dim, o.res_blocks), dev);
    std::map<std::string, Tensor> rec;
    VaeTrainResult res;
    res.eval = evaluate_vae(vae, eval_ds, o.eval_clips, o.recon_out.empty() ? nullptr : &rec);
    if (!o.recon_out.empty()) io::save_safetensors(o.recon_out, rec, {}, io::Overwrite::Allow);
    io::write_text_atomic((fs::path(o.out) / "vae_heldout_eval.json").string(), eval_json(res.eval) + "\n",
                          io::Overwrite::Allow);
    return res;
  }
  if (!o.overwrite)
    for (const auto& p : {weights_path, log_path})
      OSP_CHECK(!fs::exists(p), "train-vae: ", p, " exists (a previous run); use --overwrite or a new --out");

  model::VaeConfig cfg = model::small_vae_config(o.dim, o.res_blocks);
  model::TrainableVae vae;
  if (o.init.empty()) {
    vae = model::TrainableVae::from_scratch(cfg, o.seed, dev);
  } else {
    io::Checkpoint ck = io::open_checkpoint(o.init);
    vae = model::TrainableVae::from_weights(model::weight_getter(ck), cfg, dev);
  }
  ParamTable& params = vae.params();
  int64_t nparams = 0;
  for (const auto& p : params) nparams += p.value->numel();
  log_info("train-vae: ", nparams, " parameters (dim ", o.dim, ", res blocks ", o.res_blocks, "), ", ds.clips.size(),
           " clips of ", ds.width, "x", ds.height, "x", ds.frames, ", ", o.steps, " steps of ", o.batch, " on ",
           o.device);

  AdamWConfig acfg;
  acfg.lr = o.lr;
  acfg.weight_decay = o.weight_decay;
  acfg.eps = 1e-8;
  AdamW opt(params, acfg);
  GradClipConfig ccfg;
  if (o.clip > 0) {
    ccfg.mode = GradClipConfig::Mode::Fixed;
    ccfg.max_norm = o.clip;
  }
  GradClipper clipper(ccfg);
  model::VaeLossConfig lc;
  lc.recon = o.recon == "l1" ? model::VaeLossConfig::Recon::L1 : model::VaeLossConfig::Recon::MSE;
  lc.kl_weight = o.kl_weight;
  lc.sample_posterior = o.kl_weight > 0;

  std::ofstream log(log_path, std::ios::trunc);
  OSP_CHECK(log, "train-vae: cannot write ", log_path);
  std::unique_ptr<Progress> prog;
  if (!o.quiet) prog = std::make_unique<Progress>("train-vae", int(o.steps), -1, stderr);
  VaeTrainResult res;
  const int64_t N = int64_t(ds.clips.size());
  const auto t0 = Clock::now();
  int64_t done = 0;
  std::vector<double> losses;
  for (int64_t s = 0; s < o.steps; ++s) {
    if (interrupted()) {
      log_warn("train-vae: interrupted: stopping after ", s, " steps and writing the weights");
      break;
    }
    if (o.max_seconds > 0 && since(t0) >= o.max_seconds) {
      log_info("train-vae: --max-seconds ", o.max_seconds, " reached after ", s, " steps");
      break;
    }
    const auto ts = Clock::now();
    vae.zero_grad();
    model::VaeLossStats sum;
    for (int64_t i = 0; i < o.batch; ++i) {
      float u = 0;
      philox_uniform(o.seed, 0x7a31, uint64_t(s * o.batch + i), &u, 1);
      const int64_t idx = std::min<int64_t>(int64_t(double(u) * double(N)), N - 1);
      const Tensor x = clip_to_float(load_dataset_clip(ds, ds.clips[size_t(idx)])).to(dev);
      const model::VaeLossStats st = vae.forward_backward(x, lc, (o.seed ^ 0x5eedULL) + uint64_t(s * o.batch + i));
      sum.loss += st.loss / double(o.batch);
      sum.mse += st.mse / double(o.batch);
      sum.kl += st.kl / double(o.batch);
    }
    OSP_CHECK(std::isfinite(sum.loss), "train-vae: the loss is not finite at step ", s + 1);
    if (o.batch > 1) scale_grads(params, float(1.0 / double(o.batch)));
    const ClipResult cr = clipper.clip(params);
    OSP_CHECK(std::isfinite(cr.norm), "train-vae: the gradient norm is not finite at step ", s + 1);
    const double lr = lr_at(o, s, since(t0));
    opt.step(lr);
    const double psnr = 10.0 * std::log10(4.0 / std::max(sum.mse, 1e-30));
    losses.push_back(sum.loss);
    done = s + 1;
    log << "{\"step\": " << s + 1 << ", \"loss\": " << sum.loss << ", \"mse\": " << sum.mse << ", \"psnr\": " << psnr
        << ", \"kl\": " << sum.kl << ", \"grad_norm\": " << cr.norm << ", \"lr\": " << lr
        << ", \"seconds\": " << since(ts) << "}\n";
    log.flush();
    if (prog) prog->update(int(s + 1));
    if (o.save_every > 0 && (s + 1) % o.save_every == 0 && s + 1 < o.steps) write_weights(vae, weights_path, s + 1);
    if (o.eval_every > 0 && (s + 1) % o.eval_every == 0 && s + 1 < o.steps && !eval_ds.clips.empty()) {
      const VaeEvalResult er = evaluate_vae(vae, eval_ds, o.eval_clips);
      log << "{\"step\": " << s + 1 << ", \"eval\": " << eval_json(er) << "}\n";
      log.flush();
      log_info("train-vae: step ", s + 1, ": held-out PSNR ", er.mean_psnr, " dB (min ", er.min_psnr, ")");
    }
  }
  if (prog) prog->finish();
  OSP_CHECK(done > 0, "train-vae: stopped before the first step; nothing written");
  res.steps = done;
  const int64_t window = std::max<int64_t>(1, done / 10);
  double first_sum = 0, last_sum = 0;
  for (int64_t i = 0; i < window; ++i) {
    first_sum += losses[size_t(i)];
    last_sum += losses[size_t(done - 1 - i)];
  }
  res.first_loss = first_sum / double(window);
  res.last_loss = last_sum / double(window);
  log_info("train-vae: ", done, " steps in ", since(t0), " s; loss ", res.first_loss, " -> ", res.last_loss);

  if (o.calib_clips > 0) {
    latent_statistics(vae, ds, o.calib_clips, res.latent_mean, res.latent_std);
    calibrate_latents(vae, res.latent_mean, res.latent_std);
  }
  write_weights(vae, weights_path, done);
  res.weights = weights_path;
  if (!eval_ds.clips.empty()) {
    std::map<std::string, Tensor> rec;
    res.eval = evaluate_vae(vae, eval_ds, o.eval_clips, o.recon_out.empty() ? nullptr : &rec);
    if (!o.recon_out.empty()) io::save_safetensors(o.recon_out, rec, {}, io::Overwrite::Allow);
    log_info("train-vae: held-out PSNR ", res.eval.mean_psnr, " dB (min ", res.eval.min_psnr, ") over ", res.eval.clips,
             " clips");
  }
  std::string stats = "[";
  for (size_t c = 0; c < res.latent_mean.size(); ++c)
    stats += str(c ? ", " : "", "[", res.latent_mean[c], ", ", res.latent_std[c], "]");
  stats += "]";
  const std::string summary =
      str("{\"steps\": ", res.steps, ", \"first_loss\": ", res.first_loss, ", \"last_loss\": ", res.last_loss,
          ", \"dim\": ", o.dim, ", \"res_blocks\": ", o.res_blocks, ", \"parameters\": ", nparams,
          ", \"train_clips\": ", N, ", \"seconds\": ", since(t0), ", \"heldout\": ", eval_json(res.eval),
          ", \"raw_latent_mean_std\": ", stats, "}\n");
  io::write_text_atomic(eval_path, summary, io::Overwrite::Allow);
  return res;
}

}  // namespace osp::train
