// `osp rl` as a user runs it (the osp executable next to this test) on a make-demo-model folder:
// two iterations with an external scorer write the LoRA checkpoint and the
// log; the same seed gives the same LoRA bytes; --resume from iteration 1 equals the
// uninterrupted run; a scorer that crashes mid-run ends it with a clear error and leaves the
// last checkpoint intact; bad flags are named.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "osp/model/lora.h"

namespace fs = std::filesystem;
using namespace osp;

namespace {

fs::path osp_exe() { return fs::canonical("/proc/self/exe").parent_path() / "osp"; }

struct CliRun {
  int code = -1;
  std::string out;
  double seconds = 0;
};

CliRun run(const std::vector<std::string>& args) {
  const fs::path out_file = fs::temp_directory_path() / ("osp_rl_cli_out_" + std::to_string(::getpid()));
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    FILE* f = std::freopen(out_file.c_str(), "w", stderr);
    (void)f;
    ::dup2(2, 1);
    ::setenv("OMP_NUM_THREADS", "2", 0);
    std::vector<char*> av;
    std::string exe = osp_exe().string();
    av.push_back(exe.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) av.push_back(a.data());
    av.push_back(nullptr);
    ::alarm(180);
    ::execv(exe.c_str(), av.data());
    std::_Exit(127);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  CliRun r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(out_file);
  r.out.assign(std::istreambuf_iterator<char>(f), {});
  fs::remove(out_file);
  return r;
}

std::string bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

int lines(const fs::path& p) {
  int n = 0;
  std::ifstream f(p);
  for (std::string l; std::getline(f, l);) ++n;
  return n;
}

}  // namespace

TEST(RlCli, DemoModelRunDeterministicResumeAndScorerCrash) {
  if (!fs::exists(osp_exe())) GTEST_SKIP() << "build the osp executable first (ninja osp)";
  const fs::path w = fs::temp_directory_path() / ("osp_rl_cli_" + std::to_string(::getpid()));
  fs::remove_all(w);
  fs::create_directories(w);
  ASSERT_EQ(run({"make-demo-model", (w / "model").string()}).code, 0);
  std::ofstream(w / "prompts.txt") << "a red circle moves up on a black background\n"
                                   << "a blue square grows on a white background\n";
  // scorer: the sample id as its score (every sample of a group differs)
  const fs::path scorer = w / "scorer.sh";
  std::ofstream(scorer) << "#!/bin/sh\nwhile IFS= read -r line; do\n"
                           "  printf '%s\\n' \"$line\" | sed 's/.*\"id\":\\([0-9]*\\).*/{\"score\": \\1}/'\n"
                           "done\n";
  fs::permissions(scorer, fs::perms::owner_all);
  auto args = [&](const std::string& out, int iterations) {
    return std::vector<std::string>{
        "rl", "-m", (w / "model").string(), "--prompts", (w / "prompts.txt").string(), "--size", "32x32",
        "--frames", "1", "--group", "2", "--steps", "3", "--sde-steps", "2", "--lora-rank", "4",
        "--lora-alpha", "8", "--lr", "1e-3", "--kl-beta", "0.004", "--reward-cmd", scorer.string(),
        "--iterations", std::to_string(iterations), "--seed", "5", "-o", (w / out).string()};
  };
  const CliRun a = run(args("a", 2));
  ASSERT_EQ(a.code, 0) << a.out;
  std::printf("two RL iterations of the demo model on the CPU: %.1f s\n", a.seconds);  // (speed: benchmarks, not tests)
  const fs::path ck = w / "a" / "checkpoint-00000002";
  for (const char* f : {"lora.safetensors", "lora_ema.safetensors", "optimizer.safetensors", "rl_state.json",
                        "CHECKPOINT_COMPLETE"})
    EXPECT_TRUE(fs::exists(ck / f)) << f << "\n" << a.out;
  EXPECT_EQ(lines(w / "a" / "rl_log.jsonl"), 2);
  EXPECT_NE(a.out.find("rl 2/2"), std::string::npos) << a.out;
  const model::Lora l = model::load_lora((ck / "lora.safetensors").string());
  EXPECT_EQ(l.rank(), 4);
  EXPECT_EQ(l.alpha(), 8);
  EXPECT_EQ(l.adapters.size(), size_t(8 * 8));  // 8 blocks x self/cross q,k,v,o
  bool moved = false;
  for (const auto& [m, ad] : l.adapters)
    for (float b : ad.B.to_float_vector()) moved |= b != 0.f;
  EXPECT_TRUE(moved) << "the update must change lora_B";

  const CliRun b = run(args("b", 2));
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_EQ(bytes(w / "b" / "checkpoint-00000002" / "lora.safetensors"), bytes(ck / "lora.safetensors"));

  ASSERT_EQ(run(args("c", 1)).code, 0);
  std::vector<std::string> resume = args("c", 2);
  resume.push_back("--resume");
  resume.push_back((w / "c").string());
  const CliRun c = run(resume);
  ASSERT_EQ(c.code, 0) << c.out;
  for (const char* f : {"lora.safetensors", "lora_ema.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(bytes(w / "c" / "checkpoint-00000002" / f), bytes(ck / f)) << f;

  // the scorer dies on the third sample (iteration 2): error, checkpoint 1 intact
  const fs::path crash = w / "crash.sh";
  std::ofstream(crash) << "#!/bin/sh\nn=0\nwhile IFS= read -r line; do\n  n=$((n+1))\n"
                          "  if [ $n -gt 2 ]; then exit 5; fi\n  echo $n\ndone\n";
  fs::permissions(crash, fs::perms::owner_all);
  std::vector<std::string> cr = args("d", 3);
  *(std::find(cr.begin(), cr.end(), std::string("--reward-cmd")) + 1) = crash.string();
  cr.push_back("--save-every");
  cr.push_back("1");
  const CliRun d = run(cr);
  EXPECT_EQ(d.code, 1) << d.out;
  EXPECT_NE(d.out.find("crash.sh"), std::string::npos) << d.out;
  EXPECT_NE(d.out.find("status 5"), std::string::npos) << d.out;
  EXPECT_EQ(bytes(w / "d" / "latest"), "checkpoint-00000001\n");
  EXPECT_TRUE(fs::exists(w / "d" / "checkpoint-00000001" / "CHECKPOINT_COMPLETE"));

  // bad flags are named before any model is loaded
  std::vector<std::string> bad = args("e", 2);
  bad.push_back("--window");
  bad.push_back("diagonal");
  const CliRun e = run(bad);
  EXPECT_EQ(e.code, 1);
  EXPECT_NE(e.out.find("--window"), std::string::npos) << e.out;
  fs::remove_all(w);
}
