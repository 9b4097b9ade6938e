// .pth (torch.save zip) reader on synthetic archives: views, zip64, nested dicts, and one test
// per malformed input (zip and pickle), plus a deterministic mutation loop.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <sys/stat.h>
#include <cstdio>

#include "io_test_util.h"
#include "osp/io/pth.h"

using namespace osp;
using namespace osp::io;
using namespace osp::iotest;

namespace {

PthFile parse(const ByteVec& b, const pickle::Limits& lim = {}) {
  return PthFile::parse(bytes_from_vector(b, "test.pth"), lim);
}

ByteVec arange_f32(int n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 0.0f);
  return as_bytes(v);
}

// A state dict like mixed_state_dict.pth: a 4x6 f32, its transpose, a row slice.
ByteVec small_pickle() {
  PickleWriter p;
  p.proto().op('}').put().mark();
  p.tensor("a", "FloatStorage", "0", 24, 0, {4, 6}, {6, 1});
  p.tensor("a_t", "FloatStorage", "0", 24, 0, {6, 4}, {1, 6});
  p.tensor("rows", "FloatStorage", "0", 24, 6, {2, 6}, {6, 1});
  p.tensor("i", "LongStorage", "1", 3, 0, {3}, {1});
  p.op('u').stop();
  return p.b;
}
ByteVec small_pth(bool zip64 = false) {
  return make_pth(small_pickle(), {{"0", arange_f32(24)}, {"1", as_bytes(std::vector<int64_t>{7, 8, 9})}}, zip64);
}

void check_small(const PthFile& f) {
  ASSERT_EQ(f.names(), (std::vector<std::string>{"a", "a_t", "i", "rows"}));
  Tensor a = f.get("a"), at = f.get("a_t"), rows = f.get("rows"), i = f.get("i");
  EXPECT_EQ(a.shape(), (Shape{4, 6}));
  EXPECT_EQ(at.shape(), (Shape{6, 4}));
  EXPECT_EQ(at.strides(), (Shape{1, 6}));
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) {
      EXPECT_EQ(a.item({r, c}), r * 6 + c);
      EXPECT_EQ(at.item({c, r}), r * 6 + c);
    }
  EXPECT_EQ(rows.item({0, 0}), 6.0);
  EXPECT_EQ(rows.item({1, 5}), 17.0);
  EXPECT_EQ(a.storage(), at.storage());  // views share one storage
  EXPECT_EQ(i.dtype(), DType::I64);
  EXPECT_EQ(i.item({2}), 9.0);
}

}  // namespace

TEST(Pth, ReadsViewsOfSharedStorage) { check_small(parse(small_pth())); }

TEST(Pth, Zip64ArchiveGivesTheSameTensors) {
  check_small(parse(small_pth(/*zip64=*/true)));
  // miniz style: zip64 end records, 32-bit per-entry fields (all values small).
  ZipParts z = make_zip_parts(pth_entries(small_pickle(), {{"0", arange_f32(24)}, {"1", as_bytes(std::vector<int64_t>{7, 8, 9})}}),
                              Zip64::Auto, SIZE_MAX, 0);
  z.head.insert(z.head.end(), z.tail.begin(), z.tail.end());
  check_small(parse(z.head));
}

// Offsets past 4 GiB (as in the 11 GB umT5 checkpoint): a sparse file with a 4 GiB hole
// before the second storage record, which is then reached through its zip64 offset.
TEST(Pth, ArchiveLargerThan4GiB) {
  TempDir dir;
  const uint64_t gap = (uint64_t(1) << 32) + 4099;
  ZipParts z = make_zip_parts(pth_entries(small_pickle(), {{"0", arange_f32(24)}, {"1", as_bytes(std::vector<int64_t>{7, 8, 9})}}),
                              Zip64::Auto, /*gap_at=*/3, gap);
  const std::string path = dir.file("big.pth");
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_TRUE(f);
  ASSERT_EQ(std::fwrite(z.head.data(), 1, z.head.size(), f), z.head.size());
  ASSERT_EQ(fseeko(f, off_t(z.head.size() + gap), SEEK_SET), 0);
  ASSERT_EQ(std::fwrite(z.tail.data(), 1, z.tail.size(), f), z.tail.size());
  ASSERT_EQ(std::fclose(f), 0);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_GT(uint64_t(st.st_size), uint64_t(1) << 32);
  if (uint64_t(st.st_blocks) * 512 > (uint64_t(256) << 20))
    GTEST_SKIP() << "SKIP: this filesystem does not keep sparse files sparse";
  ZipReader zr = ZipReader::parse(map_file(path));
  ASSERT_TRUE(zr.find("archive/data/1"));
  EXPECT_GT(zr.find("archive/data/1")->local_offset, uint64_t(1) << 32);
  check_small(PthFile::open(path));
}

TEST(Pth, ZeroCopyFromTheMappedFile) {
  TempDir dir;
  ByteVec b = small_pth();
  write_bytes(dir.file("m.pth"), b);
  Tensor a;
  {
    PthFile f = PthFile::open(dir.file("m.pth"));
    a = f.get("a");
    EXPECT_EQ(a.raw(), f.get("a_t").raw());  // both views start at the record, no copies
  }
  EXPECT_FALSE(a.storage()->owns);
  EXPECT_TRUE(a.storage()->owner != nullptr);
  EXPECT_EQ(a.item({3, 5}), 23.0);  // the mapping outlives the PthFile
}

TEST(Pth, OrderedDictRootWithMetadataNestedDictsAndParameters) {
  PickleWriter p;
  p.proto().global("collections", "OrderedDict").op(')').op('R').put();
  p.mark();
  p.tensor("w", "BFloat16Storage", "0", 2, 0, {2}, {1});
  // "sub": {"p": Parameter(tensor)}
  p.str("sub").op('}').mark();
  p.str("p").global("torch._utils", "_rebuild_parameter");
  p.mark().tensor_value("BFloat16Storage", "0", 2, 1, {1}, {1});
  p.op(0x89).global("collections", "OrderedDict").op(')').op('R').op('t').op('R');
  p.op('u');
  p.str("epoch").integer(3);
  p.op('u');
  // BUILD with the state dict's _metadata
  p.op('}').str("_metadata").op('}').op('s').op('b');
  p.stop();
  ByteVec b = make_pth(p.b, {{"0", ByteVec{0x80, 0x3f, 0x00, 0x40}}});  // bf16 1.0, 2.0
  PthFile f = parse(b);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"sub.p", "w"}));
  EXPECT_EQ(f.get("w").item({1}), 2.0);
  EXPECT_EQ(f.get("sub.p").item({0}), 2.0);
  EXPECT_EQ(f.metadata().at("epoch"), "3");
}

// ---- malformed zip ----

TEST(PthBadInput, TruncatedZip) {
  ByteVec b = small_pth();
  ByteVec half(b.begin(), b.begin() + b.size() / 2);
  expect_error([&] { parse(half); }, {"end-of-central-directory"});
  expect_error([&] { parse(ByteVec(b.begin(), b.begin() + 10)); }, {"too short"});
  // Cut inside the last storage record, EOCD re-appended at the new end: offsets point past it.
  ByteVec eocd(b.end() - 22, b.end());
  ByteVec cut(b.begin(), b.begin() + 300);
  cut.insert(cut.end(), eocd.begin(), eocd.end());
  expect_error([&] { parse(cut); }, {"central directory"});
}

TEST(PthBadInput, BadCentralDirectory) {
  ByteVec b = small_pth();
  const size_t eocd = b.size() - 22;
  const uint32_t cd_off = le32(b.data() + eocd + 16);
  {
    ByteVec c = b;
    c[cd_off] ^= 0xff;  // broken signature of the first central entry
    expect_error([&] { parse(c); }, {"bad central directory entry 0"});
  }
  {
    ByteVec c = b;
    c[eocd + 16] = 0xf0;  // directory offset past the end record
    c[eocd + 17] = 0xff;
    expect_error([&] { parse(c); }, {"central directory", "outside the archive"});
  }
  {
    ByteVec c = b;
    c[cd_off + 42] = 0xff;  // first entry's local header offset out of range
    c[cd_off + 43] = 0xff;
    expect_error([&] { parse(c); }, {"bad local header offset"});
  }
  {
    ByteVec c = b;
    c[cd_off + 20] = 0xff;  // compressed size of data.pkl now runs past the data area
    c[cd_off + 21] = 0xff;
    c[cd_off + 24] = 0xff;
    c[cd_off + 25] = 0xff;
    expect_error([&] { parse(c); }, {"runs past the data area"});
  }
  {
    ByteVec c = b;
    c[eocd + 10] = 200;  // more entries than the directory holds
    expect_error([&] { parse(c); }, {"cannot hold"});
  }
}

TEST(PthBadInput, CompressedEntry) {
  std::vector<ZipInput> in{{"archive/data.pkl", small_pickle(), 8}};
  expect_error([&] { parse(make_zip(in)); }, {"'archive/data.pkl' is compressed"});
}

TEST(PthBadInput, NotATorchArchive) {
  expect_error([&] { parse(make_zip({{"hello.txt", ByteVec{'h', 'i'}}})); }, {"no '<name>/data.pkl'"});
  expect_error([&] { parse(make_zip({{"m/constants.pkl", ByteVec{'.'}}})); }, {"TorchScript"});
  ByteVec legacy = small_pickle();  // a bare pickle = the pre-1.6 format
  legacy.resize(64, 0);
  expect_error([&] { parse(legacy); }, {"legacy"});
}

TEST(PthBadInput, CorruptPickleFailsCrc) {
  ByteVec b = small_pth();
  // data.pkl's bytes start 64-aligned after its local header; flip one inside.
  const uint8_t* p = b.data();
  size_t data = 30 + le16(p + 26) + le16(p + 28);
  b[data + 10] ^= 1;
  expect_error([&] { parse(b); }, {"CRC-32"});
}

TEST(PthBadInput, MissingStorageRecord) {
  ByteVec b = make_pth(small_pickle(), {{"0", arange_f32(24)}});  // no record "1"
  expect_error([&] { parse(b); }, {"storage record 'archive/data/1' is missing"});
}

// ---- malformed pickle ----

TEST(PthBadInput, WrongPickleOpcode) {
  PickleWriter p;
  p.proto().op('}').mark().str("x").op('i');  // INST
  expect_error([&] { parse(make_pth(p.b, {})); }, {"opcode 0x69 (INST)", "not supported"});
  PickleWriter q;
  q.proto().op(0x81);  // NEWOBJ
  expect_error([&] { parse(make_pth(q.b, {})); }, {"NEWOBJ"});
  PickleWriter r;
  r.proto().op('}').op('0').op('0').stop();  // stack underflow
  expect_error([&] { parse(make_pth(r.b, {})); }, {"underflow"});
  PickleWriter s;
  s.proto().op('}');  // no STOP
  expect_error([&] { parse(make_pth(s.b, {})); }, {"without STOP"});
  PickleWriter t;
  t.proto().op('h').op(5);  // BINGET of an unset memo slot
  expect_error([&] { parse(make_pth(t.b, {})); }, {"memo entry 5"});
  PickleWriter u;
  u.proto().integer(3).stop();  // not a dict
  expect_error([&] { parse(make_pth(u.b, {})); }, {"not a state dict"});
}

TEST(PthBadInput, DisallowedGlobal) {
  PickleWriter p;
  p.proto().global("os", "system").str("echo pwned").op(0x85).op('R').stop();
  expect_error([&] { parse(make_pth(p.b, {})); }, {"'os.system'", "not allowed"});
  PickleWriter q;  // STACK_GLOBAL route
  q.proto().str("builtins").str("eval").op(0x93).stop();
  expect_error([&] { parse(make_pth(q.b, {})); }, {"'builtins.eval'", "not allowed"});
  PickleWriter r;
  r.proto().op('}').mark().tensor("x", "ShortStorage", "0", 1, 0, {1}, {1}).op('u').stop();
  expect_error([&] { parse(make_pth(r.b, {{"0", ByteVec(2)}})); }, {"torch.ShortStorage", "not supported"});
  PickleWriter s;  // an allowed class called with arguments it does not take
  s.proto().global("collections", "OrderedDict").integer(1).op(0x85).op('R').stop();
  expect_error([&] { parse(make_pth(s.b, {})); }, {"OrderedDict(...) with arguments"});
}

TEST(PthBadInput, HugeSizes) {
  {  // storage of 2^62 floats: the byte size overflows
    PickleWriter p;
    p.proto().op('}').mark().tensor("x", "FloatStorage", "0", int64_t(1) << 62, 0, {1}, {1}).op('u').stop();
    expect_error([&] { parse(make_pth(p.b, {{"0", ByteVec(4)}})); }, {"overflows"});
  }
  {  // storage larger than its record
    PickleWriter p;
    p.proto().op('}').mark().tensor("x", "FloatStorage", "0", 1000000, 0, {1}, {1}).op('u').stop();
    expect_error([&] { parse(make_pth(p.b, {{"0", ByteVec(4)}})); }, {"holds 4 bytes", "4000000 bytes"});
  }
  {  // a view reaching past its storage
    PickleWriter p;
    p.proto().op('}').mark().tensor("x", "FloatStorage", "0", 4, 1, {2, 2}, {2, 1}).op('u').stop();
    expect_error([&] { parse(make_pth(p.b, {{"0", ByteVec(16)}})); }, {"'x' does not fit its storage"});
  }
  {  // huge shape: the extent overflows
    PickleWriter p;
    p.proto().op('}').mark().tensor("x", "FloatStorage", "0", 4, 0, {int64_t(1) << 40, int64_t(1) << 40}, {int64_t(1) << 40, 1}).op('u').stop();
    expect_error([&] { parse(make_pth(p.b, {{"0", ByteVec(16)}})); }, {"'x' does not fit"});
  }
  {  // a string length far beyond the data
    PickleWriter p;
    p.proto().op('X');
    put32(p.b, 0xfffffff0u);
    expect_error([&] { parse(make_pth(p.b, {})); }, {"exceeds the limit"});
  }
  {  // stack and memo limits
    pickle::Limits lim;
    lim.max_stack = 100;
    PickleWriter p;
    p.proto();
    for (int i = 0; i < 200; ++i) p.op('N');
    expect_error([&] { parse(make_pth(p.b, {}), lim); }, {"stack deeper than 100"});
    lim.max_memo = 10;
    lim.max_stack = 1000;
    PickleWriter q;
    q.proto().op('N');
    for (int i = 0; i < 20; ++i) q.op('q').op(uint8_t(i));
    expect_error([&] { parse(make_pth(q.b, {}), lim); }, {"memo exceeds 10"});
  }
  {  // an integer wider than 64 bits
    PickleWriter p;
    p.proto().op(0x8a).op(9);
    p.b.insert(p.b.end(), 9, 0);
    expect_error([&] { parse(make_pth(p.b, {})); }, {"too large"});
  }
}

TEST(PthBadInput, SelfContainingDict) {
  // d = {}; d["d"] = d  -- must be an error, not a hang or a leak.
  PickleWriter p;
  p.proto().op('}').put().str("d").op('h').op(0).op('s').stop();
  expect_error([&] { parse(make_pth(p.b, {})); }, {"same dict appears twice"});
}

TEST(PthBadInput, MissingTensor) {
  PthFile f = parse(small_pth());
  expect_error([&] { f.get("a_T"); }, {"'a_T' not found", "close names: 'a_t'"});
}

// Mutations of a valid archive and of its pickle: parse succeeds or throws osp::Error.
TEST(PthFuzz, MutatedArchivesNeverCrash) {
  const ByteVec good = small_pth();
  const ByteVec pkl = small_pickle();
  std::mt19937 rng(777);
  int errors = 0, ok = 0;
  auto touch = [](const PthFile& f) {
    for (auto& [n, t] : f.tensors()) (void)t.to_float_vector();
  };
  for (int it = 0; it < 1500; ++it) {
    ByteVec b = good;
    if (it % 5 == 4) {
      b.resize(rng() % b.size());
    } else {
      int n = 1 + int(rng() % 3);
      for (int k = 0; k < n; ++k) b[rng() % b.size()] = uint8_t(rng());
    }
    try {
      touch(parse(b));
      ++ok;
    } catch (const osp::Error&) {
      ++errors;
    }
  }
  // The pickle alone (the zip CRC would reject most pickle mutations above).
  for (int it = 0; it < 3000; ++it) {
    ByteVec b = pkl;
    int n = 1 + int(rng() % 3);
    for (int k = 0; k < n; ++k) {
      size_t pos = rng() % b.size();
      b[pos] = (it % 2) ? uint8_t(rng()) : uint8_t("}](tuqhXKMJRQ.\x85\x86\x89"[rng() % 18]);
    }
    try {
      touch(parse(make_pth(b, {{"0", arange_f32(24)}, {"1", ByteVec(24)}})));
      ++ok;
    } catch (const osp::Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
  EXPECT_GT(ok, 0);
}
