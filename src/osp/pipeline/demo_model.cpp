#include "osp/pipeline/demo_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/model/dit_config.h"
#include "osp/train/checkpoint.h"

#ifdef OSP_HAVE_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

namespace fs = std::filesystem;

namespace osp::pipeline {

std::map<std::string, Shape> t5_shapes(int vocab, int dim, int dim_attn, int ffn, int heads,
                                       int layers, int buckets) {
  std::map<std::string, Shape> s;
  s["token_embedding.weight"] = {vocab, dim};
  s["norm.weight"] = {dim};
  for (int i = 0; i < layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    s[b + "norm1.weight"] = {dim};
    s[b + "norm2.weight"] = {dim};
    for (const char* p : {"q", "k", "v"}) s[b + "attn." + p + ".weight"] = {dim_attn, dim};
    s[b + "attn.o.weight"] = {dim, dim_attn};
    s[b + "pos_embedding.embedding.weight"] = {buckets, heads};
    s[b + "ffn.gate.0.weight"] = {ffn, dim};
    s[b + "ffn.fc1.weight"] = {ffn, dim};
    s[b + "ffn.fc2.weight"] = {dim, ffn};
  }
  return s;
}

std::map<std::string, Shape> vae_decoder_shapes(int dim, int z_dim) {
  const std::vector<int> mult = {1, 2, 4, 4};
  const std::vector<bool> t_up = {true, true, false};  // temporal_downsample reversed
  const int nres = 2;
  std::vector<int64_t> dims = {int64_t(dim) * mult.back()};
  for (auto it = mult.rbegin(); it != mult.rend(); ++it) dims.push_back(int64_t(dim) * *it);
  std::map<std::string, Shape> s;
  auto residual = [&](const std::string& p, int64_t in, int64_t out) {
    s[p + "residual.0.gamma"] = {in, 1, 1, 1};
    s[p + "residual.2.weight"] = {out, in, 3, 3, 3};
    s[p + "residual.2.bias"] = {out};
    s[p + "residual.3.gamma"] = {out, 1, 1, 1};
    s[p + "residual.6.weight"] = {out, out, 3, 3, 3};
    s[p + "residual.6.bias"] = {out};
    if (in != out) {
      s[p + "shortcut.weight"] = {out, in, 1, 1, 1};
      s[p + "shortcut.bias"] = {out};
    }
  };
  s["conv2.weight"] = {z_dim, z_dim, 1, 1, 1};
  s["conv2.bias"] = {z_dim};
  s["decoder.conv1.weight"] = {dims[0], z_dim, 3, 3, 3};
  s["decoder.conv1.bias"] = {dims[0]};
  residual("decoder.middle.0.", dims[0], dims[0]);
  s["decoder.middle.1.norm.gamma"] = {dims[0], 1, 1};
  s["decoder.middle.1.to_qkv.weight"] = {3 * dims[0], dims[0], 1, 1};
  s["decoder.middle.1.to_qkv.bias"] = {3 * dims[0]};
  s["decoder.middle.1.proj.weight"] = {dims[0], dims[0], 1, 1};
  s["decoder.middle.1.proj.bias"] = {dims[0]};
  residual("decoder.middle.2.", dims[0], dims[0]);
  int idx = 0;
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    int64_t in = dims[i];
    const int64_t out = dims[i + 1];
    if (i >= 1 && i <= 3) in /= 2;
    for (int r = 0; r <= nres; ++r) {
      residual("decoder.upsamples." + std::to_string(idx++) + ".", in, out);
      in = out;
    }
    if (i + 1 != mult.size()) {
      const std::string p = "decoder.upsamples." + std::to_string(idx++) + ".";
      s[p + "resample.1.weight"] = {out / 2, out, 3, 3};
      s[p + "resample.1.bias"] = {out / 2};
      if (t_up[i]) {
        s[p + "time_conv.weight"] = {out * 2, out, 3, 1, 1};
        s[p + "time_conv.bias"] = {out * 2};
      }
    }
  }
  s["decoder.head.0.gamma"] = {dims.back(), 1, 1, 1};
  s["decoder.head.2.weight"] = {3, dims.back(), 3, 3, 3};
  s["decoder.head.2.bias"] = {3};
  return s;
}

namespace {

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// Random weights for a name/shape map: norms and gammas 1, biases 0, the rest normal with
// std 1/sqrt(fan_in) (modulation tables 0.02, the umT5 token table 1). Stored as bf16 like the released checkpoints.
std::map<std::string, Tensor> random_weights(const std::map<std::string, Shape>& shapes, uint64_t seed,
                                             uint32_t stream) {
  std::map<std::string, Tensor> w;
  uint64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    const int64_t n = shape_numel(shape);
    Tensor t = Tensor::empty(shape, DType::F32);
    float* p = t.data<float>();
    const bool is_norm = ends_with(name, ".gamma") || name.find("norm") != std::string::npos;
    if (is_norm && ends_with(name, ".bias")) {
      std::fill(p, p + n, 0.0f);
    } else if (is_norm) {
      std::fill(p, p + n, 1.0f);
    } else if (ends_with(name, ".bias")) {
      std::fill(p, p + n, 0.0f);
    } else {
      philox_normal(seed, stream, offset, p, n);
      offset += uint64_t(n);
      const int64_t fan_in = shape.size() > 1 ? n / shape[0] : n;
      // std 1 only for the umT5 token table (a lookup, not a product); the DiT's text_embedding.*
      // and time_embedding.* are linears and take 1/sqrt(fan_in) like the rest — with std 1
      // there, the time embedding and the gates grow ~sqrt(fan_in)-fold and the random 1.3B's
      // velocity reached an rms of ≈ 420 instead of O(1).
      const float sd = name.find("modulation") != std::string::npos ? 0.02f
                       : ends_with(name, "token_embedding.weight")
                           ? 1.0f
                           : 1.0f / std::sqrt(float(std::max<int64_t>(fan_in, 1)));
      for (int64_t i = 0; i < n; ++i) p[i] *= sd;
    }
    w[name] = t.to(DType::BF16);
  }
  return w;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p);
  OSP_CHECK(f, "cannot write ", p.string());
  f << s;
  OSP_CHECK(f.good(), "writing ", p.string(), " failed");
}

void train_tokenizer(const fs::path& dir, int vocab) {
#ifdef OSP_HAVE_SENTENCEPIECE
  fs::create_directories(dir);
  // A small generated English corpus: enough pieces for a vocabulary of a few hundred.
  const fs::path corpus = dir / "demo_corpus.txt";
  {
    std::ofstream f(corpus);
    const char* subj[] = {"a red fox", "an old man", "a small boat", "the city", "a white cat",
                          "two dancers", "a mountain lake", "the ocean", "a busy street", "a robot"};
    const char* verb[] = {"runs through", "walks along", "floats on", "glows under", "jumps over",
                          "turns around", "moves across", "rests beside", "flies above", "waits near"};
    const char* obj[] = {"the snowy forest", "a quiet river", "golden light", "the night sky",
                         "green hills", "a stone bridge", "the morning fog", "colorful lanterns",
                         "the sandy beach", "tall buildings"};
    for (int i = 0; i < 10; ++i)
      for (int j = 0; j < 10; ++j)
        for (int k = 0; k < 10; ++k)
          f << subj[i] << " " << verb[j] << " " << obj[k] << ", cinematic, high quality, 4k.\n";
  }
  const std::string prefix = (dir / "spiece").string();
  const std::string args = str("--input=", corpus.string(), " --model_prefix=", prefix,
                               " --vocab_size=", vocab, " --model_type=unigram --character_coverage=1.0",
                               " --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 --hard_vocab_limit=false",
                               " --minloglevel=2 --num_threads=1");
  const auto st = sentencepiece::SentencePieceTrainer::Train(args);
  OSP_CHECK(st.ok(), "training the demo SentencePiece model failed: ", st.ToString());
  fs::remove(corpus);
  fs::remove(dir / "spiece.vocab");
  OSP_CHECK(fs::exists(dir / "spiece.model"), "SentencePiece did not write ", (dir / "spiece.model").string());
#else
  fail("make-demo-model needs SentencePiece (libsentencepiece-dev) to train its tokenizer; "
       "install it and reconfigure");
#endif
}

}  // namespace

void make_demo_model(const std::string& dir_s, const DemoModelOptions& o) {
  const fs::path dir(dir_s);
  std::error_code ec;
  if (fs::exists(dir)) {
    OSP_CHECK(fs::is_directory(dir), dir_s, " exists and is not a folder");
    bool empty = fs::is_empty(dir, ec);
    OSP_CHECK(empty || fs::exists(dir / "OSP_DEMO_RANDOM_WEIGHTS"), dir_s,
              " is not empty and is not a demo model folder; choose a new folder");
  }
  fs::create_directories(dir, ec);
  OSP_CHECK(!ec, "cannot create ", dir_s, ": ", ec.message());

  // DiT (Wan names), config.json in the Wan layout with the OSP-Next keys (train::dit_config_json).
  model::DiTConfig cfg;
  int t5_dim = o.t5_dim, t5_heads = o.t5_heads, t5_ffn = o.t5_ffn;
  if (!o.dit_config.empty()) {
    cfg = model::DiTConfig::from_json_file(o.dit_config);
    OSP_CHECK(cfg.text_dim % 64 == 0, "make-demo-model --config ", o.dit_config, ": text_dim ", cfg.text_dim,
              " is not a multiple of 64 (the umT5 head size)");
    t5_dim = int(cfg.text_dim);
    t5_heads = t5_dim / 64;
    t5_ffn = t5_dim * 5 / 2;
  } else {
    cfg.dim = o.dit_dim;
    cfg.ffn_dim = o.dit_ffn;
    cfg.num_heads = o.dit_heads;
    cfg.num_layers = o.dit_layers;
    cfg.text_dim = t5_dim;
    cfg.text_len = 512;
    cfg.freq_dim = 256;
    if (o.hybrid) {
      cfg.skiparse_mode = "dual_end";
      cfg.sparse_ratio = 2;
      cfg.num_full_blocks = 4;  // plan_blocks: a multiple of 4 (the sparse region starts with a token block)
    }
  }
  cfg.validate();
  write_text(dir / "config.json", train::dit_config_json(cfg));
  const std::map<std::string, std::string> meta = {{"osp_demo", "random weights, produces noise"}};
  io::save_safetensors((dir / "diffusion_pytorch_model.safetensors").string(),
                       random_weights(model::DiT::expected_shapes(cfg), o.seed, 1), meta);

  // umT5 (Wan names) and the VAE decoder (Wan names), as safetensors.
  io::save_safetensors((dir / "models_t5_umt5-xxl-enc-bf16.safetensors").string(),
                       random_weights(t5_shapes(o.t5_vocab, t5_dim, t5_dim, t5_ffn, t5_heads, o.t5_layers),
                                      o.seed, 2),
                       meta);
  io::save_safetensors((dir / "Wan2.1_VAE.safetensors").string(),
                       random_weights(vae_decoder_shapes(o.vae_dim), o.seed, 3), meta);

  train_tokenizer(dir / "google" / "umt5-xxl", o.t5_vocab);
  write_text(dir / "OSP_DEMO_RANDOM_WEIGHTS",
             "osp-demo-random: every weight in this folder is random. The model exercises the whole\n"
             "pipeline (tokenizer, umT5, DiT, VAE, video writer) in seconds, and produces NOISE.\n"
             "Created by `osp make-demo-model`.\n");
  log_verbose("wrote osp-demo-random model to ", dir_s, " (random weights: it produces noise)");
}

}  // namespace osp::pipeline
