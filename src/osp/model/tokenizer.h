// umT5 tokenizer (wan-spec §4.2): Wan's prompt cleaning + SentencePiece (libsentencepiece,
// the checkpoint's `google/umt5-xxl/spiece.model`) + `</s>`, truncation and padding.
//
// Cleaning = whitespace_clean(basic_clean(text)) of Wan's tokenizers.py, with the ftfy part
// ported as the deterministic subset that matters for prompts:
//   * ftfy's unescape_html (HTML entities decoded once, unless the text contains '<');
//   * fullwidth forms U+FF01–U+FF5E → ASCII, U+3000 → space, halfwidth CJK punctuation
//     U+FF61–U+FF64 → 。「」、 (ftfy fix_character_width; the other halfwidth forms, e.g.
//     katakana, are left to SentencePiece's NFKC normaliser, which folds them identically);
//   * curly quotes → straight (uncurl_quotes: U+02BC, U+2018–U+201B → ', U+201C–U+201F → ");
//   * Latin ligatures U+FB00–U+FB06, Ĳ/ĳ split (fix_latin_ligatures);
//   * CRLF/CR/U+2028/U+2029/U+0085 → LF (fix_line_breaks);
//   * control characters removed (U+0000–0008, 000B, 000E–001F, 007F, 206A–206F, FEFF,
//     FFF9–FFFC) and ANSI terminal escapes (ESC [ … letter) removed;
//   * NFC is not applied here: the umT5 SentencePiece model normalises with NFKC, and
//     NFKC(NFC(s)) = NFKC(s), so token ids do not change.  Mojibake repair is not ported (a
//     no-op on clean UTF-8).
// then html.unescape twice (numeric references with Python's rules incl. the cp1252 remap of
// &#128;–&#159;, and the common named entities — see tokenizer.cpp for the list), strip, every
// run of Unicode whitespace → one space, strip.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace osp::model {

// Wan's prompt cleaning (see above).  Input must be UTF-8 (invalid bytes become U+FFFD).
std::string clean_prompt(const std::string& text);

// The default negative prompt of wan/configs/shared_config.py (used when n_prompt is empty).
const std::string& default_negative_prompt();

struct TokenizedPrompt {
  std::vector<int32_t> ids;   // seq_len ids: pieces, </s>, then pad (0)
  std::vector<int32_t> mask;  // 1 for pieces and </s>, 0 for padding
  int64_t n_valid = 0;        // sum(mask)
};

class Tokenizer {
 public:
  // Loads a SentencePiece model file (spiece.model).  Throws osp::Error if it cannot, or if
  // this build has no libsentencepiece.
  static Tokenizer load(const std::string& spiece_model_path);

  int32_t eos_id() const;  // </s>
  int32_t pad_id() const;  // <pad> (0 for umT5)
  int64_t vocab_size() const;

  // Pieces of already-cleaned text (no </s>).
  std::vector<int32_t> pieces(const std::string& cleaned) const;
  // clean_prompt, pieces truncated to seq_len − 1, </s>, right-padded with pad_id to seq_len
  // (HF: padding='max_length', truncation=True, add_special_tokens=True).
  TokenizedPrompt encode(const std::string& prompt, int64_t seq_len = 512) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace osp::model
