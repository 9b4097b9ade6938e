// The flags of a training subcommand that mirror the fields of its options struct, plus
// --config (a JSON or YAML file — .yaml / .yml, io/yaml.h — of the same names, or of OSP-Next's
// config names where they fit: train/reference_config.h): every flag writes into a staging copy, and
// resolve() starts from the defaults, applies --config, then the flags given on the command
// line (which win over the file). Shared by `osp train` and `osp rl`.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "osp/io/yaml.h"
#include "osp/train/output_files.h"

namespace osp::cli {

template <typename Options>
class ConfigFlags {
 public:
  explicit ConfigFlags(CLI::App* app) : app_(app) {
    app_->add_option("--config", *config_file_,
                     "JSON or YAML (.yaml/.yml) file of settings: the flags' names (or OSP-Next's config names "
                     "where they fit); unknown ones are errors");
  }

  template <typename T>
  void option(const std::string& name, T Options::*field, const std::string& help) {
    auto cli = cli_;
    add(app_->add_option(name, (*cli).*field, help), [cli, field](Options& o) { o.*field = (*cli).*field; });
  }
  template <typename T>
  void flag(const std::string& name, T Options::*field, const std::string& help) {
    auto cli = cli_;
    add(app_->add_flag(name, (*cli).*field, help), [cli, field](Options& o) { o.*field = (*cli).*field; });
  }
  // An option bound elsewhere; `copy` moves its value into the options when it is given.
  void add(CLI::Option* opt, std::function<void(Options&)> copy) { given_.emplace_back(opt, std::move(copy)); }

  // The defaults, then --config, then the flags given.
  Options resolve() const {
    Options o;
    if (!config_file_->empty()) {
      const std::string text = train::read_text_file(*config_file_);
      o.apply_json(io::is_yaml_path(*config_file_) ? io::parse_yaml(text, *config_file_).dump() : text, *config_file_);
    }
    for (const auto& [opt, copy] : given_)
      if (opt->count() > 0) copy(o);
    return o;
  }

 private:
  CLI::App* app_;
  std::shared_ptr<Options> cli_ = std::make_shared<Options>();
  std::shared_ptr<std::string> config_file_ = std::make_shared<std::string>();
  std::vector<std::pair<CLI::Option*, std::function<void(Options&)>>> given_;
};

}  // namespace osp::cli
