// `osp train` as a user runs it (the osp executable next to this test): a from-scratch run,
// Ctrl-C (a real SIGINT) saving a checkpoint and exiting 130, --resume repeating the
// uninterrupted run's losses exactly, --config with unknown / out-of-range fields, fine-tuning
// a model folder (make-demo-model) into a checkpoint `osp generate` runs as a model folder; under
// `mpiexec -np 2`, a rank that stops answering makes the other end the job with the timeout
// message within --collective-timeout, and the last checkpoint resumes; --dry-run prints the
// per-GPU memory plan of the 14B model at 1280x720x81 on 4 SSP ranks with sharded state.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "osp/model/lora.h"
#include "osp/core/device.h"
#include "osp/core/philox.h"
#include "osp/train/checkpoint.h"
#include "osp/train/dit_train_model.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/memory_plan.h"

namespace fs = std::filesystem;
using namespace osp;

namespace {

fs::path osp_exe() { return fs::canonical("/proc/self/exe").parent_path() / "osp"; }

struct CliRun {
  int code = -1;
  std::string out;
};

// Runs osp with the arguments (no shell); `launcher` (e.g. mpiexec -np 2, or env VAR=value) comes
// before the osp executable. `hold`: a Ctrl-C stage (core/interrupt.h's OSP_TEST_HOLD_AT) where
// the child waits until this sends it SIGINT — a Ctrl-C inside that stage, without timing guesses.
CliRun run(const std::vector<std::string>& args, const std::vector<std::string>& launcher = {},
           const std::string& hold = "") {
  const fs::path out_file = fs::temp_directory_path() / ("osp_train_cli_out_" + std::to_string(::getpid()));
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (!hold.empty()) ::setenv("OSP_TEST_HOLD_AT", hold.c_str(), 1);
    FILE* f = std::freopen(out_file.c_str(), "w", stderr);
    (void)f;
    ::dup2(2, 1);
    std::vector<char*> av;
    std::vector<std::string> copy = launcher;
    copy.push_back(osp_exe().string());
    copy.insert(copy.end(), args.begin(), args.end());
    for (auto& a : copy) av.push_back(a.data());
    av.push_back(nullptr);
    ::alarm(120);
    ::execv(av[0], av.data());
    std::_Exit(127);
  }
  if (!hold.empty()) {  // SIGINT once the child says it holds (it gives up waiting after 60 s)
    const auto t0 = std::chrono::steady_clock::now();
    for (bool held = false; !held && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(90);) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::ifstream f(out_file);
      const std::string text((std::istreambuf_iterator<char>(f)), {});
      held = text.find("osp: test hold: " + hold) != std::string::npos;
      if (held) ::kill(pid, SIGINT);
    }
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  CliRun r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(out_file);
  r.out.assign(std::istreambuf_iterator<char>(f), {});
  fs::remove(out_file);
  return r;
}

fs::path fresh(const std::string& n) {
  fs::path d = fs::temp_directory_path() / ("osp_train_cli_" + n + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

fs::path make_cache(const std::string& name, int64_t text_dim) {
  const fs::path dir = fresh(name);
  train::LatentCacheWriter w(dir.string(), 2);
  for (int i = 0; i < 4; ++i) w.add(randn({16, 1, 4, 4}, 10 + i), randn({2, text_dim}, 20 + i), "c" + std::to_string(i));
  w.set_empty_context(Tensor::zeros({1, text_dim}, DType::F32));
  w.finish();
  return dir;
}

std::vector<std::string> losses(const fs::path& log) {
  std::vector<std::string> v;
  std::ifstream f(log);
  for (std::string l; std::getline(f, l);) {
    const auto a = l.find("\"loss\":");
    v.push_back(l.substr(a, l.find(',', a) - a));
  }
  return v;
}

}  // namespace

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(osp_exe())) GTEST_SKIP() << "SKIP: the osp executable is not built next to the test";
  }
};

TEST_F(TrainCli, FromScratchInterruptResumeEqualsUninterrupted) {
  const fs::path data = make_cache("data", 8), work = fresh("work");
  fs::create_directories(work);
  std::ofstream(work / "tiny.json") << R"({"dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 2,
    "text_dim": 8, "text_len": 4, "freq_dim": 32, "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2]})";
  std::ofstream(work / "run.json") << R"({"from-scratch": true, "config_model": ")" + (work / "tiny.json").string() +
                                          R"(", "data": ")" + data.string() +
                                          R"(", "steps": 40, "batch": 2, "lr": 0.003, "eps": 1e-8, "seed": 3,
    "caption_dropout": 0.25, "ema": 0.99, "save_every": 5})";
  const std::string cfg = (work / "run.json").string();
  // Uninterrupted.
  CliRun a = run({"train", "--config", cfg, "--out", (work / "a").string()});
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_TRUE(fs::exists(work / "a" / "checkpoint-00000040" / "CHECKPOINT_COMPLETE"));
  // Ctrl-C after step 3 (SIGINT from the test hook: a known step, no race with a fast run that
  // could finish before a signal sent by polling its log): a checkpoint is saved, exit 130.
  CliRun b = run({"train", "--config", cfg, "--out", (work / "b").string()}, {"/usr/bin/env", "OSP_TEST_SIGINT_AT_STEP=3"});
  ASSERT_EQ(b.code, 130) << b.out;
  EXPECT_NE(b.out.find("--resume"), std::string::npos) << b.out;
  // The acknowledgement promises what osp train does on Ctrl-C (not "nothing will be written").
  EXPECT_NE(b.out.find("will be saved as a checkpoint"), std::string::npos) << b.out;
  EXPECT_EQ(b.out.find("nothing will be written"), std::string::npos) << b.out;
  std::ifstream latest(work / "b" / "latest");
  std::string name;
  latest >> name;
  ASSERT_FALSE(name.empty());
  EXPECT_EQ(name, "checkpoint-00000003");
  // Resume: the log ends up with the same 40 losses.
  CliRun c = run({"train", "--config", cfg, "--out", (work / "b").string(), "--resume", (work / "b").string()});
  ASSERT_EQ(c.code, 0) << c.out;
  const auto la = losses(work / "a" / "train_log.jsonl"), lb = losses(work / "b" / "train_log.jsonl");
  ASSERT_EQ(la.size(), 40u);
  EXPECT_EQ(la, lb);
  // Ctrl-C in the middle of a step (inside the DiT forward of step 1, where a real Ctrl-C nearly
  // always lands): the step completes, its checkpoint is saved, exit 130 — not an internal error
  // with nothing saved — and the resumed run is the uninterrupted one.
  CliRun m = run({"train", "--config", cfg, "--out", (work / "m").string()}, {}, "DiT forward");
  ASSERT_EQ(m.code, 130) << m.out;
  EXPECT_NE(m.out.find("interrupted (Ctrl-C) after step 1; saved"), std::string::npos) << m.out;
  std::ifstream latest_m(work / "m" / "latest");
  std::string name_m;
  latest_m >> name_m;
  EXPECT_EQ(name_m, "checkpoint-00000001");
  CliRun mc = run({"train", "--config", cfg, "--out", (work / "m").string(), "--resume", (work / "m").string()});
  ASSERT_EQ(mc.code, 0) << mc.out;
  EXPECT_EQ(losses(work / "m" / "train_log.jsonl"), la);
  // A flag overrides the config file; a second run into the same folder without --resume is refused.
  CliRun d = run({"train", "--config", cfg, "--out", (work / "a").string(), "--steps", "41"});
  EXPECT_EQ(d.code, 1);
  EXPECT_NE(d.out.find("already holds a training run"), std::string::npos) << d.out;
  fs::remove_all(data);
  fs::remove_all(work);
}

TEST_F(TrainCli, BadConfigsAndInputsExitOneWithTheReason) {
  const fs::path work = fresh("bad");
  fs::create_directories(work);
  std::ofstream(work / "unknown.json") << R"({"stepz": 3})";
  CliRun r = run({"train", "--config", (work / "unknown.json").string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("unknown setting 'stepz'"), std::string::npos) << r.out;
  std::ofstream(work / "range.json") << R"({"from_scratch": true, "config_model": "x.json", "data": "d", "out": "o", "batch": 0})";
  r = run({"train", "--config", (work / "range.json").string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("batch must be in [1, 4096]"), std::string::npos) << r.out;
  // A model folder and data that do not exist, plus `extra`: exit 1 with `reason` in the output.
  auto expect_refused = [&](const std::vector<std::string>& extra, const std::string& reason) {
    std::vector<std::string> args = {"train", "--model", (work / "no-model").string(), "--data",
                                     (work / "no-data").string(), "--out", (work / "o").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliRun b = run(args);
    EXPECT_EQ(b.code, 1) << reason;
    EXPECT_NE(b.out.find(reason), std::string::npos) << b.out;
  };
  expect_refused({"--clip", "sometimes"}, "--clip must be");
  expect_refused({"--quant", "hif8", "--ffn-chunks", "2"}, "--ffn-chunks needs --quant none");
  expect_refused({"--ffn-chunks", "-1"}, "--ffn-chunks must be >= 0");
  expect_refused({}, "no-data");
  fs::remove_all(work);
}

TEST_F(TrainCli, FineTuneADemoModelIntoAModelFolder) {
  const fs::path work = fresh("demo");
  fs::create_directories(work);
  ASSERT_EQ(run({"make-demo-model", (work / "model").string()}).code, 0);
  const fs::path data = make_cache("demo_data", 64);
  // Ctrl-C while the model folder loads: exit 130 saying so, no checkpoint (not "internal error").
  const std::vector<std::string> tune = {"train", "--model", (work / "model").string(), "--data", data.string(),
                                         "--out", (work / "out").string(), "--steps", "2", "--lr", "1e-4",
                                         "--attention", "hybrid", "--caption-dropout", "0"};
  CliRun r = run(tune, {}, "model loading");
  EXPECT_EQ(r.code, 130) << r.out;
  EXPECT_NE(r.out.find("osp: interrupted (Ctrl-C) during model loading; the last complete checkpoint (if any) is "
                       "intact"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(work / "out" / "latest"));
  r = run(tune);
  ASSERT_EQ(r.code, 0) << r.out;
  const fs::path ck = work / "out" / "checkpoint-00000002";
  for (const char* f : {"config.json", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.safetensors",
                        "models_t5_umt5-xxl-enc-bf16.safetensors", "google/umt5-xxl/spiece.model"})
    EXPECT_TRUE(fs::exists(ck / f)) << f;
  const CliRun ins = run({"inspect", ck.string()});
  EXPECT_EQ(ins.code, 0) << ins.out;
  EXPECT_NE(ins.out.find("token"), std::string::npos) << ins.out;  // the hybrid layout
  const CliRun gen = run({"generate", "--model", ck.string(), "--prompt", "a fox", "--size", "64x64", "--frames", "1",
                          "--steps", "2", "--out", (work / "frames/").string()});
  EXPECT_EQ(gen.code, 0) << gen.out;
  EXPECT_TRUE(fs::exists(work / "frames" / "frame_0000.png"));
  // LoRA fine-tuning (--lora-rank): the checkpoint is an adapter file for the base model, which
  // `osp generate --lora` applies; the CLI says how
  r = run({"train", "--model", (work / "model").string(), "--data", data.string(), "--out", (work / "lora").string(),
           "--steps", "2", "--lr", "1e-3", "--caption-dropout", "0", "--lora-rank", "4", "--lora-alpha", "4",
           "--lora-targets", "self_attn.q,self_attn.v"});
  ASSERT_EQ(r.code, 0) << r.out;
  const fs::path lf = work / "lora" / "checkpoint-00000002" / "lora.safetensors";
  EXPECT_TRUE(fs::exists(lf));
  EXPECT_FALSE(fs::exists(work / "lora" / "checkpoint-00000002" / "config.json"));
  EXPECT_NE(r.out.find("--lora " + (work / "lora" / "checkpoint-00000002").string() + "/lora.safetensors"),
            std::string::npos) << r.out;
  EXPECT_EQ(model::load_lora(lf.string()).targets(), (std::vector<std::string>{"self_attn.q", "self_attn.v"}));
  const CliRun lg = run({"generate", "--model", (work / "model").string(), "--lora", lf.string(), "--prompt", "a fox",
                         "--size", "64x64", "--frames", "1", "--steps", "2", "--out", (work / "lora_frames/").string()});
  EXPECT_EQ(lg.code, 0) << lg.out;
  EXPECT_TRUE(fs::exists(work / "lora_frames" / "frame_0000.png"));
  fs::remove_all(data);
  fs::remove_all(work);
}

#ifdef OSP_MPIEXEC
// A rank that stops answering (the test hook sleeps in rank 1 after step 3) must not hang rank 0:
// its next collective (the gather of step 3's sharded optimizer state for the checkpoint) times
// out after --collective-timeout, the error names the operation (and on the CPU the last complete
// checkpoint), and every rank ends (MPI_Abort). That checkpoint is complete and resumes on one
// rank. `want` is a part of the message; `timeout` the --collective-timeout in seconds.
void stalled_rank_case(const std::string& device, const std::string& timeout, const std::string& want) {
  const fs::path data = make_cache("stall_data", 8), work = fresh("stall");
  fs::create_directories(work);
  std::ofstream(work / "tiny.json") << R"({"dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 2,
    "text_dim": 8, "text_len": 4, "freq_dim": 32, "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2]})";
  const std::vector<std::string> args = {"train", "--from-scratch", "--config-model", (work / "tiny.json").string(),
                                         "--data", data.string(), "--out", (work / "out").string(), "--batch", "2",
                                         "--lr", "0.003", "--seed", "3", "--save-every", "1", "--device", device};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = args;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const CliRun r = run(with({"--steps", "6", "--collective-timeout", timeout}),
                       {OSP_MPIEXEC, "--oversubscribe", "--allow-run-as-root", "-np", "2", "-x",
                        "OSP_TEST_STALL_RANK_AT_STEP=1:3", "-x", "OMP_NUM_THREADS=1"});
  EXPECT_GT(r.code, 0) << r.out;  // ended (not killed by the test's alarm, which gives -1)
  EXPECT_NE(r.out.find("rank 1 stops answering after step 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(want), std::string::npos) << r.out;
  std::ifstream latest(work / "out" / "latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "checkpoint-00000002");
  // The checkpoint is complete: one rank continues from it.
  const CliRun c = run(with({"--steps", "4", "--resume", (work / "out").string()}));
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_TRUE(fs::exists(work / "out" / "checkpoint-00000004" / "CHECKPOINT_COMPLETE"));
  fs::remove_all(data);
  fs::remove_all(work);
}
#endif

TEST_F(TrainCli, StalledRankEndsEveryRankWithTheTimeoutMessage) {
#ifndef OSP_MPIEXEC
  GTEST_SKIP() << "SKIP: this build has no MPI";
#else
  const std::string ck2 = (fresh("stall") / "out" / "checkpoint-00000002").string();
  // 10 s: long enough that a rank slowed by a loaded machine (the other tests of a parallel ctest
  // run) is not taken for the stalled one before step 3. (With 4 s this suite failed once in a
  // parallel run and passed alone; the failing case was not captured — this is the one of its
  // cases whose outcome depends on timing.)
  stalled_rank_case("cpu", "10", "training stopped after step 3: all_gather on the mpi communicator (rank 0 of 2) did not "
                           "complete within 10 s: another rank died, hangs, or stopped calling collectives "
                           "(--collective-timeout); the last complete checkpoint is " + ck2);
#endif
}

// The same on two GPUs (NCCL): the watchdog thread of rank 0's communicator ends the job. Needs
// 2 GPUs (skipped otherwise): run on a 2-GPU machine.
TEST_F(TrainCli, StalledGpuRankEndsEveryRankThroughTheNcclWatchdog) {
#ifndef OSP_MPIEXEC
  GTEST_SKIP() << "SKIP: this build has no MPI";
#else
  if (!cuda_available() || cuda_device_count() < 2) GTEST_SKIP() << "SKIP: needs 2 GPUs";
  // NCCL sets up its connections lazily in the first collectives (seconds): a longer timeout
  stalled_rank_case("cuda", "20", "on the nccl communicator (rank 0 of 2) did not complete within 20 s: another rank died, "
                            "hangs, or stopped calling collectives (--collective-timeout); ending every rank");
#endif
}

// --config in YAML, laid out as OSP-Next's training configs (train/reference_config.h): the
// dry run shows the run it describes (SSP 4 from skiparse_sp_size, FSDP 4 as sharded weights,
// the dual-end layout with 8 full blocks); a flag still wins over the file; a YAML error names
// the file and line.
TEST_F(TrainCli, YamlConfigInOspNextLayout) {
  const fs::path work = fresh("yaml");
  fs::create_directories(work);
  std::ofstream(work / "wan14b.json") << train::dit_config_json(model::DiTConfig::wan_14b());
  std::ofstream(work / "run.yaml") << "# OSP-Next layout\nseed: 1024\nfsdp_size: 4\nsp_size: 4\n"
                                      "skiparse_sp_size: 4\nuse_sequence_parallel: False\n"
                                      "use_skiparse_sequence_parallel: True\nwandb_config:\n  project_name: x\n"
                                      "model_config:\n  skiparse_model_type: \"dual_end\"\n  sparse_ratio: 2\n"
                                      "  num_full_blocks: 8\n";
  const CliRun r = run({"train", "--dry-run", "--config", (work / "run.yaml").string(), "--config-model",
                        (work / "wan14b.json").string(), "--video", "1280x720x81", "--ranks", "4", "--device", "cuda"});
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("full blocks 8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 ranks = 4 SP (ssp) x 1 DP"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("gradients and weights sharded"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("has no use for, ignored: sp_size (the reference's Ulysses size"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(", wandb_config"), std::string::npos) << r.out;
  const CliRun f = run({"train", "--dry-run", "--config", (work / "run.yaml").string(), "--config-model",
                        (work / "wan14b.json").string(), "--video", "1280x720x81", "--ranks", "4", "--device", "cuda",
                        "--full-blocks", "12"});
  ASSERT_EQ(f.code, 0) << f.out;
  EXPECT_NE(f.out.find("full blocks 12"), std::string::npos) << f.out;
  std::ofstream(work / "bad.yaml") << "seed: 1\nmodel_config:\n  sparse_ratio: 2\n    num_full_blocks: 8\n";
  const CliRun b = run({"train", "--dry-run", "--config", (work / "bad.yaml").string(), "--config-model",
                        (work / "wan14b.json").string(), "--video", "1280x720x81"});
  EXPECT_EQ(b.code, 1);
  EXPECT_NE(b.out.find("bad.yaml, line 4: unexpected indentation"), std::string::npos) << b.out;
  fs::remove_all(work);
}

// --dry-run loads nothing and prints train/memory_plan's table for the run the flags describe:
// here the Wan2.1-14B config trained hybrid at 1280x720x81 on 4 SSP ranks, sharded optimizer
// state (and then gradients too), bf16 activations, against an H200's 139 GiB.
TEST_F(TrainCli, DryRunPrintsThePerGpuMemoryPlan) {
  const fs::path work = fresh("dry");
  fs::create_directories(work);
  const model::DiTConfig cfg = model::DiTConfig::wan_14b();
  std::ofstream(work / "wan14b.json") << train::dit_config_json(cfg);
  // osp train --dry-run of that run (hybrid, 1280x720x81, 4 SSP ranks, CUDA) with these flags
  auto dry = [&](const std::vector<std::string>& more) {
    std::vector<std::string> a{"train", "--dry-run", "--config-model", (work / "wan14b.json").string(),
                               "--attention", "hybrid", "--video", "1280x720x81", "--ranks", "4", "--sp", "ssp",
                               "--sp-size", "4", "--device", "cuda"};
    a.insert(a.end(), more.begin(), more.end());
    return run(a);
  };
  const CliRun r = dry({"--gpu-memory", "139"});
  ASSERT_EQ(r.code, 0) << r.out;
  train::MemoryPlanInput in;
  in.cfg = train::config_for_attention(cfg, "hybrid");
  train::latent_from_video(81, 720, 1280, in);
  in.kinds = in.cfg.block_kinds();
  in.sp = "ssp";
  in.sp_size = 4;
  in.sharded_state = true;
  in.capacity_bytes = 139.0 * double(1ull << 30);
  const train::MemoryPlan p = train::plan_train_memory(in);
  EXPECT_NE(r.out.find(p.table()), std::string::npos) << r.out << "\nwant:\n" << p.table();
  EXPECT_NE(r.out.find("4 ranks = 4 SP (ssp) x 1 DP, 1 sample(s) per rank per micro-step, optimizer state sharded"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("optimizer state"), std::string::npos);
  EXPECT_NE(r.out.find("over 4 ranks (ShardedAdamW)"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(work / "out"));
  // with --shard-gradients: the gradients of one block instead of all
  const CliRun z = dry({"--gpu-memory", "139", "--shard-gradients"});
  ASSERT_EQ(z.code, 0) << z.out;
  in.sharded_gradients = true;
  const train::MemoryPlanInput zin = in;
  EXPECT_NE(z.out.find(train::plan_train_memory(in).table()), std::string::npos) << z.out;
  EXPECT_NE(z.out.find("optimizer state and gradients sharded"), std::string::npos) << z.out;
  // with --shard-weights (implies --shard-gradients): one block's compute copy + the gather buffer
  const CliRun w = dry({"--gpu-memory", "139", "--shard-weights"});
  ASSERT_EQ(w.code, 0) << w.out;
  in.sharded_weights = true;
  const train::MemoryPlan pw = train::plan_train_memory(in);
  EXPECT_NE(w.out.find(pw.table()), std::string::npos) << w.out;
  EXPECT_NE(w.out.find("optimizer state, gradients and weights sharded"), std::string::npos) << w.out;
  EXPECT_LT(pw.total, train::plan_train_memory(zin).total - 20.0 * double(1ull << 30));  // > 20 GiB saved
  in.sharded_weights = false;
  // A memory flag on top of --shard-gradients: the printed plan is the same plan with `change`
  // made to its input, and the output says each of `phrases`.
  auto expect_flag_plan = [&](const std::vector<std::string>& flags,
                              const std::function<void(train::MemoryPlanInput&)>& change,
                              const std::vector<std::string>& phrases) {
    std::vector<std::string> args{"--gpu-memory", "139", "--shard-gradients"};
    args.insert(args.end(), flags.begin(), flags.end());
    const CliRun r = dry(args);
    ASSERT_EQ(r.code, 0) << r.out;
    train::MemoryPlanInput with = in;
    change(with);
    EXPECT_NE(r.out.find(train::plan_train_memory(with).table()), std::string::npos) << r.out;
    for (const std::string& phrase : phrases) EXPECT_NE(r.out.find(phrase), std::string::npos) << r.out;
  };
  // --keep-attention: the plan's "kept attention" line (self-attention outputs of every block)
  expect_flag_plan({"--keep-attention"}, [](train::MemoryPlanInput& t) { t.keep_attention = true; },
                   {"activation checkpointing (attention kept)", "kept attention"});
  // --ffn-chunks 4: the plan without the FFN's [rows, ffn] tape activations
  expect_flag_plan({"--ffn-chunks", "4"}, [](train::MemoryPlanInput& t) { t.ffn_chunks = 4; }, {});
  // --offload-checkpoints: two staging buffers on the device, every block's input in host memory
  expect_flag_plan({"--offload-checkpoints"}, [](train::MemoryPlanInput& t) { t.offload_block_inputs = true; },
                   {"activation checkpointing (inputs offloaded to the host)",
                    "in pinned host memory (--offload-checkpoints)"});
  // a run that does not fit says what would: each change by the same plan, then all of them
  const CliRun nf = dry({"--gpu-memory", "100"});
  ASSERT_EQ(nf.code, 0) << nf.out;
  EXPECT_NE(nf.out.find("does NOT fit"), std::string::npos) << nf.out;
  {
    train::MemoryPlanInput w = in;
    w.sharded_gradients = w.sharded_weights = true;
    w.capacity_bytes = 100.0 * double(1ull << 30);
    char want[128];
    std::snprintf(want, sizeof want, "  %-28s %8.2f GiB  fits", "--shard-weights",
                  train::plan_train_memory(w).total / double(1ull << 30));
    EXPECT_NE(nf.out.find(want), std::string::npos) << nf.out << "\nwant: " << want;
    EXPECT_NE(nf.out.find("--shard-gradients"), std::string::npos) << nf.out;
    w = in;  // the run as given (no gradient sharding), with the FFN in 4 row chunks
    w.sharded_gradients = w.sharded_weights = false;
    w.capacity_bytes = 100.0 * double(1ull << 30);
    w.ffn_chunks = 4;
    std::snprintf(want, sizeof want, "  %-28s %8.2f GiB", "--ffn-chunks 4", train::plan_train_memory(w).total / double(1ull << 30));
    EXPECT_NE(nf.out.find(want), std::string::npos) << nf.out << "\nwant: " << want;
    w.ffn_chunks = 0;
    w.offload_block_inputs = true;
    std::snprintf(want, sizeof want, "  %-28s %8.2f GiB", "--offload-checkpoints",
                  train::plan_train_memory(w).total / double(1ull << 30));
    EXPECT_NE(nf.out.find(want), std::string::npos) << nf.out << "\nwant: " << want;
  }
  // --lora-rank: the frozen base + the adapters' state (unsharded even on 4 ranks: auto is off for LoRA)
  const CliRun lo = dry({"--lora-rank", "32"});
  ASSERT_EQ(lo.code, 0) << lo.out;
  EXPECT_NE(lo.out.find("compute copy of the frozen base + the LoRA adapters"), std::string::npos) << lo.out;
  EXPECT_NE(lo.out.find("optimizer state not sharded"), std::string::npos) << lo.out;
  // --transient-weights is the unsharded optimizer's: refused with the (here automatic) sharded one
  const CliRun tw = run({"train", "--dry-run", "--config-model", (work / "wan14b.json").string(), "--video",
                         "1280x720x81", "--ranks", "4", "--sp", "ssp", "--transient-weights"});
  EXPECT_EQ(tw.code, 1) << tw.out;
  EXPECT_NE(tw.out.find("with the sharded one use --shard-weights"), std::string::npos) << tw.out;
  // --dp instead of --sp-size: 8 ranks = 4 SP x 2 DP; sizes that do not multiply to the ranks fail
  const CliRun dp = run({"train", "--dry-run", "--config-model", (work / "wan14b.json").string(), "--video",
                         "1280x720x81", "--ranks", "8", "--sp", "ssp", "--dp", "2", "--batch", "2"});
  ASSERT_EQ(dp.code, 0) << dp.out;
  EXPECT_NE(dp.out.find("8 ranks = 4 SP (ssp) x 2 DP"), std::string::npos) << dp.out;
  const CliRun dp_bad = run({"train", "--dry-run", "--config-model", (work / "wan14b.json").string(), "--video",
                             "1280x720x81", "--ranks", "8", "--sp", "ssp", "--sp-size", "4", "--dp", "4"});
  EXPECT_EQ(dp_bad.code, 1);
  EXPECT_NE(dp_bad.out.find("--dp 4 x 4 sequence-parallel ranks (--sp ssp, --sp-size 4) is not the 8 ranks"),
            std::string::npos)
      << dp_bad.out;
  const CliRun bad = run({"train", "--dry-run", "--config-model", (work / "wan14b.json").string(), "--video",
                          "1280x720x80"});
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("--video must be WIDTHxHEIGHTxFRAMES"), std::string::npos) << bad.out;
  fs::remove_all(work);
}
