#include "osp/train/trainer.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/progress.h"
#include "osp/core/scope_exit.h"
#include "osp/io/atomic_file.h"
#include "osp/ops/backward.h"
#include "osp/train/adamw.h"
#include "osp/train/checkpoint.h"
#include "osp/train/data_parallel.h"
#include "osp/train/ema.h"
#include "osp/train/grad_clip.h"
#include "osp/train/latent_dataset.h"
#include "osp/train/lr_schedule.h"
#include "osp/train/output_files.h"
#include "osp/train/reference_config.h"
#include "osp/train/sharded_adamw.h"
#include "osp/train/timesteps.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace osp::train {

// ------------------------------------------------------------------------------------ options

namespace {

bool parse_ema(const std::string& s, double* decay) {
  if (s == "off" || s.empty()) return false;
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  OSP_CHECK(end && *end == 0 && std::isfinite(d) && d >= 0 && d < 1,
            "ema must be 'off' or a decay in [0, 1) such as 0.9999, got '", s, "'");
  *decay = d;
  return true;
}

TimestepConfig parse_shift(const std::string& s) {
  TimestepConfig c;
  if (s == "dynamic") {
    c.dynamic_shift = true;
    return c;
  }
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  OSP_CHECK(!s.empty() && end && *end == 0 && std::isfinite(x) && x > 0 && x <= 100,
            "shift must be 'dynamic' or a number in (0, 100], got '", s, "'");
  c.shift = x;
  return c;
}

}  // namespace

void TrainOptions::validate() const {
  OSP_CHECK(lora_rank >= 0, "--lora-rank must be >= 0 (0: every weight is trained), got ", lora_rank);
  OSP_CHECK(ffn_chunks >= 0, "--ffn-chunks must be >= 0 (0 or 1: off), got ", ffn_chunks);
  OSP_CHECK(ffn_chunks <= 1 || quant == "none",
            "--ffn-chunks needs --quant none (HiF8 QAT scales whole tensors; chunks would change them)");
  OSP_CHECK(lora_rank == 0 || (std::isfinite(lora_alpha) && lora_alpha > 0), "--lora-alpha must be > 0, got ", lora_alpha);
  OSP_CHECK(!(model.empty() && !from_scratch), "give --model DIR (fine-tune) or --from-scratch with --config-model FILE");
  OSP_CHECK(!(!model.empty() && from_scratch), "--model and --from-scratch exclude each other");
  OSP_CHECK(!from_scratch || !config_model.empty(), "--from-scratch needs --config-model FILE (a DiT config.json)");
  OSP_CHECK(attention == "full" || attention == "hybrid", "attention must be full or hybrid, got '", attention, "'");
  OSP_CHECK(quant == "none" || quant == "hif8", "quant must be none or hif8, got '", quant, "'");
  parse_device(device);
  OSP_CHECK(!data.empty(), "give --data CACHE (a latent cache written by `osp encode-dataset`)");
  OSP_CHECK(batch >= 1 && batch <= 4096, "batch must be in [1, 4096], got ", batch);
  OSP_CHECK(std::isfinite(caption_dropout) && caption_dropout >= 0 && caption_dropout <= 1,
            "caption-dropout must be in [0, 1], got ", caption_dropout);
  parse_shift(shift);
  OSP_CHECK(steps >= 1 && steps <= 1000000000, "steps must be in [1, 1e9], got ", steps);
  OSP_CHECK(std::isfinite(lr) && lr >= 0 && lr <= 1, "lr must be in [0, 1], got ", lr);
  OSP_CHECK(std::isfinite(weight_decay) && weight_decay >= 0 && weight_decay <= 10,
            "weight-decay must be in [0, 10], got ", weight_decay);
  OSP_CHECK(std::isfinite(beta1) && beta1 >= 0 && beta1 < 1, "beta1 must be in [0, 1), got ", beta1);
  OSP_CHECK(std::isfinite(beta2) && beta2 >= 0 && beta2 < 1, "beta2 must be in [0, 1), got ", beta2);
  OSP_CHECK(std::isfinite(eps) && eps > 0 && eps < 1, "eps must be in (0, 1), got ", eps);
  OSP_CHECK(warmup >= 0 && warmup <= steps, "warmup must be in [0, steps], got ", warmup);
  LrSchedule::parse_kind(schedule);
  GradClipConfig::parse(clip);
  double d;
  parse_ema(ema, &d);
  OSP_CHECK(!out.empty(), "give --out DIR (checkpoints and the training log go there)");
  OSP_CHECK(save_every >= 0, "save-every must be >= 0 (0 = only at the end), got ", save_every);
  OSP_CHECK(sp == "none" || sp == "ssp" || sp == "ulysses", "sp must be none, ssp or ulysses, got '", sp, "'");
  OSP_CHECK(shard_optimizer == "auto" || shard_optimizer == "on" || shard_optimizer == "off",
            "shard-optimizer must be auto, on or off, got '", shard_optimizer, "'");
  OSP_CHECK(std::isfinite(collective_timeout) && collective_timeout >= 0 && collective_timeout <= 1e7,
            "collective-timeout must be in [0, 1e7] seconds (0 = no timeout), got ", collective_timeout);
  OSP_CHECK(sp_size >= 0 && sp_size <= 4096, "sp-size must be in [0, 4096] (0 = every rank), got ", sp_size);
  OSP_CHECK(dp >= 0 && dp <= 65536, "dp must be in [0, 65536] (0 = ranks / sp-size), got ", dp);
  OSP_CHECK(grad_accum >= 1 && grad_accum <= 4096 && batch % grad_accum == 0, "grad-accum must be in [1, 4096] and divide batch (",
            batch, "), got ", grad_accum);
  OSP_CHECK(keep >= 0, "keep must be >= 0 (0 = keep every checkpoint), got ", keep);
}

int64_t TrainOptions::sp_group_size(int64_t ranks) const {
  OSP_CHECK(ranks >= 1, "sp_group_size: ", ranks, " ranks");
  int64_t S = 1;
  if (sp != "none") S = sp_size > 0 ? sp_size : dp > 0 ? ranks / dp : ranks;
  OSP_CHECK(S >= 1 && ranks % S == 0, ranks, " ranks do not split into sequence-parallel groups of ", S,
            " (--sp-size)");
  OSP_CHECK(dp == 0 || S * dp == ranks, "--dp ", dp, " x ", S, " sequence-parallel ranks (--sp ", sp,
            sp == "none" ? "" : str(", --sp-size ", S), ") is not the ", ranks, " ranks of the job");
  return S;
}

void TrainOptions::apply_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(str("training config ", source, " is not valid JSON: ", e.what()));
  }
  OSP_CHECK(j.is_object(), "training config ", source, " must be a JSON object of settings");
  j = translate_reference_config(j, ConfigKind::Train, source);  // OSP-Next's names where they fit
  for (const auto& [key0, v] : j.items()) {
    std::string key = key0;
    for (char& c : key)
      if (c == '-') c = '_';
    auto want = [&](bool ok, const char* type) {
      OSP_CHECK(ok, "training config ", source, ": '", key0, "' must be ", type, ", got ", v.dump());
    };
    auto get_str = [&](std::string& dst) { want(v.is_string(), "a string"); dst = v.get<std::string>(); };
    auto get_int = [&](int64_t& dst) { want(v.is_number_integer(), "an integer"); dst = v.get<int64_t>(); };
    auto get_num = [&](double& dst) { want(v.is_number(), "a number"); dst = v.get<double>(); };
    auto get_bool = [&](bool& dst) { want(v.is_boolean(), "true or false"); dst = v.get<bool>(); };
    if (key == "model") get_str(model);
    else if (key == "from_scratch") get_bool(from_scratch);
    else if (key == "config_model") get_str(config_model);
    else if (key == "attention") get_str(attention);
    else if (key == "quant") get_str(quant);
    else if (key == "device") get_str(device);
    else if (key == "data") get_str(data);
    else if (key == "batch") get_int(batch);
    else if (key == "skip_bad_samples") get_bool(skip_bad_samples);
    else if (key == "caption_dropout") get_num(caption_dropout);
    else if (key == "shift") {
      if (v.is_number()) shift = str(v.get<double>());
      else get_str(shift);
    } else if (key == "steps") get_int(steps);
    else if (key == "lr") get_num(lr);
    else if (key == "weight_decay") get_num(weight_decay);
    else if (key == "beta1") get_num(beta1);
    else if (key == "beta2") get_num(beta2);
    else if (key == "eps") get_num(eps);
    else if (key == "warmup") get_int(warmup);
    else if (key == "schedule") get_str(schedule);
    else if (key == "clip") get_str(clip);
    else if (key == "ema") {
      if (v.is_number()) ema = str(v.get<double>());
      else get_str(ema);
    } else if (key == "seed") {
      want(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), "an integer >= 0");
      seed = v.get<uint64_t>();
    } else if (key == "out") get_str(out);
    else if (key == "save_every") get_int(save_every);
    else if (key == "keep") get_int(keep);
    else if (key == "grad_accum") get_int(grad_accum);
    else if (key == "sp") get_str(sp);
    else if (key == "sp_size") get_int(sp_size);
    else if (key == "dp") get_int(dp);
    else if (key == "shard_optimizer") get_str(shard_optimizer);
    else if (key == "shard_gradients") get_bool(shard_gradients);
    else if (key == "shard_weights") get_bool(shard_weights);
    else if (key == "keep_gradients") get_bool(keep_gradients);
    else if (key == "keep_attention") get_bool(keep_attention);
    else if (key == "deterministic") get_bool(deterministic);
    else if (key == "ffn_chunks") get_int(ffn_chunks);
    else if (key == "offload_checkpoints") get_bool(offload_checkpoints);
    else if (key == "profile") get_bool(profile);
    else if (key == "full_blocks") get_int(full_blocks);
    else if (key == "lora_rank") get_int(lora_rank);
    else if (key == "lora_alpha") get_num(lora_alpha);
    else if (key == "lora_targets") get_str(lora_targets);
    else if (key == "transient_weights") get_bool(transient_weights);
    else if (key == "overlap_reduction") get_bool(overlap_reduction);
    else if (key == "collective_timeout") get_num(collective_timeout);
    else if (key == "resume") get_str(resume);
    else
      fail(str("training config ", source, ": unknown setting '", key0,
               "' (known: model, from_scratch, config_model, attention, quant, device, data, batch, "
               "skip_bad_samples, caption_dropout, shift, steps, lr, weight_decay, beta1, beta2, eps, warmup, "
               "schedule, clip, ema, sp, sp_size, dp, shard_optimizer, shard_gradients, shard_weights, keep_gradients, keep_attention, deterministic, ffn_chunks, offload_checkpoints, transient_weights, full_blocks, lora_rank, lora_alpha, lora_targets, profile, overlap_reduction, collective_timeout, grad_accum, seed, out, save_every, keep, resume)"));
  }
}

std::string TrainOptions::to_json() const {
  json j = {{"model", model},     {"from_scratch", from_scratch}, {"config_model", config_model},
            {"attention", attention}, {"quant", quant},           {"device", device},
            {"data", data},       {"batch", batch},               {"skip_bad_samples", skip_bad_samples},
            {"caption_dropout", caption_dropout}, {"shift", shift}, {"steps", steps},
            {"lr", lr},           {"weight_decay", weight_decay}, {"beta1", beta1},
            {"beta2", beta2},     {"eps", eps},                   {"warmup", warmup},
            {"schedule", schedule}, {"clip", clip},               {"ema", ema},
            {"full_blocks", full_blocks}, {"lora_rank", lora_rank}, {"lora_alpha", lora_alpha},
            {"lora_targets", lora_targets},
            {"seed", seed},       {"out", out},                   {"save_every", save_every},
            {"grad_accum", grad_accum}, {"deterministic", deterministic}};
  return j.dump();
}

// ------------------------------------------------------------------------------------ loop

void TrainModel::reduce_gradients(int accum_steps) {
  if (accum_steps > 1) scale_grads(parameters(), float(1.0 / accum_steps));
}

namespace {

double peak_memory_mb(Device dev) {
  if (dev.is_cuda()) return double(cuda_peak_bytes()) / 1048576.0;
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  return 0.0;
}

std::string log_line(const StepLog& s) {
  json j = {{"step", s.step},       {"loss", s.loss},   {"grad_norm", s.grad_norm}, {"clipped", s.clipped},
            {"lr", s.lr},           {"sigma", s.sigma}, {"tokens_per_s", s.tokens_per_s},
            {"peak_mem_mb", s.peak_mem_mb}, {"peak_reserved_mb", s.peak_reserved_mb}, {"seconds", s.seconds}, {"data_s", s.data_s},
            {"fwd_bwd_s", s.fwd_bwd_s},     {"opt_s", s.opt_s}};
  return j.dump();
}

// Keeps the log lines of steps <= `upto` (a resumed run rewrites what the killed run logged
// after its last checkpoint).
void trim_log(const std::string& path, int64_t upto) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      const json j = json::parse(line);
      if (j.at("step").get<int64_t>() <= upto) kept += line + "\n";
    } catch (const std::exception&) {
      // a torn last line of a killed run: dropped
    }
  }
  write_text_atomic(path, kept, io::Overwrite::Allow);
}

// [B, ...] from B tensors of one shape.
Tensor stack(const std::vector<Tensor>& xs) {
  Shape s = xs[0].shape();
  s.insert(s.begin(), int64_t(xs.size()));
  Tensor out = Tensor::empty(s, DType::F32);
  const int64_t n = xs[0].numel();
  for (size_t i = 0; i < xs.size(); ++i)
    std::memcpy(out.data<float>() + int64_t(i) * n, xs[i].contiguous().data<float>(), size_t(n) * sizeof(float));
  return out;
}

}  // namespace

namespace {

LatentDataset open_data(const TrainOptions& opt) {
  LatentDatasetOptions dopt;
  dopt.seed = opt.seed;
  dopt.batch = opt.batch;
  dopt.skip_bad_samples = opt.skip_bad_samples;
  LatentDataset data = LatentDataset::open(opt.data, dopt);
  if (opt.caption_dropout > 0)
    OSP_CHECK(data.has_empty_context(), "caption dropout ", opt.caption_dropout, " needs the empty-prompt embedding, but ",
              opt.data, " has none; re-encode the cache or pass --caption-dropout 0");
  return data;
}

}  // namespace

void preflight(const TrainOptions& opt, bool writer) {
  opt.validate();
  open_data(opt);
  if (!writer) {
    if (!opt.resume.empty()) resolve_checkpoint(opt.resume);
    return;
  }
  std::error_code ec;
  fs::create_directories(opt.out, ec);
  OSP_CHECK(fs::is_directory(opt.out), "cannot create the output folder ", opt.out,
            ec ? " (" + ec.message() + ")" : std::string());
  io::check_output_path((fs::path(opt.out) / "train_log.jsonl").string(), io::Overwrite::Allow);
  if (opt.resume.empty())
    OSP_CHECK(!fs::exists(fs::path(opt.out) / "latest"), "the output folder ", opt.out,
              " already holds a training run; pass --resume ", opt.out, " to continue it, or choose a new --out");
  else
    resolve_checkpoint(opt.resume);
}

bool resolve_sharded_state(const TrainOptions& o, bool several_ranks, bool lora) {
  const bool shard = o.shard_optimizer == "on" || (o.shard_optimizer == "auto" && several_ranks && !lora);
  OSP_CHECK(!(o.shard_gradients || o.shard_weights) || shard, o.shard_weights ? "--shard-weights" : "--shard-gradients",
            " needs the sharded optimizer (--shard-optimizer on, or auto with several ranks)");
  OSP_CHECK(!lora || (!shard && !o.transient_weights),
            "LoRA fine-tuning keeps its small state unsharded and its adapters resident: drop --shard-optimizer / "
            "--shard-gradients / --shard-weights / --transient-weights (the frozen base is bf16 on CUDA)");
  OSP_CHECK(!o.transient_weights || !shard, "--transient-weights is for the unsharded optimizer; with the sharded one use "
            "--shard-weights (the same per-block compute copies, gathered from the shards)");
  return shard;
}

TrainResult run_training(const TrainOptions& opt, TrainModel& model, const TrainHooks& hooks) {
  const bool writer = model.writes_outputs();
  preflight(opt, writer);
  const int dp_rank = model.dp_rank(), dp_size = model.dp_size();
  OSP_CHECK(opt.batch % dp_size == 0, "--batch ", opt.batch, " must be a multiple of the ", dp_size,
            " data-parallel ranks (every rank takes batch/", dp_size, " samples)");
  const std::string log_path = (fs::path(opt.out) / "train_log.jsonl").string();
  LatentDataset data = open_data(opt);
  Tensor empty_ctx;
  if (opt.caption_dropout > 0) empty_ctx = data.empty_context();

  // ---- optimisation state
  ParamTable params = model.parameters();
  AdamWConfig acfg;
  acfg.lr = opt.lr;
  acfg.beta1 = opt.beta1;
  acfg.beta2 = opt.beta2;
  acfg.eps = opt.eps;
  acfg.weight_decay = opt.weight_decay;
  // Sharded: the ranks of the model's mesh each own a slice of the masters and moments; the
  // EMA then follows this rank's master shard and is unsharded only to be saved.
  const ParallelGroups* groups = model.parallel_groups();
  const bool several = groups && groups->world && groups->world->size() > 1;
  const bool shard = resolve_sharded_state(opt, several, model.lora_alpha() > 0);
  OSP_CHECK(!shard || groups, "--shard-optimizer on: this model does not expose its rank groups");
  const bool shard_grads = opt.shard_gradients || opt.shard_weights;  // --shard-weights implies it
  // The values' shapes, read while every value is resident (weight sharding releases the blocks').
  std::vector<Shape> value_shapes;
  for (const ParamRef& p : params) value_shapes.push_back(p.value->shape());
  std::vector<std::pair<size_t, size_t>> grad_groups;
  if (shard_grads) {
    grad_groups = model.gradient_groups();
    OSP_CHECK(!grad_groups.empty(), "--shard-gradients: this model has no gradient groups");
  }
  std::unique_ptr<AdamW> adamw;
  std::unique_ptr<ShardedAdamW> sharded;
  if (shard) sharded = std::make_unique<ShardedAdamW>(params, *groups, acfg, GradReduceOptions{}, ShardGroup::World,
                                                      grad_groups);
  else adamw = std::make_unique<AdamW>(params, acfg);
  // The model reaches the optimizer through the hooks while this call runs (cleared on return;
  // the groups' gradients stay released).
  auto clear_hooks = on_scope_exit([&] {
    model.set_gradient_hooks({}, {});
    model.set_forward_hooks({}, {});
  });
  if (opt.shard_weights) {
    // ZeRO-3: a block's weights are gathered before its forward (the next block's gather
    // prefetched where the communicator overlaps) and before its backward (the previous block's
    // prefetched), released after each.
    const size_t n = grad_groups.size();
    OSP_CHECK(model.set_forward_hooks(
                  [&, n](size_t g) {
                    sharded->gather_group(g);
                    if (g + 1 < n) sharded->prefetch_group(g + 1);
                  },
                  [&](size_t g) { sharded->release_group(g); }),
              "--shard-weights: this model cannot gather its weights per block (no forward hooks)");
    sharded->shard_weights();
    log_verbose("weight sharding: block weights gathered per block over ", sharded->shard_size(), " ranks, ",
                sharded->prefetches() ? "the next block prefetched (overlapped)" : "no prefetch (blocking gathers)");
    model.set_gradient_hooks(
        [&](size_t g) {
          sharded->gather_group(g);
          if (g > 0) sharded->prefetch_group(g - 1);
          sharded->begin_group(g);
        },
        [&](size_t g) {
          sharded->end_group(g);
          sharded->release_group(g);
        });
  } else if (!grad_groups.empty()) {
    model.set_gradient_hooks([&](size_t g) { sharded->begin_group(g); }, [&](size_t g) { sharded->end_group(g); });
  }
  // Released gradients (unsharded optimizer, TrainOptions::keep_gradients false): a block's F32
  // gradient is allocated (zero) when its backward starts and released after the optimizer step,
  // so it does not coexist with the blocks' saved inputs at the start of the backward. With
  // accumulation it lives across the micro-batches of a step. The parameters outside the blocks
  // keep theirs (small). Every gradient is allocated again when this call returns.
  std::vector<std::pair<size_t, size_t>> released;
  if (!shard && !opt.keep_gradients) released = model.gradient_groups();
  std::vector<std::pair<Shape, Device>> grad_like(params.size());
  for (size_t k = 0; k < params.size(); ++k)
    if (params[k].grad && params[k].grad->defined()) grad_like[k] = {params[k].grad->shape(), params[k].grad->device()};
  auto allocate_grads = [&](size_t a, size_t b) {
    for (size_t k = a; k < b; ++k)
      if (!params[k].grad->defined()) *params[k].grad = Tensor::zeros(grad_like[k].first, DType::F32, grad_like[k].second);
  };
  auto release_grads = [&] {
    for (const auto& [a, b] : released)
      for (size_t k = a; k < b; ++k) *params[k].grad = Tensor();
  };
  // (out of memory while unwinding: the table is left with released gradients)
  auto restore_grads = on_scope_exit([&] {
    for (const auto& [a, b] : released) allocate_grads(a, b);
  });
  // Overlapped reduction (several ranks, unsharded: TrainOptions::overlap_reduction): after the
  // last micro-batch's backward of block g, its gradients are summed over the world without
  // waiting (mean over DP of SP sums = world sum / D; no block parameter is SP-replicated); the
  // sums are waited for and divided by D·A after the backward, and the parameters outside the
  // blocks take the bucketed two-phase reduction.
  std::vector<std::pair<size_t, size_t>> overlap_groups;
  if (!shard && several && opt.overlap_reduction) overlap_groups = model.gradient_groups();
  std::unique_ptr<GradientReducer> outside_reducer;
  ParamTable block_params;
  if (!overlap_groups.empty()) {
    std::vector<bool> in_block(params.size(), false);
    for (const auto& [a, b] : overlap_groups)
      for (size_t k = a; k < b; ++k) in_block[k] = true;
    ParamTable outside;
    for (size_t k = 0; k < params.size(); ++k) (in_block[k] ? block_params : outside).push_back(params[k]);
    outside_reducer = std::make_unique<GradientReducer>(outside, *groups);
  }
  int micro_now = 0, micro_last = 0;  // the micro-batch running, and the step's last one
  std::vector<int> tickets;
  // a step left by an exception must not leave reductions writing into freed gradients
  auto wait_tickets = on_scope_exit([&] {
    if (!tickets.empty() && groups && groups->world) groups->world->wait(tickets.back());
  });
  // Transient weights (unsharded optimizer, TrainOptions::transient_weights): a block's compute
  // copy is made from its fp32 master just before the block's forward and again before its
  // backward (the checkpoint recompute), and freed after each; AdamW then updates the masters
  // only. Every value is resident again when this call returns.
  std::vector<std::pair<size_t, size_t>> transient;
  std::vector<DType> value_dtypes;
  for (const ParamRef& p : params) value_dtypes.push_back(p.value->dtype());
  if (opt.transient_weights) {  // (unsharded: resolve_sharded_state)
    transient = model.gradient_groups();
    OSP_CHECK(!transient.empty(), "--transient-weights: this model has no parameter groups (blocks)");
  }
  auto make_values = [&](size_t g) {
    for (size_t k = transient.at(g).first; k < transient.at(g).second; ++k) {
      Tensor& v = *params[k].value;
      if (v.defined()) continue;
      const Tensor& master = adamw->slots()[k].master;
      v = Tensor::empty(value_shapes[k], value_dtypes[k], master.device());
      v.copy_from(master);  // (bf16 on CUDA: the rounding AdamW's own refresh applies)
    }
  };
  auto drop_values = [&](size_t g) {
    for (size_t k = transient.at(g).first; k < transient.at(g).second; ++k) *params[k].value = Tensor();
  };
  // (out of memory while unwinding: the table is left with released values)
  auto restore_values = on_scope_exit([&] {
    for (size_t g = 0; g < transient.size(); ++g) make_values(g);
  });
  if (!transient.empty())
    OSP_CHECK(model.set_forward_hooks(make_values, drop_values),
              "--transient-weights: this model cannot make its weights per block (no forward hooks)");
  if (!released.empty() || !overlap_groups.empty() || !transient.empty()) {
    std::function<void(size_t)> before, after;
    before = [&](size_t g) {
      if (!released.empty()) allocate_grads(released.at(g).first, released.at(g).second);
      if (!transient.empty()) make_values(g);
    };
    after = [&](size_t g) {
      if (!transient.empty()) drop_values(g);
      if (overlap_groups.empty() || micro_now != micro_last) return;
      for (size_t k = overlap_groups.at(g).first; k < overlap_groups.at(g).second; ++k)
        tickets.push_back(groups->world->all_reduce_start(*params[k].grad));
    };
    model.set_gradient_hooks(before, after);
    if (!released.empty()) release_grads();
    if (!released.empty())
      log_verbose("released gradients: each block's gradient exists from its backward to the optimizer step");
    if (!overlap_groups.empty())
      log_verbose("gradient reduction overlapped with the backward (per block, ", groups->world->backend(), ")");
  }
  auto masters = [&] {
    std::vector<Tensor> m;
    if (sharded) m.push_back(sharded->master_shard());
    else
      for (const auto& s : adamw->slots()) m.push_back(s.master);
    return m;
  };
  double ema_decay = 0;
  Ema ema;
  if (parse_ema(opt.ema, &ema_decay)) ema = Ema(masters(), ema_decay);
  GradClipper clipper(GradClipConfig::parse(opt.clip));
  LrSchedule sched;
  sched.lr = opt.lr;
  sched.warmup = opt.warmup;
  sched.total = opt.steps;
  sched.kind = LrSchedule::parse_kind(opt.schedule);
  TrainerState state;
  state.seed = opt.seed;
  std::string last_ckpt;
  if (!opt.resume.empty()) {
    last_ckpt = resolve_checkpoint(opt.resume);
    if (sharded) {  // the unsharded files (read into host memory) → this rank's shard
      std::vector<AdamW::Slot> full(params.size());
      std::vector<Tensor> full_ema;
      for (size_t k = 0; k < params.size(); ++k) {
        const Shape& sh = value_shapes[k];
        full[k] = {Tensor::empty(sh, DType::F32), Tensor::empty(sh, DType::F32), Tensor::empty(sh, DType::F32)};
        if (ema.enabled()) full_ema.push_back(Tensor::empty(sh, DType::F32));
      }
      int64_t steps = 0;
      state = load_checkpoint(last_ckpt, params, full, &steps, ema.enabled() ? &full_ema : nullptr);
      sharded->load_state(full, steps);
      if (ema.enabled()) ema.weights()[0].copy_from(sharded->shard_of(full_ema));
    } else {
      state = load_checkpoint(last_ckpt, *adamw, ema.enabled() ? &ema : nullptr);
    }
    OSP_CHECK(state.seed == opt.seed, "checkpoint ", last_ckpt, " was trained with --seed ", state.seed,
              ", this run has --seed ", opt.seed, "; resume with the same seed (or start a new run)");
    if (!state.run_config.empty()) {  // settings changed since the checkpoint: said, not refused
      const json was = json::parse(state.run_config), now = json::parse(opt.to_json());
      std::string diff;
      for (const auto& [k, v] : now.items())
        if (k != "out" && k != "steps" && k != "resume" && was.contains(k) && was[k] != v)
          diff += str(diff.empty() ? "" : ", ", k, " ", was[k].dump(), " -> ", v.dump());
      if (!diff.empty())
        log_warn("resuming with settings that differ from the checkpoint's run (", diff,
                 "): the run will not repeat the original one");
    }
    data.set_position(state.data);
    clipper.set_state(state.clip);
    OSP_CHECK(state.step <= opt.steps, "checkpoint ", last_ckpt, " is at step ", state.step, ", beyond --steps ",
              opt.steps);
    if (writer) trim_log(log_path, state.step);
    log_info("resuming from ", last_ckpt, " at step ", state.step);
  } else if (writer && fs::exists(log_path)) {
    write_text_atomic(log_path, "", io::Overwrite::Allow);
  }
  const TimestepSampler sampler(opt.seed, parse_shift(opt.shift));
  state.run_config = opt.to_json();
  const ops::DeterministicBackwardScope deterministic(opt.deterministic);  // for this run only
  if (opt.deterministic) log_info("deterministic: the attention backward runs osp's own kernel (no atomics)");
  for (size_t g = 0; g < transient.size(); ++g) drop_values(g);  // (after a resume: its restore sets values)
  if (!transient.empty())
    log_verbose("transient weights: each block's compute copy is made from its master around its forward and backward");

  auto save = [&] {
    state.data = data.position();
    state.clip = clipper.state();
    state.skipped_samples = data.skipped();
    CheckpointSave c;
    c.model_config_json = model.config_json();
    // Sharded: gathered on every rank (collective), written by the writer alone.
    std::vector<AdamW::Slot> full;
    std::vector<Tensor> full_ema;
    if (sharded) {  // host tensors on the writer (shard rank 0 = world rank 0) only
      OSP_CHECK(!writer || sharded->shard_rank() == 0, "internal: the writing rank is not shard rank 0");
      full = sharded->gather_state(0);
      c.optimizer = {&params, &full, sharded->steps(), acfg};
      if (ema.enabled()) full_ema = sharded->unshard(ema.weights()[0], 0);
    } else {
      c.optimizer = OptimizerState::of(*adamw);
      if (ema.enabled()) full_ema = ema.weights();
    }
    c.ema = ema.enabled() ? &full_ema : nullptr;
    c.ema_decay = ema.decay();
    c.state = state;
    c.links = hooks.checkpoint_links;
    c.keep_last = opt.keep;
    c.lora = model.lora_alpha() > 0;
    c.lora_alpha = model.lora_alpha();
    c.lora_base = opt.model;
    if (writer) {
      last_ckpt = save_checkpoint(opt.out, c);
      log_info("saved ", last_ckpt);
    } else {
      last_ckpt = (fs::path(opt.out) / checkpoint_name(state.step)).string();
    }
    // The other ranks wait here while rank 0 writes (minutes for a large model): not under the
    // collective timeout, so a long write is not taken for a dead rank.
    if (several) {
      parallel::ScopedCollectiveTimeout no_timeout(0);
      groups->world->barrier();
    }
  };

  TrainResult result;
  // Ctrl-C ends the run at the next step boundary (the loop polls interrupted(), agreed over the
  // ranks) after the running step completes; its checkpoint is then saved. The Ctrl-C safe points
  // inside the step (the DiT forward's, between blocks) must not throw: a half-done step has no
  // state to save, and ranks must not leave a step's collectives at different places.
  const DeferInterrupts finish_the_step;
  auto profile_off = on_scope_exit([&] {  // the model's profiler is the run's only while it runs
    if (opt.profile) model.set_profiling(false);
  });
  if (opt.profile) model.set_profiling(true);
  std::ofstream logf;
  if (writer) {
    logf.open(log_path, std::ios::app);
    OSP_CHECK(logf, "cannot open ", log_path, " for appending");
  }
  Progress progress("train", int(opt.steps - state.step > 0 ? opt.steps - state.step : 1), -1, stderr);
  int64_t saved_at = state.step;
  const int64_t first = state.step;
  // A collective that timed out (parallel::CollectiveTimeout) ends the run with the last complete
  // checkpoint named; the caller must end every rank (the CLI: parallel::abort_all).
  try {
    for (int64_t s = state.step; s < opt.steps; ++s) {
      if (model.any_rank(interrupted())) {
        result.interrupted = true;
        break;
      }
      const auto t0 = std::chrono::steady_clock::now();
      auto t_micro = t0;  // start of the current host-side batch assembly
      const auto seconds_since = [](std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
      };
      // Skipped bad samples can leave a batch that the ranks cannot share evenly: its tail is
      // dropped (the same on every rank: every rank reads the same batches).
      std::vector<LatentSample> global;
      while (global.empty()) {
        global = data.next_batch();
        while (int64_t(global.size()) % dp_size != 0) global.pop_back();
      }
      const int64_t G = int64_t(global.size());
      const int A = int(opt.grad_accum);
      OSP_CHECK(G % (int64_t(dp_size) * A) == 0, "step ", s + 1, ": a batch of ", G, " samples (after skipping bad ones)",
                " cannot be cut into ", dp_size, " ranks x ", A, " accumulation micro-batches");
      model.zero_grad();
      double loss = 0, sigma_sum = 0, data_s = 0;
      int64_t B = 0;
      Shape ls;
      micro_last = A - 1;
      for (int micro = 0; micro < A; ++micro) {
        micro_now = micro;
        const BatchSlice slice = dp_batch_slice(G, dp_rank, dp_size, A, micro);
        const std::vector<LatentSample> batch(global.begin() + slice.begin, global.begin() + slice.begin + slice.count);
        const int64_t b = int64_t(batch.size());
        ls = batch[0].latent.shape();
        std::vector<Tensor> x0s, noises, ctxs;
        std::vector<float> sigma;
        int64_t L = 1;
        for (int64_t i = 0; i < b; ++i) {
          x0s.push_back(batch[size_t(i)].latent);
          const int64_t gi = slice.begin + i;  // the sample's index in the global batch
          noises.push_back(sampler.noise(ls, s, gi));
          sigma.push_back(sampler.sigma(s, gi, ls[2], ls[3]));
          const Tensor& c = sampler.drop_caption(s, gi, opt.caption_dropout) ? empty_ctx : batch[size_t(i)].context;
          ctxs.push_back(c);
          L = std::max(L, c.size(0));
        }
        Tensor context = Tensor::zeros({b, L, data.text_dim()}, DType::F32);
        for (int64_t i = 0; i < b; ++i)
          std::memcpy(context.data<float>() + i * L * data.text_dim(), ctxs[size_t(i)].contiguous().data<float>(),
                      ctxs[size_t(i)].nbytes());
        Tensor x0 = stack(x0s), noise = stack(noises);
        data_s += seconds_since(t_micro);
        // Gradients accumulate over the micro-batches; reduce_gradients divides by A.
        loss += model.loss_backward(x0, noise, sigma, context) / A;
        t_micro = std::chrono::steady_clock::now();
        for (float x : sigma) sigma_sum += x;
        B += b;
      }
      if (outside_reducer) {  // the overlapped block reductions end before any other collective
        if (!tickets.empty()) groups->world->wait(tickets.back());
        tickets.clear();
        scale_grads(block_params, float(1.0 / (double(groups->dp_size()) * A)));
      }
      loss = model.dp_mean(loss);
      if (sharded) sharded->reduce_gradients(A);
      else if (outside_reducer) outside_reducer->reduce(A);
      else model.reduce_gradients(A);
      if (model.device().is_cuda()) cuda_synchronize();
      const double fwd_bwd_s = seconds_since(t0) - data_s;
      const std::string keep = last_ckpt.empty() ? std::string("none was written yet")
                                                 : "the last good checkpoint is " + last_ckpt;
      OSP_CHECK(std::isfinite(loss), "training stopped: the loss is ", loss, " at step ", s + 1,
                " (learning rate ", sched.at(s), "); nothing was saved for this step, ", keep,
                " (lower --lr or use --clip, and --resume from it)");
      ClipResult clip;
      const double factor = clipper.apply_rule(
          [&] {
            const double n = sharded ? sharded->grad_norm() : grad_norm(params);
            OSP_CHECK(std::isfinite(n), "training stopped: the gradient norm is ", n, " at step ", s + 1, "; ", keep);
            return n;
          }(),
          clip);
      if (clip.clipped) {
        if (sharded) sharded->scale_gradients(float(factor));
        else scale_grads(params, float(factor));
      }
      const double lr = sched.at(s);
      if (sharded) sharded->step(lr);
      else adamw->step(lr);
      release_grads();
      if (ema.enabled()) ema.update(masters());
      state.step = s + 1;

      StepLog st;
      st.step = s + 1;
      st.loss = loss;
      st.grad_norm = clip.norm;
      st.clipped = clip.clipped;
      st.lr = lr;
      st.sigma = model.dp_mean(sigma_sum / double(B));
      if (model.device().is_cuda()) cuda_synchronize();
      st.seconds = seconds_since(t0);
      st.data_s = data_s;
      st.fwd_bwd_s = fwd_bwd_s;
      st.opt_s = st.seconds - data_s - fwd_bwd_s;
      st.tokens_per_s = st.seconds > 0 ? double(G * model.tokens(ls)) / st.seconds : 0.0;  // global
      st.peak_mem_mb = peak_memory_mb(model.device());
      if (model.device().is_cuda()) st.peak_reserved_mb = double(cuda_peak_reserved_bytes()) / 1048576.0;
      if (writer) {
        logf << log_line(st) << "\n";
        logf.flush();
      }
      result.log.push_back(st);
      if (writer && !opt.quiet_progress) progress.update(int(s + 1 - first));
      if (opt.profile && s == first) model.profile_reset();  // the first step warms caches and autotuning up
      if (hooks.on_step) hooks.on_step(st);
      if (opt.save_every > 0 && (s + 1) % opt.save_every == 0 && s + 1 < opt.steps) {
        save();
        saved_at = state.step;
      }
    }
    if (writer && !opt.quiet_progress) progress.finish();
    if (opt.profile) {
      result.profile = model.profile_table();
      if (writer && !result.profile.empty()) {
        write_text_atomic((fs::path(opt.out) / "profile.txt").string(), result.profile, io::Overwrite::Allow);
        std::fprintf(stderr, "osp train --profile: stages per step (steps %lld-%lld)\n%s",
                     (long long)(first + (state.step - first > 1 ? 2 : 1)), (long long)state.step, result.profile.c_str());
      }
    }
    if (state.step > saved_at || last_ckpt.empty()) save();
    // Weight sharding: every rank gets the trained weights back into the model (collective).
    if (sharded) {
      if (sharded->shards_gradients()) result.peak_block_weight_bytes = sharded->peak_group_weight_bytes();
      sharded->unshard_weights();
    }
  } catch (const parallel::CollectiveTimeout& e) {
    throw parallel::CollectiveTimeout(str("training stopped after step ", state.step, ": ", e.what(), "; ",
                                      last_ckpt.empty() ? std::string("no checkpoint was written yet")
                                                        : "the last complete checkpoint is " + last_ckpt));
  }
  result.steps_done = state.step;
  result.last_checkpoint = last_ckpt;
  return result;
}

}  // namespace osp::train
