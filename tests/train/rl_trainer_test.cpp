// The Mix-GRPO loop (train/rl_trainer.h) on a tiny random DiT with a stand-in text encoder and
// decoder and a smooth reward: two iterations run in seconds; the first update starts on-policy
// (every ratio exactly 1, KL exactly 0: B = 0 makes the fresh LoRA a no-op); the same seed gives
// the same run bit for bit; a run resumed from its iteration-1 checkpoint equals the
// uninterrupted one (log numbers and LoRA files); a few iterations with a larger learning rate
// raise the reward; options and configs are checked by name.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "osp/core/interrupt.h"
#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/model/lora.h"
#include "osp/train/dit_train_model.h"
#include "osp/train/rl_trainer.h"
#include "train/rl_test_stack.h"

using namespace osp;
using namespace osp::train;
using namespace osp::train::rl_test;
namespace fs = std::filesystem;

namespace {

fs::path fresh(const std::string& n) {
  fs::path d = fs::temp_directory_path() / ("osp_rl_trainer_" + n + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}


std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void expect_same_log(const RlIterationLog& a, const RlIterationLog& b) {
  EXPECT_EQ(a.iteration, b.iteration);
  EXPECT_EQ(a.reward_mean, b.reward_mean);
  EXPECT_EQ(a.reward_std, b.reward_std);
  EXPECT_EQ(a.kl, b.kl);
  EXPECT_EQ(a.v_rms, b.v_rms);
  EXPECT_EQ(a.ref_rel, b.ref_rel);
  EXPECT_EQ(a.ratio_mean, b.ratio_mean);
  EXPECT_EQ(a.ratio_min, b.ratio_min);
  EXPECT_EQ(a.ratio_max, b.ratio_max);
  EXPECT_EQ(a.clip_fraction, b.clip_fraction);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.grad_norm, b.grad_norm);
}

}  // namespace

TEST(RlTrainer, TwoIterationsDeterministicAndResumeEqualsUninterrupted) {
  const fs::path a = fresh("a"), b = fresh("b"), c = fresh("c");
  RlResult ra, rb, rc1, rc2;
  {
    Stack s;
    ra = run_rl(two_prompt_options(a), s.env, s.rewards);
  }
  ASSERT_EQ(ra.iterations_done, 2);
  ASSERT_EQ(ra.log.size(), 2u);
  const RlIterationLog& l1 = ra.log[0];
  EXPECT_EQ(l1.kept, 6);
  EXPECT_EQ(l1.sde_begin, 0);
  EXPECT_EQ(l1.sde_end, 3);
  EXPECT_EQ(l1.optimizer_steps, 1);
  EXPECT_EQ(l1.rollout_forwards, 6 * 6 * 2);  // samples x steps x (cond, uncond)
  EXPECT_EQ(l1.update_backwards, 6 * 3);      // kept samples x stored SDE steps
  EXPECT_EQ(l1.update_forwards, 6 * 3 * 3);   // v_u + the reference's cond and uncond
  // on-policy start: the rollout's log-probabilities are reproduced exactly, and B = 0 makes the
  // fresh LoRA the reference model
  EXPECT_EQ(l1.ratio_min, 1.0);
  EXPECT_EQ(l1.ratio_max, 1.0);
  EXPECT_EQ(l1.kl, 0.0);
  EXPECT_EQ(l1.ref_rel, 0.0);  // the policy's velocity equals the reference's exactly
  EXPECT_GT(l1.v_rms, 0.0);
  EXPECT_EQ(l1.clip_fraction, 0.0);
  EXPECT_GT(l1.grad_norm, 0.0);
  EXPECT_GT(l1.reward_std, 0.0);
  // after one update the policy moved away from the reference
  EXPECT_GT(ra.log[1].kl, 0.0);
  EXPECT_GT(ra.log[1].ref_rel, 0.0);
  EXPECT_TRUE(std::isfinite(ra.log[1].ratio_mean));
  // outputs
  const fs::path ck = fs::path(ra.last_checkpoint);
  EXPECT_EQ(ck.filename().string(), "checkpoint-00000002");
  for (const char* f : {"lora.safetensors", "lora_ema.safetensors", "optimizer.safetensors",
                        "rl_state.json", "CHECKPOINT_COMPLETE"})
    EXPECT_TRUE(fs::exists(ck / f)) << f;
  const model::Lora l = model::load_lora((ck / "lora.safetensors").string());
  EXPECT_EQ(l.rank(), 4);
  EXPECT_EQ(l.alpha(), 8);
  EXPECT_EQ(l.adapters.size(), 16u);
  {
    int lines = 0;
    std::ifstream f(a / "rl_log.jsonl");
    for (std::string line; std::getline(f, line);) ++lines;
    EXPECT_EQ(lines, 2);
  }
  // same seed → same run
  {
    Stack s;
    rb = run_rl(two_prompt_options(b), s.env, s.rewards);
  }
  ASSERT_EQ(rb.log.size(), 2u);
  for (int i = 0; i < 2; ++i) expect_same_log(ra.log[size_t(i)], rb.log[size_t(i)]);
  EXPECT_EQ(file_bytes(ck / "lora.safetensors"),
            file_bytes(fs::path(rb.last_checkpoint) / "lora.safetensors"));
  // The same run with a memory option of the update's training forward (its own folder `tag`).
  auto same_run_with = [&](const char* tag, const std::function<void(model::DiT&)>& option) {
    SCOPED_TRACE(tag);
    const fs::path k = fresh(tag);
    Stack s;
    option(s.dit);
    const RlResult rk = run_rl(two_prompt_options(k), s.env, s.rewards);
    ASSERT_EQ(rk.log.size(), 2u);
    for (int i = 0; i < 2; ++i) expect_same_log(ra.log[size_t(i)], rk.log[size_t(i)]);
    EXPECT_EQ(file_bytes(ck / "lora.safetensors"), file_bytes(fs::path(rk.last_checkpoint) / "lora.safetensors"));
    fs::remove_all(k);
    fs::remove(k.string() + "_prompts.txt");
  };
  // `osp rl --keep-attention` (the update's recompute reuses the forward's attention)
  same_run_with("k", [](model::DiT& d) { d.set_keep_attention(true); });
  // `osp rl --offload-checkpoints` (the update's block inputs go through host memory)
  same_run_with("o", [](model::DiT& d) { d.set_offload_block_inputs(true); });
  // one iteration, then resume to two: equals the uninterrupted run
  {
    Stack s;
    RlOptions o = two_prompt_options(c);
    o.iterations = 1;
    rc1 = run_rl(o, s.env, s.rewards);
  }
  ASSERT_EQ(rc1.iterations_done, 1);
  expect_same_log(rc1.log[0], ra.log[0]);
  {
    Stack s;
    RlOptions o = two_prompt_options(c);
    o.resume = c.string();
    rc2 = run_rl(o, s.env, s.rewards);
  }
  ASSERT_EQ(rc2.iterations_done, 2);
  ASSERT_EQ(rc2.log.size(), 1u);
  expect_same_log(rc2.log[0], ra.log[1]);
  for (const char* f : {"lora.safetensors", "lora_ema.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(file_bytes(fs::path(rc2.last_checkpoint) / f), file_bytes(ck / f)) << f;
  {
    int lines = 0;
    std::ifstream f(c / "rl_log.jsonl");
    for (std::string line; std::getline(f, line);) ++lines;
    EXPECT_EQ(lines, 2);
  }
  // a finished run's folder is not reused by accident
  try {
    rl_preflight(two_prompt_options(a));
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  for (const auto& d : {a, b, c}) {
    fs::remove_all(d);
    fs::remove(d.string() + "_prompts.txt");
  }
}

TEST(RlTrainer, RewardRisesOnHeldOutPrompts) {
  const fs::path d = fresh("learn");
  Stack s(3);
  RlOptions o = two_prompt_options(d);
  o.iterations = 6;
  o.lr = 1e-2;
  o.kl_beta = 0;
  o.ema = "off";
  o.clip = "none";
  o.eval_prompts = o.prompts;
  o.eval_samples = 2;
  const RlResult r = run_rl(o, s.env, s.rewards);
  ASSERT_EQ(r.iterations_done, 6);
  EXPECT_GT(r.eval_end, r.eval_start + 0.01) << "start " << r.eval_start << " end " << r.eval_end;
  fs::remove_all(d);
  fs::remove(d.string() + "_prompts.txt");
}

TEST(RlTrainer, OptionsAndConfigErrorsNameTheField) {
  auto expect = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  RlOptions o = two_prompt_options(fresh("opt"));
  o.validate();
  RlOptions x = o;
  x.group = 1;
  expect([&] { x.validate(); }, "--group");
  x = o;
  x.sde_steps = 9;
  expect([&] { x.validate(); }, "--sde-steps");
  x = o;
  x.window = "random";
  expect([&] { x.validate(); }, "--window");
  x = o;
  x.rewards = {"builtin:nope"};
  expect([&] { x.validate(); }, "unknown built-in");
  x = o;
  x.rewards.clear();
  expect([&] { x.validate(); }, "no reward");
  x = o;
  expect([&] { x.apply_json("{\"grup\": 4}", "cfg.json"); }, "unknown setting 'grup'");
  expect([&] { x.apply_json("{\"group\": \"four\"}", "cfg.json"); }, "'group' must be an integer");
  x.apply_json("{\"group\": 8, \"kl-beta\": 0.5, \"reward\": [\"builtin:adherence\", \"builtin:temporal:0.5\"]}",
               "cfg.json");
  EXPECT_EQ(x.group, 8);
  EXPECT_EQ(x.kl_beta, 0.5);
  EXPECT_EQ(x.rewards.size(), 2u);
  // built-in adherence needs prompts of the synthetic grammar (or records): refused up front
  {
    RlOptions z = o;
    z.out = fresh("optz").string();
    z.prompts = z.out + "_prompts.txt";
    std::ofstream(z.prompts) << "a cat sitting on a mat\n";
    z.rewards = {"builtin:adherence"};
    expect([&] { rl_preflight(z); }, "a cat sitting on a mat");
    z.rewards = {"builtin:temporal"};
    rl_preflight(z);  // temporal consistency needs no attributes
    fs::remove(z.prompts);
    fs::remove_all(z.out);
  }
  RlOptions y;
  y.apply_json(x.to_json(), "round trip");
  EXPECT_EQ(y.to_json(), x.to_json());
  fs::remove(o.prompts);
}

// Ctrl-C between iterations saves the completed iterations; Ctrl-C inside an update (raised
// while the rewards of iteration 2 are computed, caught at the update's first safe point) puts
// the LoRA, optimizer, EMA and clipper back to the end of iteration 1 and saves that. Either
// way, resuming gives the uninterrupted run.
TEST(RlTrainer, CtrlCSavesTheLastCompleteIterationAndResumeMatches) {
  const fs::path ref = fresh("ctrlc_ref"), a = fresh("ctrlc_a"), b = fresh("ctrlc_b");
  RlResult full;
  {
    Stack s;
    RlOptions o = two_prompt_options(ref);
    o.iterations = 3;
    full = run_rl(o, s.env, s.rewards);
  }
  ASSERT_EQ(full.log.size(), 3u);
  const fs::path ck3 = fs::path(full.last_checkpoint);
  // (1) between iterations: the hook raises the flag after iteration 2
  {
    Stack s;
    RlOptions o = two_prompt_options(a);
    o.iterations = 3;
    RlHooks h;
    h.on_iteration = [](const RlIterationLog& l) {
      if (l.iteration == 2) set_interrupted(true);
    };
    const RlResult r = run_rl(o, s.env, s.rewards, h);
    set_interrupted(false);
    EXPECT_TRUE(r.interrupted);
    EXPECT_EQ(r.iterations_done, 2);
    EXPECT_EQ(fs::path(r.last_checkpoint).filename().string(), "checkpoint-00000002");
  }
  // (2) inside the update of iteration 2
  class StopDuringReward : public Reward {
   public:
    std::string name() const override { return "red"; }
    double score(const RewardSample& s) override {
      if (++calls == 6 + 6) set_interrupted(true);  // the last sample of iteration 2
      const auto v = s.video.select(0, 0).contiguous().to_float_vector();
      double m = 0;
      for (float x : v) m += x;
      return m / double(v.size());
    }
    int calls = 0;
  };
  {
    Stack s;
    s.rewards.clear();
    s.rewards.push_back(std::make_unique<StopDuringReward>());
    RlOptions o = two_prompt_options(b);
    o.iterations = 3;
    const RlResult r = run_rl(o, s.env, s.rewards);
    set_interrupted(false);
    EXPECT_TRUE(r.interrupted);
    EXPECT_EQ(r.iterations_done, 1);
    EXPECT_EQ(fs::path(r.last_checkpoint).filename().string(), "checkpoint-00000001");
  }
  for (const fs::path& d : {a, b}) {
    Stack s;
    RlOptions o = two_prompt_options(d);
    o.iterations = 3;
    o.resume = d.string();
    const RlResult r = run_rl(o, s.env, s.rewards);
    ASSERT_EQ(r.iterations_done, 3);
    expect_same_log(r.log.back(), full.log.back());
    for (const char* f : {"lora.safetensors", "lora_ema.safetensors", "optimizer.safetensors"})
      EXPECT_EQ(file_bytes(fs::path(r.last_checkpoint) / f), file_bytes(ck3 / f)) << d << " " << f;
  }
  for (const auto& d : {ref, a, b}) {
    fs::remove_all(d);
    fs::remove(d.string() + "_prompts.txt");
  }
}
