// umT5 tokenizer: prompt cleaning (ftfy subset + html.unescape ×2 + whitespace) and
// SentencePiece encoding with </s>, truncation and padding (wan-spec §4.2).
#include "osp/model/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "osp/core/error.h"

#ifdef OSP_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace osp::model {

const std::string& default_negative_prompt() {
  static const std::string s =
      "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";
  return s;
}

namespace {

// ---------------------------------------------------------------- UTF-8
std::u32string utf8_decode(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    bool ok = len > 0 && i + size_t(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((d >> 6) != 2) ok = false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
               cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
      ok = false;  // overlong, out of range or surrogate
    if (!ok) {
      out.push_back(0xfffd);
      ++i;
    } else {
      out.push_back(cp);
      i += size_t(len);
    }
  }
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xc0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xe0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3f)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  } else {
    out.push_back(char(0xf0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3f)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3f)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  }
}
std::string utf8_encode(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

// ---------------------------------------------------------------- ftfy subset
bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0b || (c >= 0x0e && c <= 0x1f) || c == 0x7f ||
         (c >= 0x206a && c <= 0x206f) || c == 0xfeff || (c >= 0xfff9 && c <= 0xfffc);
}

std::u32string ftfy_subset(const std::u32string& in) {
  std::u32string s;
  s.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char32_t c = in[i];
    // Terminal escapes: ESC '[' [0-9;]* letter.
    if (c == 0x1b && i + 1 < in.size() && in[i + 1] == U'[') {
      size_t j = i + 2;
      while (j < in.size() && ((in[j] >= U'0' && in[j] <= U'9') || in[j] == U';')) ++j;
      if (j < in.size() && ((in[j] >= U'A' && in[j] <= U'Z') || (in[j] >= U'a' && in[j] <= U'z'))) {
        i = j;
        continue;
      }
    }
    // Line breaks.
    if (c == U'\r') {
      if (i + 1 < in.size() && in[i + 1] == U'\n') ++i;
      s.push_back(U'\n');
      continue;
    }
    if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      s.push_back(U'\n');
      continue;
    }
    if (is_removed_control(c)) continue;
    // Character width.
    if (c >= 0xff01 && c <= 0xff5e) c = c - 0xff01 + 0x21;
    else if (c == 0x3000) c = U' ';
    else if (c == 0xff61) c = 0x3002;  // ｡ → 。
    else if (c == 0xff62) c = 0x300c;  // ｢ → 「
    else if (c == 0xff63) c = 0x300d;  // ｣ → 」
    else if (c == 0xff64) c = 0x3001;  // ､ → 、
    // Quotes.
    if (c == 0x02bc || (c >= 0x2018 && c <= 0x201b)) c = U'\'';
    else if (c >= 0x201c && c <= 0x201f) c = U'"';
    // Ligatures.
    switch (c) {
      case 0xfb00: s += U"ff"; continue;
      case 0xfb01: s += U"fi"; continue;
      case 0xfb02: s += U"fl"; continue;
      case 0xfb03: s += U"ffi"; continue;
      case 0xfb04: s += U"ffl"; continue;
      case 0xfb05: s += U"\u017ft"; continue;
      case 0xfb06: s += U"st"; continue;
      case 0x0132: s += U"IJ"; continue;
      case 0x0133: s += U"ij"; continue;
      default: break;
    }
    s.push_back(c);
  }
  return s;
}

// ---------------------------------------------------------------- html.unescape
// Python maps these numeric references (Windows-1252 bytes 0x80–0x9f) to their cp1252 chars.
char32_t cp1252(char32_t n) {
  static const char32_t t[32] = {0x20ac, 0x81,   0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
                                 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8d,   0x017d, 0x8f,
                                 0x90,   0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
                                 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d,   0x017e, 0x0178};
  return t[n - 0x80];
}
bool python_invalid_codepoint(char32_t n) {
  return (n >= 0x1 && n <= 0x8) || n == 0xb || (n >= 0xe && n <= 0x1f) || (n >= 0x7f && n <= 0x9f) ||
         (n >= 0xfdd0 && n <= 0xfdef) || (n & 0xfffe) == 0xfffe;
}

const std::map<std::u32string, std::u32string>& named_entities() {
  // The named references that occur in prompts (a subset of Python's html5 table).
  static const std::map<std::u32string, std::u32string> m = {
      {U"amp;", U"&"},      {U"lt;", U"<"},       {U"gt;", U">"},       {U"quot;", U"\""},
      {U"apos;", U"'"},     {U"nbsp;", U"\u00a0"}, {U"copy;", U"\u00a9"}, {U"reg;", U"\u00ae"},
      {U"trade;", U"\u2122"}, {U"hellip;", U"\u2026"}, {U"mdash;", U"\u2014"}, {U"ndash;", U"\u2013"},
      {U"lsquo;", U"\u2018"}, {U"rsquo;", U"\u2019"}, {U"ldquo;", U"\u201c"}, {U"rdquo;", U"\u201d"},
      {U"laquo;", U"\u00ab"}, {U"raquo;", U"\u00bb"}, {U"deg;", U"\u00b0"}, {U"times;", U"\u00d7"},
      {U"divide;", U"\u00f7"}, {U"middot;", U"\u00b7"}, {U"bull;", U"\u2022"}, {U"euro;", U"\u20ac"},
      {U"pound;", U"\u00a3"}, {U"yen;", U"\u00a5"}, {U"cent;", U"\u00a2"}, {U"sect;", U"\u00a7"},
      {U"para;", U"\u00b6"}, {U"plusmn;", U"\u00b1"}, {U"eacute;", U"\u00e9"}, {U"egrave;", U"\u00e8"},
      {U"aacute;", U"\u00e1"}, {U"agrave;", U"\u00e0"}, {U"uuml;", U"\u00fc"}, {U"ouml;", U"\u00f6"},
      {U"auml;", U"\u00e4"}, {U"szlig;", U"\u00df"}, {U"ccedil;", U"\u00e7"}, {U"ntilde;", U"\u00f1"},
      {U"shy;", U"\u00ad"}, {U"ensp;", U"\u2002"}, {U"emsp;", U"\u2003"}, {U"thinsp;", U"\u2009"},
      {U"zwj;", U"\u200d"}, {U"zwnj;", U"\u200c"}, {U"larr;", U"\u2190"}, {U"rarr;", U"\u2192"},
      {U"hearts;", U"\u2665"}, {U"star;", U"\u2606"},
      // Legacy forms Python also accepts without the semicolon.
      {U"amp", U"&"}, {U"lt", U"<"}, {U"gt", U">"}, {U"quot", U"\""}, {U"nbsp", U"\u00a0"},
      {U"copy", U"\u00a9"}, {U"reg", U"\u00ae"}, {U"AMP", U"&"}, {U"LT", U"<"}, {U"GT", U">"},
      {U"QUOT", U"\""}, {U"AMP;", U"&"}, {U"LT;", U"<"}, {U"GT;", U">"}, {U"QUOT;", U"\""},
  };
  return m;
}

bool is_ascii_alnum(char32_t c) {
  return (c >= U'0' && c <= U'9') || (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z');
}

std::u32string html_unescape(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != U'&') {
      out.push_back(s[i]);
      continue;
    }
    // Numeric: &#123; &#x1f; (semicolon optional, as in Python).
    if (i + 1 < s.size() && s[i + 1] == U'#') {
      size_t j = i + 2;
      const bool hex = j < s.size() && (s[j] == U'x' || s[j] == U'X');
      if (hex) ++j;
      const size_t d0 = j;
      uint64_t n = 0;
      while (j < s.size() && (hex ? (is_ascii_alnum(s[j]) && std::strchr("0123456789abcdefABCDEF", char(s[j])))
                                  : (s[j] >= U'0' && s[j] <= U'9'))) {
        const char32_t c = s[j];
        const uint64_t dv = c <= U'9' ? c - U'0' : (c | 0x20) - U'a' + 10;
        n = std::min<uint64_t>(n * (hex ? 16 : 10) + dv, 0x110000);
        ++j;
      }
      if (j > d0) {
        if (j < s.size() && s[j] == U';') ++j;
        if (n >= 0x80 && n <= 0x9f) out.push_back(cp1252(char32_t(n)));
        else if (n == 0 || n > 0x10ffff || (n >= 0xd800 && n <= 0xdfff)) out.push_back(0xfffd);
        else if (!python_invalid_codepoint(char32_t(n))) out.push_back(char32_t(n));
        i = j - 1;
        continue;
      }
      out.push_back(U'&');
      continue;
    }
    // Named: the longest known name (with or without ';') starting here.
    size_t j = i + 1;
    while (j < s.size() && is_ascii_alnum(s[j]) && j - i <= 32) ++j;
    if (j < s.size() && s[j] == U';') ++j;
    const auto& m = named_entities();
    bool done = false;
    for (size_t e = j; e > i + 1 && !done; --e) {
      auto it = m.find(s.substr(i + 1, e - i - 1));
      if (it != m.end()) {
        out += it->second;
        i = e - 1;
        done = true;
      }
    }
    if (!done) out.push_back(U'&');
  }
  return out;
}

// Python str.isspace().
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
         c == 0x202f || c == 0x205f || c == 0x3000;
}

std::u32string strip(const std::u32string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

}  // namespace

std::string clean_prompt(const std::string& text) {
  std::u32string s = utf8_decode(text);
  // ftfy's own unescape_html step runs first unless the text looks like HTML (contains '<').
  if (s.find(U'<') == std::u32string::npos) s = html_unescape(s);
  s = ftfy_subset(s);
  s = strip(html_unescape(html_unescape(s)));
  std::u32string out;
  out.reserve(s.size());
  bool in_space = false;
  for (char32_t c : s) {
    if (is_space(c)) {
      in_space = true;
      continue;
    }
    if (in_space && !out.empty()) out.push_back(U' ');
    in_space = false;
    out.push_back(c);
  }
  return utf8_encode(out);
}

// ---------------------------------------------------------------- SentencePiece
struct Tokenizer::Impl {
#ifdef OSP_HAVE_SENTENCEPIECE
  sentencepiece::SentencePieceProcessor sp;
#endif
  int32_t eos = 1, pad = 0;
};

Tokenizer Tokenizer::load(const std::string& path) {
#ifdef OSP_HAVE_SENTENCEPIECE
  auto impl = std::make_shared<Impl>();
  const auto st = impl->sp.Load(path);
  OSP_CHECK(st.ok(), "tokenizer: cannot load SentencePiece model '", path, "': ", st.ToString(),
            " (expected <Wan checkpoint>/google/umt5-xxl/spiece.model)");
  int eos = impl->sp.eos_id();
  if (eos < 0) eos = impl->sp.PieceToId("</s>");
  OSP_CHECK(eos >= 0 && impl->sp.IdToPiece(eos) == "</s>", "tokenizer: model '", path,
            "' has no </s> piece");
  impl->eos = eos;
  impl->pad = impl->sp.pad_id() >= 0 ? impl->sp.pad_id() : 0;
  Tokenizer t;
  t.impl_ = impl;
  return t;
#else
  fail("tokenizer: this build has no libsentencepiece (install libsentencepiece-dev and "
       "re-run cmake) — cannot load '" + path + "'");
#endif
}

int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
int64_t Tokenizer::vocab_size() const {
#ifdef OSP_HAVE_SENTENCEPIECE
  return impl_->sp.GetPieceSize();
#else
  return 0;
#endif
}

std::vector<int32_t> Tokenizer::pieces(const std::string& cleaned) const {
#ifdef OSP_HAVE_SENTENCEPIECE
  std::vector<int> ids;
  const auto st = impl_->sp.Encode(cleaned, &ids);
  OSP_CHECK(st.ok(), "tokenizer: SentencePiece failed to encode the prompt: ", st.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
#else
  fail("tokenizer: this build has no libsentencepiece");
#endif
}

TokenizedPrompt Tokenizer::encode(const std::string& prompt, int64_t seq_len) const {
  OSP_CHECK(seq_len >= 1, "tokenizer: seq_len must be >= 1, got ", seq_len);
  std::vector<int32_t> p = pieces(clean_prompt(prompt));
  if (int64_t(p.size()) > seq_len - 1) p.resize(size_t(seq_len - 1));
  TokenizedPrompt t;
  t.ids = p;
  t.ids.push_back(impl_->eos);
  t.n_valid = int64_t(t.ids.size());
  t.mask.assign(size_t(t.n_valid), 1);
  t.ids.resize(size_t(seq_len), impl_->pad);
  t.mask.resize(size_t(seq_len), 0);
  return t;
}

}  // namespace osp::model
