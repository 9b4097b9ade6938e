// Run a callable when a scope ends, normally or by an exception — for the "put it back" steps of
// a long function (hooks cleared, released buffers re-allocated, a profiler paused) without a
// hand-written guard struct each. The callable must not throw out: it may run while an exception
// unwinds, so one it throws is swallowed (the scope's own error is the one that matters).
//
//   auto restore = on_scope_exit([&] { model.set_profiling(false); });
#pragma once

#include <utility>

namespace osp {

template <typename F>
class ScopeExit {
 public:
  explicit ScopeExit(F f) : f_(std::move(f)) {}
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;
  ~ScopeExit() {
    try {
      f_();
    } catch (...) {
    }
  }

 private:
  F f_;
};

template <typename F>
[[nodiscard]] ScopeExit<F> on_scope_exit(F f) {
  return ScopeExit<F>(std::move(f));
}

}  // namespace osp
