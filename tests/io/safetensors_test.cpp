// safetensors: round trip of every dtype, zero-copy views, and one test per malformed input.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "io_test_util.h"
#include "osp/io/safetensors.h"

using namespace osp;
using namespace osp::io;
using namespace osp::iotest;

namespace {

// A file from a literal header and data bytes.
ByteVec st_file(const std::string& header, const ByteVec& data) {
  ByteVec b;
  put64(b, header.size());
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}
SafetensorsFile parse(const ByteVec& b) { return SafetensorsFile::parse(bytes_from_vector(b, "test.safetensors")); }

Tensor random_tensor(const Shape& shape, DType dt, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  std::mt19937 rng(seed);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.nbytes() == cb.nbytes() && (ca.nbytes() == 0 || std::memcmp(ca.raw(), cb.raw(), ca.nbytes()) == 0);
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir dir;
  std::map<std::string, Tensor> in;
  const DType all[] = {DType::F32, DType::BF16, DType::F16, DType::F8E4M3, DType::I32,
                       DType::I64, DType::U8,   DType::F64, DType::HiF8};
  uint32_t seed = 1;
  for (DType dt : all) in[std::string("t.") + dtype_name(dt)] = random_tensor({3, 5}, dt, seed++);
  in["scalar"] = Tensor::from_vector({2.5f}, {});                 // 0-d
  in["empty"] = Tensor::empty({0, 7}, DType::BF16);               // no bytes
  in["transposed"] = random_tensor({4, 6}, DType::F32, 99).transpose(0, 1);  // non-contiguous
  std::map<std::string, std::string> meta{{"config", "{\"dim\": 16}"}, {"note", "x"}};
  save_safetensors(dir.file("a.safetensors"), in, meta);

  SafetensorsFile f = SafetensorsFile::open(dir.file("a.safetensors"));
  EXPECT_EQ(f.size(), in.size());
  EXPECT_EQ(f.metadata(), meta);
  for (auto& [name, t] : in) {
    ASSERT_TRUE(f.has(name)) << name;
    Tensor r = f.get(name);
    EXPECT_TRUE(same_bytes(r, t)) << name << " " << r.desc() << " vs " << t.desc();
    EXPECT_TRUE(r.is_contiguous());
  }
  EXPECT_EQ(f.entry("t.hif8").dtype_name, "HIF8");
  EXPECT_EQ(f.entry("t.fp8e4m3").dtype_name, "F8_E4M3");
  // Every tensor starts at a multiple of its element size, with no gaps between tensors.
  uint64_t total = 0;
  for (auto& [name, e] : f.entries()) {
    EXPECT_EQ(e.begin % dtype_size(e.dtype), 0u) << name;
    total += e.end - e.begin;
  }
  EXPECT_EQ(total, fs::file_size(dir.file("a.safetensors")) - 8 - le64(serialize_safetensors(in, meta).data()));
}

TEST(Safetensors, TensorsAreZeroCopyViewsThatKeepTheMappingAlive) {
  TempDir dir;
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  save_safetensors(dir.file("z.safetensors"), {{"a", a}});
  Tensor r;
  {
    SafetensorsFile f = SafetensorsFile::open(dir.file("z.safetensors"));
    r = f.get("a");
    Tensor r2 = f.get("a");
    EXPECT_EQ(r.raw(), r2.raw());  // same mapped bytes, no copy
    EXPECT_FALSE(r.storage()->owns);
    EXPECT_TRUE(r.storage()->owner != nullptr);
  }  // the file object is gone; the view keeps the mapping
  EXPECT_EQ(r.item({1, 2}), 6.0);
}

TEST(Safetensors, BoolReadsAsU8AndMetadataIsExposed) {
  ByteVec data{1, 0, 1, 1};
  auto f = parse(st_file(
      R"({"__metadata__":{"format":"pt"},"m":{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,4]}})", data));
  Tensor m = f.get("m");
  EXPECT_EQ(m.dtype(), DType::U8);
  EXPECT_EQ(m.item({1, 0}), 1.0);
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

TEST(Safetensors, ForeignUnalignedDataIsCopied) {
  // A header of odd length puts F32 data at an odd address: it is copied, values intact.
  std::vector<float> v{1.5f, -2.0f};
  std::string h = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} )";
  ASSERT_NE((8 + h.size()) % 4, 0u);
  auto f = parse(st_file(h, as_bytes(v)));
  Tensor x = f.get("x");
  EXPECT_EQ(x.item({0}), 1.5);
  EXPECT_EQ(x.item({1}), -2.0);
}

// ---- malformed input: one test each ----

TEST(SafetensorsBadInput, TruncatedFile) {
  expect_error([] { parse(ByteVec{1, 2, 3}); }, {"too short"});
  // A valid file cut short: the last tensor's bytes are missing.
  auto full = serialize_safetensors({{"w", Tensor::from_vector({1, 2, 3, 4}, {4})}});
  full.resize(full.size() - 4);
  expect_error([&] { parse(full); }, {"'w'", "truncated"});
}

TEST(SafetensorsBadInput, EmptyFileOnDisk) {
  TempDir dir;
  write_bytes(dir.file("e.safetensors"), {});
  expect_error([&] { SafetensorsFile::open(dir.file("e.safetensors")); }, {"too short"});
  expect_error([&] { SafetensorsFile::open(dir.file("nope.safetensors")); }, {"cannot open"});
}

TEST(SafetensorsBadInput, HeaderLengthPastEnd) {
  ByteVec b = st_file("{}", {});
  b[0] = 200;  // claims 200 header bytes, the file has 2
  expect_error([&] { parse(b); }, {"past the end"});
}

TEST(SafetensorsBadInput, AbsurdHeaderLength) {
  ByteVec b = st_file("{}", {});
  b[5] = 1;  // 2^40 + 2
  expect_error([&] { parse(b); }, {"absurdly large"});
}

TEST(SafetensorsBadInput, BadJson) {
  expect_error([] { parse(st_file("{\"a\": [1, 2", {})); }, {"not valid JSON"});
  expect_error([] { parse(st_file("[1, 2, 3]", {})); }, {"must be a JSON object"});
  expect_error([] { parse(st_file("{\"a\":" + std::string(20, '[') + std::string(20, ']') + "}", {})); },
               {"nests deeper"});
}

TEST(SafetensorsBadInput, DuplicateTensorName) {
  std::string h = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  expect_error([&] { parse(st_file(h, ByteVec{1, 2})); }, {"'a' twice"});
}

TEST(SafetensorsBadInput, MissingOrInvalidFields) {
  expect_error([] { parse(st_file(R"({"a":{"shape":[1],"data_offsets":[0,1]}})", {0})); },
               {"'a'", "missing 'dtype'"});
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","data_offsets":[0,1]}})", {0})); },
               {"missing 'shape'"});
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","shape":[1]}})", {0})); },
               {"missing 'data_offsets'"});
  expect_error([] { parse(st_file(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", {0})); },
               {"'dtype' must be a string"});
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", {0})); },
               {"integers"});
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", {0})); },
               {"[begin, end]"});
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", {0})); },
               {"negative"});
  expect_error([] { parse(st_file(R"({"a":[1,2]})", {0})); }, {"entry must be an object"});
  expect_error([] { parse(st_file(R"({"__metadata__":{"k":3}})", {})); }, {"must be a string"});
}

TEST(SafetensorsBadInput, NegativeDimension) {
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", {})); },
               {"negative dimension"});
}

TEST(SafetensorsBadInput, NumelOverflow) {
  expect_error([] {
    parse(st_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", {}));
  }, {"overflows"});
  expect_error([] {
    parse(st_file(R"({"a":{"dtype":"F64","shape":[2305843009213693952, 2],"data_offsets":[0,0]}})", {}));
  }, {"overflows"});
}

TEST(SafetensorsBadInput, OutOfRangeOffsets) {
  expect_error([] { parse(st_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", {1, 2, 3, 4})); },
               {"'a'", "past the data section"});
  expect_error([] {
    parse(st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}})", {1}));
  }, {"end 0 < begin"});
}

TEST(SafetensorsBadInput, OverlappingOffsets) {
  std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_error([&] { parse(st_file(h, ByteVec(12, 0))); }, {"'a'", "'b'", "overlap"});
}

TEST(SafetensorsBadInput, UnknownDtype) {
  expect_error([] { parse(st_file(R"({"w.q":{"dtype":"I16","shape":[1],"data_offsets":[0,2]}})", {0, 0})); },
               {"'w.q'", "unsupported dtype 'I16'"});
}

TEST(SafetensorsBadInput, SizeMismatch) {
  expect_error([] { parse(st_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", ByteVec(8, 0))); },
               {"'a'", "holds 8 bytes", "needs 12"});
}

TEST(SafetensorsBadInput, MissingTensor) {
  auto f = parse(serialize_safetensors({{"blocks.0.self_attn.q.weight", Tensor::zeros({2}, DType::F32)},
                                        {"blocks.0.self_attn.k.weight", Tensor::zeros({2}, DType::F32)},
                                        {"head.head.bias", Tensor::zeros({2}, DType::F32)}}));
  expect_error([&] { f.get("blocks.0.self_attn.q.weigth"); },
               {"'blocks.0.self_attn.q.weigth' not found", "close names: 'blocks.0.self_attn.q.weight'"});
}

// Mutating bytes of a valid file: every parse either succeeds (and then every tensor is
// readable) or throws osp::Error. Runs under AddressSanitizer in CI.
TEST(SafetensorsFuzz, MutatedFilesNeverCrash) {
  ByteVec good = serialize_safetensors(
      {{"a", Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3})},
       {"b", Tensor::zeros({4}, DType::BF16)},
       {"c", Tensor::zeros({1}, DType::I64)}},
      {{"k", "v"}});
  std::mt19937 rng(12345);
  int ok = 0, errors = 0;
  for (int it = 0; it < 3000; ++it) {
    ByteVec b = good;
    int kind = it % 4;
    if (kind == 3) {
      b.resize(rng() % b.size());
    } else {
      int n = 1 + int(rng() % 4);
      for (int k = 0; k < n; ++k) {
        size_t pos = rng() % (kind == 0 ? 8 : b.size());
        b[pos] = kind == 2 ? uint8_t("{}[]\",:0123456789-e "[rng() % 20]) : uint8_t(rng());
      }
    }
    try {
      SafetensorsFile f = parse(b);
      for (const auto& n : f.names()) {
        Tensor t = f.get(n);
        const uint8_t* p = static_cast<const uint8_t*>(t.raw());
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < t.nbytes(); ++i) sum = uint8_t(sum + p[i]);
      }
      ++ok;
    } catch (const osp::Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
  EXPECT_GT(ok, 0);  // mutations inside tensor data leave valid files
}
