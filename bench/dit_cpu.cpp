// One DiT forward on the CPU (fp32) with random weights, full attention and hybrid Skiparse-2D
// (P = 2), at the golden size and at a small real size (1.3B width, 2 blocks, 480P×17 frames).
// Prints one JSON line per run: config, ms, GFLOP (wan-spec §7.1 model), GFLOP/s.
//   bench_dit_cpu [--only golden|real] [--reps N]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"

using namespace osp;
using model::DiT;
using model::DiTConfig;

namespace {

// CPU seconds of this process (all threads): on a shared machine the wall time depends on the
// load, the CPU time on the code.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

Tensor random_tensor(const Shape& s, float sd, std::mt19937& g) {
  Tensor t = Tensor::empty(s, DType::F32);
  std::normal_distribution<float> nd(0.f, sd);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(g);
  return t;
}

std::map<std::string, Tensor> random_weights(const DiTConfig& c, uint32_t seed) {
  std::mt19937 g(seed);
  std::map<std::string, Tensor> w;
  for (const auto& [name, shape] : DiT::expected_shapes(c)) {
    const bool is_norm = name.find("norm") != std::string::npos;
    const int64_t fan_in = shape.size() >= 2 ? shape_numel(shape) / shape[0] : 1;
    float sd = shape.size() >= 2 ? 1.f / std::sqrt(float(fan_in)) : 0.02f;
    if (name.find("modulation") != std::string::npos) sd = 0.05f;
    Tensor t = random_tensor(shape, sd, g);
    if (is_norm && name.find("weight") != std::string::npos) {  // norm gains around 1
      float* p = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) p[i] += 1.f;
    }
    w[name] = t;
  }
  return w;
}

void run(const char* label, DiTConfig cfg, const Shape& latent, int reps) {
  const auto weights = random_weights(cfg, 1234);
  std::mt19937 g(99);
  Tensor x = random_tensor(latent, 1.f, g);
  Tensor ctx = random_tensor({cfg.text_len, cfg.text_dim}, 0.1f, g);
  const sparse::Grid grid{latent[1], latent[2] / cfg.patch_h, latent[3] / cfg.patch_w};
  for (const char* mode : {"full", "hybrid"}) {
    DiTConfig c = cfg;
    if (std::strcmp(mode, "hybrid") == 0) {
      c.skiparse_mode = "dual_end";
      c.sparse_ratio = 2;
      c.num_full_blocks = c.num_layers >= 8 ? 4 : 0;
    }
    DiT m = DiT::bind(c, weights);
    auto sp = parallel::make_single_device();
    const double flops = model::dit_forward_flops(c, grid, m.block_kinds(), 2, 1);
    if (reps > 1) m.forward(x, {500.f}, ctx, *sp);  // warm-up (workspaces, maps)
    double best = 1e300, best_cpu = 0;
    for (int r = 0; r < reps; ++r) {
      const double c0 = cpu_seconds();
      auto t0 = std::chrono::steady_clock::now();
      Tensor out = m.forward(x, {500.f}, ctx, *sp);
      auto t1 = std::chrono::steady_clock::now();
      const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
      if (ms < best) best = ms, best_cpu = cpu_seconds() - c0;
    }
    std::printf(
        "{\"bench\":\"dit_cpu\",\"size\":\"%s\",\"mode\":\"%s\",\"dim\":%lld,\"ffn\":%lld,"
        "\"heads\":%lld,\"layers\":%lld,\"latent\":[%lld,%lld,%lld,%lld],\"tokens\":%lld,"
        "\"text_len\":%lld,\"threads\":%u,\"reps\":%d,\"ms\":%.1f,\"cpu_s\":%.2f,"
        "\"gflop\":%.2f,\"gflops\":%.2f,\"gflops_per_cpu_s\":%.2f}\n",
        label, mode, (long long)c.dim, (long long)c.ffn_dim, (long long)c.num_heads,
        (long long)c.num_layers, (long long)latent[0], (long long)latent[1],
        (long long)latent[2], (long long)latent[3], (long long)grid.numel(),
        (long long)c.text_len, std::thread::hardware_concurrency(), reps, best, best_cpu,
        flops * 1e-9, flops * 1e-9 / (best * 1e-3), flops * 1e-9 / std::max(best_cpu, 1e-9));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string only;
  int reps = 1;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--only golden|real] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  try {
    if (only.empty() || only == "golden") {
      // golden_dit.safetensors' model: dim 256, ffn 512, 2 heads, 8 layers, text 96×16
      DiTConfig c;
      c.dim = 256, c.ffn_dim = 512, c.num_heads = 2, c.num_layers = 8;
      c.text_dim = 96, c.text_len = 16;
      run("golden", c, {16, 3, 16, 24}, std::max(reps, 3));
    }
    if (only.empty() || only == "real") {
      // 1.3B width, 2 blocks, 480P × 17 frames → latent 16×5×60×104 (7,800 tokens)
      DiTConfig c = DiTConfig::wan_1_3b();
      c.num_layers = 2;
      run("1.3B-2blocks-480p17f", c, {16, 5, 60, 104}, reps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dit_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
