// Atomic outputs: a write appears complete or not at all; an existing target survives any
// failure (exception, injected ENOSPC, a real file-size limit in a child process); existing
// outputs are replaced only with Overwrite::Allow; impossible paths are refused up front.
#include "osp/io/atomic_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/io_test_util.h"
#include "osp/io/safetensors.h"

using namespace osp;
using osp::iotest::expect_error;
using osp::iotest::TempDir;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Writes `text` with stdio and reports every write error as an osp::Error (what a real writer does).
void put(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  OSP_CHECK(f, "cannot open ", path);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  OSP_CHECK(ok && closed, "write to ", path, " failed");
}

// Everything in `dir` except the names listed.
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(AtomicFile, WritesNewFileAndLeavesNoTemporary) {
  TempDir d;
  const std::string out = d.file("a.bin");
  std::string tmp_seen;
  io::write_file_atomic(out, [&](const std::string& tmp) {
    tmp_seen = tmp;
    EXPECT_EQ(fs::path(tmp).parent_path(), d.path);            // beside the target
    EXPECT_EQ(fs::path(tmp).filename().string()[0], '.');       // hidden
    EXPECT_FALSE(fs::exists(out));                              // target not there yet
    put(tmp, "hello");
  }, io::Overwrite::Refuse);
  EXPECT_EQ(slurp(out), "hello");
  EXPECT_FALSE(fs::exists(tmp_seen));
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"a.bin"});
  // Mode follows the umask like a plain open(): readable by the owner at least, not 0600-only temp mode.
  struct stat st {};
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  const mode_t um = ::umask(0);
  ::umask(um);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~um);
}

TEST(AtomicFile, RefusesExistingTargetUnlessAllowed) {
  TempDir d;
  const std::string out = d.file("a.bin");
  put(out, "old");
  expect_error([&] { io::check_output_path(out, io::Overwrite::Refuse); }, {out.c_str(), "--overwrite"});
  bool called = false;
  expect_error([&] { io::write_file_atomic(out, [&](const std::string& t) { called = true; put(t, "new"); },
                                           io::Overwrite::Refuse); },
               {"already exists", "--overwrite"});
  EXPECT_FALSE(called);  // refused before any work
  EXPECT_EQ(slurp(out), "old");
  io::write_file_atomic(out, [&](const std::string& t) { put(t, "new"); }, io::Overwrite::Allow);
  EXPECT_EQ(slurp(out), "new");
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"a.bin"});
}

TEST(AtomicFile, FailedWriteKeepsPreviousOutputAndRemovesTemporary) {
  TempDir d;
  const std::string out = d.file("a.bin");
  put(out, "previous");
  expect_error([&] {
    io::write_file_atomic(out, [&](const std::string& t) {
      put(t, "half of the new cont");
      fail("encoder broke");
    }, io::Overwrite::Allow);
  }, {"encoder broke"});
  EXPECT_EQ(slurp(out), "previous");
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"a.bin"});
  // A fresh target that fails leaves nothing at all.
  const std::string fresh = d.file("b.bin");
  EXPECT_THROW(io::write_file_atomic(fresh, [&](const std::string& t) { put(t, "x"); throw std::runtime_error("boom"); },
                                     io::Overwrite::Refuse),
               std::runtime_error);
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"a.bin"});
}

TEST(AtomicFile, InjectedDiskFullAtCommitKeepsPreviousOutput) {
  TempDir d;
  const std::string out = d.file("a.bin");
  put(out, "previous");
  io::fail_atomic_commit_for_tests(1);
  expect_error([&] { io::write_file_atomic(out, [&](const std::string& t) { put(t, "new"); }, io::Overwrite::Allow); },
               {out.c_str(), "No space left on device"});
  EXPECT_EQ(slurp(out), "previous");
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"a.bin"});
  // The hook fires once: the next write goes through.
  io::write_file_atomic(out, [&](const std::string& t) { put(t, "new"); }, io::Overwrite::Allow);
  EXPECT_EQ(slurp(out), "new");
}

// A real write failure: a child process with a 64 KiB file-size limit (SIGXFSZ ignored, so
// writes past it fail with EFBIG, as on a full disk) tries to replace a file with 1 MiB.
TEST(AtomicFile, FileSizeLimitInChildKeepsPreviousOutput) {
  TempDir d;
  const std::string out = d.file("a.bin");
  put(out, "previous");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl {64 << 10, 64 << 10};
    if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(3);
    try {
      io::write_file_atomic(out, [&](const std::string& t) { put(t, std::string(1 << 20, 'x')); },
                            io::Overwrite::Allow);
    } catch (const Error&) {
      ::_exit(0);  // the failure was reported
    } catch (...) {
      ::_exit(4);
    }
    ::_exit(5);  // the write "succeeded" past the limit: wrong
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(slurp(out), "previous");
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"a.bin"});
}

TEST(AtomicFile, RejectsPathsThatCannotWork) {
  TempDir d;
  expect_error([&] { io::check_output_path("", io::Overwrite::Allow); }, {"empty"});
  expect_error([&] { io::check_output_path(d.path.string(), io::Overwrite::Allow); }, {"is a folder"});
  expect_error([&] { io::check_output_path(d.file("sub/"), io::Overwrite::Allow); }, {"names a folder"});
  expect_error([&] { io::check_output_path(d.file("missing/x.mp4"), io::Overwrite::Allow); },
               {"missing", "does not exist"});
  put(d.file("plain"), "x");
  expect_error([&] { io::check_output_path(d.file("plain/x.mp4"), io::Overwrite::Allow); }, {"not a folder"});
  expect_error([&] { io::check_output_path("/proc/self/x.mp4", io::Overwrite::Allow); }, {"/proc"});
  expect_error([&] { io::check_output_path("/sys/kernel/x.mp4", io::Overwrite::Allow); }, {"/sys"});
  expect_error([&] { io::check_output_path("/dev/x.mp4", io::Overwrite::Allow); }, {"/dev"});
  expect_error([&] { io::check_output_path("/dev/null", io::Overwrite::Allow); }, {"not a regular file"});
  ASSERT_EQ(::mkfifo(d.file("fifo").c_str(), 0600), 0);
  expect_error([&] { io::check_output_path(d.file("fifo"), io::Overwrite::Allow); }, {"not a regular file"});
  if (::geteuid() != 0) {  // root writes anywhere
    fs::create_directories(d.path / "ro");
    fs::permissions(d.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { io::check_output_path(d.file("ro/x.mp4"), io::Overwrite::Allow); }, {"not writable"});
    fs::permissions(d.path / "ro", fs::perms::owner_all);
  }
  EXPECT_NO_THROW(io::check_output_path(d.file("new.mp4"), io::Overwrite::Refuse));
}

TEST(AtomicDir, WritesFolderInOneStepAndRefusesFramesAlreadyThere) {
  TempDir d;
  const std::string out = d.file("frames");
  io::write_dir_atomic(out + "/", [&](const std::string& tmp) {
    EXPECT_FALSE(fs::exists(out));
    put((fs::path(tmp) / "frame_0000.png").string(), "f0");
    put((fs::path(tmp) / "frame_0001.png").string(), "f1");
  }, io::Overwrite::Refuse);
  EXPECT_EQ(entries(out), (std::vector<std::string>{"frame_0000.png", "frame_0001.png"}));
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"frames"});
  expect_error([&] { io::write_dir_atomic(out, [&](const std::string&) {}, io::Overwrite::Refuse); },
               {"already holds files", "--overwrite"});
  // An empty existing folder is free.
  fs::create_directories(d.path / "empty");
  io::write_dir_atomic(d.file("empty"), [&](const std::string& tmp) { put((fs::path(tmp) / "a").string(), "a"); },
                       io::Overwrite::Refuse);
  EXPECT_EQ(entries(d.path / "empty"), std::vector<std::string>{"a"});
  // --overwrite swaps the whole folder; the previous frames are gone, no temporaries remain.
  io::write_dir_atomic(out, [&](const std::string& tmp) { put((fs::path(tmp) / "frame_0000.png").string(), "new"); },
                       io::Overwrite::Allow);
  EXPECT_EQ(entries(out), std::vector<std::string>{"frame_0000.png"});
  EXPECT_EQ(slurp(fs::path(out) / "frame_0000.png"), "new");
  EXPECT_EQ(entries(d.path), (std::vector<std::string>{"empty", "frames"}));
}

TEST(AtomicDir, FailedWriteKeepsPreviousFolder) {
  TempDir d;
  const std::string out = d.file("frames");
  fs::create_directories(out);
  put((fs::path(out) / "frame_0000.png").string(), "old");
  expect_error([&] {
    io::write_dir_atomic(out, [&](const std::string& tmp) {
      put((fs::path(tmp) / "frame_0000.png").string(), "new");
      fail("decoder broke");
    }, io::Overwrite::Allow);
  }, {"decoder broke"});
  io::fail_atomic_commit_for_tests(1);
  expect_error([&] {
    io::write_dir_atomic(out, [&](const std::string& tmp) { put((fs::path(tmp) / "frame_0000.png").string(), "new"); },
                         io::Overwrite::Allow);
  }, {"No space left"});
  EXPECT_EQ(entries(out), std::vector<std::string>{"frame_0000.png"});
  EXPECT_EQ(slurp(fs::path(out) / "frame_0000.png"), "old");
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"frames"});
  expect_error([&] { io::check_output_dir(d.file("frames/frame_0000.png"), io::Overwrite::Allow); },
               {"not a folder"});
  expect_error([&] { io::check_output_dir("/proc/osp_frames/", io::Overwrite::Allow); }, {"/proc"});
}

// save_safetensors goes through write_file_atomic: a write that hits the file-size limit (as a
// full disk would) leaves the previous checkpoint readable and no temporary; Refuse refuses.
TEST(AtomicFile, SafetensorsFullDiskKeepsPreviousCheckpoint) {
  TempDir d;
  const std::string out = d.file("ck.safetensors");
  io::save_safetensors(out, {{"w", Tensor::from_vector({1, 2, 3}, {3})}});
  const std::string before = slurp(out);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl {16 << 10, 16 << 10};
    if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(3);
    try {
      io::save_safetensors(out, {{"w", Tensor::zeros({1 << 16}, DType::F32)}});  // 256 KiB
    } catch (const Error& e) {
      ::_exit(std::string(e.what()).find("ck.safetensors") != std::string::npos ? 0 : 6);
    } catch (...) {
      ::_exit(4);
    }
    ::_exit(5);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(slurp(out), before);
  EXPECT_EQ(entries(d.path), std::vector<std::string>{"ck.safetensors"});
  expect_error([&] { io::save_safetensors(out, {{"w", Tensor::zeros({1}, DType::F32)}}, {}, io::Overwrite::Refuse); },
               {"already exists"});
  EXPECT_EQ(slurp(out), before);
}
