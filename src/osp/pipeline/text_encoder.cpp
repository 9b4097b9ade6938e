#include "osp/pipeline/text_encoder.h"

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/model/t5.h"
#include "osp/model/tokenizer.h"
#include "osp/pipeline/load_progress.h"

namespace osp::pipeline {

size_t text_encoder_params(const ModelFiles& files) {
  const io::Checkpoint ck = io::open_checkpoint(files.t5);
  size_t n = 0;
  for (const auto& name : ck->names()) n += size_t(shape_numel(ck->info(name).shape));
  return n;
}

namespace {

class UmT5TextEncoder final : public TextEncoder {
 public:
  UmT5TextEncoder(const ModelFiles& files, Device dev, int64_t text_len)
      : tok_(model::Tokenizer::load(files.tokenizer)), text_len_(text_len) {
    io::Checkpoint ck = io::open_checkpoint(files.t5);
    if (files.t5_hf_names) ck = io::t5_with_wan_names(ck);
    LoadProgress lp("text encoder", int(ck->size()), log_level() >= LogLevel::Info);
    enc_ = model::T5Encoder::load([&](const std::string& n) { return lp.get(ck, n); }, dev);
    lp.finish();
    OSP_CHECK(tok_.vocab_size() <= enc_.config().vocab, "tokenizer ", files.tokenizer, " has ",
              tok_.vocab_size(), " pieces but the umT5 embedding only ", enc_.config().vocab,
              " rows: the tokenizer does not belong to this encoder");
    log_verbose("umT5: dim ", enc_.config().dim, ", ", enc_.config().num_layers, " layers, vocab ",
                enc_.config().vocab, " on ", dev.name());
  }
  std::vector<Tensor> encode(const std::vector<std::string>& prompts) override {
    std::vector<Tensor> out;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::string& p = prompts[i];
      interruption_point("text encoding");
      // The encoder reads text_len tokens (the last one </s>): say what a long prompt loses.
      const int64_t n_pieces = int64_t(tok_.pieces(model::clean_prompt(p)).size());
      if (n_pieces + 1 > text_len_)
        log_warn(i == 0 ? "the prompt" : "the negative prompt", " is ", n_pieces, " tokens; the text encoder reads ",
                 text_len_ - 1, " (plus </s>), so the last ", n_pieces + 1 - text_len_, " tokens are dropped");
      const model::TokenizedPrompt t = tok_.encode(p, text_len_);
      OSP_CHECK(t.n_valid >= 1, "the prompt tokenizes to nothing: '", p, "'");
      // [text_len, dim] with rows >= n_valid zero → keep the real rows (the DiT pads again).
      Tensor e = enc_.encode(t.ids, t.n_valid, text_len_);
      out.push_back(e.slice(0, 0, t.n_valid));
      log_verbose("prompt: ", t.n_valid, " tokens");
    }
    return out;
  }
  int64_t dim() const override { return enc_.config().dim; }

 private:
  model::Tokenizer tok_;
  model::T5Encoder enc_;
  int64_t text_len_;
};

}  // namespace

std::unique_ptr<TextEncoder> TextEncoder::load(const ModelFiles& files, Device dev, int64_t text_len) {
  return std::make_unique<UmT5TextEncoder>(files, dev, text_len);
}

}  // namespace osp::pipeline
