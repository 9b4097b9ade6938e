// Mix-GRPO post-training of LoRA adapters: options, prompts, the rollout / reward / update loop,
// checkpoints and the held-out evaluation (rl_trainer.h).
#include "osp/train/rl_trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/core/scope_exit.h"
#include "osp/io/atomic_file.h"
#include "osp/io/safetensors.h"
#include "osp/model/lora.h"
#include "osp/ops/backward.h"
#include "osp/ops/ops.h"
#include "osp/sample/sde_step.h"
#include "osp/train/adamw.h"
#include "osp/train/clip_dataset.h"
#include "osp/train/ema.h"
#include "osp/train/flow_matching.h"
#include "osp/train/grad_clip.h"
#include "osp/train/grpo.h"
#include "osp/train/output_files.h"
#include "osp/train/reference_config.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace osp::train {

// ------------------------------------------------------------------------------------ options
namespace {

void parse_size(const std::string& s, int64_t& w, int64_t& h) {
  const auto x = s.find_first_of("x*");
  OSP_CHECK(x != std::string::npos, "--size must be WIDTHxHEIGHT, got '", s, "'");
  w = std::atoll(s.substr(0, x).c_str());
  h = std::atoll(s.substr(x + 1).c_str());
  OSP_CHECK(w >= 16 && h >= 16 && w % 16 == 0 && h % 16 == 0,
            "--size: width and height must be multiples of 16 (>= 16), got ", s);
}

std::string hexf(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%a", v);
  return b;
}
double unhexf(const json& j) { return std::strtod(j.get<std::string>().c_str(), nullptr); }
}  // namespace

int64_t RlOptions::width() const {
  int64_t w, h;
  parse_size(size, w, h);
  return w;
}
int64_t RlOptions::height() const {
  int64_t w, h;
  parse_size(size, w, h);
  return h;
}

void RlOptions::validate() const {
  auto need = [](bool ok, const std::string& msg) { OSP_CHECK(ok, msg); };
  width();
  need(frames >= 1 && (frames - 1) % 4 == 0, str("--frames must be 4n+1, got ", frames));
  need(group >= 2, str("--group must be >= 2 (group-relative advantages), got ", group));
  need(prompts_per_iter >= 1, str("--prompts-per-iter must be >= 1, got ", prompts_per_iter));
  need(steps >= 2 && steps <= 62, str("--steps must be in [2, 62], got ", steps));
  need(sde_steps >= 1 && sde_steps <= steps,
       str("--sde-steps must be in [1, --steps = ", steps, "], got ", sde_steps));
  need(window == "fixed" || window == "sliding", str("--window must be fixed or sliding, got '", window, "'"));
  if (window == "sliding") {
    need(steps >= 3, "--window sliding needs --steps >= 3");
    need(window_stride >= 0 && window_tau >= 1, "--window-stride must be >= 0 and --window-tau >= 1");
  }
  need(std::isfinite(shift) && shift > 0, str("--shift must be > 0, got ", shift));
  need(std::isfinite(guidance) && guidance >= 1, str("--guidance must be >= 1, got ", guidance));
  need(noise_level == "linear" || noise_level == "flow-grpo",
       str("--noise-level must be linear or flow-grpo, got '", noise_level, "'"));
  need(std::isfinite(eta) && eta > 0, str("--eta must be > 0, got ", eta));
  need(std::isfinite(clip_range) && clip_range >= 0, str("--clip-range must be >= 0, got ", clip_range));
  need(std::isfinite(adv_clip) && adv_clip > 0, str("--adv-clip must be > 0, got ", adv_clip));
  need(std::isfinite(kl_beta) && kl_beta >= 0, str("--kl-beta must be >= 0, got ", kl_beta));
  need(train_batch >= 0, str("--train-batch must be >= 0, got ", train_batch));
  need(lora_rank >= 1, str("--lora-rank must be >= 1, got ", lora_rank));
  need(std::isfinite(lora_alpha) && lora_alpha > 0, str("--lora-alpha must be > 0, got ", lora_alpha));
  need(!model::split_lora_targets(lora_targets).empty(), "--lora-targets is empty");
  AdamWConfig{lr, beta1, beta2, eps, weight_decay}.validate();
  GradClipConfig::parse(clip);
  if (ema != "off") {
    char* end = nullptr;
    const double d = std::strtod(ema.c_str(), &end);
    need(end && *end == '\0' && d >= 0 && d < 1, str("--ema must be off or a decay in [0, 1), got '", ema, "'"));
  }
  need(iterations >= 1, str("--iterations must be >= 1, got ", iterations));
  need(sp == "none" || sp == "ssp" || sp == "ulysses", str("--sp must be none, ssp or ulysses, got '", sp, "'"));
  need(sp_size >= 0, str("--sp-size must be >= 0, got ", sp_size));
  need(std::isfinite(collective_timeout) && collective_timeout >= 0,
       str("--collective-timeout must be >= 0 seconds, got ", collective_timeout));
  need(!rewards.empty() || !reward_cmd.empty(),
       "no reward: give --reward builtin:adherence (or another builtin) and/or --reward-cmd CMD");
  for (const auto& r : rewards) make_builtin_reward(r);
  need(std::isfinite(reward_cmd_weight) && reward_cmd_weight > 0, "--reward-cmd-weight must be > 0");
  need(std::isfinite(reward_timeout) && reward_timeout > 0, "--reward-timeout must be > 0");
  need(eval_every >= 0 && eval_samples >= 1, "--eval-every must be >= 0 and --eval-samples >= 1");
  need(save_every >= 0 && keep >= 0, "--save-every and --keep must be >= 0");
  need(quant == "none" || quant == "hif8", str("--quant must be none or hif8, got '", quant, "'"));
  need(!prompts.empty(), "--prompts is required");
  need(!out.empty(), "--out is required");
}

void RlOptions::apply_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(str("rl config ", source, " is not valid JSON: ", e.what()));
  }
  OSP_CHECK(j.is_object(), "rl config ", source, " must be a JSON object of settings");
  j = translate_reference_config(j, ConfigKind::Rl, source);  // OSP-Next's names where they fit
  for (const auto& [key0, v] : j.items()) {
    std::string key = key0;
    for (char& c : key)
      if (c == '-') c = '_';
    auto want = [&](bool ok, const char* type) {
      OSP_CHECK(ok, "rl config ", source, ": '", key0, "' must be ", type, ", got ", v.dump());
    };
    auto S = [&](std::string& d) { want(v.is_string(), "a string"); d = v.get<std::string>(); };
    auto I = [&](int64_t& d) { want(v.is_number_integer(), "an integer"); d = v.get<int64_t>(); };
    auto N = [&](double& d) { want(v.is_number(), "a number"); d = v.get<double>(); };
    auto B = [&](bool& d) { want(v.is_boolean(), "true or false"); d = v.get<bool>(); };
    if (key == "model") S(model);
    else if (key == "device") S(device);
    else if (key == "quant") S(quant);
    else if (key == "prompts") S(prompts);
    else if (key == "negative_prompt") S(negative_prompt);
    else if (key == "no_negative") B(no_negative);
    else if (key == "size") S(size);
    else if (key == "frames") I(frames);
    else if (key == "group") I(group);
    else if (key == "prompts_per_iter") I(prompts_per_iter);
    else if (key == "steps") I(steps);
    else if (key == "sde_steps") I(sde_steps);
    else if (key == "window") S(window);
    else if (key == "window_stride") I(window_stride);
    else if (key == "window_tau") I(window_tau);
    else if (key == "shift") N(shift);
    else if (key == "guidance") N(guidance);
    else if (key == "noise_level") S(noise_level);
    else if (key == "eta") N(eta);
    else if (key == "clip_range") N(clip_range);
    else if (key == "adv_clip") N(adv_clip);
    else if (key == "kl_beta") N(kl_beta);
    else if (key == "train_batch") I(train_batch);
    else if (key == "keep_attention") B(keep_attention);
    else if (key == "deterministic") B(deterministic);
    else if (key == "offload_checkpoints") B(offload_checkpoints);
    else if (key == "lora_rank") I(lora_rank);
    else if (key == "lora_alpha") N(lora_alpha);
    else if (key == "lora_targets") S(lora_targets);
    else if (key == "lr") N(lr);
    else if (key == "weight_decay") N(weight_decay);
    else if (key == "beta1") N(beta1);
    else if (key == "beta2") N(beta2);
    else if (key == "eps") N(eps);
    else if (key == "clip") S(clip);
    else if (key == "ema") {
      if (v.is_number()) ema = str(v.get<double>());
      else S(ema);
    } else if (key == "iterations") I(iterations);
    else if (key == "reward") {
      rewards.clear();
      if (v.is_string()) {
        rewards.push_back(v.get<std::string>());
      } else {
        want(v.is_array(), "a string or an array of strings");
        for (const auto& x : v) {
          want(x.is_string(), "a string or an array of strings");
          rewards.push_back(x.get<std::string>());
        }
      }
    } else if (key == "reward_cmd") S(reward_cmd);
    else if (key == "reward_cmd_weight") N(reward_cmd_weight);
    else if (key == "reward_timeout") N(reward_timeout);
    else if (key == "eval_prompts") S(eval_prompts);
    else if (key == "eval_every") I(eval_every);
    else if (key == "eval_samples") I(eval_samples);
    else if (key == "seed") {
      want(v.is_number_unsigned() || v.is_number_integer(), "an integer");
      seed = v.get<uint64_t>();
    } else if (key == "out") S(out);
    else if (key == "save_every") I(save_every);
    else if (key == "keep") I(keep);
    else if (key == "resume") S(resume);
    else if (key == "sp") S(sp);
    else if (key == "sp_size") I(sp_size);
    else if (key == "collective_timeout") N(collective_timeout);
    else
      fail(str("rl config ", source, ": unknown setting '", key0, "'"));
  }
}

std::string RlOptions::to_json() const {
  json j = {{"model", model}, {"device", device}, {"quant", quant}, {"prompts", prompts},
            {"negative_prompt", negative_prompt}, {"no_negative", no_negative}, {"size", size},
            {"frames", frames}, {"group", group}, {"prompts_per_iter", prompts_per_iter},
            {"steps", steps}, {"sde_steps", sde_steps}, {"window", window},
            {"window_stride", window_stride}, {"window_tau", window_tau}, {"shift", shift},
            {"guidance", guidance}, {"noise_level", noise_level}, {"eta", eta},
            {"clip_range", clip_range}, {"adv_clip", adv_clip}, {"kl_beta", kl_beta},
            {"train_batch", train_batch}, {"lora_rank", lora_rank}, {"lora_alpha", lora_alpha},
            {"lora_targets", lora_targets}, {"lr", lr}, {"weight_decay", weight_decay},
            {"beta1", beta1}, {"beta2", beta2}, {"eps", eps}, {"clip", clip}, {"ema", ema},
            {"iterations", iterations}, {"reward", rewards}, {"reward_cmd", reward_cmd},
            {"reward_cmd_weight", reward_cmd_weight}, {"reward_timeout", reward_timeout},
            {"eval_prompts", eval_prompts}, {"eval_every", eval_every},
            {"eval_samples", eval_samples}, {"seed", seed}, {"sp", sp}, {"sp_size", sp_size},
            {"deterministic", deterministic}};
  return j.dump();
}

// ------------------------------------------------------------------------------------ prompts
std::vector<RlPrompt> load_rl_prompts(const std::string& path) {
  std::vector<RlPrompt> out;
  std::string manifest;
  if (fs::is_directory(path)) {
    manifest = (fs::path(path) / "manifest.jsonl").string();
    OSP_CHECK(fs::exists(manifest), "--prompts ", path, " is a folder without manifest.jsonl (a clip dataset)");
  } else {
    OSP_CHECK(fs::is_regular_file(path), "--prompts ", path, " does not exist");
    if (fs::path(path).extension() == ".jsonl") manifest = path;
  }
  std::ifstream f(manifest.empty() ? path : manifest);
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    RlPrompt p;
    if (manifest.empty()) {
      if (line[line.find_first_not_of(" \t")] == '#') continue;
      p.caption = line;
    } else {
      try {
        const json j = json::parse(line);
        p.caption = j.at("caption").get<std::string>();
        if (j.contains("attributes")) {
          p.attributes_json = j["attributes"].dump();
          p.attributes = parse_clip_attributes(p.attributes_json);
          p.has_attributes = true;
        }
      } catch (const json::exception& e) {
        fail(str("--prompts ", manifest, " line ", n, ": expected {\"caption\": ...[, \"attributes\": {...}]} (",
                 e.what(), ")"));
      }
    }
    out.push_back(std::move(p));
  }
  OSP_CHECK(!out.empty(), "--prompts ", path, " holds no prompts");
  return out;
}

// ------------------------------------------------------------------------------------ logs
std::string RlIterationLog::json() const {
  nlohmann::json j = {{"iteration", iteration}, {"reward_mean", reward_mean}, {"reward_std", reward_std},
                      {"kl", kl}, {"v_rms", v_rms}, {"ref_rel", ref_rel}, {"clip_fraction", clip_fraction}, {"ratio_mean", ratio_mean},
                      {"ratio_min", ratio_min}, {"ratio_max", ratio_max}, {"loss", loss},
                      {"grad_norm", grad_norm}, {"clipped", clipped}, {"lr", lr}, {"kept", kept},
                      {"sde_window", {sde_begin, sde_end}}, {"optimizer_steps", optimizer_steps},
                      {"seconds_rollout", seconds_rollout}, {"seconds_reward", seconds_reward},
                      {"seconds_update", seconds_update}, {"rollout_forwards", rollout_forwards},
                      {"update_forwards", update_forwards}, {"update_backwards", update_backwards}};
  for (const auto& [k, v] : reward_means) j["reward_" + k] = v;
  if (eval_reward >= 0) j["eval_reward"] = eval_reward;
  return j.dump();
}

// ------------------------------------------------------------------------------------ rewards
std::vector<std::unique_ptr<Reward>> make_rewards(const RlOptions& o) {
  std::vector<std::unique_ptr<Reward>> r;
  for (const auto& s : o.rewards) r.push_back(make_builtin_reward(s));
  if (!o.reward_cmd.empty()) {
    ExternalRewardOptions e;
    e.command = o.reward_cmd;
    e.video_dir = (fs::path(o.out) / "rollouts").string();
    e.timeout_s = o.reward_timeout;
    e.weight = o.reward_cmd_weight;
    r.push_back(std::make_unique<ExternalReward>(e));
  }
  return r;
}

// ------------------------------------------------------------------------------------ preflight
namespace {
constexpr const char* kComplete = "CHECKPOINT_COMPLETE";

std::string rl_checkpoint_name(int64_t it) {
  char b[64];
  std::snprintf(b, sizeof b, "checkpoint-%08lld", static_cast<long long>(it));
  return b;
}

std::string resolve_rl_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / kComplete)) return path;
  const fs::path latest = fs::path(path) / "latest";
  OSP_CHECK(fs::exists(latest), "--resume ", path, ": neither a complete RL checkpoint (", kComplete,
            ") nor an output folder with a 'latest' file");
  std::string name = read_text_file(latest.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path dir = fs::path(path) / name;
  OSP_CHECK(fs::exists(dir / kComplete), "--resume ", path, ": latest names ", dir.string(),
            ", which is not a complete checkpoint");
  return dir.string();
}
}  // namespace

void rl_preflight(const RlOptions& o) {
  o.validate();
  // Built-in adherence rewards need every prompt's attributes: a record, or a caption of the
  // synthetic grammar (checked now rather than after the first rollout).
  bool needs_attributes = false;
  for (const auto& r : o.rewards) needs_attributes |= r.rfind("builtin:temporal", 0) != 0;
  auto check = [&](const std::string& path) {
    for (const RlPrompt& p : load_rl_prompts(path))
      if (needs_attributes && !p.has_attributes) parse_clip_caption(p.caption);
  };
  check(o.prompts);
  if (!o.eval_prompts.empty()) check(o.eval_prompts);
  if (!o.resume.empty()) {
    resolve_rl_checkpoint(o.resume);
  } else {
    OSP_CHECK(!fs::exists(fs::path(o.out) / "latest"), "the output folder ", o.out,
              " already holds an RL run (its 'latest' file); resume it with --resume ", o.out,
              " or choose another --out");
  }
  fs::create_directories(o.out);
  io::check_output_path((fs::path(o.out) / "rl_log.jsonl").string(), io::Overwrite::Allow);
}

// ------------------------------------------------------------------------------------ the loop
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- several ranks (RlEnv::groups)
bool several(const RlEnv& env) { return env.groups && env.groups->world && env.groups->world->size() > 1; }
parallel::Communicator* dp_of(const RlEnv& env) {
  return env.groups && env.groups->dp && env.groups->dp->size() > 1 ? env.groups->dp.get() : nullptr;
}
// The rank-major concatenation over `c` of every rank's values (the same count on each).
std::vector<double> gather_doubles(parallel::Communicator* c, const std::vector<double>& mine) {
  if (!c) return mine;
  Tensor send = Tensor::zeros({int64_t(mine.size())}, DType::F64);
  std::copy(mine.begin(), mine.end(), send.data<double>());
  Tensor recv = Tensor::zeros({int64_t(mine.size()) * c->size()}, DType::F64);
  c->all_gather(send, recv);
  return std::vector<double>(recv.data<double>(), recv.data<double>() + recv.numel());
}
// Element-wise sum over `c` (in place).
void sum_doubles(parallel::Communicator* c, std::vector<double>& v) {
  if (!c || v.empty()) return;
  Tensor t = Tensor::zeros({int64_t(v.size())}, DType::F64);
  std::copy(v.begin(), v.end(), t.data<double>());
  c->all_reduce(t);
  std::copy(t.data<double>(), t.data<double>() + t.numel(), v.begin());
}

uint64_t iteration_seed(uint64_t seed, int64_t it) {
  return seed + 0x9E3779B97F4A7C15ull * uint64_t(it + 1);
}

// [L, D] (or [1, L, D]) → [1, L, D] F32 on dev.
Tensor as_batch1(const Tensor& c, Device dev) {
  Tensor t = c.dim() == 2 ? c.unsqueeze(0) : c;
  t = t.to(dev);
  return t.dtype() == DType::F32 ? t.contiguous() : t.to(DType::F32);
}

struct Stored {
  int step = 0;
  Tensor x, x_next;  // [1, C, T, h, w]
  double logp_old = 0;
};
struct Rollout {
  int64_t prompt = 0, group = 0;
  std::vector<Stored> steps;
  Tensor latent;  // x_steps [C, T, h, w]
};

class Loop {
 public:
  Loop(const RlOptions& o, RlEnv& env) : o_(o), env_(env), dit_(*env.dit), sp_(*env.sp) {
    grid_ = sample::sde_grid(int(o.steps), o.shift);
    level_ = o.noise_level == "linear" ? sample::NoiseLevel::Linear : sample::NoiseLevel::FlowGrpo;
    const auto& c = dit_.config();
    const int64_t W = o.width(), H = o.height();
    latent_shape_ = {1, c.in_dim, (o.frames - 1) / 4 + 1, H / 8, W / 8};
    OSP_CHECK((H / 8) % c.patch_h == 0 && (W / 8) % c.patch_w == 0, "--size ", o.size,
              ": the latent ", H / 8, "x", W / 8, " must be a multiple of the patch size");
    neg_ = ctx(o.no_negative ? std::string() : o.negative_prompt);
  }

  Tensor ctx(const std::string& p) {
    auto it = cache_.find(p);
    if (it != cache_.end()) return it->second;
    Tensor t = as_batch1(env_.encode(p), dit_.options().device);
    cache_[p] = t;
    return t;
  }

  // The policy's velocity parts at x (no gradients): v_c and v_u (two batch-1 forwards, the
  // same calls the update makes, so the rollout's log-probabilities are reproduced exactly).
  void velocities(const Tensor& x, float t, const Tensor& c, Tensor& vc, Tensor& vu) {
    vc = dit_.forward(x, {t}, c, sp_).clone();
    if (o_.guidance != 1.0) vu = dit_.forward(x, {t}, neg_, sp_).clone();
    else vu = vc;
  }
  Tensor cfg(const Tensor& vc, const Tensor& vu) {
    Tensor v = Tensor::empty(vc.shape(), DType::F32, vc.device());
    sample::lincomb(o_.guidance, vc, 1.0 - o_.guidance, vu, v);
    return v;
  }

  // One rollout: x_0 from (seed_it, stream 64·s), SDE steps inside `win` (stored), ODE outside.
  Rollout rollout(uint64_t seed_it, int64_t s, const Tensor& c, const sample::SdeWindow& win,
                  bool store) {
    const Device dev = dit_.options().device;
    Rollout r;
    Tensor x = randn(latent_shape_, seed_it, uint32_t(64 * s)).to(dev);
    for (int i = 0; i < grid_.steps(); ++i) {
      interruption_point("RL rollout");
      const float t = float(grid_.timestep(i));
      Tensor vc, vu;
      velocities(x, t, c, vc, vu);
      const Tensor v = cfg(vc, vu);
      if (win.contains(i)) {
        const sample::SdeCoeffs co = sample::sde_coeffs(grid_, i, level_, o_.eta);
        const Tensor xi = randn(latent_shape_, seed_it, uint32_t(64 * s + 1 + i)).to(dev);
        Tensor mu = Tensor::empty(x.shape(), DType::F32, dev);
        Tensor xn = Tensor::empty(x.shape(), DType::F32, dev);
        sample::sde_mean(co, x, v, mu);
        sample::sde_sample(co, mu, xi, xn);
        if (store) {
          // log π_old exactly as grpo_policy_loss forms it: (x' − x) − ((cx − 1)·x + cv·v)
          Tensor resid = Tensor::empty(x.shape(), DType::F32, dev);
          Tensor inc = Tensor::empty(x.shape(), DType::F32, dev);
          sample::lincomb(1.0, xn, -1.0, x, resid);
          sample::lincomb(co.cx - 1.0, x, co.cv, v, inc);
          sample::lincomb(1.0, resid, -1.0, inc, resid);
          Stored st;
          st.step = i;
          st.x = x;
          st.x_next = xn;
          st.logp_old = sample::sde_log_prob_from_residual(co.std, resid).at(0);
          r.steps.push_back(std::move(st));
        }
        x = xn;
      } else {
        Tensor xn = x.clone();
        sample::ode_step(grid_, i, v, xn);
        x = xn;
      }
    }
    r.latent = x.select(0, 0).contiguous();
    return r;
  }

  std::vector<double> score(std::vector<std::unique_ptr<Reward>>& rewards,
                            std::vector<RewardSample>& batch,
                            std::vector<std::vector<double>>* per_reward) {
    std::vector<double> total(batch.size(), 0.0);
    if (per_reward) per_reward->clear();
    for (auto& rw : rewards) {
      const std::vector<double> r = rw->score_batch(batch);
      OSP_CHECK(r.size() == batch.size(), "reward ", rw->name(), " returned ", r.size(), " scores for ",
                batch.size(), " samples");
      for (size_t i = 0; i < r.size(); ++i) {
        OSP_CHECK(std::isfinite(r[i]), "reward ", rw->name(), " gave a non-finite score for sample ", i);
        total[i] += rw->weight() * r[i];
      }
      if (per_reward) per_reward->push_back(r);
    }
    return total;
  }

  RewardSample reward_sample(const RlPrompt& p, const Tensor& latent, int64_t id) {
    RewardSample s;
    s.video = env_.decode(latent).to(Device::cpu()).to(DType::F32);
    s.prompt = p.caption;
    s.has_attributes = p.has_attributes;
    s.attributes = p.attributes;
    s.attributes_json = p.attributes_json;
    s.id = id;
    return s;
  }

  const RlOptions& o_;
  RlEnv& env_;
  model::DiT& dit_;
  parallel::SequenceParallel& sp_;
  sample::SdeGrid grid_;
  sample::NoiseLevel level_;
  Shape latent_shape_;
  Tensor neg_;
  std::map<std::string, Tensor> cache_;
};

std::vector<int64_t> shuffled(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<float> key(static_cast<size_t>(n));
  philox_uniform(seed ^ 0x5EEDC0DEull, uint32_t(epoch), 0, key.data(), n);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return key[size_t(a)] < key[size_t(b)]; });
  return idx;
}

}  // namespace

double rl_evaluate(const RlOptions& o, RlEnv& env, std::vector<std::unique_ptr<Reward>>& rewards,
                   const std::vector<RlPrompt>& prompts, uint64_t seed) {
  Loop L(o, env);
  const sample::SdeWindow none{0, 0};
  // Several ranks: sample s goes to DP rank s mod D; the partial sums are added over DP.
  parallel::Communicator* dp = dp_of(env);
  const int64_t D = dp ? dp->size() : 1, d = dp ? dp->rank() : 0;
  std::vector<RewardSample> batch;
  for (size_t p = 0; p < prompts.size(); ++p)
    for (int64_t k = 0; k < o.eval_samples; ++k) {
      const int64_t s = int64_t(p) * o.eval_samples + k;
      if (s % D != d) continue;
      const Rollout r = L.rollout(seed ^ 0xE7A15EEDull, s, L.ctx(prompts[p].caption), none, false);
      batch.push_back(L.reward_sample(prompts[p], r.latent, s));
    }
  const std::vector<double> sc = batch.empty() ? std::vector<double>() : L.score(rewards, batch, nullptr);
  std::vector<double> sum_count = {std::accumulate(sc.begin(), sc.end(), 0.0), double(sc.size())};
  sum_doubles(dp, sum_count);
  return sum_count[0] / sum_count[1];
}

RlResult run_rl(const RlOptions& o, RlEnv& env, std::vector<std::unique_ptr<Reward>>& rewards,
                const RlHooks& hooks) {
  o.validate();
  OSP_CHECK(env.dit && env.sp && env.encode && env.decode, "run_rl: incomplete model stack");
  model::DiT& dit = *env.dit;
  OSP_CHECK(dit.options().train && !dit.options().train_base,
            "run_rl: the DiT must be bound with train = true and train_base = false (frozen base)");
  OSP_CHECK(!rewards.empty(), "run_rl: no reward");
  const ops::DeterministicBackwardScope deterministic(o.deterministic);  // for this run only
  if (o.deterministic) log_info("deterministic: the attention backward runs osp's own kernel (no atomics)");
  // ---- ranks: DP rank d of D owns the prompt groups [d·P/D, (d+1)·P/D); world rank 0 writes
  const bool multi = several(env);
  parallel::Communicator* dp = dp_of(env);
  parallel::Communicator* world = multi ? env.groups->world.get() : nullptr;
  const int64_t D = dp ? dp->size() : 1, d = dp ? dp->rank() : 0;
  const bool writer = !world || world->rank() == 0;
  std::optional<DeferInterrupts> defer;  // several ranks: Ctrl-C only between iterations (agreed)
  if (multi) defer.emplace();
  OSP_CHECK(o.prompts_per_iter % D == 0, "--prompts-per-iter ", o.prompts_per_iter, " must be a multiple of the ", D,
            " data-parallel ranks (each rank rolls out whole prompt groups)");
  if (multi)
    OSP_CHECK(env.sp->size() == env.groups->sp_size(), "run_rl: the sequence-parallel plan spans ", env.sp->size(),
              " ranks but the mesh's SP groups have ", env.groups->sp_size());
  const std::vector<RlPrompt> prompts = load_rl_prompts(o.prompts);
  std::vector<RlPrompt> eval_prompts;
  if (!o.eval_prompts.empty()) eval_prompts = load_rl_prompts(o.eval_prompts);
  fs::create_directories(o.out);

  // ---- LoRA, optimizer, clipper, EMA
  model::LoraInit li;
  li.rank = o.lora_rank;
  li.alpha = o.lora_alpha;
  li.targets = model::split_lora_targets(o.lora_targets);
  li.seed = o.seed;
  model::Lora lora = model::init_lora(model::DiT::expected_shapes(dit.config()), li);
  dit.attach_lora(lora);
  ParamTable params = dit.lora_parameters();  // non-const: the SP / DP reduction writes the gradients
  AdamW opt(params, AdamWConfig{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay});
  GradClipper clipper(GradClipConfig::parse(o.clip));
  auto masters = [&]() {
    std::vector<Tensor> m;
    for (const auto& s : opt.slots()) m.push_back(s.master);
    return m;
  };
  Ema ema;
  if (o.ema != "off") ema = Ema(masters(), std::strtod(o.ema.c_str(), nullptr));

  // ---- resume
  int64_t start = 0;
  RlResult result;
  const fs::path log_path = fs::path(o.out) / "rl_log.jsonl";
  if (!o.resume.empty()) {
    const std::string dir = resolve_rl_checkpoint(o.resume);
    const json st = json::parse(read_text_file((fs::path(dir) / "rl_state.json").string()));
    start = st.at("iteration").get<int64_t>();
    OSP_CHECK(st.at("seed").get<uint64_t>() == o.seed, "--resume ", dir, ": the run used --seed ",
              st.at("seed").get<uint64_t>(), ", not ", o.seed);
    const io::SafetensorsFile f = io::SafetensorsFile::open((fs::path(dir) / "optimizer.safetensors").string());
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string& n = params[i].name;
      for (const char* part : {"master.", "m.", "v."}) {
        const std::string key = part + n;
        OSP_CHECK(f.has(key), "--resume ", dir, ": optimizer.safetensors lacks ", key,
                  " (was the run started with other --lora-rank / --lora-targets?)");
        const Tensor t = f.get(key);
        AdamW::Slot& sl = opt.slots()[i];
        Tensor& dst = part[0] == 'm' && part[1] == 'a' ? sl.master : part[0] == 'm' ? sl.m : sl.v;
        OSP_CHECK(t.numel() == dst.numel(), "--resume ", dir, ": ", key, " has ", t.numel(),
                  " elements, expected ", dst.numel());
        dst.copy_from(t.view(dst.shape()));
      }
    }
    opt.restore(st.at("adam_steps").get<int64_t>());
    GradClipState cs;
    cs.initialised = st.at("clip_initialised").get<bool>();
    cs.mean = unhexf(st.at("clip_mean"));
    cs.var = unhexf(st.at("clip_var"));
    clipper.set_state(cs);
    if (ema.enabled()) {
      const io::SafetensorsFile e = io::SafetensorsFile::open((fs::path(dir) / "lora_ema.safetensors").string());
      for (size_t i = 0; i < params.size(); ++i) {
        Tensor& dst = ema.weights()[i];
        dst.copy_from(e.get(params[i].name).view(dst.shape()));
      }
    }
    result.last_checkpoint = dir;
    // keep the log lines of the iterations the checkpoint holds
    std::string kept;
    if (fs::exists(log_path)) {
      std::ifstream lf(log_path);
      std::string line;
      while (std::getline(lf, line)) {
        try {
          if (json::parse(line).at("iteration").get<int64_t>() <= start) kept += line + "\n";
        } catch (const json::exception&) {
        }
      }
    }
    if (writer) write_text_atomic(log_path.string(), kept, io::Overwrite::Allow);
    log_info("resuming from ", dir, " at iteration ", start);
  } else if (writer) {
    write_text_atomic(log_path.string(), "", io::Overwrite::Allow);
  }

  Loop L(o, env);
  GrpoLossConfig lc;
  lc.guidance = o.guidance;
  lc.clip_range = o.clip_range;
  lc.adv_clip = o.adv_clip;
  lc.kl_beta = o.kl_beta;

  auto save = [&](int64_t it) {
    // A save requested by Ctrl-C finishes: the writers' own safe points are held off meanwhile
    // (a second Ctrl-C still ends the process at once, removing the temporary folder).
    const bool was_interrupted = interrupted();
    set_interrupted(false);
    auto hold = on_scope_exit([&] { set_interrupted(was_interrupted || interrupted()); });
    const std::string name = rl_checkpoint_name(it);
    const fs::path dir = fs::path(o.out) / name;
    if (!writer) {  // every rank holds the same LoRA and optimizer state; rank 0 writes them
      world->barrier();
      result.last_checkpoint = dir.string();
      return dir.string();
    }
    model::Lora cur = dit.lora();
    cur.metadata["base_model"] = env.base_model;
    cur.metadata["rl_iteration"] = std::to_string(it);
    model::Lora em = cur;
    if (ema.enabled()) {
      for (size_t i = 0; i < params.size(); ++i) {
        const std::string& n = params[i].name;  // <module>.lora_A.weight / .lora_B.weight
        const bool isA = n.find(".lora_A.weight") != std::string::npos;
        const std::string mod = n.substr(0, n.size() - std::string(".lora_A.weight").size());
        Tensor& dst = isA ? em.adapters.at(mod).A : em.adapters.at(mod).B;
        dst = ema.weights()[i].to(Device::cpu()).clone().view(dst.shape());
      }
      em.metadata["ema_decay"] = o.ema;
    }
    std::map<std::string, Tensor> optst;
    for (size_t i = 0; i < params.size(); ++i) {
      const AdamW::Slot& sl = opt.slots()[i];
      optst["master." + params[i].name] = sl.master.to(Device::cpu());
      optst["m." + params[i].name] = sl.m.to(Device::cpu());
      optst["v." + params[i].name] = sl.v.to(Device::cpu());
    }
    const GradClipState cs = clipper.state();
    const json st = {{"iteration", it}, {"adam_steps", opt.steps()}, {"seed", o.seed},
                     {"clip_initialised", cs.initialised}, {"clip_mean", hexf(cs.mean)},
                     {"clip_var", hexf(cs.var)}, {"run_config", json::parse(o.to_json())}};
    io::write_dir_atomic(
        dir.string(),
        [&](const std::string& tmp) {
          model::save_lora((fs::path(tmp) / "lora.safetensors").string(), cur);
          if (ema.enabled()) model::save_lora((fs::path(tmp) / "lora_ema.safetensors").string(), em);
          io::save_safetensors((fs::path(tmp) / "optimizer.safetensors").string(), optst,
                               {{"adam_steps", std::to_string(opt.steps())}});
          std::ofstream((fs::path(tmp) / "rl_state.json").string()) << st.dump(1) << "\n";
          std::ostringstream list;
          for (const auto& e : fs::directory_iterator(tmp))
            list << e.path().filename().string() << " " << fs::file_size(e.path()) << "\n";
          std::ofstream((fs::path(tmp) / kComplete).string()) << list.str();
        },
        io::Overwrite::Allow);
    write_text_atomic((fs::path(o.out) / "latest").string(), name + "\n", io::Overwrite::Allow);
    if (o.keep > 0) {
      std::vector<std::string> all;
      for (const auto& e : fs::directory_iterator(o.out))
        if (e.is_directory() && e.path().filename().string().rfind("checkpoint-", 0) == 0 &&
            fs::exists(e.path() / kComplete))
          all.push_back(e.path().string());
      std::sort(all.begin(), all.end());
      for (size_t i = 0; i + size_t(o.keep) < all.size(); ++i) fs::remove_all(all[i]);
    }
    result.last_checkpoint = dir.string();
    if (world) world->barrier();  // the checkpoint is complete before any rank goes on
    return dir.string();
  };

  const uint64_t eval_seed = o.seed;
  if (!eval_prompts.empty() && start == 0) {
    result.eval_start = rl_evaluate(o, env, rewards, eval_prompts, eval_seed);
    log_info("held-out reward before RL: ", result.eval_start);
  }

  const int64_t N = int64_t(prompts.size()), P = o.prompts_per_iter, G = o.group;
  int64_t last_saved = start;
  int64_t it = start;
  for (; it < o.iterations; ++it) {
    std::vector<double> stop = {interrupted() ? 1.0 : 0.0};
    sum_doubles(world, stop);  // several ranks stop together, between iterations
    if (stop[0] > 0) {
      result.interrupted = true;
      break;
    }
    RlIterationLog lg;
    lg.iteration = it + 1;
    const sample::SdeWindow win =
        o.window == "fixed" ? sample::fixed_sde_window(int(o.steps), int(o.sde_steps))
                            : sample::mixgrpo_sde_window(int(it), int(o.steps), int(o.sde_steps),
                                                         int(o.window_stride), int(o.window_tau));
    lg.sde_begin = win.begin, lg.sde_end = win.end;
    const uint64_t seed_it = iteration_seed(o.seed, it);

    // ---- rollouts
    auto t0 = Clock::now();
    std::vector<Rollout> rolls;
    std::vector<int64_t> group_of;
    std::vector<Tensor> ctxs;
    const int64_t k_begin = d * (P / D), k_end = (d + 1) * (P / D);
    const int64_t s_begin = k_begin * G;  // this rank's first global sample index
    try {
      for (int64_t k = k_begin; k < k_end; ++k) {
        const int64_t q = it * P + k;
        const int64_t pi = shuffled(N, o.seed, q / N)[size_t(q % N)];
        const Tensor c = L.ctx(prompts[size_t(pi)].caption);
        for (int64_t g = 0; g < G; ++g) {
          Rollout r = L.rollout(seed_it, k * G + g, c, win, true);
          r.prompt = pi;
          r.group = k;
          rolls.push_back(std::move(r));
          group_of.push_back(k);
          ctxs.push_back(c);
        }
      }
    } catch (const Interrupted&) {
      result.interrupted = true;
      break;
    }
    lg.seconds_rollout = since(t0);
    lg.rollout_forwards = int64_t(rolls.size()) * o.steps * (o.guidance != 1.0 ? 2 : 1);

    // ---- rewards
    t0 = Clock::now();
    std::vector<RewardSample> batch;
    for (size_t s = 0; s < rolls.size(); ++s)
      batch.push_back(L.reward_sample(prompts[size_t(rolls[s].prompt)], rolls[s].latent, s_begin + int64_t(s)));
    std::vector<std::vector<double>> per;
    std::vector<double> total = L.score(rewards, batch, &per);
    batch.clear();
    // every rank sees every sample's rewards (rank-major = global sample order)
    total = gather_doubles(dp, total);
    for (auto& r : per) r = gather_doubles(dp, r);
    if (dp) {
      group_of.clear();
      for (int64_t s = 0; s < P * G; ++s) group_of.push_back(s / G);
    }
    lg.seconds_reward = since(t0);
    {
      double m = 0, v = 0;
      for (double r : total) m += r;
      m /= double(total.size());
      for (double r : total) v += (r - m) * (r - m);
      lg.reward_mean = m;
      lg.reward_std = std::sqrt(v / double(total.size()));
      for (size_t k = 0; k < rewards.size(); ++k)
        lg.reward_means.emplace_back(rewards[k]->name(),
                                     std::accumulate(per[k].begin(), per[k].end(), 0.0) / double(per[k].size()));
    }

    // ---- advantages (per reward, weighted sum)
    std::vector<double> adv(total.size(), 0.0);
    for (size_t k = 0; k < rewards.size(); ++k) {
      const std::vector<double> a = grpo_advantages(per[k], group_of);
      for (size_t i = 0; i < a.size(); ++i) adv[i] += rewards[k]->weight() * a[i];
    }
    const SampleSelection sel = select_training_samples(adv, 1, seed_it);
    lg.kept = int64_t(sel.keep.size());

    // ---- policy update (the LoRA state before it is kept for a Ctrl-C inside it)
    std::vector<Tensor> snap_master, snap_m, snap_v, snap_ema;
    for (size_t i = 0; i < params.size(); ++i) {
      snap_master.push_back(opt.slots()[i].master.clone());
      snap_m.push_back(opt.slots()[i].m.clone());
      snap_v.push_back(opt.slots()[i].v.clone());
      if (ema.enabled()) snap_ema.push_back(ema.weights()[i].clone());
    }
    const int64_t snap_steps = opt.steps();
    const GradClipState snap_clip = clipper.state();
    t0 = Clock::now();
    const int64_t chunk = o.train_batch > 0 ? o.train_batch : int64_t(sel.keep.size());
    const int64_t s_end = s_begin + int64_t(rolls.size());
    double ratio_sum = 0, kl_sum = 0, clip_sum = 0, loss_sum = 0, v_ms_sum = 0, ref_ms_sum = 0;
    int64_t terms = 0;
    lg.ratio_min = 1e300, lg.ratio_max = -1e300;
    lc.num_sde_steps = std::max(1, win.size());
    try {
      for (size_t c0 = 0; c0 < sel.keep.size(); c0 += size_t(chunk)) {
        const size_t c1 = std::min(sel.keep.size(), c0 + size_t(chunk));
        // ÷ the global chunk size; the DP reduction below averages, so D ranks scale by D
        const double inv = double(D) / double(c1 - c0);
        dit.zero_lora_grad();
        for (size_t ci = c0; ci < c1; ++ci) {
          const int64_t gs = sel.keep[ci];
          if (gs < s_begin || gs >= s_end) continue;  // another DP rank rolled it out
          const int64_t s = gs - s_begin;             // index into this rank's rollouts
          const Rollout& r = rolls[size_t(s)];
          for (const Stored& st : r.steps) {
            interruption_point("RL update");
            const float t = float(L.grid_.timestep(st.step));
            GrpoStepInputs in;
            in.coeffs = sample::sde_coeffs(L.grid_, st.step, L.level_, o.eta);
            in.x = st.x;
            in.x_next = st.x_next;
            in.logp_old = {st.logp_old};
            in.advantages = {sel.advantages[size_t(gs)]};
            if (o.guidance != 1.0) in.v_uncond = dit.forward(st.x, {t}, L.neg_, *env.sp).clone();
            if (o.kl_beta > 0) {
              dit.set_lora_enabled(false);
              Tensor rc, ru;
              L.velocities(st.x, t, ctxs[size_t(s)], rc, ru);
              in.v_ref = L.cfg(rc, ru);
              dit.set_lora_enabled(true);
            }
            GrpoStepResult res;
            forward_backward(dit, *env.sp, st.x, {t}, ctxs[size_t(s)], [&](const Tensor& v) {
              in.v_cond = v;
              if (o.guidance == 1.0) in.v_uncond = v;
              res = grpo_policy_loss(in, lc, true);
              Tensor g = Tensor::empty(v.shape(), DType::F32, v.device());
              ops::axpby(float(inv), res.grad_v_cond, 0.f, res.grad_v_cond, g);
              return g;
            });
            ratio_sum += res.ratio[0];
            lg.ratio_min = std::min(lg.ratio_min, res.ratio[0]);
            lg.ratio_max = std::max(lg.ratio_max, res.ratio[0]);
            kl_sum += res.kl[0];
            v_ms_sum += res.v_ms[0];
            ref_ms_sum += res.ref_ms[0];
            clip_sum += res.clip_fraction;
            loss_sum += res.loss;
            ++terms;
            lg.update_forwards += (o.guidance != 1.0 ? 1 : 0) + (o.kl_beta > 0 ? (o.guidance != 1.0 ? 2 : 1) : 0);
            ++lg.update_backwards;
          }
        }
        if (multi) {
          if (env.groups->sp_size() > 1) reduce_sp_gradients(params, *env.groups->sp);
          if (dp) average_dp_gradients(params, *dp);
        }
        const ClipResult cr = clipper.clip(params);
        OSP_CHECK(std::isfinite(cr.norm), "RL iteration ", it + 1, ": the LoRA gradient norm is ", cr.norm,
                  "; stopping (last checkpoint: ", result.last_checkpoint.empty() ? "none" : result.last_checkpoint, ")");
        lg.grad_norm = cr.norm;
        lg.clipped = lg.clipped || cr.clipped;
        opt.step(o.lr);
        if (ema.enabled()) ema.update(masters());
        ++lg.optimizer_steps;
      }
    } catch (const Interrupted&) {
      // The update of this iteration is incomplete: back to the state after the last complete
      // iteration (kept below), which is then saved.
      for (size_t i = 0; i < params.size(); ++i) {
        opt.slots()[i].master.copy_from(snap_master[i]);
        opt.slots()[i].m.copy_from(snap_m[i]);
        opt.slots()[i].v.copy_from(snap_v[i]);
        if (ema.enabled()) ema.weights()[i].copy_from(snap_ema[i]);
      }
      opt.restore(snap_steps);
      clipper.set_state(snap_clip);
      dit.zero_lora_grad();
      result.interrupted = true;
      break;
    }
    lg.seconds_update = since(t0);
    if (dp) {  // the statistics of every DP rank's terms
      std::vector<double> sums = {ratio_sum, kl_sum, clip_sum, loss_sum, double(terms), double(lg.update_forwards),
                                  double(lg.update_backwards), v_ms_sum, ref_ms_sum};
      sum_doubles(dp, sums);
      ratio_sum = sums[0], kl_sum = sums[1], clip_sum = sums[2], loss_sum = sums[3];
      v_ms_sum = sums[7], ref_ms_sum = sums[8];
      terms = int64_t(sums[4]), lg.update_forwards = int64_t(sums[5]), lg.update_backwards = int64_t(sums[6]);
      const std::vector<double> mm = gather_doubles(dp, {lg.ratio_min, lg.ratio_max});
      for (size_t i = 0; i < mm.size(); i += 2)
        lg.ratio_min = std::min(lg.ratio_min, mm[i]), lg.ratio_max = std::max(lg.ratio_max, mm[i + 1]);
      lg.rollout_forwards *= D;
    }
    if (terms > 0) {
      lg.ratio_mean = ratio_sum / double(terms);
      lg.kl = kl_sum / double(terms);
      lg.clip_fraction = clip_sum / double(terms);
      lg.loss = loss_sum / double(terms);
      lg.v_rms = std::sqrt(v_ms_sum / double(terms));
      lg.ref_rel = v_ms_sum > 0 ? std::sqrt(ref_ms_sum / v_ms_sum) : 0.0;
    } else {
      lg.ratio_min = lg.ratio_max = 1;
    }
    lg.lr = o.lr;
    rolls.clear();
    if (!eval_prompts.empty() && o.eval_every > 0 && (it + 1) % o.eval_every == 0 && it + 1 < o.iterations)
      lg.eval_reward = rl_evaluate(o, env, rewards, eval_prompts, eval_seed);
    if (writer) {
      std::ofstream lf(log_path, std::ios::app);
      lf << lg.json() << "\n";
    }
    if (writer && !o.quiet_progress)
      std::fprintf(stderr, "rl %lld/%lld  reward %.4f ± %.4f  kl %.3g  ref gap %.2g  clipfrac %.3f  ratio [%.4f, %.4f]  %.1fs\n",
                   static_cast<long long>(it + 1), static_cast<long long>(o.iterations), lg.reward_mean,
                   lg.reward_std, lg.kl, lg.ref_rel, lg.clip_fraction, lg.ratio_min, lg.ratio_max,
                   lg.seconds_rollout + lg.seconds_reward + lg.seconds_update);
    result.log.push_back(lg);
    if (hooks.on_iteration) hooks.on_iteration(lg);
    if (o.save_every > 0 && (it + 1) % o.save_every == 0) {
      save(it + 1);
      last_saved = it + 1;
    }
  }
  result.iterations_done = it;
  if (it > last_saved || (it == start && result.last_checkpoint.empty())) save(it);
  if (!eval_prompts.empty() && !result.interrupted && it == o.iterations) {
    result.eval_end = rl_evaluate(o, env, rewards, eval_prompts, eval_seed);
    log_info("held-out reward after RL: ", result.eval_end);
    if (writer) {
      std::ofstream lf(log_path, std::ios::app);
      lf << json({{"iteration", it}, {"eval_reward", result.eval_end},
                  {"eval_reward_start", result.eval_start}}).dump()
         << "\n";
    }
  }
  return result;
}

}  // namespace osp::train
