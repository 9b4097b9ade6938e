#include "osp/pipeline/model_dir.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "osp/core/error.h"
#include "osp/io/name_map.h"

namespace fs = std::filesystem;

namespace osp::pipeline {

const char* layout_name(ModelLayout l) {
  switch (l) {
    case ModelLayout::WanOriginal: return "Wan2.1 (original layout)";
    case ModelLayout::WanDiffusers: return "Wan2.1 (diffusers layout)";
    case ModelLayout::OspNext: return "OSP-Next";
    case ModelLayout::Demo: return "osp-demo-random (random weights: produces noise)";
  }
  return "?";
}

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}
bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// First existing file among `names` in `dir`, else "".
std::string first_of(const fs::path& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (is_file(dir / n)) return (dir / n).string();
  return "";
}

// The DiT weights in `dir`: an index json, diffusion_pytorch_model.safetensors or shards.
std::string find_dit(const fs::path& dir) {
  if (!is_dir(dir)) return "";
  std::vector<std::string> shards;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("diffusion_pytorch_model", 0) == 0 &&
        (n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json")))
      shards.push_back(n);
  }
  if (shards.empty()) return "";
  return dir.string();  // io::open_checkpoint resolves the folder (index > single file)
}

bool config_declares_skiparse(const std::string& path) {
  if (path.empty()) return false;
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string s = ss.str();
  return s.find("skiparse") != std::string::npos || s.find("num_full_blocks") != std::string::npos ||
         s.find("sparse_ratio") != std::string::npos;
}

}  // namespace

std::vector<std::string> missing_files(const ModelFiles& f) {
  std::vector<std::string> miss;
  const fs::path r(f.root);
  const bool diff = f.layout == ModelLayout::WanDiffusers;
  if (f.dit.empty())
    miss.push_back(diff ? (r / "transformer" / "diffusion_pytorch_model*.safetensors").string()
                        : (r / "diffusion_pytorch_model*.safetensors").string());
  if (f.dit_config.empty() && f.layout != ModelLayout::Demo)
    miss.push_back(diff ? (r / "transformer" / "config.json").string() : (r / "config.json").string());
  if (f.t5.empty())
    miss.push_back(diff ? (r / "text_encoder" / "model*.safetensors").string()
                        : (r / "models_t5_umt5-xxl-enc-bf16.pth").string());
  if (f.vae.empty())
    miss.push_back(diff ? (r / "vae" / "diffusion_pytorch_model.safetensors").string()
                        : (r / "Wan2.1_VAE.pth").string());
  if (f.tokenizer.empty())
    miss.push_back(diff ? (r / "tokenizer" / "spiece.model").string()
                        : (r / "google" / "umt5-xxl" / "spiece.model").string());
  return miss;
}

ModelFiles detect_model_dir(const std::string& dir_in) {
  OSP_CHECK(!dir_in.empty(), "no model folder given (--model DIR)");
  const fs::path dir(dir_in);
  OSP_CHECK(fs::exists(dir), "model folder ", dir_in, " does not exist");
  OSP_CHECK(is_dir(dir), "--model expects a folder (a Wan2.1 / OSP-Next model directory), but ",
            dir_in, " is a file; `osp inspect FILE` shows what a single checkpoint holds");
  ModelFiles f;
  f.root = dir.string();
  const bool diffusers = is_dir(dir / "transformer") || is_file(dir / "model_index.json");
  if (diffusers) {
    f.layout = ModelLayout::WanDiffusers;
    f.dit = find_dit(dir / "transformer");
    f.dit_config = first_of(dir / "transformer", {"config.json"});
    if (is_dir(dir / "text_encoder")) {
      for (const auto& e : fs::directory_iterator(dir / "text_encoder")) {
        const std::string n = e.path().filename().string();
        if (n.ends_with(".safetensors.index.json")) f.t5 = e.path().string();
      }
      if (f.t5.empty()) f.t5 = first_of(dir / "text_encoder", {"model.safetensors"});
    }
    f.t5_hf_names = true;
    f.vae = first_of(dir / "vae", {"Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors"});
    if (f.vae.empty()) f.vae = first_of(dir, {"Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors"});
    if (f.vae.empty()) f.vae = first_of(dir / "vae", {"diffusion_pytorch_model.safetensors"});  // open_vae renames
    f.tokenizer = first_of(dir / "tokenizer", {"spiece.model"});
  } else {
    f.layout = ModelLayout::WanOriginal;
    f.dit = find_dit(dir);
    f.dit_config = first_of(dir, {"config.json"});
    f.t5 = first_of(dir, {"models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.safetensors"});
    f.vae = first_of(dir, {"Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors"});
    f.tokenizer = first_of(dir / "google" / "umt5-xxl", {"spiece.model"});
    if (is_file(dir / "OSP_DEMO_RANDOM_WEIGHTS"))
      f.layout = ModelLayout::Demo;
    else if (config_declares_skiparse(f.dit_config))
      f.layout = ModelLayout::OspNext;
  }
  const auto miss = missing_files(f);
  if (!miss.empty()) {
    const bool nothing = f.dit.empty() && f.t5.empty() && f.vae.empty() && f.tokenizer.empty();
    std::string msg = nothing ? str(dir_in, " does not look like a Wan2.1 / OSP-Next model folder; expected (original layout):")
                              : str(dir_in, " looks like a ", layout_name(f.layout), " model folder but is missing:");
    for (const auto& m : miss) msg += "\n  " + m;
    if (nothing)
      msg += "\n(or the diffusers layout: transformer/, text_encoder/, vae/, tokenizer/). "
             "Download e.g. Wan-AI/Wan2.1-T2V-1.3B, or create a small random test model with "
             "`osp make-demo-model DIR`.";
    fail(msg);
  }
  return f;
}

io::Checkpoint open_vae(const ModelFiles& f) { return io::vae_with_original_names(io::open_checkpoint(f.vae)); }

}  // namespace osp::pipeline
