// Per-stage timing of DiT::forward (off by default; on with OSP_PROFILE=1 or
// DiT::set_profiling(true)).
//
// The forward is cut into consecutive laps: begin_forward() marks the start, and every
// lap(stage, kind) says "the time since the previous mark belongs to (stage, kind)". So the
// stages tile the whole forward without gaps and their sum is the forward's time. On CUDA a mark
// is a cudaEvent recorded on the ops' stream (the legacy default stream, which NCCL also uses):
// nothing synchronises inside the forward, and a lap measures device time between marks (host
// work that leaves the device idle shows up in the lap that follows it). report() synchronises
// and resolves the recorded events. On the CPU a mark is a steady_clock reading.
//
// When off, lap() is one inlined branch on a bool.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/device.h"

namespace osp::model {

enum class ProfStage : uint8_t {
  PatchEmbed,    // patchify + patch GEMM (+ the f32 copy of the embedded tokens)
  TimeEmbed,     // sinusoid + time MLP on the host, e0 to the device
  TextEmbed,     // context padding, text MLP (+ its one HiF8/FP8 quantization)
  SpSetup,       // sp.setup (plan maps; cached after the first forward of a plan)
  ScatterInput,  // sp.scatter_input
  EnterBlock,    // sp.enter_block (layout change / all-to-all) + contiguous
  ModNorm,       // block modulation (+ e0) and LN(x)·(1 + scale1) + shift1
  QKV,           // self-attention q, k, v linears
  NormRope,      // RMS norm of q, k and RoPE (one fused op each)
  Quant,         // HiF8 / FP8 quantization of linear inputs and of attention q, k, v
  SelfAttnComm,  // sp.self_attention around the attention kernel: Ulysses all-to-alls, copies
  SelfAttn,      // the self-attention kernel (called by sp.self_attention through AttentionFn)
  OProj,         // self-attention o linear + gated residual (fused with norm3 of the cross-attention)
  CrossAttn,     // q linear, context k/v linears, norms, attention, o linear, residual (+ the FFN's
                 // LN·(1 + scale2) + shift2, fused with it)
  FFN,           // ffn.0 + GELU, ffn.2, gated residual
  Head,          // head modulation + LN + head GEMM (on this rank's rows)
  GatherOutput,  // sp.gather_output of the head output
  Unpatchify,    // unpatchify into [B, out_dim, F, H, W]
  // training: DiT::backward (one per forward_train)
  BwdHead,       // unpatchify / gather_output adjoints + head backward
  Recompute,     // activation checkpointing: the block's forward again, with its tape
  BwdFFN,        // gate2 residual, ffn.2, GELU, ffn.0, LN·(1 + scale2) + shift2 backward
  BwdCrossAttn,  // cross-attention (o, attention, q/k/v, norms) + norm3 backward
  BwdOProj,      // gate1 residual + self-attention o linear backward
  BwdSelfAttn,   // the self-attention backward kernel (sp.self_attention_backward) + dQKV quant
  BwdNormRope,   // RoPE and q/k RMS-norm backward
  BwdQKV,        // q, k, v linears backward (dX summed)
  BwdModNorm,    // LN·(1 + scale1) + shift1 backward and the modulation gradient
  BwdEnterBlock, // sp.enter_block_backward (layout adjoint) + contiguous
  BwdEmbed,      // scatter_input adjoint, patch, time and text embedding backward
  Count
};
// Which blocks a stage ran in: None (outside the blocks), Full or Sparse (token or group).
enum class ProfKind : uint8_t { None, Full, Sparse, Count };

const char* prof_stage_name(ProfStage s);
const char* prof_kind_name(ProfKind k);  // "-", "full", "sparse"

constexpr int kProfStages = int(ProfStage::Count);
constexpr int kProfKinds = int(ProfKind::Count);
constexpr int kProfSlots = kProfStages * kProfKinds;  // flat index: stage * kProfKinds + kind

struct StageTiming {
  ProfStage stage;
  ProfKind kind;
  double ms = 0;     // per forward (mean over the profiled forwards)
  double calls = 0;  // laps per forward
};

struct ProfileReport {
  int64_t forwards = 0;          // forwards profiled since the last reset
  int64_t backwards = 0;         // training backwards among them (then the unit is a step)
  double total_ms = 0;           // per forward: sum of every stage
  std::vector<StageTiming> rows;  // every (stage, kind) with at least one lap, in enum order

  // ms per forward of (stage, kind); 0 when it never ran.
  double ms(ProfStage s, ProfKind k) const;
  // Flat vector of kProfSlots ms-per-forward values (index stage * kProfKinds + kind), e.g. to
  // gather over ranks.
  std::vector<double> flat_ms() const;
  // Fixed-width text table: stage, kind, ms/forward, laps/forward, % of the total.
  std::string table() const;
};

class StageProfiler {
 public:
  StageProfiler();
  // OSP_PROFILE=1 (or any value but "" and "0"), read once per process.
  static bool env_enabled();

  void set_enabled(bool on, Device dev);
  bool enabled() const { return on_; }

  // Marks the start of a forward (resolves earlier events first when very many are pending).
  void begin_forward() {
    if (on_) begin_impl();
  }
  // The time since the previous mark belongs to (s, k).
  void lap(ProfStage s, ProfKind k) {
    if (on_ && !paused_) lap_impl(s, k);
  }
  // Counts one finished forward (after its last lap).
  void end_forward() {
    if (on_) end_impl(true);
  }
  // A backward's laps (training: after the forward it belongs to; counted with it, "per step").
  void begin_backward() {
    if (on_) begin_impl();
  }
  void end_backward() {
    if (on_) end_impl(false);
  }
  // While paused, laps are not recorded and the time runs on into the next lap after it (the
  // checkpoint recompute of a block is one Recompute lap, not its forward stages).
  void set_paused(bool p) { paused_ = p; }

  // Waits for the device, resolves every recorded lap and returns the per-forward means since
  // the last reset (empty report when nothing was profiled).
  ProfileReport report();
  void reset();

 private:
  struct State;
  void begin_impl();
  void lap_impl(ProfStage s, ProfKind k);
  void end_impl(bool forward);
  static void drop_open(State& s);

  bool on_ = false, paused_ = false;
  std::shared_ptr<State> st_;
};

}  // namespace osp::model
