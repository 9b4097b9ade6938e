#include "osp/core/settings.h"

#include <cstdlib>
#include <cstring>

#include "osp/core/error.h"

namespace osp {

EngineSettings read_engine_settings(const std::function<const char*(const char*)>& get) {
  EngineSettings s;
  auto value = [&](const char* name) -> std::string {
    const char* v = get(name);
    return v ? std::string(v) : std::string();
  };
  auto flag = [&](const char* name, bool dflt) {
    const std::string v = value(name);
    return v.empty() ? dflt : v != "0";
  };
  auto integer = [&](const char* name, int64_t dflt, int64_t min) {
    const std::string v = value(name);
    if (v.empty()) return dflt;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    OSP_CHECK(end && *end == '\0' && x >= min, name, "=", v, " must be an integer >= ", min);
    return int64_t(x);
  };
  const std::string att = value("OSP_ATTENTION");
  OSP_CHECK(att.empty() || att == "auto" || att == "flash" || att == "cudnn" || att == "hopper",
            "OSP_ATTENTION must be auto, flash, cudnn or hopper, got '", att, "'");
  s.attention = att == "flash"    ? EngineSettings::Attention::Flash
                : att == "cudnn"  ? EngineSettings::Attention::Cudnn
                : att == "hopper" ? EngineSettings::Attention::Hopper
                                  : EngineSettings::Attention::Auto;
  const std::string kt = value("OSP_HOPPER_KEY_TILE");
  OSP_CHECK(kt.empty() || kt == "128" || kt == "176", "OSP_HOPPER_KEY_TILE must be 128 or 176, got '", kt, "'");
  s.hopper_key_tile = kt.empty() ? 0 : std::stoi(kt);
  const std::string kt8 = value("OSP_HOPPER_FP8_KEY_TILE");
  OSP_CHECK(kt8.empty() || kt8 == "128" || kt8 == "224", "OSP_HOPPER_FP8_KEY_TILE must be 128 or 224, got '", kt8,
            "'");
  s.hopper_fp8_key_tile = kt8.empty() ? 0 : std::stoi(kt8);
  s.conv3d = value("OSP_CONV3D");
  if (s.conv3d.empty()) s.conv3d = "cudnn";
  OSP_CHECK(s.conv3d == "im2col" || s.conv3d == "cudnn", "OSP_CONV3D must be im2col or cudnn, got '", s.conv3d, "'");
  s.cuda_allocator = value("OSP_CUDA_ALLOCATOR");
  if (s.cuda_allocator.empty()) s.cuda_allocator = "buckets";
  OSP_CHECK(s.cuda_allocator == "buckets" || s.cuda_allocator == "blocks",
            "OSP_CUDA_ALLOCATOR must be buckets or blocks, got '", s.cuda_allocator, "'");
  s.vae_fp32 = flag("OSP_VAE_FP32", false);
  s.gemm_autotune = flag("OSP_GEMM_AUTOTUNE", true);
  s.cudnn_autotune = value("OSP_CUDNN_AUTOTUNE");
  if (s.cudnn_autotune.empty()) s.cudnn_autotune = "all";
  OSP_CHECK(s.cudnn_autotune == "off" || s.cudnn_autotune == "attention" || s.cudnn_autotune == "all",
            "OSP_CUDNN_AUTOTUNE must be off, attention or all, got '", s.cudnn_autotune, "'");
  s.tuning_cache = value("OSP_TUNING_CACHE");
  s.ulysses_chunks = integer("OSP_ULYSSES_CHUNKS", 0, 1);
  s.norm_backward = value("OSP_NORM_BACKWARD");
  if (s.norm_backward.empty()) s.norm_backward = "warp";
  OSP_CHECK(s.norm_backward == "warp" || s.norm_backward == "block",
            "OSP_NORM_BACKWARD must be warp or block, got '", s.norm_backward, "'");
  s.attn_bwd_chunks = value("OSP_ATTN_BWD_CHUNKS") == "auto" ? 0 : integer("OSP_ATTN_BWD_CHUNKS", 0, 1);
  s.deterministic = flag("OSP_DETERMINISTIC", false);
  s.fused_norms = flag("OSP_FUSED_NORMS", true);
  s.profile = flag("OSP_PROFILE", false);
  s.cuda_graphs = flag("OSP_CUDA_GRAPHS", false);
  s.verbose = flag("OSP_VERBOSE", false);
  s.fp8_sdpa_probe = flag("OSP_FP8_SDPA_PROBE", false);
  s.fp8_sdpa_variant = int(integer("OSP_FP8_SDPA_VARIANT", -1, -1));
  s.fp8_sdpa_config = int(integer("OSP_FP8_SDPA_CONFIG", -1, -1));
  return s;
}

const EngineSettings& engine_settings() {
  static const EngineSettings s = read_engine_settings([](const char* n) { return std::getenv(n); });
  return s;
}

}  // namespace osp
