// The web page of `osp serve` in headless Chromium (Debian's `chromium`, run as root with
// --no-sandbox): the page is opened with its form filled from the URL and submitted
// (?prompt=...&autostart=1); the generation runs on a real server on 127.0.0.1 (tiny demo
// model), the page follows it through the event stream and shows the video. Checked twice: the
// DOM after the run (state "succeeded", a <video> whose source is the job's video), and a
// screenshot of the same job's page (?job=ID: the progress bar full and green; the video's noise
// frame drawn below it).
// Skipped visibly when chromium or FFmpeg is absent.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/demo_model.h"
#include "run_cmd.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {

std::string chromium_path() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (::access(p, X_OK) == 0) return p;
  return "";
}

std::string run_capture(const std::string& cmd) { return osp::test::run_shell(cmd, false).out; }

struct Server {
  pid_t pid = -1;
  int fd = -1, port = 0;
  std::string log;
  bool start(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe(fds) != 0) return false;
    pid = ::fork();
    if (pid == 0) {
      ::dup2(fds[1], 2);
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      ::close(fds[1]);
      ::setenv("OMP_NUM_THREADS", "1", 1);
      ::alarm(300);  // a hung server must not hang the test (ctest's timeout is longer)
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
    const std::string key = "listening on http://127.0.0.1:";
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) return false;
      log.append(buf, size_t(n));
      const size_t at = log.find(key);
      if (at != std::string::npos && log.find('/', at + key.size()) != std::string::npos) {
        port = std::stoi(log.substr(at + key.size()));
        return true;
      }
    }
  }
  int stop() {
    if (pid <= 0) return -1;
    ::kill(pid, SIGTERM);
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) log.append(buf, size_t(n));
    ::close(fd);
    int st = 0;
    ::waitpid(pid, &st, 0);
    pid = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  ~Server() { stop(); }
};

}  // namespace

TEST(ServerPage, GenerationFromThePageShowsTheVideo) {
  const std::string chromium = chromium_path();
  if (chromium.empty()) GTEST_SKIP() << "SKIP: no chromium (apt-get install chromium) for the web page test";
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg (the page shows an MP4)";
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng (the screenshot is read back)";
  const fs::path root = fs::temp_directory_path() / ("osp_server_page_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  pipeline::make_demo_model((root / "model").string());
  Server s;
  ASSERT_TRUE(s.start({"serve", "--model", (root / "model").string(), "--port", "0", "--out-dir",
                       (root / "out").string(), "--size", "32x32", "--frames", "5", "--steps", "2"}))
      << s.log;
  const std::string url = "http://127.0.0.1:" + std::to_string(s.port) +
                          "/?prompt=a%20red%20fox&frames=5&steps=2&seed=3&autostart=1";
  const std::string browser = "timeout 60 " + chromium +
                              " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars"
                              " --user-data-dir=" + (root / "profile").string() +
                              " --virtual-time-budget=30000 --window-size=800,700 ";

  // The DOM once the page is done: succeeded, and a <video> playing the job's MP4.
  const std::string dom = run_capture(browser + "--dump-dom '" + url + "' 2>/dev/null");
  EXPECT_NE(dom.find("data-state=\"succeeded\""), std::string::npos) << dom.substr(0, 4000);
  const size_t v = dom.find("<video id=\"video\"");
  ASSERT_NE(v, std::string::npos) << dom.substr(0, 4000);
  const std::string tag = dom.substr(v, dom.find('>', v) - v);
  EXPECT_NE(tag.find("src=\"/v1/generations/"), std::string::npos) << tag;
  EXPECT_NE(tag.find("/video\""), std::string::npos) << tag;
  EXPECT_NE(tag.find("poster=\"/v1/generations/"), std::string::npos) << tag;  // the first frame until the video plays

  // The screenshot: the finished job's own page (?job=ID, the id from the video's URL), so the
  // capture does not race a new generation (a screenshot of a fresh autostart run once came back
  // before the job had progressed: 0 px of bar). The progress bar (y ≈ 257) is the page's green
  // across its width, and below the status line the video's random-weight noise gives many
  // strongly coloured pixels.
  const size_t id0 = tag.find("/v1/generations/") + std::string("/v1/generations/").size();
  const std::string job = tag.substr(id0, tag.find('/', id0) - id0);
  ASSERT_FALSE(job.empty()) << tag;
  // Chromium decodes the <video> on a media thread that its virtual time does not wait for, so a
  // capture could come before the first frame is painted (seen in a clean-clone run: a full bar,
  // 0 coloured pixels); the poster image (the first frame as PNG) is what shows until then, and it
  // loads within the virtual time. Up to three captures all the same, the first that shows a frame counts.
  const std::string shot = (root / "page.png").string();
  int64_t W = 0, bar_count = 0, colourful = 0;
  for (int attempt = 0; attempt < 3 && colourful <= 2000; ++attempt) {
    fs::remove(shot);
    run_capture(browser + "--run-all-compositor-stages-before-draw --screenshot=" + shot + " 'http://127.0.0.1:" +
                std::to_string(s.port) + "/?job=" + job + "' 2>/dev/null");
    ASSERT_TRUE(fs::exists(shot)) << "chromium wrote no screenshot";
    const Tensor img = io::read_png(shot);
    ASSERT_EQ(img.dim(), 3);
    const int64_t H = img.size(0);
    W = img.size(1);
    const uint8_t* px = img.data<uint8_t>();
    auto at = [&](int64_t y, int64_t x, int c) { return int(px[(y * W + x) * 3 + c]); };
    // Find the bar: the row with the most #3a7 (51, 170, 119) pixels.
    int64_t bar_y = -1;
    bar_count = 0;
    for (int64_t y = 0; y < H; ++y) {
      int64_t n = 0;
      for (int64_t x = 0; x < W; ++x)
        n += std::abs(at(y, x, 0) - 51) < 12 && std::abs(at(y, x, 1) - 170) < 12 && std::abs(at(y, x, 2) - 119) < 12;
      if (n > bar_count) bar_count = n, bar_y = y;
    }
    colourful = 0;
    for (int64_t y = bar_y + 40; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const int mx = std::max({at(y, x, 0), at(y, x, 1), at(y, x, 2)});
        const int mn = std::min({at(y, x, 0), at(y, x, 1), at(y, x, 2)});
        colourful += mx - mn > 80;
      }
    if (colourful <= 2000) std::printf("[ page    ] capture %d: no video frame yet (%lld coloured px); again\n", attempt + 1,
                                       (long long)colourful);
  }
  EXPECT_GT(bar_count, W * 8 / 10) << "the progress bar is not full (" << bar_count << " of " << W << " px green)";
  EXPECT_GT(colourful, 2000) << "no video frame or poster drawn below the status line (three captures)";
  EXPECT_EQ(s.stop(), 0) << s.log;
  fs::remove_all(root);
}
