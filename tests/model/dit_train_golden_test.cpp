// DiT training (forward with tapes + backward, HiF8 QAT) against golden_train.safetensors: the
// rectified-flow loss and every stored gradient (parameters, x_σ, context) in the modes full,
// hybrid (Skiparse-2D, with padding in trainA) and hybrid_qat; activation checkpointing on and
// off give the same bits; a float64-free finite-difference check of the whole model on a tiny
// random config; the parameter table; training numerics leave inference unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/ops/ops.h"
#include "golden_train.h"
#include "test_util.h"

using namespace osp;
using model::DiT;
using sparse::BlockKind;

namespace {

double run_golden(const std::string& c, const std::string& mode, double tol) {
  DiT m = test::golden_train_model(mode);
  auto sp = parallel::make_single_device();
  const auto r = test::golden_flow_step(m, *sp, test::golden_train_inputs(c));
  return test::expect_matches_golden_train(m, r, c, mode, tol);
}

// Two training steps that must have the same bits: loss, v, dL/dx_σ, dL/dcontext, every gradient.
void expect_same_step(DiT& a, const test::TrainStepResult& ra, DiT& b, const test::TrainStepResult& rb,
                      const std::string& mode) {
  SCOPED_TRACE(mode);
  EXPECT_EQ(ra.loss, rb.loss);
  test::expect_same_bits(ra.v, rb.v, "v");
  test::expect_same_bits(ra.dx_sigma, rb.dx_sigma, "grad x_sigma");
  test::expect_same_bits(ra.dcontext, rb.dcontext, "grad context");
  const auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) test::expect_same_bits(*pa[i].grad, *pb[i].grad, pa[i].name.c_str());
}

}  // namespace

TEST(DiTTrainGolden, TrainAFull) { run_golden("trainA", "full", 1e-4); }
TEST(DiTTrainGolden, TrainAHybridWithPadding) { run_golden("trainA", "hybrid", 1e-4); }
TEST(DiTTrainGolden, TrainBFull) { run_golden("trainB", "full", 1e-4); }
TEST(DiTTrainGolden, TrainBHybrid) { run_golden("trainB", "hybrid", 1e-4); }

// HiF8 QAT. The per-tensor scaled HiF8 forward is chaotic at fp32 resolution: an element within
// an ulp of a rounding boundary (or an amax that moves by an ulp) rounds the other way, which
// moves the next tensors' values and scales, and so on — scaling x_σ by (1 + 1e-6) already moves
// trainA's v by ~2 % (trainB's by ~1 % at 1e-5). Two correct fp32 implementations (the golden's
// PyTorch fp32 with float64 attention, ours with OpenBLAS and fp32 attention, 1.5e-7 apart
// before quantization) therefore land ~2–3 % apart, not within the README's 1e-3. What is
// checked: the golden step lies inside the spread of our own QAT step under x_σ·(1 ± 1e-5)
// (every gradient within 3× that spread or 2e-3, the loss likewise), and QAT moves v away from
// the fp32 model by the golden's amount (same sites, same strength).
TEST(DiTTrainGolden, HybridQatWithinTheChaosOfHiF8Rounding) {
  const test::GoldenTrain& g = test::golden_train();
  for (const std::string c : {"trainA", "trainB"}) {
    const std::string pre = c + ".hybrid_qat.";
    DiT m = test::golden_train_model("hybrid_qat");
    auto sp = parallel::make_single_device();
    // golden name → our tensor, for the stored gradients
    auto snapshot = [&](const test::TrainStepResult& r) {
      std::map<std::string, Tensor> out;
      std::map<std::string, const Tensor*> grads;
      for (const ParamRef& p : m.parameters()) grads[p.name] = p.grad;
      for (const auto& name : g.file.names()) {
        if (name.rfind(pre + "grad.", 0) != 0) continue;
        const std::string what = name.substr(pre.size() + 5);
        out[name] = what == "x_sigma"   ? r.dx_sigma.clone()
                    : what == "context" ? r.dcontext.clone()
                                        : grads.at(what)->clone();
      }
      out[pre + "v"] = r.v.clone();
      return out;
    };
    auto in = test::golden_train_inputs(c);
    const auto r0 = test::golden_flow_step(m, *sp, in);
    const auto ours = snapshot(r0);
    std::map<std::string, double> spread;
    double loss_spread = 0;
    for (float eps : {1e-5f, -1e-5f, 2e-5f, -2e-5f}) {
      m.zero_grad();
      test::TrainCaseInputs pin = in;
      pin.x0 = in.x0.clone(), pin.noise = in.noise.clone();
      ops::axpby(1.f + eps, in.x0, 0.f, in.x0, pin.x0);
      ops::axpby(1.f + eps, in.noise, 0.f, in.noise, pin.noise);
      const auto r = test::golden_flow_step(m, *sp, pin);
      loss_spread = std::max(loss_spread, std::abs(r.loss - r0.loss) / std::abs(r0.loss));
      for (const auto& [name, t] : snapshot(r))
        spread[name] = std::max(spread[name], relative_error(t, ours.at(name)));
    }
    const double want_loss = g.scalar(pre + "loss");
    const double loss_err = std::abs(r0.loss - want_loss) / std::abs(want_loss);
    // The loss is one number: its own spread over four perturbations is a rough estimate, so
    // the bound is the larger of 5e-3 and 3× that spread (the golden's QAT moves the loss from
    // the fp32 one by ~3e-3).
    EXPECT_LT(loss_err, std::max(5e-3, 3 * loss_spread)) << pre << "loss";
    int within_strict = 0;
    double worst_ratio = 0;
    for (const auto& [name, t] : ours) {
      const double err = relative_error(t, g.get(name));
      const double bound = std::max(2e-3, 3 * spread.at(name));
      EXPECT_LT(err, bound) << name << " (own spread " << spread.at(name) << ")";
      within_strict += err < 2e-3;
      worst_ratio = std::max(worst_ratio, err / std::max(spread.at(name), 1e-12));
    }
    std::printf("[ info     ] %s hybrid_qat: loss rel err %.2g (own spread %.2g); %zu tensors, "
                "%d within 2e-3; worst golden error / own spread %.2f\n",
                c.c_str(), loss_err, loss_spread, ours.size(), within_strict, worst_ratio);
    EXPECT_GE(ours.size(), 9u);
    // QAT's distance from the fp32 model is the golden's
    const double dev_ours = relative_error(r0.v, g.get(c + ".hybrid.v"));
    const double dev_gold = relative_error(g.get(pre + "v"), g.get(c + ".hybrid.v"));
    EXPECT_NEAR(dev_ours, dev_gold, 0.15 * dev_gold) << c;
  }
}

TEST(DiTTrainGolden, CheckpointingOnAndOffGiveTheSameBits) {
  for (const std::string mode : {"hybrid", "hybrid_qat"}) {
    auto sp = parallel::make_single_device();
    const auto in = test::golden_train_inputs("trainA");
    DiT on = test::golden_train_model(mode, true), off = test::golden_train_model(mode, false);
    const auto ra = test::golden_flow_step(on, *sp, in);
    const auto rb = test::golden_flow_step(off, *sp, in);
    expect_same_step(on, ra, off, rb, mode);
  }
}

TEST(DiTTrainGolden, GradientsAccumulateAndZeroGrad) {
  DiT m = test::golden_train_model("hybrid");
  auto sp = parallel::make_single_device();
  const auto in = test::golden_train_inputs("trainB");
  test::golden_flow_step(m, *sp, in);
  std::vector<Tensor> once;
  for (const ParamRef& p : m.parameters()) once.push_back(p.grad->clone());
  test::golden_flow_step(m, *sp, in);  // accumulates: twice the gradient
  const auto ps = m.parameters();
  for (size_t i = 0; i < ps.size(); ++i) {
    Tensor twice = Tensor::empty(once[i].shape(), DType::F32);
    ops::axpby(2.f, once[i], 0.f, once[i], twice);
    EXPECT_LT(relative_error(*ps[i].grad, twice), 1e-6) << ps[i].name;
  }
  m.zero_grad();
  for (const ParamRef& p : m.parameters())
    for (float v : p.grad->to_float_vector()) ASSERT_EQ(v, 0.f) << p.name;
}

TEST(DiTTrainGolden, ParameterTableHasEveryWanTensor) {
  DiT m = test::golden_train_model("full");
  const auto shapes = DiT::expected_shapes(test::golden_train().cfg);
  const auto ps = m.parameters();
  EXPECT_EQ(ps.size(), shapes.size());
  for (const ParamRef& p : ps) {
    auto it = shapes.find(p.name);
    ASSERT_NE(it, shapes.end()) << p.name;
    EXPECT_EQ(p.ckpt_shape, it->second) << p.name;
    ASSERT_NE(p.value, nullptr);
    ASSERT_NE(p.grad, nullptr);
    EXPECT_EQ(p.value->numel(), shape_numel(p.ckpt_shape)) << p.name;
    EXPECT_EQ(p.grad->numel(), p.value->numel()) << p.name;
    EXPECT_EQ(p.grad->dtype(), DType::F32) << p.name;
    EXPECT_TRUE(p.value->is_contiguous()) << p.name;
    // the compute copy holds the checkpoint's values
    EXPECT_EQ(max_abs_diff(*p.value, test::golden_train().weights.at("weights." + p.name)), 0.0)
        << p.name;
  }
}

TEST(DiTTrainGolden, TrainingForwardMatchesInferenceAndUsesCurrentWeights) {
  // forward() and forward_train() share one path; in HiF8 training Q(W, 15) follows the weight.
  for (const std::string mode : {"hybrid", "hybrid_qat"}) {
    DiT m = test::golden_train_model(mode);
    auto sp = parallel::make_single_device();
    const auto in = test::golden_train_inputs("trainB");
    Tensor xs = Tensor::empty(in.x0.shape(), DType::F32);
    ops::axpby(in.sigma, in.noise, 1.f - in.sigma, in.x0, xs);
    const std::vector<float> t{1000.f * in.sigma};
    Tensor vi = m.forward(xs, t, in.context, *sp);
    Tensor vt = m.forward_train(xs, t, in.context, *sp);
    test::expect_same_bits(vt, vi, mode.c_str());  // on the CPU the unfused ops give the same bits
    if (mode == "hybrid")
      EXPECT_LT(relative_error(vi, test::golden_train().get("trainB.hybrid.v")), 1e-5);
    // change a block weight: the next forward sees it (no stale quantized copy)
    for (const ParamRef& p : m.parameters())
      if (p.name == "blocks.1.ffn.0.weight") {
        Tensor w = *p.value;
        ops::axpby(1.5f, w, 0.f, w, w);
      }
    Tensor v2 = m.forward(xs, t, in.context, *sp);
    EXPECT_GT(relative_error(v2, vi), 1e-3) << mode;
  }
}

TEST(DiTTrainGolden, BackwardNeedsARecordedForward) {
  DiT m = test::golden_train_model("full");
  auto sp = parallel::make_single_device();
  EXPECT_THROW(m.backward(Tensor::zeros({16, 1, 8, 8}, DType::F32), *sp), Error);
  DiT inf = DiT::bind(test::golden_train().cfg, test::golden_train().weights, {}, "weights.");
  const auto in = test::golden_train_inputs("trainB");
  EXPECT_THROW(inf.forward_train(in.x0, {500.f}, in.context, *sp), Error);
  EXPECT_THROW(inf.zero_grad(), Error);
  m.forward_train(in.x0, {500.f}, in.context, *sp);
  EXPECT_THROW(m.backward(Tensor::zeros({16, 1, 8, 9}, DType::F32), *sp), Error);  // wrong shape
}

namespace {
// The single-device layout behind a forwarding layer: without `train` it lacks the training hooks
// (as a layout that does not support training would); with it, it counts the attention cores the
// training forwards run.
struct Forwarding : parallel::SequenceParallel {
  std::unique_ptr<parallel::SequenceParallel> s = parallel::make_single_device();
  bool train = false;
  int train_cores = 0;  // self_attention_train calls
  const char* name() const override { return "forwarding"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void setup(const parallel::ForwardPlan& p) override { s->setup(p); }
  Tensor scatter_input(const Tensor& x) override { return s->scatter_input(x); }
  Tensor enter_block(int i, const Tensor& x) override { return s->enter_block(i, x); }
  const Tensor& rope_table(int i) override { return s->rope_table(i); }
  void self_attention(int i, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                      const parallel::AttentionFn& fn) override {
    s->self_attention(i, q, k, v, out, fn);
  }
  void self_attention_train(int i, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                            Tensor& lse) override {
    if (!train) return parallel::SequenceParallel::self_attention_train(i, q, k, v, out, lse);
    ++train_cores;
    s->self_attention_train(i, q, k, v, out, lse);
  }
  void self_attention_backward(int i, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor& dq,
                               Tensor& dk, Tensor& dv) override {
    if (!train)
      return parallel::SequenceParallel::self_attention_backward(i, q, k, v, out, lse, dout, dq, dk, dv);
    s->self_attention_backward(i, q, k, v, out, lse, dout, dq, dk, dv);
  }
  Tensor gather_output(const Tensor& x) override { return s->gather_output(x); }
  Tensor enter_block_backward(int i, const Tensor& g) override {
    return s->enter_block_backward(i, g);
  }
  Tensor scatter_input_backward(const Tensor& g) override { return s->scatter_input_backward(g); }
  Tensor gather_output_backward(const Tensor& g) override { return s->gather_output_backward(g); }
};
}  // namespace

// A sequence-parallel layer without the training hooks (as SSP and Ulysses are today): the
// training forward says so instead of computing something wrong.
TEST(DiTTrainGolden, LayoutsWithoutTrainingSupportSaySo) {
  Forwarding sp;
  DiT m = test::golden_train_model("hybrid");
  const auto in = test::golden_train_inputs("trainB");
  m.forward(in.x0, {500.f}, in.context, sp);  // inference works
  try {
    m.forward_train(in.x0, {500.f}, in.context, sp);
    FAIL() << "training ran on a layout without training support";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not supported yet"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("forwarding"), std::string::npos) << e.what();
  }
}

// keep_attention: the checkpoint recompute takes each block's self-attention output and
// log-sum-exp from the forward instead of running the core again — half the attention cores per
// step, the same bits (loss, v, every gradient); twice in a row (the kept results of one step
// must not leak into the next).
TEST(DiTTrainGolden, KeptAttentionSkipsTheRecomputedCoresWithTheSameBits) {
  for (const std::string mode : {"full", "hybrid", "hybrid_qat"}) {
    const auto in = test::golden_train_inputs("trainA");
    DiT ref = test::golden_train_model(mode), kept = test::golden_train_model(mode);
    kept.set_keep_attention(true);
    Forwarding sa, sb;
    sa.train = sb.train = true;
    for (int step = 0; step < 2; ++step) {
      ref.zero_grad(), kept.zero_grad();
      sa.train_cores = sb.train_cores = 0;
      const auto ra = test::golden_flow_step(ref, sa, in);
      const auto rb = test::golden_flow_step(kept, sb, in);
      const int L = int(test::golden_train().cfg.num_layers);
      EXPECT_EQ(sa.train_cores, 2 * L) << mode << ": forward + recompute";
      EXPECT_EQ(sb.train_cores, L) << mode << ": the forward only";
      expect_same_step(ref, ra, kept, rb, mode);
    }
  }
}

// The training forward releases the forward workspaces (the blocks' activations of the untaped,
// checkpointed forward) at its end: the backward never reads them, and they would otherwise stay
// allocated through it. An inference forward keeps them (the next step reuses them); the step
// after a release is the same as before (loss, every gradient).
TEST(DiTTrainGolden, TrainingForwardReleasesTheWorkspaces) {
  const auto in = test::golden_train_inputs("trainA");
  DiT m = test::golden_train_model("hybrid"), ref = test::golden_train_model("hybrid");
  auto sp = parallel::make_single_device();
  m.forward(in.x0, {500.f}, in.context, *sp);
  EXPECT_GT(m.workspace_bytes(), size_t(0)) << "inference keeps its workspaces";
  m.forward_train(in.x0, {500.f}, in.context, *sp);
  EXPECT_EQ(m.workspace_bytes(), size_t(0));
  m.zero_grad(), ref.zero_grad();
  const auto ra = test::golden_flow_step(ref, *sp, in);
  const auto rb = test::golden_flow_step(m, *sp, in);  // after an inference forward and a release
  expect_same_step(ref, ra, m, rb, "hybrid");
}

// ffn_chunks: the FFN's tape in row chunks (its backward recomputes fc1 + GELU per chunk). The
// golden gradients hold at the same bound, and the step stays within summation-order rounding of
// the unchunked one (the weight gradients are sums over chunks); twice in a row, and with 3 and 4
// chunks (rows not divisible by 3). HiF8 QAT refuses it by name.
TEST(DiTTrainGolden, FfnRowChunksMatchGoldenAndTheUnchunkedStep) {
  for (const std::string c : {"trainA", "trainB"})
    for (const std::string mode : {"full", "hybrid"})
      for (const int chunks : {3, 4}) {
        SCOPED_TRACE(c + " " + mode + " chunks " + std::to_string(chunks));
        const auto in = test::golden_train_inputs(c);
        DiT ref = test::golden_train_model(mode), ch = test::golden_train_model(mode);
        ch.set_ffn_chunks(chunks);
        auto sa = parallel::make_single_device(), sb = parallel::make_single_device();
        for (int step = 0; step < 2; ++step) {
          ref.zero_grad(), ch.zero_grad();
          const auto ra = test::golden_flow_step(ref, *sa, in);
          const auto rb = test::golden_flow_step(ch, *sb, in);
          if (step == 0) test::expect_matches_golden_train(ch, rb, c, mode, 1e-4);
          EXPECT_NEAR(rb.loss, ra.loss, 1e-6 * std::abs(ra.loss));
          EXPECT_LE(relative_error(rb.dx_sigma, ra.dx_sigma), 1e-5);
          EXPECT_LE(relative_error(rb.dcontext, ra.dcontext), 1e-5);
          const auto pa = ref.parameters(), pb = ch.parameters();
          ASSERT_EQ(pa.size(), pb.size());
          for (size_t i = 0; i < pa.size(); ++i)
            EXPECT_LE(relative_error(*pb[i].grad, *pa[i].grad), 1e-5) << pa[i].name;
        }
      }
  DiT qat = test::golden_train_model("hybrid_qat");
  try {
    qat.set_ffn_chunks(2);
    FAIL() << "ffn_chunks accepted with HiF8 QAT";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ffn_chunks needs unquantised training"), std::string::npos) << e.what();
  }
  qat.set_ffn_chunks(1);  // 1 = off: allowed
}

// offload_block_inputs: the checkpointed block inputs go out to (pinned) host memory in the
// forward and come back in the backward through the two staging buffers. The step has the same
// bits (loss, v, every gradient) as with the inputs kept on the device: every mode, with and
// without the attention kept, twice in a row (the host buffers are reused) and after a change of
// the input (trainA → trainB: other buffers' sizes).
TEST(DiTTrainGolden, OffloadedBlockInputsGiveTheSameBits) {
  for (const std::string mode : {"full", "hybrid", "hybrid_qat"})
    for (const bool keep : {false, true}) {
      SCOPED_TRACE(mode + (keep ? " attention kept" : ""));
      DiT ref = test::golden_train_model(mode), off = test::golden_train_model(mode);
      off.set_offload_block_inputs(true);
      ref.set_keep_attention(keep), off.set_keep_attention(keep);
      auto sa = parallel::make_single_device(), sb = parallel::make_single_device();
      for (const std::string c : {"trainA", "trainA", "trainB"}) {
        const auto in = test::golden_train_inputs(c);
        ref.zero_grad(), off.zero_grad();
        const auto ra = test::golden_flow_step(ref, *sa, in);
        const auto rb = test::golden_flow_step(off, *sb, in);
        expect_same_step(ref, ra, off, rb, mode + " " + c);
      }
    }
}

// ---------------------------------------------------------------- finite differences
namespace {

// A tiny random OSP-Next DiT (hybrid full, token, group, full; Skiparse padding on a 6x8 grid).
struct Tiny {
  model::DiTConfig cfg;
  std::map<std::string, Tensor> w;
};
Tiny tiny_model() {
  Tiny t;
  auto& c = t.cfg;
  c.dim = 32, c.ffn_dim = 48, c.num_heads = 2, c.num_layers = 4, c.text_dim = 12, c.text_len = 6;
  c.freq_dim = 16, c.in_dim = 4, c.out_dim = 4;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const auto& [name, shape] : DiT::expected_shapes(c)) {
    Tensor x = Tensor::empty(shape, DType::F32);
    const int64_t fan_in = shape.size() >= 2 ? shape_numel(shape) / shape[0] : 1;
    float scale = shape.size() >= 2 ? 1.f / std::sqrt(float(fan_in)) : 0.2f;
    if (name.find("modulation") != std::string::npos) scale = 0.3f;
    const bool norm = name.find("norm") != std::string::npos && name.find(".weight") != std::string::npos;
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = (norm ? 1.f : 0.f) + scale * nd(rng);
    t.w[name] = x;
  }
  return t;
}

Tensor randn(const Shape& s, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  Tensor x = Tensor::empty(s, DType::F32);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = nd(rng);
  return x;
}

double dot(const Tensor& a, const Tensor& b) {
  const auto va = a.to_float_vector(), vb = b.to_float_vector();
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += double(va[i]) * double(vb[i]);
  return s;
}

}  // namespace

TEST(DiTTrainFiniteDifference, WholeModelDirectionalDerivatives) {
  // L = Σ v·R (R fixed random): dL/dv = R. For a direction U of one tensor θ, the central
  // difference (L(θ + hU) − L(θ − hU)) / 2h (Richardson-extrapolated over h and h/2; fp32
  // forwards) must equal <dL/dθ, U>.
  const Tiny tm = tiny_model();
  model::DiTOptions opt;
  opt.train = true;
  DiT m = DiT::bind(tm.cfg, tm.w, opt);
  m.set_block_kinds({BlockKind::Full, BlockKind::Token, BlockKind::Group, BlockKind::Full}, 2);
  auto sp = parallel::make_single_device();
  Tensor x = randn({1, 4, 2, 12, 16}, 7), ctx = randn({1, 5, 12}, 8);
  const std::vector<float> t{437.f};
  Tensor R = randn({1, 4, 2, 12, 16}, 9);
  Tensor dx, dctx;
  m.forward_train(x, t, ctx, *sp);
  m.backward(R, *sp, &dx, &dctx);
  auto loss = [&]() { return dot(m.forward(x, t, ctx, *sp), R); };
  auto check_dir = [&](const std::string& what, Tensor& theta, const Tensor& grad, const Tensor& U,
                       double tol) {
    const double want = dot(grad, U);
    double tn = 0;
    for (float v : theta.to_float_vector()) tn = std::max(tn, double(std::abs(v)));
    const double h = 6e-3 * std::max(tn, 1e-1);  // relative to the tensor's scale
    Tensor saved = theta.clone();
    auto central = [&](double step) {
      ops::axpby(1.f, saved, float(step), U, theta);
      const double lp = loss();
      ops::axpby(1.f, saved, float(-step), U, theta);
      const double lm = loss();
      theta.copy_from(saved);
      return (lp - lm) / (2.0 * step);
    };
    // Richardson: the h² error term of the central difference cancels
    const double fd = (4.0 * central(h / 2) - central(h)) / 3.0;
    const double err = std::abs(fd - want) / std::max(std::abs(want), 1e-6);
    std::printf("[ info     ] %-43s analytic %+.6e  finite diff %+.6e  rel %.2e\n", what.c_str(),
                want, fd, err);
    EXPECT_LT(err, tol) << what;
  };
  // Two directions per tensor: the gradient itself (the largest directional derivative, so the
  // best signal over fp32 noise: FD must give ‖g‖², a wrong gradient gives less) within 2e-3, and
  // a random one within 2e-2.
  auto check = [&](const std::string& what, Tensor& theta, const Tensor& grad) {
    double gmax = 0;
    for (float v : grad.to_float_vector()) gmax = std::max(gmax, double(std::abs(v)));
    Tensor along = Tensor::empty(grad.shape(), DType::F32);
    ops::axpby(float(1.0 / gmax), grad, 0.f, grad, along);  // max |U| = 1
    check_dir(what + " (along g)", theta, grad, along, 2e-3);
    check_dir(what + " (random)", theta, grad,
              randn(theta.shape(), uint32_t(std::hash<std::string>()(what) & 0xffff), 1.f), 2e-2);
  };
  check("x_sigma", x, dx);
  check("context", ctx, dctx);
  for (const ParamRef& p : m.parameters()) {
    static const std::vector<std::string> pick = {
        "patch_embedding.weight",         "text_embedding.0.weight",
        "time_embedding.0.weight",        "time_projection.1.bias",
        "blocks.0.modulation",            "blocks.1.self_attn.q.weight",
        "blocks.1.self_attn.norm_k.weight", "blocks.2.cross_attn.k.weight",
        "blocks.2.norm3.bias",            "blocks.2.ffn.0.weight",
        "blocks.3.self_attn.v.bias",      "head.modulation",
        "head.head.weight"};
    if (std::find(pick.begin(), pick.end(), p.name) == pick.end()) continue;
    check(p.name, *p.value, *p.grad);
  }
}

// `osp train --profile`: the stage profiler over a training step — the forward's stages, one
// Recompute lap per block (its forward stages are not counted twice) and the backward's stages
// per block kind with one lap per block, the head and embeddings once — leaves the step's bits
// unchanged; the table is per step.
TEST(DiTTrainGolden, ProfiledStepHasEveryBackwardStageAndTheSameBits) {
  using model::ProfKind;
  using model::ProfStage;
  const auto in = test::golden_train_inputs("trainA");
  DiT ref = test::golden_train_model("hybrid"), prof = test::golden_train_model("hybrid");
  ref.set_profiling(false);
  prof.set_profiling(true);
  auto sp = parallel::make_single_device();
  const auto ra = test::golden_flow_step(ref, *sp, in);
  const auto rb = test::golden_flow_step(prof, *sp, in);
  expect_same_step(ref, ra, prof, rb, "profiled");
  const model::ProfileReport r = prof.profile_report();
  EXPECT_EQ(r.forwards, 1);
  EXPECT_EQ(r.backwards, 1);
  int nfull = 0, nsparse = 0;
  for (auto k : prof.block_kinds()) (k == BlockKind::Full ? nfull : nsparse) += 1;
  ASSERT_GT(nfull, 0);
  ASSERT_GT(nsparse, 0);
  auto laps = [&](ProfStage s, ProfKind k) {
    for (const auto& row : r.rows)
      if (row.stage == s && row.kind == k) return row.calls;
    return 0.0;
  };
  for (const ProfStage s : {ProfStage::Recompute, ProfStage::BwdFFN, ProfStage::BwdCrossAttn, ProfStage::BwdOProj,
                            ProfStage::BwdSelfAttn, ProfStage::BwdNormRope, ProfStage::BwdQKV, ProfStage::BwdModNorm,
                            ProfStage::BwdEnterBlock}) {
    EXPECT_EQ(laps(s, ProfKind::Full), nfull) << model::prof_stage_name(s);
    EXPECT_EQ(laps(s, ProfKind::Sparse), nsparse) << model::prof_stage_name(s);
  }
  EXPECT_EQ(laps(ProfStage::BwdHead, ProfKind::None), 1);
  EXPECT_EQ(laps(ProfStage::BwdEmbed, ProfKind::None), 1);
  EXPECT_EQ(laps(ProfStage::QKV, ProfKind::Full), nfull) << "the recompute's stages are not counted";
  double sum = 0;
  for (const auto& row : r.rows) {
    EXPECT_GE(row.ms, 0.0);
    sum += row.ms;
  }
  EXPECT_NEAR(sum, r.total_ms, 1e-9);
  EXPECT_NE(r.table().find("ms/step"), std::string::npos) << r.table();
  EXPECT_NE(r.table().find("bwd_self_attn_krn"), std::string::npos) << r.table();
}
