// The DiT as a TrainModel (train/trainer.h): binds a DiT for training (DiTOptions::train, F32 on
// the CPU, bf16 compute copies on CUDA, activation checkpointing) on one device and computes the
// rectified-flow loss and gradients with train/flow_matching.h.
//
// Attention: "full" trains every block dense (the config written with checkpoints says
// skiparse "full"); "hybrid" trains the OSP-Next dual-end Skiparse layout — the config's own
// layout when it declares one, otherwise (a Wan2.1 model: sparse fine-tuning, osp-next-spec §7)
// dual_end with P = 2 and 8 full blocks as OSP-Next's fine-tuning configs have (4 at each end;
// min(8, ⌊L/2⌋ rounded down to a multiple of 4), at least 4, for a small model; --full-blocks N
// chooses); checkpoints then declare that layout. (`osp generate --attention hybrid` on an
// UNTRAINED Wan2.1 model keeps more full blocks — ⌊L/2⌋ rounded to a multiple of 4 — for quality.)
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/train/data_parallel.h"
#include "osp/train/trainer.h"

namespace osp::train {

struct DiTTrainOptions {
  std::string attention = "full";  // full | hybrid
  std::string quant = "none";      // none | hif8 (quantization-aware training)
  Device device = Device::cpu();
  bool activation_checkpointing = true;
  bool keep_attention = false;  // DiTOptions::keep_attention
  int ffn_chunks = 0;           // DiTOptions::ffn_chunks
  bool offload_block_inputs = false;  // DiTOptions::offload_block_inputs
  int full_blocks = 0;          // config_for_attention's full_blocks
  // LoRA fine-tuning (rank > 0): the base weights are frozen (no gradients, no optimizer state),
  // un-merged adapters (model/lora.h: PEFT's gaussian init from lora_seed, B = 0) on the
  // lora_targets linears of every block are the trained parameters.
  int64_t lora_rank = 0;
  double lora_alpha = 64;
  std::vector<std::string> lora_targets;  // empty: model::default_lora_targets()
  uint64_t lora_seed = 0;
  // Several ranks: `world` (MPI on the CPU, NCCL on GPUs; null = one rank), split into
  // sequence-parallel groups of sp_size consecutive ranks running `sp` (none needs sp_size 1)
  // and data-parallel groups across them (train/data_parallel.h).
  std::shared_ptr<parallel::Communicator> world;
  std::string sp = "none";  // none | ssp | ulysses
  int sp_size = 1;
};

class DiTTrainModel : public TrainModel {
 public:
  // `weights` under Wan names (any float dtype/device).
  DiTTrainModel(model::DiTConfig cfg, const std::map<std::string, Tensor>& weights, const DiTTrainOptions& opt);

  // The trained parameters: every DiT weight, or with LoRA the adapters' A and B.
  ParamTable parameters() override { return opt_.lora_rank > 0 ? dit_.lora_parameters() : dit_.parameters(); }
  double lora_alpha() const override { return opt_.lora_rank > 0 ? opt_.lora_alpha : 0.0; }
  void zero_grad() override { dit_.zero_grad(); }
  double loss_backward(const Tensor& x0, const Tensor& noise, const std::vector<float>& sigma,
                       const Tensor& context) override;
  std::string config_json() const override;
  int64_t tokens(const Shape& latent_shape) const override;
  Device device() const override { return opt_.device; }
  int dp_rank() const override { return groups_.dp_rank(); }
  int dp_size() const override { return groups_.dp_size(); }
  void reduce_gradients(int accum_steps) override;
  double dp_mean(double x) override;
  bool any_rank(bool flag) override;
  bool writes_outputs() const override { return !opt_.world || opt_.world->rank() == 0; }
  const ParallelGroups* parallel_groups() const override { return &groups_; }
  // One group per block: the parameters named blocks.<i>.* (contiguous in the table).
  std::vector<std::pair<size_t, size_t>> gradient_groups() override;
  void set_gradient_hooks(std::function<void(size_t)> before, std::function<void(size_t)> after) override;
  // Around every block's forward (DiT::set_block_forward_hooks; weight sharding).
  bool set_forward_hooks(std::function<void(size_t)> before, std::function<void(size_t)> after) override;
  void set_profiling(bool on) override { dit_.set_profiling(on); }
  void set_keep_attention(bool on) { dit_.set_keep_attention(on); }
  void profile_reset() override { dit_.profile_reset(); }
  std::string profile_table() override { return dit_.profile_report().table(); }

  model::DiT& dit() { return dit_; }
  const model::DiTConfig& config() const { return cfg_; }

 private:
  model::DiTConfig cfg_;
  DiTTrainOptions opt_;
  model::DiT dit_;
  std::unique_ptr<parallel::SequenceParallel> sp_;
  ParallelGroups groups_;
  std::unique_ptr<GradientReducer> reducer_;
};

// Random initial weights for --from-scratch, under Wan names (F32, CPU), from Philox(seed):
// matrices and convolutions N(0, 1/fan_in) (fan_in = numel / rows), the modulation tables
// N(0, 1/dim) (Wan's randn/√dim), norm weights 1, biases 0.
std::map<std::string, Tensor> random_dit_weights(const model::DiTConfig& cfg, uint64_t seed);

// The config adjusted to the attention choice (see the header comment). full_blocks: hybrid on a
// full-attention config only, 0 = OSP-Next's 8 (fewer on a model under 16 layers).
model::DiTConfig config_for_attention(model::DiTConfig cfg, const std::string& attention, int full_blocks = 0);

}  // namespace osp::train
