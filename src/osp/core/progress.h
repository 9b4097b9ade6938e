// Progress reporting for long loops (the sampling loop, VAE decode).
// On a terminal: one redrawn line "label [#####.....] 12/50  1.84 s/it  ETA 01:10".
// Otherwise (pipes, CI logs): one plain line per step "label 12/50 step 1.84 s eta 70 s".
// Ctrl-C handling lives in interrupt.h (included here for the loops that report and stop).
#pragma once
#include <chrono>
#include <cstdio>
#include <string>

#include "osp/core/interrupt.h"

namespace osp {

class Progress {
 public:
  // total > 0 steps. `tty` < 0: auto-detect whether stderr is a terminal.
  Progress(std::string label, int total, int tty = -1, std::FILE* out = stderr);
  // Marks step `done` (1-based count of finished steps) and redraws / prints.
  void update(int done);
  // Finishes the line with the total time.
  void finish();
  double elapsed_s() const;
  // Formats seconds as "mm:ss" or "h:mm:ss".
  static std::string format_duration(double s);
  // The text of the line for `done` steps after `elapsed` seconds (exposed for tests).
  std::string line(int done, double elapsed, double last_step_s) const;

 private:
  std::string label_;
  int total_;
  bool tty_;
  std::FILE* out_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace osp
