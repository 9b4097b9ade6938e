// End-to-end text-to-video pipeline on one GPU with random weights at the released shapes
// (the pipeline issue's measurement): 1.3B DiT at 832×480×81 (latent 16×21×60×104), 50 UniPC
// steps (shift 5, guidance 5, cond + uncond batched as B = 2), attention `full` (Wan2.1) and
// `hybrid` (dual-end Skiparse, 8 full blocks, P = 2). Per stage: wall time (device synced) and
// peak CUDA memory (osp::cuda_peak_bytes, reset at the start of each stage; weights included).
//   1. umT5-XXL encode of 2 prompts (random bf16 weights, 24 distinct layers, full vocabulary):
//      a fixed ~60-token id sequence each, run trimmed and zero-padded to 512 rows as
//      pipeline::generate does (T5Encoder::encode).
//   2. DiT sampling loop, written as in pipeline::generate (which does not expose the loop on
//      its own): Philox noise, sample::make_sampler("unipc", steps, 5), per step the latent
//      duplicated to [2, 16, T, h, w], one forward, sample::cfg_combine, sampler step.
//   3. Wan-VAE decode (random weights, real config) of each mode's final latent to
//      3×81×480×832, tiled with tiles_for_budget(--vae-budget-gib, default 8: the pipeline's
//      budget when the free memory is unknown; with room it decodes untiled — e.g. 24 here).
// Each stage's weights are released before the next stage's are made (T5 → DiT → VAE).
// `s` excludes making the random weights and binding them (reported as setup_s).
// Output: one JSON line per stage and mode, then a total line per mode
// (total s = t5 + dit[mode] + vae[mode]; peak_gib = max over those stages). Progress → stderr.
//   bench_pipeline_gpu [--steps 50] [--modes full,hybrid] [--skip-t5] [--skip-vae]
//                      [--vae-budget-gib 8] [--vae-reps 1]
// --vae-reps N > 1 decodes each latent N times: "s" stays the first decode (a fresh process's:
// it builds the cuDNN convolution plans of the real shapes), "s_repeat" is the fastest of the
// others (plans cached: a server's later videos).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/core/philox.h"
#include "osp/core/tensor.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/model/t5.h"
#include "osp/model/vae.h"
#include "osp/sample/sampler.h"
#include "osp/sparse/skiparse.h"
#include "dit_weights.h"

#ifndef OSP_HAVE_CUDA
int main() {
  std::printf("{\"bench\":\"pipeline_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}
#else
#include "gpu_bench_util.h"

using namespace osp;

namespace {

constexpr double kGiB = double(size_t(1) << 30);
constexpr int64_t kT = 21, kH = 60, kW = 104;  // latent of 832×480×81
constexpr float kGuidance = 5.f;
constexpr double kShift = 5.0;

struct StageResult {
  double s = 0, setup_s = 0, peak_gib = 0;
  bool ok = false;
};

void begin_stage() {
  cuda_synchronize();
  cuda_empty_cache();
  cuda_reset_peak();
}

double peak_gib() { return double(cuda_peak_bytes()) / kGiB; }

void print_stage(const std::string& card, const char* stage, const std::string& mode,
                 const StageResult& r, const std::string& extra = "") {
  std::printf("{\"bench\":\"pipeline_gpu\",\"card\":\"%s\",\"model\":\"1.3B\",\"res\":\"832x480x81\","
              "\"stage\":\"%s\",\"mode\":\"%s\",\"s\":%.3f,\"setup_s\":%.1f,\"peak_gib\":%.2f%s}\n",
              card.c_str(), stage, mode.c_str(), r.s, r.setup_s, r.peak_gib, extra.c_str());
  std::fflush(stdout);
}

void print_error(const char* stage, const std::string& mode, const std::string& what) {
  std::string msg = what;
  for (char& ch : msg)
    if (ch == '"' || ch == '\\' || ch == '\n') ch = ' ';
  std::fprintf(stderr, "bench_pipeline_gpu: stage %s (%s) failed: %s\n", stage, mode.c_str(), what.c_str());
  std::printf("{\"bench\":\"pipeline_gpu\",\"stage\":\"%s\",\"mode\":\"%s\",\"error\":\"%s\"}\n", stage,
              mode.c_str(), msg.c_str());
  std::fflush(stdout);
}

// ---------------------------------------------------------------- 1. umT5-XXL

// Returns the two prompts' trimmed embeddings ([n_valid, 4096] each, on the GPU).
StageResult run_t5(std::vector<Tensor>& ctx) {
  StageResult r;
  begin_stage();
  const double t_setup = bench::now_s();
  const model::T5Config c;  // XXL defaults (24 layers, dim 4096, ffn 10240, vocab 256384)
  std::map<std::string, Tensor> w;
  {
    // Full-size embedding (memory as in the real model), filled from one random 32 000-row
    // block; the ids used below stay under 32 000.
    const int64_t block = 32000;
    Tensor rows = bench::random_gpu({block, c.dim}, DType::BF16, 1.f, 1);
    Tensor emb = Tensor::empty({c.vocab, c.dim}, DType::BF16, Device::cuda(0));
    for (int64_t r0 = 0; r0 < c.vocab; r0 += block) {
      const int64_t n = std::min(block, c.vocab - r0);
      Tensor dst = emb.slice(0, r0, r0 + n);
      dst.copy_from(rows.slice(0, 0, n));
    }
    w["token_embedding.weight"] = emb;
  }
  const float s_in = 1.f / std::sqrt(float(c.dim)), s_ff = 1.f / std::sqrt(float(c.dim_ffn));
  // One random set per shape, cloned per layer on the device (distinct memory, as the real
  // 24-layer encoder holds; values do not change the cost).
  Tensor q = bench::random_gpu({c.dim_attn, c.dim}, DType::BF16, s_in, 2);
  Tensor o = bench::random_gpu({c.dim, c.dim_attn}, DType::BF16, s_in, 5);
  Tensor up = bench::random_gpu({c.dim_ffn, c.dim}, DType::BF16, s_in, 6);
  Tensor down = bench::random_gpu({c.dim, c.dim_ffn}, DType::BF16, s_ff, 8);
  Tensor pos = bench::random_gpu({c.num_buckets, c.num_heads}, DType::BF16, 1.f, 9);
  Tensor ones = Tensor::from_vector(std::vector<float>(size_t(c.dim), 1.f), {c.dim}).to(Device::cuda(0));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    w[b + "norm1.weight"] = ones.clone();
    w[b + "norm2.weight"] = ones.clone();
    w[b + "attn.q.weight"] = q.clone();
    w[b + "attn.k.weight"] = q.clone();
    w[b + "attn.v.weight"] = q.clone();
    w[b + "attn.o.weight"] = o.clone();
    w[b + "ffn.gate.0.weight"] = up.clone();
    w[b + "ffn.fc1.weight"] = up.clone();
    w[b + "ffn.fc2.weight"] = down.clone();
    w[b + "pos_embedding.embedding.weight"] = pos.clone();
  }
  w["norm.weight"] = ones;
  q = o = up = down = pos = Tensor();
  {
    auto t5 = model::T5Encoder::load(
        [&](const std::string& n) { auto it = w.find(n); return it == w.end() ? Tensor() : it->second; },
        Device::cuda(0));
    w.clear();
    // Warm-up (cuBLAS heuristics, allocator) on a short prompt, not timed.
    t5.encode(std::vector<int32_t>(512, 5), 8, 512);
    cuda_synchronize();
    r.setup_s = bench::now_s() - t_setup;
    // Prompt and negative prompt: fixed id sequences (~60 tokens + EOS id 1), zero-padded to 512.
    const int64_t lens[2] = {60, 57};
    const double t0 = bench::now_s();
    for (int p = 0; p < 2; ++p) {
      std::vector<int32_t> ids(512, 0);
      for (int64_t i = 0; i + 1 < lens[p]; ++i) ids[size_t(i)] = int32_t((i * 7919 + 13 + 101 * p) % 32000);
      ids[size_t(lens[p] - 1)] = 1;
      Tensor e = t5.encode(ids, lens[p], 512);
      ctx.push_back(e.slice(0, 0, lens[p]).clone());
    }
    cuda_synchronize();
    r.s = bench::now_s() - t0;
    r.peak_gib = peak_gib();
  }
  cuda_empty_cache();
  r.ok = true;
  return r;
}

// ---------------------------------------------------------------- 2. DiT

// The pipeline's sampling loop (pipeline::generate, step 2) for one attention plan.
Tensor sample_latent(model::DiT& dit, const Tensor& context, int steps, uint64_t seed,
                     parallel::SequenceParallel& sp, const std::string& mode) {
  const Device dev = Device::cuda(0);
  const int64_t B = context.size(0);
  Tensor x = randn({16, kT, kH, kW}, seed).to(dev);
  auto sampler = sample::make_sampler("unipc", steps, kShift);
  Tensor xb = Tensor::empty({B, 16, kT, kH, kW}, DType::F32, dev);
  Tensor v = Tensor::empty({16, kT, kH, kW}, DType::F32, dev);
  const double t0 = bench::now_s();
  for (int i = 0; i < steps; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      Tensor dst = xb.select(0, b);
      dst.copy_from(x);
    }
    const float t = float(sampler->timestep(i));
    Tensor vb = dit.forward(xb, std::vector<float>(size_t(B), t), context, sp);
    if (B == 2) sample::cfg_combine(vb.select(0, 0), vb.select(0, 1), kGuidance, v);
    else v.copy_from(vb.select(0, 0));
    sampler->step(i, v, x);
    if (i == 0 || (i + 1) % 5 == 0 || i + 1 == steps) {
      cuda_synchronize();
      const double el = bench::now_s() - t0;
      std::fprintf(stderr, "[pipeline_gpu] dit %s: step %d/%d, %.1f s (%.3f s/step)\n", mode.c_str(), i + 1,
                   steps, el, el / (i + 1));
    }
  }
  cuda_synchronize();
  return x;
}

bool all_finite(const Tensor& t) {
  for (float f : t.to_float_vector())
    if (!std::isfinite(f)) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 50;
  std::string modes_arg = "full,hybrid";
  bool skip_t5 = false, skip_vae = false;
  double vae_budget_gib = 8;
  int vae_reps = 1;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--modes") && i + 1 < argc) modes_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--skip-t5")) skip_t5 = true;
    else if (!std::strcmp(argv[i], "--skip-vae")) skip_vae = true;
    else if (!std::strcmp(argv[i], "--vae-budget-gib") && i + 1 < argc) vae_budget_gib = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--vae-reps") && i + 1 < argc) vae_reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: %s [--steps N] [--modes full,hybrid] [--skip-t5] [--skip-vae] "
                   "[--vae-budget-gib G] [--vae-reps N]\n",
                   argv[0]);
      return 2;
    }
  }
  std::vector<std::string> modes;
  for (size_t p = 0; p <= modes_arg.size();) {
    const size_t q = std::min(modes_arg.find(',', p), modes_arg.size());
    if (q > p) modes.push_back(modes_arg.substr(p, q - p));
    p = q + 1;
  }
  for (const auto& m : modes)
    if (m != "full" && m != "hybrid") {
      std::fprintf(stderr, "%s: unknown mode '%s' (full, hybrid)\n", argv[0], m.c_str());
      return 2;
    }
  if (modes.empty() || steps < 1 || !(vae_budget_gib > 0) || vae_reps < 1) {
    std::fprintf(stderr, "%s: need at least one mode, --steps >= 1, --vae-budget-gib > 0 and --vae-reps >= 1\n",
                 argv[0]);
    return 2;
  }

  std::string card;
  try {
    if (!cuda_available()) {
      std::printf("{\"bench\":\"pipeline_gpu\",\"skipped\":\"no CUDA GPU visible\"}\n");
      return 0;
    }
    card = bench::card_name();
  } catch (const std::exception& e) {
    print_error("setup", "", e.what());
    return 1;
  }
  int status = 0;
  const model::DiTConfig cfg = model::DiTConfig::wan_1_3b();

  // ---- 1. text
  std::vector<Tensor> ctx;
  StageResult t5r;
  if (!skip_t5) {
    std::fprintf(stderr, "[pipeline_gpu] umT5-XXL: making random weights, encoding 2 prompts\n");
    try {
      t5r = run_t5(ctx);
      print_stage(card, "t5", "shared", t5r);
      std::fprintf(stderr, "[pipeline_gpu] umT5-XXL: %.3f s, peak %.2f GiB\n", t5r.s, t5r.peak_gib);
    } catch (const std::exception& e) {
      print_error("t5", "shared", e.what());
      status = 1;
      ctx.clear();
    }
    cuda_empty_cache();
  }
  if (ctx.size() != 2) {
    // Skipped (or failed): random context rows of the same length instead.
    ctx.clear();
    for (int64_t L : {int64_t(60), int64_t(57)})
      ctx.push_back(bench::random_gpu({L, cfg.text_dim}, DType::BF16, 0.1f, uint32_t(20 + L)));
  }

  // ---- 2. DiT (bound once; both attention plans on the same weights)
  std::map<std::string, StageResult> ditr, vaer;
  std::map<std::string, Tensor> latents;  // host copies of each mode's final latent
  try {
    begin_stage();
    std::fprintf(stderr, "[pipeline_gpu] DiT 1.3B: binding random bf16 weights\n");
    const double t_setup = bench::now_s();
    model::DiTOptions dopt{Device::cuda(0)};
    model::DiT dit = model::DiT::bind(cfg, bench::random_dit_weights(cfg), dopt);
    cuda_synchronize();
    const double setup_s = bench::now_s() - t_setup;
    const Device dev = Device::cuda(0);
    // Context [2, text_len, text_dim] F32: each prompt's rows, then zeros (as the pipeline).
    Tensor context = Tensor::zeros({2, cfg.text_len, cfg.text_dim}, DType::F32, dev);
    for (int64_t b = 0; b < 2; ++b) {
      const Tensor& c = ctx[size_t(b)];
      const int64_t L = std::min(c.size(0), cfg.text_len);
      Tensor dst = context.select(0, b).slice(0, 0, L);
      dst.copy_from(c.slice(0, 0, L).to(DType::F32));
    }
    ctx.clear();
    auto sp = parallel::make_single_device();
    for (const auto& mode : modes) {
      try {
        if (mode == "hybrid") dit.set_block_kinds(sparse::plan_blocks(int(cfg.num_layers), "dual_end", 8), 2);
        else dit.set_block_kinds(sparse::plan_blocks(int(cfg.num_layers), "full", 0), 2);
        // Warm-up forward (cuBLAS/cuDNN heuristics, allocator), not timed.
        {
          Tensor xb = randn({2, 16, kT, kH, kW}, 99).to(dev);
          dit.forward(xb, {999.f, 999.f}, context, *sp);
          cuda_synchronize();
        }
        cuda_reset_peak();
        StageResult r;
        r.setup_s = setup_s;
        const double t0 = bench::now_s();
        Tensor x = sample_latent(dit, context, steps, 42, *sp, mode);
        r.s = bench::now_s() - t0;
        r.peak_gib = peak_gib();
        r.ok = true;
        latents[mode] = x.to(Device::cpu());
        ditr[mode] = r;
        print_stage(card, "dit", mode, r,
                    str(",\"steps\":", steps, ",\"s_per_step\":", r.s / steps,
                        ",\"latent_finite\":", all_finite(latents[mode]) ? "true" : "false"));
      } catch (const std::exception& e) {
        print_error("dit", mode, e.what());
        status = 1;
      }
      cuda_empty_cache();
    }
  } catch (const std::exception& e) {
    print_error("dit", "bind", e.what());
    status = 1;
  }
  cuda_empty_cache();

  // ---- 3. VAE decode of each mode's latent
  if (!skip_vae && !latents.empty()) {
    try {
      begin_stage();
      std::fprintf(stderr, "[pipeline_gpu] Wan-VAE: making random weights\n");
      const double t_setup = bench::now_s();
      model::VaeConfig vcfg;
      vcfg.has_encoder = false;
      std::map<std::string, Tensor> w;
      uint32_t seed = 100;
      for (const auto& [name, shape] : model::vae_tensor_shapes(vcfg)) {
        if (name.rfind("encoder.", 0) == 0 || name.rfind("conv1.", 0) == 0) continue;
        const bool gamma = name.size() > 6 && name.compare(name.size() - 6, 6, ".gamma") == 0;
        const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
        if (gamma || bias) {
          w[name] = Tensor::from_vector(std::vector<float>(size_t(shape_numel(shape)), gamma ? 1.f : 0.f), shape)
                        .to(Device::cuda(0));
        } else {
          int64_t fan_in = 1;
          for (size_t d = 1; d < shape.size(); ++d) fan_in *= shape[d];
          w[name] = bench::random_gpu(shape, DType::F32, 1.f / std::sqrt(float(fan_in)), seed++);
        }
      }
      model::WanVae vae = model::WanVae::load(
          [&](const std::string& n) { auto it = w.find(n); return it == w.end() ? Tensor() : it->second; },
          Device::cuda(0), vcfg);
      w.clear();
      vae.decode(bench::random_gpu({16, 2, 8, 8}, DType::F32, 1.f, 8));  // warm-up
      cuda_synchronize();
      const double setup_s = bench::now_s() - t_setup;
      const model::DecodeOptions dec = model::tiles_for_budget(kH, kW, size_t(vae_budget_gib * kGiB));
      std::fprintf(stderr, "[pipeline_gpu] Wan-VAE: decode tiles %lldx%lld (0 = untiled), overlap %lld\n",
                   (long long)dec.tile_h, (long long)dec.tile_w, (long long)dec.overlap);
      for (const auto& [mode, lat] : latents) {
        try {
          Tensor z = lat.to(Device::cuda(0));
          cuda_synchronize();
          cuda_empty_cache();
          cuda_reset_peak();
          StageResult r;
          r.setup_s = setup_s;
          const double t0 = bench::now_s();
          Tensor video = vae.decode(z, dec);
          cuda_synchronize();
          r.s = bench::now_s() - t0;
          double again = -1;  // the fastest repeat (plans cached)
          for (int rep = 1; rep < vae_reps; ++rep) {
            video = Tensor();
            const double t1 = bench::now_s();
            video = vae.decode(z, dec);
            cuda_synchronize();
            const double s1 = bench::now_s() - t1;
            again = again < 0 ? s1 : std::min(again, s1);
          }
          r.peak_gib = peak_gib();
          r.ok = true;
          vaer[mode] = r;
          const Shape vs = video.shape();
          std::string shp;
          for (size_t d = 0; d < vs.size(); ++d) shp += (d ? "," : "") + std::to_string(vs[d]);
          print_stage(card, "vae", mode, r,
                      str(",\"video\":[", shp, "],\"tile\":[", dec.tile_h, ",", dec.tile_w, "]",
                          again >= 0 ? str(",\"s_repeat\":", again) : std::string()));
        } catch (const std::exception& e) {
          print_error("vae", mode, e.what());
          status = 1;
        }
      }
    } catch (const std::exception& e) {
      print_error("vae", "load", e.what());
      status = 1;
    }
    cuda_empty_cache();
  }

  // ---- totals
  for (const auto& mode : modes) {
    if (!ditr.count(mode)) continue;
    StageResult tot;
    std::string parts = "dit";
    tot.s = ditr[mode].s;
    tot.peak_gib = ditr[mode].peak_gib;
    tot.setup_s = ditr[mode].setup_s;
    if (t5r.ok) {
      tot.s += t5r.s, tot.setup_s += t5r.setup_s, tot.peak_gib = std::max(tot.peak_gib, t5r.peak_gib);
      parts = "t5+" + parts;
    }
    if (vaer.count(mode)) {
      tot.s += vaer[mode].s, tot.setup_s += vaer[mode].setup_s;
      tot.peak_gib = std::max(tot.peak_gib, vaer[mode].peak_gib);
      parts += "+vae";
    }
    print_stage(card, "total", mode, tot, str(",\"stages\":\"", parts, "\",\"steps\":", steps));
  }
  return status;
}
#endif
