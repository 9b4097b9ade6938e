// Trainable Wan-VAE (model/vae_train.h): the whole-clip forward equals the chunked inference
// encode/decode on the same weights; the gradient of the whole loss (MSE + KL with a sampled
// posterior) matches finite differences for several parameter tensors of every kind and for the
// input clip; a tiny VAE trained with Adam on two synthetic 9-frame 32×32 clips reduces the
// reconstruction MSE by a stated factor.
#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/model/vae.h"
#include "osp/model/vae_train.h"

using namespace osp;
using namespace osp::model;

namespace {

// A tiny config with every block kind: Down2d, two Down3d, Up3d ×2, Up2d, shortcuts, attention.
VaeConfig tiny_config(int dim = 4, int res = 1) {
  VaeConfig c = small_vae_config(dim, res);
  return c;
}

Tensor random_video(int64_t F, int64_t H, int64_t W, uint64_t seed) {
  Tensor v = randn({3, F, H, W}, seed);
  float* p = v.data<float>();
  for (int64_t i = 0; i < v.numel(); ++i) p[i] = std::tanh(p[i]);
  return v;
}

double rel_err(const Tensor& a, const Tensor& b) { return relative_error(a.to(Device::cpu()), b.to(Device::cpu())); }

// Normalise a raw latent / mu with the Wan statistics (as WanVae::encode does).
Tensor normalise(const Tensor& raw_cz) {  // [z, T, h, w]
  Tensor out = raw_cz.contiguous().clone();
  float* p = out.data<float>();
  const int64_t per = out.numel() / out.size(0);
  for (int64_t c = 0; c < out.size(0); ++c) {
    const float inv = 1.0f / vae_latent_std()[size_t(c)];
    for (int64_t i = 0; i < per; ++i) p[c * per + i] = (p[c * per + i] - vae_latent_mean()[size_t(c)]) * inv;
  }
  return out;
}

// One synthetic clip: a smooth colour background and a coloured square moving in a straight line.
Tensor synthetic_clip(int64_t F, int64_t H, int64_t W, int variant) {
  Tensor v = Tensor::empty({3, F, H, W}, DType::F32);
  float* p = v.data<float>();
  const float bg[2][3] = {{-0.6f, -0.2f, 0.4f}, {0.3f, -0.5f, -0.3f}};
  const float fg[2][3] = {{0.9f, 0.7f, -0.8f}, {-0.9f, 0.8f, 0.6f}};
  for (int64_t f = 0; f < F; ++f) {
    const int64_t x0 = variant == 0 ? 2 + 2 * f : W - 12 - 2 * f, y0 = variant == 0 ? 8 : 4 + f;
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const bool in = x >= x0 && x < x0 + 10 && y >= y0 && y < y0 + 10;
          const float grad = 0.3f * (float(y) / float(H) - 0.5f);
          p[((c * F + f) * H + y) * W + x] = in ? fg[variant][c] : bg[variant][c] + grad;
        }
  }
  return v;
}

}  // namespace

TEST(VaeTrain, ParamTableIsTheInferenceTensorList) {
  const VaeConfig cfg = tiny_config();
  TrainableVae vae = TrainableVae::from_scratch(cfg, 1);
  const auto want = vae_tensor_shapes(cfg);
  ASSERT_EQ(vae.params().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const ParamRef& p = vae.params()[i];
    EXPECT_EQ(p.name, want[i].first);
    EXPECT_EQ(p.ckpt_shape, want[i].second);
    ASSERT_TRUE(p.value && p.grad);
    EXPECT_EQ(p.value->numel(), shape_numel(want[i].second)) << p.name;
    EXPECT_EQ(p.grad->numel(), p.value->numel()) << p.name;
    EXPECT_EQ(p.grad->dtype(), DType::F32);
  }
  // Same seed, same weights; another seed, other weights.
  TrainableVae again = TrainableVae::from_scratch(cfg, 1), other = TrainableVae::from_scratch(cfg, 2);
  EXPECT_EQ(max_abs_diff(*again.params()[0].value, *vae.params()[0].value), 0.0);
  EXPECT_GT(max_abs_diff(*other.params()[0].value, *vae.params()[0].value), 0.0);
  // from_weights round trip.
  TrainableVae copy = TrainableVae::from_weights(vae.weights(), cfg);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(max_abs_diff(*copy.params()[i].value, *vae.params()[i].value), 0.0) << want[i].first;
  VaeConfig wrong = cfg;
  wrong.dim = 8;
  EXPECT_THROW(TrainableVae::from_weights(vae.weights(), wrong), Error);
}

TEST(VaeTrain, WholeClipForwardEqualsChunkedInference) {
  for (int res : {1, 2}) {
    const VaeConfig cfg = tiny_config(4, res);
    TrainableVae vae = TrainableVae::from_scratch(cfg, 7 + res);
    WanVae inf = WanVae::load(vae.weights(), Device::cpu(), cfg);
    for (int64_t F : {1, 5, 9, 13}) {
      const Tensor video = random_video(F, 16, 24, uint64_t(F));
      const Tensor mom = vae.encode_moments(video);  // [32, T, 2, 3]
      const int64_t T = 1 + (F - 1) / 4;
      ASSERT_EQ(mom.shape(), (Shape{32, T, 2, 3}));
      const Tensor mu = normalise(mom.slice(0, 0, 16));
      const Tensor want = inf.encode(video);
      EXPECT_LT(rel_err(mu, want), 2e-5) << "encode, F = " << F << ", res blocks " << res;
    }
    for (int64_t T : {1, 2, 4}) {
      const Tensor z = randn({16, T, 3, 2}, uint64_t(100 + T));
      const Tensor got = vae.decode_raw(z);
      ASSERT_EQ(got.shape(), (Shape{3, 1 + 4 * (T - 1), 24, 16}));
      DecodeOptions o;
      o.clamp = false;
      const Tensor want = inf.decode(normalise(z), o);
      EXPECT_LT(rel_err(got, want), 2e-5) << "decode, T = " << T << ", res blocks " << res;
    }
  }
}

TEST(VaeTrain, LossGradientMatchesFiniteDifferences) {
  // Directional derivatives of the whole loss (MSE + 0.05·KL, sampled posterior, fixed noise seed)
  // along a random direction over one tensor: (L(θ + h·d) − L(θ − h·d)) / 2h against Σ g·d.
  // Directions cover whole tensors so the derivative is large against fp32 forward noise.
  const VaeConfig cfg = tiny_config(4, 1);
  TrainableVae vae = TrainableVae::from_scratch(cfg, 3);
  // Give biases, gammas and the down-scaled convs O(1) random values so every path carries signal.
  {
    uint32_t s = 1000;
    for (ParamRef& p : vae.params()) {
      Tensor h = p.value->to(Device::cpu()).clone();
      Tensor r = randn(h.shape(), 99, s++);
      float* a = h.data<float>();
      const float* b = r.data<float>();
      const bool g = p.name.find("gamma") != std::string::npos;
      for (int64_t i = 0; i < h.numel(); ++i)
        a[i] = g ? 1.f + 0.2f * b[i] : a[i] + 0.05f * b[i];
      p.value->copy_from(h);
    }
  }
  const Tensor video = random_video(5, 16, 16, 11);
  VaeLossConfig lc;
  lc.kl_weight = 0.05;
  lc.sample_posterior = true;
  const uint64_t noise = 5;
  vae.zero_grad();
  Tensor dvideo = Tensor::empty(video.shape(), DType::F32);
  const VaeLossStats st = vae.forward_backward(video, lc, noise, &dvideo);
  EXPECT_NEAR(st.loss, vae.loss(video, lc, noise).loss, 1e-9 * std::abs(st.loss));
  EXPECT_GT(st.kl, 0.0);

  // Bound: rtol·|fd| + 1e-4 (fp32 forward noise over 2h and O(h²) truncation; measured errors
  // at h = 1e-3 stay below 1 %, and the largest gradients converge as h shrinks).
  // steps: the central difference at each step size, averaged (one size for the smooth losses).
  auto check_dir = [&](Tensor& value, const Tensor& grad, const std::string& what,
                       const std::vector<double>& steps, std::function<double()> L, double rtol = 1e-2) {
    const Tensor d = randn(value.shape(), 4242, 1);
    const Tensor v0 = value.clone();
    double gd = 0;
    {
      const auto gv = grad.to_float_vector(), dv = d.to_float_vector();
      for (size_t i = 0; i < gv.size(); ++i) gd += double(gv[i]) * dv[i];
    }
    auto shifted = [&](double s) {
      Tensor t = v0.clone();
      float* a = t.data<float>();
      const float* b = d.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) a[i] += float(s * b[i]);
      value.copy_from(t);
      const double l = L();
      value.copy_from(v0);
      return l;
    };
    double fd = 0;
    for (double s : steps) fd += (shifted(s) - shifted(-s)) / (2 * s) / double(steps.size());
    EXPECT_NEAR(gd, fd, rtol * std::abs(fd) + 1e-4) << what << ": analytic " << gd << ", fd " << fd;
  };
  auto L = [&] { return vae.loss(video, lc, noise).loss; };
  const std::vector<std::string> names = {
      "encoder.conv1.weight",                     // input conv
      "encoder.downsamples.0.residual.0.gamma",   // norm + SiLU gamma
      "encoder.downsamples.1.resample.1.weight",  // downsample2d (stride 2, ZeroPad2d)
      "encoder.downsamples.3.time_conv.weight",   // downsample3d time conv (stride 2)
      "encoder.downsamples.4.shortcut.weight",    // 1³ shortcut
      "encoder.middle.1.to_qkv.weight",           // attention
      "encoder.middle.1.norm.gamma",              // attention norm (no SiLU)
      "encoder.head.2.bias",
      "conv1.weight",                             // mu / log_var
      "conv2.weight",
      "decoder.middle.1.proj.weight",
      "decoder.upsamples.2.time_conv.weight",     // upsample3d time conv
      "decoder.upsamples.2.resample.1.weight",
      "decoder.upsamples.8.resample.1.bias",      // upsample2d
      "decoder.upsamples.9.residual.6.weight",
      "decoder.head.0.gamma",
      "decoder.head.2.weight",
  };
  std::map<std::string, ParamRef*> by_name;
  for (ParamRef& p : vae.params()) by_name[p.name] = &p;
  for (const std::string& n : names) {
    ASSERT_TRUE(by_name.count(n)) << n;
    ParamRef& p = *by_name[n];
    check_dir(*p.value, *p.grad, n, {1e-3}, L);
  }
  // The input clip.
  Tensor v = video.clone();
  check_dir(v, dvideo, "video", {1e-3}, [&] { return vae.loss(v, lc, noise).loss; });
  // L1 reconstruction and z = mu (no sampling) too, on a few tensors.  |·| has kinks (pixels whose
  // error changes sign inside ±h bias a difference) and small steps carry fp32 noise over 2h: one
  // step alone was up to ~9 % off on an AVX2 machine, in directions that average out, so the mean
  // over four sizes from 3e-4 to 1e-5 and a 5 % bound (measured there: 0.1–2 % off).
  lc.recon = VaeLossConfig::Recon::L1;
  lc.sample_posterior = false;
  vae.zero_grad();
  vae.forward_backward(video, lc, noise);
  for (const std::string n : {"encoder.conv1.weight", "conv1.bias", "decoder.head.2.weight"})
    check_dir(*by_name[n]->value, *by_name[n]->grad, n + " (L1, z = mu)", {3e-4, 1e-4, 3e-5, 1e-5}, L, 5e-2);
}

TEST(VaeTrain, GradientsAccumulateAcrossClips) {
  const VaeConfig cfg = tiny_config(4, 1);
  TrainableVae vae = TrainableVae::from_scratch(cfg, 3);
  const Tensor a = random_video(5, 16, 16, 1), b = random_video(5, 16, 16, 2);
  VaeLossConfig lc;
  vae.zero_grad();
  vae.forward_backward(a, lc, 1);
  std::vector<Tensor> ga;
  for (ParamRef& p : vae.params()) ga.push_back(p.grad->clone());
  vae.zero_grad();
  vae.forward_backward(b, lc, 2);
  std::vector<Tensor> gb;
  for (ParamRef& p : vae.params()) gb.push_back(p.grad->clone());
  vae.zero_grad();
  vae.forward_backward(a, lc, 1);
  vae.forward_backward(b, lc, 2);
  for (size_t i = 0; i < ga.size(); ++i) {
    Tensor sum = ga[i].clone();
    float* s = sum.data<float>();
    const float* q = gb[i].data<float>();
    for (int64_t j = 0; j < sum.numel(); ++j) s[j] += q[j];
    double mx = 0;
    for (int64_t j = 0; j < sum.numel(); ++j) mx = std::max(mx, double(std::abs(s[j])));
    EXPECT_LE(max_abs_diff(*vae.params()[i].grad, sum), 1e-5 * mx + 1e-9) << vae.params()[i].name;
  }
}

TEST(VaeTrain, AdamReducesReconstructionError) {
  // dim 4, 1 residual block, z 16; two synthetic 9-frame 32×32 clips, 100 Adam steps at lr 3e-3
  // (both clips per step), MSE + 1e-6·KL with a sampled posterior.  Two bounds: the MSE falls at
  // least 10× from the random init, and ends below half of the clips' own variance (what a model
  // that only learnt each clip's mean colour would reach), so the moving square is reconstructed.
  // One OpenMP thread: the model's many small per-frame regions gain little from 2 threads, and
  // on a busy machine (several test binaries at once) their barriers made this 8x slower.
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto t0 = std::chrono::steady_clock::now();
  const VaeConfig cfg = tiny_config(4, 1);
  TrainableVae vae = TrainableVae::from_scratch(cfg, 42);
  const std::vector<Tensor> clips = {synthetic_clip(9, 32, 32, 0), synthetic_clip(9, 32, 32, 1)};
  VaeLossConfig lc;
  lc.kl_weight = 1e-6;
  auto mean_mse = [&] {
    double s = 0;
    VaeLossConfig e = lc;
    e.sample_posterior = false;
    for (const Tensor& c : clips) s += vae.loss(c, e, 0).mse;
    return s / double(clips.size());
  };
  const double mse0 = mean_mse();
  double var = 0;  // mean over clips and channels of the per-channel variance
  for (const Tensor& c : clips) {
    const auto v = c.to_float_vector();
    const size_t per = v.size() / 3;
    for (size_t ch = 0; ch < 3; ++ch) {
      double s = 0, s2 = 0;
      for (size_t i = 0; i < per; ++i) {
        s += v[ch * per + i];
        s2 += double(v[ch * per + i]) * v[ch * per + i];
      }
      var += (s2 / double(per) - (s / double(per)) * (s / double(per))) / 3.0 / double(clips.size());
    }
  }
  // Adam (β 0.9 / 0.999, eps 1e-8) written out here: the model library does not depend on train/.
  std::vector<std::vector<float>> m, v;
  for (ParamRef& p : vae.params()) {
    m.emplace_back(size_t(p.value->numel()), 0.f);
    v.emplace_back(size_t(p.value->numel()), 0.f);
  }
  const int steps = 100;
  const double lr = 3e-3;
  for (int step = 1; step <= steps; ++step) {
    vae.zero_grad();
    for (size_t c = 0; c < clips.size(); ++c) vae.forward_backward(clips[c], lc, uint64_t(step * 2 + c));
    const double bc1 = 1 - std::pow(0.9, step), bc2 = 1 - std::pow(0.999, step);
    for (size_t i = 0; i < vae.params().size(); ++i) {
      ParamRef& p = vae.params()[i];
      float* w = p.value->data<float>();
      const float* g = p.grad->data<float>();
      for (int64_t j = 0; j < p.value->numel(); ++j) {
        m[i][size_t(j)] = 0.9f * m[i][size_t(j)] + 0.1f * g[j];
        v[i][size_t(j)] = 0.999f * v[i][size_t(j)] + 0.001f * g[j] * g[j];
        w[j] -= float(lr * (m[i][size_t(j)] / bc1) / (std::sqrt(v[i][size_t(j)] / bc2) + 1e-8));
      }
    }
  }
  const double mse1 = mean_mse();
  omp_set_num_threads(saved_threads);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tiny VAE: MSE %.5f -> %.5f after %d Adam steps (clip variance %.5f; %.1f s)\n",
              mse0, mse1, steps, var, secs);
  EXPECT_LT(mse1, mse0 / 10) << "the reconstruction MSE must fall at least 10x";
  EXPECT_LT(mse1, 0.5 * var) << "the reconstruction must beat a per-channel mean colour by 2x";
}

