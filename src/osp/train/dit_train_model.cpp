#include "osp/train/dit_train_model.h"

#include "osp/model/lora.h"

#include <algorithm>
#include <cmath>

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/core/philox.h"
#include "osp/train/checkpoint.h"
#include "osp/train/flow_matching.h"
#include "osp/train/grad_clip.h"

namespace osp::train {

model::DiTConfig config_for_attention(model::DiTConfig cfg, const std::string& attention, int full_blocks) {
  OSP_CHECK(attention == "full" || attention == "hybrid", "attention must be full or hybrid, got '", attention, "'");
  OSP_CHECK(full_blocks >= 0, "--full-blocks must be >= 0, got ", full_blocks);
  if (attention == "full") {
    OSP_CHECK(full_blocks == 0, "--full-blocks ", full_blocks, " is for --attention hybrid (full attention has no sparse blocks)");
    cfg.skiparse_mode = "full";
    cfg.num_full_blocks = 0;
  } else if (cfg.skiparse_mode == "full") {
    cfg.skiparse_mode = "dual_end";
    cfg.sparse_ratio = 2;
    // OSP-Next's fine-tuning configs: 8 full blocks (4 at each end) for both sizes; a smaller
    // model gets ⌊L/2⌋ rounded down to a multiple of 4, at least 4.
    cfg.num_full_blocks = full_blocks > 0 ? full_blocks : std::max(4, std::min(8, int(cfg.num_layers / 2) / 4 * 4));
    log_info("--attention hybrid on a full-attention config: training the OSP-Next dual-end layout with ",
             cfg.num_full_blocks, " full blocks (P = 2)");
  } else {
    OSP_CHECK(full_blocks == 0 || full_blocks == cfg.num_full_blocks, "--full-blocks ", full_blocks,
              ": this model's config already declares its hybrid layout (", cfg.num_full_blocks,
              " full blocks); a trained layout is not changed");
  }
  cfg.validate();
  return cfg;
}

DiTTrainModel::DiTTrainModel(model::DiTConfig cfg, const std::map<std::string, Tensor>& weights,
                             const DiTTrainOptions& opt)
    : cfg_(config_for_attention(std::move(cfg), opt.attention, opt.full_blocks)), opt_(opt) {
  OSP_CHECK(opt.quant == "none" || opt.quant == "hif8", "quant must be none or hif8, got '", opt.quant, "'");
  model::DiTOptions d;
  d.device = opt.device;
  d.quant = opt.quant == "hif8" ? model::DiTQuant::HiF8 : model::DiTQuant::None;
  d.train = true;
  d.train_base = opt.lora_rank <= 0;
  d.activation_checkpointing = opt.activation_checkpointing;
  d.keep_attention = opt.keep_attention;
  d.ffn_chunks = opt.ffn_chunks;
  d.offload_block_inputs = opt.offload_block_inputs;
  dit_ = model::DiT::bind(cfg_, weights, d);
  dit_.set_block_kinds(cfg_.block_kinds(), cfg_.sparse_ratio);
  if (opt.lora_rank > 0) {
    model::LoraInit li;
    li.rank = opt.lora_rank;
    li.alpha = opt.lora_alpha;
    if (!opt.lora_targets.empty()) li.targets = opt.lora_targets;
    li.seed = opt.lora_seed;
    const model::Lora lora = model::init_lora(model::DiT::expected_shapes(cfg_), li);
    dit_.attach_lora(lora);
    log_info("LoRA fine-tuning: the base DiT is frozen; ", lora.summary());
  }
  OSP_CHECK(opt.sp == "none" || opt.sp == "ssp" || opt.sp == "ulysses", "sp must be none, ssp or ulysses, got '", opt.sp, "'");
  if (!opt.world || opt.world->size() == 1) {
    OSP_CHECK(opt.sp == "none" || !opt.world || opt.world->size() == 1, "internal: sp without ranks");
    sp_ = parallel::make_single_device();
    return;
  }
  const int S = opt.sp == "none" ? 1 : opt.sp_size;
  OSP_CHECK(S >= 1 && opt.world->size() % S == 0, "--sp-size ", S, " must divide the ", opt.world->size(), " ranks");
  OSP_CHECK(opt.sp != "none" || S == 1, "--sp none runs every rank on its own samples (sp size 1)");
  groups_ = make_parallel_groups(opt.world, S);
  if (S == 1)
    sp_ = parallel::make_single_device();
  else
    sp_ = opt.sp == "ssp" ? parallel::make_ssp(groups_.sp) : parallel::make_ulysses(groups_.sp);
  reducer_ = std::make_unique<GradientReducer>(parameters(), groups_);
  log_verbose("training on ", opt.world->size(), " ranks: ", groups_.dp_size(), " data-parallel x ", S,
              " sequence-parallel (", opt.sp, ")");
}

void DiTTrainModel::reduce_gradients(int accum_steps) {
  if (reducer_) {
    reducer_->reduce(accum_steps);
    return;
  }
  if (accum_steps > 1) {
    ParamTable p = parameters();
    scale_grads(p, float(1.0 / accum_steps));
  }
}

std::vector<std::pair<size_t, size_t>> DiTTrainModel::gradient_groups() {
  const ParamTable p = parameters();
  std::vector<std::pair<size_t, size_t>> groups;
  for (int64_t i = 0; i < cfg_.num_layers; ++i) {
    const std::string prefix = str("blocks.", i, ".");
    size_t first = p.size(), last = 0;
    for (size_t k = 0; k < p.size(); ++k)
      if (p[k].name.rfind(prefix, 0) == 0) first = std::min(first, k), last = k + 1;
    OSP_CHECK(first < last, "DiTTrainModel: block ", i, " has no parameters");
    for (size_t k = first; k < last; ++k)
      OSP_CHECK(p[k].name.rfind(prefix, 0) == 0, "DiTTrainModel: the parameters of block ", i,
                " are not contiguous in the table ('", p[k].name, "')");
    groups.push_back({first, last});
  }
  return groups;
}

void DiTTrainModel::set_gradient_hooks(std::function<void(size_t)> before, std::function<void(size_t)> after) {
  if (!before && !after) {
    dit_.set_block_backward_hooks({}, {});
    return;
  }
  dit_.set_block_backward_hooks([before](int i) { if (before) before(size_t(i)); },
                                [after](int i) { if (after) after(size_t(i)); });
}

bool DiTTrainModel::set_forward_hooks(std::function<void(size_t)> before, std::function<void(size_t)> after) {
  if (!before && !after) {
    dit_.set_block_forward_hooks({}, {});
    return true;
  }
  dit_.set_block_forward_hooks([before](int i) { if (before) before(size_t(i)); },
                               [after](int i) { if (after) after(size_t(i)); });
  return true;
}

double DiTTrainModel::dp_mean(double x) {
  if (!groups_.dp || groups_.dp_size() == 1) return x;
  Tensor t = Tensor::from_vector({0.f}, {1}).to(DType::F64);
  t.data<double>()[0] = x;
  t = t.to(groups_.dp->device());
  groups_.dp->all_reduce(t);
  return t.to(Device::cpu()).data<double>()[0] / double(groups_.dp_size());
}

bool DiTTrainModel::any_rank(bool flag) {
  if (!opt_.world || opt_.world->size() == 1) return flag;
  return opt_.world->any(flag);
}

double DiTTrainModel::loss_backward(const Tensor& x0, const Tensor& noise, const std::vector<float>& sigma,
                                    const Tensor& context) {
  return flow_matching_loss_backward(dit_, *sp_, x0, noise, sigma, context);
}

std::string DiTTrainModel::config_json() const { return dit_config_json(cfg_); }

int64_t DiTTrainModel::tokens(const Shape& s) const {
  return (s[1] / cfg_.patch_t) * (s[2] / cfg_.patch_h) * (s[3] / cfg_.patch_w);
}

std::map<std::string, Tensor> random_dit_weights(const model::DiTConfig& cfg, uint64_t seed) {
  std::map<std::string, Tensor> w;
  uint32_t stream = 0;
  for (const auto& [name, shape] : model::DiT::expected_shapes(cfg)) {
    ++stream;
    Tensor t = Tensor::zeros(shape, DType::F32);
    const auto ends_with = [&](const std::string& suf) {
      return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
    };
    if (name.find("modulation") != std::string::npos) {
      t = randn(shape, seed, stream);
      const float s = float(1.0 / std::sqrt(double(cfg.dim)));
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= s;
    } else if (shape.size() >= 2) {
      t = randn(shape, seed, stream);
      const double fan_in = double(t.numel()) / double(shape[0]);
      const float s = float(1.0 / std::sqrt(fan_in));
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= s;
    } else if (ends_with(".weight")) {  // norms
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 1.f;
    }
    w[name] = t;
  }
  return w;
}

}  // namespace osp::train
