// Config files in OSP-Next's layout (train/reference_config.h): YAML configs shaped like the
// reference's configs/train/*/osp_*.yaml give `osp train` / `osp rl` the settings they name,
// what osp has no use for is dropped, and values osp cannot honour are errors naming the key.
#include <gtest/gtest.h>

#include "osp/core/error.h"
#include "osp/io/yaml.h"
#include "osp/train/reference_config.h"
#include "osp/train/rl_trainer.h"
#include "osp/train/trainer.h"
#include "test_util.h"

using namespace osp;
using namespace osp::train;

namespace {

// A 1.3B sparse fine-tuning run laid out as OSP-Next lays its training configs out.
const char* kTrainYaml = R"(# sparse fine-tuning, OSP-Next layout
model_name: "osp_next"
seed: 1024
output_dir: "/runs/osp-1.3b"
training_iteration: 6000
fsdp_size: 8
sp_size: 4
skiparse_sp_size: 4
use_sequence_parallel: False
use_skiparse_sequence_parallel: True
gradient_checkpointing: True
gradient_accumulation_steps: 2
init_max_grad_norm: 1.0
log_interval: 1
save_interval: 500
weight_dtype: "bf16"
ema_decay: 0.9993
ema_update_interval: 1
wandb_config:
  project_name: "p"
model_config:
  dim: 1536
  num_layers: 30
  skiparse_model_type: "dual_end"
  sparse_ratio: 2
  num_full_blocks: 8
  pretrained_model_dir_or_checkpoint: "/models/Wan2.1-T2V-1.3B"
scheduler_config:
  scheduler_name: "flow_matching"
  use_dynamic_shifting: True
  use_logitnorm_time_sampling: True
data_config:
  batch_size: 1
  num_workers: 16
  dataset_config:
    sample_height: 480
optimizer_config:
  lr: 0.00002
  weight_decay: 0.001
  betas: [0.9, 0.999]
  eps: 1e-15
)";

TrainOptions train_options(const std::string& yaml) {
  TrainOptions o;
  o.apply_json(io::parse_yaml(yaml, "run.yaml").dump(), "run.yaml");
  return o;
}

std::string train_error(const std::string& yaml) {
  return test::error_of([&] { train_options(yaml); });
}

}  // namespace

TEST(ReferenceConfig, TrainingYamlInOspNextLayout) {
  const TrainOptions o = train_options(kTrainYaml);
  EXPECT_EQ(o.seed, 1024u);
  EXPECT_EQ(o.out, "/runs/osp-1.3b");
  EXPECT_EQ(o.steps, 6000);
  EXPECT_EQ(o.grad_accum, 2);
  EXPECT_EQ(o.save_every, 500);
  EXPECT_EQ(std::stod(o.ema), 0.9993);
  EXPECT_EQ(o.clip, "adaptive");
  EXPECT_EQ(o.sp, "ssp");
  EXPECT_EQ(o.sp_size, 4);
  EXPECT_EQ(o.shard_optimizer, "on");
  EXPECT_TRUE(o.shard_weights);
  EXPECT_EQ(o.model, "/models/Wan2.1-T2V-1.3B");
  EXPECT_EQ(o.attention, "hybrid");
  EXPECT_EQ(o.full_blocks, 8);
  EXPECT_DOUBLE_EQ(o.lr, 2e-5);
  EXPECT_DOUBLE_EQ(o.weight_decay, 1e-3);
  EXPECT_DOUBLE_EQ(o.beta1, 0.9);
  EXPECT_DOUBLE_EQ(o.beta2, 0.999);
  EXPECT_DOUBLE_EQ(o.eps, 1e-15);  // a number: YAML 1.2 (PyYAML would have read the string "1e-15")
  EXPECT_EQ(o.batch, 1);
  // osp's own names in YAML, as in JSON
  const TrainOptions p = train_options("attention: full\nsteps: 10\nlr: 3e-4\nkeep_attention: true\n");
  EXPECT_EQ(p.attention, "full");
  EXPECT_EQ(p.steps, 10);
  EXPECT_DOUBLE_EQ(p.lr, 3e-4);
  EXPECT_TRUE(p.keep_attention);
}

// The reference's Wan2.1 (full attention) training configs: context parallelism is Ulysses.
TEST(ReferenceConfig, Wan21TrainingYaml) {
  const TrainOptions o = train_options(R"(model_name: "wan_t2v"
seed: 1024
output_dir: "output/t2v"
fsdp_size: 8
cp_size: 2
use_context_parallel: True
save_interval: 5
model_config:
  pretrained_model_dir_or_checkpoint: "/models/Wan2.1-T2V-1.3B/"
optimizer_config:
  lr: 0.00002
  weight_decay: 0
)");
  EXPECT_EQ(o.sp, "ulysses");
  EXPECT_EQ(o.sp_size, 2);
  EXPECT_EQ(o.attention, "full");  // no skiparse_model_type: Wan2.1's full attention
  EXPECT_EQ(o.model, "/models/Wan2.1-T2V-1.3B/");
  EXPECT_EQ(o.save_every, 5);
  EXPECT_TRUE(o.shard_weights);
  const TrainOptions one = train_options("cp_size: 1\nuse_context_parallel: True\n");
  EXPECT_EQ(one.sp, "none");  // one rank per group: no sequence parallelism
  // a lora_config section makes it LoRA fine-tuning
  const TrainOptions l = train_options("lora_config:\n  rank: 16\n  alpha: 32\n  target_modules: [self_attn.q, ffn.0]\n");
  EXPECT_EQ(l.lora_rank, 16);
  EXPECT_DOUBLE_EQ(l.lora_alpha, 32.0);
  EXPECT_EQ(l.lora_targets, "self_attn.q,ffn.0");
}

TEST(ReferenceConfig, ValuesOspCannotHonourAreErrors) {
  const std::pair<const char*, const char*> cases[] = {
      {"init_max_grad_norm: 0.5\n", "'init_max_grad_norm' 0.5: osp's adaptive clipping"},
      {"gradient_checkpointing: False\n", "'gradient_checkpointing' false: osp checkpoints"},
      {"weight_dtype: fp32\n", "'weight_dtype' \"fp32\": osp computes in bf16"},
      {"use_sequence_parallel: True\n", "'use_sequence_parallel' true"},
      {"scheduler_config:\n  scheduler_name: ddpm\n", "'scheduler_config.scheduler_name' \"ddpm\""},
      {"model_config:\n  sparse_ratio: 4\n", "'model_config.sparse_ratio' 4: osp's Skiparse-2D trains with P = 2"},
      {"optimizer_config:\n  momentum: 0.9\n", "'optimizer_config.momentum' 0.9: not an AdamW setting"},
      {"output_dir: /a\nout: /b\n", "'output_dir' sets 'out', which the config also sets"},
      {"trainng_iteration: 5\n", "unknown setting 'trainng_iteration'"},
  };
  for (const auto& [yaml, want] : cases) {
    const std::string e = train_error(yaml);
    EXPECT_NE(e.find(want), std::string::npos) << "for:\n" << yaml << "got: " << e;
    EXPECT_NE(e.find("run.yaml"), std::string::npos) << e;
  }
}

TEST(ReferenceConfig, RlYamlInOspNextLayout) {
  const char* yaml = R"(seed: 7
output_dir: "/runs/rl"
num_epochs: 1000
gradient_accumulation_steps: 1
ema_decay: 0.9999
model_config:
  num_layers: 40
  pretrained_model_dir_or_checkpoint: "/models/osp-14b"
optimizer_config:
  lr: 0.00002
  weight_decay: 0
lora_config:
  rank: 32
  alpha: 64
  target_modules:
    - "self_attn.q"
    - "cross_attn.o"
rl_config:
  prompt_file: "/data/train.txt"
  eval_prompt_file: "/data/eval.txt"
  height: 720
  width: 1280
  num_frames: 81
  sde_steps: 10
  num_inference_steps: 25
  kl_beta: 0.004
  num_batches_per_epoch: 4
  num_image_per_prompt: 4
  sample_batch_size: 2
  train_batch_size: 2
  reward_fn:
    videoalign: 1.0
)";
  RlOptions o;
  o.apply_json(io::parse_yaml(yaml, "rl.yaml").dump(), "rl.yaml");
  EXPECT_EQ(o.seed, 7u);
  EXPECT_EQ(o.out, "/runs/rl");
  EXPECT_EQ(o.model, "/models/osp-14b");
  EXPECT_DOUBLE_EQ(o.lr, 2e-5);
  EXPECT_DOUBLE_EQ(o.weight_decay, 0.0);
  EXPECT_EQ(o.lora_rank, 32);
  EXPECT_DOUBLE_EQ(o.lora_alpha, 64.0);
  EXPECT_EQ(o.lora_targets, "self_attn.q,cross_attn.o");
  EXPECT_EQ(o.prompts, "/data/train.txt");
  EXPECT_EQ(o.eval_prompts, "/data/eval.txt");
  EXPECT_EQ(o.size, "1280x720");
  EXPECT_EQ(o.frames, 81);
  EXPECT_EQ(o.sde_steps, 10);
  EXPECT_EQ(o.steps, 25);
  EXPECT_DOUBLE_EQ(o.kl_beta, 0.004);
  EXPECT_EQ(o.group, 4);
  EXPECT_EQ(o.train_batch, 2);
  EXPECT_TRUE(o.rewards.empty()) << "VideoAlign is not osp's: the rewards come from --reward";
  // an RL section in a training config is refused
  EXPECT_NE(train_error("rl_config:\n  sde_steps: 10\n").find("an RL config: give it to osp rl"), std::string::npos);
}
