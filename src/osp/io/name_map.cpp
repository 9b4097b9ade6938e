#include "osp/io/name_map.h"

#include <cctype>
#include <cstring>
#include <map>

namespace osp::io {

namespace {

struct Pair {
  const char* a;  // original / Wan
  const char* b;  // diffusers / HF
  bool prefix;    // a prefix followed by "weight" or "bias", else an exact name
};

// Inside "blocks.N." of the DiT.
const Pair kDitBlock[] = {
    {"modulation", "scale_shift_table", false},
    {"self_attn.q.", "attn1.to_q.", true},
    {"self_attn.k.", "attn1.to_k.", true},
    {"self_attn.v.", "attn1.to_v.", true},
    {"self_attn.o.", "attn1.to_out.0.", true},
    {"self_attn.norm_q.weight", "attn1.norm_q.weight", false},
    {"self_attn.norm_k.weight", "attn1.norm_k.weight", false},
    {"norm3.", "norm2.", true},  // the affine cross-attention LayerNorm (names swapped)
    {"cross_attn.q.", "attn2.to_q.", true},
    {"cross_attn.k.", "attn2.to_k.", true},
    {"cross_attn.v.", "attn2.to_v.", true},
    {"cross_attn.o.", "attn2.to_out.0.", true},
    {"cross_attn.norm_q.weight", "attn2.norm_q.weight", false},
    {"cross_attn.norm_k.weight", "attn2.norm_k.weight", false},
    {"ffn.0.", "ffn.net.0.proj.", true},
    {"ffn.2.", "ffn.net.2.", true},
};
const Pair kDitTop[] = {
    {"patch_embedding.", "patch_embedding.", true},
    {"text_embedding.0.", "condition_embedder.text_embedder.linear_1.", true},
    {"text_embedding.2.", "condition_embedder.text_embedder.linear_2.", true},
    {"time_embedding.0.", "condition_embedder.time_embedder.linear_1.", true},
    {"time_embedding.2.", "condition_embedder.time_embedder.linear_2.", true},
    {"time_projection.1.", "condition_embedder.time_proj.", true},
    {"head.modulation", "scale_shift_table", false},
    {"head.head.", "proj_out.", true},
};

bool starts_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}

std::optional<std::string> map_table(const std::string& rest, const Pair* t, size_t n, bool fwd) {
  for (size_t i = 0; i < n; ++i) {
    const std::string from = fwd ? t[i].a : t[i].b, to = fwd ? t[i].b : t[i].a;
    if (!t[i].prefix) {
      if (rest == from) return to;
      continue;
    }
    if (starts_with(rest, from)) {
      std::string tail = rest.substr(from.size());
      if (tail == "weight" || tail == "bias") return to + tail;
    }
  }
  return std::nullopt;
}

// "<head><digits>.<rest>" -> (digits, rest); false if `s` does not have that form.
bool split_index(const std::string& s, const std::string& head, std::string* idx,
                 std::string* rest) {
  if (!starts_with(s, head)) return false;
  size_t i = head.size(), j = i;
  while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
  if (j == i || j - i > 6 || j >= s.size() || s[j] != '.') return false;
  if (s[i] == '0' && j - i > 1) return false;  // no leading zeros
  *idx = s.substr(i, j - i);
  *rest = s.substr(j + 1);
  return true;
}

std::optional<std::string> dit_map(const std::string& name, bool fwd) {
  std::string idx, rest;
  if (split_index(name, "blocks.", &idx, &rest)) {
    auto r = map_table(rest, kDitBlock, std::size(kDitBlock), fwd);
    if (r) return "blocks." + idx + "." + *r;
    return std::nullopt;
  }
  return map_table(name, kDitTop, std::size(kDitTop), fwd);
}

const Pair kT5Layer[] = {
    {"norm1.weight", "layer.0.layer_norm.weight", false},
    {"attn.q.weight", "layer.0.SelfAttention.q.weight", false},
    {"attn.k.weight", "layer.0.SelfAttention.k.weight", false},
    {"attn.v.weight", "layer.0.SelfAttention.v.weight", false},
    {"attn.o.weight", "layer.0.SelfAttention.o.weight", false},
    {"pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight",
     false},
    {"norm2.weight", "layer.1.layer_norm.weight", false},
    {"ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight", false},
    {"ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight", false},
    {"ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight", false},
};

std::string example_list(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < 3; ++i) s += (i ? ", '" : "'") + v[i] + "'";
  return s;
}

}  // namespace

const char* dit_naming_name(DitNaming n) {
  return n == DitNaming::Original ? "original" : "diffusers";
}

std::optional<std::string> dit_original_to_diffusers(const std::string& name) {
  return dit_map(name, true);
}
std::optional<std::string> dit_diffusers_to_original(const std::string& name) {
  return dit_map(name, false);
}

DitNaming detect_dit_naming(const std::vector<std::string>& names) {
  std::vector<std::string> orig, diff;
  for (const auto& n : names) {
    bool o = dit_original_to_diffusers(n).has_value();
    bool d = dit_diffusers_to_original(n).has_value();
    if (o && !d) orig.push_back(n);
    if (d && !o) diff.push_back(n);
  }
  OSP_CHECK(orig.empty() || diff.empty(), "checkpoint mixes original Wan DiT names (",
            example_list(orig), ") and diffusers names (", example_list(diff), ")");
  if (!orig.empty()) return DitNaming::Original;
  if (!diff.empty()) return DitNaming::Diffusers;
  fail(str("checkpoint does not look like a Wan2.1 DiT: none of its ", names.size(),
           " tensor names (", example_list(names),
           ") is a DiT tensor in original or diffusers naming (a prefix such as 'model.' can be "
           "removed with io::strip_prefix)"));
}

Checkpoint dit_with_original_names(Checkpoint ck) {
  OSP_CHECK(ck, "dit_with_original_names: null checkpoint");
  const auto names = ck->names();
  if (detect_dit_naming(names) == DitNaming::Original) return ck;
  std::map<std::string, std::string> m;
  for (const auto& n : names) {
    std::string outer = dit_diffusers_to_original(n).value_or(n);
    OSP_CHECK(m.emplace(outer, n).second, "checkpoint '", ck->path(), "': '", n,
              "' and '", m[outer], "' both map to '", outer, "'");
  }
  return renamed_checkpoint(std::move(ck), std::move(m), "diffusers->original DiT names");
}

std::optional<std::string> t5_wan_to_hf(const std::string& name) {
  if (name == "token_embedding.weight") return std::string("shared.weight");
  if (name == "norm.weight") return std::string("encoder.final_layer_norm.weight");
  std::string idx, rest;
  if (!split_index(name, "blocks.", &idx, &rest)) return std::nullopt;
  auto r = map_table(rest, kT5Layer, std::size(kT5Layer), true);
  if (!r) return std::nullopt;
  return "encoder.block." + idx + "." + *r;
}

std::optional<std::string> t5_hf_to_wan(const std::string& name) {
  if (name == "shared.weight" || name == "encoder.embed_tokens.weight")
    return std::string("token_embedding.weight");
  if (name == "encoder.final_layer_norm.weight") return std::string("norm.weight");
  std::string idx, rest;
  if (!split_index(name, "encoder.block.", &idx, &rest)) return std::nullopt;
  auto r = map_table(rest, kT5Layer, std::size(kT5Layer), false);
  if (!r) return std::nullopt;
  return "blocks." + idx + "." + *r;
}

Checkpoint t5_with_wan_names(Checkpoint ck) {
  OSP_CHECK(ck, "t5_with_wan_names: null checkpoint");
  const auto names = ck->names();
  bool any_hf = false;
  for (const auto& n : names)
    if (!t5_wan_to_hf(n) && t5_hf_to_wan(n)) any_hf = true;
  if (!any_hf) return ck;
  std::map<std::string, std::string> m;
  for (const auto& n : names) {
    if (n == "encoder.embed_tokens.weight" && ck->has("shared.weight")) continue;  // tied copy
    std::string outer = t5_hf_to_wan(n).value_or(n);
    OSP_CHECK(m.emplace(outer, n).second, "checkpoint '", ck->path(), "': '", n, "' and '",
              m[outer], "' both map to '", outer, "'");
  }
  return renamed_checkpoint(std::move(ck), std::move(m), "HF->Wan umT5 names");
}

// ---- Wan-VAE ----

namespace {

bool weight_or_bias(const std::string& t) { return t == "weight" || t == "bias"; }

// Inside a residual block: residual.{0,2,3,6} / shortcut <-> norm1, conv1, norm2, conv2,
// conv_shortcut.
std::optional<std::string> vae_res(const std::string& r, bool fwd) {
  static const Pair t[] = {{"residual.0.gamma", "norm1.gamma", false},
                           {"residual.2.", "conv1.", true},
                           {"residual.3.gamma", "norm2.gamma", false},
                           {"residual.6.", "conv2.", true},
                           {"shortcut.", "conv_shortcut.", true}};
  return map_table(r, t, std::size(t), fwd);
}
// Inside a resample (unchanged in both namings).
bool vae_resample(const std::string& r) {
  for (const char* p : {"resample.1.", "time_conv."})
    if (starts_with(r, p) && weight_or_bias(r.substr(std::strlen(p)))) return true;
  return false;
}
// Inside the attention block (unchanged).
bool vae_attn(const std::string& r) {
  return r == "norm.gamma" || r == "to_qkv.weight" || r == "to_qkv.bias" || r == "proj.weight" ||
         r == "proj.bias";
}

std::optional<std::string> vae_fwd(const std::string& n) {
  std::string idx, rest;
  auto suffix_of = [&](const std::string& p) -> std::optional<std::string> {
    if (starts_with(n, p)) return n.substr(p.size());
    return std::nullopt;
  };
  if (auto t = suffix_of("conv1."); t && weight_or_bias(*t)) return "quant_conv." + *t;
  if (auto t = suffix_of("conv2."); t && weight_or_bias(*t)) return "post_quant_conv." + *t;
  for (const std::string side : {"encoder.", "decoder."}) {
    if (!starts_with(n, side)) continue;
    const std::string r = n.substr(side.size());
    if (starts_with(r, "conv1.") && weight_or_bias(r.substr(6))) return side + "conv_in." + r.substr(6);
    if (r == "head.0.gamma") return side + "norm_out.gamma";
    if (starts_with(r, "head.2.") && weight_or_bias(r.substr(7))) return side + "conv_out." + r.substr(7);
    if (split_index(r, "middle.", &idx, &rest)) {
      if (idx == "1" && vae_attn(rest)) return side + "mid_block.attentions.0." + rest;
      if (idx == "0" || idx == "2")
        if (auto x = vae_res(rest, true)) return side + "mid_block.resnets." + (idx == "0" ? "0." : "1.") + *x;
      return std::nullopt;
    }
    if (side == "encoder." && split_index(r, "downsamples.", &idx, &rest)) {
      if (vae_resample(rest)) return side + "down_blocks." + idx + "." + rest;
      if (auto x = vae_res(rest, true)) return side + "down_blocks." + idx + "." + *x;
      return std::nullopt;
    }
    if (side == "decoder." && split_index(r, "upsamples.", &idx, &rest)) {
      const int i = std::stoi(idx), stage = i / 4, j = i % 4;
      if (j == 3) {
        if (vae_resample(rest)) return str(side, "up_blocks.", stage, ".upsamplers.0.", rest);
      } else if (auto x = vae_res(rest, true)) {
        return str(side, "up_blocks.", stage, ".resnets.", j, ".", *x);
      }
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<std::string> vae_bwd(const std::string& n) {
  std::string idx, rest, idx2, rest2;
  auto suffix_of = [&](const std::string& p) -> std::optional<std::string> {
    if (starts_with(n, p)) return n.substr(p.size());
    return std::nullopt;
  };
  if (auto t = suffix_of("quant_conv."); t && weight_or_bias(*t)) return "conv1." + *t;
  if (auto t = suffix_of("post_quant_conv."); t && weight_or_bias(*t)) return "conv2." + *t;
  for (const std::string side : {"encoder.", "decoder."}) {
    if (!starts_with(n, side)) continue;
    const std::string r = n.substr(side.size());
    if (starts_with(r, "conv_in.") && weight_or_bias(r.substr(8))) return side + "conv1." + r.substr(8);
    if (r == "norm_out.gamma") return side + "head.0.gamma";
    if (starts_with(r, "conv_out.") && weight_or_bias(r.substr(9))) return side + "head.2." + r.substr(9);
    if (starts_with(r, "mid_block.attentions.0.") && vae_attn(r.substr(23)))
      return side + "middle.1." + r.substr(23);
    if (split_index(r, "mid_block.resnets.", &idx, &rest)) {
      if (idx == "0" || idx == "1")
        if (auto x = vae_res(rest, false)) return side + "middle." + (idx == "0" ? "0." : "2.") + *x;
      return std::nullopt;
    }
    if (side == "encoder." && split_index(r, "down_blocks.", &idx, &rest)) {
      if (vae_resample(rest)) return side + "downsamples." + idx + "." + rest;
      if (auto x = vae_res(rest, false)) return side + "downsamples." + idx + "." + *x;
      return std::nullopt;
    }
    if (side == "decoder." && split_index(r, "up_blocks.", &idx, &rest)) {
      const int stage = std::stoi(idx);
      if (split_index(rest, "resnets.", &idx2, &rest2)) {
        const int j = std::stoi(idx2);
        if (j > 2) return std::nullopt;
        if (auto x = vae_res(rest2, false)) return str(side, "upsamples.", 4 * stage + j, ".", *x);
      } else if (starts_with(rest, "upsamplers.0.") && vae_resample(rest.substr(13))) {
        return str(side, "upsamples.", 4 * stage + 3, ".", rest.substr(13));
      }
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> vae_original_to_diffusers(const std::string& name) { return vae_fwd(name); }
std::optional<std::string> vae_diffusers_to_original(const std::string& name) { return vae_bwd(name); }

Checkpoint vae_with_original_names(Checkpoint ck) {
  OSP_CHECK(ck, "vae_with_original_names: null checkpoint");
  const auto names = ck->names();
  std::vector<std::string> orig, diff;
  for (const auto& n : names) {
    bool o = vae_fwd(n).has_value(), d = vae_bwd(n).has_value();
    if (o && !d) orig.push_back(n);
    if (d && !o) diff.push_back(n);
  }
  OSP_CHECK(orig.empty() || diff.empty(), "VAE checkpoint '", ck->path(),
            "' mixes original Wan names (", example_list(orig), ") and diffusers names (",
            example_list(diff), ")");
  if (diff.empty()) return ck;
  std::map<std::string, std::string> m;
  for (const auto& n : names) {
    std::string outer = vae_bwd(n).value_or(n);
    OSP_CHECK(m.emplace(outer, n).second, "checkpoint '", ck->path(), "': '", n, "' and '",
              m[outer], "' both map to '", outer, "'");
  }
  return renamed_checkpoint(std::move(ck), std::move(m), "diffusers->original VAE names");
}

}  // namespace osp::io
