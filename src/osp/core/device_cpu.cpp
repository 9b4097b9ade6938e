#include <cstdlib>
#include <cstring>
#include <new>

#include "osp/core/device.h"
#include "osp/core/error.h"

namespace osp {

std::string Device::name() const {
  return is_cpu() ? std::string("cpu") : str("cuda:", index);
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda" || s == "gpu") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return Device::cuda(std::stoi(s.substr(5)));
    } catch (...) {
    }
  }
  fail(str("unknown device '", s, "' (use cpu, cuda or cuda:N)"));
}

void* cpu_alloc(size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  if (n == 0) n = 64;
  void* p = std::aligned_alloc(64, n);
  if (!p) fail(str("out of host memory allocating ", bytes, " bytes"));
  return p;
}
void cpu_free(void* p) { std::free(p); }

}  // namespace osp
