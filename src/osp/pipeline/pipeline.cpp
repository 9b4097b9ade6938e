#include "osp/pipeline/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/core/progress.h"
#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/io/checkpoint.h"
#include "osp/io/image_writer.h"
#include "osp/io/name_map.h"
#include "osp/io/safetensors.h"
#include "osp/io/video_writer.h"
#include "osp/model/dit.h"
#include "osp/model/dit_block_stream.h"
#include "osp/model/dit_config.h"
#include "osp/model/hif8_checkpoint.h"
#include "osp/model/lora.h"
#include "osp/model/tokenizer.h"
#include "osp/model/vae.h"
#include "osp/pipeline/finite_check.h"
#include "osp/pipeline/load_progress.h"
#include "osp/pipeline/text_encoder.h"
#include "osp/sample/sampler.h"
#include "osp/sample/step_cache.h"
#include "osp/sparse/skiparse.h"

#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace fs = std::filesystem;

namespace osp::pipeline {

const std::string& default_negative_prompt() { return model::default_negative_prompt(); }

void parse_size(const std::string& s, int& width, int& height) {
  const size_t p = s.find_first_of("x*X");
  OSP_CHECK(p != std::string::npos && p > 0 && p + 1 < s.size(),
            "--size must be WIDTHxHEIGHT (e.g. 1280x720 or 832x480), got '", s, "'");
  try {
    size_t a = 0, b = 0;
    width = std::stoi(s.substr(0, p), &a);
    height = std::stoi(s.substr(p + 1), &b);
    OSP_CHECK(a == p && b == s.size() - p - 1, "");
  } catch (...) {
    fail(str("--size must be WIDTHxHEIGHT with integers (e.g. 1280x720), got '", s, "'"));
  }
}

namespace {

bool is_mp4(const std::string& out) {
  std::string e = fs::path(out).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".mp4";
}

size_t cpu_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

size_t device_available_bytes(const Device& d) {
  if (d.is_cpu()) return cpu_available_bytes();
#ifdef OSP_HAVE_CUDA
  size_t free_b = 0, total = 0;
  int prev = 0;
  cudaGetDevice(&prev);
  if (cudaSetDevice(d.index) == cudaSuccess && cudaMemGetInfo(&free_b, &total) == cudaSuccess) {
    cudaSetDevice(prev);
    return free_b + cuda_bytes_in_use();  // our own cache counts as available to us
  }
  cudaGetLastError();
#endif
  return 0;
}

// The DiT checkpoint under original Wan names; HiF8 8-bit checkpoints (osp convert) are
// dequantized on read (to exactly the fake-quantized weights).
io::Checkpoint open_dit(const ModelFiles& f) {
  io::Checkpoint ck = io::open_checkpoint(f.dit);
  if (model::is_hif8_checkpoint(*ck)) {
    log_info("DiT weights are HiF8 (8-bit); dequantizing on load");
    ck = model::hif8_dequantized(ck, DType::BF16);
  }
  return io::dit_with_original_names(ck);
}

size_t checkpoint_params(const io::Checkpoint& ck) {
  size_t n = 0;
  for (const auto& name : ck->names()) n += size_t(shape_numel(ck->info(name).shape));
  return n;
}

model::DiTConfig load_dit_config(const ModelFiles& f, const io::Checkpoint& ck) {
  model::DiTConfig cfg;
  if (!f.dit_config.empty()) {
    cfg = model::DiTConfig::from_json_file(f.dit_config);
  } else {
    std::map<std::string, Shape> shapes;
    for (const auto& n : ck->names()) shapes[n] = ck->info(n).shape;
    cfg = model::DiTConfig::infer(shapes);
  }
  cfg.validate();
  return cfg;
}

std::vector<sparse::BlockKind> resolve_kinds(const model::DiTConfig& cfg, const std::string& attention) {
  if (attention == "full") return std::vector<sparse::BlockKind>(size_t(cfg.num_layers), sparse::BlockKind::Full);
  if (attention == "hybrid") {
    if (cfg.skiparse_mode != "full") return cfg.block_kinds();
    const int nfull = cfg.num_full_blocks > 0 ? cfg.num_full_blocks
                                             : std::max(4, int(cfg.num_layers / 2) / 4 * 4);
    log_warn("--attention hybrid on a model whose config declares full attention (Wan2.1): using "
             "the OSP-Next dual-end layout with ", nfull, " full blocks; the weights were not "
             "trained for sparse attention, expect lower quality");
    return sparse::plan_blocks(int(cfg.num_layers), "dual_end", nfull);
  }
  return cfg.block_kinds();  // auto
}

}  // namespace

namespace {
// Byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates and code points
// above U+10FFFF are invalid), or npos.
size_t invalid_utf8_at(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    size_t len = 0;
    uint32_t cp = 0, min = 0;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min = 0x10000;
    else return i;
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string::npos;
}
void check_utf8(const std::string& s, const char* what) {
  const size_t at = invalid_utf8_at(s);
  if (at == std::string::npos) return;
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", unsigned(static_cast<unsigned char>(s[at])));
  fail(str(what, " is not valid UTF-8 (byte ", hex, " at offset ", at,
           "); save the text as UTF-8 or pass it from a UTF-8 terminal"));
}
}  // namespace

int cfg_parallel_branch_ranks(int ranks, const std::string& sp) {
  OSP_CHECK(ranks >= 2 && ranks % 2 == 0, "--cfg-parallel needs an even number of ranks, one half per CFG "
            "branch (2 = the CFG pair, 2·S = S ", sp == "none" ? "sequence-parallel" : sp, " ranks per branch), but ",
            ranks == 1 ? "this run has one rank: launch it with mpirun -np 2 (or -np 4 with --sp ssp)"
                       : str("this run has ", ranks, " ranks: launch ", ranks - 1, " or ", ranks + 1));
  const int S = ranks / 2;
  OSP_CHECK(S == 1 || sp != "none", "--cfg-parallel on ", ranks, " ranks gives each CFG branch ", S,
            " ranks, which need sequence parallelism to share it: add --sp ssp (or --sp ulysses for "
            "full attention), or launch 2 ranks");
  return S;
}

void warn_ineffective_settings(const GenerateOptions& o) {
  if (o.offload && o.device == "cpu")
    log_warn("--offload has no effect with --device cpu (everything already runs on the CPU)");
  if (o.dit_offload == "blocks" && o.device == "cpu")
    log_warn("--dit-offload blocks on the CPU saves no memory (the host is the device): the blocks are "
             "copied from one host buffer to another around each forward");
}

void validate_options(const GenerateOptions& o) {
  check_utf8(o.prompt, "the prompt");
  check_utf8(o.negative_prompt, "the negative prompt");
  auto trimmed_empty = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
  };
  OSP_CHECK(!trimmed_empty(o.prompt), "the prompt is empty: pass --prompt \"a description of the video\"");
  OSP_CHECK(o.width > 0 && o.height > 0, "--size must be positive, got ", o.width, "x", o.height);
  OSP_CHECK(o.width % 16 == 0 && o.height % 16 == 0, "--size ", o.width, "x", o.height,
            " is not a multiple of 16 in both directions (VAE ×8 and patch ×2); try ",
            (o.width + 8) / 16 * 16, "x", (o.height + 8) / 16 * 16);
  OSP_CHECK(o.width <= 8192 && o.height <= 8192, "--size ", o.width, "x", o.height, " is too large (max 8192)");
  OSP_CHECK(o.frames >= 1 && (o.frames - 1) % 4 == 0, "--frames must be 4n+1 (1, 5, 9, ..., 81), got ",
            o.frames, "; nearest valid: ", std::max(1, (o.frames - 1 + 2) / 4 * 4 + 1));
  OSP_CHECK(o.frames <= 1001, "--frames ", o.frames, " is too many (max 1001)");
  OSP_CHECK(o.sampler == "unipc" || o.sampler == "euler", "--sampler must be unipc or euler, got '", o.sampler, "'");
  const double shift = o.shift < 0 ? 5.0 : o.shift;
  sample::check_schedule_args(o.steps, shift);
  OSP_CHECK(std::isfinite(o.guidance) && o.guidance >= 0 && o.guidance <= 50,
            "--guidance must be in [0, 50], got ", o.guidance, " (Wan2.1 uses 5.0; 1 disables CFG)");
  OSP_CHECK(o.attention == "auto" || o.attention == "full" || o.attention == "hybrid",
            "--attention must be full or hybrid, got '", o.attention, "'");
  OSP_CHECK(o.quant == "none" || o.quant == "hif8" || o.quant == "fp8",
            "--quant must be none, hif8 or fp8, got '", o.quant, "'");
  if (o.quant == "fp8")
    OSP_CHECK(o.device.rfind("cuda", 0) == 0,
              "--quant fp8 runs the block linears as FP8 (E4M3) tensor-core GEMMs and needs "
              "--device cuda (a Hopper GPU); on the CPU use --quant hif8, which computes the "
              "same HiF8 numerics with float GEMMs");
  OSP_CHECK(o.sp == "none" || o.sp == "ulysses" || o.sp == "ssp", "--sp must be none, ulysses or ssp, got '", o.sp, "'");
  OSP_CHECK(o.dit_offload == "none" || o.dit_offload == "blocks" || o.dit_offload == "auto",
            "--dit-offload must be none (DiT weights resident), blocks (stream the blocks from host memory) or auto, "
            "got '", o.dit_offload, "'");
  OSP_CHECK(std::isfinite(o.max_vram_gib) && o.max_vram_gib >= 0, "--max-vram must be a number of GiB >= 0 "
            "(0 = no limit), got ", o.max_vram_gib);
  if (o.max_vram_gib > 0)
    OSP_CHECK(o.device.rfind("cuda", 0) == 0, "--max-vram limits GPU memory, but this run is on the CPU: use "
              "--device cuda, or drop --max-vram");
  OSP_CHECK(o.seed >= -1, "--seed must be -1 (random) or a number >= 0, got ", o.seed);
  OSP_CHECK(o.shift < 0 || o.shift <= 100, "--shift must be in (0, 100], got ", o.shift,
            " (Wan2.1 uses 5, OSP-Next 7)");
  const Device dev = parse_device(o.device);
  if (dev.is_cuda())
    OSP_CHECK(cuda_available(), "--device ", o.device,
              " requested but no CUDA GPU is usable in this build/machine; use --device cpu");
  if (dev.is_cuda())
    OSP_CHECK(dev.index < cuda_device_count(), "--device ", o.device, ": only ", cuda_device_count(), " GPU(s) visible");
  OSP_CHECK(o.fps >= 1 && o.fps <= 240, "--fps must be in [1, 240], got ", o.fps);
  const sample::StepCacheSpec cache = sample::parse_step_cache(o.cache);
  if (!o.cache_calibrate.empty()) {
    OSP_CHECK(!cache.enabled(), "--cache-calibrate measures an uncached run: drop --cache ", o.cache);
    OSP_CHECK(!o.cfg_parallel && parallel::launcher_size() == 1,
              "--cache-calibrate runs in one process (no mpirun, --sp or --cfg-parallel): the ratios are means over "
              "every token of the residual");
    OSP_CHECK(o.steps >= 2, "--cache-calibrate needs at least 2 steps, got ", o.steps);
  }
  if (o.cfg_parallel) {
    OSP_CHECK(o.guidance != 1.0f, "--cfg-parallel runs the conditional and unconditional branches of "
              "classifier-free guidance on two rank groups, but --guidance 1 has no unconditional branch: "
              "drop --cfg-parallel (and split the work with --sp over all ranks), or give a guidance other than 1");
    (void)cfg_parallel_branch_ranks(parallel::launcher_size(), o.sp);
  }
  if (o.no_output) return;
  const io::Overwrite ow = o.overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse;
  const OutputKind kind = output_kind(o.out);
  if (kind == OutputKind::Mp4) {
    OSP_CHECK(io::video_writer_available(), "--out ", o.out, ": this build cannot write MP4 (no FFmpeg); "
              "give a folder ending in / to get PNG frames instead");
    io::check_output_path(o.out, ow);
  } else {
    OSP_CHECK(io::png_available(), "--out ", o.out, ": this build has no libpng, so it cannot write PNG "
              "frames; use a .mp4 path");
    io::check_output_dir(o.out, ow);
    // --overwrite replaces a folder of frames, never a folder that holds anything else.
    std::error_code ec;
    if (fs::is_directory(o.out, ec))
      for (const auto& e : fs::directory_iterator(o.out)) {
        const std::string n = e.path().filename().string();
        const bool frame = e.is_regular_file() && n.size() == 14 && n.rfind("frame_", 0) == 0 &&
                           n.compare(10, 4, ".png") == 0 &&
                           std::all_of(n.begin() + 6, n.begin() + 10, [](unsigned char c) { return std::isdigit(c); });
        OSP_CHECK(frame, "--out ", o.out, " holds ", n, ", which is not a frame_NNNN.png written by osp; "
                  "--overwrite replaces only a folder of frames (choose another folder)");
      }
  }
}

OutputKind output_kind(const std::string& out) {
  OSP_CHECK(!out.empty(), "--out is empty: give a .mp4 path or a folder for PNG frames (ending in /)");
  std::error_code ec;
  if (out.back() == '/' || fs::is_directory(out, ec)) return OutputKind::PngFolder;
  if (is_mp4(out)) return OutputKind::Mp4;
  const std::string ext = fs::path(out).extension().string();
  OSP_CHECK(!ext.empty(), "--out ", out, " has no extension: write ", out, ".mp4 for a video or ", out,
            "/ for a folder of PNG frames");
  fail(str("--out ", out, ": unsupported extension '", ext, "'; osp writes .mp4 video or a folder of PNG "
           "frames (a path ending in /)"));
}

Geometry geometry(const GenerateOptions& o, int patch_h, int patch_w) {
  Geometry g;
  g.T = (o.frames - 1) / 4 + 1;
  g.h = o.height / 8;
  g.w = o.width / 8;
  g.tokens = g.T * (g.h / patch_h) * (g.w / patch_w);
  return g;
}

Tensor load_noise(const std::string& path, const Geometry& g) {
  std::error_code ec;
  OSP_CHECK(fs::is_regular_file(path, ec), "--noise ", path, ": no such file (give a .safetensors file "
            "holding the initial latent [16, ", g.T, ", ", g.h, ", ", g.w, "])");
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  const std::vector<std::string> names = f.names();
  OSP_CHECK(!names.empty(), "--noise ", path, " holds no tensor");
  OSP_CHECK(names.size() == 1 || f.has("noise"), "--noise ", path, " holds ", names.size(),
            " tensors and none is named 'noise': save only the latent, or name it 'noise'");
  const std::string name = names.size() == 1 ? names[0] : std::string("noise");
  const io::SafetensorsEntry& e = f.entry(name);
  OSP_CHECK(e.dtype == DType::F32 || e.dtype == DType::BF16 || e.dtype == DType::F16, "--noise ", path,
            ": tensor '", name, "' is ", e.dtype_name, "; the noise must be F32, BF16 or F16");
  Shape s = e.shape;
  if (s.size() == 5 && s[0] == 1) s.erase(s.begin());
  const Shape want = {16, g.T, g.h, g.w};
  if (s != want) {
    std::string fits;
    if (s.size() == 4 && s[0] == 16)
      fits = str(" (that latent is --size ", s[3] * 8, "x", s[2] * 8, " --frames ", (s[1] - 1) * 4 + 1, ")");
    fail(str("--noise ", path, ": tensor '", name, "' has shape ", shape_str(e.shape), fits, ", but this run's "
             "latent is ", shape_str(want), " (--size ", g.w * 8, "x", g.h * 8, ", --frames ", (g.T - 1) * 4 + 1,
             "); the leading 1 of [1, 16, T, h, w] may be there or not"));
  }
  Tensor x = f.get(name).to(DType::F32).reshape(want).clone();
  const float* d = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    OSP_CHECK(std::isfinite(d[i]), "--noise ", path, ": element ", i, " of '", name, "' is ", d[i],
              "; the noise must be finite");
  return x;
}

namespace {
// plan_generation, for a loaded pipeline too (keep_loaded: its models stay resident together;
// fixed: the weight mode of its already-loaded DiT).
Plan plan_impl(const std::string& model_dir, const GenerateOptions& in, bool keep_loaded, const DitWeights* fixed) {
  Plan p;
  p.opt = in;
  GenerateOptions& o = p.opt;
  if (o.shift < 0) o.shift = o.sampler == "euler" ? 7.0 : 5.0;
  validate_options(o);
  if (o.negative_prompt.empty() && !o.no_negative) o.negative_prompt = default_negative_prompt();
  if (o.seed < 0) {
    std::random_device rd;
    o.seed = int64_t((uint64_t(rd()) << 31 ^ rd()) & 0x7fffffffffffull);
  }
  p.files = detect_model_dir(model_dir);

  const io::Checkpoint dit_ck = open_dit(p.files);
  const model::DiTConfig cfg = load_dit_config(p.files, dit_ck);
  p.dit_summary = cfg.summary();
  for (auto k : resolve_kinds(cfg, o.attention)) p.block_kinds.push_back(sparse::block_kind_name(k));
  if (o.sp == "ulysses") {
    const bool hybrid = std::any_of(p.block_kinds.begin(), p.block_kinds.end(),
                                    [](const std::string& k) { return k != "full"; });
    OSP_CHECK(!hybrid, "--sp ulysses splits full attention only, but this model's blocks are hybrid "
              "(Skiparse token/group blocks): use --sp ssp, or --attention full");
  }
  // LoRAs: read and checked against this DiT's shapes now, before any weight is loaded.
  if (!o.loras.empty()) {
    const auto shapes = model::DiT::expected_shapes(cfg);
    for (const auto& spec : o.loras) {
      const model::LoraSpec ls = model::parse_lora_spec(spec);
      auto l = std::make_shared<model::Lora>(model::load_lora(ls.path));
      model::check_lora(*l, shapes);
      log_verbose("LoRA ", ls.path, " (scale ", ls.scale, "): ", l->summary());
      p.loras.push_back({ls.path, ls.scale, std::move(l)});
    }
  }
  p.geo = geometry(o, cfg.patch_h, cfg.patch_w);
  if (!o.noise.empty()) p.noise = load_noise(o.noise, p.geo);  // a bad file fails here, before any work
  const sample::StepCacheSpec cache = sample::parse_step_cache(o.cache);
  if (cache.kind == sample::StepCacheSpec::Kind::MagCache) {
    const std::string f = (fs::path(p.files.root) / "magcache.json").string();
    OSP_CHECK(fs::exists(f), "--cache ", o.cache, ": the model at ", p.files.root,
              " has no MagCache calibration (magcache.json); make one with one uncached run: osp generate -m ",
              p.files.root, " --cache-calibrate ", f, " (with this run's --steps, --sampler and --shift)");
    p.mag_ratios = std::make_shared<const sample::MagCacheRatios>(sample::MagCacheRatios::load(f));
  }
  OSP_CHECK(cfg.in_dim == 16 && cfg.out_dim == 16, "the DiT has in/out channels ", cfg.in_dim, "/",
            cfg.out_dim, "; only the 16-channel Wan2.1 latent space is supported");
  OSP_CHECK((o.height / 8) % cfg.patch_h == 0 && (o.width / 8) % cfg.patch_w == 0,
            "--size must be a multiple of ", 8 * cfg.patch_w, " for this model's patch size");

  // ---- memory plan (pipeline/memory_plan.h): the DiT memory mode, text encoder place, VAE tiles
  const Device dev = parse_device(o.device);
  const bool gpu = dev.is_cuda();
  const size_t B = (o.guidance == 1.0f || o.cfg_parallel) ? 1 : 2;  // rows of one rank's forward
  {
    MemoryInput mi;
    mi.cfg = cfg;
    mi.hybrid = std::any_of(p.block_kinds.begin(), p.block_kinds.end(), [](const std::string& k) { return k != "full"; });
    mi.tokens = p.geo.tokens;
    mi.latent_elems = 16 * p.geo.T * p.geo.h * p.geo.w;
    mi.gpu = gpu;
    mi.quant = o.quant;
    mi.cfg_rows = int(B);
    mi.step_cache = cache.enabled();
    mi.t5_params = text_encoder_params(p.files);
    {
      const io::Checkpoint tck = io::open_checkpoint(p.files.t5);
      for (const char* n : {"token_embedding.weight", "shared.weight"})
        if (tck->has(n)) mi.t5_dim = tck->info(n).shape.back();
    }
    mi.t5_offload = o.offload;
    {
      const io::Checkpoint vck = open_vae(p.files);  // diffusers names are renamed
      OSP_CHECK(vck->has("decoder.conv1.weight") && vck->has("conv2.weight"), "VAE weights ", p.files.vae,
                " do not hold the Wan-VAE decoder (decoder.conv1.weight / decoder.conv_in.weight and conv2.weight / "
                "post_quant_conv.weight missing)");
      mi.vae_weights = checkpoint_params(vck) * 4;
    }
    mi.vae_full_decode = model::decode_memory_estimate(p.geo.h, p.geo.w);
    mi.vae_budget = o.vae_tile_budget;
    mi.dit_offload = o.dit_offload;
    mi.limit = o.max_vram_gib > 0 ? parse_gib(o.max_vram_gib, "--max-vram") : 0;
    mi.available = device_available_bytes(dev);
    mi.keep_loaded = keep_loaded;
    mi.device = dev.name();
    if (fixed) mi.weights_fixed = true, mi.fixed_weights = *fixed;
    p.mem = plan_memory(mi);  // throws "does not fit ..." with every mode's estimate
  }

  // ---- time estimate: DiT FLOPs per step (linears 2·params·tokens; attention 4·L²·dim per full
  // block and 4·L²·dim/P² per Skiparse block; per CFG branch) at an assumed throughput.
  {
    const double L = double(p.geo.tokens), d = double(cfg.dim), P2 = double(cfg.sparse_ratio) * cfg.sparse_ratio;
    double attn = 0;
    for (const auto& k : p.block_kinds) attn += 4.0 * L * L * d / (k == "full" ? 1.0 : P2);
    const double per_step = double(B) * (2.0 * double(checkpoint_params(dit_ck)) * L + attn);
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const double flops_per_s = gpu ? 300e12 : 25e9 * cores;  // H100-class bf16; ~25 GFLOP/s per CPU core
    p.est_sampling_s = per_step * o.steps / flops_per_s;
    p.est_basis = str(per_step / 1e12, " TFLOP per step × ", o.steps, " steps at about ",
                      gpu ? std::string("300 TFLOP/s (one H100-class GPU)")
                          : str(flops_per_s / 1e9, " GFLOP/s (", cores, " CPU cores)"));
  }
  return p;
}
}  // namespace

Plan plan_generation(const std::string& model_dir, const GenerateOptions& in) {
  return plan_impl(model_dir, in, false, nullptr);
}

// ------------------------------------------------------------------ generate

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The ranks of a run. Without CFG parallelism every rank is in one sequence-parallel group
// (`sp` over the world). With it (world = 2·S ranks): world rank w runs CFG branch w / S
// (0 = conditional, 1 = unconditional) with `sp` over the S ranks of its branch, and `cfg` pairs
// it with rank w ± S (cfg rank = branch), with whom it exchanges the velocity every step.
struct SpSetup {
  std::shared_ptr<parallel::Communicator> comm;  // the world (null for one rank without MPI)
  std::shared_ptr<parallel::Communicator> cfg;   // the CFG pair; null without CFG parallelism
  std::unique_ptr<parallel::SequenceParallel> sp;
  int rank = 0, size = 1;  // world
  int branch = 0;          // CFG branch of this rank (0 cond, 1 uncond) when cfg is set
  int sp_size = 1;         // ranks sharing one forward
};

SpSetup make_sp(const std::string& mode, bool cfg_parallel, const Device& dev) {
  SpSetup s;
  if (mode == "none" && !cfg_parallel) {
    s.sp = parallel::make_single_device();
    return s;
  }
  const std::string backend = dev.is_cuda() ? "nccl" : "mpi";
  const std::string what = cfg_parallel ? std::string("--cfg-parallel") : "--sp " + mode;
  OSP_CHECK(dev.is_cuda() ? parallel::nccl_built() : parallel::mpi_built(), what, " on ", dev.name(),
            " needs the ", backend, " backend, which this build lacks (install OpenMPI", dev.is_cuda() ? " and NCCL" : "",
            " and reconfigure)");
  s.comm = parallel::make_communicator(backend);
  s.rank = s.comm->rank();
  s.size = s.comm->size();
  std::shared_ptr<parallel::Communicator> spc = s.comm;
  s.sp_size = s.size;
  if (cfg_parallel) {
    const int S = cfg_parallel_branch_ranks(s.size, mode);
    s.branch = s.rank / S;
    s.sp_size = S;
    // Both splits are collective over the world, in the same order on every rank.
    spc = std::shared_ptr<parallel::Communicator>(s.comm->split(s.branch, s.rank % S));
    s.cfg = std::shared_ptr<parallel::Communicator>(s.comm->split(s.rank % S, s.branch));
  }
  s.sp = mode == "none" ? parallel::make_single_device() : mode == "ssp" ? parallel::make_ssp(spc) : parallel::make_ulysses(spc);
  return s;
}

}  // namespace

namespace {

// Writes the frames of a finished run through an atomic temporary (a Ctrl-C safe point
// between frames; nothing appears unless every frame is written).
void write_output(const GenerateOptions& o, const Tensor& rgb, const std::map<std::string, std::string>& meta,
                  const std::function<void(const char*)>& safe_point) {
  const io::Overwrite ow = o.overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse;
  const Tensor f = rgb.to(Device::cpu()).contiguous();
  const int64_t F = f.size(0), H = f.size(1), W = f.size(2), per = H * W * 3;
  if (output_kind(o.out) == OutputKind::Mp4) {
    io::VideoOptions vo;
    vo.fps = o.fps;
    vo.metadata = meta;
    io::write_file_atomic(o.out, [&](const std::string& tmp) {
      io::VideoWriter w(tmp, int(W), int(H), vo);
      for (int64_t i = 0; i < F; ++i) {
        safe_point("writing");
        w.write_frame(f.data<uint8_t>() + i * per);
      }
      w.close();
    }, ow);
  } else {
    const std::map<std::string, std::string> text = {{"prompt", o.prompt}, {"settings", meta.at("comment")}};
    io::write_dir_atomic(o.out, [&](const std::string& tmp) {
      for (int64_t i = 0; i < F; ++i) {
        safe_point("writing");
        char name[32];
        std::snprintf(name, sizeof name, "frame_%04lld.png", (long long)i);
        io::write_png((fs::path(tmp) / name).string(), f.data<uint8_t>() + i * per, int(W), int(H), text);
      }
    }, ow);
  }
}

}  // namespace

PipelineOptions pipeline_options(const GenerateOptions& o) {
  PipelineOptions po;
  po.device = o.device;
  po.quant = o.quant;
  po.sp = o.sp;
  po.cfg_parallel = o.cfg_parallel;
  po.offload = o.offload;
  po.dit_offload = o.dit_offload;
  po.max_vram_gib = o.max_vram_gib;
  po.loras = o.loras;
  return po;
}

struct Pipeline::Impl {
  ModelFiles files;
  PipelineOptions po;
  std::vector<PlannedLora> loras;
  Device dev;
  SpSetup sps;
  std::mutex run_mutex;
  // Loaded components (kept between runs with po.keep_loaded).
  std::unique_ptr<TextEncoder> enc;
  std::unique_ptr<model::DiT> dit;
  DitWeights dit_mode = DitWeights::Resident;   // how the loaded DiT holds its weights
  std::shared_ptr<model::BlockStream> stream;    // block streaming (null otherwise)
  model::DiTConfig cfg;
  std::unique_ptr<model::WanVae> vae;

  const RunHooks* hooks = nullptr;
  Clock::time_point run_start;

  // A safe point: Ctrl-C (the process-wide flag) or the caller's cancellation.
  void point(const char* stage) {
    interruption_point(stage);
    if (hooks && hooks->cancelled && hooks->cancelled()) throw Interrupted(stage);
  }
  void report(const char* stage, int step, int steps, double eta) {
    if (hooks && hooks->on_progress) hooks->on_progress({stage, step, steps, since(run_start), eta});
  }
  // --max-vram (GiB; 0: none) becomes the CUDA allocator's cap (core/device.h).
  void apply_max_vram(double gib) const {
    if (gib > 0 && dev.is_cuda()) set_cuda_memory_limit(parse_gib(gib, "--max-vram"));
  }
  bool rank0() const { return sps.rank == 0; }
  bool show() const { return rank0() && log_level() >= LogLevel::Info; }

  // on_cpu: the memory plan moved the text encoder to the CPU (or --offload did).
  void load_text_encoder(bool on_cpu) {
    if (enc) return;
    report("model loading", 0, 0, -1);
    const Device tdev = (dev.is_cuda() && (po.offload || on_cpu)) ? Device::cpu() : dev;
    enc = TextEncoder::load(files, tdev, 512);
  }
  void load_dit(DitWeights mode) {
    if (dit) return;
    report("model loading", 0, 0, -1);
    io::Checkpoint ck = open_dit(files);
    cfg = load_dit_config(files, ck);
    std::map<std::string, Tensor> weights;
    {
      const auto names = ck->names();
      LoadProgress lp("DiT", int(names.size()), show());
      for (const auto& n : names) weights[n] = lp.get(ck, n);
      lp.finish();
    }
    for (const auto& l : loras) {
      log_info("LoRA ", l.path, " merged with scale ", l.scale, ": ", l.lora->summary());
      model::merge_lora(weights, *l.lora, l.scale, "", dev.is_cuda() ? DType::BF16 : DType::F32);
    }
    model::DiTOptions dopt;
    dopt.device = dev;
    dopt.quant = po.quant == "hif8"  ? model::DiTQuant::HiF8
                 : po.quant == "fp8" ? model::DiTQuant::FP8
                                     : model::DiTQuant::None;
    if (mode == DitWeights::Resident8bit) {
      // --quant hif8 with 8-bit weights: FP8 storage (E4M3 codes of the HiF8 values) and FP8
      // GEMMs, attention on the HiF8-rounded bf16 q/k/v as in HiF8 mode (memory_plan.h).
      OSP_CHECK(po.quant == "hif8" && dev.is_cuda(), "8-bit resident weights need --quant hif8 on CUDA");
      dopt.quant = model::DiTQuant::FP8;
      dopt.fp8_attention = false;
    }
    std::shared_ptr<model::BlockStream> bs;
    if (mode == DitWeights::Streamed) {
      bs = std::make_shared<model::BlockStream>(dev);
      model::BlockStream::bind_into(bs, dopt);  // each block leaves the device as soon as it is bound
    }
    dit = std::make_unique<model::DiT>(model::DiT::bind(cfg, weights, dopt));
    weights.clear();
    if (bs) {
      model::BlockStream::attach(bs, *dit);
      log_info("DiT block streaming: ", cfg.num_layers, " blocks in ", human_bytes(bs->stats().host_bytes),
               " of pinned host memory, two device slots of ", human_bytes(bs->stats().max_block_bytes));
    }
    stream = bs;
    dit_mode = mode;
    interruption_point("model loading");
  }
  void load_vae() {
    if (vae) return;
    report("model loading", 0, 0, -1);
    io::Checkpoint vck = open_vae(files);
    LoadProgress lp("VAE", int(vck->size()), show());
    model::VaeConfig vcfg;
    vcfg.has_encoder = false;
    vae = std::make_unique<model::WanVae>(
        model::WanVae::load([&](const std::string& n) { return lp.get(vck, n); }, dev, vcfg));
    lp.finish();
  }

  void run(const Plan& plan, GenerateResult& res);
};

Pipeline::Pipeline(const std::string& model_dir, const PipelineOptions& po) : impl_(std::make_unique<Impl>()) {
  impl_->files = detect_model_dir(model_dir);
  impl_->po = po;
  impl_->dev = parse_device(po.device);
  // The LoRAs are read and checked against the DiT's shapes before anything heavy loads.
  if (!po.loras.empty()) {
    const io::Checkpoint ck = open_dit(impl_->files);
    const auto shapes = model::DiT::expected_shapes(load_dit_config(impl_->files, ck));
    for (const auto& spec : po.loras) {
      const model::LoraSpec ls = model::parse_lora_spec(spec);
      auto l = std::make_shared<model::Lora>(model::load_lora(ls.path));
      model::check_lora(*l, shapes);
      impl_->loras.push_back({ls.path, ls.scale, std::move(l)});
    }
  }
  impl_->sps = make_sp(po.sp, po.cfg_parallel, impl_->dev);
  impl_->apply_max_vram(po.max_vram_gib);
}

Pipeline::Pipeline(const Plan& plan, bool keep_loaded) : impl_(std::make_unique<Impl>()) {
  impl_->files = plan.files;
  impl_->po = pipeline_options(plan.opt);
  impl_->po.keep_loaded = keep_loaded;
  impl_->loras = plan.loras;
  impl_->dev = parse_device(plan.opt.device);
  impl_->sps = make_sp(plan.opt.sp, plan.opt.cfg_parallel, impl_->dev);
  impl_->apply_max_vram(plan.opt.max_vram_gib);
}

Pipeline::~Pipeline() = default;

const ModelFiles& Pipeline::files() const { return impl_->files; }
const PipelineOptions& Pipeline::options() const { return impl_->po; }

std::string Pipeline::dit_summary() const {
  const io::Checkpoint ck = open_dit(impl_->files);
  return load_dit_config(impl_->files, ck).summary();
}

Plan Pipeline::plan(GenerateOptions o) const {
  const PipelineOptions& po = impl_->po;
  o.device = po.device;
  o.quant = po.quant;
  o.sp = po.sp;
  o.cfg_parallel = po.cfg_parallel;
  o.offload = po.offload;
  o.dit_offload = po.dit_offload;
  o.max_vram_gib = po.max_vram_gib;
  o.loras.clear();  // checked once, when the pipeline was made
  // Kept models are resident together: on a GPU (where the free memory counts osp's own cache as
  // available) the peak is every weight plus the largest stage's activations. A loaded DiT keeps
  // its weight mode.
  const DitWeights loaded = impl_->dit_mode;
  Plan p = plan_impl(impl_->files.root, o, po.keep_loaded && impl_->dev.is_cuda(), impl_->dit ? &loaded : nullptr);
  p.opt.loras = po.loras;
  p.loras = impl_->loras;
  return p;
}

void Pipeline::preload() {
  std::lock_guard<std::mutex> lock(impl_->run_mutex);
  OSP_CHECK(impl_->po.keep_loaded, "Pipeline::preload needs keep_loaded");
  impl_->hooks = nullptr;
  impl_->load_text_encoder(false);
  // (auto: the DiT's weight mode comes from the plan of the first request, which loads it)
  if (impl_->po.dit_offload != "auto")
    impl_->load_dit(impl_->po.dit_offload == "blocks" ? DitWeights::Streamed : DitWeights::Resident);
  impl_->load_vae();
}

GenerateResult Pipeline::run(const Plan& plan, const RunHooks& hooks) {
  std::lock_guard<std::mutex> lock(impl_->run_mutex);
  const PipelineOptions& po = impl_->po;
  const GenerateOptions& o = plan.opt;
  OSP_CHECK(plan.files.root == impl_->files.root, "this plan is for the model at ", plan.files.root,
            ", but the pipeline holds ", impl_->files.root);
  OSP_CHECK(o.device == po.device && o.quant == po.quant && o.sp == po.sp && o.cfg_parallel == po.cfg_parallel &&
                o.offload == po.offload && o.dit_offload == po.dit_offload && o.max_vram_gib == po.max_vram_gib &&
            o.loras == po.loras,
            "this request's model settings (device ", o.device, ", quant ", o.quant, ", sp ", o.sp, ", cfg-parallel ",
            o.cfg_parallel, ", offload ", o.offload, ", dit-offload ", o.dit_offload, ", max-vram ", o.max_vram_gib,
            ", ", o.loras.size(), " LoRA(s)) differ from the loaded pipeline's (device ", po.device, ", quant ",
            po.quant, ", sp ", po.sp, ", cfg-parallel ", po.cfg_parallel, ", offload ", po.offload, ", dit-offload ",
            po.dit_offload, ", max-vram ", po.max_vram_gib, ", ", po.loras.size(), " LoRA(s))");
  OSP_CHECK(!impl_->dit || plan.mem.dit_mode == impl_->dit_mode, "this plan runs the DiT with ",
            dit_weights_name(plan.mem.dit_mode), " weights, but the loaded DiT is ", dit_weights_name(impl_->dit_mode),
            " (make the plan with Pipeline::plan)");
  GenerateResult res;
  impl_->hooks = &hooks;
  impl_->run_start = Clock::now();
  try {
    impl_->run(plan, res);
  } catch (const Interrupted& e) {
    res.interrupted = true;
    res.cancelled = hooks.cancelled && hooks.cancelled();
    res.interrupted_stage = e.stage();
    res.out_path.clear();
    res.rgb = Tensor();
    log_warn(res.cancelled ? "cancelled" : "interrupted (Ctrl-C)", " during ", e.stage(),
             res.interrupted_stage == "sampling" ? str(" after ", res.steps_done, " of ", o.steps, " steps")
                                                 : std::string(),
             "; nothing written");
  } catch (...) {
    impl_->hooks = nullptr;
    if (!po.keep_loaded) impl_->enc.reset(), impl_->dit.reset(), impl_->stream.reset(), impl_->vae.reset();
    throw;
  }
  impl_->hooks = nullptr;
  if (!po.keep_loaded) impl_->enc.reset(), impl_->dit.reset(), impl_->stream.reset(), impl_->vae.reset();
  return res;
}

GenerateResult generate(const Plan& plan) {
  Pipeline p(plan, /*keep_loaded=*/false);
  return p.run(plan);
}

void Pipeline::Impl::run(const Plan& plan, GenerateResult& res) {
  const GenerateOptions& o = plan.opt;
  res.seed = o.seed;
  if (!rank0()) set_log_level(std::min(log_level(), LogLevel::Warn));
  const bool keep = po.keep_loaded;
  log_info("model: ", layout_name(plan.files.layout), " at ", plan.files.root);
  if (plan.files.layout == ModelLayout::Demo)
    log_warn("osp-demo-random: this model has RANDOM weights; the video will be noise");
  log_info("DiT: ", plan.dit_summary);
  log_info(plan.mem.describe());
  log_info("generating ", o.width, "x", o.height, "x", o.frames, " frames, ", o.steps, " ", o.sampler,
           " steps, shift ", o.shift, ", guidance ", o.guidance,
           o.noise.empty() ? str(", seed ", o.seed) : str(", noise from ", o.noise), ", device ", dev.name(),
           sps.cfg ? str(", CFG parallel: the conditional branch on ranks [0, ", sps.sp_size, "), the unconditional on [",
                         sps.sp_size, ", ", sps.size, ")",
                         sps.sp_size > 1 ? str(", each ", o.sp, " over ", sps.sp_size, " ranks") : std::string())
           : sps.size > 1 ? str(", ", o.sp, " over ", sps.size, " ranks")
                          : std::string());
  const double est = plan.est_sampling_s / std::max(1, sps.size);
  if (est > 3600)
    log_warn("this run will take hours: sampling alone needs roughly ", Progress::format_duration(est),
             " (h:mm:ss; an estimate from ", plan.est_basis, "). Consider ",
             dev.is_cpu() ? "--device cuda, " : "", "a smaller --size or --frames, or fewer --steps; Ctrl-C stops it");
  else if (est > 0)
    log_verbose("estimated sampling time: ", Progress::format_duration(est), " (", plan.est_basis, ")");

  // ---- 1. text: tokenizer + umT5 (released when done unless kept)
  auto t0 = Clock::now();
  std::vector<Tensor> ctx;
  {
    load_text_encoder(plan.mem.t5_on_cpu);
    report("text encoding", 0, 0, -1);
    std::vector<std::string> prompts{o.prompt};
    if (o.guidance != 1.0f) prompts.push_back(o.negative_prompt);
    point("text encoding");
    ctx = enc->encode(prompts);
    if (!keep) enc.reset();
  }
  res.seconds["text"] = since(t0);
  log_info("text encoded in ", res.seconds["text"], " s");

  // ---- 2. DiT sampling loop (batched CFG, or one branch per rank group with CFG parallelism),
  //         DiT released afterwards unless kept
  t0 = Clock::now();
  Tensor x;
  double step_s = 0;
  {
    load_dit(plan.mem.dit_mode);
    point("model loading");
    dit->set_block_kinds(resolve_kinds(cfg, o.attention), cfg.sparse_ratio);

    // Context: [B, text_len, text_dim], each prompt's trimmed rows then zeros. B = 2 (prompt,
    // negative prompt) for CFG, 1 without; with CFG parallelism B = 1: this rank's branch.
    const bool cfgp = sps.cfg != nullptr;
    OSP_CHECK(!cfgp || ctx.size() == 2, "CFG parallelism needs the conditional and unconditional branch");
    if (cfgp) ctx = {ctx[size_t(sps.branch)]};
    const int64_t B = int64_t(ctx.size());
    Tensor context = Tensor::zeros({B, cfg.text_len, cfg.text_dim}, DType::F32, dev);
    for (int64_t b = 0; b < B; ++b) {
      const Tensor& c = ctx[size_t(b)];
      OSP_CHECK(c.dim() == 2 && c.size(1) == cfg.text_dim, "text encoder output ", c.desc(),
                " does not match the DiT's text_dim ", cfg.text_dim);
      const int64_t L = std::min(c.size(0), cfg.text_len);
      Tensor dst = context.select(0, b).slice(0, 0, L);
      dst.copy_from(c.slice(0, 0, L).to(DType::F32));
    }
    ctx.clear();

    // Noise: Philox on the host (same on every rank/device), or --noise FILE, then copied to the device.
    const Geometry& g = plan.geo;
    x = (plan.noise.defined() ? plan.noise : randn({16, g.T, g.h, g.w}, uint64_t(o.seed))).to(dev);
    auto sampler = sample::make_sampler(o.sampler, o.steps, o.shift);
    Tensor xb = Tensor::empty({B, 16, g.T, g.h, g.w}, DType::F32, dev);
    Tensor v = Tensor::empty({16, g.T, g.h, g.w}, DType::F32, dev);
    // CFG parallelism: both branches' velocities after the exchange, row 0 cond, row 1 uncond.
    Tensor vpair = cfgp ? Tensor::empty({2, 16, g.T, g.h, g.w}, DType::F32, dev) : Tensor();
    // Step caching: the policy sees each step's time modulation; the DiT keeps the residual.
    const sample::StepCacheSpec cspec = sample::parse_step_cache(o.cache);
    std::unique_ptr<sample::StepCachePolicy> tea;
    model::DiT::BlockCache bcache;
    // CFG sequential with a step cache: the unconditional row's forward keeps its own residual and
    // follows the decision the conditional row's forward took this step (one TeaCache per step,
    // as in the batched forward, whose e0 rows are the same).
    model::DiT::BlockCache bcache_uncond;
    bool ran_blocks = true;
    int cstep = 0;
    if (cspec.enabled()) {
      std::string basis;  // for the log: what the policy decides from
      if (cspec.kind == sample::StepCacheSpec::Kind::MagCache) {
        OSP_CHECK(plan.mag_ratios, "--cache ", cspec.str(), ": the plan holds no MagCache calibration");
        tea = std::make_unique<sample::MagCache>(cspec.threshold, cspec.max_skips, o.steps,
                                                 plan.mag_ratios->resampled(0, o.steps));
        basis = str("residual magnitude ratios of ", plan.mag_ratios->steps, " calibrated steps",
                    plan.mag_ratios->steps == o.steps ? "" : ", resampled");
      } else {
        std::string poly_name;
        tea = std::make_unique<sample::TeaCache>(cspec.threshold, o.steps,
                                                 sample::teacache_polynomial(cfg.dim, &poly_name));
        basis = "rescaling: " + poly_name;
      }
      bcache.run_blocks = [&](const Tensor& e0) { return ran_blocks = tea->compute(cstep, e0); };
      bcache_uncond.run_blocks = [&](const Tensor&) { return ran_blocks; };
      // The rows of the batch are on the two ranks of the CFG pair: the step runs the blocks when
      // either row must (one flag all-reduced per step), as one TeaCache of both rows decides.
      if (cfgp)
        tea->set_agreement([&](bool run) {
          Tensor f = Tensor::from_vector({run ? 1.0f : 0.0f}, {1}).to(sps.cfg->device());
          sps.cfg->all_reduce(f);
          return f.to(Device::cpu()).data<float>()[0] > 0.5f;
        });
      log_info("step cache: ", cspec.str(), ", ", basis);
    }
    // MagCache calibration (--cache-calibrate): every step runs the blocks and keeps the residual;
    // its magnitude against the last step's, per row, is the step's ratio.
    const bool calibrate = !o.cache_calibrate.empty();
    sample::MagCacheRatios mag_cal;
    std::vector<Tensor> mag_prev;  // per BlockCache in use: the last step's residual (host copy)
    const bool seq_cfg = plan.mem.sequential_cfg && B == 2;
    Tensor vseq = seq_cfg ? Tensor::empty({B, 16, g.T, g.h, g.w}, DType::F32, dev) : Tensor();
    Progress prog("sampling", o.steps, rank0() ? -1 : 0, stderr);
    const auto ts = Clock::now();
    report("sampling", 0, o.steps, -1);
    for (int i = 0; i < o.steps; ++i) {
      point("sampling");
      for (int64_t b = 0; b < B; ++b) {
        Tensor dst = xb.select(0, b);
        dst.copy_from(x);
      }
      const float t = float(sampler->timestep(i));
      Tensor vb;
      try {
        cstep = i;
        if (seq_cfg) {
          // CFG sequential (the memory plan's choice): the same forward with one row at a time,
          // half the activations; its rows land where the batched forward puts them.
          for (int64_t b = 0; b < B; ++b) {
            model::DiT::BlockCache* bc = !tea && !calibrate ? nullptr : b == 0 ? &bcache : &bcache_uncond;
            const Tensor r = dit->forward(xb.slice(0, b, b + 1), {t}, context.slice(0, b, b + 1), *sps.sp, bc);
            Tensor dst = vseq.select(0, b);
            dst.copy_from(r.select(0, 0));
          }
          vb = vseq;
        } else {
          vb = dit->forward(xb, std::vector<float>(size_t(B), t), context, *sps.sp,
                            tea || calibrate ? &bcache : nullptr);
        }
        if (calibrate) {
          std::vector<model::DiT::BlockCache*> used = {&bcache};
          if (seq_cfg) used.push_back(&bcache_uncond);
          mag_prev.resize(used.size());
          std::vector<double> gammas;
          for (size_t k = 0; k < used.size(); ++k) {
            Tensor cur = used[k]->residual.to(Device::cpu()).clone();
            const std::vector<double> g = i == 0 ? std::vector<double>(size_t(cur.size(0)), 1.0)
                                                 : sample::residual_magnitude_ratios(cur, mag_prev[k]);
            gammas.insert(gammas.end(), g.begin(), g.end());
            mag_prev[k] = std::move(cur);
          }
          mag_cal.ratios.resize(gammas.size());
          for (size_t r = 0; r < gammas.size(); ++r) mag_cal.ratios[r].push_back(gammas[r]);
        }
      } catch (const Interrupted&) {
        throw Interrupted("sampling");  // stopped between two DiT blocks of this step
      }
      if (cfgp) {
        // Exchange with the paired rank (cfg rank = branch), then the same combine as batched CFG:
        // every rank forms the same v and takes the same step, so the latents stay equal.
        sps.cfg->all_gather(vb.select(0, 0).contiguous(), vpair);
        sample::cfg_combine(vpair.select(0, 0), vpair.select(0, 1), o.guidance, v);
      } else if (B == 2) {
        sample::cfg_combine(vb.select(0, 0), vb.select(0, 1), o.guidance, v);
      } else {
        v.copy_from(vb.select(0, 0));
      }
      sampler->step(i, v, x);
      check_finite_latent(x, i + 1, o.steps);
      res.steps_done = i + 1;
      if (show()) prog.update(i + 1);
      step_s = since(ts) / double(i + 1);
      report("sampling", i + 1, o.steps, step_s * double(o.steps - i - 1));
    }
    if (show()) prog.finish();
    if (calibrate) {
      mag_cal.steps = o.steps;
      mag_cal.note = str("osp generate --cache-calibrate: model ", plan.files.root, ", ", o.width, "x", o.height, "x",
                         o.frames, ", ", o.sampler, " ", o.steps, " steps, shift ", o.shift, ", guidance ", o.guidance,
                         ", seed ", o.seed, ", prompt \"", o.prompt, "\"");
      mag_cal.save(o.cache_calibrate);
      log_info("MagCache calibration (", mag_cal.ratios.size(), " rows x ", o.steps, " steps) written to ",
               o.cache_calibrate);
    }
    if (tea) {
      res.steps_cached = bcache.reused;
      log_info("step cache: ", cspec.str(), " reused the cached block residual at ", bcache.reused, " of ",
               o.steps, " steps (the DiT blocks ran ", o.steps - bcache.reused, " times)");
    }
    if (stream)
      log_verbose("DiT block streaming: ", stream->stats().copies, " block copies (", human_bytes(stream->stats().bytes_copied),
                  ") over ", o.steps, " steps; at most ", stream->stats().peak_resident, " blocks on the device at once");
    dit->drop_cuda_graph();  // its memory pool goes back to the cache before the VAE decode
    if (!keep) dit.reset(), stream.reset();
  }
  res.seconds["dit"] = since(t0);
  res.latent = x;

  // ---- 3. VAE decode (VAE loaded only now unless kept)
  t0 = Clock::now();
  Tensor video;
  {
    load_vae();
    model::DecodeOptions dopt = model::tiles_for_budget(plan.geo.h, plan.geo.w, plan.mem.vae_budget);
    // Every rank holds the final latent: a tiled decode deals its tiles out over the world (the
    // same video as on one rank, model::DecodeOptions::comm).
    if (sps.size > 1) dopt.comm = sps.comm;
    if (dopt.tile_h || dopt.tile_w)
      log_info("VAE: tiled decode (", dopt.tile_h, "x", dopt.tile_w, " latent tiles, overlap ", dopt.overlap, ")",
               sps.size > 1 ? str(", the tiles dealt out over ", sps.size, " ranks") : std::string());
    std::unique_ptr<Progress> vprog;
    const auto tv = Clock::now();
    dopt.on_chunk = [&](int64_t done, int64_t total) {
      if (show() && done == 0) vprog = std::make_unique<Progress>("VAE decode", int(total), -1, stderr);
      if (vprog && done > 0) vprog->update(int(done));
      report("VAE decode", int(done), int(total),
             done > 0 ? since(tv) / double(done) * double(total - done) : -1);
      point("VAE decode");
    };
    {
      // With the tiles dealt out the decode ends in a collective: Ctrl-C is deferred through it
      // and the ranks agree afterwards (any rank interrupted → all stop), so none waits in the sum
      // for a rank that already left.
      std::unique_ptr<DeferInterrupts> defer;
      if (dopt.comm) defer = std::make_unique<DeferInterrupts>();
      video = vae->decode(x, dopt);
      defer.reset();
      if (dopt.comm && dopt.comm->any(interrupted())) throw Interrupted("VAE decode");
    }
    if (vprog) vprog->finish();
    if (!keep) vae.reset();
  }
  res.seconds["vae"] = since(t0);
  log_info("VAE decoded in ", res.seconds["vae"], " s");

  // ---- 4. write (rank 0), atomically: complete or nothing
  t0 = Clock::now();
  res.rgb = io::video_to_rgb8(video);
  if (rank0() && !o.no_output) {
    report("writing", 0, 0, -1);
    point("writing");
    std::map<std::string, std::string> meta = {
        {"title", o.prompt},
        {"comment", str("osp generate: ", o.width, "x", o.height, "x", o.frames, ", ", o.steps, " ",
                        o.sampler, " steps, shift ", o.shift, ", guidance ", o.guidance,
                        o.noise.empty() ? str(", seed ", o.seed) : str(", noise ", fs::path(o.noise).filename().string()),
                        ", attention ", o.attention, ", quant ", o.quant,
                        o.cache == "none" ? std::string() : ", cache " + o.cache,
                        ", model ", layout_name(plan.files.layout))},
        {"osp_seed", std::to_string(o.seed)},
        {"osp_negative_prompt", o.negative_prompt},
    };
    if (!o.noise.empty()) meta["osp_noise"] = fs::path(o.noise).filename().string();  // the seed did not count
    write_output(o, res.rgb, meta, [this](const char* st) { point(st); });
    res.out_path = o.out;
    log_info("wrote ", o.out);
  }
  res.seconds["write"] = since(t0);
}

}  // namespace osp::pipeline
