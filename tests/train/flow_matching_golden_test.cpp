// train/flow_matching: the rectified-flow loss and its backward through the DiT against
// golden_train.safetensors (loss, v, dL/dx_σ, dL/dcontext, parameter gradients), batching (the
// loss is the mean over the whole batch), the generic forward_backward, and input errors.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/golden_train.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/ops.h"
#include "osp/train/flow_matching.h"
#include "test_util.h"

using namespace osp;
using model::DiT;

namespace {

std::map<std::string, Tensor> grads_of(DiT& m) {
  std::map<std::string, Tensor> g;
  for (const ParamRef& p : m.parameters()) g[p.name] = p.grad->clone();
  return g;
}

void flow_case(const std::string& c, const std::string& mode) {
  DiT m = test::golden_train_model(mode);
  auto sp = parallel::make_single_device();
  const auto in = test::golden_train_inputs(c);
  test::TrainStepResult r;
  train::FlowGrads extra{&r.dx_sigma, &r.dcontext};
  // unbatched inputs ([C, F, H, W], [L, text_dim]) as the golden stores them
  r.loss = train::flow_matching_loss_backward(m, *sp, in.x0, in.noise, {in.sigma}, in.context,
                                              extra, &r.v);
  EXPECT_EQ(r.v.shape(), in.x0.shape());
  EXPECT_EQ(r.dx_sigma.shape(), in.x0.shape());
  EXPECT_EQ(r.dcontext.shape(), in.context.shape());
  test::expect_matches_golden_train(m, r, c, mode, 1e-4);
}

}  // namespace

TEST(FlowMatchingGolden, TrainAHybrid) { flow_case("trainA", "hybrid"); }
TEST(FlowMatchingGolden, TrainBFull) { flow_case("trainB", "full"); }

TEST(FlowMatchingGolden, BatchLossIsTheMeanOverEveryElement) {
  // Two samples (trainB's x0/noise with two sigmas and two contexts): the batch loss and
  // gradients are the means of the single-sample ones.
  const auto in = test::golden_train_inputs("trainB");
  const float s0 = in.sigma, s1 = 0.31f;
  Tensor ctx1 = in.context.slice(0, 0, 6).clone();  // a shorter context for sample 1
  auto sp = parallel::make_single_device();
  DiT m = test::golden_train_model("hybrid");
  Tensor dx0, dx1, dc0, dc1;
  const double l0 = train::flow_matching_loss_backward(m, *sp, in.x0, in.noise, {s0}, in.context,
                                                       {&dx0, &dc0});
  auto g0 = grads_of(m);
  m.zero_grad();
  Tensor n1 = in.x0.clone();  // another noise for sample 1: x0 itself (any tensor will do)
  const double l1 =
      train::flow_matching_loss_backward(m, *sp, in.noise, n1, {s1}, ctx1, {&dx1, &dc1});
  auto g1 = grads_of(m);
  m.zero_grad();

  const Shape s5{2, in.x0.size(0), in.x0.size(1), in.x0.size(2), in.x0.size(3)};
  Tensor xb = Tensor::empty(s5, DType::F32), nb = Tensor::empty(s5, DType::F32);
  xb.select(0, 0).copy_from(in.x0);
  xb.select(0, 1).copy_from(in.noise);
  nb.select(0, 0).copy_from(in.noise);
  nb.select(0, 1).copy_from(n1);
  Tensor cb = Tensor::zeros({2, in.context.size(0), in.context.size(1)}, DType::F32);
  cb.select(0, 0).copy_from(in.context);
  cb.select(0, 1).slice(0, 0, 6).copy_from(ctx1);  // zero rows = the model's own padding
  Tensor dxb, dcb, vb;
  const double lb =
      train::flow_matching_loss_backward(m, *sp, xb, nb, {s0, s1}, cb, {&dxb, &dcb}, &vb);
  EXPECT_NEAR(lb, 0.5 * (l0 + l1), 1e-6 * lb);
  EXPECT_EQ(vb.shape(), s5);
  auto half = [](const Tensor& t) {
    Tensor o = Tensor::empty(t.shape(), DType::F32);
    ops::axpby(0.5f, t, 0.f, t, o);
    return o;
  };
  EXPECT_LT(relative_error(dxb.select(0, 0), half(dx0)), 1e-5);
  EXPECT_LT(relative_error(dxb.select(0, 1), half(dx1)), 1e-5);
  EXPECT_LT(relative_error(dcb.select(0, 0), half(dc0)), 1e-5);
  EXPECT_LT(relative_error(dcb.select(0, 1).slice(0, 0, 6), half(dc1)), 1e-5);
  const auto gb = grads_of(m);
  for (const auto& [name, g] : gb) {
    Tensor want = Tensor::empty(g.shape(), DType::F32);
    ops::axpby(0.5f, g0.at(name), 0.5f, g1.at(name), want);
    EXPECT_LT(relative_error(g, want), 1e-5) << name;
  }
}

TEST(FlowMatchingGolden, ForwardBackwardWithTheFlowGradientEqualsTheFlowStep) {
  const auto in = test::golden_train_inputs("trainB");
  auto sp = parallel::make_single_device();
  DiT a = test::golden_train_model("full"), b = test::golden_train_model("full");
  Tensor va;
  train::flow_matching_loss_backward(a, *sp, in.x0, in.noise, {in.sigma}, in.context, {}, &va);
  Tensor xs = Tensor::empty(in.x0.shape(), DType::F32), target = Tensor::empty(in.x0.shape(), DType::F32);
  ops::axpby(in.sigma, in.noise, 1.f - in.sigma, in.x0, xs);
  ops::axpby(1.f, in.noise, -1.f, in.x0, target);
  Tensor dx;
  Tensor vb = train::forward_backward(
      b, *sp, xs, {1000.f * in.sigma}, in.context,
      [&](const Tensor& v) {
        Tensor d = Tensor::empty(v.shape(), DType::F32);
        ops::axpby(2.f / float(v.numel()), v, -2.f / float(v.numel()), target, d);
        return d;
      },
      {&dx, nullptr});
  test::expect_same_bits(vb, va, "v");
  EXPECT_LT(relative_error(dx, test::golden_train().get("trainB.full.grad.x_sigma")), 1e-4);
  const auto pa = a.parameters(), pb = b.parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_LT(relative_error(*pb[i].grad, *pa[i].grad), 1e-6) << pa[i].name;
}

TEST(FlowMatchingGolden, BadInputsGiveClearErrors) {
  const auto in = test::golden_train_inputs("trainB");
  auto sp = parallel::make_single_device();
  DiT m = test::golden_train_model("full");
  EXPECT_THROW(train::flow_matching_loss_backward(m, *sp, in.x0, in.noise, {0.5f, 0.5f}, in.context),
               Error);  // two sigmas, one sample
  EXPECT_THROW(train::flow_matching_loss_backward(m, *sp, in.x0, in.noise, {1.5f}, in.context),
               Error);  // sigma outside [0, 1]
  EXPECT_THROW(train::flow_matching_loss_backward(m, *sp, in.x0, in.x0.slice(2, 0, 4).clone(),
                                                  {0.5f}, in.context),
               Error);  // noise shape
  EXPECT_THROW(train::forward_backward(
                   m, *sp, in.x0, {500.f}, in.context,
                   [](const Tensor& v) { return Tensor::zeros({3}, DType::F32); }),
               Error);  // dL/dv of the wrong shape
  DiT inference = DiT::bind(test::golden_train().cfg, test::golden_train().weights, {}, "weights.");
  EXPECT_THROW(train::flow_matching_loss_backward(inference, *sp, in.x0, in.noise, {0.5f},
                                                  in.context),
               Error);  // not bound for training
}
