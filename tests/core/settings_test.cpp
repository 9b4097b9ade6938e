// The engine's OSP_* overrides (core/settings.h): defaults with nothing set, every variable read
// into its setting, "" as unset and "0" as off, and a bad value an error naming the variable.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "osp/core/error.h"
#include "osp/core/settings.h"
#include "test_util.h"

using namespace osp;

namespace {

EngineSettings read(const std::map<std::string, std::string>& env) {
  return read_engine_settings([&](const char* n) -> const char* {
    const auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

std::string error(const std::map<std::string, std::string>& env) {
  return test::error_of([&] { read(env); });
}

}  // namespace

TEST(EngineSettings, DefaultsAndEveryVariable) {
  const EngineSettings d = read({});
  EXPECT_EQ(d.attention, EngineSettings::Attention::Auto);
  EXPECT_EQ(d.hopper_key_tile, 0);
  EXPECT_EQ(d.hopper_fp8_key_tile, 0);
  EXPECT_EQ(d.conv3d, "cudnn");
  EXPECT_FALSE(d.vae_fp32);
  EXPECT_TRUE(d.gemm_autotune);
  EXPECT_EQ(d.cudnn_autotune, "all");
  EXPECT_EQ(d.tuning_cache, "");
  EXPECT_EQ(d.cuda_allocator, "buckets");
  EXPECT_EQ(d.ulysses_chunks, 0);
  EXPECT_EQ(d.norm_backward, "warp");
  EXPECT_EQ(d.attn_bwd_chunks, 0);  // auto
  EXPECT_TRUE(d.fused_norms);
  EXPECT_FALSE(d.deterministic);
  EXPECT_TRUE(read({{"OSP_DETERMINISTIC", "1"}}).deterministic);
  EXPECT_FALSE(read({{"OSP_DETERMINISTIC", "0"}}).deterministic);
  EXPECT_FALSE(d.profile);
  EXPECT_FALSE(d.verbose);
  EXPECT_FALSE(d.fp8_sdpa_probe);
  EXPECT_EQ(d.fp8_sdpa_variant, -1);
  EXPECT_EQ(d.fp8_sdpa_config, -1);
  const EngineSettings s = read({{"OSP_ATTENTION", "flash"}, {"OSP_CONV3D", "im2col"}, {"OSP_VAE_FP32", "1"},
                                 {"OSP_GEMM_AUTOTUNE", "0"}, {"OSP_CUDA_ALLOCATOR", "blocks"},
                                 {"OSP_ULYSSES_CHUNKS", "2"}, {"OSP_PROFILE", "yes"}, {"OSP_VERBOSE", "1"},
                                 {"OSP_FP8_SDPA_PROBE", "1"}, {"OSP_FP8_SDPA_VARIANT", "3"},
                                 {"OSP_FP8_SDPA_CONFIG", "0"}, {"OSP_NORM_BACKWARD", "block"},
                                 {"OSP_ATTN_BWD_CHUNKS", "6"}, {"OSP_FUSED_NORMS", "0"},
                                 {"OSP_CUDNN_AUTOTUNE", "all"}, {"OSP_TUNING_CACHE", "/tmp/t.json"}});
  EXPECT_EQ(s.attention, EngineSettings::Attention::Flash);
  EXPECT_EQ(s.conv3d, "im2col");
  EXPECT_TRUE(s.vae_fp32);
  EXPECT_FALSE(s.gemm_autotune);
  EXPECT_EQ(s.cudnn_autotune, "all");
  EXPECT_EQ(s.tuning_cache, "/tmp/t.json");
  EXPECT_EQ(read({{"OSP_CUDNN_AUTOTUNE", "off"}}).cudnn_autotune, "off");
  EXPECT_EQ(read({{"OSP_CUDNN_AUTOTUNE", ""}}).cudnn_autotune, "all");
  EXPECT_EQ(read({{"OSP_CUDNN_AUTOTUNE", "attention"}}).cudnn_autotune, "attention");
  EXPECT_EQ(s.cuda_allocator, "blocks");
  EXPECT_EQ(s.ulysses_chunks, 2);
  EXPECT_EQ(s.norm_backward, "block");
  EXPECT_EQ(s.attn_bwd_chunks, 6);
  EXPECT_FALSE(s.fused_norms);
  EXPECT_EQ(read({{"OSP_ATTN_BWD_CHUNKS", "auto"}}).attn_bwd_chunks, 0);
  EXPECT_TRUE(s.profile);
  EXPECT_TRUE(s.verbose);
  EXPECT_TRUE(s.fp8_sdpa_probe);
  EXPECT_EQ(s.fp8_sdpa_variant, 3);
  EXPECT_EQ(s.fp8_sdpa_config, 0);
  EXPECT_EQ(read({{"OSP_ATTENTION", "cudnn"}}).attention, EngineSettings::Attention::Cudnn);
  EXPECT_EQ(read({{"OSP_ATTENTION", "hopper"}}).attention, EngineSettings::Attention::Hopper);
  EXPECT_EQ(read({{"OSP_HOPPER_KEY_TILE", "176"}}).hopper_key_tile, 176);
  EXPECT_EQ(read({{"OSP_HOPPER_KEY_TILE", "128"}}).hopper_key_tile, 128);
  EXPECT_EQ(read({{"OSP_HOPPER_FP8_KEY_TILE", "224"}}).hopper_fp8_key_tile, 224);
  EXPECT_EQ(read({{"OSP_HOPPER_FP8_KEY_TILE", "128"}}).hopper_fp8_key_tile, 128);
  // "" is unset, "0" is off
  EXPECT_TRUE(read({{"OSP_GEMM_AUTOTUNE", ""}}).gemm_autotune);
  EXPECT_FALSE(read({{"OSP_PROFILE", "0"}}).profile);
  EXPECT_EQ(read({{"OSP_CONV3D", ""}}).conv3d, "cudnn");
}

TEST(EngineSettings, BadValuesNameTheVariable) {
  EXPECT_NE(error({{"OSP_HOPPER_KEY_TILE", "64"}}).find("OSP_HOPPER_KEY_TILE must be 128 or 176, got '64'"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_HOPPER_FP8_KEY_TILE", "176"}}).find("OSP_HOPPER_FP8_KEY_TILE must be 128 or 224, got '176'"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_ATTENTION", "fa3"}}).find("OSP_ATTENTION must be auto, flash, cudnn or hopper, got 'fa3'"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_CUDNN_AUTOTUNE", "1"}}).find("OSP_CUDNN_AUTOTUNE must be off, attention or all, got '1'"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_CONV3D", "winograd"}}).find("OSP_CONV3D must be im2col or cudnn"), std::string::npos);
  EXPECT_NE(error({{"OSP_CUDA_ALLOCATOR", "slab"}}).find("OSP_CUDA_ALLOCATOR must be buckets or blocks"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_ULYSSES_CHUNKS", "0"}}).find("OSP_ULYSSES_CHUNKS=0 must be an integer >= 1"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_ULYSSES_CHUNKS", "2x"}}).find("OSP_ULYSSES_CHUNKS=2x"), std::string::npos);
  EXPECT_NE(error({{"OSP_NORM_BACKWARD", "thread"}}).find("OSP_NORM_BACKWARD must be warp or block"), std::string::npos);
  EXPECT_NE(error({{"OSP_ATTN_BWD_CHUNKS", "0"}}).find("OSP_ATTN_BWD_CHUNKS=0 must be an integer >= 1"),
            std::string::npos);
  EXPECT_NE(error({{"OSP_FP8_SDPA_CONFIG", "-2"}}).find("OSP_FP8_SDPA_CONFIG=-2 must be an integer >= -1"),
            std::string::npos);
}
