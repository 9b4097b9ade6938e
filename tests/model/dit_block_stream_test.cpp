// DiT block streaming (model/dit_block_stream.h) on the CPU backend, where the "device" is host
// memory and a block copy is a memcpy — the same code path as on CUDA (hooks, ring of two slots,
// prefetch order, release). Proves:
//   * the streamed forward equals the resident one bit for bit (random hybrid Skiparse DiT with
//     an odd block count, so the ring wraps onto the slot in use; the shipped tiny model);
//   * streaming by accounting, not timing: after attach no block weight is bound; during the
//     forward at most one block is bound and at most two blocks are on the device (the one
//     computing, the one prefetched); every block is copied once per forward in steady state;
//   * both ways in: take while binding (DiTOptions::on_block_bound) and enable() afterwards;
//   * misuse is refused with clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "osp/core/philox.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/model/dit.h"
#include "osp/model/dit_block_stream.h"
#include "model/random_dit_weights.h"
#include "test_util.h"

using namespace osp;
using osp::test::expect_same_bits;
using sparse::BlockKind;
namespace fs = std::filesystem;

namespace {

model::DiTConfig hybrid_config() {
  model::DiTConfig c;
  c.dim = 64;
  c.ffn_dim = 96;
  c.num_heads = 2;
  c.num_layers = 5;
  c.text_dim = 32;
  c.text_len = 8;
  return c;
}

// Two forwards (two timesteps, a CFG-like batch of 2) of `dit`.
std::vector<Tensor> two_forwards(model::DiT& dit, const Tensor& x, const Tensor& ctx) {
  auto sp = parallel::make_single_device();
  std::vector<Tensor> out;
  for (float t : {900.0f, 400.0f}) out.push_back(dit.forward(x, {t, t}, ctx, *sp));
  return out;
}

size_t non_block_bytes(model::DiT& resident) {
  size_t blocks = 0;
  for (int i = 0; i < int(resident.config().num_layers); ++i)
    for (Tensor* t : resident.block_weights(i))
      if (t->defined()) blocks += t->nbytes();
  return resident.weight_bytes() - blocks;
}

void check_streamed(model::DiT& resident, model::DiT& streamed, const model::BlockStream& bs, const Tensor& x,
                    const Tensor& ctx) {
  const int n = int(resident.config().num_layers);
  // Nothing of any block is bound before the forward.
  EXPECT_EQ(streamed.blocks_with_weights(), 0);
  EXPECT_EQ(streamed.weight_bytes(), non_block_bytes(resident));
  EXPECT_EQ(bs.stats().blocks, n);
  EXPECT_EQ(bs.stats().ring_bytes, 2 * bs.stats().max_block_bytes);
  EXPECT_GE(bs.stats().host_bytes, resident.weight_bytes() - non_block_bytes(resident));

  const std::vector<Tensor> want = two_forwards(resident, x, ctx);
  auto sp = parallel::make_single_device();
  const Tensor got0 = streamed.forward(x, {900.0f, 900.0f}, ctx, *sp);
  // First forward: every block once, plus block 0 of the next forward prefetched during the last.
  EXPECT_EQ(bs.stats().copies, n + 1);
  const Tensor got1 = streamed.forward(x, {400.0f, 400.0f}, ctx, *sp);
  EXPECT_EQ(bs.stats().copies, 2 * n + 1);  // steady state: each block once per forward
  expect_same_bits(got0, want[0], "streamed vs resident, forward 1");
  expect_same_bits(got1, want[1], "streamed vs resident, forward 2");
  EXPECT_EQ(bs.stats().peak_bound, 1) << "more than one block bound at once";
  EXPECT_EQ(bs.stats().peak_resident, 2) << "at most two blocks on the device (computing + prefetched)";
  EXPECT_EQ(streamed.blocks_with_weights(), 0) << "a block stayed bound after the forward";
}

}  // namespace

TEST(DiTBlockStream, RandomHybridStreamedEqualsResidentBitwise) {
  const model::DiTConfig cfg = hybrid_config();
  const std::vector<BlockKind> kinds = {BlockKind::Full, BlockKind::Token, BlockKind::Group, BlockKind::Token,
                                        BlockKind::Full};
  const auto w = osp::test::random_dit_weights(cfg, 11);
  const Tensor x = randn({2, 16, 2, 8, 8}, 3), ctx = randn({2, 6, cfg.text_dim}, 4);

  model::DiT resident = model::DiT::bind(cfg, w);
  resident.set_block_kinds(kinds, 2);

  {  // taken block by block while binding
    auto bs = std::make_shared<model::BlockStream>(Device::cpu());
    model::DiTOptions opt;
    model::BlockStream::bind_into(bs, opt);
    model::DiT streamed = model::DiT::bind(cfg, w, opt);
    model::BlockStream::attach(bs, streamed);
    streamed.set_block_kinds(kinds, 2);
    SCOPED_TRACE("bind_into");
    check_streamed(resident, streamed, *bs, x, ctx);
  }
  {  // an already-bound model
    model::DiT streamed = model::DiT::bind(cfg, w);
    streamed.set_block_kinds(kinds, 2);
    auto bs = model::BlockStream::enable(streamed);
    SCOPED_TRACE("enable");
    check_streamed(resident, streamed, *bs, x, ctx);
  }
}

TEST(DiTBlockStream, EvenBlockCountAndOneBlock) {
  for (int layers : {4, 1}) {
    SCOPED_TRACE(layers);
    model::DiTConfig cfg = hybrid_config();
    cfg.num_layers = layers;
    const auto w = osp::test::random_dit_weights(cfg, 12);
    const Tensor x = randn({2, 16, 2, 8, 8}, 5), ctx = randn({2, 6, cfg.text_dim}, 6);
    model::DiT resident = model::DiT::bind(cfg, w);
    model::DiT streamed = model::DiT::bind(cfg, w);
    auto bs = model::BlockStream::enable(streamed);
    const std::vector<Tensor> want = two_forwards(resident, x, ctx);
    const std::vector<Tensor> got = two_forwards(streamed, x, ctx);
    expect_same_bits(got[0], want[0], "forward 1");
    expect_same_bits(got[1], want[1], "forward 2");
    // One block: copied once and never again (its slot keeps it); 4 blocks: 5 + 4.
    EXPECT_EQ(bs->stats().copies, layers == 1 ? 1 : 2 * layers + 1);
    EXPECT_LE(bs->stats().peak_resident, 2);
    EXPECT_EQ(bs->stats().peak_bound, 1);
  }
}

TEST(DiTBlockStream, TinyModelStreamedEqualsResidentBitwise) {
  const std::string dir = std::string(OSP_SOURCE_DIR) + "/models/osp-next-tiny";
  if (!fs::exists(dir + "/diffusion_pytorch_model.safetensors")) GTEST_SKIP() << "SKIP: no " << dir;
  const model::DiTConfig cfg = model::DiTConfig::from_json_file(dir + "/config.json");
  const io::Checkpoint ck = io::dit_with_original_names(io::open_checkpoint(dir + "/diffusion_pytorch_model.safetensors"));
  std::map<std::string, Tensor> w;
  for (const auto& n : ck->names()) w[n] = ck->get(n);
  model::DiT resident = model::DiT::bind(cfg, w);
  auto bs = std::make_shared<model::BlockStream>(Device::cpu());
  model::DiTOptions opt;
  model::BlockStream::bind_into(bs, opt);
  model::DiT streamed = model::DiT::bind(cfg, w, opt);
  model::BlockStream::attach(bs, streamed);
  const Tensor x = randn({2, 16, 3, 8, 8}, 7), ctx = randn({2, 10, cfg.text_dim}, 8);
  check_streamed(resident, streamed, *bs, x, ctx);
}

TEST(DiTBlockStream, MisuseIsRefused) {
  const model::DiTConfig cfg = hybrid_config();
  const auto w = osp::test::random_dit_weights(cfg, 13);
  auto msg = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  model::DiT d = model::DiT::bind(cfg, w);
  auto bs = std::make_shared<model::BlockStream>(Device::cpu());
  bs->take(d, 0);
  EXPECT_NE(msg([&] { bs->take(d, 0); }).find("taken already"), std::string::npos);
  EXPECT_NE(msg([&] { model::BlockStream::attach(bs, d); }).find("block 1 was not taken"), std::string::npos);
  model::DiTOptions topt;
  topt.train = true;
  model::BlockStream::bind_into(bs, topt);
  EXPECT_NE(msg([&] { (void)model::DiT::bind(cfg, w, topt); }).find("inference-only"), std::string::npos);
}
