#include "osp/pipeline/request.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "osp/core/error.h"

namespace osp::pipeline {

std::vector<std::string> request_fields(bool allow_out) {
  std::vector<std::string> f = {"prompt",  "negative_prompt", "no_negative", "seed",     "size",
                                "width",   "height",          "frames",      "steps",    "sampler",
                                "shift",   "guidance",        "attention",   "fps",      "cache"};
  if (allow_out) f.insert(f.end(), {"out", "noise"});  // local files: batch lines, not server requests
  return f;
}

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

const char* type_name(const nlohmann::json& v) { return v.type_name(); }

std::string get_string(const nlohmann::json& v, const std::string& k) {
  OSP_CHECK(v.is_string(), "field '", k, "' must be a string, got ", type_name(v));
  return v.get<std::string>();
}
int64_t get_int(const nlohmann::json& v, const std::string& k, int64_t lo, int64_t hi) {
  OSP_CHECK(v.is_number_integer() || (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>()))),
            "field '", k, "' must be an integer, got ", v.is_number() ? v.dump() : type_name(v));
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX
                    : v.is_number_integer()                                          ? v.get<int64_t>()
                                                                                     : int64_t(v.get<double>());
  OSP_CHECK(x >= lo && x <= hi, "field '", k, "' must be in [", lo, ", ", hi, "], got ", v.dump());
  return x;
}
double get_number(const nlohmann::json& v, const std::string& k) {
  OSP_CHECK(v.is_number(), "field '", k, "' must be a number, got ", type_name(v));
  return v.get<double>();
}

}  // namespace

void apply_json_settings(const nlohmann::json& j, GenerateOptions& o, bool allow_out) {
  OSP_CHECK(j.is_object(), "settings must be a JSON object, got ", type_name(j));
  const auto known = request_fields(allow_out);
  for (const auto& [k, v] : j.items())
    OSP_CHECK(std::find(known.begin(), known.end(), k) != known.end(), "unknown field '", k,
              "' (known fields: ", join(known), ")");
  OSP_CHECK(!(j.contains("size") && (j.contains("width") || j.contains("height"))),
            "give either 'size' or 'width'/'height', not both");
  constexpr int64_t kBig = 1 << 20;
  for (const auto& [k, v] : j.items()) {
    if (k == "prompt") o.prompt = get_string(v, k);
    else if (k == "negative_prompt") o.negative_prompt = get_string(v, k);
    else if (k == "no_negative") {
      OSP_CHECK(v.is_boolean(), "field 'no_negative' must be true or false, got ", type_name(v));
      o.no_negative = v.get<bool>();
    } else if (k == "seed") o.seed = get_int(v, k, -1, INT64_MAX);
    else if (k == "size") parse_size(get_string(v, k), o.width, o.height);
    else if (k == "width") o.width = int(get_int(v, k, 1, kBig));
    else if (k == "height") o.height = int(get_int(v, k, 1, kBig));
    else if (k == "frames") o.frames = int(get_int(v, k, 1, kBig));
    else if (k == "steps") o.steps = int(get_int(v, k, 1, kBig));
    else if (k == "sampler") o.sampler = get_string(v, k);
    else if (k == "shift") {
      o.shift = get_number(v, k);
      OSP_CHECK(o.shift > 0 && o.shift <= 100, "field 'shift' must be in (0, 100], got ", v.dump());
    } else if (k == "guidance") o.guidance = float(get_number(v, k));
    else if (k == "attention") o.attention = get_string(v, k);
    else if (k == "fps") o.fps = int(get_int(v, k, 1, 240));
    else if (k == "cache") o.cache = get_string(v, k);
    else if (k == "out") o.out = get_string(v, k);
    else if (k == "noise") o.noise = get_string(v, k);
  }
  OSP_CHECK(j.contains("prompt"), "field 'prompt' is required");
  OSP_CHECK(!(o.no_negative && j.contains("negative_prompt")),
            "'negative_prompt' and 'no_negative' contradict each other: give one of them");
}

std::string prompt_slug(const std::string& prompt, size_t max_len) {
  std::string s;
  bool dash = false;
  for (unsigned char c : prompt) {
    if (std::isalnum(c) && c < 0x80) {
      if (dash && !s.empty()) s += '-';
      dash = false;
      if (s.size() >= max_len) break;
      s += char(std::tolower(c));
    } else {
      dash = true;
    }
  }
  while (s.size() > max_len || (!s.empty() && s.back() == '-')) s.pop_back();
  return s.empty() ? "video" : s;
}

}  // namespace osp::pipeline
