// DiT: un-merged LoRA adapters on the block linears (dit.h "LoRA adapters"; the branch's own
// forward/backward is layers::LoraBranch in dit_layers.cpp).
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "osp/model/dit.h"

namespace osp::model {

namespace {
// "blocks.<i>.<suffix>" → (i, suffix); false when the name has another form.
bool split_block_module(const std::string& m, int64_t& i, std::string& suffix) {
  const std::string p = "blocks.";
  if (m.compare(0, p.size(), p) != 0) return false;
  const size_t dot = m.find('.', p.size());
  if (dot == std::string::npos || dot == p.size()) return false;
  const std::string num = m.substr(p.size(), dot - p.size());
  for (char ch : num)
    if (ch < '0' || ch > '9') return false;
  i = std::atoll(num.c_str());
  suffix = m.substr(dot + 1);
  return true;
}
}  // namespace

void DiT::attach_lora(const Lora& lora, double strength) {
  OSP_CHECK(!blocks_.empty(), "DiT::attach_lora: the model has no weights (use DiT::bind)");
  OSP_CHECK(std::isfinite(strength), "DiT::attach_lora: strength must be finite, got ", strength);
  // 1. Resolve and check every adapter first (nothing changes on error).
  std::vector<std::string> problems;
  std::vector<std::pair<layers::Linear*, const LoraAdapter*>> plan;
  for (const auto& [module, a] : lora.adapters) {
    int64_t i = -1;
    std::string suffix;
    layers::Linear* lin = nullptr;
    if (split_block_module(module, i, suffix) && i < int64_t(blocks_.size()))
      for (auto& [name, l] : blocks_[size_t(i)].named_linears())
        if (name == suffix) lin = l;
    const std::string src = a.source.empty() ? module : a.source;
    if (!lin) {
      problems.push_back(str(src, ": '", module, "' is not a block linear of this model (",
                             cfg_.num_layers, " blocks; self_attn/cross_attn q,k,v,o, ffn.0/2)"));
      continue;
    }
    const Tensor& w = lin->w.defined() ? lin->w : lin->wq.codes;
    const int64_t out = w.size(0), in = w.size(1);
    if (!a.A.defined() || !a.B.defined() || a.A.dim() != 2 || a.B.dim() != 2 ||
        a.A.size(0) != a.B.size(1) || a.A.size(0) < 1) {
      problems.push_back(str(src, ": lora_A ", a.A.defined() ? a.A.desc() : "missing",
                             " / lora_B ", a.B.defined() ? a.B.desc() : "missing",
                             " are not [r, in] / [out, r] with one rank r >= 1"));
      continue;
    }
    if (a.A.size(1) != in || a.B.size(0) != out) {
      problems.push_back(str(src, ": adapter [", a.B.size(0), ", ", a.A.size(1), "] (out, in) but ",
                             module, ".weight is [", out, ", ", in,
                             "] (is this LoRA for another model?)"));
      continue;
    }
    if (!(a.alpha > 0) || !std::isfinite(a.alpha)) {
      problems.push_back(str(src, ": alpha must be > 0, got ", a.alpha));
      continue;
    }
    plan.emplace_back(lin, &a);
  }
  if (!problems.empty()) {
    std::ostringstream os;
    os << "DiT::attach_lora: " << problems.size() << " problem(s) with LoRA " << lora.origin << ":";
    for (const auto& p : problems) os << "\n  " << p;
    fail(os.str());
  }
  // 2. Attach.
  graph_.reset();  // a graph's replays would read the replaced adapters
  detach_lora();
  const Device dev = opt_.device;
  for (const auto& [lin, a] : plan) {
    layers::LoraBranch& br = lin->lora;
    br.A = Tensor::empty(a->A.shape(), act_, dev);
    br.A.copy_from(a->A);
    br.B = Tensor::empty(a->B.shape(), act_, dev);
    br.B.copy_from(a->B);
    br.scale = float(strength * a->scale());
    br.enabled = true;
    if (opt_.train) {
      br.gA = Tensor::zeros(a->A.shape(), DType::F32, dev);
      br.gB = Tensor::zeros(a->B.shape(), DType::F32, dev);
    }
  }
  for (const auto& [module, a] : lora.adapters) lora_modules_[module] = a.alpha;
  lora_enabled_ = true;
  lora_strength_ = strength;
}

void DiT::detach_lora() {
  graph_.reset();  // its replays read the adapters being dropped
  for (layers::Block& b : blocks_)
    for (layers::Linear* l : b.linears()) l->lora = layers::LoraBranch{};
  lora_modules_.clear();
  lora_enabled_ = true;
  lora_strength_ = 1.0;
}

void DiT::set_lora_enabled(bool on) {
  lora_enabled_ = on;
  for (layers::Block& b : blocks_)
    for (layers::Linear* l : b.linears()) l->lora.enabled = on;
}

ParamTable DiT::lora_parameters() {
  ParamTable t;
  for (size_t i = 0; i < blocks_.size(); ++i)
    for (auto& [name, l] : blocks_[i].named_linears()) {
      layers::LoraBranch& br = l->lora;
      if (!br.A.defined()) continue;
      const std::string m = str("blocks.", i, ".", name);
      t.push_back(ParamRef{m + ".lora_A.weight", br.A.shape(), &br.A,
                           br.gA.defined() ? &br.gA : nullptr});
      t.push_back(ParamRef{m + ".lora_B.weight", br.B.shape(), &br.B,
                           br.gB.defined() ? &br.gB : nullptr});
    }
  return t;
}

void DiT::zero_lora_grad() {
  for (layers::Block& b : blocks_)
    for (layers::Linear* l : b.linears()) {
      if (l->lora.gA.defined()) l->lora.gA.zero_();
      if (l->lora.gB.defined()) l->lora.gB.zero_();
    }
}

Lora DiT::lora() const {
  Lora out;
  out.origin = "model";
  for (size_t i = 0; i < blocks_.size(); ++i) {
    auto& blk = const_cast<layers::Block&>(blocks_[i]);
    for (auto& [name, l] : blk.named_linears()) {
      const layers::LoraBranch& br = l->lora;
      if (!br.A.defined()) continue;
      const std::string m = str("blocks.", i, ".", name);
      LoraAdapter a;
      a.A = br.A.to(Device::cpu()).to(DType::F32).clone();
      a.B = br.B.to(Device::cpu()).to(DType::F32).clone();
      auto it = lora_modules_.find(m);
      a.alpha = it != lora_modules_.end() ? it->second : double(a.rank());
      a.source = m + ".lora_A.weight";
      out.adapters[m] = a;
    }
  }
  return out;
}

}  // namespace osp::model
