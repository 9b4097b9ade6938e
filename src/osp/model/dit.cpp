// Wan2.1 / OSP-Next DiT: weight binding and the device-generic forward (shapes next to steps).
#include "osp/model/dit.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "osp/core/cuda_graph.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/scope_exit.h"
#include "osp/ops/backward.h"
#include "osp/ops/ops.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8.h"

namespace osp::model {

using sparse::BlockKind;

// ---------------------------------------------------------------- FLOPs (wan-spec §7.1)
double dit_forward_flops(const DiTConfig& c, const sparse::Grid& g,
                         const std::vector<BlockKind>& kinds, int P, int64_t B) {
  const double d = double(c.dim), F = double(c.ffn_dim), Lt = double(c.text_len);
  const double N = double(g.numel());
  double total = 0;
  std::vector<int32_t> tok_len, grp_len;
  for (BlockKind k : kinds) {
    double rows = N, core = 0;
    if (k == BlockKind::Full) {
      core = 4 * N * N * d;
    } else {
      // Sub-sequences are stored without their padding rows (parallel/sequence_parallel.h), so the
      // linears see the N real tokens.
      auto& lens = k == BlockKind::Token ? tok_len : grp_len;
      if (lens.empty()) lens = sparse::skiparse_row_lengths(g, P, k);
      for (int32_t l : lens) core += 4.0 * double(l) * double(l) * d;
    }
    total += 8 * rows * d * d + core;                             // self-attention
    total += 4 * rows * d * d + 4 * Lt * d * d + 4 * rows * Lt * d;  // cross-attention
    total += 4 * rows * d * F;                                     // FFN
  }
  const double K = double(c.in_dim) * double(c.patch_volume());
  total += 2 * N * K * d;                                          // patch embedding
  total += 2 * Lt * (double(c.text_dim) * d + d * d);              // text embedding
  total += 2 * N * d * double(c.out_dim) * double(c.patch_volume());  // head
  return total * double(B);
}

// ---------------------------------------------------------------- binding
std::map<std::string, Shape> DiT::expected_shapes(const DiTConfig& c) {
  const int64_t d = c.dim;
  std::map<std::string, Shape> s;
  s["patch_embedding.weight"] = {d, c.in_dim, c.patch_t, c.patch_h, c.patch_w};
  s["patch_embedding.bias"] = {d};
  s["text_embedding.0.weight"] = {d, c.text_dim};
  s["text_embedding.0.bias"] = {d};
  s["text_embedding.2.weight"] = {d, d};
  s["text_embedding.2.bias"] = {d};
  s["time_embedding.0.weight"] = {d, c.freq_dim};
  s["time_embedding.0.bias"] = {d};
  s["time_embedding.2.weight"] = {d, d};
  s["time_embedding.2.bias"] = {d};
  s["time_projection.1.weight"] = {6 * d, d};
  s["time_projection.1.bias"] = {6 * d};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = str("blocks.", i, ".");
    s[p + "modulation"] = {1, 6, d};
    for (const char* a : {"self_attn", "cross_attn"}) {
      for (const char* l : {"q", "k", "v", "o"}) {
        s[p + a + "." + l + ".weight"] = {d, d};
        s[p + a + "." + l + ".bias"] = {d};
      }
      if (c.qk_norm) {
        s[p + a + ".norm_q.weight"] = {d};
        s[p + a + ".norm_k.weight"] = {d};
      }
    }
    if (c.cross_attn_norm) {
      s[p + "norm3.weight"] = {d};
      s[p + "norm3.bias"] = {d};
    }
    s[p + "ffn.0.weight"] = {c.ffn_dim, d};
    s[p + "ffn.0.bias"] = {c.ffn_dim};
    s[p + "ffn.2.weight"] = {d, c.ffn_dim};
    s[p + "ffn.2.bias"] = {d};
  }
  s["head.modulation"] = {1, 2, d};
  s["head.head.weight"] = {c.out_dim * c.patch_volume(), d};
  s["head.head.bias"] = {c.out_dim * c.patch_volume()};
  return s;
}

namespace {
// Contiguous copy of t in dtype dt on device dev (never a view into the checkpoint).
Tensor place(const Tensor& t, DType dt, Device dev) {
  Tensor out = Tensor::empty(t.shape(), dt, dev);
  out.copy_from(t);
  return out;
}
}  // namespace

DiT DiT::bind(const DiTConfig& cfg, const std::map<std::string, Tensor>& weights,
              const DiTOptions& opt, const std::string& prefix) {
  cfg.validate();
  if (opt.device.is_cuda())
    OSP_CHECK(cuda_available(), "DiT::bind: device ", opt.device.name(),
              " requested but no CUDA GPU is available in this build/machine");
  // 1. Check every tensor first; report all problems at once.
  const auto expected = expected_shapes(cfg);
  std::vector<std::string> problems;
  for (const auto& [name, shape] : expected) {
    auto it = weights.find(prefix + name);
    if (it == weights.end()) {
      problems.push_back(str("missing ", prefix + name, " ", shape_str(shape)));
      continue;
    }
    const Tensor& t = it->second;
    if (!t.defined() || t.shape() != shape)
      problems.push_back(str("shape of ", prefix + name, ": expected ", shape_str(shape), ", got ",
                             t.defined() ? shape_str(t.shape()) : std::string("undefined")));
    else if (!dtype_is_float(t.dtype()))
      problems.push_back(str("dtype of ", prefix + name, ": expected a float type, got ",
                             dtype_name(t.dtype())));
  }
  if (!problems.empty()) {
    std::ostringstream os;
    os << "DiT::bind: " << problems.size() << " problem(s) with the checkpoint for config ("
       << cfg.summary() << "):";
    const size_t show = std::min<size_t>(problems.size(), 40);
    for (size_t i = 0; i < show; ++i) os << "\n  " << problems[i];
    if (show < problems.size()) os << "\n  ... and " << problems.size() - show << " more";
    fail(os.str());
  }

  DiT m;
  m.cfg_ = cfg;
  m.opt_ = opt;
  m.kinds_ = cfg.block_kinds();
  m.P_ = cfg.sparse_ratio;
  const Device dev = opt.device;
  const bool cuda = dev.is_cuda();
  m.act_ = cuda ? DType::BF16 : DType::F32;
  const DType gemm_w = m.act_;  // weights of bf16 GEMMs on CUDA
  OSP_CHECK(!(opt.train && opt.on_block_bound), "DiT::bind: on_block_bound (block streaming) is inference-only");
  OSP_CHECK(!(opt.train && opt.quant == DiTQuant::FP8),
            "DiT::bind: FP8 mode is inference-only; train with quant = HiF8 (QAT) or None");
  OSP_CHECK(opt.ffn_chunks >= 0, "DiT::bind: ffn_chunks must be >= 0, got ", opt.ffn_chunks);
  OSP_CHECK(opt.ffn_chunks <= 1 || opt.quant == DiTQuant::None,
            "DiT::bind: ffn_chunks needs unquantised training (HiF8 QAT scales whole tensors; chunks would change them)");
  // HiF8 inference caches Q(W, 15) in the weight itself; HiF8 training keeps W and recomputes
  // Q(W, 15) on every forward (refresh_quantized_weights).
  const bool hif8 = opt.quant == DiTQuant::HiF8 && !(opt.train && opt.train_base);
  const bool fp8 = opt.quant == DiTQuant::FP8;
  auto W = [&](const std::string& n) -> const Tensor& { return weights.at(prefix + n); };
  auto lin = [&](const std::string& n, DType wdt, DType bdt, Device where, bool quant) {
    layers::Linear l;
    Tensor w = W(n + ".weight");
    l.w = place(w.dim() == 2 ? w : w.reshape({w.size(0), w.numel() / w.size(0)}), wdt, where);
    if (quant) quant::hif8_fake_quant(l.w, l.w);  // cached Q(W, 15), in place
    l.b = place(W(n + ".bias"), bdt, where);
    return l;
  };
  auto f32 = [&](const std::string& n) { return place(W(n), DType::F32, dev); };
  // Block linears: bf16/f32, HiF8 fake-quant weight, or (FP8) E4M3 codes only.
  std::vector<std::string> fallback;
  auto blin = [&](const std::string& n) {
    if (!fp8) {
      layers::Linear l = lin(n, gemm_w, gemm_w, dev, hif8);
      l.block = true;
      return l;
    }
    layers::Linear l = lin(n, gemm_w, gemm_w, dev, false);
    l.block = true;
    const int64_t N = l.w.size(0), K = l.w.size(1);
    if (cuda && (K % 16 != 0 || N % 8 != 0)) {  // cuBLASLt FP8 rules (quant/fp8.h)
      quant::hif8_fake_quant(l.w, l.w);
      fallback.push_back(str(n, " [", N, ", ", K, "]"));
      return l;
    }
    l.wq = quant::hif8_quantize_e4m3(l.w);  // E4M3(HiF8(w·s)), from the bf16 (CUDA) weight
    l.w = Tensor();
    return l;
  };

  m.patch_.proj = lin("patch_embedding", gemm_w, gemm_w, dev, false);
  m.text_.fc1 = lin("text_embedding.0", gemm_w, gemm_w, dev, false);
  m.text_.fc2 = lin("text_embedding.2", gemm_w, gemm_w, dev, false);
  // The time embedding stays f32 (wan-spec §2.6) and runs where the model runs: on CUDA through
  // ops::linear's small-row f32 kernel (the [6·d, d] projection alone is 629 MB of f32 weights
  // at 14B — streaming it from host memory every forward cost ~0.1 s).
  m.time_.fc1 = lin("time_embedding.0", DType::F32, DType::F32, dev, false);
  m.time_.fc2 = lin("time_embedding.2", DType::F32, DType::F32, dev, false);
  m.time_.proj = lin("time_projection.1", DType::F32, DType::F32, dev, false);
  // The reference's head GEMM is fp32; CUDA linear is bf16-only, so the CUDA head runs a bf16
  // GEMM with fp32 bias/output (documented deviation). CPU: fp32.
  m.head_.proj = lin("head.head", gemm_w, DType::F32, dev, false);
  m.head_.modulation.v = place(W("head.modulation"), DType::F32, dev).view({2, cfg.dim});
  m.blocks_.resize(size_t(cfg.num_layers));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    layers::Block& b = m.blocks_[size_t(i)];
    const std::string p = str("blocks.", i, ".");
    b.modulation.v = f32(p + "modulation").view({6, cfg.dim});
    auto attn = [&](auto& at, const std::string& q) {
      at.q = blin(q + "q");
      at.k = blin(q + "k");
      at.v = blin(q + "v");
      at.o = blin(q + "o");
      if (cfg.qk_norm) {
        at.norm_q.v = f32(q + "norm_q.weight");
        at.norm_k.v = f32(q + "norm_k.weight");
      }
    };
    attn(b.self_attn, p + "self_attn.");
    attn(b.cross_attn, p + "cross_attn.");
    if (cfg.cross_attn_norm) {
      b.norm3_w.v = f32(p + "norm3.weight");
      b.norm3_b.v = f32(p + "norm3.bias");
    }
    b.ffn.fc1 = blin(p + "ffn.0");
    b.ffn.fc2 = blin(p + "ffn.2");
    if (opt.on_block_bound) opt.on_block_bound(m, int(i));
  }
  if (!fallback.empty()) {
    m.fp8_fallback_ = true;
    log_info("DiT::bind: FP8 mode: ", fallback.size(), " block linear(s) break cuBLASLt FP8's ",
             "K % 16 == 0 / N % 8 == 0 rules and run the HiF8 fake-quant bf16 GEMM instead (e.g. ",
             fallback.front(), ")");
  }
  if (opt.train && opt.train_base)  // an F32 gradient beside every parameter
    for (const ParamRef& p : m.parameters())
      *p.grad = Tensor::zeros(p.value->shape(), DType::F32, dev);
  if (StageProfiler::env_enabled()) m.prof_.set_enabled(true, dev);
  return m;
}

void DiT::set_block_kinds(const std::vector<BlockKind>& kinds, int P) {
  OSP_CHECK(int64_t(kinds.size()) == cfg_.num_layers, "DiT::set_block_kinds: got ", kinds.size(),
            " kinds for ", cfg_.num_layers, " blocks");
  bool sparse = false;
  for (BlockKind k : kinds) sparse |= k != BlockKind::Full;
  OSP_CHECK(!sparse || P >= 2, "DiT::set_block_kinds: sparse blocks need P >= 2, got ", P);
  kinds_ = kinds;
  P_ = P;
}

size_t DiT::weight_bytes() const {
  size_t n = patch_.bytes() + time_.bytes() + text_.bytes() + head_.bytes();
  for (const layers::Block& b : blocks_) n += b.bytes();
  return n;
}

size_t DiT::workspace_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : ws_)
    if (t.defined()) n += t.nbytes();
  return n;
}

std::vector<Tensor*> DiT::block_weights(int i) {
  OSP_CHECK(i >= 0 && i < int(blocks_.size()), "DiT::block_weights: no block ", i, " (", blocks_.size(), " blocks)");
  return blocks_[size_t(i)].weight_tensors();
}

int DiT::blocks_with_weights() const {
  int n = 0;
  for (const layers::Block& b : blocks_) n += b.bytes() > 0;
  return n;
}

// ---------------------------------------------------------------- parameter table
ParamTable DiT::parameters() {
  OSP_CHECK(opt_.quant != DiTQuant::FP8,
            "DiT::parameters: FP8 mode keeps only E4M3 weight codes (no trainable tensors)");
  const auto shapes = expected_shapes(cfg_);
  ParamTable t;
  // A frozen base (train_base false) lists its tensors without gradients.
  layers::ParamSink sink{shapes, opt_.train && opt_.train_base, t};
  patch_.params(sink);
  text_.params(sink);
  time_.params(sink);
  for (size_t i = 0; i < blocks_.size(); ++i) blocks_[i].params(sink, str("blocks.", i, "."));
  head_.params(sink);
  return t;
}

void DiT::zero_grad() {
  OSP_CHECK(opt_.train, "DiT::zero_grad: the model was bound without DiTOptions::train");
  for (const ParamRef& p : parameters())
    if (p.grad && p.grad->defined()) p.grad->zero_();
  zero_lora_grad();
}

std::vector<layers::Linear*> DiT::block_linears() {
  std::vector<layers::Linear*> v;
  for (layers::Block& b : blocks_)
    for (layers::Linear* l : b.linears()) v.push_back(l);
  return v;
}

void DiT::refresh_block_qat(int i, bool missing_only) {
  if (!(opt_.train && opt_.train_base && opt_.quant == DiTQuant::HiF8)) return;
  for (layers::Linear* l : blocks_[size_t(i)].linears()) {
    OSP_CHECK(l->w.defined(), "DiT: block ", i, "'s weights are not resident (weight sharding: the "
              "forward/backward hooks must gather them)");
    if (!missing_only || !l->wfq.defined()) l->refresh_quantized_weight(opt_.device);
  }
}

void DiT::drop_block_qat(int i) {
  for (layers::Linear* l : blocks_[size_t(i)].linears())
    if (!l->w.defined()) l->wfq = Tensor();
}

layers::Ctx DiT::ctx(bool training, Tape* tape, ProfKind pk) {
  layers::Ctx c;
  c.dev = opt_.device;
  c.act = act_;
  c.quant = opt_.quant;
  c.fp8_fallback = fp8_fallback_;
  c.fp8_attention = opt_.fp8_attention;
  c.training = training;
  c.ws = &ws_;
  c.ws8 = &ws8_;
  c.tape = tape;
  c.lora_inputs = has_lora() && lora_enabled_ && opt_.quant != DiTQuant::None;
  c.prof = &prof_;
  c.pk = pk;
  c.ffn_chunks = opt_.ffn_chunks;
  return c;
}

void DiT::set_ffn_chunks(int n) {
  OSP_CHECK(n >= 0, "DiT::set_ffn_chunks: ffn_chunks must be >= 0, got ", n);
  OSP_CHECK(n <= 1 || opt_.quant == DiTQuant::None,
            "DiT::set_ffn_chunks: ffn_chunks needs unquantised training (HiF8 QAT scales whole tensors; chunks would change them)");
  opt_.ffn_chunks = n;
}

// ---------------------------------------------------------------- forward
Tensor DiT::forward(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                    parallel::SequenceParallel& sp, BlockCache* cache) {
  if (graph_eligible(sp, cache)) {
    Tensor y = forward_graphed(x, t, context, sp);
    if (y.defined()) return y;
  } else {
    graph_mode_ = "eager";
  }
  return forward_impl(x, t, layers::time_sinusoid(cfg_, t), context, sp, false, cache);
}

namespace {
void check_timesteps(const std::vector<float>& t) {
  for (float tv : t)
    OSP_CHECK(std::isfinite(tv), "DiT::forward: timestep ", tv, " is not finite");
}
}  // namespace

// ---------------------------------------------------------------- forward as a CUDA graph
// One key's graph: its input buffers (refilled before every replay), its output (rewritten by
// every replay) and the graph. The first forward of a key only creates this (and runs eagerly);
// the second captures.
struct DiT::ForwardGraph {
  std::string key;
  Tensor x, sinus, context, out;
  CudaGraph graph;
  std::string failed;  // why the capture failed ("": it did not)
};

void DiT::set_cuda_graphs(bool on) {
  opt_.cuda_graphs = on;
  if (!on) graph_.reset();
}

bool DiT::graph_eligible(const parallel::SequenceParallel& sp, const BlockCache* cache) const {
  return opt_.cuda_graphs && opt_.device.is_cuda() && !opt_.train &&
         !cache && sp.size() == 1 && !hook_ && !fwd_before_ && !fwd_after_ && !prof_.enabled() && !blocks_.empty() &&
         cuda_memory_limit() == 0;
}

Tensor DiT::forward_graphed(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                            parallel::SequenceParallel& sp) {
  // Everything the captured work depends on besides the refilled inputs' values.
  std::ostringstream k;
  k << x.desc() << '|' << t.size() << '|' << context.desc() << '|' << P_ << '|' << lora_enabled_ << '|'
    << static_cast<const void*>(&sp) << '|';
  for (BlockKind b : kinds_) k << int(b);
  const std::string key = k.str();
  ForwardGraph* fg = graph_ ? graph_.get() : nullptr;
  if (!fg || fg->key != key) {  // a new key: run it eagerly once (tuning, workspaces), capture next time
    graph_ = std::make_shared<ForwardGraph>();
    graph_->key = key;
    graph_mode_ = "eager";
    return Tensor();
  }
  if (!fg->failed.empty()) {
    graph_mode_ = "capture failed: " + fg->failed;
    return Tensor();
  }
  check_timesteps(t);  // (a replay skips forward_impl's checks; the key pins the shapes they check)
  const Device dev = opt_.device;
  if (!fg->graph.ready()) {
    fg->x = Tensor::empty(x.shape(), x.dtype(), dev);
    fg->context = Tensor::empty(context.shape(), context.dtype(), dev);
    fg->sinus = Tensor::empty({int64_t(t.size()), cfg_.freq_dim}, DType::F32, dev);
  }
  fg->x.copy_from(x);
  fg->context.copy_from(context);
  fg->sinus.copy_from(layers::time_sinusoid(cfg_, t));
  if (fg->graph.ready()) {
    fg->graph.replay();
    graph_mode_ = "replayed";
    return fg->out.clone();
  }
  Tensor out;
  fg->failed = fg->graph.capture(dev.index, [&] { out = forward_impl(fg->x, t, fg->sinus, fg->context, sp, false); });
  if (!fg->failed.empty()) {
    log_warn("DiT: the forward could not be captured as a CUDA graph; it runs eagerly at this size (",
             fg->failed, ")");
    fg->x = fg->context = fg->sinus = Tensor();
    graph_mode_ = "capture failed: " + fg->failed;
    return Tensor();
  }
  fg->out = out;
  fg->graph.replay();
  graph_mode_ = "captured";
  return out.clone();
}

Tensor DiT::to_last_layout(const Tensor& x0, parallel::SequenceParallel& sp) {
  // The rows a rank holds depend only on the block kind (parallel/sequence_parallel.h), so equal
  // kinds at both ends mean equal layouts: Wan2.1's all-full plans and OSP-Next's dual_end
  // hybrid plans (full blocks at both ends) take this branch.
  if (kinds_.front() == kinds_.back()) return x0.contiguous();
  Tensor x = x0;
  for (int i = 1; i < int(kinds_.size()); ++i) x = sp.enter_block(i, x.is_contiguous() ? x : x.contiguous());
  return x.contiguous();
}

Tensor DiT::forward_train(const Tensor& x, const std::vector<float>& t, const Tensor& context,
                          parallel::SequenceParallel& sp) {
  OSP_CHECK(opt_.train, "DiT::forward_train: the model was bound without DiTOptions::train");
  graph_.reset();  // (a training forward releases workspaces a graph would keep)
  return forward_impl(x, t, layers::time_sinusoid(cfg_, t), context, sp, true);
}

Tensor DiT::forward_impl(const Tensor& x_in, const std::vector<float>& t, const Tensor& sinus,
                         const Tensor& context, parallel::SequenceParallel& sp, bool training,
                         BlockCache* cache) {
  OSP_CHECK(!blocks_.empty(), "DiT::forward: the model has no weights (use DiT::bind)");
  OSP_CHECK(!(training && cache), "DiT::forward_train: step caching (BlockCache) is inference-only");
  const DiTConfig& c = cfg_;
  const Device dev = opt_.device;
  OSP_CHECK(x_in.defined() && (x_in.dim() == 4 || x_in.dim() == 5),
            "DiT::forward: x must be [B, ", c.in_dim, ", F, H, W] or [", c.in_dim,
            ", F, H, W], got ", x_in.defined() ? x_in.desc() : std::string("undefined"));
  OSP_CHECK(dtype_is_float(x_in.dtype()), "DiT::forward: x must be a float tensor, got ",
            x_in.desc());
  const bool batched = x_in.dim() == 5;
  const Tensor x5 = batched ? x_in : x_in.unsqueeze(0);
  const int64_t B = x5.size(0), Fr = x5.size(2), Hl = x5.size(3), Wl = x5.size(4);
  OSP_CHECK(B >= 1 && x5.size(1) == c.in_dim, "DiT::forward: x has ", x5.size(1),
            " channels, the model expects in_dim = ", c.in_dim, " (", x_in.desc(), ")");
  OSP_CHECK(Fr >= 1 && Hl % c.patch_h == 0 && Wl % c.patch_w == 0 && Hl > 0 && Wl > 0,
            "DiT::forward: latent ", Fr, "x", Hl, "x", Wl, " must have H, W multiples of the patch ",
            c.patch_h, "x", c.patch_w);
  OSP_CHECK(int64_t(t.size()) == B, "DiT::forward: got ", t.size(), " timesteps for ", B,
            " samples (one per sample)");
  check_timesteps(t);
  OSP_CHECK(context.defined() && (context.dim() == 2 || context.dim() == 3),
            "DiT::forward: context must be [B, L, ", c.text_dim, "] or [L, ", c.text_dim,
            "], got ", context.defined() ? context.desc() : std::string("undefined"));
  const Tensor ctx3 = context.dim() == 3 ? context : context.unsqueeze(0);
  OSP_CHECK(ctx3.size(0) == B, "DiT::forward: context has ", ctx3.size(0),
            " samples but x has ", B);
  OSP_CHECK(ctx3.size(2) == c.text_dim, "DiT::forward: context width ", ctx3.size(2),
            " != text_dim ", c.text_dim);
  const int64_t Lc = ctx3.size(1), Lt = c.text_len, d = c.dim;
  OSP_CHECK(Lc <= Lt, "DiT::forward: context has ", Lc, " rows, more than text_len ", Lt,
            " (trim the text encoder output to its real tokens)");

  const sparse::Grid grid{Fr, Hl / c.patch_h, Wl / c.patch_w};
  const int64_t N = grid.numel();
  const ProfKind none = ProfKind::None;
  // Training records the embeddings' and the head's activations in train_.global. An inference
  // forward in between leaves a recorded training forward intact (it writes workspaces only;
  // backward sets the sequence-parallel plan up again).
  Tape* gt = nullptr;
  if (training) {
    train_ = TrainState{};
    train_.active = true;
    train_.batched = batched;
    train_.B = B, train_.Lc = Lc;
    train_.x_shape = x5.shape();
    train_.grid = grid;
    train_.context_shape = context.shape();
    gt = &train_.global;
  }
  layers::Ctx g = ctx(training, gt);
  prof_.begin_forward();

  // (a) patch embedding: im2col + GEMM                               X [B, N, d]
  Tensor& xe = g.scratch("x_embed", {B, N, d}, act_);
  patch_.forward(g, c, x5, grid, xe);
  Tensor& xfull = g.scratch("x_full", {B, N, d}, DType::F32);
  xfull.copy_from(xe);
  prof_.lap(ProfStage::PatchEmbed, none);

  // (b) time embedding in fp32 (sinusoid in fp64 on the host)      e [B, d], e0 [B, 6, d]
  Tensor e, e0;
  OSP_CHECK(sinus.dim() == 2 && sinus.size(0) == B && sinus.size(1) == c.freq_dim,
            "DiT::forward: internal error: time sinusoid ", sinus.desc());
  time_.forward(g, c, sinus, e, e0);
  if (training) train_.e0 = e0;
  prof_.lap(ProfStage::TimeEmbed, none);

  // (c) text embedding: zero-pad to text_len, Lin → GELU → Lin      C [B, Lt, d]
  Tensor& ctx_emb = g.buf("ctx", "ctx", {B, Lt, d}, act_);
  text_.forward(g, c, ctx3, ctx_emb);
  const layers::LinIn ctx_q = layers::quant_input(g, ctx_emb, "ctx_q");  // k/v input, once
  if (training) {
    train_.ctx_lin = *ctx_q.x;
    if (ctx_q.x != &ctx_emb) train_.ctx_float = ctx_emb;  // (a fresh tape tensor in training)
  }
  prof_.lap(ProfStage::TextEmbed, none);

  // (d) blocks, laid out by the sequence-parallel layer
  parallel::ForwardPlan plan;
  plan.grid = grid;
  plan.kinds = kinds_;
  plan.P = P_;
  plan.heads = int(c.num_heads);
  plan.head_dim = int(c.head_dim());
  plan.device = dev;
  sp.setup(plan);
  if (training) train_.plan = plan;
  prof_.lap(ProfStage::SpSetup, none);
  Tensor x = sp.scatter_input(xfull);
  prof_.lap(ProfStage::ScatterInput, none);
  // Step caching: skip the blocks (x = x0 + residual) or run them and keep x_last − x0.
  // (Asked on every forward so the policy sees every step; a cache with no residual yet computes.)
  bool run_blocks = true;
  if (cache && cache->run_blocks) run_blocks = cache->run_blocks(e0) || !cache->residual.defined();
  if (cache && run_blocks) {
    // residual ← −x0 (in the last block's layout) now, += x_last after the blocks (which update
    // x in place): one [B, n_local, dim] buffer, no second copy of the input. (−x0 + x_last is
    // x_last − x0 exactly in IEEE arithmetic.)
    const Tensor xin = to_last_layout(x, sp);
    if (!cache->residual.defined() || cache->residual.shape() != xin.shape() || cache->residual.device() != dev)
      cache->residual = Tensor::empty(xin.shape(), DType::F32, dev);
    ops::axpby(-1.0f, xin, 0.0f, xin, cache->residual);
  }
  const bool ckpt = opt_.activation_checkpointing;
  const bool offload = training && ckpt && opt_.offload_block_inputs;
  if (training && ckpt) train_.block_in.resize(size_t(c.num_layers));
  if (offload) train_.block_in_shape.assign(size_t(c.num_layers), Shape{});
  if (training && ckpt && opt_.keep_attention) train_.attn_kept.resize(size_t(c.num_layers));
  if (training && !ckpt) train_.tapes.resize(size_t(c.num_layers));
  if (!run_blocks) {
    x = to_last_layout(x, sp);
    const Tensor& r = cache->residual;
    OSP_CHECK(r.shape() == x.shape() && r.device() == x.device(), "DiT::forward: the cached residual ",
              r.desc(), " does not match this forward's hidden state ", x.desc(),
              " (a BlockCache belongs to one run: same batch, size and plan)");
    Tensor xs = Tensor::empty(x.shape(), DType::F32, dev);
    ops::axpby(1.0f, x, 1.0f, r, xs);  // x_last ≈ x0 + (x_last − x0) of the last computed step
    x = xs;
    ++cache->reused;
  }
  for (int i = 0; run_blocks && i < int(c.num_layers); ++i) {
    // Ctrl-C safe point between blocks (one step of a large run can take minutes on a CPU); only
    // on one rank: ranks must not leave a sequence-parallel forward at different blocks.
    if (sp.size() == 1) interruption_point("DiT forward");
    const ProfKind pk = kinds_[size_t(i)] == BlockKind::Full ? ProfKind::Full : ProfKind::Sparse;
    if (i > 0) x = sp.enter_block(i, x);
    if (!x.is_contiguous()) x = x.contiguous();
    if (i > 0) prof_.lap(ProfStage::EnterBlock, pk);
    // Training with checkpointing keeps the input only (backward recomputes the block with a
    // tape); without, it keeps the block's tape.
    if (offload) offload_block_input(i, x);
    else if (training && ckpt) train_.block_in[size_t(i)] = x.clone();
    Tape* tape = training && !ckpt ? &train_.tapes[size_t(i)] : nullptr;
    layers::Ctx bc = ctx(training, tape, pk);
    if (training && !train_.attn_kept.empty()) bc.attn_keep = &train_.attn_kept[size_t(i)];
    if (fwd_before_) fwd_before_(i);  // (weight sharding: block i's weights gathered here)
    refresh_block_qat(i, false);      // QAT: Q(W, 15) of the current weights
    blocks_[size_t(i)].forward(bc, c, i, x, ctx_q, e0, sp);
    if (fwd_after_) fwd_after_(i);    // (... and released here)
    drop_block_qat(i);
    if (hook_) hook_(i, x);
  }

  if (offload && offload_) {  // every input is on its way out: the staging buffers go once the copies are done
    offload_->q->compute_wait_copies();
    offload_->slot[0] = offload_->slot[1] = Tensor();
  }

  // (e) head on this rank's rows (every step is per token), then ONE gather of its
  // out_dim·patch_volume channels (64 for Wan) instead of the C-wide hidden state.
  OSP_CHECK(x.dim() == 3 && x.size(0) == B && x.size(2) == d,
            "DiT::forward: the last block's hidden state is ", x.desc(), ", expected [", B,
            ", n, ", d, "]");
  if (cache && run_blocks) {
    OSP_CHECK(cache->residual.shape() == x.shape(), "DiT::forward: block 0's input in the last block's layout is ",
              cache->residual.desc(), ", the last block's output ", x.desc());
    ops::add_gated_(cache->residual, x, nullptr);  // −x0 + x_last
  }
  const int64_t n_loc = x.size(1), Kout = c.out_dim * c.patch_volume();
  if (training) train_.x_last = x.clone();
  Tensor& yl = g.scratch("head_out", {B, n_loc, Kout}, DType::F32);  //   [B, n_local, Kout] F32
  head_.forward(g, c, x, e, yl);
  prof_.lap(ProfStage::Head, none);
  Tensor yh = sp.gather_output(yl);                              //   [B, N, Kout]
  OSP_CHECK(yh.dim() == 3 && yh.size(0) == B && yh.size(1) == N && yh.size(2) == Kout,
            "DiT::forward: gather_output returned ", yh.desc(), ", expected [", B, ", ", N, ", ",
            Kout, "]");
  yh = yh.contiguous();
  prof_.lap(ProfStage::GatherOutput, none);

  // (f) unpatchify                                                   v [B, out, F, H, W]
  Tensor out = Tensor::empty({B, c.out_dim, Fr, Hl, Wl}, DType::F32, dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor ob = out.select(0, b);
    ops::unpatchify(yh.select(0, b), grid.T, grid.H, grid.W, c.patch_t, c.patch_h, c.patch_w, ob);
  }
  prof_.lap(ProfStage::Unpatchify, none);
  prof_.end_forward();
  // Training: the backward reads the tapes, the saved block inputs and train_, never these
  // workspaces — the blocks' activations of an untaped forward ([n, dim] × ~11 and the FFN's two
  // [n, ffn]: 2.1 GiB for the 1.3B model at 832×480×81), which would otherwise stay allocated
  // through the whole backward. Inference keeps them for the next step.
  if (training) ws_.clear();
  return batched ? out : out.select(0, 0);
}

// ---------------------------------------------------------------- offloaded checkpoints
DiT::Offload::~Offload() {
  if (q) q->synchronize();  // no copy may still read or write a host buffer
  for (void* h : host) pinned_free(h);
}

void DiT::offload_block_input(int i, const Tensor& x) {
  const Device dev = opt_.device;
  if (!offload_) {  // one host buffer per block, allocated by the first step that needs it
    offload_ = std::make_unique<Offload>();
    offload_->q = std::make_unique<CopyStream>(dev, 2);
    offload_->host.assign(size_t(cfg_.num_layers), nullptr);
    offload_->host_bytes.assign(size_t(cfg_.num_layers), 0);
  }
  Offload& o = *offload_;
  OSP_CHECK(x.dtype() == DType::F32, "DiT: offloaded block inputs are F32 rows, got ", x.desc());
  const size_t bytes = x.nbytes();
  if (o.host_bytes[size_t(i)] < bytes) {  // (the previous step's copies of it are done: same queue,
    o.q->synchronize();                   //  but the host must not free it under a pending copy)
    pinned_free(o.host[size_t(i)]);
    o.host[size_t(i)] = nullptr;  // (pinned_alloc may throw)
    o.host[size_t(i)] = pinned_alloc(bytes);
    o.host_bytes[size_t(i)] = bytes;
  }
  // Slot i % 2 last held block i − 2's input, whose copy out was queued before block i − 1 ran:
  // the compute waits for it (long done by now) before overwriting the slot.
  Tensor& slot = o.slot[i % 2];
  o.q->compute_wait_copies();
  if (!slot.defined() || slot.shape() != x.shape() || slot.dtype() != x.dtype())
    slot = Tensor::empty(x.shape(), x.dtype(), dev);
  slot.copy_from(x);
  o.q->mark_compute(i % 2);  // the copy out starts once the slot holds x
  o.q->wait_marked(i % 2);
  o.q->copy_to_host(o.host[size_t(i)], slot.raw(), bytes);
  train_.block_in_shape[size_t(i)] = x.shape();
  train_.block_in[size_t(i)] = Tensor();
}

void DiT::fetch_block_input(int i) {
  Offload& o = *offload_;
  const Shape& shape = train_.block_in_shape.at(size_t(i));
  OSP_CHECK(!shape.empty(), "DiT::backward: block ", i, "'s offloaded input was never saved");
  Tensor& slot = o.slot[i % 2];
  if (!slot.defined() || slot.shape() != shape) slot = Tensor::empty(shape, DType::F32, opt_.device);
  // The slot was last read by block i + 2's recompute (queued before now): the copy in waits for
  // the compute queued so far, then overlaps with block i + 1's recompute and backward (queued next).
  o.q->mark_compute(i % 2);
  o.q->wait_marked(i % 2);
  o.q->copy_to_device(slot.raw(), o.host[size_t(i)], slot.nbytes());
}

// ---------------------------------------------------------------- backward
// The forward's steps in reverse: unpatchify → gather → head → blocks (each recomputed with a
// tape under activation checkpointing) with the layout adjoints between them → scatter → patch
// embedding; the time embedding gets dL/de0 (every block) + dL/de (head); the text embedding
// gets dL/dctx (every block's cross-attention k and v).
void DiT::backward(const Tensor& dv_in, parallel::SequenceParallel& sp, Tensor* dx_out,
                   Tensor* dcontext_out) {
  OSP_CHECK(train_.active, "DiT::backward: no recorded forward (call forward_train first; each "
            "forward_train allows one backward)");
  const DiTConfig& c = cfg_;
  const Device dev = opt_.device;
  const DType F32 = DType::F32;
  const int64_t B = train_.B, d = c.dim, N = train_.grid.numel();
  const int64_t Kout = c.out_dim * c.patch_volume();
  const sparse::Grid grid = train_.grid;
  const Shape vshape{B, c.out_dim, train_.x_shape[2], train_.x_shape[3], train_.x_shape[4]};
  OSP_CHECK(dv_in.defined() && dv_in.numel() == shape_numel(vshape) &&
                dtype_is_float(dv_in.dtype()),
            "DiT::backward: dL/dv must be a float tensor with the forward output's shape ",
            shape_str(vshape), ", got ", dv_in.defined() ? dv_in.desc() : std::string("undefined"));
  sp.setup(train_.plan);  // cached when unchanged since forward_train
  const layers::Ctx g = ctx(true, nullptr);
  const Tape& G = train_.global;
  prof_.begin_backward();

  // (f) unpatchify → (e) gather_output                               dyl [B, n_local, Kout]
  Tensor dv = Tensor::empty(vshape, F32, dev);
  dv.copy_from(dv_in.contiguous().view(vshape));
  Tensor dyh = Tensor::empty({B, N, Kout}, F32, dev);
  for (int64_t b = 0; b < B; ++b) {
    Tensor db = dyh.select(0, b);
    ops::unpatchify_backward(dv.select(0, b), grid.T, grid.H, grid.W, c.patch_t, c.patch_h,
                             c.patch_w, db);
  }
  Tensor dyl = sp.gather_output_backward(dyh).contiguous();
  // head → dL/d(last block output), dL/de
  Tensor dx = Tensor::empty(train_.x_last.shape(), F32, dev);
  Tensor de = Tensor::zeros({B, d}, F32, dev);
  head_.backward(g, G, c, train_.x_last, dyl, dx, de);
  train_.x_last = Tensor();
  prof_.lap(ProfStage::BwdHead, ProfKind::None);

  // (d) blocks in reverse
  Tensor de0 = Tensor::zeros({B, 6, d}, F32, dev);
  Tensor dctx = Tensor::zeros({B, c.text_len, d}, F32, dev);
  const layers::LinIn ctx_lin{&train_.ctx_lin, nullptr,
                              train_.ctx_float.defined() ? &train_.ctx_float : nullptr};
  const bool ckpt = !train_.block_in.empty();
  const bool offloaded = !train_.block_in_shape.empty();
  if (offloaded) fetch_block_input(int(c.num_layers) - 1);
  for (int i = int(c.num_layers) - 1; i >= 0; --i) {
    const ProfKind pk = kinds_[size_t(i)] == BlockKind::Full ? ProfKind::Full : ProfKind::Sparse;
    if (block_before_) block_before_(i);
    refresh_block_qat(i, true);  // (weight sharding released the forward's Q(W, 15))
    Tape tp;
    if (ckpt) {  // recompute block i from its saved input, recording the tape (one lap)
      Tensor xr = train_.block_in[size_t(i)];
      if (offloaded) {  // block i's input is in slot i % 2 once its copy is done; block i − 1's
        offload_->q->compute_wait_copies();  // comes in during block i's work
        xr = offload_->slot[i % 2];
        if (i > 0) fetch_block_input(i - 1);
      }
      layers::Ctx rc = ctx(true, &tp, pk);
      if (!train_.attn_kept.empty()) rc.attn_keep = &train_.attn_kept[size_t(i)];
      {
        auto unpause = on_scope_exit([&] { prof_.set_paused(false); });
        prof_.set_paused(true);
        blocks_[size_t(i)].forward(rc, c, i, xr, ctx_lin, train_.e0, sp);
      }
      prof_.lap(ProfStage::Recompute, pk);
      train_.block_in[size_t(i)] = Tensor();
    } else {
      tp = std::move(train_.tapes[size_t(i)]);
    }
    const layers::Ctx bc = ctx(true, nullptr, pk);
    blocks_[size_t(i)].backward(bc, tp, c, i, ctx_lin, dx, de0, dctx, sp);
    if (block_after_) block_after_(i);
    drop_block_qat(i);
    if (i > 0) dx = sp.enter_block_backward(i, dx).contiguous();
    prof_.lap(ProfStage::BwdEnterBlock, pk);
  }
  if (offloaded) offload_->slot[0] = offload_->slot[1] = Tensor();  // (every fetch was waited for)
  Tensor dxfull = sp.scatter_input_backward(dx).contiguous();  //   [B, N, d] F32

  // (a) patch embedding (→ dL/dx through the im2col adjoint)
  Tensor dxs;
  patch_.backward(g, G, c, dxfull, dx_out ? &dxs : nullptr, train_.x_shape);
  if (dx_out) *dx_out = train_.batched ? dxs : dxs.select(0, 0);
  // (b) time embedding, (c) text embedding (Q(ctx) in HiF8 is straight-through)
  time_.backward(g, G, de, de0);
  Tensor dci;
  text_.backward(g, G, c, train_.Lc, dctx, dcontext_out ? &dci : nullptr);
  if (dcontext_out) *dcontext_out = dci.view(train_.context_shape);
  prof_.lap(ProfStage::BwdEmbed, ProfKind::None);
  prof_.end_backward();
  train_ = TrainState{};
}

}  // namespace osp::model
