#include "osp/io/close_names.h"

#include <algorithm>
#include <sstream>

namespace osp::io {

namespace {
// Levenshtein distance with an early cut-off (rows are O(|b|)).
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}
size_t common_suffix(const std::string& a, const std::string& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[a.size() - 1 - n] == b[b.size() - 1 - n]) ++n;
  return n;
}
}  // namespace

std::vector<std::string> close_names(const std::string& name,
                                     const std::vector<std::string>& candidates, size_t k) {
  struct Scored {
    size_t dist;
    size_t suffix;
    const std::string* s;
  };
  std::vector<Scored> sc;
  sc.reserve(candidates.size());
  // Very long names are compared by a prefix only: this is a hint, not a search engine.
  const std::string q = name.substr(0, 256);
  for (const auto& c : candidates)
    sc.push_back({edit_distance(q, c.substr(0, 256)), common_suffix(name, c), &c});
  std::sort(sc.begin(), sc.end(), [](const Scored& a, const Scored& b) {
    if (a.dist != b.dist) return a.dist < b.dist;
    if (a.suffix != b.suffix) return a.suffix > b.suffix;
    return *a.s < *b.s;
  });
  std::vector<std::string> out;
  for (size_t i = 0; i < sc.size() && i < k; ++i) out.push_back(*sc[i].s);
  return out;
}

std::string missing_tensor_message(const std::string& name, const std::string& where,
                                   const std::vector<std::string>& candidates) {
  std::ostringstream os;
  os << "tensor '" << name << "' not found in " << where << " (" << candidates.size()
     << " tensors)";
  auto close = close_names(name, candidates);
  if (!close.empty()) {
    os << "; close names: ";
    for (size_t i = 0; i < close.size(); ++i) os << (i ? ", " : "") << "'" << close[i] << "'";
  }
  return os.str();
}

}  // namespace osp::io
