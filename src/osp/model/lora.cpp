#include "osp/model/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <sstream>

#include "osp/core/error.h"
#include "osp/core/philox.h"
#include "osp/io/close_names.h"
#include "osp/io/name_map.h"
#include "osp/io/safetensors.h"
#include "osp/ops/ops.h"

namespace osp::model {

const std::vector<std::string>& default_lora_targets() {
  static const std::vector<std::string> t = {"self_attn.q",  "self_attn.k",  "self_attn.v",
                                             "self_attn.o",  "cross_attn.q", "cross_attn.k",
                                             "cross_attn.v", "cross_attn.o"};
  return t;
}

namespace {

constexpr const char* kFormat = "osp-lora";
constexpr const char* kSupported =
    "supported: <module>.lora_A.weight / .lora_B.weight (PEFT, also .lora_A.default.weight), "
    "<module>.lora_down.weight / .lora_up.weight (kohya) and <module>.alpha, with optional "
    "prefixes base_model.model., diffusion_model., transformer. and original Wan or diffusers "
    "module names";

std::string fmt_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  // Prefer the shortest representation that round-trips.
  for (int p = 1; p <= 17; ++p) {
    char b2[64];
    std::snprintf(b2, sizeof b2, "%.*g", p, v);
    if (std::strtod(b2, nullptr) == v) return b2;
  }
  return buf;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

// The target suffix of a module: "blocks.3.self_attn.q" -> "self_attn.q".
std::string target_of(const std::string& module) {
  if (starts_with(module, "blocks.")) {
    size_t i = 7;
    while (i < module.size() && std::isdigit(static_cast<unsigned char>(module[i]))) ++i;
    if (i > 7 && i < module.size() && module[i] == '.') return module.substr(i + 1);
  }
  return module;
}

bool module_matches(const std::string& module, const std::string& target) {
  return module == target || ends_with(module, "." + target);
}

enum class Part { A, B, Alpha };

struct ParsedName {
  std::string module;  // original Wan module name
  Part part;
};

// Classifies one tensor name of a LoRA file; nullopt when the layout is not supported.
std::optional<ParsedName> parse_name(const std::string& name) {
  std::string n = name;
  for (bool again = true; again;) {
    again = false;
    for (const char* p : {"base_model.model.", "diffusion_model.", "transformer."})
      if (starts_with(n, p)) {
        n = n.substr(std::string(p).size());
        again = true;
      }
  }
  static const std::pair<const char*, Part> kSuffix[] = {
      {".lora_A.default.weight", Part::A}, {".lora_B.default.weight", Part::B},
      {".lora_A.weight", Part::A},         {".lora_B.weight", Part::B},
      {".lora_down.weight", Part::A},      {".lora_up.weight", Part::B},
      {".alpha", Part::Alpha}};
  for (const auto& [suf, part] : kSuffix) {
    if (!ends_with(n, suf)) continue;
    std::string module = n.substr(0, n.size() - std::string(suf).size());
    if (module.empty()) return std::nullopt;
    const std::string w = module + ".weight";
    if (!io::dit_original_to_diffusers(w).has_value()) {
      if (auto o = io::dit_diffusers_to_original(w)) module = o->substr(0, o->size() - 7);
    }
    return ParsedName{module, part};
  }
  return std::nullopt;
}

Tensor to_f32_cpu_copy(const Tensor& t) {
  Tensor c = t.to(Device::cpu());
  return c.dtype() == DType::F32 ? c.clone() : c.to(DType::F32).contiguous();
}

std::string problem_list(const std::vector<std::string>& problems) {
  std::ostringstream os;
  const size_t show = std::min<size_t>(problems.size(), 12);
  for (size_t i = 0; i < show; ++i) os << "\n  - " << problems[i];
  if (problems.size() > show) os << "\n  ... and " << problems.size() - show << " more";
  return os.str();
}

}  // namespace

// ------------------------------------------------------------------------ Lora

int64_t Lora::rank() const {
  int64_t r = -1;
  for (const auto& [m, a] : adapters) {
    if (r == -1) r = a.rank();
    else if (r != a.rank()) return -1;
  }
  return r;
}

double Lora::alpha() const {
  double al = -1;
  bool first = true;
  for (const auto& [m, a] : adapters) {
    if (first) al = a.alpha, first = false;
    else if (al != a.alpha) return -1;
  }
  return al;
}

std::vector<std::string> Lora::targets() const {
  std::set<std::string> all;
  for (const auto& [m, a] : adapters) all.insert(target_of(m));
  std::vector<std::string> out;
  for (const auto& t : default_lora_targets())
    if (all.erase(t)) out.push_back(t);
  out.insert(out.end(), all.begin(), all.end());
  return out;
}

std::string Lora::summary() const {
  int64_t params = 0;
  for (const auto& [m, a] : adapters) params += a.A.numel() + a.B.numel();
  std::ostringstream os;
  os << adapters.size() << " adapters, ";
  if (rank() >= 0) os << "rank " << rank();
  else os << "mixed ranks";
  if (alpha() >= 0 && rank() > 0)
    os << ", alpha " << fmt_double(alpha()) << " (α/r " << fmt_double(alpha() / double(rank()))
       << ")";
  else os << ", mixed alphas";
  os << ", targets ";
  const auto t = targets();
  for (size_t i = 0; i < t.size(); ++i) os << (i ? "," : "") << t[i];
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fM", double(params) / 1e6);
  os << "; " << buf << " parameters";
  return os.str();
}

// ------------------------------------------------------------------------ init

std::map<std::string, Shape> lora_target_linears(const std::map<std::string, Shape>& base_shapes,
                                                 const std::vector<std::string>& targets) {
  OSP_CHECK(!targets.empty(), "init_lora: no targets");
  std::map<std::string, Shape> out;
  std::map<std::string, int> hits;
  std::vector<std::string> linears;
  for (const auto& [name, shape] : base_shapes) {
    if (!ends_with(name, ".weight") || shape.size() != 2) continue;
    const std::string module = name.substr(0, name.size() - 7);
    linears.push_back(module);
    for (const auto& t : targets)
      if (module_matches(module, t)) {
        ++hits[t];
        out[module] = shape;
        break;
      }
  }
  for (const auto& t : targets)
    OSP_CHECK(hits[t] > 0, "init_lora: target '", t, "' matches no linear weight of the model (",
              linears.size(), " linears, e.g. ",
              linears.empty() ? std::string("none") : linears.front(), ")");
  return out;
}

std::vector<std::string> split_lora_targets(const std::string& csv) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : csv) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

int64_t lora_parameter_count(const std::map<std::string, Shape>& base_shapes, const LoraInit& opt) {
  int64_t n = 0;
  for (const auto& [module, shape] : lora_target_linears(base_shapes, opt.targets)) n += opt.rank * (shape[0] + shape[1]);
  return n;
}

Lora init_lora(const std::map<std::string, Shape>& base_shapes, const LoraInit& opt) {
  OSP_CHECK(opt.rank >= 1, "init_lora: rank must be >= 1, got ", opt.rank);
  OSP_CHECK(std::isfinite(opt.alpha), "init_lora: alpha must be finite, got ", opt.alpha);
  Lora lora;
  lora.origin = "init";
  for (const auto& [module, shape] : lora_target_linears(base_shapes, opt.targets)) {
    LoraAdapter a;
    a.alpha = opt.alpha;
    a.A = Tensor::empty({opt.rank, shape[1]}, DType::F32);
    a.B = Tensor::zeros({shape[0], opt.rank}, DType::F32);
    a.source = module + ".lora_A.weight";
    lora.adapters[module] = a;
  }
  uint32_t stream = 0;
  for (auto& [module, a] : lora.adapters) {  // sorted module order: stream k for adapter k
    philox_normal(opt.seed, stream++, 0, a.A.data<float>(), a.A.numel());
    float* p = a.A.data<float>();
    const float inv_r = float(1.0 / double(opt.rank));
    for (int64_t i = 0; i < a.A.numel(); ++i) p[i] *= inv_r;
  }
  return lora;
}

// ------------------------------------------------------------------------ files

void save_lora(const std::string& path, const Lora& lora) {
  OSP_CHECK(!lora.adapters.empty(), "save_lora: the LoRA has no adapters");
  std::map<std::string, Tensor> tensors;
  const bool uniform_alpha = lora.alpha() >= 0 || lora.adapters.size() == 1;
  for (const auto& [module, a] : lora.adapters) {
    OSP_CHECK(a.A.defined() && a.B.defined(), "save_lora: adapter ", module, " is incomplete");
    tensors[module + ".lora_A.weight"] = a.A.to(Device::cpu()).to(DType::F32);
    tensors[module + ".lora_B.weight"] = a.B.to(Device::cpu()).to(DType::F32);
    if (!uniform_alpha) {
      Tensor al = Tensor::empty({}, DType::F32);
      al.data<float>()[0] = float(a.alpha);
      tensors[module + ".alpha"] = al;
    }
  }
  std::map<std::string, std::string> md = lora.metadata;
  md["format"] = kFormat;
  if (lora.rank() >= 0) md["lora_rank"] = std::to_string(lora.rank());
  if (uniform_alpha) md["lora_alpha"] = fmt_double(lora.adapters.begin()->second.alpha);
  std::string t;
  for (const auto& x : lora.targets()) t += (t.empty() ? "" : ",") + x;
  md["target_modules"] = t;
  io::save_safetensors(path, tensors, md);
}

Lora lora_from_tensors(const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::string& where) {
  struct Parts {
    Tensor A, B;
    std::string a_name, b_name, alpha_name;
    std::optional<double> alpha;
  };
  std::map<std::string, Parts> mods;
  std::vector<std::string> unsupported, problems;
  for (const auto& [name, t] : tensors) {
    const auto p = parse_name(name);
    if (!p) {
      unsupported.push_back(name);
      continue;
    }
    Parts& m = mods[p->module];
    if (!dtype_is_float(t.dtype())) {
      problems.push_back(str("'", name, "' has dtype ", dtype_name(t.dtype()),
                             " (a float type expected)"));
      continue;
    }
    switch (p->part) {
      case Part::A:
      case Part::B: {
        std::string& slot = p->part == Part::A ? m.a_name : m.b_name;
        if (!slot.empty()) {
          problems.push_back(str("'", name, "' and '", slot, "' both give ",
                                 p->part == Part::A ? "lora_A" : "lora_B", " of ", p->module));
          continue;
        }
        if (t.dim() != 2) {
          problems.push_back(str("'", name, "' must be 2-D, got ", shape_str(t.shape())));
          continue;
        }
        slot = name;
        (p->part == Part::A ? m.A : m.B) = to_f32_cpu_copy(t);
        break;
      }
      case Part::Alpha: {
        if (t.numel() != 1) {
          problems.push_back(str("'", name, "' must be a scalar, got ", shape_str(t.shape())));
          continue;
        }
        m.alpha_name = name;
        m.alpha = double(t.to_float_vector()[0]);
        break;
      }
    }
  }
  if (!unsupported.empty()) {
    std::vector<std::string> msgs;
    for (const auto& u : unsupported)
      msgs.push_back(str("unsupported LoRA tensor '", u, "'"));
    fail(str("LoRA ", where, ": ", unsupported.size(), " tensor(s) of an unsupported layout (",
             kSupported, "):", problem_list(msgs)));
  }

  // File-wide alpha.
  std::optional<double> file_alpha;
  auto parse_alpha = [&](const std::string& key, const std::string& text) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    OSP_CHECK(end && *end == '\0' && !text.empty() && std::isfinite(v), "LoRA ", where,
              ": metadata ", key, " = '", text, "' is not a number");
    return v;
  };
  if (auto it = metadata.find("lora_alpha"); it != metadata.end())
    file_alpha = parse_alpha("lora_alpha", it->second);
  else if (auto jt = metadata.find("lora_adapter_metadata"); jt != metadata.end()) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(jt->second);
    } catch (const std::exception& e) {
      fail(str("LoRA ", where, ": metadata lora_adapter_metadata is not JSON (", e.what(), ")"));
    }
    if (j.is_object())
      for (const auto& [k, v] : j.items())
        if (ends_with(k, "lora_alpha") && v.is_number()) file_alpha = v.get<double>();
  }

  Lora lora;
  lora.origin = where;
  for (const auto& [module, m] : mods) {
    if (m.a_name.empty() || m.b_name.empty()) {
      if (m.a_name.empty() && m.b_name.empty()) {
        if (!m.alpha_name.empty())
          problems.push_back(str("'", m.alpha_name, "' has no lora_A / lora_B weights"));
        continue;  // a module whose tensors were all reported above
      }
      problems.push_back(str("'", m.a_name.empty() ? m.b_name : m.a_name, "' has no matching ",
                             m.a_name.empty() ? "lora_A (lora_down)" : "lora_B (lora_up)",
                             " tensor"));
      continue;
    }
    if (m.A.size(0) != m.B.size(1)) {
      problems.push_back(str("rank mismatch: '", m.a_name, "' is ", shape_str(m.A.shape()),
                             " [r, in] but '", m.b_name, "' is ", shape_str(m.B.shape()),
                             " [out, r]"));
      continue;
    }
    LoraAdapter a;
    a.A = m.A;
    a.B = m.B;
    a.source = m.a_name;
    a.alpha = m.alpha ? *m.alpha : file_alpha ? *file_alpha : double(m.A.size(0));
    lora.adapters[module] = a;
  }
  if (!problems.empty()) fail(str("LoRA ", where, " is malformed:", problem_list(problems)));
  OSP_CHECK(!lora.adapters.empty(), "LoRA ", where, ": no LoRA tensors found (", tensors.size(),
            " tensors; ", kSupported, ")");
  for (const auto& [k, v] : metadata)
    if (k != "format" && k != "lora_rank" && k != "lora_alpha" && k != "target_modules")
      lora.metadata[k] = v;
  return lora;
}

Lora load_lora(const std::string& path) {
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  std::map<std::string, Tensor> tensors;
  for (const auto& n : f.names()) tensors[n] = f.get(n);
  return lora_from_tensors(tensors, f.metadata(), "'" + path + "'");
}

// ------------------------------------------------------------------------ validation, merge

void check_lora(const Lora& lora, const std::map<std::string, Shape>& base,
                const std::string& prefix) {
  std::vector<std::string> missing, problems;  // missing targets are listed first
  std::vector<std::string> names;
  int suggestions = 0;
  for (const auto& [module, a] : lora.adapters) {
    const std::string wname = prefix + module + ".weight";
    const std::string src = a.source.empty() ? module + ".lora_A.weight" : a.source;
    auto it = base.find(wname);
    if (it == base.end()) {
      std::string hint;
      if (suggestions++ < 3) {
        if (names.empty())
          for (const auto& [n, s] : base) names.push_back(n);
        const auto close = io::close_names(wname, names, 3);
        if (!close.empty()) {
          hint = "; close names:";
          for (const auto& c : close) hint += " " + c;
        }
      }
      missing.push_back(str("LoRA tensor '", src, "' targets '", wname,
                            "', which the model does not have", hint));
      continue;
    }
    const Shape& w = it->second;
    const Shape upd = {a.B.size(0), a.A.size(1)};
    if (w.size() != 2 || w != upd)
      problems.push_back(str("LoRA tensor '", src, "' ", shape_str(a.A.shape()), " with lora_B ",
                             shape_str(a.B.shape()), " makes a ", shape_str(upd),
                             " update, but the model's '", wname, "' is ", shape_str(w)));
  }
  problems.insert(problems.begin(), missing.begin(), missing.end());
  if (!problems.empty())
    fail(str("LoRA ", lora.origin, " does not fit this model (", problems.size(), " of ",
             lora.adapters.size(), " adapters; is it a LoRA for another model?):",
             problem_list(problems)));
}

void merge_lora(std::map<std::string, Tensor>& weights, const Lora& lora, double scale,
                const std::string& prefix, DType out_dtype) {
  OSP_CHECK(std::isfinite(scale), "merge_lora: scale must be finite, got ", scale);
  OSP_CHECK(out_dtype == DType::F32 || out_dtype == DType::BF16 || out_dtype == DType::F16,
            "merge_lora: out_dtype must be f32, bf16 or f16, got ", dtype_name(out_dtype));
  std::map<std::string, Shape> shapes;
  for (const auto& [n, t] : weights)
    if (t.defined()) shapes[n] = t.shape();
  check_lora(lora, shapes, prefix);
  for (const auto& [module, a] : lora.adapters) {
    const std::string wname = prefix + module + ".weight";
    const Tensor& w = weights.at(wname);
    OSP_CHECK(dtype_is_float(w.dtype()), "merge_lora: '", wname, "' has dtype ",
              dtype_name(w.dtype()), "; LoRAs merge into float weights only (dequantize first)");
    const Tensor wf = w.to(Device::cpu()).to(DType::F32);
    const Tensor A = a.A.to(Device::cpu()).to(DType::F32);
    const Tensor B = a.B.to(Device::cpu()).to(DType::F32).contiguous();
    const Tensor At = A.transpose(0, 1).contiguous();  // [in, r]
    Tensor delta = Tensor::empty(w.shape(), DType::F32);
    ops::linear(B, At, nullptr, delta);  // B·A: [out, r]·[r, in]
    Tensor merged = Tensor::empty(w.shape(), DType::F32);
    ops::axpby(1.0f, wf, float(scale * a.scale()), delta, merged);
    if (out_dtype != DType::F32) merged = merged.to(out_dtype);
    weights[wname] = w.device().is_cpu() ? merged : merged.to(w.device());
  }
}

void lora_apply(const Tensor& x, const LoraAdapter& a, double scale, Tensor& y) {
  OSP_CHECK(a.A.defined() && a.B.defined(), "lora_apply: incomplete adapter");
  OSP_CHECK(x.dim() >= 1 && x.size(-1) == a.A.size(1), "lora_apply: x ", x.desc(),
            " does not match lora_A ", shape_str(a.A.shape()), " (in = ", a.A.size(1), ")");
  Shape hs = x.shape();
  hs.back() = a.rank();
  Tensor h = Tensor::empty(hs, DType::F32, x.device());
  ops::linear(x, a.A, nullptr, h);  // x·Aᵀ  [..., r]
  Tensor u = Tensor::empty(y.shape(), DType::F32, y.device());
  ops::linear(h, a.B, nullptr, u);  // ·Bᵀ   [..., out]
  ops::axpby(1.0f, y, float(scale * a.scale()), u, y);
}

LoraSpec parse_lora_spec(const std::string& spec) {
  LoraSpec s;
  s.path = spec;
  const size_t colon = spec.rfind(':');
  if (colon != std::string::npos && colon + 1 < spec.size()) {
    const std::string tail = spec.substr(colon + 1);
    char* end = nullptr;
    const double v = std::strtod(tail.c_str(), &end);
    if (end && *end == '\0') {
      OSP_CHECK(std::isfinite(v), "--lora ", spec, ": the scale after ':' must be finite");
      s.path = spec.substr(0, colon);
      s.scale = v;
    }
  }
  OSP_CHECK(!s.path.empty(), "--lora '", spec, "': expected FILE or FILE:SCALE");
  return s;
}

}  // namespace osp::model
