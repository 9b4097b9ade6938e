// The inference memory plan (pipeline/memory_plan.h).
#include "osp/pipeline/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "osp/core/error.h"
#include "osp/model/dit.h"

namespace osp::pipeline {

namespace {
constexpr size_t kGiB = size_t(1) << 30;
constexpr size_t kWorkspace = size_t(512) << 20;  // GEMM/attention workspaces, latents, rounding
constexpr size_t kStreamAlign = 256;               // model/dit_block_stream.cpp aligns each tensor
}  // namespace

const char* dit_weights_name(DitWeights w) {
  switch (w) {
    case DitWeights::Resident: return "resident";
    case DitWeights::Resident8bit: return "8-bit resident";
    case DitWeights::Streamed: return "block streaming";
  }
  return "?";
}

std::string human_bytes(size_t b) {
  char buf[32];
  if (b >= kGiB)
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(kGiB));
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / double(1 << 20));
  return buf;
}

size_t parse_gib(double gib, const char* flag) {
  OSP_CHECK(std::isfinite(gib) && gib > 0 && gib < 1e6, flag, " must be a positive number of GiB (e.g. 24), got ", gib);
  return size_t(gib * double(kGiB));
}

DitWeightBytes dit_weight_bytes(const model::DiTConfig& cfg, bool gpu, bool eight_bit) {
  DitWeightBytes r;
  std::vector<size_t> block(size_t(cfg.num_layers), 0);
  for (const auto& [name, shape] : model::DiT::expected_shapes(cfg)) {
    const size_t n = size_t(shape_numel(shape));
    const bool is_block = name.rfind("blocks.", 0) == 0;
    const bool weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    size_t bytes = 4;  // CPU: f32 everywhere
    if (gpu) {
      // The precision map of DiT::bind: f32 time embedding, modulation and norms; bf16 linears
      // (head bias f32); FP8: one byte per block linear weight (+ a 4-byte scale).
      const bool norm_or_mod = name.find("norm") != std::string::npos || name.find("modulation") != std::string::npos;
      const bool time = name.rfind("time_", 0) == 0;
      if (time || norm_or_mod || name == "head.head.bias") bytes = 4;
      else if (is_block && weight && eight_bit) bytes = 1;
      else bytes = 2;
    }
    size_t b = n * bytes + (is_block && weight && eight_bit && gpu ? 4 : 0);
    if (is_block) {
      const size_t i = size_t(std::stoll(name.substr(7, name.find('.', 7) - 7)));
      block[i] += (b + kStreamAlign - 1) / kStreamAlign * kStreamAlign;
      r.blocks += b;
    } else {
      r.other += b;
    }
  }
  for (size_t b : block) r.max_block = std::max(r.max_block, b);
  return r;
}

std::string MemoryPlan::mode() const {
  std::string s = dit_weights_name(dit_mode);
  s += sequential_cfg ? ", CFG sequential (two B = 1 forwards per step)" : "";
  return s;
}

std::string MemoryPlan::describe() const {
  std::ostringstream os;
  os << "memory plan on " << device << ": DiT " << mode() << "; text encoder "
     << (t5_on_cpu && device != "cpu" ? std::string("on the CPU") : human_bytes(t5_weights) + " + " + human_bytes(t5_activations))
     << ", DiT " << human_bytes(dit_weights);
  if (dit_mode == DitWeights::Streamed) os << " (2 block slots of " << human_bytes(dit_block_bytes) << " + resident layers)";
  os << " + " << human_bytes(dit_activations) << ", VAE " << human_bytes(vae_weights) << " + "
     << human_bytes(vae_activations) << ", workspace " << human_bytes(workspace) << "; peak " << human_bytes(peak);
  if (limit) os << " of the " << human_bytes(limit) << " limit";
  else if (available) os << " of " << human_bytes(available) << " available";
  return os.str();
}

MemoryPlan plan_memory(const MemoryInput& in) {
  const model::DiTConfig& c = in.cfg;
  OSP_CHECK(in.dit_offload == "none" || in.dit_offload == "blocks" || in.dit_offload == "auto",
            "--dit-offload must be none, blocks or auto, got '", in.dit_offload, "'");
  OSP_CHECK(in.cfg_rows == 1 || in.cfg_rows == 2, "memory plan: cfg_rows must be 1 or 2");
  OSP_CHECK(in.limit == 0 || in.gpu, "--max-vram limits GPU memory; this run is on the CPU (--device cpu)");
  MemoryPlan m;
  m.device = in.device;
  m.available = in.available;
  m.limit = in.limit;
  m.workspace = in.gpu ? kWorkspace : 0;
  const size_t cap = in.limit ? (in.available ? std::min(in.limit, in.available) : in.limit) : in.available;
  const size_t wb = in.gpu ? 2 : 4;

  // ---- text encoder: on the device unless --offload (GPU) or it does not fit
  m.t5_on_cpu = in.gpu && in.t5_offload;
  const size_t t5_w = in.t5_params * wb;
  // ~16 live [512, dim] fp32 buffers (hidden, q/k/v, ffn) plus the [heads, 512, 512] scores.
  const size_t t5_a = size_t(512) * size_t(in.t5_dim) * 16 * 4 + size_t(64) * 512 * 512 * 4;
  if (in.gpu && !m.t5_on_cpu && cap && t5_w + t5_a + m.workspace > cap) m.t5_on_cpu = true;
  m.t5_weights = m.t5_on_cpu ? 0 : t5_w;
  m.t5_activations = m.t5_on_cpu ? 0 : t5_a;

  // ---- VAE: its weights; the decode budget is set per candidate below (the room it has depends
  //      on what stays resident beside it)
  m.vae_weights = in.vae_weights;
  // The decode budget beside `resident` bytes of weights: --vae-budget-mb; the CPU's 4 GiB; on a
  // GPU the untiled decode's estimate when it fits three quarters of the room (the rest absorbs
  // error in the estimate), else that room (tiles), at least 256 MiB; 8 GiB when the free memory
  // is unknown.
  auto vae_budget = [&](size_t resident) -> size_t {
    if (in.vae_budget) return in.vae_budget;
    if (!in.gpu) return size_t(4) << 30;
    if (!cap) return size_t(8) << 30;
    const size_t used = resident + m.workspace;
    const size_t room = cap > used ? (cap - used) / 4 * 3 : 0;
    const size_t want = in.vae_full_decode ? std::min(room, in.vae_full_decode) : room;
    return std::max(want, size_t(256) << 20);
  };

  // ---- DiT candidates
  const double per_token_row =
      (34.0 * double(c.dim) + 3.0 * double(c.ffn_dim) + (in.hybrid ? 12.0 * double(c.dim) : 0.0)) * (in.gpu ? 1.0 : 2.0);
  auto activations = [&](int rows) {
    const double tok = double(in.tokens) / double(std::max(1, in.sp_ranks));
    double a = double(rows) * tok * per_token_row;
    a += double(rows) * double(c.text_len) * double(c.dim + c.text_dim) * 4.0;  // context + text embedding
    a += double(in.latent_elems) * 4.0 * double(2 + 2 * rows);                  // x, v, x per row, velocity rows
    if (in.step_cache) a += double(in.cfg_rows) * tok * double(c.dim) * 4.0;    // residual, every row
    return size_t(a);
  };
  struct Cand {
    DitWeights w;
    bool seq;
  };
  std::vector<Cand> cands;
  const bool eight_ok = in.gpu && in.quant == "hif8";
  const bool stream_ok = in.gpu || in.dit_offload == "blocks";  // on the CPU streaming saves nothing
  auto add = [&](DitWeights w) {
    if (in.weights_fixed && w != in.fixed_weights) return;
    cands.push_back({w, false});
    if (in.cfg_rows == 2) cands.push_back({w, true});  // (with a step cache each row keeps its residual)
  };
  if (in.dit_offload != "blocks" || in.weights_fixed) {
    add(DitWeights::Resident);
    if (eight_ok) add(DitWeights::Resident8bit);
  }
  if ((in.dit_offload != "none" && stream_ok) || in.weights_fixed) add(DitWeights::Streamed);

  auto evaluate = [&](const Cand& k, MemoryPlan& p) {
    const bool eight = k.w == DitWeights::Resident8bit || (in.gpu && in.quant == "fp8");
    const DitWeightBytes wb8 = dit_weight_bytes(c, in.gpu, eight);
    p.dit_mode = k.w;
    p.sequential_cfg = k.seq;
    p.dit_block_bytes = wb8.max_block;
    p.dit_weights = k.w == DitWeights::Streamed ? wb8.other + 2 * wb8.max_block : wb8.other + wb8.blocks;
    p.dit_activations = activations(k.seq ? 1 : in.cfg_rows);
    p.vae_budget = vae_budget(in.keep_loaded ? p.t5_weights + p.dit_weights + p.vae_weights : p.vae_weights);
    p.vae_activations = std::min(in.vae_full_decode, p.vae_budget);
    if (in.keep_loaded) {
      p.peak = p.t5_weights + p.dit_weights + p.vae_weights +
               std::max({p.t5_activations, p.dit_activations, p.vae_activations}) + p.workspace;
    } else {
      p.peak = std::max({p.t5_weights + p.t5_activations, p.dit_weights + p.dit_activations,
                         p.vae_weights + p.vae_activations}) + p.workspace;
    }
  };
  OSP_CHECK(!cands.empty(), "memory plan: no DiT memory mode for --dit-offload ", in.dit_offload);
  for (const Cand& k : cands) {
    MemoryPlan p = m;
    evaluate(k, p);
    if (!cap || p.peak <= cap) {
      p.rejected = m.rejected;
      return p;
    }
    m.rejected.push_back(str(dit_weights_name(k.w), k.seq ? " + CFG sequential" : "", ": ", human_bytes(p.peak)));
  }
  std::ostringstream os;
  os << "the run does not fit " << (in.limit ? str("the --max-vram limit of ", human_bytes(in.limit))
                                             : str("the ", human_bytes(cap), " free on ", in.device));
  if (in.limit && in.available && in.available < in.limit) os << " (only " << human_bytes(in.available) << " free)";
  os << " in any memory mode";
  if (in.dit_offload != "auto") os << " allowed by --dit-offload " << in.dit_offload;
  os << ". Estimated peaks:";
  for (const std::string& r : m.rejected) os << " " << r << ";";
  MemoryPlan last = m;
  evaluate(cands.back(), last);
  os << " the smallest (" << last.mode() << ") needs DiT " << human_bytes(last.dit_weights) << " + "
     << human_bytes(last.dit_activations) << " of activations. Try a smaller --size or fewer --frames, "
     << (in.dit_offload == "none" ? "--dit-offload auto, " : "") << "more GPUs with mpirun ... --sp ssp, or a larger --max-vram";
  fail(os.str());
}

}  // namespace osp::pipeline
