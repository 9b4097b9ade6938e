// `osp generate` / `convert` / `inspect` as a user meets them, run as child processes on the
// demo model: Ctrl-C (a real SIGINT from this test) in every stage exits 130 and writes
// nothing; a full disk (RLIMIT_FSIZE in the child) keeps the previous output and leaves no
// partial file; existing outputs are refused without --overwrite; paths that cannot work, flags
// that contradict each other, NaN/Inf weights and a non-finite latent are errors (exit 1); a
// FIFO is refused by inspect instead of blocking; -q is quiet.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "osp/io/checkpoint.h"
#include "osp/io/image_writer.h"
#include "osp/io/safetensors.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/demo_model.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {

struct Child {
  int code = -1;       // exit status, or -1 when killed by a signal
  std::string out;     // stdout + stderr
  bool held = false;   // the hold marker was seen (and SIGINT sent)
};

struct RunOptions {
  std::string hold;          // OSP_TEST_HOLD_AT: the stage to interrupt ("" = none)
  size_t file_limit = 0;     // RLIMIT_FSIZE for the child (0 = none)
};

// Runs osp with `args` (no shell), optionally interrupting it with SIGINT once it reports the
// test hold of `opt.hold`. A child that hangs is killed by alarm() after 60 s (the test fails).
Child run_osp(const std::vector<std::string>& args, const RunOptions& opt = {}) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    if (!opt.hold.empty()) ::setenv("OSP_TEST_HOLD_AT", opt.hold.c_str(), 1);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    if (opt.file_limit) {
      ::signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl {opt.file_limit, opt.file_limit};
      ::setrlimit(RLIMIT_FSIZE, &rl);
    }
    ::alarm(60);
    std::vector<char*> av;
    std::string exe = OSP_CLI_PATH;
    av.push_back(exe.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) av.push_back(a.data());
    av.push_back(nullptr);
    ::execv(exe.c_str(), av.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  Child c;
  const std::string marker = "osp: test hold: " + opt.hold + "\n";
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    c.out.append(buf, size_t(n));
    if (!opt.hold.empty() && !c.held && c.out.find(marker) != std::string::npos) {
      c.held = true;
      ::kill(pid, SIGINT);
    }
  }
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  c.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return c;
}

std::vector<std::string> names_in(const fs::path& d) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(d)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class CliOutputs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("osp_cli_outputs_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    pipeline::make_demo_model((root_ / "model").string());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  void SetUp() override {
    out_dir_ = root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(out_dir_);
  }
  // A tiny, fast generate run writing `out`.
  static std::vector<std::string> gen(const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"generate", "--model", (root_ / "model").string(), "--prompt", "a red fox",
                                  "--size", "32x32", "--frames", "5", "--steps", "2", "--seed", "7",
                                  "--out", out};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  static fs::path root_;
  fs::path out_dir_;
};
fs::path CliOutputs::root_;

}  // namespace

TEST_F(CliOutputs, CtrlCInEveryStageExits130AndWritesNothing) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  for (const std::string stage : {"model loading", "text encoding", "sampling", "VAE decode", "writing"}) {
    const fs::path out = out_dir_ / "video.mp4";
    const Child c = run_osp(gen(out.string()), {stage, 0});
    EXPECT_TRUE(c.held) << stage << "\n" << c.out;
    EXPECT_EQ(c.code, 130) << stage << "\n" << c.out;
    EXPECT_TRUE(has(c.out, "Ctrl-C: stopping at the next safe point")) << c.out;  // acknowledged at once
    EXPECT_TRUE(has(c.out, "interrupted (Ctrl-C) during " + stage)) << c.out;
    EXPECT_TRUE(names_in(out_dir_).empty()) << stage << ": something was written";
  }
  // PNG frames: interrupted while writing, nothing appears (not even an empty folder).
  const Child c = run_osp(gen((out_dir_ / "frames/").string()), {"writing", 0});
  EXPECT_EQ(c.code, 130) << c.out;
  EXPECT_TRUE(names_in(out_dir_).empty());
}

TEST_F(CliOutputs, CtrlCWhileReplacingKeepsThePreviousOutput) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path out = out_dir_ / "video.mp4";
  std::ofstream(out) << "previous video";
  const Child c = run_osp(gen(out.string(), {"--overwrite"}), {"writing", 0});
  EXPECT_EQ(c.code, 130) << c.out;
  EXPECT_EQ(read_all(out), "previous video");
  EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"video.mp4"});
}

TEST_F(CliOutputs, FullDiskKeepsPreviousOutputAndLeavesNoPartialFile) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path out = out_dir_ / "video.mp4";
  const std::string previous(3000, 'p');
  std::ofstream(out) << previous;
  // Files may not grow past 4 KiB: a 128x128 video of noise (and each PNG frame) is far larger.
  auto a = gen(out.string(), {"--overwrite"});
  a[6] = "128x128";
  Child c = run_osp(a, {"", 4096});
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "video.mp4")) << c.out;
  EXPECT_EQ(read_all(out), previous);
  EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"video.mp4"});

  a = gen((out_dir_ / "frames/").string());
  a[6] = "128x128";
  c = run_osp(a, {"", 4096});
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"video.mp4"});
}

TEST_F(CliOutputs, ExistingOutputsAreRefusedBeforeAnyWork) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  const fs::path out = out_dir_ / "video.mp4";
  std::ofstream(out) << "mine";
  Child c = run_osp(gen(out.string()));
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "already exists")) << c.out;
  EXPECT_TRUE(has(c.out, "--overwrite")) << c.out;
  EXPECT_FALSE(has(c.out, "text encoded")) << "refused only after work started:\n" << c.out;
  EXPECT_EQ(read_all(out), "mine");
  // With --overwrite the run replaces it with a real video.
  c = run_osp(gen(out.string(), {"--overwrite"}));
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_EQ(io::probe_video(out.string()).frames, 5);
  EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"video.mp4"});

  // A PNG folder that already holds frames is refused the same way; --overwrite replaces it.
  const fs::path frames = out_dir_ / "frames";
  c = run_osp(gen(frames.string() + "/"));
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_EQ(names_in(frames).size(), 5u);
  c = run_osp(gen(frames.string() + "/"));
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "already holds files")) << c.out;
  c = run_osp(gen(frames.string() + "/", {"--overwrite"}));
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_EQ(names_in(frames).size(), 5u);
  // ... but never a folder holding something else.
  std::ofstream(frames / "notes.txt") << "keep me";
  c = run_osp(gen(frames.string() + "/", {"--overwrite"}));
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "notes.txt")) << c.out;
  EXPECT_EQ(read_all(frames / "notes.txt"), "keep me");
}

TEST_F(CliOutputs, OutputPathsThatCannotWorkAreRejectedUpFront) {
  const std::string d = out_dir_.string();
  fs::create_directories(out_dir_ / "somedir");
  struct Case {
    std::string out, message;
  };
  const std::vector<Case> cases = {
      {d + "/clip.avi", "unsupported extension '.avi'"},
      {d + "/clip", "has no extension"},
      {"/proc/self/osp.mp4", "/proc"},
      {"/sys/osp.mp4", "/sys"},
      {"/dev/osp.mp4", "/dev"},
      {d + "/missing/clip.mp4", "does not exist"},
      {"/proc/osp_frames/", "/proc"},
  };
  for (const auto& k : cases) {
    const Child c = run_osp(gen(k.out));
    EXPECT_EQ(c.code, 1) << k.out << "\n" << c.out;
    EXPECT_TRUE(has(c.out, k.message)) << k.out << "\n" << c.out;
    EXPECT_FALSE(has(c.out, "text encoded")) << k.out;
  }
  EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"somedir"});
}

TEST_F(CliOutputs, ConvertNeverReplacesItsInput) {
  const std::string dit = (root_ / "model" / "diffusion_pytorch_model.safetensors").string();
  const std::string before = read_all(dit);
  for (const std::string in : {dit, (root_ / "model").string()}) {
    const Child c = run_osp({"convert", in, dit, "--overwrite"});
    EXPECT_EQ(c.code, 1) << c.out;
    EXPECT_TRUE(has(c.out, "is the input checkpoint")) << c.out;
  }
  EXPECT_TRUE(read_all(dit) == before);
  const std::string out = (out_dir_ / "dit_hif8.safetensors").string();
  Child c = run_osp({"convert", dit, out});
  ASSERT_EQ(c.code, 0) << c.out;
  c = run_osp({"convert", dit, out});
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "--overwrite")) << c.out;
  c = run_osp({"convert", dit, out, "--overwrite"});
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"dit_hif8.safetensors"});
  // Paths that cannot work are refused before the conversion.
  c = run_osp({"convert", dit, (out_dir_ / "dit.bin").string()});
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "must end in .safetensors")) << c.out;
  c = run_osp({"convert", dit, out_dir_.string()});
  EXPECT_EQ(c.code, 1) << c.out;
  // Ctrl-C while converting or writing: exit 130, the previous output untouched, no temporary.
  const std::string previous = read_all(out);
  for (const std::string stage : {"converting", "writing"}) {
    c = run_osp({"convert", dit, out, "--overwrite"}, {stage, 0});
    EXPECT_TRUE(c.held) << stage << "\n" << c.out;
    EXPECT_EQ(c.code, 130) << stage << "\n" << c.out;
    EXPECT_TRUE(read_all(out) == previous) << stage;
    EXPECT_EQ(names_in(out_dir_), std::vector<std::string>{"dit_hif8.safetensors"});
  }
}

TEST_F(CliOutputs, ContradictoryOrOutOfRangeSettingsAreErrors) {
  const std::string out = (out_dir_ / "v.mp4").string();
  struct Case {
    std::vector<std::string> extra;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--negative-prompt", ""}, "--no-negative"},
      {{"--negative-prompt", "blurry", "--no-negative"}, "contradict"},
      {{"--shift", "-3"}, "--shift"},
      {{"--shift", "1000"}, "--shift"},
      {{"--seed", "-5"}, "--seed"},
      {{"--no-such-flag"}, "--no-such-flag"},
      {{"--sp", "ulysses"}, "ulysses"},  // the demo model is hybrid (Skiparse blocks)
  };
  for (const auto& k : cases) {
    const Child c = run_osp(gen(out, k.extra));
    EXPECT_EQ(c.code, 1) << k.message << "\n" << c.out;
    EXPECT_TRUE(has(c.out, k.message)) << c.out;
    EXPECT_FALSE(has(c.out, "text encoded")) << "not rejected before the text encoder:\n" << c.out;
  }
  auto a = gen(out);
  a[4] = "caf\xC3(\xA9";  // the prompt: a broken two-byte sequence
  const Child c = run_osp(a);
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "the prompt is not valid UTF-8 (byte 0xC3 at offset 3)")) << c.out;
  EXPECT_TRUE(names_in(out_dir_).empty());
}

TEST_F(CliOutputs, IgnoredSettingsAndLongPromptsAreWarnings) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  std::string long_prompt;
  for (int i = 0; i < 700; ++i) long_prompt += "fox ";
  auto a = gen((out_dir_ / "frames/").string(),
                {"--guidance", "1", "--negative-prompt", "blurry", "--fps", "24", "--offload"});
  a[4] = long_prompt;
  const Child c = run_osp(a);
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_TRUE(has(c.out, "negative prompt is not used")) << c.out;
  EXPECT_TRUE(has(c.out, "--fps is ignored")) << c.out;
  EXPECT_TRUE(has(c.out, "--offload has no effect")) << c.out;
  EXPECT_TRUE(has(c.out, "tokens are dropped")) << c.out;
}

TEST_F(CliOutputs, NonFiniteWeightsOrLatentStopWithAClearError) {
  // A copy of the demo model whose DiT holds a NaN, and one whose head overflows to Inf.
  const fs::path model = root_ / "model";
  for (const std::string kind : {"nan", "huge"}) {
    const fs::path bad = out_dir_ / ("model_" + kind);
    fs::copy(model, bad, fs::copy_options::recursive);
    const std::string dit = (bad / "diffusion_pytorch_model.safetensors").string();
    std::map<std::string, Tensor> w;
    {
      const io::Checkpoint ck = io::open_checkpoint(dit);
      for (const auto& n : ck->names()) w[n] = ck->get(n).clone();
    }
    const std::string name = kind == "nan" ? "blocks.3.ffn.0.weight" : "head.head.weight";
    Tensor t = w.at(name).to(DType::F32).clone();
    w[name] = t;
    float* p = t.data<float>();
    if (kind == "nan")
      p[5] = std::numeric_limits<float>::quiet_NaN();
    else
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = 3e38f;
    io::save_safetensors(dit, w);
    std::vector<std::string> a = gen((out_dir_ / ("v_" + kind + ".mp4")).string());
    a[2] = bad.string();
    const Child c = run_osp(a);
    EXPECT_EQ(c.code, 1) << c.out;
    if (kind == "nan")
      EXPECT_TRUE(has(c.out, "blocks.3.ffn.0.weight' holds NaN/Inf")) << c.out;
    else
      EXPECT_TRUE(has(c.out, "latent became NaN/Inf")) << c.out;
    EXPECT_FALSE(fs::exists(out_dir_ / ("v_" + kind + ".mp4")));
  }
}

TEST_F(CliOutputs, InspectRefusesAFifoInsteadOfBlocking) {
  const std::string fifo = (out_dir_ / "clip.mp4").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const Child c = run_osp({"inspect", fifo});
  EXPECT_EQ(c.code, 1) << c.out;
  EXPECT_TRUE(has(c.out, "not a regular file")) << c.out;
}

TEST_F(CliOutputs, QuietPrintsOnlyWarningsAndErrors) {
  const Child c = run_osp([&] {
    auto a = gen((out_dir_ / "frames/").string());
    a.insert(a.begin(), "-q");
    return a;
  }());
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_FALSE(has(c.out, "sampling")) << c.out;
  EXPECT_FALSE(has(c.out, "wrote")) << c.out;
  EXPECT_FALSE(has(c.out, "VAE")) << c.out;
  EXPECT_TRUE(has(c.out, "RANDOM weights")) << c.out;  // a warning still shows
}

TEST_F(CliOutputs, HostileConfigIsRefusedBeforeAnyWork) {
  const fs::path bad = out_dir_ / "model_bad_config";
  fs::copy(root_ / "model", bad, fs::copy_options::recursive);
  for (const std::string& cfg : {std::string(R"({"dim": 256, "num_layers": 1000000000})"),
                                 std::string(R"({"dim": "256"})")}) {
    std::ofstream(bad / "config.json") << cfg;
    auto a = gen((out_dir_ / "v.mp4").string());
    a[2] = bad.string();
    const Child c = run_osp(a);
    EXPECT_EQ(c.code, 1) << c.out;
    EXPECT_TRUE(has(c.out, "config.json: DiT config: ")) << c.out;
    EXPECT_FALSE(has(c.out, "text encoded")) << c.out;
  }
}

TEST_F(CliOutputs, ARunThatTakesHoursSaysSoBeforeItStarts) {
  // 1280x720x81 with 1000 steps on the CPU: hours on any CPU (the demo DiT is tiny, attention is not).
  auto a = gen((out_dir_ / "v.mp4").string());
  a[6] = "1280x720";
  a[8] = "81";
  a[10] = "1000";
  const Child c = run_osp(a, {"model loading", 0});
  EXPECT_EQ(c.code, 130) << c.out;
  EXPECT_TRUE(has(c.out, "this run will take hours")) << c.out;
  EXPECT_TRUE(has(c.out, "TFLOP per step")) << c.out;
  EXPECT_TRUE(names_in(out_dir_).empty());
}
