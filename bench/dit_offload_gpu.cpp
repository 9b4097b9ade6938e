// DiT memory modes on one GPU (issue 18): the sampling step time of a random-weight DiT at the
// released shapes, resident and unlimited (CFG batched, B = 2: today's default) against the mode
// the memory plan (pipeline/memory_plan.h) picks under a --max-vram limit, run under that limit
// (core/device.h set_cuda_memory_limit: an allocation beyond it fails, so "peak within the
// limit" is enforced, not just measured). Per case and mode: seconds per sampling step (the DiT
// forward(s) of one CFG step, device-synced; median over --steps after one warm-up step), the
// caching allocator's peak of reserved bytes (bind included) and the plan's DiT estimate.
// Only the DiT stage: text encoder and VAE are not run (their stages are planned apart).
// Output: one JSON line per case and mode, then {"bench":"dit_offload","summary":...} per case.
//   bench_dit_offload_gpu [--cases 14b:1280x720x81:24,1.3b:832x480x81:8] [--steps 3]
//                         [--attention hybrid|full] [--mode auto|blocks]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/model/dit_block_stream.h"
#include "osp/pipeline/memory_plan.h"
#include "osp/sparse/skiparse.h"
#include "dit_weights.h"

#ifndef OSP_HAVE_CUDA
int main() {
  std::printf("{\"bench\":\"dit_offload\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}
#else
#include "gpu_bench_util.h"

using namespace osp;

namespace {

constexpr double kGiB = double(size_t(1) << 30);
struct Case {
  std::string model;
  int W = 0, H = 0, F = 0;
  double limit_gib = 0;
};

struct Run {
  bool ok = false;
  std::string error;
  double s_per_step = 0, peak_gib = 0, est_gib = 0, setup_s = 0;
  std::string mode;
  int64_t copies = 0;
};

std::vector<sparse::BlockKind> kinds_for(const model::DiTConfig& cfg, const std::string& attention) {
  if (attention == "full") return sparse::plan_blocks(int(cfg.num_layers), "full", 0);
  const int nfull = std::max(4, int(cfg.num_layers / 2) / 4 * 4);  // as osp generate --attention hybrid on Wan2.1
  return sparse::plan_blocks(int(cfg.num_layers), "dual_end", nfull);
}

// One mode: bind (streamed or resident), warm-up step, `steps` timed steps.
Run run_mode(const model::DiTConfig& cfg, const Case& c, const std::string& attention, size_t limit,
             pipeline::DitWeights wmode, bool sequential, int steps) {
  Run r;
  r.mode = std::string(pipeline::dit_weights_name(wmode)) + (sequential ? ", CFG sequential" : ", CFG batched");
  cuda_synchronize();
  cuda_empty_cache();
  set_cuda_memory_limit(limit);
  cuda_reset_peak();
  try {
    const Device dev = Device::cuda(0);
    const double t0 = bench::now_s();
    model::DiTOptions opt;
    opt.device = dev;
    std::shared_ptr<model::BlockStream> bs;
    if (wmode == pipeline::DitWeights::Streamed) {
      bs = std::make_shared<model::BlockStream>(dev);
      model::BlockStream::bind_into(bs, opt);
    }
    auto dit = std::make_unique<model::DiT>(model::DiT::bind(cfg, bench::random_dit_weights(cfg), opt));
    if (bs) model::BlockStream::attach(bs, *dit);
    dit->set_block_kinds(kinds_for(cfg, attention), cfg.sparse_ratio > 1 ? cfg.sparse_ratio : 2);
    cuda_synchronize();
    r.setup_s = bench::now_s() - t0;
    const int64_t T = (c.F - 1) / 4 + 1, h = c.H / 8, w = c.W / 8;
    Tensor x = randn({2, 16, T, h, w}, 7).to(dev);
    Tensor ctx = (randn({2, cfg.text_len, cfg.text_dim}, 8).to(dev));
    auto sp = parallel::make_single_device();
    std::vector<double> times;
    for (int s = 0; s <= steps; ++s) {
      const float t = 900.0f - 10.0f * float(s);
      const double ts = bench::now_s();
      if (sequential) {
        for (int64_t b = 0; b < 2; ++b) (void)dit->forward(x.slice(0, b, b + 1), {t}, ctx.slice(0, b, b + 1), *sp);
      } else {
        (void)dit->forward(x, {t, t}, ctx, *sp);
      }
      cuda_synchronize();
      if (s > 0) times.push_back(bench::now_s() - ts);  // step 0 warms up
      std::fprintf(stderr, "[dit_offload] %s %s step %d: %.3f s\n", c.model.c_str(), r.mode.c_str(), s, bench::now_s() - ts);
    }
    std::sort(times.begin(), times.end());
    r.s_per_step = times[times.size() / 2];
    r.peak_gib = double(cuda_peak_reserved_bytes()) / kGiB;
    if (bs) r.copies = bs->stats().copies;
    r.ok = true;
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  cuda_synchronize();
  cuda_empty_cache();
  set_cuda_memory_limit(0);
  return r;
}

void print_run(const std::string& card, const Case& c, const std::string& attention, const char* which,
               double limit_gib, const Run& r) {
  std::ostringstream os;
  os << "{\"bench\":\"dit_offload\",\"card\":\"" << card << "\",\"model\":\"" << c.model << "\",\"size\":\"" << c.W
     << "x" << c.H << "x" << c.F << "\",\"attention\":\"" << attention << "\",\"run\":\"" << which
     << "\",\"limit_gib\":" << limit_gib << ",\"mode\":\"" << r.mode << "\",\"ok\":" << (r.ok ? "true" : "false");
  if (r.ok)
    os << ",\"s_per_step\":" << r.s_per_step << ",\"peak_gib\":" << r.peak_gib << ",\"est_gib\":" << r.est_gib
       << ",\"setup_s\":" << r.setup_s << ",\"block_copies\":" << r.copies;
  else {
    std::string e = r.error;
    for (char& ch : e)
      if (ch == '"' || ch == '\\' || ch == '\n') ch = '\'';
    os << ",\"error\":\"" << e << "\"";
  }
  os << "}";
  std::printf("%s\n", os.str().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string cases_s = "14b:1280x720x81:24,1.3b:832x480x81:8", attention = "hybrid", mode = "auto";
  int steps = 3;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--cases") && i + 1 < argc) cases_s = argv[++i];
    else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--attention") && i + 1 < argc) attention = argv[++i];
    else if (!std::strcmp(argv[i], "--mode") && i + 1 < argc) mode = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) steps = 1;
    else {
      std::fprintf(stderr, "usage: %s [--cases MODEL:WxHxF:GIB,...] [--steps N] [--attention hybrid|full] "
                   "[--mode auto|blocks]\n", argv[0]);
      return 2;
    }
  }
  if (!cuda_available()) {
    std::printf("{\"bench\":\"dit_offload\",\"skipped\":\"no CUDA GPU visible\"}\n");
    return 0;
  }
  const std::string card = bench::card_name();
  int status = 0;
  std::stringstream cs(cases_s);
  std::string item;
  while (std::getline(cs, item, ',')) {
    Case c;
    char model[16] = {0};
    if (std::sscanf(item.c_str(), "%15[^:]:%dx%dx%d:%lf", model, &c.W, &c.H, &c.F, &c.limit_gib) != 5) {
      std::fprintf(stderr, "bad case '%s' (MODEL:WxHxF:GIB)\n", item.c_str());
      return 2;
    }
    c.model = model;
    const model::DiTConfig cfg = c.model == "14b" ? model::DiTConfig::wan_14b() : model::DiTConfig::wan_1_3b();
    // The plan of the DiT stage alone (text encoder on the CPU, no VAE) under the limit.
    pipeline::MemoryInput in;
    in.cfg = cfg;
    in.hybrid = attention == "hybrid";
    const int64_t T = (c.F - 1) / 4 + 1, h = c.H / 8, w = c.W / 8;
    in.tokens = T * (h / 2) * (w / 2);
    in.latent_elems = 16 * T * h * w;
    in.gpu = true;
    in.t5_offload = true;
    in.dit_offload = mode;
    in.limit = size_t(c.limit_gib * kGiB);
    in.device = "cuda:0";
    Run unl = run_mode(cfg, c, attention, 0, pipeline::DitWeights::Resident, false, steps);
    {
      pipeline::MemoryInput u = in;
      u.limit = 0;
      const pipeline::MemoryPlan up = pipeline::plan_memory(u);
      unl.est_gib = double(up.dit_weights + up.dit_activations + up.workspace) / kGiB;
    }
    print_run(card, c, attention, "unlimited", 0, unl);
    Run lim;
    try {
      const pipeline::MemoryPlan p = pipeline::plan_memory(in);
      std::fprintf(stderr, "[dit_offload] %s\n", p.describe().c_str());
      lim = run_mode(cfg, c, attention, in.limit, p.dit_mode, p.sequential_cfg, steps);
      lim.est_gib = double(p.dit_weights + p.dit_activations + p.workspace) / kGiB;
    } catch (const std::exception& e) {
      lim.error = e.what();
    }
    print_run(card, c, attention, "limited", c.limit_gib, lim);
    if (!unl.ok || !lim.ok) status = 1;
    std::printf("{\"bench\":\"dit_offload\",\"summary\":true,\"card\":\"%s\",\"model\":\"%s\",\"size\":\"%dx%dx%d\","
                "\"limit_gib\":%g,\"mode\":\"%s\",\"unlimited_s\":%g,\"limited_s\":%g,\"ratio\":%g,"
                "\"unlimited_peak_gib\":%g,\"limited_peak_gib\":%g,\"limited_est_gib\":%g,\"within_limit\":%s}\n",
                card.c_str(), c.model.c_str(), c.W, c.H, c.F, c.limit_gib, lim.mode.c_str(), unl.s_per_step,
                lim.s_per_step, unl.ok && lim.ok ? lim.s_per_step / unl.s_per_step : 0.0, unl.peak_gib, lim.peak_gib,
                lim.est_gib, lim.ok && lim.peak_gib <= c.limit_gib ? "true" : "false");
    std::fflush(stdout);
  }
  return status;
}
#endif
