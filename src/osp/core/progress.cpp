#include "osp/core/progress.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>

#include "osp/core/error.h"

namespace osp {

Progress::Progress(std::string label, int total, int tty, std::FILE* out)
    : label_(std::move(label)), total_(total), out_(out) {
  OSP_CHECK(total > 0, "Progress: total must be > 0, got ", total);
  tty_ = tty < 0 ? bool(isatty(fileno(out))) : tty > 0;
  start_ = last_ = std::chrono::steady_clock::now();
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

std::string Progress::line(int done, double elapsed, double last_step_s) const {
  const double per = done > 0 ? elapsed / done : 0.0;
  const double eta = per * (total_ - done);
  char buf[256];
  if (tty_) {
    const int width = 24;
    const int fill = int(double(done) / total_ * width);
    std::string bar(size_t(fill), '#');
    bar.append(size_t(width - fill), '.');
    std::snprintf(buf, sizeof buf, "%s [%s] %d/%d  %.2f s/it  ETA %s", label_.c_str(),
                  bar.c_str(), done, total_, per, format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof buf, "%s %d/%d step %.3f s, elapsed %.1f s, eta %.1f s",
                  label_.c_str(), done, total_, last_step_s, elapsed, eta);
  }
  return buf;
}

void Progress::update(int done) {
  const auto now = std::chrono::steady_clock::now();
  const double step = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  const std::string s = line(done, elapsed_s(), step);
  if (tty_)
    std::fprintf(out_, "\r%s\x1b[K", s.c_str());
  else
    std::fprintf(out_, "%s\n", s.c_str());
  std::fflush(out_);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (tty_) std::fprintf(out_, "\n");
  std::fprintf(out_, "%s done in %s\n", label_.c_str(), format_duration(elapsed_s()).c_str());
  std::fflush(out_);
}

}  // namespace osp
