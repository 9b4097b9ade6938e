// `osp train`: flow-matching fine-tuning / training of the DiT on an encoder cache
// (train/trainer.h), and `osp encode-dataset`: building that cache from images or videos with
// captions (Wan-VAE encoder + umT5).
#include "osp/cli/train_command.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "osp/cli/config_flags.h"
#include "osp/cli/dit_weights.h"
#include "osp/cli/run_command.h"
#include "osp/core/device.h"
#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/core/progress.h"  // install_interrupt_handler(), interrupted()
#include "osp/parallel/communicator.h"
#include "osp/io/checkpoint.h"
#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "osp/model/dit_config.h"
#include "osp/model/lora.h"
#include "osp/model/vae.h"
#include "osp/pipeline/model_dir.h"
#include "osp/pipeline/text_encoder.h"
#include "osp/train/dit_train_model.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/memory_plan.h"
#include "osp/train/output_files.h"
#include "osp/train/trainer.h"
#include "osp/train/video_clips.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace osp::cli {
namespace {

// ------------------------------------------------------------------------------------ train

// The DiT weights and config of a model folder (HiF8 8-bit DiTs are dequantized).
void load_model_dir(const std::string& dir, model::DiTConfig& cfg, std::map<std::string, Tensor>& weights,
                    std::vector<std::pair<std::string, std::string>>& links) {
  const pipeline::ModelFiles f = pipeline::detect_model_dir(dir);
  load_dit_weights(f, cfg, weights);
  // The other model files, linked into every checkpoint so it is a complete model folder. Only
  // the original layout (and OSP-Next / demo) keeps them at the root under fixed names.
  if (f.layout != pipeline::ModelLayout::WanDiffusers) {
    const fs::path root = fs::absolute(f.root);
    for (const std::string& p : {f.t5, f.vae, f.tokenizer}) {
      const fs::path rel = fs::relative(fs::absolute(p), root);
      if (!rel.empty() && rel.native()[0] != '.') links.emplace_back(rel.string(), fs::absolute(p).string());
    }
    if (fs::exists(root / "OSP_DEMO_RANDOM_WEIGHTS"))
      links.emplace_back("OSP_DEMO_RANDOM_WEIGHTS", (root / "OSP_DEMO_RANDOM_WEIGHTS").string());
  } else {
    log_warn("the base model has the diffusers layout: checkpoints hold the DiT (Wan names) and config.json only; "
             "copy the umT5/VAE files beside them to generate with a checkpoint");
  }
}

int run_train(const train::TrainOptions& o) {
  const int nranks = parallel::launcher_size(), rank = parallel::launcher_rank();
  if (rank > 0 && log_level() >= LogLevel::Info) set_log_level(LogLevel::Warn);  // rank 0 speaks
  // settings, data, output folder, checkpoint: before any weight is read
  train::preflight(o, /*writer=*/rank == 0);
  OSP_CHECK(o.sp == "none" || nranks > 1, "--sp ", o.sp, " needs several ranks: launch with mpirun -np N");
  o.sp_group_size(nranks);  // --sp-size and --dp against the rank count
  install_interrupt_handler("the last complete step will be saved as a checkpoint");
  model::DiTConfig cfg;
  std::map<std::string, Tensor> weights;
  train::TrainHooks hooks;
  if (o.from_scratch) {
    cfg = model::DiTConfig::from_json_file(o.config_model);
    cfg.validate();
    weights = train::random_dit_weights(cfg, o.seed);
    log_info("from scratch: random DiT weights from seed ", o.seed, " (", cfg.summary(), ")");
  } else {
    load_model_dir(o.model, cfg, weights, hooks.checkpoint_links);
  }
  train::DiTTrainOptions d;
  d.attention = o.attention;
  d.quant = o.quant;
  d.device = parse_device(o.device);
  d.keep_attention = o.keep_attention;
  d.ffn_chunks = int(o.ffn_chunks);
  d.offload_block_inputs = o.offload_checkpoints;
  if (d.offload_block_inputs && d.device.is_cpu())
    log_info("--offload-checkpoints on the CPU: the checkpoints are host memory already; it only adds copies");
  d.full_blocks = int(o.full_blocks);
  d.lora_rank = o.lora_rank;
  d.lora_alpha = o.lora_alpha;
  d.lora_targets = model::split_lora_targets(o.lora_targets);
  d.lora_seed = o.seed;
  if (nranks > 1) {
    const std::string backend = d.device.is_cuda() ? "nccl" : "mpi";
    OSP_CHECK(d.device.is_cuda() ? parallel::nccl_built() : parallel::mpi_built(), "training on ", nranks, " ranks on ",
              d.device.name(), " needs the ", backend, " backend, which this build lacks");
    parallel::set_collective_timeout(o.collective_timeout);
    d.world = parallel::make_communicator(backend);
    if (d.device.is_cuda() && cuda_device_count() > 1) d.device = Device::cuda(parallel::launcher_local_rank());
    d.sp = o.sp;
    d.sp_size = int(o.sp_group_size(nranks));
    log_info("training on ", nranks, " ranks (", d.device.is_cuda() ? "NCCL" : "MPI", "): ", nranks / d.sp_size,
             " data-parallel x ", d.sp_size, " sequence-parallel (", o.sp, ")");
  }
  // Test hook (tests/train/train_timeout_cli_test): OSP_TEST_STALL_RANK_AT_STEP="R:S" makes rank
  // R stop answering after step S (it sleeps 5 minutes and exits), as a hung rank would.
  if (const char* e = std::getenv("OSP_TEST_STALL_RANK_AT_STEP")) {
    int r = -1;
    long long at = -1;
    if (std::sscanf(e, "%d:%lld", &r, &at) == 2 && r == rank)
      hooks.on_step = [r, at](const train::StepLog& st) {
        if (st.step != at) return;
        std::fprintf(stderr, "osp: test hook: rank %d stops answering after step %lld\n", r, at);
        std::this_thread::sleep_for(std::chrono::minutes(5));
        std::_Exit(3);
      };
  }
  // Test hook (tests/train/train_cli_test): OSP_TEST_SIGINT_AT_STEP=S sends this process SIGINT
  // right after step S — a Ctrl-C at a known step, where a test polling the log could lose the race
  // against a run that finishes first.
  if (const char* e = std::getenv("OSP_TEST_SIGINT_AT_STEP")) {
    const long long at = std::atoll(e);
    auto prev = hooks.on_step;
    hooks.on_step = [at, prev](const train::StepLog& st) {
      if (prev) prev(st);
      if (st.step == at) std::raise(SIGINT);
    };
  }
  train::DiTTrainModel m(cfg, weights, d);
  weights.clear();
  const train::TrainResult r = train::run_training(o, m, hooks);
  if (r.interrupted) {
    std::fprintf(stderr, "osp: interrupted (Ctrl-C) after step %lld; saved %s (resume with --resume %s)\n",
                 static_cast<long long>(r.steps_done), r.last_checkpoint.c_str(), o.out.c_str());
    return 130;
  }
  if (log_level() >= LogLevel::Info) {
    std::fprintf(stderr, "osp: trained %lld steps; checkpoint %s\n", static_cast<long long>(r.steps_done),
                 r.last_checkpoint.c_str());
    if (o.lora_rank > 0 && !o.model.empty())
      std::fprintf(stderr, "osp: generate with it: osp generate --model %s --lora %s/lora.safetensors --prompt ...\n",
                   o.model.c_str(), r.last_checkpoint.c_str());
  }
  return 0;
}

// ------------------------------------------------------------------------------------ train --dry-run

// What `osp train --dry-run` plans for besides the training settings.
struct DryRunOptions {
  bool on = false;
  std::string video;    // WIDTHxHEIGHTxFRAMES ("" = the first sample of --data)
  int64_t ranks = 0;    // 0: the launcher's rank count (1 outside mpirun)
  double gpu_gib = 0;   // device memory for the verdict (0: none)
};

// Prints the per-GPU memory plan (train/memory_plan.h) of the run the options describe, for
// --ranks ranks, without loading weights or data (only config.json, and the cache manifest
// when no --video is given).
int run_dry_run(const train::TrainOptions& o, const DryRunOptions& d) {
  model::DiTConfig cfg;
  if (!o.config_model.empty()) {
    cfg = model::DiTConfig::from_json_file(o.config_model);
  } else {
    OSP_CHECK(!o.model.empty(), "--dry-run needs the model: --model DIR or --config-model FILE (a DiT config.json)");
    const pipeline::ModelFiles f = pipeline::detect_model_dir(o.model);
    OSP_CHECK(!f.dit_config.empty(), "--dry-run: ", o.model, " has no DiT config.json; give --config-model FILE");
    cfg = model::DiTConfig::from_json_file(f.dit_config);
  }
  cfg.validate();
  cfg = train::config_for_attention(cfg, o.attention, int(o.full_blocks));
  train::MemoryPlanInput in;
  in.cfg = cfg;
  std::string size;
  if (!d.video.empty()) {
    long long w = 0, h = 0, f = 0;
    char tail = 0;
    OSP_CHECK(std::sscanf(d.video.c_str(), "%lldx%lldx%lld%c", &w, &h, &f, &tail) == 3 && w >= 16 && h >= 16 &&
                  w % 16 == 0 && h % 16 == 0 && f >= 1 && (f - 1) % 4 == 0,
              "--video must be WIDTHxHEIGHTxFRAMES (multiples of 16, frames 4n+1) such as 1280x720x81, got '", d.video,
              "'");
    train::latent_from_video(f, h, w, in);
    size = str(w, "x", h, "x", f, " (latent ", in.latent_t, "x", in.latent_h, "x", in.latent_w, ")");
  } else {
    OSP_CHECK(!o.data.empty(), "--dry-run needs the video size: --video WIDTHxHEIGHTxFRAMES or --data CACHE");
    train::LatentDatasetOptions dopt;
    dopt.batch = o.batch;
    const train::LatentDataset data = train::LatentDataset::open(o.data, dopt);
    OSP_CHECK(data.size() > 0, "--dry-run: the cache ", o.data, " holds no samples");
    const Shape& ls = data.samples()[0].latent_shape;  // [C, F, H, W]
    in.latent_t = ls[1], in.latent_h = ls[2], in.latent_w = ls[3];
    size = str("latent ", ls[1], "x", ls[2], "x", ls[3], " (the first sample of ", o.data, ")");
  }
  in.kinds = cfg.block_kinds();
  in.P = int(cfg.sparse_ratio);
  const int64_t ranks = d.ranks > 0 ? d.ranks : parallel::launcher_size();
  const int64_t S = o.sp_group_size(ranks);
  const int64_t D = ranks / S;
  OSP_CHECK(o.batch % (D * o.grad_accum) == 0, "--batch ", o.batch, " must be a multiple of ", D,
            " data-parallel ranks x ", o.grad_accum, " accumulation micro-batches");
  in.sp = o.sp;
  in.sp_size = int(S);
  in.dp_size = int(D);
  in.batch = o.batch / (D * o.grad_accum);
  in.sharded_state = train::resolve_sharded_state(o, ranks > 1, o.lora_rank > 0);  // the trainer's rule
  in.sharded_gradients = o.shard_gradients || o.shard_weights;  // --shard-weights implies it
  in.sharded_weights = o.shard_weights;
  in.released_gradients = !in.sharded_state && !o.keep_gradients;
  in.keep_attention = o.keep_attention;
  in.ffn_chunks = int(o.ffn_chunks);
  in.offload_block_inputs = o.offload_checkpoints;
  in.transient_weights = o.transient_weights;
  if (o.lora_rank > 0) {
    model::LoraInit li;
    li.rank = o.lora_rank;
    li.targets = model::split_lora_targets(o.lora_targets);
    if (li.targets.empty()) li.targets = model::default_lora_targets();
    in.lora_params = model::lora_parameter_count(model::DiT::expected_shapes(cfg), li);
  }
  in.act_bytes = parse_device(o.device).is_cuda() ? 2 : 4;
  in.prefetch_weights = in.act_bytes == 2;  // prefetch where the gathers overlap (nccl)
  in.capacity_bytes = d.gpu_gib * double(1ull << 30);
  const train::MemoryPlan p = train::plan_train_memory(in);
  const std::string ckpt_note = std::string(in.keep_attention ? " (attention kept)" : "") +
                                (in.offload_block_inputs ? " (inputs offloaded to the host)" : "");
  std::printf("osp train --dry-run: %s, %s, %lld ranks = %lld SP (%s) x %lld DP, %lld sample(s) per rank per "
              "micro-step, optimizer state%s, activation checkpointing%s, %s activations\n%s",
              cfg.summary().c_str(), size.c_str(), (long long)ranks, (long long)S, o.sp.c_str(), (long long)D,
              (long long)in.batch,
              in.sharded_weights     ? ", gradients and weights sharded"
              : in.sharded_gradients ? " and gradients sharded"
              : in.sharded_state     ? " sharded"
                                     : " not sharded",
              ckpt_note.c_str(), in.act_bytes == 2 ? "bf16" : "F32",
              p.table().c_str());
  if (!p.fits) {  // what the same run needs to fit, by the same plan: one change at a time, then together
    const double gib = double(1ull << 30);
    std::vector<std::pair<std::string, train::MemoryPlanInput>> tries;
    auto with = [&](const std::string& flags, auto change) {
      train::MemoryPlanInput t = in;
      change(t);
      tries.emplace_back(flags, t);
    };
    if (in.keep_attention) with("without --keep-attention", [](auto& t) { t.keep_attention = false; });
    const bool can_chunk_ffn = in.ffn_chunks <= 1 && o.quant == "none";
    if (can_chunk_ffn) with("--ffn-chunks 4", [](auto& t) { t.ffn_chunks = 4; });
    if (!in.offload_block_inputs) with("--offload-checkpoints", [](auto& t) { t.offload_block_inputs = true; });
    if (!in.sharded_state && !in.transient_weights && in.lora_params == 0)
      with("--transient-weights", [](auto& t) { t.transient_weights = true; });
    if (in.sharded_state && !in.sharded_gradients) with("--shard-gradients", [](auto& t) { t.sharded_gradients = true; });
    if (in.sharded_state && !in.sharded_weights)
      with("--shard-weights", [](auto& t) { t.sharded_gradients = t.sharded_weights = true; });
    if (tries.size() > 1) {  // every change together (the last of the sharding ones implies the other)
      train::MemoryPlanInput all = in;
      all.keep_attention = false;
      if (can_chunk_ffn) all.ffn_chunks = 4;
      all.offload_block_inputs = true;
      all.transient_weights = !in.sharded_state && in.lora_params == 0;
      all.sharded_gradients = all.sharded_weights = in.sharded_state;
      tries.emplace_back("all of these", all);
    }
    std::string fits;
    for (const auto& [flags, t] : tries) {
      const train::MemoryPlan q = train::plan_train_memory(t);
      char line[256];
      std::snprintf(line, sizeof line, "  %-28s %8.2f GiB%s\n", flags.c_str(), q.total / gib, q.fits ? "  fits" : "");
      fits += line;
    }
    if (!fits.empty()) std::printf("does not fit; by the same plan, with\n%s", fits.c_str());
    if (in.lora_params > 0)
      std::printf("  SP ranks (mpirun -np N --sp ssp) split the activations\n");
    else if (!in.sharded_state)
      std::printf("  several ranks shard the optimizer state (mpirun -np N: --shard-optimizer auto), and SP ranks "
                  "(--sp ssp) split the activations\n");
  }
  return 0;
}

// ------------------------------------------------------------------------------------ encode-dataset

struct MediaItem {
  std::string file, caption;
};

bool is_image(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".png";
}
bool is_video(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".mp4" || e == ".mkv" || e == ".webm" || e == ".avi" || e == ".mov";
}

// A folder (every .png / video with a caption in <stem>.txt beside it) or a JSON-lines manifest
// ({"file": "relative/or/absolute", "caption": "..."} per line).
std::vector<MediaItem> list_media(const std::string& input) {
  std::vector<MediaItem> items;
  if (fs::is_directory(input)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(input))
      if (e.is_regular_file() && (is_image(e.path()) || is_video(e.path()))) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& p : files) {
      fs::path cap = p;
      cap.replace_extension(".txt");
      OSP_CHECK(fs::exists(cap), "encode-dataset: ", p.string(), " has no caption file ", cap.string());
      std::string c = train::read_text_file(cap.string());
      while (!c.empty() && (c.back() == '\n' || c.back() == '\r' || c.back() == ' ')) c.pop_back();
      items.push_back({p.string(), c});
    }
    OSP_CHECK(!items.empty(), "encode-dataset: ", input, " holds no .png or video files");
    return items;
  }
  OSP_CHECK(fs::is_regular_file(input), "encode-dataset: --input ", input, " is neither a folder nor a manifest file");
  std::ifstream f(input);
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const json j = json::parse(line);
      fs::path p = j.at("file").get<std::string>();
      if (p.is_relative()) p = fs::path(input).parent_path() / p;
      items.push_back({p.string(), j.at("caption").get<std::string>()});
    } catch (const json::exception& e) {
      fail(str("encode-dataset: ", input, " line ", n, ": expected {\"file\": ..., \"caption\": ...} (", e.what(), ")"));
    }
  }
  OSP_CHECK(!items.empty(), "encode-dataset: manifest ", input, " lists no files");
  return items;
}

struct EncodeOptions {
  std::string model, input, out, size = "832x480", device = "cpu";
  int frames = 81;
  double fps = 16;                        // sampling rate of the clips (0: the video's own frames)
  std::string temporal_crop = "start";    // start | spread | random (train/video_clips.h)
  int64_t clips_per_video = 1;
  uint64_t seed = 0;                      // random temporal crops
  int64_t per_shard = 64;
  bool overwrite = false;
};

int stop_encoding(const char* stage) {
  std::fprintf(stderr, "osp: interrupted (Ctrl-C) during %s; no cache written (its manifest is written last)\n", stage);
  return 130;
}

int run_encode(const EncodeOptions& o) {
  install_interrupt_handler();
  int64_t W = 0, H = 0;
  {
    const auto x = o.size.find_first_of("x*");
    OSP_CHECK(x != std::string::npos, "--size must be WIDTHxHEIGHT, got '", o.size, "'");
    W = std::atoll(o.size.substr(0, x).c_str());
    H = std::atoll(o.size.substr(x + 1).c_str());
    OSP_CHECK(W >= 16 && H >= 16 && W % 16 == 0 && H % 16 == 0, "--size: width and height must be multiples of 16 (>= 16), got ",
              o.size);
  }
  OSP_CHECK(o.frames >= 1 && (o.frames - 1) % 4 == 0, "--frames must be 4n+1, got ", o.frames);
  OSP_CHECK(std::isfinite(o.fps) && o.fps >= 0, "--fps must be >= 0 (0: the video's own frames), got ", o.fps);
  OSP_CHECK(o.clips_per_video >= 1, "--clips-per-video must be >= 1, got ", o.clips_per_video);
  const train::TemporalCrop crop = train::parse_temporal_crop(o.temporal_crop);
  const std::vector<MediaItem> items = list_media(o.input);
  const pipeline::ModelFiles files = pipeline::detect_model_dir(o.model);
  const Device dev = parse_device(o.device);
  train::LatentCacheWriter writer(o.out, o.per_shard, o.overwrite ? io::Overwrite::Allow : io::Overwrite::Refuse);

  // 1. Text: every caption and the empty prompt (caption dropout), then the encoder is released.
  std::vector<Tensor> contexts;
  Tensor empty;
  {
    model::DiTConfig dcfg;
    if (!files.dit_config.empty()) dcfg = model::DiTConfig::from_json_file(files.dit_config);
    auto te = pipeline::TextEncoder::load(files, dev, dcfg.text_len);
    for (const auto& it : items) {
      if (interrupted()) return stop_encoding("text encoding");
      contexts.push_back(te->encode({it.caption}).at(0).to(Device::cpu()));
    }
    empty = te->encode({""}).at(0).to(Device::cpu());
  }
  writer.set_empty_context(empty);
  // 2. Media through the VAE encoder.
  const model::WanVae vae = model::WanVae::load(model::weight_getter(pipeline::open_vae(files)), dev);
  for (size_t i = 0; i < items.size(); ++i) {
    if (interrupted()) return stop_encoding("VAE encode");
    const MediaItem& it = items[i];
    const std::string name = fs::path(it.file).filename().string();
    // (frames, source) of each clip of this item: an image is one frame; a video gives
    // clips_per_video windows of --frames frames sampled at --fps
    std::vector<std::pair<Tensor, std::string>> clips;
    if (is_image(it.file)) {
      clips.emplace_back(io::read_png(it.file).unsqueeze(0), name);
    } else {
      Tensor rgb;
      const io::VideoProbe p = io::probe_video(it.file, &rgb);  // throws without FFmpeg, naming the build option
      if (o.fps > 0 && p.fps <= 0) log_warn("encode-dataset: ", it.file, " does not say its frame rate; its own frames are taken");
      const int64_t span = train::clip_span(o.frames, p.fps, o.fps);
      OSP_CHECK(rgb.size(0) >= span, "encode-dataset: ", it.file, " has ", rgb.size(0), " frames (", p.fps,
                " fps); --frames ", o.frames, o.fps > 0 ? str(" at --fps ", o.fps) : std::string(), " needs ", span);
      const int64_t fsize = rgb.size(1) * rgb.size(2) * 3;
      for (const int64_t start : train::clip_starts(crop, o.clips_per_video, rgb.size(0), span, o.seed, uint64_t(i))) {
        const std::vector<int64_t> idx = train::clip_frame_indices(start, o.frames, p.fps, o.fps);
        Tensor sel = Tensor::empty({o.frames, rgb.size(1), rgb.size(2), 3}, DType::U8);
        for (size_t k = 0; k < idx.size(); ++k)
          std::memcpy(sel.data<uint8_t>() + int64_t(k) * fsize, rgb.data<uint8_t>() + idx[k] * fsize, size_t(fsize));
        clips.emplace_back(sel, str(name, "#frames=", idx.front(), "-", idx.back()));
      }
    }
    for (const auto& [frames, source] : clips) {
      const Tensor latent = vae.encode(train::center_crop_resize(frames, W, H).to(dev)).to(Device::cpu());
      writer.add(latent, contexts[i], it.caption, source);
      log_info("encoded ", i + 1, "/", items.size(), ": ", source, " -> latent ", shape_str(latent.shape()));
    }
  }
  const int64_t n = writer.finish();
  if (log_level() >= LogLevel::Info) std::fprintf(stderr, "osp: wrote a latent cache of %lld samples to %s\n",
                                                   static_cast<long long>(n), o.out.c_str());
  return 0;
}

}  // namespace

void add_train_commands(CLI::App& app) {
  // ---- osp train
  auto* t = app.add_subcommand("train", "train / fine-tune the DiT on a latent cache (flow matching)");
  // The callback starts from the defaults, applies --config, then the options given on the
  // command line (which win over the file).
  auto flags = std::make_shared<ConfigFlags<train::TrainOptions>>(t);
#define OSP_TRAIN_OPT(name, field, help) flags->option(name, &train::TrainOptions::field, help)
#define OSP_TRAIN_FLAG(name, field, help) flags->flag(name, &train::TrainOptions::field, help)
  OSP_TRAIN_OPT("-m,--model", model, "model folder to fine-tune (Wan2.1 / OSP-Next / demo layouts)");
  OSP_TRAIN_FLAG("--from-scratch", from_scratch, "random initial weights from --seed (needs --config-model)");
  OSP_TRAIN_OPT("--config-model", config_model, "DiT config.json for --from-scratch");
  OSP_TRAIN_OPT("--data", data, "latent cache folder (osp encode-dataset)");
  OSP_TRAIN_OPT("--attention", attention, "full | hybrid (OSP-Next dual-end Skiparse-2D)");
  OSP_TRAIN_OPT("--full-blocks", full_blocks,
                "--attention hybrid on a full-attention (Wan2.1) model: full blocks of the dual-end layout "
                "(0 = OSP-Next's 8, half at each end; a multiple of 4)");
  OSP_TRAIN_OPT("--quant", quant, "none | hif8 (quantization-aware training)");
  OSP_TRAIN_OPT("--device", device, "cpu | cuda | cuda:N");
  OSP_TRAIN_OPT("--steps", steps, "optimizer steps in total (default 1000)");
  OSP_TRAIN_OPT("--batch", batch, "samples per step, one latent size per batch (default 1)");
  OSP_TRAIN_OPT("--grad-accum", grad_accum, "run each batch as N micro-batches (same gradient, less memory)");
  OSP_TRAIN_OPT("--lr", lr, "peak learning rate (default 2e-5)");
  OSP_TRAIN_OPT("--weight-decay", weight_decay, "AdamW decoupled weight decay (default 0)");
  OSP_TRAIN_OPT("--beta1", beta1, "AdamW beta1 (default 0.9)");
  OSP_TRAIN_OPT("--beta2", beta2, "AdamW beta2 (default 0.999)");
  OSP_TRAIN_OPT("--eps", eps, "AdamW eps (default 1e-15, as OSP-Next)");
  OSP_TRAIN_OPT("--warmup", warmup, "linear warm-up steps (default 0)");
  OSP_TRAIN_OPT("--schedule", schedule, "constant | cosine (after the warm-up)");
  OSP_TRAIN_OPT("--clip", clip, "none | fixed:X | adaptive (default; OSP-Next's EMA mean + 3 std rule)");
  OSP_TRAIN_OPT("--ema", ema, "off (default) | a decay such as 0.9999: EMA of the weights, saved with checkpoints");
  OSP_TRAIN_OPT("--caption-dropout", caption_dropout, "probability of training on the empty prompt (default 0.1)");
  OSP_TRAIN_OPT("--shift", shift, "dynamic (default, from the latent size) or a static time shift");
  OSP_TRAIN_OPT("--seed", seed, "seed of σ, noise, caption dropout, data order (and --from-scratch weights)");
  OSP_TRAIN_OPT("-o,--out", out, "output folder: checkpoint-N/ folders, latest, train_log.jsonl");
  OSP_TRAIN_OPT("--save-every", save_every, "checkpoint every N steps (0 = only at the end and on Ctrl-C)");
  OSP_TRAIN_OPT("--sp", sp, "none | ssp | ulysses: sequence parallelism over --sp-size ranks (mpirun -np N)");
  OSP_TRAIN_OPT("--sp-size", sp_size, "ranks per sequence-parallel group (0 = ranks / --dp); the rest is data parallelism");
  OSP_TRAIN_OPT("--dp", dp, "data-parallel size (0 = ranks / --sp-size); ranks = SP x DP");
  OSP_TRAIN_OPT("--shard-optimizer", shard_optimizer,
                "auto (on with several ranks) | on | off: each rank keeps 1/N of the fp32 masters and AdamW moments");
  OSP_TRAIN_FLAG("--shard-gradients", shard_gradients,
                 "also shard the gradients (ZeRO-2): a block's full gradients live only during its backward");
  OSP_TRAIN_FLAG("--shard-weights", shard_weights,
                 "also shard the weights (ZeRO-3, implies --shard-gradients): a block's weights are all-gathered "
                 "before its forward and backward and released after; embeddings and head stay replicated");
  OSP_TRAIN_FLAG("--keep-gradients", keep_gradients,
                 "keep every block's F32 gradient allocated between steps (default: a block's gradient exists from "
                 "its backward to the optimizer step; unsharded optimizer only)");
  OSP_TRAIN_FLAG("--keep-attention", keep_attention,
                 "keep every block's self-attention output from the forward so the checkpoint recompute skips "
                 "the attention core (faster at video sizes; 100 MB more per 1.3B block at 832x480x81; same gradients)");
  OSP_TRAIN_FLAG("--deterministic", deterministic,
                 "the same gradient bits on every run of the same data and seed: the CUDA attention backward runs "
                 "osp's own kernel (no atomics) instead of cuDNN's, which differs run to run (about 2.7x slower "
                 "attention backward at 1.3B; the CPU is deterministic either way)");
  OSP_TRAIN_OPT("--ffn-chunks", ffn_chunks,
                "run each block's FFN in N row chunks wherever a tape is recorded (the checkpoint recompute): its "
                "backward recomputes fc1 + GELU per chunk instead of keeping two [rows, ffn] activations (1.6 GiB "
                "less by the memory plan at 1.3B 832x480x81 with 4; one more fc1 GEMM per block; 0/1 = off; not "
                "with --quant hif8)");
  OSP_TRAIN_FLAG("--offload-checkpoints", offload_checkpoints,
                 "keep the activation checkpoints (every block's F32 input) in pinned host memory instead of on "
                 "the GPU: copied out during the forward and back during the backward beside the compute (5.6 "
                 "GiB less at 1.3B 832x480x81, as much host memory; same gradients; on the CPU only extra copies)");
  OSP_TRAIN_OPT("--lora-rank", lora_rank,
                "LoRA fine-tuning: adapters of this rank on a frozen base instead of every weight (0 = off); "
                "checkpoints hold lora.safetensors for osp generate --lora");
  OSP_TRAIN_OPT("--lora-alpha", lora_alpha, "LoRA alpha (default 64; the adapters' scale is alpha/rank)");
  OSP_TRAIN_OPT("--lora-targets", lora_targets,
                "comma-separated block linears for the adapters (default self_attn.q,k,v,o and cross_attn.q,k,v,o)");
  OSP_TRAIN_FLAG("--profile", profile,
                 "time every stage of the step (forward, checkpoint recompute, backward by layer) from step 2 on; "
                 "the per-step table goes to OUT/profile.txt and stderr at the end");
  OSP_TRAIN_FLAG("--transient-weights", transient_weights,
                 "unsharded optimizer: no resident compute copy of the blocks' weights; each block's is made from its "
                 "fp32 master before its forward and backward and freed after (2 bytes per parameter less on CUDA)");
  OSP_TRAIN_FLAG("--no-overlap-reduction{false}", overlap_reduction,
                 "several ranks: reduce the gradients after the backward instead of block by block during it");
  OSP_TRAIN_OPT("--collective-timeout", collective_timeout,
                "seconds a rank waits for the others in one collective before every rank stops with an error "
                "(default 600; 0 = forever)");
  OSP_TRAIN_OPT("--keep", keep, "keep only the newest N checkpoints (0 = all)");
  OSP_TRAIN_OPT("--resume", resume, "a checkpoint folder, or a previous --out folder (its latest checkpoint)");
  OSP_TRAIN_FLAG("--skip-bad-samples", skip_bad_samples, "skip (and count) unreadable samples instead of stopping");
#undef OSP_TRAIN_OPT
#undef OSP_TRAIN_FLAG
  auto dry = std::make_shared<DryRunOptions>();
  t->add_flag("--dry-run", dry->on,
              "print the per-GPU memory plan of this run (weights, gradients, optimizer shards, activations, "
              "communication buffers) and exit; loads nothing");
  t->add_option("--video", dry->video, "--dry-run: video size WIDTHxHEIGHTxFRAMES (default: the first sample of --data)");
  t->add_option("--ranks", dry->ranks, "--dry-run: ranks to plan for (default: mpirun's -np, else 1)");
  t->add_option("--gpu-memory", dry->gpu_gib, "--dry-run: device memory in GiB for a fits / does NOT fit verdict");
  t->callback([t, flags, dry]() {
    run_command(
        *t,
        [&] {
          train::TrainOptions o = flags->resolve();
          o.quiet_progress = log_level() < LogLevel::Info;  // -q: warnings and errors only
          if (dry->on) return run_dry_run(o, *dry);
          return run_train(o);
        },
        "the last complete checkpoint (if any) is intact");
  });

  // ---- osp encode-dataset
  auto eo = std::make_shared<EncodeOptions>();
  auto* e = app.add_subcommand("encode-dataset", "build a latent cache for osp train (VAE encoder + umT5)");
  e->add_option("-m,--model", eo->model, "model folder with the umT5 encoder and a VAE with encoder weights")->required();
  e->add_option("-i,--input", eo->input,
                "folder of .png images / videos with <name>.txt captions, or a JSON-lines manifest "
                "({\"file\": ..., \"caption\": ...})")
      ->required();
  e->add_option("-o,--out", eo->out, "cache folder to write")->required();
  e->add_option("--size", eo->size, "WIDTHxHEIGHT (multiples of 16): center crop + resize")->capture_default_str();
  e->add_option("--frames", eo->frames, "frames per video clip, 4n+1 (images give one frame)")->capture_default_str();
  e->add_option("--fps", eo->fps, "the clips' frame rate: frames sampled from the video at this rate, as OSP-Next "
                "trains (16); 0 = the video's own consecutive frames")->capture_default_str();
  e->add_option("--temporal-crop", eo->temporal_crop, "where a video's clips start: start | spread (evenly over the "
                "video) | random (seeded by --seed)")->capture_default_str();
  e->add_option("--clips-per-video", eo->clips_per_video, "clips (cache samples) taken from each video")->capture_default_str();
  e->add_option("--seed", eo->seed, "seed of the random temporal crops")->capture_default_str();
  e->add_option("--device", eo->device, "cpu | cuda | cuda:N")->capture_default_str();
  e->add_option("--samples-per-shard", eo->per_shard, "samples per safetensors shard")->capture_default_str();
  e->add_flag("--overwrite", eo->overwrite, "replace an existing cache manifest");
  e->callback([e, eo]() { run_command(*e, [&] { return run_encode(*eo); }); });
}

}  // namespace osp::cli
