// `osp generate --prompts FILE`: many videos with the models loaded once (Pipeline).
//
// FILE holds one item per line: a plain prompt, or a JSON object of settings (pipeline/request.h,
// "out" allowed) over the command line's. Blank lines and lines starting with '#' are skipped.
// Outputs go into the folder `out_dir`: item n (1-based line number L) is
// `out_dir/LLLL-<prompt slug>.mp4` (PNG frames: that name without .mp4 as a folder) unless its
// JSON gives "out" (a relative path is taken inside out_dir). A failing item (bad JSON, bad
// settings, an existing output, an error while running) is reported and skipped; the others
// still run. Ctrl-C stops the batch at the next safe point (the item in progress writes nothing).
#pragma once
#include <string>
#include <vector>

#include "osp/pipeline/pipeline.h"

namespace osp::pipeline {

struct BatchItemResult {
  int line = 0;          // 1-based line number in the file
  std::string prompt;
  std::string out;       // the output path (planned)
  bool ok = false;
  std::string error;     // when !ok
  int64_t seed = -1;
  double seconds = 0;
};

struct BatchResult {
  std::vector<BatchItemResult> items;
  int ok = 0, failed = 0;
  bool interrupted = false;  // Ctrl-C: the items after the current one did not run
  double load_seconds = 0;   // first-use model loading is counted in the first item
};

// One parsed line: its settings over `base`, or the error that makes it fail.
struct BatchLine {
  int line = 0;
  GenerateOptions opt;
  std::string error;
};
// Parses FILE (errors for a missing/unreadable file or a file without any item).
std::vector<BatchLine> read_batch_file(const std::string& path, const GenerateOptions& base,
                                       const std::string& out_dir);

// Runs every item; writes one line per item and a summary to stderr (at Info).
BatchResult run_batch(const std::string& model_dir, const GenerateOptions& base, const std::string& prompts_file);

}  // namespace osp::pipeline
