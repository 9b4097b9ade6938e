// Safe outputs: every file or folder osp writes appears complete or not at all.
//
// A writer writes a temporary file (or folder) beside the target — same folder, hidden name
// with a random suffix — which is fsync'ed and renamed over the target only when complete. A
// failed write (full disk, a write error, an exception, Ctrl-C) removes the temporary and leaves
// an existing target untouched. An existing target is replaced only with Overwrite::Allow.
//
// check_output_path / check_output_dir run before any work starts, so a path that cannot work
// (a folder where a file is expected, a missing or read-only parent, /proc, /sys, /dev) is
// refused at once rather than after an hour of sampling.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace osp::io {

// Where an existing target is allowed to be replaced.
enum class Overwrite : uint8_t { Refuse, Allow };

// Checks that `path` can be written before any work starts: parent folder exists and is writable,
// path is not a directory / not under /proc, /sys or /dev, and (Overwrite::Refuse) does not exist
// yet. Throws osp::Error naming the path and the rule (suggesting --overwrite where it applies).
void check_output_path(const std::string& path, Overwrite ow);

// Writes `path` atomically: `write(tmp)` writes a temporary file beside the target (same folder,
// hidden name with a random suffix); on success it is fsync'ed and renamed over the target (and the
// folder fsync'ed); on any exception (or a write error such as a full disk) the temporary file is
// removed, an existing target is untouched, and the exception propagates.
void write_file_atomic(const std::string& path, const std::function<void(const std::string& tmp)>& write,
                       Overwrite ow);
// write_file_atomic of a whole byte buffer / text; a short write (disk full) throws naming the path.
void write_bytes_atomic(const std::string& path, const std::vector<uint8_t>& bytes, Overwrite ow);
void write_text_atomic(const std::string& path, const std::string& text, Overwrite ow);

// The same two for an output folder (PNG frames). A folder that exists and is empty counts as
// free; one that holds anything is refused under Overwrite::Refuse.
void check_output_dir(const std::string& dir, Overwrite ow);
// `write(tmp_dir)` fills a fresh temporary folder beside `dir`; every file in it is fsync'ed and the
// folder takes the place of `dir` in one rename (with Overwrite::Allow an existing `dir` is swapped
// out and then removed). On failure the temporary folder is removed and `dir` is untouched.
void write_dir_atomic(const std::string& dir, const std::function<void(const std::string& tmp_dir)>& write,
                      Overwrite ow);

// Test hook: the next `n`-th call that would finish an atomic write (n = 1: the next one) fails
// as if the disk were full (ENOSPC at fsync), exercising the clean-up path. 0 disables it.
void fail_atomic_commit_for_tests(int n);

}  // namespace osp::io
