#include "osp/io/bytes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

namespace osp::io {

namespace {
struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) munmap(addr, len);
  }
};
}  // namespace

Bytes map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(str("cannot open '", path, "': ", std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(str("cannot stat '", path, "': ", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(str("'", path, "' is not a regular file"));
  }
  Bytes b;
  b.name = path;
  b.size = size_t(st.st_size);
  auto m = std::make_shared<Mapping>();
  if (b.size > 0) {
    void* a = mmap(nullptr, b.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (a == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail(str("cannot mmap '", path, "' (", b.size, " bytes): ", std::strerror(e)));
    }
    m->addr = a;
    m->len = b.size;
    b.data = static_cast<const uint8_t*>(a);
  }
  ::close(fd);  // the mapping stays valid
  b.owner = m;
  return b;
}

Bytes bytes_from_vector(std::vector<uint8_t> v, const std::string& name) {
  auto holder = std::make_shared<std::vector<uint8_t>>(std::move(v));
  Bytes b;
  b.data = holder->data();
  b.size = holder->size();
  b.owner = holder;
  b.name = name;
  return b;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(str("cannot open '", path, "' for reading"));
  std::vector<uint8_t> v((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail(str("error while reading '", path, "'"));
  return v;
}

}  // namespace osp::io
