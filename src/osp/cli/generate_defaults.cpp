#include "osp/cli/generate_defaults.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "osp/core/error.h"

namespace fs = std::filesystem;

namespace osp::cli {

std::string resolve_generate_model(const std::string& given) {
  if (!given.empty()) return given;
  std::vector<fs::path> tried{fs::current_path() / kDefaultModel};
  std::error_code ec;
  const fs::path self = fs::canonical("/proc/self/exe", ec);
  if (!ec) {
    tried.push_back(self.parent_path().parent_path() / kDefaultModel);
    tried.push_back(self.parent_path().parent_path().parent_path() / kDefaultModel);
  }
  for (const fs::path& p : tried)
    if (fs::is_directory(p)) return p.lexically_normal().string();
  std::string where;
  for (const fs::path& p : tried) where += "\n  " + p.lexically_normal().string();
  fail(str("no --model given, and the default model (", kDefaultModel, ") is not in any of:", where,
           "\nPass -m/--model MODEL_DIR"));
}

std::string apply_generate_defaults(const CLI::App& gen, const std::string& model_dir, std::string& size,
                                    pipeline::GenerateOptions& g) {
  const fs::path file = fs::path(model_dir) / "osp_generate.json";
  if (!fs::is_regular_file(file)) return "";
  std::ifstream in(file);
  OSP_CHECK(in, "cannot read ", file.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(str(file.string(), " is not valid JSON: ", e.what()));
  }
  OSP_CHECK(j.is_object(), file.string(), " must hold a JSON object of generation settings");
  std::ostringstream applied;
  auto given = [&](const char* flag) { return gen.count(flag) > 0; };
  auto note = [&](const std::string& k, const std::string& v) { applied << (applied.tellp() > 0 ? ", " : "") << k << " " << v; };
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const nlohmann::json& v = it.value();
    auto need = [&](bool ok, const char* what) {
      OSP_CHECK(ok, file.string(), ": \"", k, "\" must be ", what, ", got ", v.dump());
    };
    if (k == "size") {
      need(v.is_string(), "a string WIDTHxHEIGHT");
      if (!given("--size")) size = v.get<std::string>(), note("size", size);
    } else if (k == "frames") {
      need(v.is_number_integer(), "an integer");
      if (!given("--frames")) g.frames = v.get<int>(), note("frames", std::to_string(g.frames));
    } else if (k == "steps") {
      need(v.is_number_integer(), "an integer");
      if (!given("--steps")) g.steps = v.get<int>(), note("steps", std::to_string(g.steps));
    } else if (k == "guidance") {
      need(v.is_number(), "a number");
      if (!given("--guidance")) g.guidance = v.get<float>(), note("guidance", v.dump());
    } else if (k == "sampler") {
      need(v.is_string(), "a string (unipc | euler)");
      if (!given("--sampler")) g.sampler = v.get<std::string>(), note("sampler", g.sampler);
    } else if (k == "shift") {
      need(v.is_number(), "a number");
      if (!given("--shift")) g.shift = v.get<double>(), note("shift", v.dump());
    } else if (k == "fps") {
      need(v.is_number_integer(), "an integer");
      if (!given("--fps")) g.fps = v.get<int>(), note("fps", std::to_string(g.fps));
    } else {
      fail(str(file.string(), ": unknown setting \"", k, "\" (known: size, frames, steps, guidance, sampler, shift, fps)"));
    }
  }
  return applied.str();
}

}  // namespace osp::cli
