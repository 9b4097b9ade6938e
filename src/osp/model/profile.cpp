// Stage profiler of DiT::forward: CUDA events (device) or steady_clock (CPU), resolved lazily.
#include "osp/model/profile.h"

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "osp/core/error.h"
#include "osp/core/settings.h"
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include "osp/core/cuda_check.h"
#endif

namespace osp::model {

const char* prof_stage_name(ProfStage s) {
  switch (s) {
    case ProfStage::PatchEmbed: return "patch_embed";
    case ProfStage::TimeEmbed: return "time_embed";
    case ProfStage::TextEmbed: return "text_embed";
    case ProfStage::SpSetup: return "sp_setup";
    case ProfStage::ScatterInput: return "scatter_input";
    case ProfStage::EnterBlock: return "enter_block";
    case ProfStage::ModNorm: return "mod_norm1";
    case ProfStage::QKV: return "qkv_linear";
    case ProfStage::NormRope: return "qk_norm_rope";
    case ProfStage::Quant: return "quant";
    case ProfStage::SelfAttnComm: return "self_attn_comm";
    case ProfStage::SelfAttn: return "self_attn_kernel";
    case ProfStage::OProj: return "o_proj_residual";
    case ProfStage::CrossAttn: return "cross_attention";
    case ProfStage::FFN: return "ffn";
    case ProfStage::Head: return "head";
    case ProfStage::GatherOutput: return "gather_output";
    case ProfStage::Unpatchify: return "unpatchify";
    case ProfStage::BwdHead: return "bwd_head";
    case ProfStage::Recompute: return "recompute";
    case ProfStage::BwdFFN: return "bwd_ffn";
    case ProfStage::BwdCrossAttn: return "bwd_cross_attn";
    case ProfStage::BwdOProj: return "bwd_o_proj";
    case ProfStage::BwdSelfAttn: return "bwd_self_attn_krn";
    case ProfStage::BwdNormRope: return "bwd_qk_norm_rope";
    case ProfStage::BwdQKV: return "bwd_qkv_linear";
    case ProfStage::BwdModNorm: return "bwd_mod_norm1";
    case ProfStage::BwdEnterBlock: return "bwd_enter_block";
    case ProfStage::BwdEmbed: return "bwd_embed";
    case ProfStage::Count: break;
  }
  return "?";
}

const char* prof_kind_name(ProfKind k) {
  switch (k) {
    case ProfKind::None: return "-";
    case ProfKind::Full: return "full";
    case ProfKind::Sparse: return "sparse";
    case ProfKind::Count: break;
  }
  return "?";
}

double ProfileReport::ms(ProfStage s, ProfKind k) const {
  for (const StageTiming& r : rows)
    if (r.stage == s && r.kind == k) return r.ms;
  return 0;
}

std::vector<double> ProfileReport::flat_ms() const {
  std::vector<double> v(size_t(kProfSlots), 0.0);
  for (const StageTiming& r : rows) v[size_t(int(r.stage) * kProfKinds + int(r.kind))] = r.ms;
  return v;
}

std::string ProfileReport::table() const {
  std::string s;
  char line[160];
  const bool steps = backwards > 0;  // training: a forward + its backward
  std::snprintf(line, sizeof line, "%-17s %-7s %12s %10s %7s\n", "stage", "blocks", steps ? "ms/step" : "ms/forward",
                steps ? "laps/step" : "laps/fwd", "%");
  s += line;
  for (const StageTiming& r : rows) {
    std::snprintf(line, sizeof line, "%-17s %-7s %12.3f %10.1f %6.1f%%\n",
                  prof_stage_name(r.stage), prof_kind_name(r.kind), r.ms, r.calls,
                  total_ms > 0 ? 100.0 * r.ms / total_ms : 0.0);
    s += line;
  }
  std::snprintf(line, sizeof line, "%-17s %-7s %12.3f   (%lld %s%s)\n", "total", "", total_ms, (long long)forwards,
                steps ? "step" : "forward", forwards == 1 ? "" : "s");
  s += line;
  return s;
}

// ---------------------------------------------------------------- state
struct StageProfiler::State {
  Device dev = Device::cpu();
  // Accumulated since reset: ms and laps per slot, forwards.
  std::array<double, kProfSlots> ms{};
  std::array<int64_t, kProfSlots> laps{};
  int64_t forwards = 0, backwards = 0;
  // The forward in progress (its laps count only once end_forward() says it finished).
  bool open = false;
  // CPU: the previous mark and the open forward's laps.
  std::chrono::steady_clock::time_point last{};
  std::array<double, kProfSlots> cur_ms{};
  std::array<int64_t, kProfSlots> cur_laps{};
#ifdef OSP_HAVE_CUDA
  // CUDA: a pool of events; used = how many are recorded and not yet resolved. A pending lap is
  // the interval between two recorded events.
  struct Pending {
    int from, to, slot;
  };
  std::vector<cudaEvent_t> events;
  int used = 0, last_ev = -1;
  std::vector<Pending> pending;
  size_t open_from = 0;  // first pending lap of the open forward

  int record() {
    if (used == int(events.size())) {
      cudaEvent_t e;
      OSP_CUDA_CHECK(cudaEventCreate(&e));
      events.push_back(e);
    }
    OSP_CUDA_CHECK(cudaEventRecord(events[size_t(used)], 0));
    return used++;
  }
  void resolve() {
    if (used == 0) return;
    OSP_CUDA_CHECK(cudaEventSynchronize(events[size_t(used - 1)]));
    for (const Pending& p : pending) {
      float t = 0;
      OSP_CUDA_CHECK(cudaEventElapsedTime(&t, events[size_t(p.from)], events[size_t(p.to)]));
      ms[size_t(p.slot)] += double(t);
      laps[size_t(p.slot)] += 1;
    }
    pending.clear();
    used = 0;
    last_ev = -1;
  }
  ~State() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);  // no throw from a destructor
  }
#else
  void resolve() {}
#endif
};

// A forward that threw (or is still running, e.g. report() from a block hook) is not counted.
void StageProfiler::drop_open(State& s) {
  if (!s.open) return;
#ifdef OSP_HAVE_CUDA
  s.pending.resize(s.open_from);
#endif
  s.open = false;
}

StageProfiler::StageProfiler() = default;

bool StageProfiler::env_enabled() { return engine_settings().profile; }

void StageProfiler::set_enabled(bool on, Device dev) {
  if (on) {
#ifndef OSP_HAVE_CUDA
    OSP_CHECK(!dev.is_cuda(), "StageProfiler: device ", dev.name(),
              " needs the CUDA build");
#endif
    if (!st_ || st_->dev != dev) {
      st_ = std::make_shared<State>();
      st_->dev = dev;
    }
  }
  on_ = on;
}

void StageProfiler::begin_impl() {
  State& s = *st_;
#ifdef OSP_HAVE_CUDA
  if (s.dev.is_cuda()) {
    // A forward that threw never ended: drop its laps.
    if (s.open) s.pending.resize(s.open_from);
    // Bound the event pool when nobody asks for reports (e.g. a long sampling loop).
    if (s.used > (1 << 16)) s.resolve();
    s.open_from = s.pending.size();
    s.last_ev = s.record();
    s.open = true;
    return;
  }
#endif
  s.cur_ms.fill(0);
  s.cur_laps.fill(0);
  s.open = true;
  s.last = std::chrono::steady_clock::now();
}

void StageProfiler::lap_impl(ProfStage stage, ProfKind kind) {
  State& s = *st_;
  const int slot = int(stage) * kProfKinds + int(kind);
  OSP_CHECK(s.open, "StageProfiler: lap(", prof_stage_name(stage), ") outside a forward or backward");
#ifdef OSP_HAVE_CUDA
  if (s.dev.is_cuda()) {
    const int e = s.record();
    s.pending.push_back({s.last_ev, e, slot});
    s.last_ev = e;
    return;
  }
#endif
  const auto now = std::chrono::steady_clock::now();
  s.cur_ms[size_t(slot)] += std::chrono::duration<double, std::milli>(now - s.last).count();
  s.cur_laps[size_t(slot)] += 1;
  s.last = now;
}

void StageProfiler::end_impl(bool forward) {
  State& s = *st_;
  OSP_CHECK(s.open, "StageProfiler: end_forward() / end_backward() without its begin");
  s.open = false;
  (forward ? s.forwards : s.backwards) += 1;
  if (s.dev.is_cuda()) return;  // the pending laps are resolved by report()
  for (size_t i = 0; i < s.ms.size(); ++i) {
    s.ms[i] += s.cur_ms[i];
    s.laps[i] += s.cur_laps[i];
  }
}

ProfileReport StageProfiler::report() {
  ProfileReport r;
  if (!st_) return r;
  State& s = *st_;
  drop_open(s);
  s.resolve();
  r.forwards = s.forwards;
  r.backwards = s.backwards;
  if (s.forwards == 0) return r;
  const double f = double(s.forwards);
  for (int st = 0; st < kProfStages; ++st)
    for (int k = 0; k < kProfKinds; ++k) {
      const size_t slot = size_t(st * kProfKinds + k);
      if (s.laps[slot] == 0) continue;
      StageTiming t{ProfStage(st), ProfKind(k), s.ms[slot] / f, double(s.laps[slot]) / f};
      r.rows.push_back(t);
      r.total_ms += t.ms;
    }
  return r;
}

void StageProfiler::reset() {
  if (!st_) return;
  drop_open(*st_);
  st_->resolve();
  st_->ms.fill(0);
  st_->laps.fill(0);
  st_->forwards = 0;
  st_->backwards = 0;
}

}  // namespace osp::model
