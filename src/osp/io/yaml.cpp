#include "osp/io/yaml.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <vector>

#include "osp/core/error.h"

namespace osp::io {

namespace {

using json = nlohmann::json;

// One non-empty line: its indentation, its content without the indentation, the comment and
// trailing spaces, and its 1-based number in the file.
struct Line {
  int indent = 0;
  std::string text;
  int no = 0;
};

bool is_space(char c) { return c == ' ' || c == '\t'; }

std::string rtrim(std::string s) {
  while (!s.empty() && (is_space(s.back()) || s.back() == '\r')) s.pop_back();
  return s;
}
std::string ltrim(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && is_space(s[i])) ++i;
  return s.substr(i);
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = uint8_t(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) n = 0, cp = c;
    else if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07;
    else return false;
    if (n > 0 && i + n >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      const uint8_t d = uint8_t(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t min_of[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_of[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

bool is_seq_item(const std::string& t) { return t == "-" || (t.size() >= 2 && t[0] == '-' && t[1] == ' '); }

class Reader {
 public:
  Reader(const std::string& text, std::string source) : source_(std::move(source)) { split(text); }

  json document() {
    if (lines_.empty()) return nullptr;
    size_t i = 0;
    json v;
    const Line& first = lines_[0];
    if (is_seq_item(first.text) || split_key(first.text, first.no, nullptr, nullptr)) {
      v = block(i, first.indent);
    } else {
      v = scalar_or_flow(first.text, first.no);
      ++i;
    }
    if (i < lines_.size())
      error(lines_[i].no, "unexpected indentation or content here (block structure ends on line " +
                              std::to_string(lines_[i > 0 ? i - 1 : 0].no) +
                              "; a plain value continued on the next line is not supported: quote it)");
    return v;
  }

 private:
  [[noreturn]] void error(int no, const std::string& msg) const {
    fail(str(source_, ", line ", no, ": ", msg));
  }

  // Lines without comments, blanks and document markers; tabs in indentation refused.
  void split(const std::string& text) {
    size_t pos = 0;
    int no = 0;
    bool started = false, ended = false;
    while (pos <= text.size()) {
      const size_t nl = text.find('\n', pos);
      std::string raw = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      pos = nl == std::string::npos ? text.size() + 1 : nl + 1;
      ++no;
      if (!valid_utf8(raw)) error(no, "not valid UTF-8 text");
      std::string s = rtrim(strip_comment(raw, no));
      if (ltrim(s).empty()) continue;
      if (s == "---" || s.rfind("--- ", 0) == 0) {
        if (started) error(no, "a second YAML document ('---'): a config file holds one");
        started = true;
        if (!ltrim(s.substr(3)).empty()) error(no, "content after '---' is not supported: start it on the next line");
        continue;
      }
      if (s == "...") {
        ended = true;
        continue;
      }
      if (ended) error(no, "content after the end-of-document marker '...'");
      started = true;
      int indent = 0;
      while (indent < int(s.size()) && is_space(s[size_t(indent)])) {
        if (s[size_t(indent)] == '\t') error(no, "a tab in the indentation (YAML indents with spaces)");
        ++indent;
      }
      if (s[size_t(indent)] == '%') error(no, "YAML directives ('%') are not supported");
      lines_.push_back({indent, s.substr(size_t(indent)), no});
    }
  }

  // The line without its comment: '#' at the start or after a space, outside quotes.
  std::string strip_comment(const std::string& s, int no) const {
    char quote = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const char c = s[i];
      if (quote) {
        if (quote == '"' && c == '\\') ++i;
        else if (c == quote) {
          if (quote == '\'' && i + 1 < s.size() && s[i + 1] == '\'') ++i;  // '' inside '...'
          else quote = 0;
        }
      } else if (c == '"' || c == '\'') {
        // a quote opens a quoted scalar only where a scalar can start
        if (i == 0 || is_space(s[i - 1]) || std::string(":[{,-").find(s[i - 1]) != std::string::npos) quote = c;
      } else if (c == '#' && (i == 0 || is_space(s[i - 1]))) {
        return s.substr(0, i);
      }
    }
    if (quote) error(no, std::string("unterminated ") + (quote == '"' ? "double" : "single") + "-quoted string");
    return s;
  }

  // "key: rest" → key (unquoted) and rest; false when the text is not a mapping entry.
  bool split_key(const std::string& t, int no, std::string* key, std::string* rest) const {
    if (t.empty() || t[0] == '[' || t[0] == '{' || is_seq_item(t)) return false;
    if (t.rfind("? ", 0) == 0 || t == "?") error(no, "complex mapping keys ('? ') are not supported");
    size_t end = 0;
    std::string k;
    if (t[0] == '"' || t[0] == '\'') {
      end = quoted_end(t, 0, no);
      k = unquote(t.substr(0, end), no);
      size_t j = end;
      while (j < t.size() && is_space(t[j])) ++j;
      if (j >= t.size() || t[j] != ':' || (j + 1 < t.size() && !is_space(t[j + 1]))) return false;
      end = j;
    } else {
      end = std::string::npos;
      for (size_t j = 0; j < t.size(); ++j)
        if (t[j] == ':' && (j + 1 == t.size() || is_space(t[j + 1]))) {
          end = j;
          break;
        }
      if (end == std::string::npos) return false;
      k = rtrim(t.substr(0, end));
      if (k.empty()) error(no, "an empty mapping key");
      if (std::string("&*!|>").find(k[0]) != std::string::npos)
        error(no, std::string("'") + k[0] + "' (anchors, aliases, tags, block scalars) is not supported in keys");
    }
    if (key) *key = k;
    if (rest) *rest = ltrim(t.substr(end + 1));
    return true;
  }

  json block(size_t& i, int indent) {
    return is_seq_item(lines_[i].text) ? sequence(i, indent) : mapping(i, indent);
  }

  json mapping(size_t& i, int indent) {
    json obj = json::object();
    while (i < lines_.size() && lines_[i].indent == indent) {
      const Line l = lines_[i];
      if (is_seq_item(l.text)) error(l.no, "a sequence item ('- ') where a 'key: value' entry was expected");
      std::string key, rest;
      if (!split_key(l.text, l.no, &key, &rest))
        error(l.no, "expected 'key: value' (a mapping entry), got '" + l.text + "'");
      if (obj.contains(key)) error(l.no, "duplicate key '" + key + "'");
      ++i;
      obj[key] = value_after(i, indent, rest, l.no, true);
    }
    return obj;
  }

  json sequence(size_t& i, int indent) {
    json arr = json::array();
    while (i < lines_.size() && lines_[i].indent == indent && is_seq_item(lines_[i].text)) {
      const Line l = lines_[i];
      const std::string after = l.text.substr(1);
      const std::string rest = ltrim(after);
      const int col = indent + 1 + int(after.size() - rest.size());  // where the item's content starts
      if (rest.empty()) {
        ++i;
        arr.push_back(value_after(i, indent, "", l.no, false));
      } else if (is_seq_item(rest) || split_key(rest, l.no, nullptr, nullptr)) {
        lines_[i] = {col, rest, l.no};  // "- key: v" / "- - v": a nested block at the content's column
        arr.push_back(block(i, col));
      } else {
        ++i;
        arr.push_back(scalar_or_flow(rest, l.no));
      }
    }
    return arr;
  }

  // The value of "key:" / "- " at `parent` indentation: inline (rest), a deeper block on the next
  // lines, a sequence at the key's own indentation (mapping values only), or null.
  json value_after(size_t& i, int parent, const std::string& rest, int no, bool in_map) {
    if (!rest.empty()) return scalar_or_flow(rest, no);
    if (i < lines_.size() && lines_[i].indent > parent) return block(i, lines_[i].indent);
    if (in_map && i < lines_.size() && lines_[i].indent == parent && is_seq_item(lines_[i].text))
      return sequence(i, parent);
    return nullptr;
  }

  json scalar_or_flow(const std::string& s0, int no) const {
    const std::string s = rtrim(ltrim(s0));
    if (s[0] == '[' || s[0] == '{') {
      size_t p = 0;
      json v = flow_value(s, p, no);
      skip_ws(s, p);
      if (p != s.size()) error(no, "unexpected '" + s.substr(p) + "' after a flow collection");
      return v;
    }
    if (s[0] == '"' || s[0] == '\'') {
      const size_t end = quoted_end(s, 0, no);
      if (end != s.size()) error(no, "unexpected '" + s.substr(end) + "' after a quoted string");
      return unquote(s, no);
    }
    check_plain_start(s, no);
    return resolve_plain(s, no);
  }

  void check_plain_start(const std::string& s, int no) const {
    switch (s[0]) {
      case '&': error(no, "anchors ('&') are not supported");
      case '*': error(no, "aliases ('*') are not supported");
      case '!': error(no, "tags ('!') are not supported");
      case '|':
      case '>': error(no, "block scalars ('|', '>') are not supported: write the value on one line");
      case '@':
      case '`': error(no, std::string("'") + s[0] + "' cannot start a plain value: quote it");
      default: break;
    }
  }

  // A plain scalar by the YAML 1.2 core schema.
  json resolve_plain(const std::string& s, int no) const {
    if (s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    try {
      if (is_decimal(s)) return json(std::stoll(s));
      if (is_radix(s, 'x')) return json(int64_t(std::stoull(s.substr(2), nullptr, 16)));
      if (is_radix(s, 'o')) return json(int64_t(std::stoull(s.substr(2), nullptr, 8)));
    } catch (const std::out_of_range&) {
      error(no, "integer '" + s + "' is out of range");
    }
    if (is_float(s)) {
      try {
        return json(std::stod(s));
      } catch (const std::out_of_range&) {  // (also an underflow such as 1e-400)
        error(no, "number '" + s + "' is out of the range of a double");
      }
    }
    if (is_inf_nan(s)) error(no, "'" + s + "': settings must be finite numbers");
    return s;
  }

  // The YAML 1.2 core schema's number forms (by hand: std::regex is slow and noisy here).
  static bool digits(const std::string& s, size_t& i, bool (*ok)(char)) {
    const size_t start = i;
    while (i < s.size() && ok(s[i])) ++i;
    return i > start;
  }
  static bool dec_digit(char c) { return c >= '0' && c <= '9'; }
  static size_t sign_len(const std::string& s) { return !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0; }
  // [-+]?[0-9]+
  static bool is_decimal(const std::string& s) {
    size_t i = sign_len(s);
    return digits(s, i, dec_digit) && i == s.size();
  }
  // 0x[0-9a-fA-F]+ / 0o[0-7]+
  static bool is_radix(const std::string& s, char r) {
    if (s.size() < 3 || s[0] != '0' || s[1] != r) return false;
    size_t i = 2;
    auto hex = [](char c) { return std::isxdigit(uint8_t(c)) != 0; };
    auto oct = [](char c) { return c >= '0' && c <= '7'; };
    return (r == 'x' ? digits(s, i, hex) : digits(s, i, oct)) && i == s.size();
  }
  // [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
  static bool is_float(const std::string& s) {
    size_t i = sign_len(s);
    if (i < s.size() && s[i] == '.') {
      ++i;
      if (!digits(s, i, dec_digit)) return false;
    } else {
      if (!digits(s, i, dec_digit)) return false;
      if (i < s.size() && s[i] == '.') {
        ++i;
        digits(s, i, dec_digit);
      }
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
      if (!digits(s, i, dec_digit)) return false;
    }
    return i == s.size();
  }
  static bool is_inf_nan(const std::string& s) {
    const std::string t = s.substr(sign_len(s));
    if (t == ".inf" || t == ".Inf" || t == ".INF") return true;
    return s == ".nan" || s == ".NaN" || s == ".NAN";
  }

  static void skip_ws(const std::string& s, size_t& p) {
    while (p < s.size() && is_space(s[p])) ++p;
  }

  // One value of a flow collection starting at s[p].
  json flow_value(const std::string& s, size_t& p, int no) const {
    skip_ws(s, p);
    if (p >= s.size()) error(no, "a flow collection ends early");
    const char c = s[p];
    if (c == '[') {
      json arr = json::array();
      ++p;
      skip_ws(s, p);
      if (p < s.size() && s[p] == ']') return ++p, arr;
      for (;;) {
        arr.push_back(flow_value(s, p, no));
        skip_ws(s, p);
        if (p < s.size() && s[p] == ',') {
          ++p;
          continue;
        }
        if (p < s.size() && s[p] == ']') return ++p, arr;
        error(no, "expected ',' or ']' in a flow sequence");
      }
    }
    if (c == '{') {
      json obj = json::object();
      ++p;
      skip_ws(s, p);
      if (p < s.size() && s[p] == '}') return ++p, obj;
      for (;;) {
        skip_ws(s, p);
        json k = flow_scalar(s, p, no, true);
        if (!k.is_string()) k = k.dump();  // a key such as 1 or true, as its text
        skip_ws(s, p);
        if (p >= s.size() || s[p] != ':') error(no, "expected ':' after a key in a flow mapping");
        ++p;
        const std::string key = k.get<std::string>();
        if (obj.contains(key)) error(no, "duplicate key '" + key + "'");
        skip_ws(s, p);
        obj[key] = (p < s.size() && (s[p] == ',' || s[p] == '}')) ? json(nullptr) : flow_value(s, p, no);
        skip_ws(s, p);
        if (p < s.size() && s[p] == ',') {
          ++p;
          continue;
        }
        if (p < s.size() && s[p] == '}') return ++p, obj;
        error(no, "expected ',' or '}' in a flow mapping");
      }
    }
    return flow_scalar(s, p, no, false);
  }

  // A scalar inside a flow collection: quoted, or plain up to , ] } (and ': ' for a key).
  json flow_scalar(const std::string& s, size_t& p, int no, bool key) const {
    if (s[p] == '"' || s[p] == '\'') {
      const size_t end = quoted_end(s, p, no);
      json v = unquote(s.substr(p, end - p), no);
      p = end;
      return v;
    }
    const size_t start = p;
    while (p < s.size() && s[p] != ',' && s[p] != ']' && s[p] != '}' && s[p] != '[' && s[p] != '{' &&
           !(s[p] == ':' && (key || p + 1 == s.size() || is_space(s[p + 1]))))
      ++p;
    const std::string t = rtrim(s.substr(start, p - start));
    if (t.empty()) error(no, "an empty value in a flow collection");
    check_plain_start(t, no);
    return resolve_plain(t, no);
  }

  // The index one past the closing quote of the quoted scalar at s[p].
  size_t quoted_end(const std::string& s, size_t p, int no) const {
    const char q = s[p];
    for (size_t i = p + 1; i < s.size(); ++i) {
      if (q == '"' && s[i] == '\\') {
        ++i;
      } else if (s[i] == q) {
        if (q == '\'' && i + 1 < s.size() && s[i + 1] == '\'') ++i;
        else return i + 1;
      }
    }
    error(no, "unterminated quoted string");
  }

  // The value of a whole quoted scalar "..." / '...'.
  std::string unquote(const std::string& t, int no) const {
    std::string out;
    const char q = t[0];
    for (size_t i = 1; i + 1 < t.size(); ++i) {
      const char c = t[i];
      if (q == '\'') {
        out += c;
        if (c == '\'') ++i;  // '' → '
        continue;
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      const char e = t[++i];
      switch (e) {
        case '\\': out += '\\'; break;
        case '"': out += '"'; break;
        case '/': out += '/'; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '0': out += '\0'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'x':
        case 'u': {
          const size_t n = e == 'x' ? 2 : 4;
          if (i + n >= t.size()) error(no, std::string("a short \\") + e + " escape");
          const std::string hex = t.substr(i + 1, n);
          if (!std::all_of(hex.begin(), hex.end(), [](char h) { return std::isxdigit(uint8_t(h)); }))
            error(no, "a bad \\" + std::string(1, e) + " escape '" + hex + "'");
          const uint32_t cp = uint32_t(std::stoul(hex, nullptr, 16));
          if (cp >= 0xD800 && cp <= 0xDFFF) error(no, "a \\u escape of a UTF-16 surrogate ('" + hex + "')");
          i += n;
          if (cp < 0x80) {
            out += char(cp);
          } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
          } else {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: error(no, std::string("unknown escape '\\") + e + "' in a double-quoted string");
      }
    }
    return out;
  }

  std::string source_;
  std::vector<Line> lines_;
};

}  // namespace

json parse_yaml(const std::string& text, const std::string& source) { return Reader(text, source).document(); }

bool is_yaml_path(const std::string& path) {
  std::string ext = path.size() >= 5 ? path.substr(path.size() - 5) : path;
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".yaml" || (ext.size() >= 4 && ext.substr(ext.size() - 4) == ".yml");
}

}  // namespace osp::io
