// Rewards for Mix-GRPO: built-in clip-detector rewards and the external JSON-lines scorer.
#include "osp/train/reward.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <thread>

#include "osp/core/error.h"
#include "osp/io/image_writer.h"
#include "osp/io/safetensors.h"
#include "osp/io/video_writer.h"
#include "osp/train/clip_metrics.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace osp::train {

std::vector<double> Reward::score_batch(const std::vector<RewardSample>& batch) {
  std::vector<double> out;
  out.reserve(batch.size());
  for (const RewardSample& s : batch) out.push_back(score(s));
  return out;
}

// ---------------------------------------------------------------- caption grammar
namespace {
const char* const kSingular[kNumMotions] = {
    "moves from left to right", "moves from right to left", "moves up", "moves down",
    "bounces up and down",      "grows",                    "shrinks",  "rotates"};
const char* const kPlural[kNumMotions] = {
    "move from left to right", "move from right to left", "move up", "move down",
    "bounce up and down",      "grow",                    "shrink",  "rotate"};

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}
}  // namespace

ClipAttributes parse_clip_caption(const std::string& caption_in) {
  const std::string caption = trim(caption_in);
  auto bad = [&](const std::string& why) -> ClipAttributes {
    fail(str("caption '", caption, "' is not of the synthetic-clip grammar (", why,
             "); builtin rewards need prompts like 'a red circle moves up on a black background' "
             "or a clip dataset manifest with attributes"));
  };
  const std::string on = " on a ";
  const size_t pos = caption.rfind(on);
  if (caption.rfind("a ", 0) != 0 || pos == std::string::npos) return bad("no 'a ... on a ...'");
  std::string left = caption.substr(2, pos - 2), right = caption.substr(pos + on.size());
  if (!ends_with(right, " background")) return bad("no trailing 'background'");
  right = right.substr(0, right.size() - std::string(" background").size());
  ClipAttributes a;
  const size_t and_pos = right.find(" and ");
  if (and_pos == std::string::npos) {
    a.background = {right};
  } else {
    a.background = {right.substr(0, and_pos), right.substr(and_pos + 5)};
  }
  for (const auto& b : a.background)
    if (background_index(b) < 0) return bad("unknown background '" + b + "'");
  int motion = -1;
  bool plural = false;
  for (int m = 0; m < kNumMotions && motion < 0; ++m) {
    if (ends_with(left, std::string(" ") + kSingular[m])) {
      motion = m;
      left = left.substr(0, left.size() - std::strlen(kSingular[m]) - 1);
    } else if (ends_with(left, std::string(" ") + kPlural[m])) {
      motion = m, plural = true;
      left = left.substr(0, left.size() - std::strlen(kPlural[m]) - 1);
    }
  }
  if (motion < 0) return bad("no motion phrase");
  std::vector<std::string> objs;
  const size_t and_a = left.find(" and a ");
  if (and_a == std::string::npos) {
    objs = {left};
  } else {
    objs = {left.substr(0, and_a), left.substr(and_a + 7)};
  }
  if (plural != (objs.size() == 2)) return bad("the verb does not agree with the object count");
  for (const std::string& o : objs) {
    const size_t sp = o.rfind(' ');
    if (sp == std::string::npos) return bad("object '" + o + "' is not '<colour> <shape>'");
    IntendedObject io;
    io.color = o.substr(0, sp);
    io.shape = o.substr(sp + 1);
    io.motion = motion_name(Motion(motion));
    if (object_color_index(io.color) < 0) return bad("unknown colour '" + io.color + "'");
    if (shape_index(io.shape) < 0) return bad("unknown shape '" + io.shape + "'");
    a.objects.push_back(io);
  }
  return a;
}

// ---------------------------------------------------------------- built-in
std::string BuiltinClipReward::name() const {
  switch (kind_) {
    case BuiltinReward::Adherence: return "adherence";
    case BuiltinReward::Color: return "color";
    case BuiltinReward::Shape: return "shape";
    case BuiltinReward::Motion: return "motion";
    case BuiltinReward::Background: return "background";
    case BuiltinReward::Count: return "count";
    case BuiltinReward::Temporal: return "temporal";
  }
  return "?";
}

double BuiltinClipReward::score(const RewardSample& s) {
  OSP_CHECK(s.video.defined(), "reward ", name(), ": sample ", s.id, " has no video");
  const ClipDetection det = detect_clip(s.video);
  if (kind_ == BuiltinReward::Temporal) return std::max(0.0, 1.0 - 10.0 * det.background_flicker);
  const ClipAttributes want = s.has_attributes ? s.attributes : parse_clip_caption(s.prompt);
  const AdherenceScore a = score_adherence(want, det);
  const double n = std::max(1, a.objects);
  switch (kind_) {
    case BuiltinReward::Adherence:
      return (double(a.background) + double(a.count) + a.color / n + a.shape / n + a.motion / n) / 5.0;
    case BuiltinReward::Color: return a.color / n;
    case BuiltinReward::Shape: return a.shape / n;
    case BuiltinReward::Motion: return a.motion / n;
    case BuiltinReward::Background: return a.background ? 1.0 : 0.0;
    case BuiltinReward::Count: return a.count ? 1.0 : 0.0;
    default: break;
  }
  return 0;
}

std::unique_ptr<Reward> make_builtin_reward(const std::string& spec) {
  const std::string p = "builtin:";
  OSP_CHECK(spec.rfind(p, 0) == 0, "reward '", spec, "': expected builtin:<kind>[:weight]");
  std::string kind = spec.substr(p.size());
  double w = 1.0;
  const size_t c = kind.find(':');
  if (c != std::string::npos) {
    const std::string ws = kind.substr(c + 1);
    char* end = nullptr;
    w = std::strtod(ws.c_str(), &end);
    OSP_CHECK(!ws.empty() && end && *end == '\0' && std::isfinite(w) && w > 0, "reward '", spec,
              "': the weight must be a number > 0, got '", ws, "'");
    kind = kind.substr(0, c);
  }
  BuiltinReward k;
  if (kind == "adherence") k = BuiltinReward::Adherence;
  else if (kind == "color" || kind == "colour") k = BuiltinReward::Color;
  else if (kind == "shape") k = BuiltinReward::Shape;
  else if (kind == "motion") k = BuiltinReward::Motion;
  else if (kind == "background") k = BuiltinReward::Background;
  else if (kind == "count") k = BuiltinReward::Count;
  else if (kind == "temporal") k = BuiltinReward::Temporal;
  else
    fail(str("reward '", spec, "': unknown built-in '", kind,
             "' (adherence, color, shape, motion, background, count, temporal)"));
  auto r = std::make_unique<BuiltinClipReward>(k);
  r->set_weight(w);
  return r;
}

// ---------------------------------------------------------------- external
ExternalReward::ExternalReward(const ExternalRewardOptions& o) : opt_(o) {
  OSP_CHECK(!opt_.command.empty(), "--reward-cmd: empty command");
  OSP_CHECK(opt_.timeout_s > 0, "--reward-timeout must be > 0, got ", opt_.timeout_s);
  OSP_CHECK(std::isfinite(opt_.weight) && opt_.weight > 0, "external reward weight must be > 0");
  set_weight(opt_.weight);
  start();
}

void ExternalReward::start() {
  std::signal(SIGPIPE, SIG_IGN);  // a dead scorer must give an error, not kill osp
  int in[2], out[2];
  OSP_CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0,
            "--reward-cmd: cannot create pipes: ", std::strerror(errno));
  const pid_t pid = fork();
  OSP_CHECK(pid >= 0, "--reward-cmd: fork failed: ", std::strerror(errno));
  if (pid == 0) {  // child: stdin ← in[0], stdout → out[1], its own process group
    setpgid(0, 0);
    dup2(in[0], 0);
    dup2(out[1], 1);
    execl("/bin/sh", "sh", "-c", opt_.command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);  // (also in the child: whichever runs first)
  close(in[0]);
  close(out[1]);
  pid_ = pid;
  to_child_ = in[1];
  from_child_ = out[0];
}

namespace {
// Reaps `pid` if it exits within `ms` milliseconds (polled every 5 ms): its pid with *st set, or
// 0 while it still runs.
pid_t reap_within(pid_t pid, int* st, int ms) {
  pid_t r = waitpid(pid, st, WNOHANG);
  for (int waited = 0; r == 0 && waited < ms; waited += 5) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    r = waitpid(pid, st, WNOHANG);
  }
  return r;
}
}  // namespace

ExternalReward::~ExternalReward() {
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
  if (pid_ > 0) {
    int st = 0;
    if (reap_within(pid_, &st, 1000) == pid_) return;  // up to 1 s for a clean exit after EOF
    kill(-pid_, SIGKILL);  // the scorer's whole process group
    waitpid(pid_, &st, 0);
  }
}

void ExternalReward::die(const std::string& why) {
  std::string status;
  if (pid_ > 0) {
    int st = 0;
    // A scorer that exits closes its output before the kernel can report its exit: give it up
    // to 0.5 s to become reapable (so the message carries its status), then kill a hung one.
    const pid_t r = reap_within(pid_, &st, 500);
    if (r == 0) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, &st, 0);
    } else if (r == pid_) {
      if (WIFEXITED(st)) status = str(" (the scorer exited with status ", WEXITSTATUS(st), ")");
      else if (WIFSIGNALED(st)) status = str(" (the scorer was killed by signal ", WTERMSIG(st), ")");
    }
    pid_ = -1;
  }
  if (to_child_ >= 0) close(to_child_), to_child_ = -1;
  if (from_child_ >= 0) close(from_child_), from_child_ = -1;
  fail(str("reward command '", opt_.command, "': ", why, status));
}

std::string ExternalReward::write_video(const RewardSample& s) {
  fs::create_directories(opt_.video_dir);
  const Tensor rgb = io::video_to_rgb8(s.video);  // U8 [F, H, W, 3]
  const std::string stem = (fs::path(opt_.video_dir) / str("sample_", s.id)).string();
  if (io::video_writer_available()) {
    io::VideoOptions vo;
    vo.fps = opt_.fps;
    io::write_mp4(stem + ".mp4", rgb, vo);
    return fs::absolute(stem + ".mp4").string();
  }
  if (io::png_available()) {
    io::write_png_frames(stem, rgb);
    return fs::absolute(stem).string();
  }
  io::save_safetensors(stem + ".safetensors", {{"video", rgb}});
  return fs::absolute(stem + ".safetensors").string();
}

double ExternalReward::score(const RewardSample& s) {
  if (pid_ < 0) die("the scorer is no longer running");
  const std::string path = write_video(s);
  json req = {{"id", s.id},
              {"video", path},
              {"prompt", s.prompt},
              {"frames", s.video.size(1)},
              {"height", s.video.size(2)},
              {"width", s.video.size(3)},
              {"fps", opt_.fps}};
  if (!s.attributes_json.empty()) {
    try {
      req["attributes"] = json::parse(s.attributes_json);
    } catch (const json::exception&) {
    }
  }
  const std::string line = req.dump() + "\n";
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = write(to_child_, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die(str("cannot send sample ", s.id, ": ", std::strerror(errno)));
    off += size_t(n);
  }
  // One reply line within the timeout.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(opt_.timeout_s);
  size_t nl;
  while ((nl = pending_.find('\n')) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0)
      die(str("no reply for sample ", s.id, " within ", opt_.timeout_s,
              " s (--reward-timeout); the scorer hangs or is too slow"));
    pollfd p{from_child_, POLLIN, 0};
    const int r = poll(&p, 1, int(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die(str("poll failed: ", std::strerror(errno)));
    if (r == 0) continue;
    char buf[4096];
    const ssize_t n = read(from_child_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die(str("the scorer closed its output before answering sample ", s.id));
    pending_.append(buf, size_t(n));
    if (pending_.size() > (1u << 20)) die("a reply line longer than 1 MiB");
  }
  const std::string reply = trim(pending_.substr(0, nl));
  pending_.erase(0, nl + 1);
  double v = NAN;
  try {
    const json j = json::parse(reply);
    if (j.is_number()) {
      v = j.get<double>();
    } else if (j.is_object() && j.contains("score") && j["score"].is_number()) {
      v = j["score"].get<double>();
    } else if (j.is_object() && j.contains("reward") && j["reward"].is_number()) {
      v = j["reward"].get<double>();
    }
  } catch (const json::exception&) {
  }
  if (!std::isfinite(v)) {
    const std::string shown = reply.size() > 200 ? reply.substr(0, 200) + "..." : reply;
    die(str("reply for sample ", s.id, " is not a finite number or {\"score\": <number>}: '",
            shown, "'"));
  }
  return v;
}

}  // namespace osp::train
