// The model stack the RL loop tests share (rl_trainer_test, rl_mpi_test): a tiny random DiT
// (frozen base, LoRA trained), a stand-in text encoder (an embedding keyed by the text), a
// stand-in decoder (latent [16, T, h, w] -> video [3, 4(T-1)+1, 8h, 8w], tanh of the first three
// channels) and a smooth reward (the mean of the video's first channel: every sample differs).
#pragma once
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/train/dit_train_model.h"
#include "osp/train/rl_trainer.h"

namespace osp::train::rl_test {

inline model::DiTConfig tiny() {
  model::DiTConfig c;
  c.dim = 32;
  c.ffn_dim = 64;
  c.num_heads = 2;
  c.num_layers = 2;
  c.text_dim = 16;
  c.text_len = 8;
  return c;
}

// Reward: the mean of the video's first channel (smooth in the latent: every sample differs).
class RedReward : public Reward {
 public:
  std::string name() const override { return "red"; }
  double score(const RewardSample& s) override {
    const auto v = s.video.select(0, 0).contiguous().to_float_vector();
    double m = 0;
    for (float x : v) m += x;
    return m / double(v.size());
  }
};

struct Stack {
  model::DiT dit;
  std::unique_ptr<parallel::SequenceParallel> sp = parallel::make_single_device();
  RlEnv env;
  std::vector<std::unique_ptr<Reward>> rewards;
  // cfg: the DiT (text_dim is the stand-in encoder's width); dev: where the DiT runs (the CUDA
  // attention needs head dim 64 or 128, which tiny() does not have).
  explicit Stack(uint64_t seed = 1, const model::DiTConfig& cfg = tiny(), Device dev = Device::cpu()) {
    model::DiTOptions o;
    o.train = true;
    o.train_base = false;
    o.device = dev;
    dit = model::DiT::bind(cfg, random_dit_weights(cfg, seed), o);
    env.dit = &dit;
    env.sp = sp.get();
    env.encode = [text_dim = cfg.text_dim](const std::string& p) {  // a stand-in embedding keyed by the text
      uint64_t h = 1469598103934665603ull;
      for (char c : p) h = (h ^ uint8_t(c)) * 1099511628211ull;
      return randn({5, text_dim}, h, 0);
    };
    env.decode = [](const Tensor& z) {  // latent [16, T, h, w] → video [3, 4(T−1)+1, 8h, 8w]
      const int64_t T = z.size(1), h = z.size(2), w = z.size(3), F = 4 * (T - 1) + 1;
      const Tensor zc = z.to(Device::cpu()).contiguous();
      Tensor v = Tensor::empty({3, F, 8 * h, 8 * w}, DType::F32);
      const float* zp = zc.data<float>();
      float* vp = v.data<float>();
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t f = 0; f < F; ++f)
          for (int64_t y = 0; y < 8 * h; ++y)
            for (int64_t x = 0; x < 8 * w; ++x)
              vp[((c * F + f) * 8 * h + y) * 8 * w + x] =
                  std::tanh(zp[((c * T + (f + 3) / 4) * h + y / 8) * w + x / 8]);
      return v;
    };
    env.base_model = "random";
    rewards.push_back(std::make_unique<RedReward>());
  }
};

// The RL settings both tests share: a few cheap steps with CFG, a KL term and a small LoRA (each
// test sets prompts, output, size, group sizes, steps and seed).
inline RlOptions small_rl_options() {
  RlOptions o;
  o.shift = 3.0;
  o.guidance = 4.0;
  o.clip_range = 0.2;
  o.kl_beta = 0.01;
  o.lora_rank = 4;
  o.lora_alpha = 8;
  o.lr = 1e-3;
  o.iterations = 2;
  o.rewards = {"builtin:temporal"};  // validated; the tests pass their own reward list
  o.quiet_progress = true;
  return o;
}

// small_rl_options() with two prompts (a prompts file beside `out`, with a comment and a blank
// line the reader skips), 32×32×5 videos, groups of 3, 6 steps of which 3 SDE, seed 7.
inline RlOptions two_prompt_options(const std::filesystem::path& out) {
  RlOptions o = small_rl_options();
  o.prompts = (out.parent_path() / (out.filename().string() + "_prompts.txt")).string();
  std::ofstream(o.prompts) << "a red circle moves up on a black background\n"
                           << "# a comment\n\n"
                           << "a blue square grows on a white background\n";
  o.out = out.string();
  o.size = "32x32";
  o.frames = 5;
  o.group = 3;
  o.prompts_per_iter = 2;
  o.steps = 6;
  o.sde_steps = 3;
  o.seed = 7;
  return o;
}

}  // namespace osp::train::rl_test
