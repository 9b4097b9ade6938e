// osp::Error and the checking macros used at every boundary.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace osp {

// Every user-visible failure is an osp::Error with an actionable message:
// what was expected, what was found, and (where it helps) what to do.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: osp::str("shape ", 3, "x", 4).
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

}  // namespace osp

// OSP_CHECK(cond, "message parts", ...) throws osp::Error when cond is false.
#define OSP_CHECK(cond, ...)                              \
  do {                                                    \
    if (!(cond)) ::osp::fail(::osp::str(__VA_ARGS__));    \
  } while (0)
