// Weight loading as the pipeline stages do it: a Ctrl-C safe point between tensors, a NaN/Inf
// check of every float weight as it is read (which also pulls the mapped file into memory, the
// slow part of a cold load), and a progress bar on a terminal (one verbose line in logs).
#pragma once
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/progress.h"
#include "osp/io/checkpoint.h"
#include "osp/pipeline/finite_check.h"

namespace osp::pipeline {

class LoadProgress {
 public:
  // `total`: the number of get() calls expected (the bar stops at it); `show`: rank 0 at Info.
  LoadProgress(std::string what, int total, bool show) : what_(std::move(what)), total_(total) {
    if (show && total > 0 && isatty(fileno(stderr)))
      bar_ = std::make_unique<Progress>("loading " + what_, total, 1, stderr);
  }
  // The tensor `name` of `ck` (undefined when absent), checked.
  Tensor get(const io::Checkpoint& ck, const std::string& name) {
    interruption_point("model loading");
    if (!ck->has(name)) return Tensor();
    Tensor t = ck->get(name);
    check_finite_weight(t, name, ck->path());
    ++done_;
    if (bar_) bar_->update(std::min(done_, total_));
    return t;
  }
  void finish() {
    if (bar_) bar_->finish();
    log_verbose("loaded ", what_, " (", done_, " tensors)");
  }

 private:
  std::string what_;
  int total_ = 0, done_ = 0;
  std::unique_ptr<Progress> bar_;
};

}  // namespace osp::pipeline
