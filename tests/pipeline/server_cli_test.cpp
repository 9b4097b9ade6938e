// `osp serve` as a user meets it: a real server (child process) on 127.0.0.1, port chosen by the
// kernel, on the tiny random demo model, driven with cpp-httplib's client: submit, progress
// (status and server-sent events), concurrent submissions, the video, cancel, queue full,
// every class of bad request (malformed JSON, unknown field, wrong type, invalid and
// over-limit settings, oversized body, unknown job/path, wrong state), the token rule, the web
// page, and SIGTERM during a job (exit 0, nothing half-written) or while the model loads (exit 0).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/demo_model.h"

#ifdef OSP_HAVE_HTTPLIB
#include <httplib.h>
#endif

using namespace osp;
namespace fs = std::filesystem;
using nlohmann::json;

#ifndef OSP_HAVE_HTTPLIB
TEST(ServerCli, Skipped) { GTEST_SKIP() << "SKIP: built without cpp-httplib (libcpp-httplib-dev)"; }
#else

namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A running `osp serve` child; its stderr is read until it says where it listens.
struct ServerProcess {
  pid_t pid = -1;
  int fd = -1;
  int port = 0;
  std::string log;

  // `hold`: OSP_TEST_HOLD_AT for the child; start() then returns once the child reports the hold.
  bool start(const std::vector<std::string>& args, const std::string& hold = "") {
    int fds[2];
    if (::pipe(fds) != 0) return false;
    pid = ::fork();
    if (pid == 0) {
      ::dup2(fds[1], 2);
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      ::close(fds[1]);
      ::setenv("OMP_NUM_THREADS", "1", 1);
      if (!hold.empty()) ::setenv("OSP_TEST_HOLD_AT", hold.c_str(), 1);
      ::alarm(60);  // a hung server dies (the test then fails)
      std::vector<std::string> copy = args;
      std::vector<char*> av;
      std::string exe = OSP_CLI_PATH;
      av.push_back(exe.data());
      for (auto& a : copy) av.push_back(a.data());
      av.push_back(nullptr);
      ::execv(exe.c_str(), av.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    fd = fds[0];
    const std::string key = hold.empty() ? "listening on http://127.0.0.1:" : "osp: test hold: " + hold + "\n";
    char buf[4096];
    while (true) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) return false;  // exited before listening
      log.append(buf, size_t(n));
      const size_t at = log.find(key);
      if (at != std::string::npos && !hold.empty()) return true;
      if (at != std::string::npos && log.find('/', at + key.size()) != std::string::npos) {
        port = std::stoi(log.substr(at + key.size()));
        return true;
      }
    }
  }
  // Sends `sig` (0: none) and waits; returns the exit code (-1: killed by a signal).
  int finish(int sig = SIGTERM) {
    if (pid <= 0) return -1;
    if (sig) ::kill(pid, sig);
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) log.append(buf, size_t(n));
    ::close(fd);
    int st = 0;
    ::waitpid(pid, &st, 0);
    pid = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  ~ServerProcess() {
    if (pid > 0) finish(SIGKILL);
  }
};

class ServerCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("osp_server_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    pipeline::make_demo_model((root_ / "model").string());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static std::vector<std::string> args(const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"serve", "--model", (root_ / "model").string(), "--port", "0",
                                  "--out-dir", (root_ / out).string(), "--size", "32x32", "--frames", "1",
                                  "--steps", "2", "--max-steps", "1000", "--max-size", "64x64", "--max-frames", "5"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  static json post(httplib::Client& c, const std::string& body, int* status = nullptr) {
    auto r = c.Post("/v1/generations", body, "application/json");
    if (!r) return json{{"error", "no response"}};
    if (status) *status = r->status;
    return json::parse(r->body);
  }
  static json get(httplib::Client& c, const std::string& path, int* status = nullptr) {
    auto r = c.Get(path.c_str());
    if (!r) return json{{"error", "no response"}};
    if (status) *status = r->status;
    return json::parse(r->body);
  }
  // Polls until the job's status satisfies `pred` (at most ~20 s).
  template <class P>
  static json wait_for(httplib::Client& c, const std::string& id, P pred) {
    json s;
    for (int i = 0; i < 2000; ++i) {
      s = get(c, "/v1/generations/" + id);
      if (pred(s)) return s;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "timed out; last status " << s.dump();
    return s;
  }
  static std::vector<std::string> files_in(const fs::path& d) {
    std::vector<std::string> v;
    if (fs::exists(d))
      for (const auto& e : fs::directory_iterator(d)) v.push_back(e.path().filename().string());
    return v;
  }
  static fs::path root_;
};
fs::path ServerCli::root_;

}  // namespace

TEST_F(ServerCli, SubmitProgressConcurrentVideoAndBadRequests) {
  ServerProcess sp;
  ASSERT_TRUE(sp.start(args("out1"))) << sp.log;
  httplib::Client c("127.0.0.1", sp.port);
  c.set_read_timeout(30, 0);

  // Two clients submit at once; both finish, in order, with the settings they asked for.
  json a, b;
  int sa = 0, sb = 0;
  std::thread ta([&] { httplib::Client c2("127.0.0.1", sp.port); a = post(c2, R"({"prompt": "a red fox", "seed": 4})", &sa); });
  std::thread tb([&] { httplib::Client c3("127.0.0.1", sp.port); b = post(c3, R"({"prompt": "a blue bird", "steps": 3})", &sb); });
  ta.join();
  tb.join();
  ASSERT_EQ(sa, 202) << a.dump();
  ASSERT_EQ(sb, 202) << b.dump();
  EXPECT_NE(a["id"], b["id"]);
  EXPECT_EQ(a["settings"]["seed"], 4);
  EXPECT_EQ(b["settings"]["steps"], 3);

  // Server-sent events of b: progress events with growing steps, then "succeeded".
  std::string events;
  auto r = c.Get(("/v1/generations/" + b["id"].get<std::string>() + "/events").c_str(),
                 [&](const char* d, size_t n) { events.append(d, n); return true; });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  EXPECT_TRUE(has(events, "event: succeeded\ndata: {")) << events;
  const json fa = wait_for(c, a["id"], [](const json& s) { return s["status"] != "queued" && s["status"] != "running"; });
  const json fb = get(c, "/v1/generations/" + b["id"].get<std::string>());
  EXPECT_EQ(fa["status"], "succeeded") << fa.dump();
  EXPECT_EQ(fb["status"], "succeeded") << fb.dump();
  EXPECT_EQ(fb["step"], 3);
  EXPECT_EQ(fb["progress"], 1.0);
  EXPECT_EQ(fb["eta_s"], 0.0);
  if (has(events, "event: progress")) {  // a fast run may be over before the stream starts
    const size_t at = events.find("event: progress\ndata: ");
    const json p = json::parse(events.substr(at + 22, events.find('\n', at + 22) - at - 22));
    EXPECT_EQ(p["steps"], 3);
  }

  // The video: an MP4 (or, without FFmpeg, PNG frames).
  if (io::video_writer_available()) {
    auto v = c.Get(fa["video_url"].get<std::string>().c_str());
    ASSERT_TRUE(v);
    EXPECT_EQ(v->status, 200);
    EXPECT_EQ(v->get_header_value("Content-Type"), "video/mp4");
    EXPECT_GT(v->body.size(), 100u);
    EXPECT_EQ(v->body.substr(4, 4), "ftyp");
    if (io::png_available()) {  // the first frame as the video's poster image
      ASSERT_TRUE(fa.contains("poster_url")) << fa.dump();
      auto p = c.Get(fa["poster_url"].get<std::string>().c_str());
      ASSERT_TRUE(p);
      EXPECT_EQ(p->status, 200);
      EXPECT_EQ(p->get_header_value("Content-Type"), "image/png");
      EXPECT_EQ(p->body.substr(1, 3), "PNG");
    }
  } else {
    auto v = c.Get(fa["frames_url"].get<std::string>().c_str());
    ASSERT_TRUE(v);
    EXPECT_EQ(v->get_header_value("Content-Type"), "image/png");
  }
  int st = 0;
  json e = get(c, "/v1/generations", &st);
  EXPECT_EQ(e["generations"].size(), 2u);

  // Bad requests: each a JSON error with its 4xx code, and nothing queued.
  const std::vector<std::pair<std::string, int>> bad = {
      {R"({"prompt": )", 400},                                // malformed JSON
      {R"(["a list"])", 400},                                 // not an object
      {R"({"prompt": "x", "colour": "red"})", 400},           // unknown field
      {R"({"prompt": "x", "out": "/etc/passwd.mp4"})", 400},  // the server chooses outputs
      {R"({"prompt": 5})", 400},                              // wrong type
      {R"({"steps": 2})", 400},                               // no prompt
      {R"({"prompt": "  "})", 400},                           // empty prompt
      {R"({"prompt": "x", "frames": 4})", 400},               // not 4n+1
      {R"({"prompt": "x", "size": "33x32"})", 400},           // not a multiple of 16
      {R"({"prompt": "x", "frames": 9})", 400},               // over --max-frames
      {R"({"prompt": "x", "size": "128x32"})", 400},          // over --max-size
      {R"({"prompt": "x", "steps": 1001})", 400},             // over --max-steps
      {"{\"prompt\": \"" + std::string(70000, 'a') + "\"}", 413},  // over --max-body-kb
  };
  for (const auto& [body, code] : bad) {
    json j = post(c, body, &st);
    EXPECT_EQ(st, code) << body.substr(0, 60) << " -> " << j.dump();
    EXPECT_TRUE(j.contains("error") && j["error"].is_string() && !j["error"].get<std::string>().empty())
        << body.substr(0, 60);
  }
  EXPECT_TRUE(has(post(c, R"({"prompt": "x", "colour": "red"})")["error"], "unknown field 'colour'"));
  EXPECT_TRUE(has(post(c, R"({"prompt": "x", "frames": 9})")["error"], "limit of 5"));
  get(c, "/v1/generations/0123456789ab", &st);
  EXPECT_EQ(st, 404);
  get(c, "/v1/nothing", &st);
  EXPECT_EQ(st, 404);
  auto d = c.Delete(("/v1/generations/" + a["id"].get<std::string>()).c_str());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 409);  // already finished
  EXPECT_EQ(get(c, "/v1/generations")["generations"].size(), 2u);  // nothing was queued

  // The web page.
  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_TRUE(has(page->body, "<form") && has(page->body, "EventSource") && has(page->body, "/v1/generations"));
  EXPECT_EQ(sp.finish(SIGTERM), 0) << sp.log;
}

TEST_F(ServerCli, CancelQueueFullAndSigtermDuringAJob) {
  ServerProcess sp;
  ASSERT_TRUE(sp.start(args("out2", {"--queue", "1"}))) << sp.log;
  httplib::Client c("127.0.0.1", sp.port);
  int st = 0;
  // A long job runs; one more waits; the next is refused with 429.
  const json longj = post(c, R"({"prompt": "a long one", "steps": 1000})", &st);
  ASSERT_EQ(st, 202) << longj.dump();
  const std::string id = longj["id"];
  wait_for(c, id, [](const json& s) { return s["status"] == "running" && s["step"].get<int>() >= 1; });
  const json q = post(c, R"({"prompt": "waiting"})", &st);
  ASSERT_EQ(st, 202);
  EXPECT_EQ(q["status"], "queued");
  EXPECT_EQ(q["queue_position"], 1);
  const json full = post(c, R"({"prompt": "one too many"})", &st);
  EXPECT_EQ(st, 429) << full.dump();
  EXPECT_TRUE(has(full["error"], "queue is full"));

  // Cancel the queued one (at once) and the running one (at its next step): nothing written.
  auto d = c.Delete(("/v1/generations/" + q["id"].get<std::string>()).c_str());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 202);
  EXPECT_EQ(get(c, "/v1/generations/" + q["id"].get<std::string>())["status"], "cancelled");
  d = c.Delete(("/v1/generations/" + id).c_str());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 202);
  const json cj = wait_for(c, id, [](const json& s) { return s["status"] == "cancelled"; });
  EXPECT_LT(cj["step"].get<int>(), 1000);
  EXPECT_TRUE(has(cj["error"], "cancelled during sampling")) << cj.dump();
  get(c, "/v1/generations/" + id + "/video", &st);
  EXPECT_EQ(st, 409);
  EXPECT_TRUE(files_in(root_ / "out2").empty());

  // The server still works after a cancel; then SIGTERM in the middle of a long job.
  const json next = post(c, R"({"prompt": "after the cancel"})", &st);
  ASSERT_EQ(st, 202);
  EXPECT_EQ(wait_for(c, next["id"], [](const json& s) { return s["status"] == "succeeded" || s["status"] == "failed"; })["status"],
            "succeeded");
  const json last = post(c, R"({"prompt": "interrupted by SIGTERM", "steps": 1000})", &st);
  ASSERT_EQ(st, 202);
  wait_for(c, last["id"], [](const json& s) { return s["status"] == "running" && s["step"].get<int>() >= 1; });
  EXPECT_EQ(sp.finish(SIGTERM), 0) << sp.log;
  EXPECT_TRUE(has(sp.log, "shutting down")) << sp.log;
  EXPECT_TRUE(has(sp.log, "nothing written")) << sp.log;
  // Only the finished video (and its poster image where osp has libpng and writes MP4); no
  // temporary or partial file.
  const auto files = files_in(root_ / "out2");
  ASSERT_EQ(files.size(), io::video_writer_available() && io::png_available() ? 2u : 1u);
  for (const auto& f : files) EXPECT_EQ(f.rfind(next["id"].get<std::string>(), 0), 0u) << f;
}

TEST_F(ServerCli, SigtermWhileLoadingTheModel) {
  ServerProcess sp;
  ASSERT_TRUE(sp.start(args("out4"), "model loading")) << sp.log;
  EXPECT_EQ(sp.finish(SIGTERM), 0) << sp.log;
  EXPECT_TRUE(has(sp.log, "stopped while loading the model")) << sp.log;
  EXPECT_FALSE(has(sp.log, "listening")) << sp.log;
}

TEST_F(ServerCli, TokenRules) {
  // Another host without a token: refused before loading anything.
  ServerProcess open;
  EXPECT_FALSE(open.start(args("out3", {"--host", "0.0.0.0"})));
  EXPECT_EQ(open.finish(0), 1);
  EXPECT_TRUE(has(open.log, "--token")) << open.log;
  // With a token (here on loopback): /v1 needs it, the page does not.
  ServerProcess sp;
  ASSERT_TRUE(sp.start(args("out3", {"--token", "s3cret"}))) << sp.log;
  httplib::Client c("127.0.0.1", sp.port);
  int st = 0;
  json j = post(c, R"({"prompt": "x"})", &st);
  EXPECT_EQ(st, 401) << j.dump();
  c.set_bearer_token_auth("wrong");
  post(c, R"({"prompt": "x"})", &st);
  EXPECT_EQ(st, 401);
  c.set_bearer_token_auth("s3cret");
  get(c, "/v1/health", &st);
  EXPECT_EQ(st, 200);
  httplib::Client plain("127.0.0.1", sp.port);
  get(plain, "/v1/health?token=s3cret", &st);
  EXPECT_EQ(st, 200);
  auto page = plain.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(sp.finish(SIGTERM), 0) << sp.log;
}

#endif  // OSP_HAVE_HTTPLIB
