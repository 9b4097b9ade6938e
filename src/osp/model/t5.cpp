// umT5 encoder forward (wan-spec §4.3).  Shapes: B prompts × L tokens, rows = B·L.
#include "osp/model/t5.h"

#include <cmath>

#include "osp/core/interrupt.h"
#include "osp/ops/t5_vae_ops.h"
#include "osp/ops/ops.h"

namespace osp::model {

int t5_relative_bucket(int64_t r, int64_t num_buckets, int64_t max_dist) {
  const int64_t half = num_buckets / 2;
  int bucket = r > 0 ? int(half) : 0;
  const int64_t a = r < 0 ? -r : r;
  if (num_buckets == 32 && max_dist == 128) {
    // |r|: 0..7 exact; then 8–11, 12–15, 16–22, 23–31, 32–45, 46–63, 64–90, ≥ 91.
    static const int64_t edges[] = {8, 12, 16, 23, 32, 46, 64, 91};
    if (a < 8) return bucket + int(a);
    int f = 8;
    for (int i = 1; i < 8 && a >= edges[i]; ++i) f = 8 + i;
    return bucket + f;
  }
  // Other tables: the reference formula in float32.
  const int64_t max_exact = half / 2;
  if (a < max_exact) return bucket + int(a);
  const float v = std::log(float(a) / float(max_exact)) / std::log(float(max_dist) / float(max_exact)) *
                  float(half - max_exact);
  return bucket + int(std::min<int64_t>(max_exact + int64_t(v), half - 1));
}

struct T5Encoder::Impl {
  T5Config cfg;
  Device dev;
  Tensor emb;  // [vocab, dim]
  struct Layer {
    Tensor norm1, norm2;               // [dim] F32
    Tensor q, k, v, o;                 // [dim_attn, dim] / [dim, dim_attn]
    Tensor gate, fc1, fc2;             // [ffn, dim], [ffn, dim], [dim, ffn]
    Tensor pos;                        // [num_buckets, heads] F32 on the device
  };
  std::vector<Layer> layers;
  Tensor norm;  // final [dim] F32

  DType act_dtype() const { return dev.is_cpu() ? DType::F32 : DType::BF16; }
  Tensor run(const Tensor& ids_dev, int64_t B, int64_t L, const std::vector<int32_t>& lens) const;
};

namespace {
// RMS-normalised copy of x in dtype `odt` (the GEMM input dtype: bf16 on CUDA, f32 on the CPU).
Tensor rms(const Tensor& x, const Tensor& w, float eps, DType odt) {
  Tensor out = Tensor::empty(x.shape(), odt, x.device());
  ops::rms_norm(x, w, eps, out);
  return out;
}
Tensor lin_to(const Tensor& x, const Tensor& w, DType odt, ops::Act act = ops::Act::None) {
  Tensor out = Tensor::empty({x.size(0), w.size(0)}, odt, x.device());
  ops::linear(x, w, nullptr, out, act);
  return out;
}
Tensor lin(const Tensor& x, const Tensor& w, ops::Act act = ops::Act::None) {
  return lin_to(x, w, x.dtype(), act);
}
}  // namespace

namespace {
// Hugging Face UMT5EncoderModel names → Wan names (wan-spec §3.3).
std::string hf_t5_name(const std::string& wan) {
  if (wan == "token_embedding.weight") return "shared.weight";
  if (wan == "norm.weight") return "encoder.final_layer_norm.weight";
  if (wan.rfind("blocks.", 0) != 0) return "";
  const size_t dot = wan.find('.', 7);
  const std::string n = wan.substr(7, dot - 7), rest = wan.substr(dot + 1);
  const std::string b = "encoder.block." + n + ".layer.";
  static const std::pair<const char*, const char*> m[] = {
      {"norm1.weight", "0.layer_norm.weight"},
      {"attn.q.weight", "0.SelfAttention.q.weight"},
      {"attn.k.weight", "0.SelfAttention.k.weight"},
      {"attn.v.weight", "0.SelfAttention.v.weight"},
      {"attn.o.weight", "0.SelfAttention.o.weight"},
      {"pos_embedding.embedding.weight", "0.SelfAttention.relative_attention_bias.weight"},
      {"norm2.weight", "1.layer_norm.weight"},
      {"ffn.gate.0.weight", "1.DenseReluDense.wi_0.weight"},
      {"ffn.fc1.weight", "1.DenseReluDense.wi_1.weight"},
      {"ffn.fc2.weight", "1.DenseReluDense.wo.weight"},
  };
  for (const auto& [w, h] : m)
    if (rest == w) return b + h;
  return "";
}
}  // namespace

T5Encoder T5Encoder::load(const WeightGetter& get_in, Device dev, const std::string& prefix) {
  OSP_CHECK(get_in, "T5Encoder::load: no weight getter given");
  // Accept Hugging Face (transformers UMT5EncoderModel) names too.
  WeightGetter get = get_in;
  if (!get_in(prefix + "token_embedding.weight").defined() &&
      (get_in(prefix + "shared.weight").defined() ||
       get_in(prefix + "encoder.embed_tokens.weight").defined())) {
    get = [get_in, prefix](const std::string& full) {
      const std::string h = hf_t5_name(full.substr(prefix.size()));
      if (h.empty()) return Tensor();
      Tensor t = get_in(prefix + h);
      if (!t.defined() && h == "shared.weight") t = get_in(prefix + "encoder.embed_tokens.weight");
      return t;
    };
  }
  auto impl = std::make_shared<Impl>();
  impl->dev = dev;
  T5Config& c = impl->cfg;
  auto raw = [&](const std::string& n) {
    Tensor t = get(prefix + n);
    OSP_CHECK(t.defined(), "umT5 checkpoint: tensor '", prefix + n,
              "' is missing (expected Wan's T5 encoder names, e.g. models_t5_umt5-xxl-enc-bf16.pth)");
    OSP_CHECK(dtype_is_float(t.dtype()), "umT5 checkpoint: tensor '", prefix + n, "' has dtype ",
              dtype_name(t.dtype()), ", expected a float type");
    return t;
  };
  // Config from shapes.
  Tensor e = raw("token_embedding.weight");
  OSP_CHECK(e.dim() == 2, "umT5 checkpoint: token_embedding.weight must be 2-D, got ",
            shape_str(e.shape()));
  c.vocab = e.size(0);
  c.dim = e.size(1);
  Tensor q0 = raw("blocks.0.attn.q.weight");
  Tensor p0 = raw("blocks.0.pos_embedding.embedding.weight");
  Tensor g0 = raw("blocks.0.ffn.gate.0.weight");
  OSP_CHECK(q0.dim() == 2 && p0.dim() == 2 && g0.dim() == 2,
            "umT5 checkpoint: unexpected ranks in block 0");
  c.dim_attn = q0.size(0);
  c.num_buckets = p0.size(0);
  c.num_heads = p0.size(1);
  c.dim_ffn = g0.size(0);
  OSP_CHECK(c.num_heads > 0 && c.dim_attn % c.num_heads == 0, "umT5 checkpoint: attention width ",
            c.dim_attn, " is not a multiple of the ", c.num_heads, " heads of the bias table");
  c.num_layers = 0;
  while (get(prefix + str("blocks.", c.num_layers, ".attn.q.weight")).defined()) ++c.num_layers;

  const bool cpu = dev.is_cpu();
  const DType wdt = cpu ? DType::F32 : DType::BF16;
  auto load = [&](const std::string& n, const Shape& s, DType dt) {
    Tensor t = raw(n);
    OSP_CHECK(t.shape() == s, "umT5 checkpoint: tensor '", prefix + n, "' has shape ",
              shape_str(t.shape()), ", expected ", shape_str(s));
    return t.contiguous().to(dt).to(dev).contiguous();
  };
  impl->emb = load("token_embedding.weight", {c.vocab, c.dim}, wdt);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string b = str("blocks.", l, ".");
    Impl::Layer L;
    L.norm1 = load(b + "norm1.weight", {c.dim}, DType::F32);
    L.norm2 = load(b + "norm2.weight", {c.dim}, DType::F32);
    L.q = load(b + "attn.q.weight", {c.dim_attn, c.dim}, wdt);
    L.k = load(b + "attn.k.weight", {c.dim_attn, c.dim}, wdt);
    L.v = load(b + "attn.v.weight", {c.dim_attn, c.dim}, wdt);
    L.o = load(b + "attn.o.weight", {c.dim, c.dim_attn}, wdt);
    L.gate = load(b + "ffn.gate.0.weight", {c.dim_ffn, c.dim}, wdt);
    L.fc1 = load(b + "ffn.fc1.weight", {c.dim_ffn, c.dim}, wdt);
    L.fc2 = load(b + "ffn.fc2.weight", {c.dim, c.dim_ffn}, wdt);
    L.pos = load(b + "pos_embedding.embedding.weight", {c.num_buckets, c.num_heads}, DType::F32);
    impl->layers.push_back(std::move(L));
  }
  impl->norm = load("norm.weight", {c.dim}, DType::F32);
  OSP_CHECK(c.num_layers > 0, "umT5 checkpoint: no blocks found");
  T5Encoder t;
  t.impl_ = impl;
  return t;
}

const T5Config& T5Encoder::config() const { return impl_->cfg; }
Device T5Encoder::device() const { return impl_->dev; }

Tensor T5Encoder::Impl::run(const Tensor& ids_dev, int64_t B, int64_t L,
                            const std::vector<int32_t>& lens) const {
  const T5Config& c = cfg;
  const int64_t H = c.num_heads, Dh = c.head_dim(), R = B * L;
  const DType dt = act_dtype();
  // Bucket index per (query i, key j), shared by all layers; expanded per layer on the device.
  Tensor bucket_host = Tensor::empty({L, L}, DType::I32);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j)
      bucket_host.data<int32_t>()[i * L + j] = t5_relative_bucket(j - i, c.num_buckets, c.max_dist);
  const Tensor bucket = bucket_host.to(dev);
  Tensor lens_t = Tensor::empty({B}, DType::I32);
  for (int64_t b = 0; b < B; ++b) lens_t.data<int32_t>()[b] = lens[size_t(b)];

  // x [R, dim] = E[ids]. The residual stream is kept in fp32 on every device (the reference
  // keeps it in bf16 under its bf16 weights; fp32 costs little here and halves the error
  // against the fp32 model); GEMM inputs and outputs are in `dt`.
  Tensor e = Tensor::empty({R, c.dim}, emb.dtype(), dev);
  ops::gather_rows(emb, ids_dev, e);
  Tensor x = e.dtype() == DType::F32 ? e : e.to(DType::F32);
  Tensor bias = Tensor::empty({H, L, L}, DType::F32, dev);
  for (const Layer& ly : layers) {
    interruption_point("text encoding");  // Ctrl-C safe point between layers
    ops::relative_bias(ly.pos, bucket, bias);  // bias [H, L, L] = P[bucket(j − i), h]

    // ---- self-attention: x += o(attn(norm1(x)))
    Tensor h = rms(x, ly.norm1, c.eps, dt);                    // [R, dim]
    // umT5 does not scale its logits: on CUDA q/k come out of the GEMM in fp32 (the biased
    // attention kernel takes them so), which keeps the GPU within 2e-2 of the fp32 model.
    const DType qk_dt = dev.is_cpu() ? dt : DType::F32;
    Tensor q = lin_to(h, ly.q, qk_dt).view({B, L, H, Dh});  // [B, L, H, Dh]
    Tensor k = lin_to(h, ly.k, qk_dt).view({B, L, H, Dh});
    Tensor v = lin(h, ly.v).view({B, L, H, Dh});
    Tensor a = Tensor::empty({B, L, H, Dh}, dt, dev);
    if (dev.is_cpu()) {
      ops::AttentionArgs args;
      args.scale = 1.0f;  // umT5: no 1/sqrt(d) scaling
      args.bias = &bias;
      args.kv_lens = &lens_t;
      ops::attention(q, k, v, a, args);
    } else {
      ops::biased_attention(q, k, v, bias, lens, a);
    }
    Tensor o = lin(a.view({R, c.dim_attn}), ly.o);         // [R, dim]
    ops::add_gated_(x, o, nullptr);

    // ---- gated-GELU FFN: x += fc2(fc1(h) · gelu_tanh(gate(h)))
    h = rms(x, ly.norm2, c.eps, dt);
    Tensor g = lin(h, ly.gate, ops::Act::GeluTanh);        // [R, ffn]
    Tensor f = lin(h, ly.fc1);                             // [R, ffn]
    ops::mul_(f, g);
    ops::add_gated_(x, lin(f, ly.fc2), nullptr);
  }
  return rms(x, norm, c.eps, dt).view({B, L, c.dim});
}

Tensor T5Encoder::forward(const Tensor& ids, const Tensor& mask) const {
  OSP_CHECK(ids.dim() == 2, "T5Encoder::forward: ids must be [B, L], got ", ids.desc());
  check_dtype(ids, DType::I32, "T5Encoder ids");
  check_dtype(mask, DType::I32, "T5Encoder mask");
  check_shape(mask, ids.shape(), "T5Encoder mask");
  const int64_t B = ids.size(0), L = ids.size(1);
  OSP_CHECK(B >= 1 && L >= 1, "T5Encoder::forward: empty input ", ids.desc());
  Tensor idh = ids.to(Device::cpu()).contiguous(), mh = mask.to(Device::cpu()).contiguous();
  std::vector<int32_t> lens(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    int32_t n = 0;
    for (int64_t j = 0; j < L; ++j) {
      const int32_t m = mh.data<int32_t>()[b * L + j];
      OSP_CHECK(m == 0 || m == 1, "T5Encoder: mask values must be 0 or 1, got ", m);
      OSP_CHECK(!(m == 1 && n != j), "T5Encoder: mask row ", b,
                " is not right-padded (ones must come first, then zeros)");
      n += m;
    }
    OSP_CHECK(n >= 1, "T5Encoder: mask row ", b, " has no real token");
    lens[size_t(b)] = n;
  }
  for (int64_t i = 0; i < B * L; ++i) {
    const int32_t id = idh.data<int32_t>()[i];
    OSP_CHECK(id >= 0 && id < impl_->cfg.vocab, "T5Encoder: token id ", id,
              " outside the vocabulary [0, ", impl_->cfg.vocab, ")");
  }
  return impl_->run(idh.view({B * L}).to(impl_->dev), B, L, lens);
}

Tensor T5Encoder::encode(const std::vector<int32_t>& ids, int64_t n_valid, int64_t text_len) const {
  OSP_CHECK(n_valid >= 1 && n_valid <= int64_t(ids.size()), "T5Encoder::encode: n_valid ", n_valid,
            " must be in [1, ", ids.size(), "]");
  OSP_CHECK(text_len >= n_valid, "T5Encoder::encode: text_len ", text_len, " < n_valid ", n_valid);
  Tensor idt = Tensor::empty({1, n_valid}, DType::I32);
  Tensor mt = Tensor::empty({1, n_valid}, DType::I32);
  for (int64_t i = 0; i < n_valid; ++i) {
    idt.data<int32_t>()[i] = ids[size_t(i)];
    mt.data<int32_t>()[i] = 1;
  }
  Tensor y = forward(idt, mt).view({n_valid, impl_->cfg.dim});
  Tensor out = Tensor::zeros({text_len, impl_->cfg.dim}, y.dtype(), y.device());
  Tensor head = out.slice(0, 0, n_valid);
  head.copy_from(y);
  return out;
}

}  // namespace osp::model
