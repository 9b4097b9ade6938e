// The `osp` command line: generate | inspect | convert | make-demo-model | bench.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>

#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/progress.h"
#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/io/video_writer.h"
#include "osp/model/dit_config.h"
#include "osp/model/hif8_checkpoint.h"
#include "osp/ops/cpu/threads.h"
#include "osp/pipeline/demo_model.h"
#include "osp/pipeline/model_dir.h"
#include "osp/pipeline/pipeline.h"
#include "osp/cli/generate_defaults.h"
#include "osp/cli/train_command.h"
#include "osp/cli/data_commands.h"
#include "osp/cli/run_command.h"
#include "osp/cli/serve_command.h"
#include "osp/core/settings.h"

namespace fs = std::filesystem;
namespace osp::cli { void add_tiny_model_commands(CLI::App& app); }  // cli/train_vae_command.cpp
namespace osp::cli { void add_rl_command(CLI::App& app); }  // cli/rl_command.cpp
using namespace osp;

namespace {

void set_verbosity(bool quiet, bool verbose) {
  if (quiet) set_log_level(LogLevel::Warn);
  if (verbose) set_log_level(LogLevel::Verbose);
}

void print_dit_layout(const model::DiTConfig& cfg) {
  std::cout << "DiT config: " << cfg.summary() << "\n";
  const auto kinds = cfg.block_kinds();
  std::cout << "block layout (" << kinds.size() << " blocks):";
  for (auto k : kinds) std::cout << " " << sparse::block_kind_name(k);
  std::cout << "\n";
}

int inspect(const std::string& path, bool all) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  OSP_CHECK(fs::exists(st), path, " does not exist");
  OSP_CHECK(fs::is_regular_file(st) || fs::is_directory(st), path,
            " is not a regular file or folder (a FIFO, device or socket); osp inspect reads files only");
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  if (ext == ".mp4" || ext == ".mkv" || ext == ".webm" || ext == ".avi") {
    const io::VideoProbe p = io::probe_video(path);
    std::cout << path << ": " << p.codec << " " << p.width << "x" << p.height << ", " << p.frames
              << " frames at " << p.fps << " fps\n";
    for (const auto& [k, v] : p.metadata) std::cout << "  " << k << ": " << v << "\n";
    return 0;
  }
  if (fs::is_directory(path)) {
    const bool looks_like_model = fs::exists(fs::path(path) / "config.json") ||
                                  fs::exists(fs::path(path) / "transformer") ||
                                  fs::exists(fs::path(path) / "Wan2.1_VAE.pth");
    if (looks_like_model) {
      const pipeline::ModelFiles f = pipeline::detect_model_dir(path);
      std::cout << path << ": " << pipeline::layout_name(f.layout) << "\n"
                << "  DiT:        " << io::resolve_checkpoint_path(f.dit) << "\n"
                << "  config:     " << (f.dit_config.empty() ? "(inferred from shapes)" : f.dit_config) << "\n"
                << "  umT5:       " << f.t5 << "\n"
                << "  VAE:        " << f.vae << "\n"
                << "  tokenizer:  " << f.tokenizer << "\n";
      const io::Checkpoint ck = io::dit_with_original_names(io::open_checkpoint(f.dit));
      model::DiTConfig cfg;
      if (!f.dit_config.empty()) {
        cfg = model::DiTConfig::from_json_file(f.dit_config);
      } else {
        std::map<std::string, Shape> shapes;
        for (const auto& n : ck->names()) shapes[n] = ck->info(n).shape;
        cfg = model::DiTConfig::infer(shapes);
      }
      size_t params = 0;
      for (const auto& n : ck->names()) params += size_t(shape_numel(ck->info(n).shape));
      std::cout << "  DiT tensors: " << ck->size() << ", parameters: " << params << "\n";
      print_dit_layout(cfg);
      return 0;
    }
  }
  if (osp::cli::inspect_lora(path)) return 0;
  const io::Checkpoint ck = io::open_checkpoint(path);
  const auto names = ck->names();
  size_t params = 0;
  for (const auto& n : names) params += size_t(shape_numel(ck->info(n).shape));
  std::cout << io::resolve_checkpoint_path(path) << ": " << ck->format() << ", " << names.size()
            << " tensors, " << params << " parameters\n";
  for (const auto& [k, v] : ck->metadata())
    std::cout << "  metadata " << k << ": " << (v.size() > 200 ? v.substr(0, 200) + "..." : v) << "\n";
  const size_t show = all ? names.size() : std::min<size_t>(names.size(), 40);
  for (size_t i = 0; i < show; ++i) {
    const auto info = ck->info(names[i]);
    std::cout << "  " << names[i] << "  " << dtype_name(info.dtype) << " " << shape_str(info.shape) << "\n";
  }
  if (show < names.size()) std::cout << "  ... " << names.size() - show << " more (--all lists them)\n";
  // A DiT? Report the detected naming, config and block layout. Names may carry a prefix
  // (e.g. "weights." in the golden files): it is the part before "patch_embedding.weight".
  try {
    std::string prefix;
    for (const auto& n : names) {
      const std::string key = "patch_embedding.weight";
      if (n.size() >= key.size() && n.compare(n.size() - key.size(), key.size(), key) == 0) {
        prefix = n.substr(0, n.size() - key.size());
        break;
      }
    }
    io::Checkpoint dit = prefix.empty() ? ck : io::strip_prefix(ck, prefix);
    const auto naming = io::detect_dit_naming(dit->names());
    dit = io::dit_with_original_names(dit);
    std::map<std::string, Shape> shapes;
    for (const auto& n : dit->names()) shapes[n] = dit->info(n).shape;
    model::DiTConfig cfg = model::DiTConfig::infer(shapes);
    const auto meta = ck->metadata().find("config");
    if (meta != ck->metadata().end()) cfg = model::DiTConfig::from_json(meta->second);
    std::cout << "detected a Wan DiT checkpoint (" << io::dit_naming_name(naming) << " names"
              << (prefix.empty() ? std::string() : ", prefix '" + prefix + "'") << ")\n";
    print_dit_layout(cfg);
  } catch (const Error& e) {
    log_verbose("not a DiT checkpoint: ", e.what());
  }
  return 0;
}

// Flags that contradict each other, or that would be ignored, are errors or stated warnings.
void check_generate_flags(const CLI::App& gen, const pipeline::GenerateOptions& g) {
  auto given = [&](const char* flag) { return gen.count(flag) > 0; };
  const bool blank_negative = std::all_of(g.negative_prompt.begin(), g.negative_prompt.end(),
                                          [](unsigned char c) { return std::isspace(c); });
  OSP_CHECK(!(g.no_negative && given("--negative-prompt")),
            "--negative-prompt and --no-negative contradict each other: give one of them");
  OSP_CHECK(!(given("--negative-prompt") && blank_negative),
            "--negative-prompt is empty: pass --no-negative for an empty negative prompt, or leave the "
            "flag out for Wan2.1's default one");
  if (g.guidance == 1.0f && (given("--negative-prompt") || g.no_negative))
    log_warn("--guidance 1 disables classifier-free guidance, so the negative prompt is not used");
  pipeline::warn_ineffective_settings(g);
  if (given("--fps") && pipeline::output_kind(g.out) == pipeline::OutputKind::PngFolder)
    log_warn("--fps is ignored for PNG frames (it is the frame rate of an MP4)");
}

}  // namespace

// `osp --version`: the version and what this build can do (the optional dependencies found at
// configure time), e.g. for scripts that choose MP4 or PNG output (scripts/demo.sh).
std::string version_line() {
  auto on = [](bool b) { return b ? "on" : "off"; };
#ifdef OSP_HAVE_CUDA
  const bool cuda = true;
#else
  const bool cuda = false;
#endif
#ifdef OSP_HAVE_CUDNN
  const bool cudnn = true;
#else
  const bool cudnn = false;
#endif
#ifdef OSP_HAVE_MPI
  const bool mpi = true;
#else
  const bool mpi = false;
#endif
#ifdef OSP_HAVE_NCCL
  const bool nccl = true;
#else
  const bool nccl = false;
#endif
#ifdef OSP_HAVE_HTTPLIB
  const bool http = true;
#else
  const bool http = false;
#endif
  return osp::str("osp " OSP_VERSION " (CUDA ", on(cuda), ", cuDNN ", on(cudnn), ", MPI ", on(mpi), ", NCCL ", on(nccl),
                  ", MP4 output (FFmpeg) ", on(osp::io::video_writer_available()), ", osp serve (cpp-httplib) ",
                  on(http), ")");
}

int main(int argc, char** argv) {
  // One OpenMP pool owns the CPU (ops/cpu/threads.h): may execute osp again with
  // OMP_WAIT_POLICY=PASSIVE (and OPENBLAS_NUM_THREADS=1 with a pthreads OpenBLAS), which the
  // new process's libgomp and OpenBLAS read and which it then removes, so what osp starts sees
  // the user's environment.
  osp::ops::cpu::reexec_with_thread_env(argv);
  const std::string thread_env = osp::ops::cpu::restore_thread_env();
  CLI::App app{"osp — OSP-Next / Wan2.1 text-to-video engine (C++/CUDA)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_line());
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "only warnings and errors");
  app.add_flag("-v,--verbose", verbose, "say which code paths run");

  // ---- generate
  pipeline::GenerateOptions g;
  std::string model_dir, size = "1280x720", prompts_file;
  auto* gen = app.add_subcommand("generate", "text to video");
  gen->add_option("-m,--model", model_dir,
                  "model folder (Wan2.1 original/diffusers, OSP-Next, demo); default: models/osp-next-tiny, "
                  "the model osp trained itself (its osp_generate.json supplies size, frames, steps, ...)");
  gen->add_option("-p,--prompt", g.prompt, "what the video shows (or --prompts FILE)");
  gen->add_option("-n,--negative-prompt", g.negative_prompt, "default: Wan2.1's Chinese negative prompt");
  gen->add_flag("--no-negative", g.no_negative, "use an empty negative prompt");
  gen->add_option("--size", size, "WIDTHxHEIGHT, multiples of 16")->capture_default_str();
  gen->add_option("--frames", g.frames, "4n+1 frames (81 = 5 s at 16 fps)")->capture_default_str();
  gen->add_option("--steps", g.steps, "sampling steps")->capture_default_str();
  gen->add_option("--sampler", g.sampler, "unipc (Wan2.1) | euler (OSP-Next)")->capture_default_str();
  gen->add_option("--shift", g.shift, "flow shift in (0, 100] (default 5 for unipc, 7 for euler)")
      ->check(CLI::Range(1e-6, 100.0));
  gen->add_option("--guidance,--cfg", g.guidance, "classifier-free guidance scale (1 = off)")->capture_default_str();
  gen->add_option("--seed", g.seed, "random seed (-1 = random, printed)")
      ->capture_default_str()->check(CLI::Range(int64_t(-1), std::numeric_limits<int64_t>::max()));
  gen->add_option("--noise", g.noise,
                  "initial latent from a .safetensors file ([16, T, H/8, W/8] or [1, 16, ...], f32/bf16/f16; e.g. the "
                  "reference's torch.randn) instead of the seeded noise");
  gen->add_option("--attention", g.attention, "auto | full | hybrid (Skiparse-2D)")->capture_default_str();
  gen->add_option("--cache", g.cache,
                  "step caching: none | teacache:THRESH (skip the DiT blocks while the accumulated change of "
                  "the timestep modulation stays below THRESH, reusing the last computed residual; 0 = off) | "
                  "magcache:THRESH[:K] (skip while the error predicted from the model's calibrated residual "
                  "magnitude ratios, <model>/magcache.json, stays below THRESH, at most K steps in a row, default 2)")
      ->capture_default_str();
  gen->add_option("--cache-calibrate", g.cache_calibrate,
                  "MagCache calibration: run uncached and write this run's residual magnitude ratios to FILE (the "
                  "model folder's magcache.json is what --cache magcache reads); one process");
  gen->add_option("--quant", g.quant, "none | hif8 | fp8")->capture_default_str();
  gen->add_option("--sp", g.sp, "none | ulysses | ssp (launch with mpirun -np N)")->capture_default_str();
  gen->add_flag("--cfg-parallel", g.cfg_parallel,
                "the conditional and unconditional CFG branches on two rank groups (mpirun -np 2, or -np 2S with "
                "--sp: S ranks per branch)");
  gen->add_option("--device", g.device, "cpu | cuda | cuda:N")->capture_default_str();
  gen->add_flag("--offload", g.offload, "text encoder on the CPU; stage weights kept on the host");
  gen->add_option("--dit-offload", g.dit_offload,
                  "DiT weights: none (resident) | blocks (streamed block by block from pinned host memory) | "
                  "auto (the memory plan picks: resident, CFG sequential, 8-bit with --quant hif8, streaming)")
      ->capture_default_str();
  gen->add_option("--max-vram", g.max_vram_gib,
                  "GPU memory limit in GiB: the memory plan must fit it and the GPU allocator enforces it (0 = none)");
  gen->add_option("-o,--out", g.out, "output .mp4, or a folder for PNG frames (ending in /)")->capture_default_str();
  gen->add_flag("--overwrite", g.overwrite, "replace an existing output (otherwise refused)");
  gen->add_option("--fps", g.fps, "frames per second of the MP4")->capture_default_str();
  size_t vae_tile_mb = 0;
  gen->add_option("--vae-budget-mb", vae_tile_mb, "VAE decode activation budget (tiling); 0 = auto");
  gen->add_option("--lora", g.loras, "LoRA FILE[:SCALE] merged into the DiT (repeatable)");
  gen->add_option("--prompts", prompts_file, "batch: one prompt (or JSON settings) per line, videos into --out DIR/");

  // ---- inspect
  std::string inspect_path;
  bool inspect_all = false;
  auto* ins = app.add_subcommand("inspect", "show a model folder, checkpoint or video");
  ins->add_option("path", inspect_path, "folder, .safetensors, index .json, .pth or .mp4")->required();
  ins->add_flag("--all", inspect_all, "list every tensor");

  // ---- convert
  std::string conv_in, conv_out, conv_quant = "hif8";
  auto* conv = app.add_subcommand("convert", "convert a checkpoint (HiF8 8-bit weights)");
  conv->add_option("--quant", conv_quant, "hif8")->capture_default_str();
  conv->add_option("in", conv_in, "input checkpoint (file or folder)")->required();
  conv->add_option("out", conv_out, "output .safetensors")->required();
  bool conv_overwrite = false;
  conv->add_flag("--overwrite", conv_overwrite, "replace an existing output file");

  // ---- make-demo-model
  std::string demo_dir;
  bool demo_full = false;
  uint64_t demo_seed = 0;
  auto* demo = app.add_subcommand("make-demo-model", "write a tiny RANDOM-weight model (produces noise)");
  demo->add_option("dir", demo_dir, "output folder")->required();
  demo->add_flag("--full-attention", demo_full, "Wan2.1-style full attention instead of the OSP-Next hybrid");
  demo->add_option("--seed", demo_seed, "weight seed")->capture_default_str();
  std::string demo_config;
  int demo_vae_dim = 16;
  demo->add_option("--config", demo_config,
                   "a DiT config.json (e.g. Wan2.1-T2V-1.3B's): random weights at that size and layout, "
                   "the umT5 at its text_dim (for timing real sizes)")
      ->check(CLI::ExistingFile);
  demo->add_option("--vae-dim", demo_vae_dim, "VAE base width (Wan2.1: 96)")->capture_default_str()->check(CLI::Range(4, 256));
  bool demo_overwrite = false;
  demo->add_flag("--overwrite", demo_overwrite, "replace an existing folder");

  // ---- bench
  std::string bench_name;
  std::vector<std::string> bench_args;
  auto* bench = app.add_subcommand("bench", "run one of the bench_* programs built next to osp");
  bench->add_option("name", bench_name, "benchmark name (without bench_); empty lists them");
  bench->add_option("args", bench_args, "arguments passed through");

  osp::cli::add_train_commands(app);  // osp train, osp encode-dataset (cli/train_command.cpp)
  osp::cli::add_data_commands(app);   // osp make-dataset, osp eval (cli/dataset_command.cpp, eval_command.cpp)
  osp::cli::add_tiny_model_commands(app);  // osp train-vae, make-text-encoder, encode-clips (cli/train_vae_command.cpp)
  osp::cli::add_serve_command(app);  // osp serve (cli/serve_command.cpp)
  osp::cli::add_rl_command(app);  // osp rl (cli/rl_command.cpp)

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;  // --help / --version: 0; a command-line error: 1
  }
  set_verbosity(quiet, verbose);
  log_verbose(osp::ops::cpu::threads_summary(thread_env));

  try {
    engine_settings();  // a bad OSP_* variable (core/settings.h) is an error now, not deep in a run
    if (*gen) {
      install_interrupt_handler();
      model_dir = osp::cli::resolve_generate_model(model_dir);
      const std::string applied = osp::cli::apply_generate_defaults(*gen, model_dir, size, g);
      if (!applied.empty()) log_info("using ", model_dir, "'s generation settings (osp_generate.json): ", applied);
      pipeline::parse_size(size, g.width, g.height);
      g.vae_tile_budget = vae_tile_mb << 20;
      check_generate_flags(*gen, g);
      if (!prompts_file.empty()) return osp::cli::generate_batch(model_dir, g, prompts_file);
      const pipeline::Plan plan = pipeline::plan_generation(model_dir, g);
      const pipeline::GenerateResult r = pipeline::generate(plan);
      if (r.interrupted) {
        std::fprintf(stderr, "osp: interrupted (Ctrl-C) during %s; nothing written\n", r.interrupted_stage.c_str());
        return 130;
      }
      if (!r.out_path.empty() && log_level() >= LogLevel::Info)
        std::fprintf(stderr, "osp: wrote %s (seed %lld, text %.1f s, DiT %.1f s, VAE %.1f s)\n",
                     r.out_path.c_str(), (long long)r.seed, r.seconds.at("text"), r.seconds.at("dit"),
                     r.seconds.at("vae"));
      return 0;
    }
    if (*ins) return inspect(inspect_path, inspect_all);
    if (*conv) {
      OSP_CHECK(conv_quant == "hif8", "osp convert: --quant must be hif8 (the only 8-bit storage format), got '",
                conv_quant, "'");
      install_interrupt_handler();
      model::Hif8ConvertOptions copt;
      copt.overwrite = conv_overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse;
      const auto rep = model::convert_checkpoint_hif8(conv_in, conv_out, copt);
      if (log_level() >= LogLevel::Info)
        std::printf("converted %zu weights to HiF8, copied %zu tensors: %.1f MiB -> %.1f MiB (%s)\n", rep.quantized,
                  rep.copied, rep.bytes_before / 1048576.0, rep.bytes_after / 1048576.0, conv_out.c_str());
      return 0;
    }
    if (*demo) {
      pipeline::DemoModelOptions o;
      o.hybrid = !demo_full;
      o.seed = demo_seed;
      o.dit_config = demo_config;
      o.vae_dim = demo_vae_dim;
      OSP_CHECK(!(demo_full && !demo_config.empty()),
                "make-demo-model: --full-attention and --config both set the attention layout; the config's "
                "skiparse keys decide it (leave them out for Wan2.1's full attention)");
      // Written into a temporary folder renamed at the end: complete or not at all.
      io::write_dir_atomic(demo_dir, [&](const std::string& tmp) { pipeline::make_demo_model(tmp, o); },
                           demo_overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse);
      if (log_level() >= LogLevel::Info)
        std::printf("osp-demo-random model written to %s\nIts weights are random: `osp generate` with it "
                  "produces NOISE (it exists to test the pipeline end to end).\n",
                  demo_dir.c_str());
      return 0;
    }
    if (*bench) {
      const fs::path self = fs::canonical("/proc/self/exe").parent_path();
      if (bench_name.empty()) {
        std::printf("benchmarks next to %s:\n", self.c_str());
        for (const auto& e : fs::directory_iterator(self)) {
          const std::string n = e.path().filename().string();
          if (n.rfind("bench_", 0) == 0) std::printf("  %s\n", n.substr(6).c_str());
        }
        return 0;
      }
      const fs::path exe = self / ("bench_" + bench_name);
      OSP_CHECK(fs::exists(exe), "no benchmark ", exe.string(), " (run `osp bench` to list them)");
      std::vector<char*> av;
      std::string e = exe.string();
      av.push_back(e.data());
      for (auto& a : bench_args) av.push_back(a.data());
      av.push_back(nullptr);
      execv(e.c_str(), av.data());
      fail(str("could not run ", e));
    }
  } catch (const std::exception&) {
    return osp::cli::report_exception();
  }
  return 0;
}
