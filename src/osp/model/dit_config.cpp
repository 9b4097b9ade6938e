#include "osp/model/dit_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

namespace osp::model {

using json = nlohmann::json;

void DiTConfig::validate() const {
  OSP_CHECK(dim > 0 && ffn_dim > 0 && num_heads > 0 && num_layers > 0 && text_dim > 0 &&
                text_len > 0 && freq_dim > 0 && in_dim > 0 && out_dim > 0,
            "DiT config: every size must be positive (", summary(), ")");
  // Upper bounds far above any Wan/OSP-Next model (14B: dim 5120, ffn 13824, 40 heads, 40 layers),
  // checked before anything is allocated from these numbers.
  auto at_most = [](int64_t v, int64_t max, const char* what) {
    OSP_CHECK(v <= max, "DiT config: ", what, " ", v, " is out of range (at most ", max, ")");
  };
  at_most(dim, 32768, "dim");
  at_most(ffn_dim, 131072, "ffn_dim");
  at_most(num_heads, 1024, "num_heads");
  at_most(num_layers, 512, "num_layers");
  at_most(text_dim, 32768, "text_dim");
  at_most(text_len, 4096, "text_len");
  at_most(freq_dim, 32768, "freq_dim");
  at_most(in_dim, 1024, "in_dim");
  at_most(out_dim, 1024, "out_dim");
  at_most(sparse_ratio, 64, "sparse_ratio");
  OSP_CHECK(dim % num_heads == 0, "DiT config: dim ", dim, " is not divisible by num_heads ",
            num_heads);
  OSP_CHECK(head_dim() % 2 == 0, "DiT config: head dim ", head_dim(), " must be even (RoPE pairs)");
  OSP_CHECK(head_dim() >= 6, "DiT config: head dim ", head_dim(),
            " is too small for the 3-axis RoPE split");
  OSP_CHECK(freq_dim % 2 == 0, "DiT config: freq_dim ", freq_dim, " must be even");
  OSP_CHECK(patch_t == 1, "DiT config: temporal patch size must be 1, got ", patch_t);
  OSP_CHECK(patch_h >= 1 && patch_w >= 1, "DiT config: bad spatial patch size ", patch_h, "x",
            patch_w);
  OSP_CHECK(eps > 0, "DiT config: eps must be > 0, got ", eps);
  OSP_CHECK(skiparse_mode == "full" || skiparse_mode == "dual_end",
            "DiT config: skiparse mode must be \"full\" or \"dual_end\", got \"", skiparse_mode,
            "\" (\"uniform\" is not implemented by any reference revision)");
  if (skiparse_mode != "full")
    OSP_CHECK(sparse_ratio >= 2, "DiT config: sparse_ratio must be >= 2 for mode ",
              skiparse_mode, ", got ", sparse_ratio);
  (void)block_kinds();  // plan_blocks validates num_full_blocks against num_layers
}

std::vector<sparse::BlockKind> DiTConfig::block_kinds() const {
  if (skiparse_mode == "full")
    return std::vector<sparse::BlockKind>(size_t(num_layers), sparse::BlockKind::Full);
  return sparse::plan_blocks(int(num_layers), skiparse_mode, num_full_blocks);
}

std::string DiTConfig::summary() const {
  return str("dim ", dim, ", ffn ", ffn_dim, ", heads ", num_heads, ", layers ", num_layers,
             ", text ", text_dim, "x", text_len, ", freq ", freq_dim, ", in/out ", in_dim, "/",
             out_dim, ", patch ", patch_t, "x", patch_h, "x", patch_w, ", eps ", eps,
             ", qk_norm ", qk_norm, ", cross_attn_norm ", cross_attn_norm, ", skiparse ",
             skiparse_mode, (skiparse_mode == "full" ? std::string() :
                             str(" (P ", sparse_ratio, ", full blocks ", num_full_blocks, ")")));
}

DiTConfig DiTConfig::wan_1_3b() { return DiTConfig{}; }

DiTConfig DiTConfig::wan_14b() {
  DiTConfig c;
  c.dim = 5120;
  c.ffn_dim = 13824;
  c.num_heads = 40;
  c.num_layers = 40;
  return c;
}

namespace {

int64_t get_int(const json& j, const char* key, int64_t def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  double d = 0;
  if (v.is_number_unsigned()) d = double(v.get<uint64_t>());
  else if (v.is_number_integer()) d = double(v.get<int64_t>());
  else if (v.is_number_float()) d = v.get<double>();
  else fail(str("DiT config: \"", key, "\" must be an integer, got ", v.type_name(), " ", v.dump().substr(0, 80)));
  OSP_CHECK(std::isfinite(d) && d == std::floor(d), "DiT config: \"", key, "\" must be an integer, got ", v.dump());
  OSP_CHECK(std::fabs(d) <= 2147483647.0, "DiT config: \"", key, "\" is ", v.dump(), ", far out of range");
  return int64_t(d);
}

// A string field (absent or null: the default).
std::string get_string(const json& j, const char* key, const std::string& def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  OSP_CHECK(j[key].is_string(), "DiT config: \"", key, "\" must be a string, got ", j[key].type_name(), " ",
            j[key].dump().substr(0, 80));
  return j[key].get<std::string>();
}

bool get_bool(const json& j, const char* key, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer()) return v.get<int64_t>() != 0;
  // diffusers: qk_norm = "rms_norm_across_heads" (any non-empty norm name means "on")
  if (v.is_string()) return !v.get<std::string>().empty();
  fail(str("DiT config: \"", key, "\" must be a boolean, got ", v.type_name(), " ", v.dump().substr(0, 80)));
}

}  // namespace

DiTConfig DiTConfig::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    fail(str("DiT config: not valid JSON (", e.what(), ")"));
  }
  OSP_CHECK(j.is_object(), "DiT config: expected a JSON object, got ", j.type_name());
  DiTConfig c;
  c.dim = get_int(j, "dim", c.dim);
  c.ffn_dim = get_int(j, "ffn_dim", c.ffn_dim);
  c.num_layers = get_int(j, "num_layers", c.num_layers);
  c.text_dim = get_int(j, "text_dim", c.text_dim);
  c.text_len = get_int(j, "text_len", c.text_len);
  c.freq_dim = get_int(j, "freq_dim", c.freq_dim);
  c.in_dim = get_int(j, "in_dim", get_int(j, "in_channels", c.in_dim));
  c.out_dim = get_int(j, "out_dim", get_int(j, "out_channels", c.out_dim));
  // diffusers: num_attention_heads × attention_head_dim = dim
  if (j.contains("num_attention_heads")) {
    c.num_heads = get_int(j, "num_attention_heads", c.num_heads);
    const int64_t hd = get_int(j, "attention_head_dim", 128);
    if (!j.contains("dim")) c.dim = c.num_heads * hd;
    OSP_CHECK(c.dim == c.num_heads * hd, "DiT config: num_attention_heads ", c.num_heads,
              " × attention_head_dim ", hd, " != dim ", c.dim);
  } else {
    c.num_heads = get_int(j, "num_heads", c.num_heads);
  }
  if (j.contains("patch_size") && !j["patch_size"].is_null()) {
    const json& p = j["patch_size"];
    OSP_CHECK(p.is_array() && p.size() == 3 && p[0].is_number_integer() && p[1].is_number_integer() &&
                  p[2].is_number_integer(),
              "DiT config: patch_size must be [t, h, w] integers, got ", p.dump().substr(0, 80));
    for (int i = 0; i < 3; ++i)
      OSP_CHECK(p[i].get<int64_t>() >= 1 && p[i].get<int64_t>() <= 16, "DiT config: patch_size must be in [1, 16], got ",
                p.dump());
    c.patch_t = int(p[0].get<int64_t>());
    c.patch_h = int(p[1].get<int64_t>());
    c.patch_w = int(p[2].get<int64_t>());
  }
  if (j.contains("eps") && !j["eps"].is_null()) {
    OSP_CHECK(j["eps"].is_number(), "DiT config: \"eps\" must be a number, got ", j["eps"].type_name(), " ",
              j["eps"].dump().substr(0, 80));
    c.eps = j["eps"].get<float>();
  }
  c.qk_norm = get_bool(j, "qk_norm", c.qk_norm);
  c.cross_attn_norm = get_bool(j, "cross_attn_norm", c.cross_attn_norm);
  if (j.contains("model_type") && !j["model_type"].is_null()) {
    const std::string mt = get_string(j, "model_type", "t2v");
    OSP_CHECK(mt == "t2v", "DiT config: model_type \"", mt,
              "\" is not supported (only the text-to-video \"t2v\" model)");
  }
  for (const char* key : {"skiparse_model_type", "skiparse_mode", "skiparse_type"})
    c.skiparse_mode = get_string(j, key, c.skiparse_mode);
  c.sparse_ratio = int(get_int(j, "sparse_ratio", c.sparse_ratio));
  c.num_full_blocks = int(get_int(j, "num_full_blocks", c.num_full_blocks));
  c.validate();
  return c;
}

DiTConfig DiTConfig::from_json_file(const std::string& path) {
  std::ifstream f(path);
  OSP_CHECK(f.good(), "DiT config: cannot open ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return from_json(ss.str());
  } catch (const Error& e) {
    fail(str(path, ": ", e.what()));
  }
}

DiTConfig DiTConfig::infer(const std::map<std::string, Shape>& shapes, const std::string& prefix,
                           int64_t heads_hint) {
  auto find = [&](const std::string& name) -> const Shape* {
    auto it = shapes.find(prefix + name);
    return it == shapes.end() ? nullptr : &it->second;
  };
  auto need = [&](const std::string& name, size_t rank) -> const Shape& {
    const Shape* s = find(name);
    OSP_CHECK(s, "DiT config inference: tensor \"", prefix + name,
              "\" is missing (is this a Wan2.1 DiT checkpoint in original naming?)");
    OSP_CHECK(s->size() == rank, "DiT config inference: \"", prefix + name, "\" has shape ",
              shape_str(*s), ", expected rank ", rank);
    return *s;
  };
  DiTConfig c;
  const Shape& pe = need("patch_embedding.weight", 5);
  c.dim = pe[0];
  c.in_dim = pe[1];
  c.patch_t = int(pe[2]);
  c.patch_h = int(pe[3]);
  c.patch_w = int(pe[4]);
  c.text_dim = need("text_embedding.0.weight", 2)[1];
  c.freq_dim = need("time_embedding.0.weight", 2)[1];
  const Shape& head = need("head.head.weight", 2);
  OSP_CHECK(head[0] % c.patch_volume() == 0, "DiT config inference: head.head.weight rows ",
            head[0], " not divisible by the patch volume ", c.patch_volume());
  c.out_dim = head[0] / c.patch_volume();
  c.ffn_dim = need("blocks.0.ffn.0.weight", 2)[0];
  std::set<int64_t> blocks;
  const std::regex re("blocks\\.([0-9]+)\\..*");
  for (const auto& [name, s] : shapes) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    std::smatch m;
    const std::string rest = name.substr(prefix.size());
    if (std::regex_match(rest, m, re)) blocks.insert(std::stoll(m[1].str()));
  }
  c.num_layers = int64_t(blocks.size());
  OSP_CHECK(c.num_layers > 0 && *blocks.rbegin() == c.num_layers - 1,
            "DiT config inference: block indices are not 0..", c.num_layers - 1);
  c.qk_norm = find("blocks.0.self_attn.norm_q.weight") != nullptr;
  c.cross_attn_norm = find("blocks.0.norm3.weight") != nullptr;
  c.num_heads = heads_hint > 0 ? heads_hint : c.dim / 128;
  OSP_CHECK(c.num_heads > 0 && c.dim % c.num_heads == 0, "DiT config inference: dim ", c.dim,
            " is not a multiple of head dim 128; pass the number of heads explicitly");
  c.validate();
  return c;
}

}  // namespace osp::model
