// golden_train.safetensors (gradients of the rectified-flow loss through the reference DiT, fp32
// with float64 attention) shared by the DiT training tests: config, block kinds, weights, the
// per-case inputs, models bound for training in the file's three modes, and the comparison of a
// step's loss / v / gradients against the stored ones.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "osp/parallel/sequence_parallel.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/ops/ops.h"
#include "osp/sparse/skiparse.h"
#include "test_util.h"

namespace osp::test {

struct GoldenTrain {
  io::SafetensorsFile file;
  model::DiTConfig cfg;
  std::vector<sparse::BlockKind> hybrid_kinds;  // metadata block_kinds
  int P = 2;
  std::map<std::string, Tensor> weights;  // "weights.<wan name>"

  Tensor get(const std::string& name) const { return file.get(name); }
  double scalar(const std::string& name) const { return file.get(name).reshape({-1}).item({0}); }
  bool has(const std::string& name) const {
    for (const auto& n : file.names())
      if (n == name) return true;
    return false;
  }
};

inline const GoldenTrain& golden_train() {
  static GoldenTrain* g = [] {
    auto* r = new GoldenTrain;
    r->file = io::SafetensorsFile::open(golden("golden_train.safetensors"));
    const auto& md = r->file.metadata();
    r->cfg = model::DiTConfig::from_json(md.at("config"));
    r->P = std::stoi(md.at("sparse_ratio"));
    for (const auto& k : nlohmann::json::parse(md.at("block_kinds"))) {
      const std::string s = k.get<std::string>();
      r->hybrid_kinds.push_back(s == "full"    ? sparse::BlockKind::Full
                                : s == "token" ? sparse::BlockKind::Token
                                               : sparse::BlockKind::Group);
    }
    for (const auto& name : r->file.names())
      if (name.rfind("weights.", 0) == 0) r->weights[name] = r->file.get(name);
    return r;
  }();
  return *g;
}

// A DiT bound for training in one of the file's modes: "full", "hybrid", "hybrid_qat".
inline model::DiT golden_train_model(const std::string& mode, bool checkpointing = true,
                                     Device device = Device::cpu()) {
  const GoldenTrain& g = golden_train();
  model::DiTOptions opt;
  opt.device = device;
  opt.train = true;
  opt.activation_checkpointing = checkpointing;
  if (mode == "hybrid_qat") opt.quant = model::DiTQuant::HiF8;
  model::DiT m = model::DiT::bind(g.cfg, g.weights, opt, "weights.");
  if (mode != "full") m.set_block_kinds(g.hybrid_kinds, g.P);
  return m;
}

struct TrainCaseInputs {
  Tensor x0, noise, context;
  float sigma = 0;
};
inline TrainCaseInputs golden_train_inputs(const std::string& c) {
  const GoldenTrain& g = golden_train();
  return {g.get(c + ".x0"), g.get(c + ".noise"), g.get(c + ".context"),
          float(g.scalar(c + ".sigma"))};
}

// What one training step produced.
struct TrainStepResult {
  double loss = 0;
  Tensor v, dx_sigma, dcontext;
};

// One rectified-flow step through DiT::forward_train / backward on the case's inputs (the loss
// of train/flow_matching.h written out, so these tests need only the model library). Parameter
// gradients accumulate: call m.zero_grad() first for those of this step alone.
inline TrainStepResult golden_flow_step(model::DiT& m, parallel::SequenceParallel& sp,
                                        const TrainCaseInputs& in) {
  const float s = in.sigma;
  Tensor xs = Tensor::empty(in.x0.shape(), DType::F32), target = Tensor::empty(in.x0.shape(), DType::F32);
  ops::axpby(s, in.noise, 1.f - s, in.x0, xs);
  ops::axpby(1.f, in.noise, -1.f, in.x0, target);
  TrainStepResult r;
  r.v = m.forward_train(xs, {1000.f * s}, in.context, sp);
  Tensor diff = Tensor::empty(xs.shape(), DType::F32);
  ops::axpby(1.f, r.v, -1.f, target, diff);
  double acc = 0;
  for (float d : diff.to_float_vector()) acc += double(d) * d;
  const double numel = double(diff.numel());
  r.loss = acc / numel;
  Tensor dv = Tensor::empty(xs.shape(), DType::F32);
  ops::axpby(float(2.0 / numel), diff, 0.f, diff, dv);
  m.backward(dv, sp, &r.dx_sigma, &r.dcontext);
  return r;
}

// Compares a step of `model` on <c>.<mode> with every stored tensor: loss, v, grad.x_sigma,
// grad.context and grad.<parameter> (all of those the file stores). Returns the worst relative
// error of the gradients (‖got − want‖ / ‖want‖) and checks each against `tol` — except the
// attention key biases (`*.k.bias`) when `key_bias_tol` > 0: softmax is invariant to a shift of
// every logit of a query, so a key bias gets gradient only through the q/k RMS norm, and that
// small gradient is a sum of large, cancelling terms (bf16 rounding of dK shows up at ~3 %).
inline double expect_matches_golden_train(model::DiT& m, const TrainStepResult& r,
                                          const std::string& c, const std::string& mode,
                                          double tol, double key_bias_tol = 0) {
  const GoldenTrain& g = golden_train();
  const std::string pre = c + "." + mode + ".";
  const double want_loss = g.scalar(pre + "loss");
  const double loss_err = std::abs(r.loss - want_loss) / std::abs(want_loss);
  EXPECT_LT(loss_err, tol) << pre << "loss: got " << r.loss << ", want " << want_loss;
  const double v_err = relative_error(r.v, g.get(pre + "v"));
  EXPECT_LT(v_err, tol) << pre << "v";
  std::map<std::string, const Tensor*> grads;
  for (const ParamRef& p : m.parameters()) grads[p.name] = p.grad;
  double worst = 0, worst_other = 0;  // worst_other: excluding the key biases (key_bias_tol)
  std::string worst_name;
  int compared = 0;
  const std::string gp = pre + "grad.";
  for (const auto& name : g.file.names()) {
    if (name.rfind(gp, 0) != 0) continue;
    const std::string what = name.substr(gp.size());
    const Tensor want = g.get(name);
    Tensor got;
    if (what == "x_sigma") {
      got = r.dx_sigma;
    } else if (what == "context") {
      got = r.dcontext;
    } else {
      auto it = grads.find(what);
      if (it == grads.end()) {
        ADD_FAILURE() << name << ": the model has no parameter " << what;
        continue;
      }
      got = *it->second;
    }
    if (!got.defined() || got.numel() != want.numel()) {
      ADD_FAILURE() << name << ": got " << (got.defined() ? got.desc() : "nothing")
                    << ", want " << want.desc();
      continue;
    }
    const double err = relative_error(got, want);
    const bool key_bias = key_bias_tol > 0 && what.size() > 7 &&
                          what.compare(what.size() - 7, 7, ".k.bias") == 0;
    EXPECT_LT(err, key_bias ? key_bias_tol : tol) << name;
    if (err > worst) worst = err, worst_name = what;
    if (!key_bias && err > worst_other) worst_other = err;
    ++compared;
  }
  std::printf("[ info     ] %s %s: loss %.9g (rel err %.2g), v %.2g, %d gradients, worst %.3g (%s)"
              "%s%.3g\n",
              c.c_str(), mode.c_str(), r.loss, loss_err, v_err, compared, worst,
              worst_name.c_str(), key_bias_tol > 0 ? ", worst without key biases " : "",
              key_bias_tol > 0 ? worst_other : 0.0);
  EXPECT_GE(compared, 8) << pre << ": too few stored gradients found";
  return worst;
}

}  // namespace osp::test
