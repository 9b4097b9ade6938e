// `osp rl`: Mix-GRPO post-training of LoRA adapters on a frozen base model
// (train/rl_trainer.h). Flags and a --config JSON (same names) as `osp train`; exit codes 0 done,
// 1 a clear error, 2 an internal error, 130 Ctrl-C after saving a checkpoint.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "osp/cli/config_flags.h"
#include "osp/cli/dit_weights.h"
#include "osp/cli/run_command.h"
#include "osp/core/device.h"
#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/progress.h"
#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/io/checkpoint.h"
#include "osp/model/dit.h"
#include "osp/model/dit_config.h"
#include "osp/model/tokenizer.h"
#include "osp/model/vae.h"
#include "osp/pipeline/model_dir.h"
#include "osp/pipeline/text_encoder.h"
#include "osp/train/output_files.h"
#include "osp/train/rl_trainer.h"

namespace fs = std::filesystem;

namespace osp::cli {
namespace {

int run_rl_command(train::RlOptions o) {
  if (o.negative_prompt.empty() && !o.no_negative) o.negative_prompt = model::default_negative_prompt();
  OSP_CHECK(!o.model.empty(), "--model is required (the base model folder)");
  const int nranks = parallel::launcher_size(), rank = parallel::launcher_rank();
  if (rank > 0 && log_level() >= LogLevel::Info) set_log_level(LogLevel::Warn);  // rank 0 speaks
  OSP_CHECK(o.sp == "none" || nranks > 1, "--sp ", o.sp, " needs several ranks: launch with mpirun -np N");
  const int S = o.sp == "none" ? 1 : int(o.sp_size > 0 ? o.sp_size : nranks);
  OSP_CHECK(S >= 1 && nranks % S == 0, nranks, " ranks do not split into sequence-parallel groups of ", S,
            " (--sp-size)");
  train::rl_preflight(o);
  install_interrupt_handler("the last complete iteration will be saved as a checkpoint");
  Device dev = parse_device(o.device);
  // Several ranks (mpirun): the SP x DP mesh of osp train; every rank loads the whole model.
  train::ParallelGroups groups;
  if (nranks > 1) {
    const std::string backend = dev.is_cuda() ? "nccl" : "mpi";
    OSP_CHECK(dev.is_cuda() ? parallel::nccl_built() : parallel::mpi_built(), "osp rl on ", nranks, " ranks on ", dev.name(),
              " needs the ", backend, " backend, which this build lacks");
    parallel::set_collective_timeout(o.collective_timeout);
    groups = train::make_parallel_groups(parallel::make_communicator(backend), S);
    if (dev.is_cuda() && cuda_device_count() > 1) dev = Device::cuda(parallel::launcher_local_rank());
    log_info("osp rl on ", nranks, " ranks (", backend, "): ", groups.dp_size(), " data-parallel x ", S,
             " sequence-parallel (", o.sp, ")");
  }
  const pipeline::ModelFiles files = pipeline::detect_model_dir(o.model);

  // DiT: frozen base (no base gradients), LoRA trained
  model::DiTConfig cfg;
  std::map<std::string, Tensor> weights;
  load_dit_weights(files, cfg, weights);
  model::DiTOptions dopt;
  dopt.device = dev;
  dopt.quant = o.quant == "hif8" ? model::DiTQuant::HiF8 : model::DiTQuant::None;
  dopt.train = true;
  dopt.train_base = false;
  dopt.keep_attention = o.keep_attention;
  dopt.offload_block_inputs = o.offload_checkpoints;
  model::DiT dit = model::DiT::bind(cfg, weights, dopt);
  weights.clear();
  log_info("base DiT: ", cfg.summary(), " (frozen); LoRA rank ", o.lora_rank, ", alpha ", o.lora_alpha);

  // text encoder (kept: prompts are encoded once each and cached) and VAE decoder
  auto te = pipeline::TextEncoder::load(files, dev, cfg.text_len);
  model::VaeConfig vcfg;
  vcfg.has_encoder = false;
  const model::WanVae vae = model::WanVae::load(model::weight_getter(pipeline::open_vae(files)), dev, vcfg);

  std::unique_ptr<parallel::SequenceParallel> sp =
      S == 1 ? parallel::make_single_device() : o.sp == "ssp" ? parallel::make_ssp(groups.sp) : parallel::make_ulysses(groups.sp);
  train::RlEnv env;
  env.dit = &dit;
  env.sp = sp.get();
  if (nranks > 1) env.groups = &groups;
  env.encode = [&](const std::string& p) { return te->encode({p}).at(0); };
  env.decode = [&](const Tensor& z) { return vae.decode(z.to(dev)).to(Device::cpu()); };
  env.base_model = fs::absolute(o.model).string();
  auto rewards = train::make_rewards(o);
  const train::RlResult r = train::run_rl(o, env, rewards);
  if (r.interrupted) {
    std::fprintf(stderr, "osp: interrupted (Ctrl-C) after iteration %lld; saved %s (resume with --resume %s)\n",
                 static_cast<long long>(r.iterations_done), r.last_checkpoint.c_str(), o.out.c_str());
    return 130;
  }
  if (log_level() >= LogLevel::Info) {
    std::fprintf(stderr, "osp: %lld RL iterations; LoRA %s/lora.safetensors (EMA: lora_ema.safetensors)\n",
                 static_cast<long long>(r.iterations_done), r.last_checkpoint.c_str());
    if (r.eval_start >= 0 && r.eval_end >= 0)
      std::fprintf(stderr, "osp: held-out mean reward %.4f -> %.4f\n", r.eval_start, r.eval_end);
  }
  return 0;
}

}  // namespace

void add_rl_command(CLI::App& app) {
  auto reward_list = std::make_shared<std::vector<std::string>>();
  auto* t = app.add_subcommand("rl", "Mix-GRPO post-training of LoRA adapters on a frozen base model");
  auto flags = std::make_shared<ConfigFlags<train::RlOptions>>(t);
#define OSP_RL_OPT(name, field, help) flags->option(name, &train::RlOptions::field, help)
#define OSP_RL_FLAG(name, field, help) flags->flag(name, &train::RlOptions::field, help)
  OSP_RL_OPT("-m,--model", model, "base model folder (Wan2.1 / OSP-Next / demo / tiny layouts), frozen");
  OSP_RL_OPT("--prompts", prompts, "prompts: a text file (one per line) or a clip dataset folder / manifest.jsonl");
  OSP_RL_OPT("--negative-prompt", negative_prompt, "negative prompt for CFG (default: Wan's)");
  OSP_RL_FLAG("--no-negative", no_negative, "use an empty negative prompt");
  OSP_RL_OPT("--size", size, "rollout video WIDTHxHEIGHT (default 832x480)");
  OSP_RL_OPT("--frames", frames, "rollout frames, 4n+1 (default 81)");
  OSP_RL_OPT("--group", group, "samples per prompt group G (default 4)");
  OSP_RL_OPT("--prompts-per-iter", prompts_per_iter, "prompt groups per iteration (default 1)");
  OSP_RL_OPT("--steps", steps, "rollout steps (default 25)");
  OSP_RL_OPT("--sde-steps", sde_steps, "SDE (trained) steps per rollout (default 10)");
  OSP_RL_OPT("--window", window, "fixed (OSP-Next: the first --sde-steps) | sliding (MixGRPO)");
  OSP_RL_OPT("--window-stride", window_stride, "sliding window: steps the window advances (default 1)");
  OSP_RL_OPT("--window-tau", window_tau, "sliding window: iterations between advances (default 1)");
  OSP_RL_OPT("--shift", shift, "time shift of the Euler grid (default 1.0; OSP-Next's fork uses 7.5)");
  OSP_RL_OPT("--guidance", guidance, "CFG scale in rollout and training (default 5)");
  OSP_RL_OPT("--noise-level", noise_level, "linear (σ_t = t, OSP-Next) | flow-grpo (η·sqrt(t/(1−t)))");
  OSP_RL_OPT("--eta", eta, "η of --noise-level flow-grpo (default 0.7)");
  OSP_RL_OPT("--clip-range", clip_range, "PPO clip range ε (default 5e-3)");
  OSP_RL_OPT("--adv-clip", adv_clip, "advantage clamp (default 5)");
  OSP_RL_OPT("--kl-beta", kl_beta, "KL weight against the LoRA-disabled model (default 0.004; 0 = off)");
  OSP_RL_OPT("--train-batch", train_batch, "samples per optimizer step (0 = all of the iteration)");
  OSP_RL_FLAG("--deterministic", deterministic,
              "the update's CUDA attention backward on osp's own kernel (no atomics: the same bits every run; "
              "as osp train --deterministic)");
  OSP_RL_FLAG("--keep-attention", keep_attention,
              "the update keeps each block's self-attention output for the checkpoint recompute (same numbers, "
              "fewer attention cores, more memory; as osp train --keep-attention)");
  OSP_RL_FLAG("--offload-checkpoints", offload_checkpoints,
              "the update keeps its checkpointed block inputs in pinned host memory instead of on the GPU (same "
              "numbers; as osp train --offload-checkpoints)");
  OSP_RL_OPT("--lora-rank", lora_rank, "LoRA rank (default 32)");
  OSP_RL_OPT("--lora-alpha", lora_alpha, "LoRA alpha (default 64)");
  OSP_RL_OPT("--lora-targets", lora_targets, "comma-separated block linears (default self/cross-attention q,k,v,o)");
  OSP_RL_OPT("--lr", lr, "AdamW learning rate (default 2e-5)");
  OSP_RL_OPT("--weight-decay", weight_decay, "AdamW weight decay (default 0)");
  OSP_RL_OPT("--clip", clip, "gradient clipping: none | fixed:X | adaptive (default)");
  OSP_RL_OPT("--ema", ema, "EMA decay of the LoRA (default 0.999) or off");
  OSP_RL_OPT("--iterations", iterations, "RL iterations (default 100)");
  flags->add(t->add_option("--reward", *reward_list,
                           "builtin:adherence|color|shape|motion|background|count|temporal[:weight] (repeatable)"),
             [reward_list](train::RlOptions& o) { o.rewards = *reward_list; });
  OSP_RL_OPT("--reward-cmd", reward_cmd, "external scorer command (JSON lines on stdin/stdout; see docs/TRAINING.md)");
  OSP_RL_OPT("--reward-cmd-weight", reward_cmd_weight, "weight of the external reward (default 1)");
  OSP_RL_OPT("--reward-timeout", reward_timeout, "seconds the external scorer may take per reply (default 120)");
  OSP_RL_OPT("--eval-prompts", eval_prompts, "held-out prompts: mean reward of ODE samples before, during, after");
  OSP_RL_OPT("--eval-every", eval_every, "evaluate every N iterations (0 = only at the start and end)");
  OSP_RL_OPT("--eval-samples", eval_samples, "samples per held-out prompt (default 1)");
  OSP_RL_OPT("--seed", seed, "seed of LoRA init, prompt order, rollout noise");
  OSP_RL_OPT("--quant", quant, "none | hif8 (frozen HiF8 base; the LoRA branch stays plain)");
  OSP_RL_OPT("--device", device, "cpu | cuda | cuda:N");
  OSP_RL_OPT("-o,--out", out, "output folder: checkpoint-N/ (LoRA, EMA, optimizer, state), latest, rl_log.jsonl");
  OSP_RL_OPT("--save-every", save_every, "checkpoint every N iterations (0 = at the end and on Ctrl-C)");
  OSP_RL_OPT("--keep", keep, "keep only the newest N checkpoints (0 = all)");
  OSP_RL_OPT("--resume", resume, "a checkpoint folder, or a previous --out folder (its latest checkpoint)");
  OSP_RL_OPT("--sp", sp, "none | ssp | ulysses: sequence parallelism over --sp-size ranks (mpirun -np N); "
                         "the other ranks split the prompt groups (data parallel)");
  OSP_RL_OPT("--sp-size", sp_size, "ranks per sequence-parallel group (0 = all ranks when --sp is given)");
  OSP_RL_OPT("--collective-timeout", collective_timeout,
             "seconds a collective waits for the other ranks before the run ends with an error (0 = never)");
#undef OSP_RL_OPT
#undef OSP_RL_FLAG
  t->callback([t, flags]() {
    run_command(
        *t,
        [&] {
          train::RlOptions o = flags->resolve();
          o.quiet_progress = log_level() < LogLevel::Info;
          return run_rl_command(o);
        },
        "the last complete checkpoint (if any) is intact");
  });
}

}  // namespace osp::cli
