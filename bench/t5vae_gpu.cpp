// umT5-XXL encoder and Wan-VAE decode on one GPU (JSON lines on stdout).
//   1. umT5-XXL shape (random bf16 weights; 24 layers, dim 4096, 64 heads × 64, ffn 10240):
//      one 512-token prompt (the reference's padded form) and the trimmed form the engine runs
//      (120 real tokens).  The 24 layers share one random weight set (same GEMM shapes and
//      traffic; only init time and memory are saved); the vocabulary is cut to 32 000 rows
//      (the embedding is a row gather, its size does not change the cost).
//   2. Wan-VAE decode (random weights, real config dim 96) of a 720P 81-frame latent
//      16×21×90×160 → 3×81×720×1280: time, TFLOP (wan-spec §5.3 estimate 639) and peak
//      CUDA memory, untiled and with tiles_for_budget(16 GiB).
// Usage: bench_t5vae_gpu [--quick] [--vae-only] [--conv3d im2col,cudnn]
//   --quick: 480P-sized 16×5×60×104 latent, no tiled run; --vae-only: skip the umT5;
//   --conv3d: the VAE decode once per conv3d path (ops/conv.h, same weights and latent, each row
//   says its path; later paths report their untiled video's relative difference to the first's).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/core/tensor.h"
#include "osp/model/t5.h"
#include "osp/model/vae.h"
#include "osp/ops/conv.h"

#ifndef OSP_HAVE_CUDA
int main() {
  std::printf("{\"bench\":\"t5vae_gpu\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}
#else
#include "gpu_bench_util.h"

using namespace osp;

namespace {

void bench_t5(const std::string& card) {
  model::T5Config c;  // XXL defaults
  const int64_t vocab = 32000;
  std::map<std::string, Tensor> w;
  const float s_in = 1.f / std::sqrt(float(c.dim)), s_ff = 1.f / std::sqrt(float(c.dim_ffn));
  w["token_embedding.weight"] = bench::random_gpu({vocab, c.dim}, DType::BF16, 1.f, 1);
  Tensor q = bench::random_gpu({c.dim_attn, c.dim}, DType::BF16, s_in, 2);
  Tensor k = bench::random_gpu({c.dim_attn, c.dim}, DType::BF16, s_in, 3);
  Tensor v = bench::random_gpu({c.dim_attn, c.dim}, DType::BF16, s_in, 4);
  Tensor o = bench::random_gpu({c.dim, c.dim_attn}, DType::BF16, s_in, 5);
  Tensor gate = bench::random_gpu({c.dim_ffn, c.dim}, DType::BF16, s_in, 6);
  Tensor fc1 = bench::random_gpu({c.dim_ffn, c.dim}, DType::BF16, s_in, 7);
  Tensor fc2 = bench::random_gpu({c.dim, c.dim_ffn}, DType::BF16, s_ff, 8);
  Tensor pos = bench::random_gpu({c.num_buckets, c.num_heads}, DType::BF16, 1.f, 9);
  Tensor ones = Tensor::zeros({c.dim}, DType::F32);
  for (int64_t i = 0; i < c.dim; ++i) ones.data<float>()[i] = 1.f;
  ones = ones.to(Device::cuda());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    w[b + "norm1.weight"] = ones;
    w[b + "norm2.weight"] = ones;
    w[b + "attn.q.weight"] = q;
    w[b + "attn.k.weight"] = k;
    w[b + "attn.v.weight"] = v;
    w[b + "attn.o.weight"] = o;
    w[b + "ffn.gate.0.weight"] = gate;
    w[b + "ffn.fc1.weight"] = fc1;
    w[b + "ffn.fc2.weight"] = fc2;
    w[b + "pos_embedding.embedding.weight"] = pos;
  }
  w["norm.weight"] = ones;
  auto t5 = model::T5Encoder::load(
      [&](const std::string& n) { auto it = w.find(n); return it == w.end() ? Tensor() : it->second; },
      Device::cuda());
  for (int64_t L : {int64_t(512), int64_t(120)}) {
    std::vector<int32_t> ids(static_cast<size_t>(L));
    for (int64_t i = 0; i < L; ++i) ids[size_t(i)] = int32_t((i * 7919 + 13) % vocab);
    const double ms = bench::time_ms([&] { t5.encode(ids, L, 512); }, 1, 5);
    const double per_layer = 2.0 * L * (4.0 * c.dim * c.dim_attn + 3.0 * c.dim * c.dim_ffn) +
                             4.0 * double(L) * L * c.dim_attn;
    const double tflop = per_layer * double(c.num_layers) / 1e12;
    std::printf("{\"bench\":\"t5vae_gpu\",\"op\":\"umt5_xxl_encode\",\"card\":\"%s\",\"tokens\":%lld,"
                "\"layers\":%lld,\"ms\":%.3f,\"tflop\":%.3f,\"tflops\":%.1f}\n",
                card.c_str(), (long long)L, (long long)c.num_layers, ms, tflop, tflop / (ms * 1e-3));
    std::fflush(stdout);
  }
  }
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

void bench_vae(const std::string& card, bool quick, const std::vector<std::string>& paths) {
  model::VaeConfig cfg;
  cfg.has_encoder = false;
  std::map<std::string, Tensor> w;
  uint32_t seed = 100;
  for (const auto& [name, shape] : model::vae_tensor_shapes(cfg)) {
    if (name.rfind("encoder.", 0) == 0 || name.rfind("conv1.", 0) == 0) continue;
    const bool gamma = name.size() > 6 && name.compare(name.size() - 6, 6, ".gamma") == 0;
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (gamma || bias) {
      Tensor t = Tensor::zeros(shape, DType::F32);
      if (gamma)
        for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 1.f;
      w[name] = t.to(Device::cuda());
    } else {
      int64_t fan_in = 1;
      for (size_t d = 1; d < shape.size(); ++d) fan_in *= shape[d];
      w[name] = bench::random_gpu(shape, DType::F32, 1.f / std::sqrt(float(fan_in)), seed++);
    }
  }
  auto vae = model::WanVae::load(
      [&](const std::string& n) { auto it = w.find(n); return it == w.end() ? Tensor() : it->second; },
      Device::cuda(), cfg);
  const int64_t T = quick ? 5 : 21, h = quick ? 60 : 90, wd = quick ? 104 : 160;
  Tensor z = bench::random_gpu({16, T, h, wd}, DType::F32, 1.f, 7);
  Tensor first_video;  // the first path's untiled video, for the later paths' difference
  for (const std::string& path : paths) {
  ops::set_conv3d_path(path);
  // Warm-up on a small latent (cuBLAS heuristics, cuDNN algorithm choice, allocator).
  vae.decode(bench::random_gpu({16, 2, 8, 8}, DType::F32, 1.f, 8));
  struct Run {
    const char* name;
    model::DecodeOptions opt;
  };
  std::vector<Run> runs = {{"untiled", {}}};
  // cuDNN measures its algorithms on the first call of each shape (ops/cuda/conv3d.cu): the
  // first decode includes that, the repeat shows the steady state
  if (path == "cudnn") runs.push_back({"untiled_repeat", {}});
  if (!quick) runs.push_back({"tiled_16GiB", model::tiles_for_budget(h, wd, size_t(16) << 30)});
  const double tflop = 639.0 * double(T) / 21.0 * double(h * wd) / (90.0 * 160.0);
  for (const Run& r : runs) {
    cuda_synchronize();
    cuda_empty_cache();
    cuda_reset_peak();
    const size_t base = cuda_bytes_in_use();
    const double t0 = bench::now_s();
    Tensor video = vae.decode(z, r.opt);
    cuda_synchronize();
    const double s = bench::now_s() - t0;
    const double peak_gib = double(cuda_peak_bytes() - base) / double(size_t(1) << 30);
    double diff = 0;
    if (std::string(r.name) == "untiled") {
      if (!first_video.defined()) first_video = video;
      else diff = relative_error(video.to(Device::cpu()), first_video.to(Device::cpu()));
    }
    std::printf("{\"bench\":\"t5vae_gpu\",\"op\":\"vae_decode\",\"conv3d\":\"%s\",\"diff_to_first_path\":%.3g,"
                "\"mode\":\"%s\",\"card\":\"%s\","
                "\"latent\":[16,%lld,%lld,%lld],\"video\":[3,%lld,%lld,%lld],\"tile\":[%lld,%lld],"
                "\"overlap\":%lld,\"s\":%.3f,\"tflop_est\":%.1f,\"tflops\":%.1f,"
                "\"peak_gib_activations\":%.2f,\"estimate_gib\":%.2f,\"finite\":%s}\n",
                path.c_str(), diff, r.name, card.c_str(), (long long)T, (long long)h, (long long)wd,
                (long long)(1 + 4 * (T - 1)), (long long)(8 * h), (long long)(8 * wd),
                (long long)r.opt.tile_h, (long long)r.opt.tile_w, (long long)r.opt.overlap, s, tflop,
                tflop / s, peak_gib,
                double(model::decode_memory_estimate(r.opt.tile_h ? r.opt.tile_h : h,
                                                     r.opt.tile_w ? r.opt.tile_w : wd)) /
                    double(size_t(1) << 30),
                std::isfinite(video.to_float_vector()[0]) ? "true" : "false");
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, vae_only = false;
  std::vector<std::string> paths = {ops::conv3d_path()};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--vae-only") == 0) vae_only = true;
    else if (std::strcmp(argv[i], "--conv3d") == 0 && i + 1 < argc) paths = split_commas(argv[++i]);
    else {
      std::fprintf(stderr, "bench_t5vae_gpu: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  try {
    if (!cuda_available()) {
      std::printf("{\"bench\":\"t5vae_gpu\",\"skipped\":\"no CUDA GPU\"}\n");
      return 0;
    }
    const std::string card = bench::card_name();
    if (!vae_only) bench_t5(card);
    bench_vae(card, quick, paths);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_t5vae_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif
