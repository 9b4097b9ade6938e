// The encoder cache: write/read round trip, shuffled bucketed batches that depend only on
// (seed, epoch), data position save/restore, and bad data (missing/corrupt shard, bad manifest,
// skip_bad_samples).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "osp/core/philox.h"
#include "osp/train/latent_dataset.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace osp;
using namespace osp::train;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("osp_latent_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

// 7 samples of size A (16×1×4×4) and 5 of size B (16×2×2×4), 3 per shard.
void write_cache(const fs::path& dir) {
  LatentCacheWriter w(dir.string(), 3);
  for (int i = 0; i < 12; ++i) {
    const Shape s = i % 12 < 7 ? Shape{16, 1, 4, 4} : Shape{16, 2, 2, 4};
    Tensor lat = randn(s, 100 + i);
    Tensor ctx = randn({1 + i % 3, 8}, 200 + i);
    w.add(lat, ctx, "caption " + std::to_string(i), "clip" + std::to_string(i) + ".mp4");
  }
  w.set_empty_context(Tensor::zeros({1, 8}, DType::F32));
  EXPECT_EQ(w.finish(), 12);
}

using osp::test::error_of;

}  // namespace

TEST(LatentCache, RoundTrip) {
  const fs::path dir = fresh_dir("rt");
  write_cache(dir);
  EXPECT_TRUE(fs::exists(dir / "manifest.json"));
  EXPECT_TRUE(fs::exists(dir / "shard-00003.safetensors"));
  LatentDataset d = LatentDataset::open(dir.string(), {});
  EXPECT_EQ(d.size(), 12);
  EXPECT_EQ(d.text_dim(), 8);
  EXPECT_EQ(d.latent_channels(), 16);
  for (int i = 0; i < 12; ++i) {
    const LatentSample s = d.load(i);
    const Shape shape = i < 7 ? Shape{16, 1, 4, 4} : Shape{16, 2, 2, 4};
    EXPECT_EQ(max_abs_diff(s.latent, randn(shape, 100 + i)), 0.0);
    EXPECT_EQ(max_abs_diff(s.context, randn({1 + i % 3, 8}, 200 + i)), 0.0);
    EXPECT_EQ(s.caption, "caption " + std::to_string(i));
  }
  EXPECT_EQ(d.empty_context().shape(), Shape({1, 8}));
  fs::remove_all(dir);
}

TEST(LatentCache, RefusesToOverwriteACache) {
  const fs::path dir = fresh_dir("ow");
  write_cache(dir);
  EXPECT_THROW(LatentCacheWriter(dir.string(), 3), Error);
  fs::remove_all(dir);
}

TEST(LatentCache, BucketedShuffledBatchesAndPosition) {
  const fs::path dir = fresh_dir("batches");
  write_cache(dir);
  LatentDatasetOptions o;
  o.seed = 5;
  o.batch = 2;
  LatentDataset d = LatentDataset::open(dir.string(), o);
  // One epoch: 3 batches of size A (7 → 3 full + 1 dropped), 2 of size B (5 → 2 + 1 dropped).
  const auto e0 = d.epoch_batches(0), e1 = d.epoch_batches(1);
  ASSERT_EQ(e0.size(), 5u);
  std::set<int64_t> seen;
  for (const auto& b : e0) {
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(d.samples()[size_t(b[0])].latent_shape, d.samples()[size_t(b[1])].latent_shape);
    for (int64_t id : b) EXPECT_TRUE(seen.insert(id).second);
  }
  EXPECT_NE(e0, e1);  // reshuffled every epoch
  LatentDataset again = LatentDataset::open(dir.string(), o);
  EXPECT_EQ(again.epoch_batches(1), e1);  // a pure function of (seed, epoch)
  o.seed = 6;
  EXPECT_NE(LatentDataset::open(dir.string(), o).epoch_batches(0), e0);

  // Walk 7 batches, remember the position after 3, restore it elsewhere: same sequence.
  std::vector<std::vector<int64_t>> walk;
  DataPosition at3;
  for (int k = 0; k < 7; ++k) {
    if (k == 3) at3 = d.position();
    std::vector<int64_t> ids;
    for (const auto& s : d.next_batch()) ids.push_back(s.id);
    walk.push_back(ids);
  }
  EXPECT_EQ(walk[0], e0[0]);
  EXPECT_EQ(walk[5], e1[0]);  // the epoch rolled over after 5 batches
  EXPECT_EQ(d.position(), (DataPosition{1, 2}));
  LatentDataset resumed = LatentDataset::open(dir.string(), {5, 2, false});
  resumed.set_position(at3);
  for (int k = 3; k < 7; ++k) {
    std::vector<int64_t> ids;
    for (const auto& s : resumed.next_batch()) ids.push_back(s.id);
    EXPECT_EQ(ids, walk[size_t(k)]) << "batch " << k;
  }
  // A batch larger than every bucket is refused up front.
  const std::string err = error_of([&] { LatentDataset::open(dir.string(), {0, 8, false}); });
  EXPECT_NE(err.find("lower --batch"), std::string::npos) << err;
  fs::remove_all(dir);
}

TEST(LatentCache, MissingAndCorruptFilesAreNamed) {
  const fs::path dir = fresh_dir("bad");
  write_cache(dir);
  // No folder / no manifest.
  EXPECT_NE(error_of([&] { LatentDataset::open((dir / "nope").string(), {}); }).find("nope"), std::string::npos);
  // Missing shard: named at open.
  fs::rename(dir / "shard-00001.safetensors", dir / "moved.safetensors");
  std::string err = error_of([&] { LatentDataset::open(dir.string(), {}); });
  EXPECT_NE(err.find("shard-00001.safetensors"), std::string::npos) << err;
  // With skip_bad_samples: it opens, the three samples of that shard are skipped when met.
  LatentDatasetOptions skip;
  skip.skip_bad_samples = true;
  LatentDataset d = LatentDataset::open(dir.string(), skip);
  int64_t loaded = 0;
  for (int k = 0; k < 12; ++k) loaded += int64_t(d.next_batch().size());
  EXPECT_EQ(loaded, 12);
  EXPECT_GT(d.skipped(), 0);
  fs::rename(dir / "moved.safetensors", dir / "shard-00001.safetensors");
  // Corrupt shard (truncated): the error names the file and the sample.
  {
    const fs::path p = dir / "shard-00002.safetensors";
    const auto size = fs::file_size(p);
    fs::resize_file(p, size / 2);
  }
  LatentDataset d2 = LatentDataset::open(dir.string(), {});
  err = error_of([&] { d2.load(7); });
  EXPECT_NE(err.find("shard-00002.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("sample 7"), std::string::npos) << err;
  // Bad manifest: not JSON, wrong format, out-of-range shard index.
  std::ofstream(dir / "manifest.json") << "{not json";
  err = error_of([&] { LatentDataset::open(dir.string(), {}); });
  EXPECT_NE(err.find("manifest.json"), std::string::npos) << err;
  std::ofstream(dir / "manifest.json") << R"({"format":"osp-latent-cache","version":1,"latent_channels":16,)"
                                          R"("text_dim":8,"shards":["shard-00000.safetensors"],)"
                                          R"("samples":[{"id":0,"shard":3,"latent_shape":[16,1,4,4],"context_rows":1}]})";
  err = error_of([&] { LatentDataset::open(dir.string(), {}); });
  EXPECT_NE(err.find("names shard 3"), std::string::npos) << err;
  fs::remove_all(dir);
}
