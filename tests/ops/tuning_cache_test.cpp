// ops::TuningCache: autotuning choices kept across processes in a JSON file.
#include "osp/ops/tuning_cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace osp::ops {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path p;
  TempDir() {
    p = fs::temp_directory_path() / ("osp_tuning_cache_test_" + std::to_string(getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TempDir() { fs::remove_all(p); }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(TuningCache, ChoicesSurviveTheProcessAndTheDirectoryIsCreated) {
  TempDir d;
  const std::string path = (d.p / "sub" / "tuning.json").string();
  {
    TuningCache c(path);
    EXPECT_TRUE(c.persistent());
    EXPECT_FALSE(c.find("conv|a").has_value());
    c.put("conv|a", {3, "8|engine 67"});
    c.put("sdpa|b", {0, "2|engine 2"});
    c.put("conv|a", {5, "8|engine 58"});  // a later choice replaces the earlier
  }
  TuningCache again(path);  // a new process
  auto a = again.find("conv|a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->index, 5);
  EXPECT_EQ(a->check, "8|engine 58");
  ASSERT_TRUE(again.find("sdpa|b").has_value());
  EXPECT_EQ(again.find("sdpa|b")->index, 0);
  for (const auto& e : fs::directory_iterator(d.p / "sub"))  // no temporary file left behind
    EXPECT_EQ(e.path().filename(), "tuning.json");
}

TEST(TuningCache, TwoWritersLoseNoEntry) {
  TempDir d;
  const std::string path = (d.p / "tuning.json").string();
  TuningCache one(path), two(path);
  EXPECT_FALSE(one.find("x").has_value());  // both have read the (missing) file
  EXPECT_FALSE(two.find("y").has_value());
  one.put("x", {1, "c1"});
  two.put("y", {2, "c2"});  // merges one's entry from disk before writing
  TuningCache three(path);
  ASSERT_TRUE(three.find("x").has_value());
  ASSERT_TRUE(three.find("y").has_value());
  EXPECT_EQ(three.find("x")->index, 1);
  EXPECT_EQ(three.find("y")->check, "c2");
}

TEST(TuningCache, AFileThatIsNotATuningCacheIsLeftUntouched) {
  TempDir d;
  for (const std::string text : {std::string("{not json"), std::string("{\"entries\": {}}"),
                                 std::string("{\"format\": \"osp-tuning-cache\", \"version\": 99, \"entries\": {}}"),
                                 std::string("{\"format\": \"osp-tuning-cache\", \"version\": 1, \"entries\": "
                                             "{\"k\": {\"index\": \"three\", \"check\": \"\"}}}")}) {
    const fs::path p = d.p / "tuning.json";
    { std::ofstream(p) << text; }
    TuningCache c(p.string());
    EXPECT_FALSE(c.find("k").has_value()) << text;
    EXPECT_FALSE(c.persistent()) << text;
    c.put("k", {1, "c"});  // kept in memory ...
    EXPECT_EQ(c.find("k")->index, 1) << text;
    EXPECT_EQ(slurp(p), text);  // ... and the file is not overwritten
  }
}

TEST(TuningCache, NoPathKeepsChoicesInMemory) {
  TuningCache c("");
  EXPECT_FALSE(c.persistent());
  c.put("k", {2, "c"});
  EXPECT_EQ(c.find("k")->index, 2);
}

TEST(TuningCache, PathFromTheSettingAndTheEnvironment) {
  std::map<std::string, std::string> env;
  auto get = [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  EXPECT_EQ(tuning_cache_path("", get), "");  // nowhere to put it
  env["HOME"] = "/home/u";
  EXPECT_EQ(tuning_cache_path("", get), "/home/u/.cache/osp/tuning.json");
  env["XDG_CACHE_HOME"] = "/xdg";
  EXPECT_EQ(tuning_cache_path("", get), "/xdg/osp/tuning.json");
  EXPECT_EQ(tuning_cache_path("/tmp/mine.json", get), "/tmp/mine.json");
  EXPECT_EQ(tuning_cache_path("off", get), "");
}

}  // namespace
}  // namespace osp::ops
