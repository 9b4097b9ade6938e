#include "osp/train/reference_config.h"

#include <cmath>
#include <set>
#include <vector>

#include "osp/core/error.h"
#include "osp/core/log.h"

namespace osp::train {

namespace {

using json = nlohmann::json;

class Translator {
 public:
  Translator(ConfigKind kind, std::string source) : kind_(kind), source_(std::move(source)) {}

  json run(const json& j) {
    OSP_CHECK(j.is_object(), "config ", source_, " must be a mapping of settings");
    ref_sp_ = j.contains("use_sequence_parallel");  // a reference config: its sp_size is its Ulysses size
    for (const auto& [key, v] : j.items()) top(key, v);
    if (!dropped_.empty()) {
      std::string names;
      for (const auto& d : dropped_) names += (names.empty() ? "" : ", ") + d;
      log_warn("config ", source_, ": OSP-Next settings osp has no use for, ignored: ", names);
    }
    return out_;
  }

 private:
  bool train() const { return kind_ == ConfigKind::Train; }

  [[noreturn]] void refuse(const std::string& key, const json& v, const std::string& why) const {
    fail(str("config ", source_, ": '", key, "' ", v.dump(), ": ", why));
  }
  void set(const std::string& osp_key, const json& v, const std::string& from) {
    OSP_CHECK(!out_.contains(osp_key), "config ", source_, ": '", from, "' sets '", osp_key,
              "', which the config also sets (give one of them)");
    out_[osp_key] = v;
  }
  void drop(const std::string& key) { dropped_.push_back(key); }
  // A setting osp can only honour at one value (its behaviour): anything else is refused.
  void must_be(const std::string& key, const json& v, const json& want, const std::string& why) {
    const bool same = v.is_number() && want.is_number() ? v.get<double>() == want.get<double>() : v == want;
    if (!same) refuse(key, v, why);
  }
  static int64_t as_int(const json& v) { return v.is_number_integer() ? v.get<int64_t>() : -1; }

  void top(const std::string& key, const json& v) {
    if (key == "output_dir") set("out", v, key);
    else if (key == "training_iteration") train() ? set("steps", v, key) : drop(key);
    else if (key == "gradient_accumulation_steps") {
      if (train()) set("grad_accum", v, key);
      else must_be(key, v, 1, "osp rl accumulates over --train-batch chunks, not micro-steps");
    } else if (key == "save_interval") set("save_every", v, key);
    else if (key == "ema_decay") set("ema", v, key);
    else if (key == "init_max_grad_norm") {
      must_be(key, v, 1.0, "osp's adaptive clipping (EMA mean + 3 std) starts at 1.0; use --clip fixed:X otherwise");
      set("clip", "adaptive", key);
    } else if (key == "gradient_checkpointing")
      must_be(key, v, true, "osp checkpoints every block's activations (--keep-attention trades memory for time)");
    else if (key == "weight_dtype") must_be(key, v, "bf16", "osp computes in bf16 on CUDA (fp32 on the CPU)");
    else if (key == "ema_update_interval") must_be(key, v, 1, "osp updates the EMA every step");
    else if (key == "use_sequence_parallel")
      must_be(key, v, false, "the reference's Ulysses group inside SSP has no osp counterpart; use sp ssp or ulysses");
    else if (key == "use_skiparse_sequence_parallel") {
      if (!v.is_boolean()) refuse(key, v, "must be true or false");
      ssp_ = v.get<bool>();
      flush_ssp(key);
    } else if (key == "skiparse_sp_size") {
      if (as_int(v) < 1) refuse(key, v, "must be an integer >= 1");
      ssp_size_ = as_int(v);
      flush_ssp(key);
    } else if (key == "use_context_parallel") {
      if (!v.is_boolean()) refuse(key, v, "must be true or false");
      cp_ = v.get<bool>();
      flush_cp(key);
    } else if (key == "cp_size") {
      if (as_int(v) < 1) refuse(key, v, "must be an integer >= 1");
      cp_size_ = as_int(v);
      flush_cp(key);
    } else if (key == "sp_size" && ref_sp_) {
      drop(key + " (the reference's Ulysses size: inactive without use_sequence_parallel)");
    } else if (key == "fsdp_size") {
      if (as_int(v) < 1) refuse(key, v, "must be an integer >= 1");
      if (!train()) drop(key);
      else if (as_int(v) > 1) set("shard_optimizer", "on", key), set("shard_weights", true, key);
    } else if (key == "model_config") section(key, v, &Translator::model_config);
    else if (key == "scheduler_config") section(key, v, &Translator::scheduler_config);
    else if (key == "optimizer_config") section(key, v, &Translator::optimizer_config);
    else if (key == "data_config") section(key, v, &Translator::data_config);
    else if (key == "lora_config") {
      section(key, v, &Translator::lora_config);
    } else if (key == "rl_config") {
      if (train()) refuse(key, v, "an RL config: give it to osp rl");
      section(key, v, &Translator::rl_config);
    } else if (key == "model_name" || key == "log_interval" || key == "save_with_dcp_api" || key == "profiling" ||
               key == "reshard_after_forward" || key == "explicit_prefetching_num_blocks" || key == "wandb_config" ||
               key == "vae_config" || key == "text_encoder_config" || key == "num_epochs") {
      drop(key);
    } else {
      set(key, v, key);  // osp's own name (or unknown: the options' reader says so)
    }
  }

  // Wan2.1's context parallelism (Ulysses over the full-attention blocks) from the pair
  // use_context_parallel / cp_size, whichever comes last.
  void flush_cp(const std::string& key) {
    if (cp_ && cp_size_ > 1 && !out_.contains("sp")) set("sp", "ulysses", key), set("sp_size", cp_size_, key);
  }
  // SSP from the pair use_skiparse_sequence_parallel / skiparse_sp_size, whichever comes last.
  void flush_ssp(const std::string& key) {
    if (ssp_ && ssp_size_ > 1 && !out_.contains("sp")) set("sp", "ssp", key), set("sp_size", ssp_size_, key);
  }

  void section(const std::string& name, const json& v, void (Translator::*f)(const std::string&, const json&)) {
    if (v.is_null()) return;
    if (!v.is_object()) refuse(name, v, "must be a mapping");
    for (const auto& [k, x] : v.items()) (this->*f)(name + "." + k, x);
  }
  static std::string leaf(const std::string& dotted) { return dotted.substr(dotted.rfind('.') + 1); }

  void model_config(const std::string& key, const json& v) {
    const std::string k = leaf(key);
    if (k == "pretrained_model_dir_or_checkpoint") set("model", v, key);
    else if (!train()) drop(key + " (the model folder's config decides)");
    else if (k == "skiparse_model_type") {
      if (v == "dual_end") set("attention", "hybrid", key);
      else if (v == "full") set("attention", "full", key);
      else refuse(key, v, "osp trains dual_end (hybrid) or full attention");
    } else if (k == "sparse_ratio") must_be(key, v, 2, "osp's Skiparse-2D trains with P = 2");
    else if (k == "num_full_blocks") set("full_blocks", v, key);
    else drop(key + " (the model folder's config.json decides)");
  }

  void scheduler_config(const std::string& key, const json& v) {
    if (!train()) return drop(key);
    const std::string k = leaf(key);
    const std::string why = "osp train samples timesteps logit-normally with the dynamic shift (osp-next-spec §6.1)";
    if (k == "scheduler_name") must_be(key, v, "flow_matching", why);
    else if (k == "use_dynamic_shifting" || k == "use_logitnorm_time_sampling") must_be(key, v, true, why);
    else drop(key);
  }

  void optimizer_config(const std::string& key, const json& v) {
    const std::string k = leaf(key);
    if (k == "lr" || k == "weight_decay" || k == "eps") set(k, v, key);
    else if (k == "betas") {
      if (!v.is_array() || v.size() != 2) refuse(key, v, "must be a pair [beta1, beta2]");
      set("beta1", v[0], key), set("beta2", v[1], key);
    } else refuse(key, v, "not an AdamW setting osp has (lr, weight_decay, betas, eps)");
  }

  void data_config(const std::string& key, const json& v) {
    if (train() && key == "data_config.batch_size") {
      log_warn("config ", source_, ": data_config.batch_size ", v.dump(), " is per data-parallel rank in OSP-Next; "
               "osp's batch is the global batch (here taken as it is: right for one rank)");
      set("batch", v, key);
    } else {
      drop(key + " (osp reads its latent cache: --data)");
    }
  }

  void lora_config(const std::string& key, const json& v) {
    const std::string k = leaf(key);
    if (k == "rank") set("lora_rank", v, key);
    else if (k == "alpha") set("lora_alpha", v, key);
    else if (k == "target_modules") {
      if (!v.is_array() || v.empty()) refuse(key, v, "must be a list of module names");
      std::string joined;
      for (const auto& m : v) {
        if (!m.is_string()) refuse(key, v, "must be a list of module names");
        joined += (joined.empty() ? "" : ",") + m.get<std::string>();
      }
      set("lora_targets", joined, key);
    } else if (k == "lora_path") {
      drop(key + " (osp rl resumes a run with --resume)");
    } else refuse(key, v, "not a LoRA setting osp has (rank, alpha, target_modules)");
  }

  void rl_config(const std::string& key, const json& v) {
    static const std::vector<std::pair<std::string, std::string>> same = {
        {"prompt_file", "prompts"},       {"eval_prompt_file", "eval_prompts"},
        {"num_frames", "frames"},         {"sde_steps", "sde_steps"},
        {"num_inference_steps", "steps"}, {"kl_beta", "kl_beta"},
        {"num_image_per_prompt", "group"}, {"train_batch_size", "train_batch"},
        {"clip_range", "clip_range"},     {"adv_clip_max", "adv_clip"},
        {"guidance_scale", "guidance"},   {"shift", "shift"}};
    const std::string k = leaf(key);
    for (const auto& [ref, osp] : same)
      if (k == ref) return set(osp, v, key);
    if (k == "height" || k == "width") {
      if (as_int(v) < 1) refuse(key, v, "must be a positive integer");
      (k == "height" ? height_ : width_) = as_int(v);
      if (height_ > 0 && width_ > 0) set("size", std::to_string(width_) + "x" + std::to_string(height_), "rl_config.height/width");
    } else if (k == "reward_fn") {
      log_warn("config ", source_, ": rl_config.reward_fn ", v.dump(),
               " is not used: osp has no VideoAlign; give the rewards with --reward / --reward-cmd");
    } else {
      drop(key);
    }
  }

  ConfigKind kind_;
  std::string source_;
  json out_ = json::object();
  std::vector<std::string> dropped_;
  bool ssp_ = false, ref_sp_ = false, cp_ = false;
  int64_t ssp_size_ = 0, cp_size_ = 0, height_ = 0, width_ = 0;
};

}  // namespace

nlohmann::json translate_reference_config(const nlohmann::json& j, ConfigKind kind, const std::string& source) {
  return Translator(kind, source).run(j);
}

}  // namespace osp::train
