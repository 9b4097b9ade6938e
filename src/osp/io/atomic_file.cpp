#include "osp/io/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"

namespace fs = std::filesystem;

namespace osp::io {

namespace {

std::atomic<int> g_fail_commit{0};

std::string errno_text(int e) { return std::strerror(e); }

// The folder a path lives in ("." for a bare name).
fs::path parent_of(const fs::path& p) {
  fs::path parent = p.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// Pseudo filesystems where a "file" is a kernel interface, not storage.
bool is_pseudo_fs(const fs::path& dir, std::string* which) {
  std::error_code ec;
  const fs::path canon = fs::weakly_canonical(dir, ec);
  const std::string c = ec ? dir.string() : canon.string();
  for (const char* root : {"/proc", "/sys", "/dev"}) {
    const size_t n = std::strlen(root);
    if (c.compare(0, n, root) == 0 && (c.size() == n || c[n] == '/')) {
      *which = root;
      return true;
    }
  }
  struct statfs sf {};
  if (::statfs(dir.c_str(), &sf) == 0) {
    switch (static_cast<unsigned long>(sf.f_type)) {
      case 0x9fa0UL:      // PROC_SUPER_MAGIC
      case 0x62656572UL:  // SYSFS_MAGIC
      case 0x64626720UL:  // DEBUGFS_MAGIC
      case 0x74726163UL:  // TRACEFS_MAGIC
      case 0x27e0ebUL:    // CGROUP_SUPER_MAGIC
      case 0x63677270UL:  // CGROUP2_SUPER_MAGIC
      case 0x1cd1UL:      // DEVPTS_SUPER_MAGIC
      case 0x73636673UL:  // SECURITYFS_MAGIC
      case 0xcafe4a11UL:  // BPF_FS_MAGIC
        *which = "a kernel pseudo filesystem";
        return true;
      default:
        break;
    }
  }
  return false;
}

// Checks the folder an output goes into.
void check_parent(const fs::path& target) {
  const fs::path parent = parent_of(target);
  std::error_code ec;
  const fs::file_status st = fs::status(parent, ec);
  OSP_CHECK(fs::exists(st), "cannot write ", target.string(), ": the folder ", parent.string(),
            " does not exist (create it first)");
  OSP_CHECK(fs::is_directory(st), "cannot write ", target.string(), ": ", parent.string(), " is not a folder");
  std::string which;
  OSP_CHECK(!is_pseudo_fs(parent, &which), "cannot write ", target.string(), ": it is under ", which,
            ", which holds kernel interfaces, not files");
  OSP_CHECK(::access(parent.c_str(), W_OK | X_OK) == 0, "cannot write ", target.string(), ": the folder ",
            parent.string(), " is not writable (", errno_text(errno), ")");
}

std::string random_suffix() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  const uint64_t v = (uint64_t(rd()) << 32) ^ rd() ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ULL) ^
                     uint64_t(::getpid());
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)v);
  return std::string(buf, 12);
}

// ".NAME.tmp-RANDOM" beside the target.
fs::path temp_name(const fs::path& target) {
  std::string name = ".";
  name += target.filename().string();
  name += ".tmp-";
  name += random_suffix();
  return parent_of(target) / name;
}

void fsync_path(const fs::path& p, bool dir, const std::string& target) {
  const int fd = ::open(p.c_str(), (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  OSP_CHECK(fd >= 0, "writing ", target, " failed: cannot reopen ", p.string(), " (", errno_text(errno), ")");
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  // Folders on some filesystems do not support fsync (EINVAL): nothing to flush there.
  if (rc != 0 && !(dir && (e == EINVAL || e == EROFS)))
    fail(str("writing ", target, " failed: ", errno_text(e)));
}

void maybe_inject_failure(const std::string& target) {
  int n = g_fail_commit.load();
  while (n > 0 && !g_fail_commit.compare_exchange_weak(n, n - 1)) {
  }
  if (n == 1) fail(str("writing ", target, " failed: ", errno_text(ENOSPC), " (injected by a test)"));
}

// rename(2) that refuses to replace an existing target (RENAME_NOREPLACE, or link+unlink where
// the filesystem lacks it). Returns errno (0 on success).
int rename_noreplace(const fs::path& from, const fs::path& to) {
#ifdef RENAME_NOREPLACE
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return errno;
#endif
  if (::link(from.c_str(), to.c_str()) != 0) return errno;
  ::unlink(from.c_str());
  return 0;
}

// A writer's error names the hidden temporary; the user wants the output they asked for first.
[[noreturn]] void rethrow_naming(const Error& e, const std::string& target) {
  const std::string m = e.what();
  if (m.find(target) != std::string::npos && m.find(".tmp-") == std::string::npos) throw e;
  fail(str("writing ", target, " failed (nothing was written; any previous version is untouched): ", m));
}

void remove_quietly(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

}  // namespace

void fail_atomic_commit_for_tests(int n) { g_fail_commit.store(n < 0 ? 0 : n); }

void check_output_path(const std::string& path, Overwrite ow) {
  OSP_CHECK(!path.empty(), "the output path is empty");
  OSP_CHECK(path.back() != '/', "the output ", path, " names a folder, but a file is expected here");
  const fs::path p(path);
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (fs::exists(st)) {
    OSP_CHECK(!fs::is_directory(st), "the output ", path, " is a folder, but a file is expected here (e.g. ",
              (p / "video.mp4").string(), ")");
    OSP_CHECK(fs::is_regular_file(st), "the output ", path,
              " exists and is not a regular file (a FIFO, device or socket); osp writes regular files only");
    OSP_CHECK(ow == Overwrite::Allow, "the output ", path,
              " already exists; pass --overwrite to replace it (osp never replaces a file silently)");
  }
  check_parent(p);
}

void check_output_dir(const std::string& dir, Overwrite ow) {
  OSP_CHECK(!dir.empty(), "the output folder path is empty");
  fs::path p(dir);
  if (p.filename().empty()) p = p.parent_path();  // "frames/" -> "frames"
  OSP_CHECK(!p.empty() && p.filename() != "." && p.filename() != "..", "the output folder ", dir,
            " must be named (not '.', '..' or '/'), e.g. frames/");
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (fs::exists(st)) {
    OSP_CHECK(fs::is_directory(st), "the output folder ", dir, " exists and is not a folder");
    const bool empty = fs::is_empty(p, ec);
    OSP_CHECK(!ec, "cannot read the output folder ", dir, ": ", ec.message());
    OSP_CHECK(empty || ow == Overwrite::Allow, "the output folder ", dir,
              " already holds files; pass --overwrite to replace it (osp never replaces an output silently)");
  }
  check_parent(p);
}

void write_file_atomic(const std::string& path, const std::function<void(const std::string& tmp)>& write,
                       Overwrite ow) {
  check_output_path(path, ow);
  const fs::path target(path);
  fs::path tmp;
  for (int attempt = 0;; ++attempt) {  // reserve a fresh name (O_EXCL), mode 0666 & ~umask
    tmp = temp_name(target);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      ::close(fd);
      break;
    }
    OSP_CHECK(errno == EEXIST && attempt < 16, "cannot create a temporary file beside ", path, ": ",
              errno_text(errno));
  }
  const CleanupPath on_second_ctrl_c(tmp.string());
  try {
    write(tmp.string());
    std::error_code ec;
    OSP_CHECK(fs::is_regular_file(tmp, ec), "writing ", path, " failed: the temporary file ", tmp.string(),
              " vanished");
    fsync_path(tmp, false, path);
    maybe_inject_failure(path);
    if (ow == Overwrite::Allow) {
      OSP_CHECK(::rename(tmp.c_str(), target.c_str()) == 0, "writing ", path, " failed: cannot rename ",
                tmp.string(), " to it (", errno_text(errno), ")");
    } else {
      const int e = rename_noreplace(tmp, target);
      OSP_CHECK(e != EEXIST, "the output ", path,
                " appeared while osp was writing it; pass --overwrite to replace it");
      OSP_CHECK(e == 0, "writing ", path, " failed: cannot rename ", tmp.string(), " to it (", errno_text(e), ")");
    }
  } catch (const Error& e) {
    remove_quietly(tmp);
    rethrow_naming(e, path);
  } catch (...) {
    remove_quietly(tmp);
    throw;
  }
  fsync_path(parent_of(target), true, path);
}

void write_dir_atomic(const std::string& dir, const std::function<void(const std::string& tmp_dir)>& write,
                      Overwrite ow) {
  check_output_dir(dir, ow);
  fs::path target(dir);
  if (target.filename().empty()) target = target.parent_path();
  fs::path tmp;
  for (int attempt = 0;; ++attempt) {
    tmp = temp_name(target);
    if (::mkdir(tmp.c_str(), 0777) == 0) break;
    OSP_CHECK(errno == EEXIST && attempt < 16, "cannot create a temporary folder beside ", dir, ": ",
              errno_text(errno));
  }
  const CleanupPath on_second_ctrl_c(tmp.string());
  fs::path swapped;  // the previous folder after an exchange, removed at the end
  try {
    write(tmp.string());
    for (const auto& e : fs::recursive_directory_iterator(tmp))
      if (e.is_regular_file()) fsync_path(e.path(), false, dir);
    fsync_path(tmp, true, dir);
    maybe_inject_failure(dir);
    std::error_code ec;
    const bool exists = fs::exists(target, ec);
    const bool empty = exists && fs::is_empty(target, ec);
    if (!exists || empty) {
      // rename(2) replaces an empty folder and fails (ENOTEMPTY/EEXIST) if it gained files.
      if (::rename(tmp.c_str(), target.c_str()) != 0) {
        const int e = errno;
        OSP_CHECK(e != ENOTEMPTY && e != EEXIST, "the output folder ", dir,
                  " gained files while osp was writing it; pass --overwrite to replace it");
        fail(str("writing ", dir, " failed: cannot rename ", tmp.string(), " to it (", errno_text(e), ")"));
      }
    } else {
      OSP_CHECK(ow == Overwrite::Allow, "the output folder ", dir,
                " already holds files; pass --overwrite to replace it");
#ifdef RENAME_EXCHANGE
      if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
        swapped = tmp;  // tmp now names the previous folder
      } else
#endif
      {
        // No atomic exchange here: move the old folder aside, then the new one in.
        swapped = temp_name(target);
        OSP_CHECK(::rename(target.c_str(), swapped.c_str()) == 0, "cannot replace ", dir, ": ", errno_text(errno));
        if (::rename(tmp.c_str(), target.c_str()) != 0) {
          const int e = errno;
          ::rename(swapped.c_str(), target.c_str());
          swapped.clear();
          fail(str("cannot replace ", dir, ": ", errno_text(e)));
        }
      }
    }
  } catch (const Error& e) {
    remove_quietly(tmp);
    rethrow_naming(e, dir);
  } catch (...) {
    remove_quietly(tmp);
    throw;
  }
  fsync_path(parent_of(target), true, dir);
  if (!swapped.empty()) remove_quietly(swapped);
}

void write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes, Overwrite ow) {
  write_file_atomic(
      path,
      [&](const std::string& tmp) {
        std::FILE* f = std::fopen(tmp.c_str(), "wb");
        OSP_CHECK(f, "cannot open ", tmp, " for writing");
        const size_t n = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
        const bool ok = n == bytes.size() && std::fflush(f) == 0;
        const bool closed = std::fclose(f) == 0;
        OSP_CHECK(ok && closed, "writing ", path, " failed (disk full?)");
      },
      ow);
}

void write_text_atomic(const std::string& path, const std::string& text, Overwrite ow) {
  write_bytes_atomic(path, std::vector<uint8_t>(text.begin(), text.end()), ow);
}

}  // namespace osp::io
