// A synthetic latent cache for benchmarking `osp train` (scripts/bench-train.sh): ONE sample of
// random values at a given latent and context shape (default the Wan2.1 1.3B 832x480x81 step:
// latent [16, 21, 60, 104], context [512, 4096]), written with train::LatentCacheWriter (the
// empty context is zeros of the same shape, so caption dropout would not change the step's cost).
// With --config it also prints the model's forward FLOPs (model::dit_forward_flops, wan-spec §7.1)
// for `--attention full` and `--attention hybrid` (train::config_for_attention: the layout
// `osp train` trains), so the benchmark's MFU uses the engine's own FLOP model.
//   bench_make_train_cache --out DIR [--latent 16,21,60,104] [--context 512,4096] [--config dit.json]
//                          [--seed N] [--overwrite]
// Prints one JSON line.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "osp/core/error.h"
#include "osp/model/dit.h"
#include "osp/train/dit_train_model.h"
#include "osp/train/latent_dataset.h"

using namespace osp;

namespace {

std::vector<int64_t> parse_dims(const std::string& s, size_t n, const char* flag) {
  std::vector<int64_t> v;
  size_t a = 0;
  while (a <= s.size()) {
    const size_t b = s.find(',', a);
    const std::string part = s.substr(a, b == std::string::npos ? std::string::npos : b - a);
    char* end = nullptr;
    const long long x = std::strtoll(part.c_str(), &end, 10);
    OSP_CHECK(!part.empty() && end && *end == '\0' && x >= 1 && x <= (1 << 20), flag, ": bad size '", part, "' in '", s,
              "'");
    v.push_back(int64_t(x));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  OSP_CHECK(v.size() == n, flag, " needs ", n, " comma-separated sizes, got '", s, "'");
  return v;
}

Tensor random_tensor(const Shape& s, float sd, std::mt19937& g) {
  Tensor t = Tensor::empty(s, DType::F32);
  std::normal_distribution<float> nd(0.f, sd);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(g);
  return t;
}

int run(int argc, char** argv) {
  std::string out, latent_s = "16,21,60,104", context_s = "512,4096", config;
  unsigned seed = 0;
  bool overwrite = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      OSP_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--out") out = next();
    else if (a == "--latent") latent_s = next();
    else if (a == "--context") context_s = next();
    else if (a == "--config") config = next();
    else if (a == "--seed") seed = unsigned(std::strtoul(next().c_str(), nullptr, 10));
    else if (a == "--overwrite") overwrite = true;
    else fail(str("unknown argument '", a, "' (see the comment at the top of bench/make_train_cache.cpp)"));
  }
  OSP_CHECK(!out.empty(), "--out DIR is required");
  const std::vector<int64_t> lat = parse_dims(latent_s, 4, "--latent"), ctx = parse_dims(context_s, 2, "--context");
  std::mt19937 g(seed);
  const Tensor latent = random_tensor({lat[0], lat[1], lat[2], lat[3]}, 1.f, g);
  const Tensor context = random_tensor({ctx[0], ctx[1]}, 0.1f, g);
  train::LatentCacheWriter w(out, 64, overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse);
  w.add(latent, context, "synthetic benchmark sample", "bench_make_train_cache");
  w.set_empty_context(Tensor::zeros({ctx[0], ctx[1]}, DType::F32));
  const int64_t n = w.finish();

  std::string flops;
  if (!config.empty()) {
    const model::DiTConfig base = model::DiTConfig::from_json_file(config);
    OSP_CHECK(base.in_dim == lat[0], "--config in_dim ", base.in_dim, " != latent channels ", lat[0]);
    OSP_CHECK(base.text_dim == ctx[1], "--config text_dim ", base.text_dim, " != context width ", ctx[1]);
    OSP_CHECK(lat[2] % base.patch_h == 0 && lat[3] % base.patch_w == 0, "latent H, W must be multiples of the patch");
    const sparse::Grid grid{lat[1] / base.patch_t, lat[2] / base.patch_h, lat[3] / base.patch_w};
    for (const char* att : {"full", "hybrid"}) {
      try {  // hybrid needs >= 8 layers: a smaller config just has no hybrid FLOPs
        const model::DiTConfig c = train::config_for_attention(base, att);
        const double f = model::dit_forward_flops(c, grid, c.block_kinds(), c.sparse_ratio, 1);
        int nfull = 0;
        for (auto k : c.block_kinds()) nfull += k == sparse::BlockKind::Full;
        char num[64];
        std::snprintf(num, sizeof num, "%.17g", f);
        flops += str(", \"forward_flops_", att, "\": ", num, ", \"full_blocks_", att, "\": ", nfull);
      } catch (const Error& e) {
        std::fprintf(stderr, "bench_make_train_cache: no %s FLOPs: %s\n", att, e.what());
      }
    }
    flops += str(", \"tokens\": ", grid.numel(), ", \"text_len\": ", base.text_len);
  }
  std::printf("{\"bench\": \"make_train_cache\", \"out\": \"%s\", \"samples\": %lld, \"latent\": [%lld, %lld, %lld, %lld], "
              "\"context\": [%lld, %lld]%s}\n",
              out.c_str(), static_cast<long long>(n), (long long)lat[0], (long long)lat[1], (long long)lat[2],
              (long long)lat[3], (long long)ctx[0], (long long)ctx[1], flops.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_make_train_cache: error: %s\n", e.what());
    return 1;
  }
}
