// One DiT block's training cost on one GPU (issue 13: "the 14B block's forward+backward at
// 1280×720×81, full and sparse, against the same PyTorch block"; bench/torch_dit_block_train.py is
// the PyTorch side). The block runs inside the model's own training path (DiT::forward_train with
// tapes — no activation checkpointing — then DiT::backward into F32 gradients), so the time is
// what `osp train` spends per block. To take the embeddings, head and layout transitions out, the
// model is timed with 1 and with 2 blocks of the same kind and the block's cost is the
// difference. Kinds: full (dense attention over all 75,600 tokens) and sparse (Skiparse-2D,
// P = 2: attention within the 4 sub-sequences; the sparse blocks alternate token and group
// layouts as in a real model, so the 2-block model's second block is a group block and the
// difference includes the token -> group layout exchange between them). Random bf16 weights
// (bench/dit_weights.h), random latent and context; the loss gradient dv is random.
// FLOPs: forward from model::dit_forward_flops (block part = difference of the two models),
// forward + backward = 3 × forward. Median of --reps timed runs after one warm-up.
//   bench_dit_block_train_gpu [--model 14b|1.3b] [--reps N] [--kinds full,sparse]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/core/tensor.h"
#include "osp/model/dit.h"
#include "osp/sparse/skiparse.h"
#include "dit_weights.h"

#ifndef OSP_HAVE_CUDA
int main() {
  std::printf("{\"bench\":\"dit_block_train\",\"skipped\":\"built without CUDA\"}\n");
  return 0;
}
#else
#include "gpu_bench_util.h"
#include "osp/parallel/sequence_parallel.h"

using namespace osp;

namespace {

struct Run {
  double ms = 0, fwd_flops = 0, peak_gib = 0;
};

// A `layers`-block model of `base`'s width, every block of `kind` (Token: token, group, token, …): median ms of forward_train +
// backward over `reps` runs after one warm-up.
Run time_model(const model::DiTConfig& base, int layers, sparse::BlockKind kind, const Shape& latent, int reps) {
  model::DiTConfig cfg = base;
  cfg.num_layers = layers;
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  opt.train = true;
  opt.activation_checkpointing = false;
  model::DiT dit = model::DiT::bind(cfg, bench::random_dit_weights(cfg), opt);
  std::vector<sparse::BlockKind> kinds(size_t(layers), kind);
  // consecutive sparse blocks alternate token / group (ForwardPlan requires it)
  for (size_t i = 1; i < kinds.size(); i += 2)
    if (kind == sparse::BlockKind::Token) kinds[i] = sparse::BlockKind::Group;
  dit.set_block_kinds(kinds, 2);
  auto sp = parallel::make_single_device();
  const Tensor x = bench::random_gpu(latent, DType::F32, 1.f, 3);
  const Tensor ctx = bench::random_gpu({1, cfg.text_len, cfg.text_dim}, DType::F32, 1.f, 4);
  const Tensor dv = bench::random_gpu(latent, DType::F32, 1e-3f, 5);
  Run r;
  const sparse::Grid grid{latent[1] / cfg.patch_t, latent[2] / cfg.patch_h, latent[3] / cfg.patch_w};
  r.fwd_flops = model::dit_forward_flops(cfg, grid, kinds, 2, 1);
  std::vector<double> ms;
  cuda_synchronize();
  cuda_reset_peak();
  const size_t base_bytes = cuda_bytes_in_use();
  for (int i = 0; i <= reps; ++i) {
    dit.zero_grad();
    cuda_synchronize();
    const double t0 = bench::now_s();
    (void)dit.forward_train(x, {500.f}, ctx, *sp);
    dit.backward(dv, *sp, nullptr, nullptr);
    cuda_synchronize();
    if (i > 0) ms.push_back(1e3 * (bench::now_s() - t0));
  }
  std::sort(ms.begin(), ms.end());
  r.ms = ms[ms.size() / 2];
  r.peak_gib = double(cuda_peak_bytes() - base_bytes) / double(size_t(1) << 30);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = "14b", kinds_arg = "full,sparse";
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) which = argv[++i];
    else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--kinds") == 0 && i + 1 < argc) kinds_arg = argv[++i];
    else {
      std::fprintf(stderr, "bench_dit_block_train_gpu: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  try {
    if (!cuda_available()) {
      std::printf("{\"bench\":\"dit_block_train\",\"skipped\":\"no CUDA GPU\"}\n");
      return 0;
    }
    const bool big = which == "14b";
    if (!big && which != "1.3b") {
      std::fprintf(stderr, "bench_dit_block_train_gpu: --model 14b or 1.3b, got %s\n", which.c_str());
      return 2;
    }
    const model::DiTConfig cfg = big ? model::DiTConfig::wan_14b() : model::DiTConfig::wan_1_3b();
    const Shape latent = big ? Shape{16, 21, 90, 160} : Shape{16, 21, 60, 104};  // 1280×720×81 / 832×480×81
    const std::string card = bench::card_name();
    for (const std::string kind : {std::string("full"), std::string("sparse")}) {
      if (kinds_arg.find(kind) == std::string::npos) continue;
      const sparse::BlockKind k = kind == "full" ? sparse::BlockKind::Full : sparse::BlockKind::Token;
      const Run one = time_model(cfg, 1, k, latent, reps);
      const Run two = time_model(cfg, 2, k, latent, reps);
      const double ms = two.ms - one.ms, flops = 3 * (two.fwd_flops - one.fwd_flops);
      std::printf("{\"bench\":\"dit_block_train\",\"card\":\"%s\",\"model\":\"%s\",\"kind\":\"%s\",\"latent\":[16,%lld,%lld,%lld],"
                  "\"block_fwd_bwd_ms\":%.2f,\"model1_ms\":%.2f,\"model2_ms\":%.2f,\"block_tflop\":%.2f,\"tflops\":%.1f,"
                  "\"peak_gib_2_blocks\":%.2f}\n",
                  card.c_str(), which.c_str(), kind.c_str(), (long long)latent[1], (long long)latent[2],
                  (long long)latent[3], ms, one.ms, two.ms, flops * 1e-12, flops / (ms * 1e-3) * 1e-12, two.peak_gib);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_dit_block_train_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif
