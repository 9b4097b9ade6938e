#include "osp/pipeline/batch.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/request.h"

namespace fs = std::filesystem;

namespace osp::pipeline {

std::vector<BatchLine> read_batch_file(const std::string& path, const GenerateOptions& base,
                                       const std::string& out_dir) {
  std::error_code ec;
  OSP_CHECK(fs::is_regular_file(path, ec), "--prompts ", path, " is not a readable file");
  std::ifstream f(path);
  OSP_CHECK(f.good(), "--prompts ", path, ": cannot open it");
  std::vector<BatchLine> items;
  std::string line;
  int n = 0;
  const bool mp4 = io::video_writer_available();
  while (std::getline(f, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    BatchLine b;
    b.line = n;
    b.opt = base;
    b.opt.out.clear();
    try {
      if (line[first] == '{') {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          fail(str("line ", n, " is not valid JSON: ", e.what()));
        }
        apply_json_settings(j, b.opt, /*allow_out=*/true);
      } else {
        b.opt.prompt = line.substr(first);
      }
      char idx[16];
      std::snprintf(idx, sizeof idx, "%04d-", n);
      const std::string name = idx + prompt_slug(b.opt.prompt);
      if (b.opt.out.empty())
        b.opt.out = (fs::path(out_dir) / (mp4 ? name + ".mp4" : name + "/")).string();
      else if (fs::path(b.opt.out).is_relative())
        b.opt.out = (fs::path(out_dir) / b.opt.out).string();
    } catch (const Error& e) {
      b.error = e.what();
    }
    items.push_back(std::move(b));
  }
  OSP_CHECK(!items.empty(), "--prompts ", path, " holds no prompt (blank lines and # comments are skipped)");
  return items;
}

BatchResult run_batch(const std::string& model_dir, const GenerateOptions& base, const std::string& prompts_file) {
  using Clock = std::chrono::steady_clock;
  std::error_code ec;
  OSP_CHECK(base.prompt.empty(), "--prompt and --prompts contradict each other: the prompts come from ",
            prompts_file, " (give one of them)");
  const std::string& out_dir = base.out;
  OSP_CHECK(!out_dir.empty() && (out_dir.back() == '/' || fs::is_directory(out_dir, ec)),
            "--prompts writes one video per line into a folder: give --out DIR/ (got '", out_dir, "')");
  if (!fs::is_directory(out_dir, ec)) {
    fs::create_directory(out_dir, ec);  // the parent must exist, as for any --out
    OSP_CHECK(!ec, "--out ", out_dir, ": cannot create the folder (", ec.message(), ")");
  }
  std::vector<BatchLine> lines = read_batch_file(prompts_file, base, out_dir);
  const bool info = log_level() >= LogLevel::Info;
  BatchResult br;
  const int total = int(lines.size());
  Pipeline pipe(model_dir, pipeline_options(base));
  std::set<std::string> planned;
  int k = 0;
  for (BatchLine& b : lines) {
    ++k;
    BatchItemResult r;
    r.line = b.line;
    r.prompt = b.opt.prompt;
    r.out = b.opt.out;
    const auto t0 = Clock::now();
    try {
      if (!b.error.empty()) fail(b.error);
      OSP_CHECK(planned.insert(fs::weakly_canonical(b.opt.out).string()).second, "output ", b.opt.out,
                " is already written by an earlier line of this batch");
      const Plan plan = pipe.plan(b.opt);
      r.seed = plan.opt.seed;
      if (info) std::fprintf(stderr, "osp: [%d/%d] line %d: %s\n", k, total, b.line, plan.opt.prompt.c_str());
      const GenerateResult g = pipe.run(plan);
      if (g.interrupted) {
        br.interrupted = true;
        r.error = "interrupted (Ctrl-C) during " + g.interrupted_stage;
      } else {
        r.ok = true;
      }
    } catch (const Error& e) {
      r.error = e.what();
    }
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r.ok) {
      ++br.ok;
      if (info)
        std::fprintf(stderr, "osp: [%d/%d] line %d: wrote %s (seed %lld, %.1f s)\n", k, total, b.line, r.out.c_str(),
                     (long long)r.seed, r.seconds);
    } else {
      ++br.failed;
      std::fprintf(stderr, "osp: [%d/%d] line %d FAILED: %s\n", k, total, b.line, r.error.c_str());
    }
    br.items.push_back(std::move(r));
    if (br.interrupted) break;
  }
  std::fprintf(stderr, "osp: batch: %d of %d written, %d failed%s", br.ok, total, br.failed,
               br.interrupted ? str(", stopped by Ctrl-C (", total - int(br.items.size()), " not run)").c_str() : "");
  if (br.failed) {
    std::string lines_failed;
    for (const auto& it : br.items)
      if (!it.ok) lines_failed += (lines_failed.empty() ? "" : ", ") + std::to_string(it.line);
    std::fprintf(stderr, " (line%s %s)", br.failed > 1 ? "s" : "", lines_failed.c_str());
  }
  std::fprintf(stderr, "\n");
  return br;
}

}  // namespace osp::pipeline
