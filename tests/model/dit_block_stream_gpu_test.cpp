// DiT block streaming on CUDA (model/dit_block_stream.h): the real path — block weights in
// pinned host memory, the next block's copy on a separate non-blocking stream ordered by events,
// two device slots — against the resident model, and the --max-vram cap of the caching
// allocator (core/device.h set_cuda_memory_limit).
//   * streamed == resident bit for bit (bf16 and FP8 weights; a hybrid Skiparse plan with an odd
//     block count, several forwards so the ring wraps and block 0 is prefetched across forwards;
//     the host runs ahead of the GPU, so a copy overwriting a slot too early would show);
//   * under a cap below the resident model's weights the resident bind fails with the limit named
//     in the error, the streamed model binds and runs, and the allocator's peak of reserved bytes
//     stays within the cap.
// Not shown here (benchmarks only, bench/dit_offload_gpu.cpp): that the copies overlap compute.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/model/dit_block_stream.h"
#include "model/random_dit_weights.h"
#include "test_util.h"

using namespace osp;
using osp::test::expect_same_bits;
using sparse::BlockKind;

namespace {

model::DiTConfig config(int64_t dim, int64_t ffn, int64_t layers) {
  model::DiTConfig c;
  c.dim = dim;
  c.ffn_dim = ffn;
  c.num_heads = dim / 64;
  c.num_layers = layers;
  c.text_dim = 64;
  c.text_len = 16;
  return c;
}

std::vector<BlockKind> hybrid_kinds(int n) {
  std::vector<BlockKind> k(size_t(n), BlockKind::Full);
  for (int i = 1; i + 1 < n; ++i) k[size_t(i)] = i % 2 ? BlockKind::Token : BlockKind::Group;
  return k;
}

std::vector<Tensor> forwards(model::DiT& dit, const Tensor& x, const Tensor& ctx, int n) {
  auto sp = parallel::make_single_device();
  std::vector<Tensor> out;
  for (int k = 0; k < n; ++k) {
    const float t = 950.0f - 150.0f * float(k);
    out.push_back(dit.forward(x, {t, t}, ctx, *sp).to(Device::cpu()));
  }
  return out;
}

void parity(model::DiTQuant quant) {
  const model::DiTConfig cfg = config(256, 1024, 7);
  const auto w = osp::test::random_dit_weights(cfg, 21);
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  opt.quant = quant;
  const Tensor x = randn({2, 16, 3, 16, 16}, 3).to(opt.device), ctx = randn({2, 12, cfg.text_dim}, 4).to(opt.device);
  model::DiT resident = model::DiT::bind(cfg, w, opt);
  resident.set_block_kinds(hybrid_kinds(7), 2);
  const std::vector<Tensor> want = forwards(resident, x, ctx, 3);

  auto bs = std::make_shared<model::BlockStream>(opt.device);
  model::DiTOptions sopt = opt;
  model::BlockStream::bind_into(bs, sopt);
  model::DiT streamed = model::DiT::bind(cfg, w, sopt);
  model::BlockStream::attach(bs, streamed);
  streamed.set_block_kinds(hybrid_kinds(7), 2);
  EXPECT_EQ(streamed.blocks_with_weights(), 0);
  const std::vector<Tensor> got = forwards(streamed, x, ctx, 3);
  for (size_t k = 0; k < got.size(); ++k) expect_same_bits(got[k], want[k], "streamed vs resident");
  EXPECT_EQ(bs->stats().copies, 3 * 7 + 1);
  EXPECT_EQ(bs->stats().peak_bound, 1);
  EXPECT_EQ(bs->stats().peak_resident, 2);
  std::printf("streamed %s: %lld copies, %.1f MiB, host %.1f MiB, ring %.1f MiB\n",
              quant == model::DiTQuant::FP8 ? "fp8" : "bf16", (long long)bs->stats().copies,
              double(bs->stats().bytes_copied) / double(1 << 20), double(bs->stats().host_bytes) / double(1 << 20),
              double(bs->stats().ring_bytes) / double(1 << 20));
}

}  // namespace

TEST(DiTBlockStreamGpu, Bf16StreamedEqualsResidentBitwise) {
  OSP_REQUIRE_GPU();
  parity(model::DiTQuant::None);
}

TEST(DiTBlockStreamGpu, Fp8StreamedEqualsResidentBitwise) {
  OSP_REQUIRE_GPU();
  parity(model::DiTQuant::FP8);  // the E4M3 codes (1 byte per weight) are what is streamed
}

TEST(DiTBlockStreamGpu, MaxVramCapHoldsTheStreamedModelAndRefusesTheResidentOne) {
  OSP_REQUIRE_GPU();
  // Weights dominate: 12 blocks of 8·1024² + 2·1024·4096 bf16 = 32 MiB each (384 MiB), tiny activations.
  const model::DiTConfig cfg = config(1024, 4096, 12);
  const auto w = osp::test::random_dit_weights(cfg, 22);
  model::DiTOptions opt;
  opt.device = Device::cuda(0);
  const Tensor x = randn({2, 16, 1, 8, 8}, 5), ctx = randn({2, 8, cfg.text_dim}, 6);
  cuda_synchronize();
  cuda_empty_cache();
  const size_t base = cuda_reserved_bytes();  // anything still held (should be ~0)
  const size_t cap = base + (size_t(192) << 20);
  set_cuda_memory_limit(cap);
  cuda_reset_peak();
  std::string err;
  try {
    (void)model::DiT::bind(cfg, w, opt);
  } catch (const Error& e) {
    err = e.what();
  }
  // The cap counts what the process already holds (base: cuBLAS workspaces of the tests before).
  EXPECT_NE(err.find("over the --max-vram limit of " + std::to_string(cap >> 20) + " MiB"), std::string::npos) << err;
  cuda_synchronize();
  cuda_empty_cache();
  cuda_reset_peak();
  {
    auto bs = std::make_shared<model::BlockStream>(opt.device);
    model::DiTOptions sopt = opt;
    model::BlockStream::bind_into(bs, sopt);
    model::DiT streamed = model::DiT::bind(cfg, w, sopt);
    model::BlockStream::attach(bs, streamed);
    const std::vector<Tensor> got = forwards(streamed, x.to(opt.device), ctx.to(opt.device), 2);
    cuda_synchronize();
    const size_t peak = cuda_peak_reserved_bytes();
    std::printf("cap %.1f MiB, streamed peak reserved %.1f MiB (ring %.1f MiB)\n", double(cap) / double(1 << 20),
                double(peak) / double(1 << 20), double(bs->stats().ring_bytes) / double(1 << 20));
    EXPECT_LE(peak, cap);
    for (const Tensor& g : got)
      for (float v : g.to_float_vector()) ASSERT_TRUE(std::isfinite(v));
  }
  set_cuda_memory_limit(0);
}
