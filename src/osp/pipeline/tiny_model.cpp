#include "osp/pipeline/tiny_model.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/io/checkpoint.h"
#include "osp/io/safetensors.h"
#include "osp/model/vae.h"
#include "osp/pipeline/demo_model.h"
#include "osp/pipeline/model_dir.h"
#include "osp/pipeline/text_encoder.h"
#include "osp/train/clip_dataset.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/synthetic_clips.h"

#ifdef OSP_HAVE_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

namespace fs = std::filesystem;

namespace osp::pipeline {

using namespace osp::train;

namespace {

// umT5 init: norms 1; token embeddings N(0, 1); relative position tables and matrices
// N(0, 1/fan_in). Stored as bf16.
std::map<std::string, Tensor> t5_weights(const std::map<std::string, Shape>& shapes, uint64_t seed) {
  std::map<std::string, Tensor> w;
  uint64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    const int64_t n = shape_numel(shape);
    Tensor t = Tensor::empty(shape, DType::F32);
    float* p = t.data<float>();
    if (name.find("norm") != std::string::npos) {
      std::fill(p, p + n, 1.0f);
    } else {
      philox_normal(seed, 0x7435, offset, p, n);
      offset += uint64_t(n);
      const bool tok = name == "token_embedding.weight";
      const int64_t fan_in = shape.size() > 1 ? n / shape[0] : n;
      const float sd = tok ? 1.0f : 1.0f / std::sqrt(float(std::max<int64_t>(fan_in, 1)));
      for (int64_t i = 0; i < n; ++i) p[i] *= sd;
    }
    w[name] = t.to(DType::BF16);
  }
  return w;
}

}  // namespace

int write_text_encoder(const TextEncoderOptions& o) {
  OSP_CHECK(o.dim > 0 && o.heads > 0 && o.dim % o.heads == 0 && o.layers > 0 && o.ffn > 0 && o.vocab >= 16,
            "text encoder: bad sizes (dim ", o.dim, ", heads ", o.heads, ", layers ", o.layers, ", vocab ", o.vocab, ")");
  const ClipDataset ds = read_clip_dataset(o.dataset);
  OSP_CHECK(!ds.clips.empty(), "text encoder: ", o.dataset, " holds no captions");
  const fs::path tokdir = fs::path(o.out) / "google" / "umt5-xxl";
  fs::create_directories(tokdir);
#ifdef OSP_HAVE_SENTENCEPIECE
  const fs::path corpus = tokdir / "captions.txt";
  {
    std::ofstream f(corpus);
    OSP_CHECK(f, "text encoder: cannot write ", corpus.string());
    std::set<std::string> seen;
    for (const auto& c : ds.clips)
      if (seen.insert(c.caption).second) f << c.caption << "\n";
  }
  const std::string prefix = (tokdir / "spiece").string();
  const std::string args =
      str("--input=", corpus.string(), " --model_prefix=", prefix, " --vocab_size=", o.vocab,
          " --model_type=word --character_coverage=1.0 --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1",
          " --hard_vocab_limit=false --minloglevel=2 --num_threads=1 --input_sentence_size=0");
  const auto st = sentencepiece::SentencePieceTrainer::Train(args);
  OSP_CHECK(st.ok(), "training the caption tokenizer failed: ", st.ToString());
  fs::remove(corpus);
  fs::remove(tokdir / "spiece.vocab");
#else
  fail("the tiny model's tokenizer needs SentencePiece (libsentencepiece-dev); install it and reconfigure");
#endif
  ModelFiles f;
  f.tokenizer = (tokdir / "spiece.model").string();
  const std::map<std::string, std::string> meta = {
      {"osp_tiny", "frozen random umT5 (seed " + std::to_string(o.seed) + "); tokenizer trained on the captions"}};
  io::save_safetensors((fs::path(o.out) / "models_t5_umt5-xxl-enc-bf16.safetensors").string(),
                       t5_weights(t5_shapes(o.vocab, o.dim, o.dim, o.ffn, o.heads, o.layers), o.seed), meta);
  OSP_CHECK(fs::exists(f.tokenizer), "text encoder: ", f.tokenizer, " was not written");
  return o.vocab;
}

int64_t encode_clip_dataset(const EncodeClipsOptions& o) {
  const fs::path root(o.model);
  ModelFiles files;
  files.root = o.model;
  files.t5 = (root / "models_t5_umt5-xxl-enc-bf16.safetensors").string();
  files.tokenizer = (root / "google" / "umt5-xxl" / "spiece.model").string();
  files.vae = (root / "Wan2.1_VAE.safetensors").string();
  for (const auto& p : {files.t5, files.tokenizer, files.vae})
    OSP_CHECK(fs::exists(p), "encode-clips: ", o.model, " has no ", fs::path(p).filename().string(),
              " (expected ", p, ")");
  OSP_CHECK(o.text_len >= 2 && o.text_len <= 512, "encode-clips: --text-len must be 2..512, got ", o.text_len);
  const ClipDataset ds = read_clip_dataset(o.dataset);
  const int64_t n = o.limit > 0 ? std::min<int64_t>(o.limit, int64_t(ds.clips.size())) : int64_t(ds.clips.size());
  OSP_CHECK(n > 0, "encode-clips: ", o.dataset, " holds no clips");
  const Device dev = parse_device(o.device);
  LatentCacheWriter writer(o.out, o.per_shard, o.overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse);

  std::map<std::string, Tensor> ctx;
  {
    auto te = TextEncoder::load(files, dev, o.text_len);
    for (int64_t i = 0; i < n; ++i) {
      const std::string& c = ds.clips[size_t(i)].caption;
      if (!ctx.count(c)) ctx[c] = te->encode({c}).at(0).to(Device::cpu()).contiguous();
    }
    writer.set_empty_context(te->encode({""}).at(0).to(Device::cpu()).contiguous());
  }
  const model::WanVae vae = model::WanVae::load(model::weight_getter(open_vae(files)), dev);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    interruption_point("encode-clips");
    if (o.max_seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= o.max_seconds) {
      log_info("encode-clips: --max-seconds ", o.max_seconds, " reached after ", i, " clips");
      break;
    }
    const ClipEntry& e = ds.clips[size_t(i)];
    const Tensor x = clip_to_float(load_dataset_clip(ds, e)).to(dev);
    const Tensor z = vae.encode(x).to(Device::cpu()).contiguous();
    writer.add(z, ctx.at(e.caption), e.caption, e.id);
    if ((i + 1) % 256 == 0) log_info("encode-clips: ", i + 1, "/", n);
  }
  return writer.finish();
}

}  // namespace osp::pipeline
