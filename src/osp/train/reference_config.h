// OSP-Next's training config names in osp's config files (`osp train --config`, `osp rl
// --config`, JSON or YAML): a config laid out like the reference's configs/train/*/osp_*.yaml
// (top-level run settings plus model_config / optimizer_config / data_config / lora_config /
// rl_config sections) is translated into osp's flat setting names where a setting has an osp
// counterpart; settings osp has no use for are named in one warning and dropped; values osp
// cannot honour are errors. Keys that are not reference names pass through unchanged (osp's own
// names; an unknown one is then reported by the options' reader).
//
//   reference                                  osp train                 osp rl
//   seed                                       seed                      seed
//   output_dir                                 out                       out
//   training_iteration                         steps                     (dropped: --iterations)
//   gradient_accumulation_steps                grad_accum                must be 1
//   save_interval                              save_every                save_every
//   ema_decay                                  ema                       ema
//   init_max_grad_norm 1.0                     clip adaptive (osp's adaptive rule starts at 1.0)
//   use_skiparse_sequence_parallel + skiparse_sp_size N > 1   sp ssp, sp_size N
//   use_context_parallel + cp_size N > 1 (Wan2.1 configs)      sp ulysses, sp_size N
//   fsdp_size N > 1                            shard_optimizer on + shard_weights   (dropped)
//   model_config.pretrained_model_dir_or_checkpoint           model
//   model_config.skiparse_model_type           attention (dual_end → hybrid, full → full; P 2 only)
//   model_config.num_full_blocks               full_blocks               (the model's own layout)
//   optimizer_config.lr / weight_decay / betas / eps          lr / weight_decay / beta1, beta2 / eps
//   data_config.batch_size                     batch (osp's is the global batch: one rank's here)
//   lora_config.rank / alpha / target_modules  lora_rank / lora_alpha / lora_targets (both)
//   rl_config.prompt_file / eval_prompt_file                             prompts / eval_prompts
//   rl_config.height + width / num_frames                                size WxH / frames
//   rl_config.num_inference_steps / sde_steps                            steps / sde_steps
//   rl_config.num_image_per_prompt / train_batch_size                    group / train_batch
//   rl_config.kl_beta / clip_range / adv_clip_max / guidance_scale / shift   the same / adv_clip / guidance
// Must hold osp's behaviour (else an error names the key): gradient_checkpointing true,
// weight_dtype bf16, ema_update_interval 1, use_sequence_parallel false, scheduler_config of
// flow_matching with dynamic shifting and logit-normal timesteps (osp train's only sampler).
// Dropped with the warning: wandb_config, vae_config, text_encoder_config (the latent cache holds
// their outputs), the data loader's settings, logging / profiling / checkpoint-format switches,
// model dimensions (the model folder's config.json decides), rl_config's sample_batch_size /
// num_batches_per_epoch / reward_fn (osp has no VideoAlign: give --reward or --reward-cmd).
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace osp::train {

enum class ConfigKind { Train, Rl };

// The settings of `j` (a JSON object) with the reference's names translated (see above).
// Throws osp::Error naming `source` and the key.
nlohmann::json translate_reference_config(const nlohmann::json& j, ConfigKind kind, const std::string& source);

}  // namespace osp::train
