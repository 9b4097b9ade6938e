// The Wan-VAE decode dealt out over MPI ranks (DecodeOptions::comm), run on 1, 2 and 4 ranks: a
// tiled decode gives every rank the video the one-rank decode with the same tiles gives, each
// rank decoding only its tiles (tile k to rank k mod R; with 3 tiles on 4 ranks one rank decodes
// none and still gets the video); an untiled decode runs whole on every rank.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <vector>

#include "osp/core/philox.h"
#include "osp/io/checkpoint.h"
#include "osp/model/vae.h"
#include "osp/ops/ops.h"
#include "osp/parallel/communicator.h"
#include "test_util.h"

using namespace osp;

namespace {

std::shared_ptr<parallel::Communicator> world() {
  static std::shared_ptr<parallel::Communicator> c = parallel::make_mpi_communicator();
  return c;
}

// A decoder at width 16 with random weights (the same on every rank: seeded by tensor index).
const model::WanVae& random_vae() {
  static model::WanVae v = [] {
    model::VaeConfig cfg;
    cfg.dim = 16;
    std::map<std::string, Tensor> w;
    uint32_t stream = 0;
    for (const auto& [name, shape] : model::vae_tensor_shapes(cfg)) {
      Tensor t = randn(shape, 7, stream++);
      ops::axpby(0.2f, t, 0.f, t, t);  // moderate activations through the 30-odd layers
      w[name] = t;
    }
    cfg.has_encoder = false;
    return model::WanVae::load(model::weight_getter(io::memory_checkpoint(w)), Device::cpu(), cfg);
  }();
  return v;
}

}  // namespace

TEST(VaeMpi, TiledDecodeDealtOverTheRanksEqualsOneRank) {
  auto comm = world();
  const int R = comm->size(), r = comm->rank();
  const Tensor z = randn({16, 2, 8, 24}, 11);  // 2 latent frames → 5 frames of 64×192
  model::DecodeOptions tiled;
  tiled.tile_w = 12;  // tile starts 0, 6, 12 along the width: 3 tiles, each overlapping the next
  tiled.overlap = 4;
  tiled.clamp = false;
  const Tensor ref = random_vae().decode(z, tiled);  // this rank alone, every tile

  model::DecodeOptions spread = tiled;
  spread.comm = comm;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  spread.on_chunk = [&](int64_t done, int64_t total) { chunks.emplace_back(done, total); };
  const Tensor got = random_vae().decode(z, spread);
  ASSERT_EQ(got.shape(), ref.shape());
  EXPECT_LE(relative_error(got, ref), 1e-6) << "rank " << r << " of " << R;
  // progress counts this rank's tiles only: 2 latent frames per tile
  int64_t mine = 0;
  for (int64_t k = 0; k < 3; ++k) mine += R == 1 || k % R == r;
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.front(), std::make_pair(int64_t(0), 2 * mine)) << "rank " << r << " of " << R;
  EXPECT_EQ(chunks.size(), size_t(1 + 2 * mine));

  // untiled: nothing to deal out, the whole decode on every rank — the same bits
  model::DecodeOptions whole;
  whole.clamp = false;
  const Tensor a = random_vae().decode(z, whole);
  whole.comm = comm;
  test::expect_same_bits(random_vae().decode(z, whole), a, "untiled decode with a communicator");
}
