// Checkpoint sources: sharded safetensors (and its failure modes), directory resolution,
// missing-name errors, shape checks, prefixes and renames.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "osp/io/checkpoint.h"
#include "osp/io/safetensors.h"
#include "osp/io/safetensors_index.h"

using namespace osp;
using namespace osp::io;
using namespace osp::iotest;

namespace {

Tensor vec(std::vector<float> v) {
  int64_t n = int64_t(v.size());
  return Tensor::from_vector(std::move(v), {n});
}

// Two shards + an index in `dir`: a, b in shard 1; c in shard 2.
void make_sharded(const TempDir& dir, const nlohmann::json& weight_map) {
  save_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"a", vec({1, 2})}, {"b", vec({3})}},
                   {{"format", "pt"}});
  save_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"c", vec({4, 5, 6})}});
  nlohmann::json idx = {{"metadata", {{"total_size", 24}}}, {"weight_map", weight_map}};
  std::string s = idx.dump();
  write_bytes(dir.file("model.safetensors.index.json"), ByteVec(s.begin(), s.end()));
}
const nlohmann::json kGoodMap = {{"a", "model-00001-of-00002.safetensors"},
                                 {"b", "model-00001-of-00002.safetensors"},
                                 {"c", "model-00002-of-00002.safetensors"}};

void write_text(const std::string& path, const std::string& s) { write_bytes(path, ByteVec(s.begin(), s.end())); }

}  // namespace

TEST(Sharded, OpensEveryShardAndFindsEveryTensor) {
  TempDir dir;
  make_sharded(dir, kGoodMap);
  ShardedSafetensors s = ShardedSafetensors::open(dir.file("model.safetensors.index.json"));
  EXPECT_EQ(s.shards().size(), 2u);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(s.get("c").item({2}), 6.0);
  EXPECT_EQ(s.metadata().at("index.total_size"), "24");
  EXPECT_EQ(s.metadata().at("format"), "pt");
  // A directory with an index opens as the sharded checkpoint.
  Checkpoint ck = open_checkpoint(dir.path.string());
  EXPECT_EQ(ck->format(), "safetensors-sharded");
  EXPECT_EQ(ck->get("a").item({1}), 2.0);
  EXPECT_EQ(ck->info("c").shape, (Shape{3}));
}

TEST(Sharded, MissingShard) {
  TempDir dir;
  nlohmann::json m = kGoodMap;
  m["c"] = "model-00003-of-00002.safetensors";
  make_sharded(dir, m);
  expect_error([&] { ShardedSafetensors::open(dir.file("model.safetensors.index.json")); },
               {"shard 'model-00003-of-00002.safetensors'", "missing"});
}

TEST(Sharded, TensorInTwoShards) {
  TempDir dir;
  make_sharded(dir, kGoodMap);
  // shard 2 also stores "a"
  save_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"a", vec({9, 9})}, {"c", vec({4, 5, 6})}});
  expect_error([&] { ShardedSafetensors::open(dir.file("model.safetensors.index.json")); },
               {"'a'", "two shards"});
  // The index itself lists a tensor twice (a JSON duplicate key).
  TempDir dir2;
  make_sharded(dir2, kGoodMap);
  write_text(dir2.file("model.safetensors.index.json"),
             R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                 "c": "model-00002-of-00002.safetensors", "a": "model-00002-of-00002.safetensors"}})");
  expect_error([&] { ShardedSafetensors::open(dir2.file("model.safetensors.index.json")); },
               {"'a' is listed twice"});
}

TEST(Sharded, NameMissingFromItsShard) {
  TempDir dir;
  nlohmann::json m = kGoodMap;
  m["d"] = "model-00002-of-00002.safetensors";
  make_sharded(dir, m);
  expect_error([&] { ShardedSafetensors::open(dir.file("model.safetensors.index.json")); },
               {"'d' is listed in shard 'model-00002-of-00002.safetensors'", "does not hold it"});
}

TEST(Sharded, UnlistedTensorAndBadIndex) {
  TempDir dir;
  nlohmann::json m = kGoodMap;
  m.erase("b");
  make_sharded(dir, m);
  expect_error([&] { ShardedSafetensors::open(dir.file("model.safetensors.index.json")); },
               {"holds tensor 'b'", "does not list"});
  write_text(dir.file("x.safetensors.index.json"), R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  expect_error([&] { ShardedSafetensors::open(dir.file("x.safetensors.index.json")); }, {"may not leave"});
  write_text(dir.file("y.safetensors.index.json"), R"({"metadata": {}})");
  expect_error([&] { ShardedSafetensors::open(dir.file("y.safetensors.index.json")); }, {"no \"weight_map\""});
  write_text(dir.file("z.safetensors.index.json"), R"({"weight_map": )");
  expect_error([&] { ShardedSafetensors::open(dir.file("z.safetensors.index.json")); }, {"not valid JSON"});
}

TEST(Checkpoint, DirectoryResolution) {
  TempDir dir;
  expect_error([&] { open_checkpoint(dir.path.string()); }, {"no .safetensors"});
  expect_error([&] { open_checkpoint(dir.file("absent")); }, {"does not exist"});
  // Wan layout: the DiT safetensors beside the .pth files of T5 and VAE.
  save_safetensors(dir.file("diffusion_pytorch_model.safetensors"), {{"x", vec({1})}});
  save_safetensors(dir.file("other.safetensors"), {{"y", vec({1})}});
  write_text(dir.file("Wan2.1_VAE.pth"), "not read");
  EXPECT_EQ(resolve_checkpoint_path(dir.path.string()), dir.file("diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(open_checkpoint(dir.path.string())->has("x"));
  std::filesystem::remove(dir.file("diffusion_pytorch_model.safetensors"));
  save_safetensors(dir.file("third.safetensors"), {{"z", vec({1})}});
  expect_error([&] { open_checkpoint(dir.path.string()); }, {"several .safetensors", "other.safetensors"});
  // Diffusers layout: the transformer/ subfolder.
  TempDir d2;
  std::filesystem::create_directories(d2.path / "transformer");
  save_safetensors((d2.path / "transformer" / "diffusion_pytorch_model.safetensors").string(), {{"w", vec({2})}});
  EXPECT_EQ(open_checkpoint(d2.path.string())->get("w").item({0}), 2.0);
}

TEST(Checkpoint, UnknownFormatIsAnError) {
  TempDir dir;
  write_text(dir.file("weights.dat"), "hello, this is not a checkpoint");
  expect_error([&] { open_checkpoint(dir.file("weights.dat")); }, {"unknown format"});
  save_safetensors(dir.file("st.dat"), {{"q", vec({1})}});  // sniffed as safetensors
  EXPECT_TRUE(open_checkpoint(dir.file("st.dat"))->has("q"));
}

TEST(Checkpoint, MissingNameListsCloseNamesAndShapesAreChecked) {
  TempDir dir;
  save_safetensors(dir.file("m.safetensors"),
                   {{"blocks.0.ffn.0.weight", Tensor::zeros({4, 2}, DType::F32)},
                    {"blocks.0.ffn.2.weight", Tensor::zeros({2, 4}, DType::F32)},
                    {"head.head.weight", Tensor::zeros({3, 2}, DType::F32)}});
  Checkpoint ck = open_checkpoint(dir.file("m.safetensors"));
  expect_error([&] { ck->get("blocks.0.ffn.1.weight"); },
               {"'blocks.0.ffn.1.weight' not found", "m.safetensors", "close names: 'blocks.0.ffn.0.weight'"});
  EXPECT_EQ(ck->get("head.head.weight", {3, 2}).numel(), 6);
  expect_error([&] { ck->get("head.head.weight", {2, 3}); }, {"has shape [3, 2], expected [2, 3]"});
}

TEST(Checkpoint, PrefixRenameAndMemorySources) {
  Checkpoint mem = memory_checkpoint({{"model.a", vec({1, 2})}, {"model.b", vec({3})}, {"other", vec({0})}},
                                     {{"k", "v"}}, "mem");
  EXPECT_EQ(mem->format(), "memory");
  Checkpoint s = strip_prefix(mem, "model.");
  EXPECT_EQ(s->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(s->get("b").item({0}), 3.0);
  EXPECT_EQ(s->metadata().at("k"), "v");
  expect_error([&] { s->get("other"); }, {"'other' not found"});
  expect_error([&] { strip_prefix(mem, "nothing."); }, {"no tensor named 'nothing....'"});
  expect_error([&] { renamed_checkpoint(mem, {{"x", "missing"}}, "test"); }, {"'missing'"});
  expect_error([&] { memory_checkpoint({{"u", Tensor()}}); }, {"'u' is undefined"});
}
