// The Wan2.1 / OSP-Next diffusion transformer (wan-spec §2.2, osp-next-spec §2.3–2.6, §3.6–3.8).
//
// One device-generic forward through ops:: — on the CPU everything is fp32; on CUDA the
// precision map of wan-spec §2.6: bf16 weights and activations for the patch/text embeddings and
// every block linear, fp32 residual stream, fp32 modulation, norms and RoPE angles, bf16
// attention with fp32 softmax. The token layout (full / Skiparse token / group, padding, ranks)
// is entirely the business of parallel::SequenceParallel; the DiT only calls its hooks.
//
// The layers (patch/time/text embeddings, blocks with self-attention, cross-attention and FFN,
// head) live in model/dit_layers.h: they own the named parameters and run forward (one path for
// inference and training) and backward. Training: forward_train records what backward needs
// (block inputs with activation checkpointing, else every block's tape), backward accumulates F32
// parameter gradients; train/flow_matching.h puts the loss on top.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/copy_stream.h"
#include "osp/core/param.h"
#include "osp/core/settings.h"
#include "osp/core/tensor.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit_config.h"
#include "osp/model/dit_layers.h"
#include "osp/model/lora.h"
#include "osp/model/profile.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"

namespace osp::model {

class DiT;

struct DiTOptions {
  Device device = Device::cpu();
  // HiF8 fake quantization (osp-next-spec §5.5–5.8): inputs and weights of every block linear
  // and the attention q/k/v (after norms and RoPE) go through Q(·, 15). Weights are quantized
  // once at bind time (with `train`: from the current weight on every forward, and the
  // gradients are quantized too — QAT, see dit_layers.h).
  //
  // FP8 (Hopper execution of the HiF8 model): every block linear (self/cross q, k, v, o, FFN 1
  // and 2) quantizes its input per tensor to E4M3(HiF8(x·s)) and runs quant::fp8_linear against
  // a weight quantized ONCE at bind time (E4M3(HiF8(w·s)), amax → 15; equal to HiF8 mode's
  // Q(W, 15) except the tiny values fp8.h lists). Self-attention q/k/v get Q(·, 15) as in HiF8
  // mode and, with fp8_attention (default), run as FP8 attention (quant::hif8_attention_fp8:
  // the E4M3 codes of exactly those values, cuDNN's fused FP8 SDPA; its softmax probabilities
  // are rounded to E4M3 — the one extra rounding vs HiF8 mode, measured in
  // tests/quant/fp8_attention_gpu_test). Cross-attention (512 keys), embeddings and the head
  // stay bf16. Only the FP8 weight copy is kept on the
  // device. On CUDA a linear whose shape breaks cuBLASLt's FP8 rules (K % 16, N % 8) falls back
  // to HiF8 mode's fake-quant bf16 GEMM; bind logs that once (Info). On the CPU, FP8 runs
  // fp8_linear's CPU reference (f32 GEMM of the dequantized E4M3 operands) — slow, for tests.
  DiTQuant quant = DiTQuant::None;
  // FP8 mode only: self-attention in FP8 (true) or bf16 on the HiF8-rounded q/k/v (false).
  bool fp8_attention = true;
  // Training (DiT::forward_train / backward, train/flow_matching.h): allocates an F32 gradient
  // for every parameter (DiT::parameters()) and keeps the compute copies writable; with
  // quant == HiF8 it is quantization-aware training (osp-next-spec §5.6–5.7): Q(W, 15) is
  // recomputed from the current weight on every forward instead of once at bind. FP8 is
  // inference-only.
  bool train = false;
  // Training: keep only each block's input and recompute the block's forward (with a tape)
  // just before its backward (on by default); off keeps every block's tape from the forward.
  // Both give identical gradients.
  bool activation_checkpointing = true;
  // Training with activation checkpointing: also keep each block's self-attention output and
  // log-sum-exp from the forward ([B, n, H, D] act + [B, H, n] F32 per block: 100 MB per block
  // of the 1.3B model at 832×480×81), so the recompute before each block's backward skips the
  // attention core — the largest part of a video-sized block's FLOPs. Identical gradients.
  bool keep_attention = false;
  // Training with activation checkpointing: the saved block inputs ([B, n, d] F32 per block:
  // 5.6 GiB for the 1.3B model at 832×480×81) live in pinned host memory, not on the device. The
  // forward copies each block's input out on a copy stream beside the compute (core/
  // copy_stream.h); the backward brings block i − 1's back while block i is recomputed and
  // differentiated. Two device staging buffers of one block's input each; the same bits. On
  // the CPU it only adds copies (its memory is host memory anyway).
  bool offload_block_inputs = false;
  // Training: the FFN's tape in row chunks (layers::Ctx::ffn_chunks; 0 or 1 = off). The two
  // [rows, ffn] activations of a block's tape (2·rows·ffn_dim act) and the FFN backward's two
  // gradient buffers shrink to one chunk's rows, for one more fc1 GEMM per block in the
  // backward. Not with HiF8 QAT (its per-tensor scales would change with the chunking: refused).
  int ffn_chunks = 0;
  // Training: false freezes the base model — no gradient is allocated or computed for any base
  // parameter, only for attached LoRA adapters (attach_lora; Mix-GRPO). A HiF8 base then keeps
  // its cached Q(W, 15) as in inference (the weights never change).
  bool train_base = true;
  // Called by bind once block i's weights are on the device, before block i + 1 is bound (block
  // streaming moves them to host memory here — model/dit_block_stream.h — so binding never holds
  // more than one block on the device). Inference only.
  std::function<void(DiT&, int block)> on_block_bound;
  // CUDA graphs (core/cuda_graph.h) for the inference forward; default: OSP_CUDA_GRAPHS (off).
  // DiT::forward runs the first call of a shape eagerly (autotuning, workspaces), captures the
  // second and replays the graph from then on, refilling its input buffers (x, the time
  // sinusoid, the context) before each replay; the output is a copy of the graph's. The same
  // bits as without. Used where the forward is one device stream with nothing per call on the
  // host: a CUDA model bound without `train`, one rank, no step cache, no block or forward hooks
  // (block streaming), no stage profiling, no --max-vram cap (set_cuda_memory_limit: a graph keeps
  // its pool reserved); elsewhere the forward runs as always. A capture that
  // fails (some op synchronises or copies from the host) is logged once and that shape runs
  // eagerly.
  bool cuda_graphs = engine_settings().cuda_graphs;
};

// Per-forward FLOPs (multiply-add = 2) of the model of wan-spec §7.1 for B samples on `grid`
// (the token grid after patchify) with the given block kinds; sparse blocks count their
// self-attention core over the P² sub-sequences (real tokens only). Embeddings and norms are
// included as GEMMs where they are GEMMs.
double dit_forward_flops(const DiTConfig& cfg, const sparse::Grid& grid,
                         const std::vector<sparse::BlockKind>& kinds, int P, int64_t B);

class DiT {
 public:
  DiT() = default;

  // Wan names and shapes of every tensor the config needs (wan-spec §3.2).
  static std::map<std::string, Shape> expected_shapes(const DiTConfig& cfg);

  // Binds weights by Wan name: weights[prefix + name] (any float dtype, any device; converted
  // and copied to opt.device in the dtype of the precision map). Missing and mis-shaped tensors
  // are reported together in one osp::Error.
  static DiT bind(const DiTConfig& cfg, const std::map<std::string, Tensor>& weights,
                  const DiTOptions& opt = {}, const std::string& prefix = "");

  const DiTConfig& config() const { return cfg_; }
  const DiTOptions& options() const { return opt_; }
  const std::vector<sparse::BlockKind>& block_kinds() const { return kinds_; }
  int sparse_ratio() const { return P_; }
  // Overrides the attention plan (e.g. run a hybrid checkpoint with full attention, or the
  // reverse): one kind per block, validated by the sequence-parallel plan at forward time.
  void set_block_kinds(const std::vector<sparse::BlockKind>& kinds, int P);

  // x [B, in_dim, F, H, W] or [in_dim, F, H, W] (any float dtype, any device); t one timestep
  // per sample (float, 0..1000); context [B, L, text_dim] or [L, text_dim] with L ≤ text_len
  // (zero-padded to text_len, no key mask). Returns the velocity [B, out_dim, F, H, W] (or
  // without B, as x) in F32 on the model's device. H, W must be multiples of the patch size.
  // Each rank runs the (per-token) head on its own rows of the last block and sp.gather_output
  // moves the f32 head output (out_dim·patch_volume channels) instead of the dim-wide state.
  //
  // Step caching (sample/step_cache.h): with a BlockCache, forward asks cache->run_blocks(e0)
  // after the time embedding; true runs the blocks as always and stores the residual of the
  // whole block stack (last block's output − block 0's input), false skips every block and feeds
  // the head block 0's input + the stored residual. Everything else (embeddings, head, layouts)
  // is this same forward. Inference only.
  struct BlockCache {
    // e0 [B, 6, dim] F32 on the model's device, the same on every rank → run the blocks?
    // Unset: always run them.
    std::function<bool(const Tensor& e0)> run_blocks;
    // x_last − x_in, [B, n_local, dim] F32 in the last block's (rank-local) layout, one row per
    // sample (cond and uncond keep their own). Written by a forward that runs the blocks.
    Tensor residual;
    int reused = 0;  // forwards that skipped the blocks
  };
  Tensor forward(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                 parallel::SequenceParallel& sp, BlockCache* cache = nullptr);

  // ---- training (opt.train) ----
  // Every trainable tensor under its Wan name with its checkpoint shape (core/param.h). The
  // pointers stay valid while this DiT is not moved or re-bound.
  ParamTable parameters();
  // Sets every parameter gradient to zero.
  void zero_grad();
  // The forward of forward() (same arguments, same code path) that also records what backward()
  // needs: the block inputs (activation checkpointing) or every block's tape. The training
  // numerics differ from forward() only where an activation is fused into a GEMM (GELU, SiLU run
  // as separate ops to keep the pre-activation) and in the attention kernel (the variant that
  // also returns the log-sum-exp).
  Tensor forward_train(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                       parallel::SequenceParallel& sp);
  // Backward of the last forward_train (on the same sp, nothing in between): dv = dL/dv with the
  // shape of its output (any float dtype, any device). ACCUMULATES every parameter gradient (F32).
  // Optional outputs: dx = dL/dx (F32, the shape of forward_train's x) and dcontext = dL/dcontext
  // (F32, the shape of the unpadded context given to forward_train). Frees the recorded state.
  void backward(const Tensor& dv, parallel::SequenceParallel& sp, Tensor* dx = nullptr,
                Tensor* dcontext = nullptr);
  void set_activation_checkpointing(bool on) { opt_.activation_checkpointing = on; }
  void set_keep_attention(bool on) { opt_.keep_attention = on; }
  void set_offload_block_inputs(bool on) { opt_.offload_block_inputs = on; }
  void set_ffn_chunks(int n);
  // Called by every backward() around block i's part (blocks run from the last to the first):
  // before(i) ahead of its recompute / backward, after(i) once its parameter gradients are
  // complete for this backward. For gradient sharding (train/sharded_adamw.h): the gradients of
  // block i may be allocated in before(i) and reduced and released in after(i) — a parameter
  // whose gradient tensor is undefined during its backward gets no gradient. Empty: none.
  void set_block_backward_hooks(std::function<void(int)> before, std::function<void(int)> after) {
    block_before_ = std::move(before);
    block_after_ = std::move(after);
  }
  // Called by every forward() and forward_train() around block i's forward (not around the
  // backward's activation-checkpointing recompute, which runs inside the backward hooks): before(i)
  // ahead of it, after(i) once it returned. For weight sharding (ZeRO-3, train/sharded_adamw.h):
  // block i's parameter values may be gathered in before(i) and released (left undefined) in
  // after(i) — and likewise around its backward with the backward hooks; a block whose weights are
  // released also drops its QAT copies Q(W, 15). Empty: none.
  void set_block_forward_hooks(std::function<void(int)> before, std::function<void(int)> after) {
    fwd_before_ = std::move(before);
    fwd_after_ = std::move(after);
  }

  // ---- LoRA adapters, un-merged (model/dit_lora.cpp; osp-next-spec §8.2) ----
  // Attaches every adapter of `lora` to its block linear (modules "blocks.<i>.self_attn.q", ...,
  // "blocks.<i>.ffn.0"/"ffn.2"; anything else, or a shape mismatch, is an osp::Error naming the
  // adapter): A and B are copied to the model's device in its activation dtype (F32 on the CPU),
  // scale = strength·α/r. A model bound with train gets F32 gradients for them. Replaces any
  // attached LoRA; enabled afterwards.
  void attach_lora(const Lora& lora, double strength = 1.0);
  void detach_lora();
  bool has_lora() const { return !lora_modules_.empty(); }
  // Off: every adapter is skipped (the base model, Mix-GRPO's KL reference); on by default.
  void set_lora_enabled(bool on);
  bool lora_enabled() const { return lora_enabled_; }
  // The adapters as trainable parameters: "<module>.lora_A.weight" [r, in] and
  // "<module>.lora_B.weight" [out, r] (values on the device; grads when bound with train).
  ParamTable lora_parameters();
  void zero_lora_grad();
  // The attached adapters' current values as a Lora (F32 CPU copies; alpha as attached).
  Lora lora() const;

  // Debug hook: called after every block with the block index and the hidden state
  // [B, n_local, dim] in that block's (rank-local) layout.
  using BlockHook = std::function<void(int block, const Tensor& hidden)>;
  void set_block_hook(BlockHook hook) { hook_ = std::move(hook); }

  // Bytes of weights held on the device (what is bound now: a streamed model counts only the
  // blocks whose weights are bound at the moment).
  size_t weight_bytes() const;
  // Bytes of the reused forward workspaces held now (an inference forward keeps its activation
  // buffers for the next step; a training forward releases them at its end).
  size_t workspace_bytes() const;
  // Block i's inference weights (layers::Block::weight_tensors): what block streaming moves
  // between host and device memory; each undefined while released.
  std::vector<Tensor*> block_weights(int i);
  // How many blocks have any inference weight bound now (all of them unless streamed).
  int blocks_with_weights() const;

  // Stage timing of forward (model/profile.h): off by default, on from bind when the
  // environment has OSP_PROFILE=1, or switched here. No synchronisation inside the forward;
  // profile_report() waits for the device and returns the mean ms per forward of every
  // (stage, full/sparse) since the last profile_reset(). A block hook's own time is counted in
  // the stage after it (enter_block or head).
  void set_profiling(bool on) { prof_.set_enabled(on, opt_.device); }
  // DiTOptions::cuda_graphs after bind; off also drops the graph held now.
  void set_cuda_graphs(bool on);
  // Drops the graph held now (its memory pool returns to the cache); the next forwards of a
  // shape run eagerly once and capture again.
  void drop_cuda_graph() { graph_.reset(); }
  // How the last forward ran: "eager", "captured" (this call captured the graph and replayed
  // it) or "replayed"; "capture failed: why" once a capture of this shape failed.
  const std::string& last_forward_mode() const { return graph_mode_; }
  bool profiling() const { return prof_.enabled(); }
  ProfileReport profile_report() { return prof_.report(); }
  void profile_reset() { prof_.reset(); }

 private:
  using Tape = layers::Tape;
  // Everything between forward_train and backward.
  struct TrainState {
    bool active = false;
    bool batched = true;
    int64_t B = 0, Lc = 0;
    Shape x_shape;  // [B, in_dim, F, H, W]
    sparse::Grid grid;
    parallel::ForwardPlan plan;
    Shape context_shape;
    Tape global;                   // embeddings and head activations
    std::vector<Tensor> block_in;  // activation checkpointing: each block's input
    std::vector<Shape> block_in_shape;  // ... offloaded (DiTOptions::offload_block_inputs): its shape
    std::vector<Tape> attn_kept;   // ... and with keep_attention its self-attention results
    std::vector<Tape> tapes;       // no checkpointing: each block's tape
    Tensor e0, ctx_lin;            // e0 [B, 6, d]; the k/v linears' input (Q(ctx) in HiF8)
    Tensor ctx_float;              // the float k/v input (LoRA branches)
    Tensor x_last;                 // the last block's output (the head's input)
  };

  // The layer context for one forward/backward (training: numerics; tape: what to record).
  layers::Ctx ctx(bool training, Tape* tape, ProfKind pk = ProfKind::None);
  // sinus: time_sinusoid(cfg_, t) on any device (t itself is only validated).
  Tensor forward_impl(const Tensor& x, const std::vector<float>& t, const Tensor& sinus, const Tensor& context,
                      parallel::SequenceParallel& sp, bool training, BlockCache* cache = nullptr);
  // DiTOptions::cuda_graphs: may this forward run as a graph (see there)?
  bool graph_eligible(const parallel::SequenceParallel& sp, const BlockCache* cache) const;
  // The forward as a graph (captured on its key's second call) and its output, or an undefined
  // tensor where this call is to run eagerly (a key's first call; a key whose capture failed).
  Tensor forward_graphed(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                         parallel::SequenceParallel& sp);
  // Block 0's input x0 moved into the last block's layout (the layout of the cached residual):
  // x0 itself when the first and last blocks have the same kind, else x0 through every
  // enter_block (layout moves only, no block runs).
  Tensor to_last_layout(const Tensor& x0, parallel::SequenceParallel& sp);
  std::vector<layers::Linear*> block_linears();

  DiTConfig cfg_;
  DiTOptions opt_;
  std::vector<sparse::BlockKind> kinds_;
  int P_ = 2;
  DType act_ = DType::F32;  // activation dtype of GEMM inputs/outputs (BF16 on CUDA)

  layers::PatchEmbedding patch_;
  layers::TimeEmbedding time_;  // fp32 (wan-spec §2.6), on the model's device
  layers::TextEmbedding text_;
  std::vector<layers::Block> blocks_;
  layers::Head head_;
  BlockHook hook_;
  std::map<std::string, Tensor> ws_;
  std::map<std::string, quant::Fp8Tensor> ws8_;
  bool fp8_fallback_ = false;  // FP8 mode: some block linear runs the fake-quant bf16 GEMM
  StageProfiler prof_;
  TrainState train_;
  // DiTOptions::offload_block_inputs: the copy stream, one pinned host buffer per block (kept
  // across steps, grown when a step needs more) and the two device staging buffers (block i
  // uses slot i % 2) that exist during a forward_train or a backward.
  struct Offload {
    std::unique_ptr<CopyStream> q;
    std::vector<void*> host;
    std::vector<size_t> host_bytes;
    Tensor slot[2];
    ~Offload();
  };
  std::unique_ptr<Offload> offload_;
  // Offload: block i's input x → slot i % 2 → (copy stream) host buffer i.
  void offload_block_input(int i, const Tensor& x);
  // Offload: queue block i's saved input host → slot i % 2 (after the compute queued so far).
  void fetch_block_input(int i);
  std::function<void(int)> block_before_, block_after_;  // set_block_backward_hooks
  std::function<void(int)> fwd_before_, fwd_after_;      // set_block_forward_hooks
  // QAT (training a HiF8 base): Q(W, 15) of block i's linears from their current weights —
  // only where missing (`missing_only`, the backward: the forward's copies are still valid) —
  // and drop_block_qat frees them where the weight itself was released (weight sharding).
  void refresh_block_qat(int i, bool missing_only);
  void drop_block_qat(int i);
  // LoRA: module name → alpha of the attached adapters; the enable switch.
  std::map<std::string, double> lora_modules_;
  bool lora_enabled_ = true;
  double lora_strength_ = 1.0;
  // The inference forward's CUDA graph for one key (shapes, plan, LoRA switch; dit.cpp).
  struct ForwardGraph;
  std::shared_ptr<ForwardGraph> graph_;
  std::string graph_mode_ = "eager";
};

}  // namespace osp::model
