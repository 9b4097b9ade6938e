// Ctrl-C (SIGINT) handling shared by every long stage.
//
// install_interrupt_handler() makes the first SIGINT print an acknowledgement at once and set a
// process-wide flag; long loops call interruption_point(stage) at their safe points (between
// sampling steps, VAE chunks, weight tensors, text prompts, written frames), which throws
// osp::Interrupted once the flag is set. The caller catches it, writes nothing (outputs are
// atomic: see io/atomic_file.h) and exits with 130. A second SIGINT exits at once (130) after
// removing the temporary outputs registered with CleanupPath.
#pragma once
#include <stdexcept>
#include <string>

namespace osp {

// Thrown by interruption_point after Ctrl-C. Not an osp::Error: callers map it to exit code 130.
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(const std::string& stage)
      : std::runtime_error("interrupted (Ctrl-C) during " + stage), stage_(stage) {}
  const std::string& stage() const { return stage_; }

 private:
  std::string stage_;
};

// on_stop: what the first Ctrl-C's acknowledgement promises ("nothing will be written" for the
// commands whose outputs are all-or-nothing; osp train says the checkpoint it saves). A string
// with static storage: the signal handler prints it.
void install_interrupt_handler(const char* on_stop = "nothing will be written");
bool interrupted();
void set_interrupted(bool v);  // for tests

// A safe point inside a long stage: throws Interrupted(stage) when Ctrl-C was pressed.
// Stage names are the user's words: "text encoding", "model loading", "sampling", "VAE decode",
// "writing". Test hook: with OSP_TEST_HOLD_AT=<stage> the first safe point of that stage prints
// "osp: test hold: <stage>" to stderr and waits (up to 60 s) for a SIGINT, so a test can
// interrupt a child process in that exact stage without timing guesses (the hold happens inside
// a DeferInterrupts scope too; only the throw is deferred).
void interruption_point(const char* stage);

// While one lives (any thread), interruption_point does not throw; interrupted() still reports
// Ctrl-C. For loops whose ranks must stop together at an agreed point (osp rl on several ranks
// polls interrupted() between iterations, all-reduced; osp train between steps) instead of
// wherever the signal lands.
class DeferInterrupts {
 public:
  DeferInterrupts();
  ~DeferInterrupts();
  DeferInterrupts(const DeferInterrupts&) = delete;
  DeferInterrupts& operator=(const DeferInterrupts&) = delete;
};

// Registers a temporary file or folder (removed, with the files directly inside it, by the
// handler when a second Ctrl-C exits at once). Scoped; at most 8 at a time (more are ignored).
class CleanupPath {
 public:
  explicit CleanupPath(const std::string& path);
  ~CleanupPath();
  CleanupPath(const CleanupPath&) = delete;
  CleanupPath& operator=(const CleanupPath&) = delete;

 private:
  int slot_ = -1;
};

}  // namespace osp
