#include "osp/core/interrupt.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace osp {

namespace {

std::atomic<bool> g_interrupted{false};

// Temporary outputs to remove if a second Ctrl-C exits at once. Plain arrays and atomics only:
// the signal handler reads them.
constexpr int kSlots = 8;
struct Slot {
  std::atomic<int> state{0};  // 0 free, 1 being filled, 2 ready
  char path[4096];
};
Slot g_slots[kSlots];

void write_all(int fd, const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = ::write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= size_t(w);
  }
}

// Async-signal-safe removal of a file, or of a folder and the files directly inside it.
void remove_now(const char* path) {
  if (::unlink(path) == 0 || errno != EISDIR) return;
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    alignas(8) static char buf[8192];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        auto* d = reinterpret_cast<struct dirent64*>(buf + off);
        const char* name = d->d_name;
        if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))))
          ::unlinkat(fd, name, 0);
        off += d->d_reclen;
      }
    }
    ::close(fd);
  }
  ::rmdir(path);
}

std::atomic<const char*> g_on_stop{"nothing will be written"};

extern "C" void osp_on_sigint(int) {
  if (g_interrupted.load()) {  // second Ctrl-C: remove temporaries, stop now
    for (auto& s : g_slots)
      if (s.state.load() == 2) remove_now(s.path);
    write_all(2, "\nosp: stopped at once (second Ctrl-C); nothing written\n");
    ::_exit(130);
  }
  g_interrupted.store(true);
  write_all(2, "\nosp: Ctrl-C: stopping at the next safe point, ");
  write_all(2, g_on_stop.load());
  write_all(2, " (press Ctrl-C again to quit at once)\n");
}

const char* hold_stage() {
  static const char* s = std::getenv("OSP_TEST_HOLD_AT");
  return s;
}

}  // namespace

void install_interrupt_handler(const char* on_stop) {
  g_on_stop.store(on_stop ? on_stop : "nothing will be written");
  struct sigaction sa {};
  sa.sa_handler = osp_on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
}
bool interrupted() { return g_interrupted.load(); }
void set_interrupted(bool v) { g_interrupted.store(v); }

namespace {
std::atomic<int> g_deferred{0};  // live DeferInterrupts scopes
}  // namespace

DeferInterrupts::DeferInterrupts() { g_deferred.fetch_add(1); }
DeferInterrupts::~DeferInterrupts() { g_deferred.fetch_sub(1); }

void interruption_point(const char* stage) {
  static std::atomic<bool> held{false};
  const char* h = hold_stage();
  if (h && std::strcmp(h, stage) == 0 && !held.exchange(true)) {
    std::fprintf(stderr, "osp: test hold: %s\n", stage);
    std::fflush(stderr);
    const auto t0 = std::chrono::steady_clock::now();
    while (!interrupted() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (g_deferred.load() > 0) return;  // (after the hold: a test can interrupt a deferred stage too)
  if (interrupted()) throw Interrupted(stage);
}

CleanupPath::CleanupPath(const std::string& path) {
  if (path.size() >= sizeof(g_slots[0].path)) return;
  for (int i = 0; i < kSlots; ++i) {
    int expected = 0;
    if (g_slots[i].state.compare_exchange_strong(expected, 1)) {
      std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
      g_slots[i].state.store(2);
      slot_ = i;
      return;
    }
  }
}

CleanupPath::~CleanupPath() {
  if (slot_ >= 0) g_slots[slot_].state.store(0);
}

}  // namespace osp
