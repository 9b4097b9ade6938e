// `osp train`'s loop on the real DiT (tiny: dim 32, 2 layers, random init from a seed) on the
// CPU: it overfits a handful of synthetic latents, and a run stopped after k steps and resumed
// from its checkpoint repeats the uninterrupted run's losses exactly. The checkpoint it writes
// binds as an inference DiT (the model folder layout `osp generate` reads).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "osp/core/progress.h"  // interrupted(), set_interrupted()
#include "osp/core/philox.h"
#include "osp/io/checkpoint.h"
#include "osp/model/dit.h"
#include "osp/ops/backward.h"
#include "osp/model/lora.h"
#include "osp/train/checkpoint.h"
#include "osp/train/dit_train_model.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/trainer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace osp;
using namespace osp::train;

namespace {

model::DiTConfig tiny() {
  model::DiTConfig c;
  c.dim = 32;
  c.ffn_dim = 64;
  c.num_heads = 2;
  c.num_layers = 2;
  c.text_dim = 8;
  c.text_len = 4;
  c.freq_dim = 32;
  return c;
}

fs::path fresh(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("osp_dit_train_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

// 4 latents 16×1×4×4: per-sample channel constants of magnitude up to 4.5 plus a little texture.
fs::path make_cache(const std::string& name) {
  const fs::path dir = fresh(name + "_data");
  LatentCacheWriter w(dir.string(), 2);
  for (int i = 0; i < 4; ++i) {
    Tensor lat = randn({16, 1, 4, 4}, 50 + i);
    float* p = lat.data<float>();
    for (int c = 0; c < 16; ++c)
      for (int k = 0; k < 16; ++k) p[c * 16 + k] = 0.1f * p[c * 16 + k] + 4.0f * float(((c + i) % 3) - 1) + 0.5f;
    w.add(lat, randn({3, 8}, 70 + i), "sample " + std::to_string(i));
  }
  w.set_empty_context(Tensor::zeros({1, 8}, DType::F32));
  w.finish();
  return dir;
}

TrainOptions options(const fs::path& data, const fs::path& out) {
  TrainOptions o;
  o.from_scratch = true;
  o.config_model = "(tiny)";
  o.data = data.string();
  o.out = out.string();
  o.lr = 3e-3;
  o.eps = 1e-8;
  o.clip = "adaptive";
  o.seed = 4;
  o.batch = 2;
  o.caption_dropout = 0.1;
  o.quiet_progress = true;
  return o;
}

DiTTrainModel make_model(uint64_t seed) {
  return DiTTrainModel(tiny(), random_dit_weights(tiny(), seed), {});
}

// Every parameter value of a model, back to back (each must be resident with its gradient).
std::vector<float> all_values(TrainModel& m) {
  std::vector<float> w;
  for (const ParamRef& p : m.parameters()) {
    EXPECT_TRUE(p.value->defined()) << p.name << " has no value after run_training";
    EXPECT_TRUE(p.grad && p.grad->defined()) << p.name << " has no gradient after run_training";
    if (!p.value->defined()) continue;
    for (float x : p.value->to_float_vector()) w.push_back(x);
  }
  return w;
}

// Two runs of one training that must be the same bit for bit: `steps` steps each, the same loss
// and gradient norm at every step, the same final weights.
void expect_same_run(const TrainResult& a, const TrainResult& b, const std::vector<float>& wa,
                     const std::vector<float>& wb, size_t steps) {
  ASSERT_EQ(a.log.size(), steps);
  ASSERT_EQ(b.log.size(), steps);
  for (size_t k = 0; k < steps; ++k) {
    EXPECT_EQ(a.log[k].loss, b.log[k].loss) << "step " << k + 1;
    EXPECT_EQ(a.log[k].grad_norm, b.log[k].grad_norm) << "step " << k + 1;
  }
  EXPECT_EQ(wa, wb);
}

}  // namespace

TEST(DiTTrain, OverfitsAHandfulOfLatents) {
  const fs::path data = make_cache("overfit"), out = fresh("overfit_out");
  TrainOptions o = options(data, out);
  o.steps = 150;
  DiTTrainModel m = make_model(1);
  const TrainResult r = run_training(o, m);
  ASSERT_EQ(r.log.size(), 150u);
  double first = 0, last = 0;
  for (int k = 0; k < 10; ++k) first += r.log[size_t(k)].loss / 10;
  for (int k = 140; k < 150; ++k) last += r.log[size_t(k)].loss / 10;
  EXPECT_GT(first / last, 5.0) << "mean loss of the first 10 steps " << first << ", of the last 10 " << last;
  // The checkpoint is a model folder: config + Wan-named bf16 DiT that binds for inference.
  const io::Checkpoint ck = io::open_checkpoint(r.last_checkpoint);
  std::map<std::string, Tensor> w;
  for (const auto& n : ck->names()) w[n] = ck->get(n);
  const model::DiTConfig cfg = model::DiTConfig::from_json_file((fs::path(r.last_checkpoint) / "config.json").string());
  EXPECT_EQ(cfg.dim, 32);
  EXPECT_EQ(cfg.num_layers, 2);
  EXPECT_NO_THROW(model::DiT::bind(cfg, w));
  fs::remove_all(data);
  fs::remove_all(out);
}

TEST(DiTTrain, KilledAndResumedRunGivesTheSameLosses) {
  const fs::path data = make_cache("resume"), out_a = fresh("resume_a"), out_b = fresh("resume_b");
  TrainOptions oa = options(data, out_a);
  oa.steps = 8;
  oa.ema = "0.99";
  oa.save_every = 3;
  DiTTrainModel a = make_model(2);
  const TrainResult ra = run_training(oa, a);

  TrainOptions ob = options(data, out_b);
  ob.steps = 8;
  ob.ema = "0.99";
  ob.save_every = 3;
  TrainHooks stop;
  stop.on_step = [](const StepLog& s) {
    if (s.step == 5) set_interrupted(true);
  };
  DiTTrainModel b1 = make_model(2);
  const TrainResult rb1 = run_training(ob, b1, stop);
  set_interrupted(false);
  ASSERT_TRUE(rb1.interrupted);
  ASSERT_EQ(rb1.steps_done, 5);
  ob.resume = out_b.string();
  DiTTrainModel b2 = make_model(77);  // another init: the checkpoint must restore everything
  const TrainResult rb2 = run_training(ob, b2);
  ASSERT_EQ(rb1.log.size() + rb2.log.size(), ra.log.size());
  for (size_t k = 0; k < ra.log.size(); ++k) {
    const double lb = k < rb1.log.size() ? rb1.log[k].loss : rb2.log[k - rb1.log.size()].loss;
    EXPECT_EQ(ra.log[k].loss, lb) << "step " << k + 1;
  }
  // Same final weights, bit for bit.
  const ParamTable pa = a.parameters(), pb = b2.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t k = 0; k < pa.size(); ++k) EXPECT_EQ(max_abs_diff(*pa[k].value, *pb[k].value), 0.0) << pa[k].name;
  fs::remove_all(data);
  fs::remove_all(out_a);
  fs::remove_all(out_b);
}

// --attention hybrid on a full-attention config trains the OSP-Next dual-end layout (and says so
// in the checkpoint's config), here with HiF8 quantization-aware training.
TEST(DiTTrain, HybridHiF8QuantizationAwareTraining) {
  const fs::path data = make_cache("qat"), out = fresh("qat_out");
  model::DiTConfig c = tiny();
  c.num_layers = 8;
  DiTTrainOptions d;
  d.attention = "hybrid";
  d.quant = "hif8";
  DiTTrainModel m(c, random_dit_weights(c, 3), d);
  EXPECT_EQ(m.config().skiparse_mode, "dual_end");
  TrainOptions o = options(data, out);
  o.steps = 30;
  const TrainResult r = run_training(o, m);
  ASSERT_EQ(r.log.size(), 30u);
  for (const auto& s : r.log) EXPECT_TRUE(std::isfinite(s.loss)) << "step " << s.step;
  double first = 0, last = 0;
  for (int k = 0; k < 5; ++k) first += r.log[size_t(k)].loss / 5;
  for (int k = 25; k < 30; ++k) last += r.log[size_t(k)].loss / 5;
  EXPECT_LT(last, first);
  const model::DiTConfig saved = model::DiTConfig::from_json_file((fs::path(r.last_checkpoint) / "config.json").string());
  EXPECT_EQ(saved.skiparse_mode, "dual_end");
  const auto kinds = saved.block_kinds();
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), sparse::BlockKind::Token), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), sparse::BlockKind::Group), kinds.end());
  fs::remove_all(data);
  fs::remove_all(out);
}

// Released gradients (the unsharded default; TrainOptions::keep_gradients): a block's gradient
// exists only from its backward to the optimizer step. The run is the same, bit for bit, as with
// every gradient kept (also with two accumulation micro-batches, where a block's gradient must
// live across them), and when run_training returns every gradient is allocated again.
TEST(DiTTrain, ReleasedGradientsGiveTheSameRunAsKeptOnes) {
  const fs::path data = make_cache("released");
  for (const int accum : {1, 2}) {
    SCOPED_TRACE("grad_accum " + std::to_string(accum));
    std::vector<TrainResult> r;
    std::vector<std::vector<float>> weights;
    for (const bool keep : {true, false}) {
      const fs::path out = fresh(std::string("released_out_") + (keep ? "keep" : "release"));
      TrainOptions o = options(data, out);
      o.steps = 4;
      o.grad_accum = accum;
      o.keep_gradients = keep;
      DiTTrainModel m = make_model(5);
      r.push_back(run_training(o, m));
      weights.push_back(all_values(m));
      fs::remove_all(out);
    }
    expect_same_run(r[0], r[1], weights[0], weights[1], 4);
  }
  fs::remove_all(data);
}

// DiTTrainOptions::keep_attention (`osp train --keep-attention`): the trainer's run is the same,
// bit for bit — the recompute reuses the forward's attention (model/dit_train_golden_test counts
// the cores it skips).
TEST(DiTTrain, KeptAttentionGivesTheSameRun) {
  const fs::path data = make_cache("keptattn");
  std::vector<TrainResult> r;
  std::vector<std::vector<float>> weights;
  for (const bool keep : {false, true}) {
    const fs::path out = fresh(std::string("keptattn_out_") + (keep ? "kept" : "recomputed"));
    TrainOptions o = options(data, out);
    o.steps = 3;
    DiTTrainOptions d;
    d.keep_attention = keep;
    DiTTrainModel m(tiny(), random_dit_weights(tiny(), 5), d);
    r.push_back(run_training(o, m));
    weights.push_back(all_values(m));
    fs::remove_all(out);
  }
  expect_same_run(r[0], r[1], weights[0], weights[1], 3);
  fs::remove_all(data);
}

// TrainOptions::deterministic (`--deterministic`): run_training switches the attention backward
// to the deterministic path for the run (ops::deterministic_backward; on CUDA osp's own kernel,
// GPU-tested in model/dit_train_golden_gpu_test) and puts the switch back afterwards; the run's
// settings record it; on the CPU, whose kernels are deterministic anyway, the run is the same bit
// for bit.
TEST(DiTTrain, DeterministicSwitchesTheBackwardAndKeepsTheRun) {
  const fs::path data = make_cache("determ");
  std::vector<TrainResult> r;
  std::vector<std::vector<float>> weights;
  ops::set_deterministic_backward(false);
  for (const bool det : {false, true}) {
    const fs::path out = fresh(std::string("determ_out_") + (det ? "on" : "off"));
    TrainOptions o = options(data, out);
    o.steps = 3;
    o.deterministic = det;
    EXPECT_NE(o.to_json().find(det ? "\"deterministic\":true" : "\"deterministic\":false"), std::string::npos);
    DiTTrainModel m(tiny(), random_dit_weights(tiny(), 5), DiTTrainOptions{});
    r.push_back(run_training(o, m));
    EXPECT_FALSE(ops::deterministic_backward());  // put back
    weights.push_back(all_values(m));
    fs::remove_all(out);
  }
  ops::set_deterministic_backward(false);
  expect_same_run(r[0], r[1], weights[0], weights[1], 3);
  fs::remove_all(data);
}

// TrainOptions::transient_weights (`--transient-weights`): between uses no block holds a compute
// copy (checked after every step), AdamW updates the masters only, and each block's copy is made
// from its master around its forward and backward. The run is the same, bit for bit, as with
// resident values — with accumulation, with HiF8 QAT (Q(W, 15) of the fresh copy), with an EMA —
// and a run interrupted and resumed with it repeats the uninterrupted losses; every value is
// resident again when run_training returns.
TEST(DiTTrain, TransientWeightsGiveTheSameRun) {
  const fs::path data = make_cache("transient");
  for (const int accum : {1, 2}) {
    for (const std::string quant : {"none", "hif8"}) {
      SCOPED_TRACE("grad_accum " + std::to_string(accum) + ", quant " + quant);
      std::vector<TrainResult> r;
      std::vector<std::vector<float>> weights;
      for (const bool transient : {false, true}) {
        const fs::path out = fresh(std::string("transient_out_") + (transient ? "t" : "r"));
        TrainOptions o = options(data, out);
        o.steps = 4;
        o.grad_accum = accum;
        o.ema = "0.9";
        o.transient_weights = transient;
        DiTTrainOptions d;
        d.quant = quant;
        DiTTrainModel m(tiny(), random_dit_weights(tiny(), 5), d);
        int released = -1;
        TrainHooks h;
        int block_params = 0;
        for (const ParamRef& p : m.parameters()) block_params += p.name.rfind("blocks.", 0) == 0;
        h.on_step = [&](const StepLog&) {  // (a released value with a released gradient is not listed)
          int n = block_params;
          for (const ParamRef& p : m.parameters())
            if (p.name.rfind("blocks.", 0) == 0 && p.value->defined()) --n;
          if (released < 0 || n < released) released = n;
        };
        r.push_back(run_training(o, m, h));
        weights.push_back(all_values(m));  // (every value resident again)
        EXPECT_EQ(released, transient ? block_params : 0) << "block values released between steps";
        fs::remove_all(out);
      }
      expect_same_run(r[0], r[1], weights[0], weights[1], 4);
    }
  }
  // interrupted at step 3 and resumed (transient on both legs) = uninterrupted (resident)
  const fs::path out_a = fresh("transient_a"), out_b = fresh("transient_b");
  TrainOptions oa = options(data, out_a);
  oa.steps = 5;
  oa.save_every = 2;
  DiTTrainModel a = make_model(6);
  const TrainResult ra = run_training(oa, a);
  TrainOptions ob = options(data, out_b);
  ob.steps = 5;
  ob.save_every = 2;
  ob.transient_weights = true;
  TrainHooks stop;
  stop.on_step = [](const StepLog& s) {
    if (s.step == 3) set_interrupted(true);
  };
  DiTTrainModel b1 = make_model(6);
  const TrainResult rb1 = run_training(ob, b1, stop);
  set_interrupted(false);
  ASSERT_EQ(rb1.steps_done, 3);
  ob.resume = out_b.string();
  DiTTrainModel b2 = make_model(78);
  const TrainResult rb2 = run_training(ob, b2);
  ASSERT_EQ(rb1.log.size() + rb2.log.size(), ra.log.size());
  for (size_t k = 0; k < ra.log.size(); ++k) {
    const double lb = k < rb1.log.size() ? rb1.log[k].loss : rb2.log[k - rb1.log.size()].loss;
    EXPECT_EQ(ra.log[k].loss, lb) << "step " << k + 1;
  }
  const ParamTable pa = a.parameters(), pb = b2.parameters();
  for (size_t k = 0; k < pa.size(); ++k) EXPECT_EQ(max_abs_diff(*pa[k].value, *pb[k].value), 0.0) << pa[k].name;
  // with the sharded optimizer it is refused (--shard-weights is its form there)
  TrainOptions os = options(data, fresh("transient_s"));
  os.transient_weights = true;
  os.shard_optimizer = "on";
  DiTTrainModel s = make_model(6);
  const std::string e = test::error_of([&] { run_training(os, s); });
  EXPECT_NE(e.find("with the sharded one use --shard-weights"), std::string::npos) << e;
  fs::remove_all(data);
  fs::remove_all(out_a);
  fs::remove_all(out_b);
  fs::remove_all(os.out);
}

// --attention hybrid on a full-attention (Wan2.1) config: OSP-Next's fine-tuning layout — dual
// end, P = 2, 8 full blocks (first 4, last 4) for the 1.3B and 14B configs — unless --full-blocks
// says otherwise; a small model keeps ⌊L/2⌋ rounded down to a multiple of 4; a config that
// declares its layout keeps it.
TEST(DiTTrain, HybridOnAWanConfigIsTheOspNextLayout) {
  using sparse::BlockKind;
  for (const model::DiTConfig& wan : {model::DiTConfig::wan_1_3b(), model::DiTConfig::wan_14b()}) {
    const model::DiTConfig c = config_for_attention(wan, "hybrid");
    EXPECT_EQ(c.skiparse_mode, "dual_end");
    EXPECT_EQ(c.sparse_ratio, 2);
    EXPECT_EQ(c.num_full_blocks, 8);
    const auto kinds = c.block_kinds();
    const int64_t L = wan.num_layers;
    for (int64_t i = 0; i < L; ++i) {
      const bool full = i < 4 || i >= L - 4;
      EXPECT_EQ(kinds[size_t(i)] == BlockKind::Full, full) << "block " << i << " of " << L;
    }
    EXPECT_EQ(config_for_attention(wan, "hybrid", 12).num_full_blocks, 12);
    EXPECT_THROW(config_for_attention(wan, "hybrid", 6), Error);  // not a multiple of 4
    // a declared hybrid layout is kept; asking for another is an error
    EXPECT_EQ(config_for_attention(c, "hybrid").num_full_blocks, 8);
    EXPECT_THROW(config_for_attention(c, "hybrid", 12), Error);
    EXPECT_EQ(config_for_attention(c, "full").skiparse_mode, "full");
    EXPECT_THROW(config_for_attention(wan, "full", 8), Error);  // --full-blocks without hybrid
  }
  model::DiTConfig small = tiny();
  small.num_layers = 8;
  EXPECT_EQ(config_for_attention(small, "hybrid").num_full_blocks, 4);
}

// TrainOptions::profile (`osp train --profile`): the per-step stage table of steps 2..N (the
// first warms up) — forward, recompute and backward stages — returned and written to
// OUT/profile.txt; the run itself is unchanged.
TEST(DiTTrain, ProfiledRunWritesTheStageTable) {
  const fs::path data = make_cache("profile");
  std::vector<TrainResult> r;
  std::vector<std::vector<float>> weights;
  for (const bool profile : {false, true}) {
    const fs::path out = fresh(std::string("profile_out_") + (profile ? "on" : "off"));
    TrainOptions o = options(data, out);
    o.steps = 3;
    o.profile = profile;
    DiTTrainModel m = make_model(5);
    r.push_back(run_training(o, m));
    weights.push_back(all_values(m));
    if (profile) {
      EXPECT_NE(r.back().profile.find("ms/step"), std::string::npos) << r.back().profile;
      EXPECT_NE(r.back().profile.find("(2 steps)"), std::string::npos) << r.back().profile;
      for (const char* stage : {"recompute", "bwd_self_attn_krn", "bwd_qkv_linear", "bwd_ffn", "self_attn_kernel"})
        EXPECT_NE(r.back().profile.find(stage), std::string::npos) << stage;
      std::ifstream f(out / "profile.txt");
      const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      EXPECT_EQ(text, r.back().profile);
    } else {
      EXPECT_TRUE(r.back().profile.empty());
      EXPECT_FALSE(fs::exists(out / "profile.txt"));
    }
    fs::remove_all(out);
  }
  expect_same_run(r[0], r[1], weights[0], weights[1], 3);
  fs::remove_all(data);
}

// LoRA fine-tuning (`osp train --lora-rank R`): only the adapters train — the base weights keep
// their bits —, the loss falls, a checkpoint holds lora.safetensors (the adapters' masters, in
// model/lora.h's format) and no model folder, and an interrupted run resumes to the uninterrupted
// run's losses and adapters.
TEST(DiTTrain, LoraFineTuningTrainsOnlyTheAdapters) {
  const fs::path data = make_cache("lora"), out = fresh("lora_out");
  DiTTrainOptions d;
  d.lora_rank = 4;
  d.lora_alpha = 8;
  d.lora_seed = 3;
  const auto w0 = random_dit_weights(tiny(), 5);
  DiTTrainModel m(tiny(), w0, d);
  EXPECT_EQ(m.lora_alpha(), 8.0);
  const ParamTable lp = m.parameters();
  ASSERT_EQ(lp.size(), size_t(tiny().num_layers) * 8 * 2);  // 8 attention linears per block, A and B
  for (const ParamRef& p : lp) EXPECT_NE(p.name.find(".lora_"), std::string::npos) << p.name;
  TrainOptions o = options(data, out);
  o.steps = 40;
  o.lr = 1e-2;
  o.ema = "0.9";
  o.save_every = 20;
  o.model = "";
  const TrainResult r = run_training(o, m);
  ASSERT_EQ(r.log.size(), 40u);
  double first = 0, last = 0;
  for (int k = 0; k < 5; ++k) first += r.log[size_t(k)].loss / 5, last += r.log[size_t(35 + k)].loss / 5;
  EXPECT_LT(last, 0.9 * first) << first << " -> " << last;
  // the base is untouched: every base weight has the bits it was bound with
  for (const ParamRef& p : m.dit().parameters()) {
    const Tensor& want = w0.at(p.name);
    EXPECT_EQ(max_abs_diff(*p.value, want.view(p.value->shape())), 0.0) << p.name;
  }
  // the checkpoint: the adapters (= the trained values on the CPU, F32) and their EMA, no model folder
  const fs::path ck = r.last_checkpoint;
  EXPECT_TRUE(fs::exists(ck / "lora.safetensors"));
  EXPECT_TRUE(fs::exists(ck / "lora_ema.safetensors"));
  EXPECT_FALSE(fs::exists(ck / "diffusion_pytorch_model.safetensors"));
  EXPECT_FALSE(fs::exists(ck / "config.json"));
  const model::Lora saved = model::load_lora((ck / "lora.safetensors").string());
  EXPECT_EQ(saved.rank(), 4);
  EXPECT_EQ(saved.alpha(), 8.0);
  EXPECT_EQ(saved.adapters.size(), size_t(tiny().num_layers) * 8);
  for (const ParamRef& p : m.parameters()) {
    const std::string mod = p.name.substr(0, p.name.size() - std::string(".lora_A.weight").size());
    const bool a = p.name.find(".lora_A.") != std::string::npos;
    const Tensor& s = a ? saved.adapters.at(mod).A : saved.adapters.at(mod).B;
    EXPECT_EQ(max_abs_diff(s, *p.value), 0.0) << p.name;
  }
  // killed after step 25 and resumed from checkpoint 20: the same losses and adapters
  const fs::path out_b = fresh("lora_out_b");
  TrainOptions ob = options(data, out_b);
  ob.steps = 40;
  ob.lr = 1e-2;
  ob.ema = "0.9";
  ob.save_every = 20;
  TrainHooks stop;
  stop.on_step = [](const StepLog& s) {
    if (s.step == 25) set_interrupted(true);
  };
  DiTTrainModel b1(tiny(), w0, d);
  const TrainResult rb1 = run_training(ob, b1, stop);
  set_interrupted(false);
  ASSERT_EQ(rb1.steps_done, 25);
  ob.resume = out_b.string();
  DiTTrainOptions d2 = d;
  d2.lora_seed = 99;  // another init: the checkpoint restores the adapters
  DiTTrainModel b2(tiny(), w0, d2);
  const TrainResult rb2 = run_training(ob, b2);
  ASSERT_EQ(rb1.log.size() + rb2.log.size(), r.log.size());
  for (size_t k = 0; k < r.log.size(); ++k) {
    const double lb = k < rb1.log.size() ? rb1.log[k].loss : rb2.log[k - rb1.log.size()].loss;
    EXPECT_EQ(r.log[k].loss, lb) << "step " << k + 1;
  }
  EXPECT_EQ(all_values(m), all_values(b2));
  // sharding the adapters' state is refused with the reason
  TrainOptions os = options(data, fresh("lora_shard"));
  os.shard_optimizer = "on";
  DiTTrainModel s(tiny(), w0, d);
  EXPECT_NE(test::error_of([&] { run_training(os, s); }).find("LoRA fine-tuning keeps its small state unsharded"),
            std::string::npos);
  fs::remove_all(data);
  fs::remove_all(out);
  fs::remove_all(out_b);
  fs::remove_all(os.out);
}
