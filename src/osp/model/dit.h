// The Wan2.1 / OSP-Next diffusion transformer (wan-spec §2.2, osp-next-spec §2.3–2.6, §3.6–3.8).
//
// One device-generic forward through ops:: — on the CPU everything is fp32; on CUDA the
// precision map of wan-spec §2.6: bf16 weights and activations for the patch/text embeddings and
// every block linear, fp32 residual stream, fp32 modulation, norms and RoPE angles, bf16
// attention with fp32 softmax. The token layout (full / Skiparse token / group, padding, ranks)
// is entirely the business of dist::SequenceParallel; the DiT only calls its hooks.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/dist/sequence_parallel.h"
#include "osp/model/dit_config.h"
#include "osp/model/profile.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"

namespace osp::model {

// None: bf16 (CUDA) / fp32 (CPU). HiF8: fake quantization, float GEMMs. FP8: the same HiF8
// numerics with real E4M3 GEMMs (quant/fp8.h) for every block linear.
enum class DiTQuant : uint8_t { None, HiF8, FP8 };

struct DiTOptions {
  Device device = Device::cpu();
  // HiF8 fake quantization (osp-next-spec §5.5–5.8): inputs and weights of every block linear
  // and the attention q/k/v (after norms and RoPE) go through Q(·, 15). Weights are quantized
  // once at bind time.
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
  Tensor forward(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                 dist::SequenceParallel& sp);

  // Debug hook: called after every block with the block index and the hidden state
  // [B, n_local, dim] in that block's (rank-local) layout.
  using BlockHook = std::function<void(int block, const Tensor& hidden)>;
  void set_block_hook(BlockHook hook) { hook_ = std::move(hook); }

  // Bytes of weights held on the device.
  size_t weight_bytes() const;

  // Stage timing of forward (model/profile.h): off by default, on from bind when the
  // environment has OSP_PROFILE=1, or switched here. No synchronisation inside the forward;
  // profile_report() waits for the device and returns the mean ms per forward of every
  // (stage, full/sparse) since the last profile_reset(). A block hook's own time is counted in
  // the stage after it (enter_block or head).
  void set_profiling(bool on) { prof_.set_enabled(on, opt_.device); }
  bool profiling() const { return prof_.enabled(); }
  ProfileReport profile_report() { return prof_.report(); }
  void profile_reset() { prof_.reset(); }

 private:
  struct Linear {
    Tensor w, b;  // compute copies on the device ([N, K], [N]); w undefined when fp8
    quant::Fp8Tensor wq;  // FP8 mode: E4M3 weight codes + 1/s (codes undefined otherwise)
    bool fp8() const { return wq.codes.defined(); }
  };
  // A linear's input in the form(s) the linears need: x itself (None), Q(x, 15) (HiF8 and
  // FP8-mode fallbacks) and/or the E4M3 operand (FP8).
  struct LinIn {
    const Tensor* x = nullptr;             // the float input (fake-quantized in HiF8 mode)
    const quant::Fp8Tensor* xq = nullptr;  // FP8 mode
  };
  struct Attn {
    Linear q, k, v, o;
    Tensor norm_q, norm_k;  // F32 [d] (undefined without qk_norm)
  };
  struct Block {
    Tensor modulation;  // F32 [6, d] on the device
    Attn self_attn, cross_attn;
    Tensor norm3_w, norm3_b;  // F32 [d] (undefined without cross_attn_norm)
    Linear ffn0, ffn2;
  };

  Tensor& ws(const std::string& name, const Shape& shape, DType dt);
  void linear(const Tensor& x, const Linear& l, Tensor& out, ops::Act act = ops::Act::None);
  void linear(const LinIn& in, const Linear& l, Tensor& out, ops::Act act = ops::Act::None);
  // Prepares x as the input of block linears (workspaces named after `name`).
  LinIn quant_input(const Tensor& x, const std::string& name);
  void run_block(int i, Tensor& x, const LinIn& ctx, const Tensor& e0, dist::SequenceParallel& sp);

  DiTConfig cfg_;
  DiTOptions opt_;
  std::vector<sparse::BlockKind> kinds_;
  int P_ = 2;
  DType act_ = DType::F32;  // activation dtype of GEMM inputs/outputs (BF16 on CUDA)

  Linear patch_, text0_, text2_, head_;
  // Time MLP always runs on the host in fp32 (tiny; keeps the reference's fp32 path exact).
  Linear time0_, time2_, time_proj_;
  Tensor head_modulation_;  // F32 [2, d] host
  std::vector<Block> blocks_;
  BlockHook hook_;
  std::map<std::string, Tensor> ws_;
  std::map<std::string, quant::Fp8Tensor> ws8_;
  bool fp8_fallback_ = false;  // FP8 mode: some block linear runs the fake-quant bf16 GEMM
  StageProfiler prof_;
};

}  // namespace osp::model
