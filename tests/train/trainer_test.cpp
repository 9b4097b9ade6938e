// The training loop with a small analytic model (a per-position linear velocity predictor
// v = W·x_σ + b + u·σ over the 16 latent channels): overfitting, exact resume after a stop,
// NaN stop, checkpoints (content, mismatch, failing write), bad options and outputs.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "osp/core/progress.h"  // interrupted(), set_interrupted()
#include "osp/core/philox.h"
#include "osp/io/atomic_file.h"
#include "osp/io/safetensors.h"
#include "osp/train/checkpoint.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/trainer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace osp;
using namespace osp::train;

namespace {

class LinearVelocity : public TrainModel {
 public:
  explicit LinearVelocity(int64_t C = 16, uint64_t seed = 1) : C_(C) {
    W_ = randn({C, C}, seed);
    float* w = W_.data<float>();
    for (int64_t i = 0; i < C * C; ++i) w[i] *= 0.05f;
    b_ = Tensor::zeros({C}, DType::F32);
    u_ = Tensor::zeros({C}, DType::F32);
    gW_ = Tensor::zeros({C, C}, DType::F32);
    gb_ = Tensor::zeros({C}, DType::F32);
    gu_ = Tensor::zeros({C}, DType::F32);
  }
  ParamTable parameters() override {
    return {{"proj.weight", {C_, C_, 1, 1, 1}, &W_, &gW_}, {"proj.bias", {C_}, &b_, &gb_}, {"sigma.weight", {C_}, &u_, &gu_}};
  }
  void zero_grad() override {
    gW_.zero_();
    gb_.zero_();
    gu_.zero_();
  }
  double loss_backward(const Tensor& x0, const Tensor& noise, const std::vector<float>& sigma,
                       const Tensor& context) override {
    calls++;
    if (nan_at_call == calls) return std::nan("");
    const int64_t B = x0.size(0), C = x0.size(1), N = x0.numel() / (B * C);
    const float* a = x0.data<float>();
    const float* e = noise.data<float>();
    const float* W = W_.data<float>();
    double loss = 0;
    const double inv = 1.0 / double(x0.numel());
    std::vector<float> xs(static_cast<size_t>(C));
    for (int64_t bi = 0; bi < B; ++bi) {
      const float s = sigma[size_t(bi)];
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k = (bi * C + c) * N + n;
          xs[size_t(c)] = s * e[k] + (1 - s) * a[k];
        }
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k = (bi * C + c) * N + n;
          double v = b_.data<float>()[c] + u_.data<float>()[c] * s;
          for (int64_t j = 0; j < C; ++j) v += W[c * C + j] * xs[size_t(j)];
          const double d = v - (e[k] - a[k]);
          loss += d * d * inv;
          const float g = float(2 * d * inv);
          for (int64_t j = 0; j < C; ++j) gW_.data<float>()[c * C + j] += g * xs[size_t(j)];
          gb_.data<float>()[c] += g;
          gu_.data<float>()[c] += g * s;
        }
      }
    }
    return loss;
  }
  std::string config_json() const override { return "{\"toy\": \"linear velocity\", \"channels\": 16}\n"; }
  int64_t tokens(const Shape& s) const override { return s[1] * s[2] * s[3]; }
  Device device() const override { return Device::cpu(); }

  int64_t C_;
  Tensor W_, b_, u_, gW_, gb_, gu_;
  int nan_at_call = -1, calls = 0;
};

fs::path fresh(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("osp_trainer_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

// 4 latents 16×1×4×4 whose channels hold sample-specific constants of magnitude ~4 (+ a little
// texture), so most of the target ε − x0 is predictable from x_σ.
fs::path make_cache(const std::string& name, bool with_empty = true) {
  const fs::path dir = fresh(name + "_data");
  LatentCacheWriter w(dir.string(), 2);
  for (int i = 0; i < 4; ++i) {
    Tensor lat = randn({16, 1, 4, 4}, 50 + i);
    float* p = lat.data<float>();
    for (int c = 0; c < 16; ++c)
      for (int k = 0; k < 16; ++k) p[c * 16 + k] = 0.1f * p[c * 16 + k] + 4.0f * float(((c + i) % 3) - 1) + 0.5f;
    w.add(lat, randn({3, 8}, 70 + i), "sample " + std::to_string(i));
  }
  if (with_empty) w.set_empty_context(Tensor::zeros({1, 8}, DType::F32));
  w.finish();
  return dir;
}

TrainOptions base_options(const fs::path& data, const fs::path& out) {
  TrainOptions o;
  o.from_scratch = true;
  o.config_model = "toy";
  o.data = data.string();
  o.out = out.string();
  o.steps = 12;
  o.lr = 0.02;
  o.eps = 1e-8;
  o.clip = "adaptive";
  o.ema = "0.9";
  o.seed = 9;
  o.batch = 2;
  o.caption_dropout = 0.25;
  o.quiet_progress = true;
  return o;
}

using osp::test::error_of;

}  // namespace

// The linear model cannot represent the 1/σ dependence of the ideal velocity, so its loss floor
// is high; it must still fall ≥ 3× (the DiT test in dit_train_test.cpp asks ≥ 5×).
TEST(Trainer, LossFallsOnAHandfulOfLatents) {
  const fs::path data = make_cache("overfit"), out = fresh("overfit_out");
  TrainOptions o = base_options(data, out);
  o.steps = 300;
  o.lr = 0.02;
  o.ema = "off";
  LinearVelocity m;
  const TrainResult r = train::run_training(o, m);
  ASSERT_EQ(r.log.size(), 300u);
  double first = 0, last = 0;
  for (int k = 0; k < 10; ++k) first += r.log[size_t(k)].loss / 10;
  for (int k = 290; k < 300; ++k) last += r.log[size_t(k)].loss / 10;
  EXPECT_GT(first / last, 3.0) << "first " << first << " last " << last;
  // The log file holds one JSON line per step.
  std::ifstream f(out / "train_log.jsonl");
  int lines = 0;
  for (std::string l; std::getline(f, l);) ++lines;
  EXPECT_EQ(lines, 300);
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(Trainer, StoppedAndResumedRunRepeatsTheLossesExactly) {
  const fs::path data = make_cache("resume");
  const fs::path out_a = fresh("resume_a"), out_b = fresh("resume_b");
  // Uninterrupted.
  LinearVelocity a;
  TrainOptions oa = base_options(data, out_a);
  oa.save_every = 4;
  const TrainResult ra = run_training(oa, a);
  ASSERT_EQ(ra.log.size(), 12u);
  // Stopped after 7 steps (as Ctrl-C does), then resumed in a fresh model from the run folder.
  TrainOptions ob = base_options(data, out_b);
  ob.save_every = 4;
  LinearVelocity b1;
  TrainHooks stop;
  stop.on_step = [](const StepLog& s) {
    if (s.step == 7) set_interrupted(true);
  };
  const TrainResult rb1 = run_training(ob, b1, stop);
  set_interrupted(false);
  EXPECT_TRUE(rb1.interrupted);
  EXPECT_EQ(rb1.steps_done, 7);
  EXPECT_EQ(fs::path(rb1.last_checkpoint).filename(), "checkpoint-00000007");
  LinearVelocity b2(16, /*seed=*/12345);  // different init: everything must come from the checkpoint
  ob.resume = out_b.string();
  const TrainResult rb2 = run_training(ob, b2);
  ASSERT_EQ(rb2.log.size(), 5u);
  std::vector<double> la, lb;
  for (const auto& s : ra.log) la.push_back(s.loss);
  for (const auto& s : rb1.log) lb.push_back(s.loss);
  for (const auto& s : rb2.log) lb.push_back(s.loss);
  ASSERT_EQ(la.size(), lb.size());
  for (size_t k = 0; k < la.size(); ++k) EXPECT_EQ(la[k], lb[k]) << "step " << k + 1;
  EXPECT_EQ(max_abs_diff(a.W_, b2.W_), 0.0);
  EXPECT_EQ(max_abs_diff(a.u_, b2.u_), 0.0);
  // The resumed run's log file is the uninterrupted one's (same steps, same losses).
  auto losses_in = [](const fs::path& p) {
    std::vector<std::string> v;
    std::ifstream f(p);
    for (std::string l; std::getline(f, l);) v.push_back(l.substr(0, l.find("\"peak_mem_mb\"")));
    return v;
  };
  const auto log_a = losses_in(out_a / "train_log.jsonl"), log_b = losses_in(out_b / "train_log.jsonl");
  ASSERT_EQ(log_a.size(), 12u);
  ASSERT_EQ(log_b.size(), 12u);
  // Same run, a third time without --resume into a used folder: refused.
  EXPECT_NE(error_of([&] { LinearVelocity c; run_training(oa, c); }).find("already holds a training run"),
            std::string::npos);
  fs::remove_all(data);
  fs::remove_all(out_a);
  fs::remove_all(out_b);
}

TEST(Trainer, CheckpointIsAModelFolderPlusState) {
  const fs::path data = make_cache("ckpt"), out = fresh("ckpt_out");
  LinearVelocity m;
  TrainOptions o = base_options(data, out);
  o.steps = 3;
  const TrainResult r = run_training(o, m);
  const fs::path ck = r.last_checkpoint;
  for (const char* f : {"config.json", "diffusion_pytorch_model.safetensors", "optimizer.safetensors", "ema.safetensors",
                        "trainer_state.json", "CHECKPOINT_COMPLETE"})
    EXPECT_TRUE(fs::exists(ck / f)) << f;
  EXPECT_EQ(resolve_checkpoint(out.string()), ck.string());
  // ema/ is a model folder of the EMA weights (bf16).
  const auto ema_model = io::SafetensorsFile::open((ck / "ema" / "diffusion_pytorch_model.safetensors").string());
  const auto ema_f32 = io::SafetensorsFile::open((ck / "ema.safetensors").string());
  EXPECT_EQ(max_abs_diff(ema_model.get("proj.weight"), ema_f32.get("proj.weight").to(DType::BF16)), 0.0);
  EXPECT_TRUE(fs::exists(ck / "ema" / "config.json"));
  const auto model = io::SafetensorsFile::open((ck / "diffusion_pytorch_model.safetensors").string());
  EXPECT_EQ(model.entry("proj.weight").dtype, DType::BF16);
  EXPECT_EQ(model.entry("proj.weight").shape, Shape({16, 16, 1, 1, 1}));  // checkpoint shape
  const auto optf = io::SafetensorsFile::open((ck / "optimizer.safetensors").string());
  EXPECT_EQ(optf.metadata().at("step"), "3");
  // bf16 model = rounded master; the compute copy (F32 on the CPU) equals the master.
  const Tensor master = optf.get("master.proj.weight");
  EXPECT_EQ(max_abs_diff(model.get("proj.weight"), master.to(DType::BF16)), 0.0);
  EXPECT_EQ(max_abs_diff(master.view({16, 16}), m.W_), 0.0);
  const TrainerState st = read_trainer_state(ck.string());
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(st.seed, 9u);
  EXPECT_EQ(st.data, (DataPosition{1, 1}));  // 2 batches per epoch: 3 steps end in epoch 1
  EXPECT_TRUE(st.clip.initialised);
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(Trainer, CheckpointNotMatchingTheModelIsRefused) {
  const fs::path data = make_cache("mismatch"), out = fresh("mismatch_out");
  LinearVelocity m;
  TrainOptions o = base_options(data, out);
  o.steps = 2;
  run_training(o, m);
  LinearVelocity other(8);  // 8 channels: every parameter has another shape
  AdamW opt(other.parameters(), {});
  const std::string err = error_of([&] { load_checkpoint(resolve_checkpoint(out.string()), opt, nullptr); });
  EXPECT_NE(err.find("does not match the model"), std::string::npos) << err;
  EXPECT_NE(err.find("'proj.weight' has shape [16, 16, 1, 1, 1], the model has [8, 8, 1, 1, 1]"), std::string::npos) << err;
  // Extra and missing names are listed too.
  struct Renamed : LinearVelocity {
    ParamTable parameters() override {
      auto t = LinearVelocity::parameters();
      t[2].name = "sigma.other";
      return t;
    }
  } renamed;
  AdamW opt2(renamed.parameters(), {});
  const std::string err2 = error_of([&] { load_checkpoint(resolve_checkpoint(out.string()), opt2, nullptr); });
  EXPECT_NE(err2.find("'sigma.weight' is not a parameter of this model"), std::string::npos) << err2;
  EXPECT_NE(err2.find("'sigma.other' [16] is missing"), std::string::npos) << err2;
  // An incomplete checkpoint (no marker) is refused by name.
  const fs::path ck = resolve_checkpoint(out.string());
  fs::remove(ck / "CHECKPOINT_COMPLETE");
  EXPECT_NE(error_of([&] { resolve_checkpoint(ck.string()); }).find("incomplete"), std::string::npos);
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(Trainer, FailingCheckpointWriteKeepsThePreviousOne) {
  const fs::path data = make_cache("failwrite"), out = fresh("failwrite_out");
  LinearVelocity m;
  TrainOptions o = base_options(data, out);
  o.steps = 6;
  o.save_every = 3;
  TrainHooks h;
  h.on_step = [](const StepLog& s) {
    if (s.step == 5) io::fail_atomic_commit_for_tests(2);  // the 2nd file of the step-6 checkpoint
  };
  const std::string err = error_of([&] { run_training(o, m, h); });
  io::fail_atomic_commit_for_tests(0);
  EXPECT_FALSE(err.empty());
  EXPECT_EQ(resolve_checkpoint(out.string()), (out / "checkpoint-00000003").string());
  EXPECT_FALSE(fs::exists(out / "checkpoint-00000006"));
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".checkpoint-00000006"), std::string::npos)
        << "temporary left behind: " << e.path();
  // The previous checkpoint still loads and resumes.
  o.resume = out.string();
  LinearVelocity again;
  const TrainResult r = run_training(o, again);
  EXPECT_EQ(r.steps_done, 6);
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(Trainer, NanLossStopsAndNamesTheLastGoodCheckpoint) {
  const fs::path data = make_cache("nan"), out = fresh("nan_out");
  LinearVelocity m;
  m.nan_at_call = 5;
  TrainOptions o = base_options(data, out);
  o.save_every = 2;
  const std::string err = error_of([&] { run_training(o, m); });
  EXPECT_NE(err.find("loss is nan at step 5"), std::string::npos) << err;
  EXPECT_NE(err.find("checkpoint-00000004"), std::string::npos) << err;
  EXPECT_EQ(resolve_checkpoint(out.string()), (out / "checkpoint-00000004").string());
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(Trainer, BadOptionsDataAndOutputs) {
  const fs::path data = make_cache("bad", /*with_empty=*/false), out = fresh("bad_out");
  LinearVelocity m;
  TrainOptions o = base_options(data, out);
  // Caption dropout without an empty-prompt embedding in the cache.
  EXPECT_NE(error_of([&] { run_training(o, m); }).find("--caption-dropout 0"), std::string::npos);
  o.caption_dropout = 0;
  // Missing dataset.
  TrainOptions miss = o;
  miss.data = (data / "nope").string();
  EXPECT_NE(error_of([&] { run_training(miss, m); }).find("nope"), std::string::npos);
  // Unwritable output folder: a path under a regular file, and a read-only folder.
  TrainOptions bad_out = o;
  bad_out.out = (data / "manifest.json" / "run").string();
  EXPECT_NE(error_of([&] { run_training(bad_out, m); }).find("output folder"), std::string::npos);
  if (::geteuid() != 0) {
    const fs::path ro = fresh("readonly");
    fs::create_directories(ro);
    ::chmod(ro.c_str(), 0555);
    bad_out.out = ro.string();
    EXPECT_FALSE(error_of([&] { run_training(bad_out, m); }).empty());
    ::chmod(ro.c_str(), 0755);
    fs::remove_all(ro);
  }
  // Config JSON: unknown field, wrong type, out of range.
  TrainOptions j;
  EXPECT_NE(error_of([&] { j.apply_json(R"({"stpes": 10})", "c.json"); }).find("unknown setting 'stpes'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { j.apply_json(R"({"steps": "ten"})", "c.json"); }).find("'steps' must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of([&] { j.apply_json("[1, 2]", "c.json"); }).find("JSON object"), std::string::npos);
  EXPECT_NE(error_of([&] { j.apply_json("{", "c.json"); }).find("not valid JSON"), std::string::npos);
  TrainOptions r = o;
  r.apply_json(R"({"lr": 5.0})", "c.json");
  EXPECT_NE(error_of([&] { r.validate(); }).find("lr must be in [0, 1]"), std::string::npos);
  r = o;
  r.apply_json(R"({"caption-dropout": 1.5})", "c.json");
  EXPECT_NE(error_of([&] { r.validate(); }).find("caption-dropout"), std::string::npos);
  r = o;
  r.apply_json(R"({"clip": "fixed:0", "steps": 3})", "c.json");
  EXPECT_NE(error_of([&] { r.validate(); }).find("fixed:X"), std::string::npos);
  r = o;
  r.apply_json(R"({"schedule": "cosine", "warmup": 2, "steps": 4, "ema": 0.99, "shift": 3})", "c.json");
  EXPECT_NO_THROW(r.validate());
  EXPECT_EQ(r.shift, "3");
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(Trainer, KeepsTheNewestCheckpoints) {
  const fs::path data = make_cache("keep"), out = fresh("keep_out");
  LinearVelocity m;
  TrainOptions o = base_options(data, out);
  o.steps = 7;
  o.save_every = 2;
  o.keep = 2;
  run_training(o, m);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(out))
    if (e.is_directory()) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"checkpoint-00000006", "checkpoint-00000007"}));
  fs::remove_all(data);
  fs::remove_all(out);
}

// --grad-accum 2 runs a batch of 4 as two micro-batches of 2: the same draws and gradient (up to
// float summation order) as the whole batch at once.
TEST(Trainer, GradientAccumulationEqualsTheWholeBatch) {
  const fs::path data = make_cache("accum"), out1 = fresh("accum1"), out2 = fresh("accum2");
  TrainOptions o = base_options(data, out1);
  o.batch = 4;
  o.steps = 6;
  LinearVelocity a, b;
  const TrainResult r1 = run_training(o, a);
  o.out = out2.string();
  o.grad_accum = 2;
  const TrainResult r2 = run_training(o, b);
  ASSERT_EQ(r1.log.size(), r2.log.size());
  for (size_t k = 0; k < r1.log.size(); ++k) {
    EXPECT_NEAR(r2.log[k].loss, r1.log[k].loss, 1e-9 * r1.log[k].loss) << "step " << k + 1;
    EXPECT_NEAR(r2.log[k].grad_norm, r1.log[k].grad_norm, 1e-6 * r1.log[k].grad_norm) << "step " << k + 1;
  }
  EXPECT_LE(max_abs_diff(a.W_, b.W_), 1e-5);
  o.grad_accum = 3;  // does not divide the batch
  EXPECT_NE(error_of([&] { o.validate(); }).find("grad-accum"), std::string::npos);
  fs::remove_all(data);
  fs::remove_all(out1);
  fs::remove_all(out2);
}
