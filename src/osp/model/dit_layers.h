// The layers of the Wan2.1 / OSP-Next DiT (wan-spec §2.2–2.4): each owns its named parameters
// (compute copy + F32 gradient in training), runs its forward — the one path shared by inference
// and training — and, beside it, its backward (llm.c style: shapes in comments, steps of the
// backward the forward's in reverse).
//
// Inference passes no tape: activations live in reused workspaces (Ctx::ws) exactly as before the
// layers existed. Training passes a Tape: every activation the backward needs is a fresh tensor
// recorded under its name, and the training numerics apply (activations fused into a GEMM in
// inference — GELU, SiLU — run as their own ops to keep the pre-activation; attention also
// returns its log-sum-exp). On the CPU both give the same bits.
//
// HiF8 (osp-next-spec §5.5–5.7; QAT when training): every block linear quantizes its input and
// weight, Q(·, 15), and its incoming gradient, Q(g, 224): dX = G_q·W_q, dW += G_qᵀ·X_q,
// db += ΣG_q; q, k, v entering both attention cores are quantized (15) forward and dq, dk, dv
// (224) backward. The embeddings, the head, norms and modulation are not quantized.
//
// dtypes (ops/backward.h): on CUDA activations BF16 (the residual stream F32), gradients F32 or
// BF16 as the ops allow, parameter gradients F32; on the CPU everything F32.
//
// LoRA (osp-next-spec §8.2, model/lora.h): a Linear may carry an un-merged adapter,
//   y = base(x) + s·(x·Aᵀ)·Bᵀ,   s = strength·α/r,   A [r, in], B [out, r]
// with its own forward/backward (LoraBranch). The branch reads the FLOAT input x: with HiF8 the
// base GEMM sees Q(x, 15) and Q(W, 15) but the adapter matmuls are plain (PEFT wraps the HiF8
// linear as its base layer), and its incoming gradient is dy itself, not Q(dy, 224). With a tape
// and HiF8, the layers then also record the float linear inputs ("<name>.f", Ctx::lora_inputs).
// Backward of the branch (u = x·Aᵀ recomputed):
//   gB += s·dyᵀ·u,   du = s·dy·B,   gA += duᵀ·x,   dx += du·A
// Parameter gradients that are undefined (a frozen base, DiTOptions::train_base = false) are
// neither allocated nor computed.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "osp/core/param.h"
#include "osp/core/tensor.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit_config.h"
#include "osp/model/profile.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"

namespace osp::model {

// None: bf16 (CUDA) / fp32 (CPU). HiF8: fake quantization, float GEMMs. FP8: the same HiF8
// numerics with real E4M3 GEMMs (quant/fp8.h) for every block linear.
enum class DiTQuant : uint8_t { None, HiF8, FP8 };

namespace layers {

// Named activations a layer's forward records for its backward (training only).
struct Tape {
  std::map<std::string, Tensor> t;
  const Tensor& at(const std::string& name) const;
  // The recorded tensor or null.
  const Tensor* find(const std::string& name) const;
  // Forgets the named activations (and their LoRA float copies "<name>.f"); absent names are
  // fine. A backward drops what its finished stages read so the rest runs with less memory.
  void drop(std::initializer_list<const char*> names);
};

// The run context of one forward/backward: device and dtypes, numerics, the reused inference
// workspaces, the tape (training) and the profiler.
struct Ctx {
  Device dev;
  DType act = DType::F32;  // activation dtype of GEMM inputs/outputs (BF16 on CUDA)
  DiTQuant quant = DiTQuant::None;
  bool fp8_fallback = false;  // FP8 mode: some block linear runs the fake-quant GEMM
  bool fp8_attention = true;
  bool training = false;  // the training numerics (see the file comment)
  // With a tape and HiF8/FP8: also record the float input of every linear as "<name>.f" (the
  // LoRA branches' backward needs it; the tape otherwise keeps only Q(x)).
  bool lora_inputs = false;
  std::map<std::string, Tensor>* ws = nullptr;
  std::map<std::string, quant::Fp8Tensor>* ws8 = nullptr;
  Tape* tape = nullptr;
  // Training with activation checkpointing and DiTOptions::keep_attention: this block's
  // self-attention core results, "o" [B, n, H, D] (act) and "lse" [B, H, n] F32. Empty: the
  // forward computes them into fresh tensors and stores them here; filled: the checkpoint
  // recompute takes them (and empties this) instead of running the attention core again — the
  // same bits, the core being deterministic.
  Tape* attn_keep = nullptr;
  // Training, unquantised (DiTOptions::ffn_chunks > 1): with a tape the FFN records only its
  // input and runs in this many row chunks; its backward recomputes each chunk's fc1 + GELU
  // (one extra fc1 GEMM per block) instead of the tape holding the two [rows, ffn] activations.
  int ffn_chunks = 0;
  StageProfiler* prof = nullptr;
  ProfKind pk = ProfKind::None;  // the profiled block's kind

  // A workspace reused across calls (never recorded).
  Tensor& scratch(const std::string& name, const Shape& shape, DType dt);
  // A forward activation: the workspace `ws_name` without a tape, a fresh tensor recorded under
  // `name` in the tape with one.
  Tensor& buf(const std::string& name, const std::string& ws_name, const Shape& shape, DType dt);
  // An activation only the next linear(s) read: with HiF8 the tape records their quantized
  // input instead (quant_input), so the float one stays a workspace; otherwise as buf().
  Tensor& linear_input(const std::string& name, const std::string& ws_name, const Shape& shape,
                       DType dt) {
    return tape && quant == DiTQuant::HiF8 ? scratch(ws_name, shape, dt)
                                           : buf(name, ws_name, shape, dt);
  }
  void lap(ProfStage s) const { prof->lap(s, pk); }
  // A lap only where quantization laps cut a stage (HiF8 / FP8).
  void split(ProfStage s) {
    if (quant != DiTQuant::None) prof->lap(s, pk);
  }
  bool hif8_qat() const { return quant == DiTQuant::HiF8; }
};

// A parameter: compute copy on the device and its F32 gradient (training).
struct Param {
  Tensor v, g;
  Tensor* grad() { return g.defined() ? &g : nullptr; }  // null: frozen (not computed)
};

// Collects named parameters (Wan names, checkpoint shapes) into a ParamTable: those with a value,
// and in training those whose value is released but whose gradient exists.
struct ParamSink {
  const std::map<std::string, Shape>& shapes;
  bool with_grads;
  ParamTable& out;
  void add(const std::string& name, Tensor& value, Tensor& grad);
  void add(const std::string& name, Param& p) { add(name, p.v, p.g); }
};

// A linear's input in the form(s) the linears need: x itself (None), Q(x, 15) (HiF8 and
// FP8-mode fallbacks) and/or the E4M3 operand (FP8).
struct LinIn {
  const Tensor* x = nullptr;             // the GEMM input (fake-quantized in HiF8 mode)
  const quant::Fp8Tensor* xq = nullptr;  // FP8 mode
  const Tensor* xf = nullptr;            // the float input before quantization (LoRA); null: *x
  const Tensor& lora_x() const { return xf ? *xf : *x; }
};
// Prepares x as the input of block linears (workspaces named after `name`; with a tape the GEMM
// input is recorded under `name`). x must outlive the returned LinIn.
LinIn quant_input(Ctx& c, const Tensor& x, const std::string& name);

// An un-merged LoRA adapter on a Linear (see the file comment): A [r, in], B [out, r] in the
// linear's activation dtype on its device (F32 on the CPU); gA, gB F32 gradients (training).
struct LoraBranch {
  Tensor A, B, gA, gB;
  float scale = 0;       // strength·α/r
  bool enabled = true;   // off: the linear is its base (the KL reference model)
  bool active() const { return enabled && A.defined(); }
  // y += s·(x·Aᵀ)·Bᵀ     x [..., in] (any float dtype), y [..., out]
  void forward(const Tensor& x, Tensor& y) const;
  // dy [..., out] → gA, gB (+=, when defined), dx (+=, when not null) [..., in]
  void backward(const Tensor& x, const Tensor& dy, Tensor* dx);
};

// y[M, N] = x[M, K]·Wᵀ + b.
struct Linear {
  Tensor w, b;    // compute copies on the device ([N, K], [N]); w undefined when fp8
  Tensor gw, gb;  // training: F32 gradients
  // HiF8 training: Q(w, 15), recomputed from w on every forward (refresh_quantized_weight);
  // inference keeps the cached Q(W, 15) in w itself, quantized once at bind.
  Tensor wfq;
  quant::Fp8Tensor wq;  // FP8 mode: E4M3 weight codes + 1/s (codes undefined otherwise)
  bool block = false;   // a block linear (HiF8: input, weight and incoming gradient quantized)
  LoraBranch lora;      // optional adapter (undefined A: none)

  bool fp8() const { return wq.codes.defined(); }
  const Tensor& weight() const { return wfq.defined() ? wfq : w; }
  void refresh_quantized_weight(Device dev);
  void params(ParamSink& s, const std::string& prefix);
  size_t bytes() const;

  void forward(const Tensor& x, Tensor& out, ops::Act act = ops::Act::None) const;
  void forward(const LinIn& in, Tensor& out, ops::Act act = ops::Act::None) const;
  // x: the input the forward GEMM saw (Q(x) in HiF8); dy = dL/dy (any float dtype on the
  // device). G = Q(dy, 224) for HiF8 block linears, else dy in the GEMM's dtype;
  // dx = G·W (overwritten, when wanted), gw += Gᵀ·x, gb += ΣG (when defined). With an active
  // LoRA, xf is its float input (null: x) and the branch's backward follows (dx +=).
  void backward(const Ctx& c, const Tensor& x, const Tensor& dy, Tensor* dx,
                const Tensor* xf = nullptr);
  // The dtype in which a caller may hand backward its dy without changing a bit of the result:
  // the GEMM's (c.act) — backward converts to it anyway — unless dy is HiF8-quantized (a block
  // linear under QAT quantizes from the F32 value) or a LoRA branch reads it: F32 then.
  DType grad_dtype(const Ctx& c) const { return (block && c.hif8_qat()) || lora.active() ? DType::F32 : c.act; }
};

// Self-attention of block i on h [B, n, d] (this block's layout):
//   y = o(attn(rope(RMS(q(h))), rope(RMS(k(h))), v(h)))     [B, n, d]
// attention through the sequence-parallel layer (full or packed Skiparse sub-sequences).
struct SelfAttention {
  Linear q, k, v, o;
  Param norm_q, norm_k;  // F32 [d] (undefined without qk_norm)

  void params(ParamSink& s, const std::string& prefix);
  size_t bytes() const;
  void forward(Ctx& c, const DiTConfig& cfg, int i, const Tensor& h, Tensor& y,
               parallel::SequenceParallel& sp) const;
  // dy = dL/dy → dh = dL/dh (F32 [B, n, d], overwritten).
  void backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, int i, const Tensor& dy,
                Tensor& dh, parallel::SequenceParallel& sp);
};

// Cross-attention on h3 [B, n, d] against the text context (the k/v linears' input, Q(ctx) in
// HiF8) ctx [B, Lt, d]:  y = o(attn(RMS(q(h3)), RMS(k(ctx)), v(ctx)))     [B, n, d]
struct CrossAttention {
  Linear q, k, v, o;
  Param norm_q, norm_k;

  void params(ParamSink& s, const std::string& prefix);
  size_t bytes() const;
  void forward(Ctx& c, const DiTConfig& cfg, const Tensor& h3, const LinIn& ctx, Tensor& y) const;
  // dy → dh3 (F32 [B, n, d], overwritten), dctx (+=, F32 [B, Lt, d]). ctx: the k/v linears'
  // input as in forward.
  void backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, const LinIn& ctx,
                const Tensor& dy, Tensor& dh3, Tensor& dctx);
};

// y = fc2(gelu_tanh(fc1(h)))     [B, n, d] → [B, n, ffn_dim] → [B, n, d]
struct FFN {
  Linear fc1, fc2;  // Wan's ffn.0 and ffn.2

  void params(ParamSink& s, const std::string& prefix);
  size_t bytes() const;
  void forward(Ctx& c, const DiTConfig& cfg, const Tensor& h, Tensor& y) const;
  void backward(const Ctx& c, const Tape& tp, const Tensor& dy, Tensor& dh);
};

// One transformer block (wan-spec §2.2) on the hidden state x [B, n, d] F32, in place:
//   m = modulation + e0[b] → (shift1, scale1, gate1, shift2, scale2, gate2)
//   x += SelfAttn(LN(x)·(1 + scale1) + shift1) · gate1
//   x += CrossAttn(LN3(x), ctx)
//   x += FFN(LN(x)·(1 + scale2) + shift2) · gate2
struct Block {
  Param modulation;  // F32 [6, d]
  SelfAttention self_attn;
  CrossAttention cross_attn;
  Param norm3_w, norm3_b;  // F32 [d] (undefined without cross_attn_norm)
  FFN ffn;

  void params(ParamSink& s, const std::string& prefix);
  size_t bytes() const;
  std::vector<Linear*> linears();
  // Every tensor the inference forward reads from this block (modulation, norms, each linear's
  // w, b and FP8 codes + scale), in a fixed order, defined or not (a weight-streaming owner
  // binds and releases them: model/dit_block_stream.h). Not the training-only tensors (grads,
  // QAT copies) nor LoRA branches.
  std::vector<Tensor*> weight_tensors();
  // The block linears under their module names relative to the block ("self_attn.q", ...,
  // "ffn.0", "ffn.2").
  std::vector<std::pair<std::string, Linear*>> named_linears();
  void forward(Ctx& c, const DiTConfig& cfg, int i, Tensor& x, const LinIn& ctx, const Tensor& e0,
               parallel::SequenceParallel& sp) const;
  // dx: dL/d(block output) [B, n, d] F32 in, dL/d(block input) out. de0 (+=) [B, 6, d] F32,
  // dctx (+=) [B, Lt, d] F32; parameter gradients (+=).
  // (tp: the block's tape, emptied stage by stage as the backward passes: FFN, then cross-attention)
  void backward(const Ctx& c, Tape& tp, const DiTConfig& cfg, int i, const LinIn& ctx,
                Tensor& dx, Tensor& de0, Tensor& dctx, parallel::SequenceParallel& sp);
};

// Timestep → e [B, d] (head modulation) and e0 [B, 6, d] (block modulation), all fp32:
//   e = fc2(silu(fc1(sinusoid(t)))), e0 = proj(silu(e))     (sinusoid in fp64 on the host)
struct TimeEmbedding {
  Linear fc1, fc2, proj;  // time_embedding.0, .2, time_projection.1

  void params(ParamSink& s);
  size_t bytes() const;
  // sinus [B, freq_dim] F32 (time_sinusoid; any device) → e [B, d], e0 [B, 6, d] F32.
  void forward(Ctx& c, const DiTConfig& cfg, const Tensor& sinus, Tensor& e, Tensor& e0) const;
  // de [B, d] (dL/de, consumed), de0 [B, 6, d].
  void backward(const Ctx& c, const Tape& tp, Tensor& de, const Tensor& de0);
};

// The sinusoidal embedding of one timestep per sample, computed in fp64 on the host (wan-spec
// §2.6): [B, freq_dim] F32 on the CPU, cos in the first half, sin in the second.
Tensor time_sinusoid(const DiTConfig& cfg, const std::vector<float>& t);

// Text context → ctx [B, Lt, d]: zero-pad to text_len, fc2(gelu_tanh(fc1(·))).
struct TextEmbedding {
  Linear fc1, fc2;  // text_embedding.0, .2

  void params(ParamSink& s);
  size_t bytes() const;
  // context [B, Lc, text_dim] (any device) → out [B, Lt, d] (act)
  void forward(Ctx& c, const DiTConfig& cfg, const Tensor& context, Tensor& out) const;
  // dctx [B, Lt, d] → dcontext [B, Lc, text_dim] F32 when wanted.
  void backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, int64_t Lc,
                const Tensor& dctx, Tensor* dcontext);
};

// Patch embedding (Conv3d as im2col + GEMM): x [B, in_dim, F, H, W] → tokens [B, N, d].
struct PatchEmbedding {
  Linear proj;  // patch_embedding, weight [d, in_dim·pt·ph·pw]

  void params(ParamSink& s);
  size_t bytes() const;
  void forward(Ctx& c, const DiTConfig& cfg, const Tensor& x5, const sparse::Grid& grid,
               Tensor& out) const;
  // dtok [B, N, d] → dx [B, in_dim, F, H, W] F32 when wanted.
  void backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, const Tensor& dtok,
                Tensor* dx, const Shape& xshape);
};

// Head on this rank's rows: y = proj(LN(x)·(1 + scale) + shift), (shift, scale) =
// modulation + e[b]     x [B, n, d] F32 → y [B, n, out_dim·patch_volume] F32
struct Head {
  Param modulation;  // F32 [2, d]
  Linear proj;       // head.head

  void params(ParamSink& s);
  size_t bytes() const;
  void forward(Ctx& c, const DiTConfig& cfg, const Tensor& x, const Tensor& e, Tensor& y) const;
  // dy → dx (F32 [B, n, d], overwritten); de (+=, [B, d]).
  void backward(const Ctx& c, const Tape& tp, const DiTConfig& cfg, const Tensor& x,
                const Tensor& dy, Tensor& dx, Tensor& de);
};

}  // namespace layers
}  // namespace osp::model
