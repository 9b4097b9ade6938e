// DiT training on CUDA against golden_train.safetensors: the bf16 forward with tapes and the CUDA
// backward ops (cuBLASLt linear backward, cuDNN SDPA backward, norm/RoPE/modulation kernels) give
// the reference loss, v and every stored gradient (parameters, x_σ, context) within the bf16
// bound of issue 13 (3e-2 relative), in the modes full and hybrid (Skiparse with padding), with
// activation checkpointing on and off, with the attention kept for the recompute and with the FFN in row chunks. The attention key-bias gradients (softmax-shift
// cancellation, see golden_train.h) are held to 6e-2: measured 1.7–3.1e-2 on an H200 while every
// other gradient stays under 3e-2. Skipped visibly without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/ops/backward.h"
#include "osp/ops/ops.h"
#ifdef OSP_HAVE_CUDA
#include "osp/ops/cuda/cuda_backward.h"
#endif
#include "golden_train.h"
#include "test_util.h"

using namespace osp;
using model::DiT;

namespace {

// One rectified-flow step: x_σ, v and the loss on the host in fp32, the model on the GPU.
test::TrainStepResult flow_step_cuda(DiT& m, parallel::SequenceParallel& sp,
                                     const test::TrainCaseInputs& in) {
  const float s = in.sigma;
  Tensor xs = Tensor::empty(in.x0.shape(), DType::F32);
  Tensor target = Tensor::empty(in.x0.shape(), DType::F32);
  ops::axpby(s, in.noise, 1.f - s, in.x0, xs);
  ops::axpby(1.f, in.noise, -1.f, in.x0, target);
  test::TrainStepResult r;
  r.v = m.forward_train(xs, {1000.f * s}, in.context, sp).to(Device::cpu());
  Tensor diff = Tensor::empty(xs.shape(), DType::F32);
  ops::axpby(1.f, r.v, -1.f, target, diff);
  double acc = 0;
  for (float d : diff.to_float_vector()) acc += double(d) * d;
  const double numel = double(diff.numel());
  r.loss = acc / numel;
  Tensor dv = Tensor::empty(xs.shape(), DType::F32);
  ops::axpby(float(2.0 / numel), diff, 0.f, diff, dv);
  m.backward(dv.to(Device::cuda(0)), sp, &r.dx_sigma, &r.dcontext);
  return r;
}

void run_golden_cuda(const std::string& c, const std::string& mode, bool checkpointing,
                     bool keep_attention = false, int ffn_chunks = 0) {
  OSP_REQUIRE_GPU();
  DiT m = test::golden_train_model(mode, checkpointing, Device::cuda(0));
  m.set_keep_attention(keep_attention);
  m.set_ffn_chunks(ffn_chunks);
  auto sp = parallel::make_single_device();
  const auto r = flow_step_cuda(m, *sp, test::golden_train_inputs(c));
  test::expect_matches_golden_train(m, r, c, mode, 3e-2, 6e-2);
}

// Two CUDA steps with the same bits: loss, v, dL/dx_sigma and every parameter gradient.
void expect_same_step_cuda(DiT& a, const test::TrainStepResult& ra, DiT& b, const test::TrainStepResult& rb) {
  EXPECT_EQ(ra.loss, rb.loss);
  test::expect_same_bits(ra.v, rb.v, "v");
  test::expect_same_bits(ra.dx_sigma.to(Device::cpu()), rb.dx_sigma.to(Device::cpu()), "grad x_sigma");
  const auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    test::expect_same_bits(pa[i].grad->to(Device::cpu()), pb[i].grad->to(Device::cpu()), pa[i].name.c_str());
}

// Two fresh models of `mode` (checkpointing on), one step each on case `c`: the same bits.
void expect_repeatable_step_cuda(const std::string& c, const std::string& mode) {
  const auto in = test::golden_train_inputs(c);
  DiT a = test::golden_train_model(mode, true, Device::cuda(0));
  DiT b = test::golden_train_model(mode, true, Device::cuda(0));
  auto sp = parallel::make_single_device();
  const auto ra = flow_step_cuda(a, *sp, in);
  const auto rb = flow_step_cuda(b, *sp, in);
  expect_same_step_cuda(a, ra, b, rb);
}

}  // namespace

TEST(DiTTrainGoldenGpu, TrainAFull) { run_golden_cuda("trainA", "full", true); }
TEST(DiTTrainGoldenGpu, TrainAHybridWithPadding) { run_golden_cuda("trainA", "hybrid", true); }
TEST(DiTTrainGoldenGpu, TrainBFull) { run_golden_cuda("trainB", "full", true); }
TEST(DiTTrainGoldenGpu, TrainBHybridNoCheckpointing) { run_golden_cuda("trainB", "hybrid", false); }

// --keep-attention on CUDA: the recompute reuses the forward's cuDNN attention output and
// log-sum-exp; the fused SDPA forward is deterministic, so the step has the same bits as with the
// attention recomputed (and matches the golden file like every other mode).
TEST(DiTTrainGoldenGpu, TrainAHybridKeptAttentionSameBits) {
  OSP_REQUIRE_GPU();
  run_golden_cuda("trainA", "hybrid", true, true);
  const auto in = test::golden_train_inputs("trainA");
  DiT ref = test::golden_train_model("hybrid", true, Device::cuda(0));
  DiT kept = test::golden_train_model("hybrid", true, Device::cuda(0));
  kept.set_keep_attention(true);
  auto sp = parallel::make_single_device();
  const auto ra = flow_step_cuda(ref, *sp, in);
  const auto rb = flow_step_cuda(kept, *sp, in);
  expect_same_step_cuda(ref, ra, kept, rb);
}

// --ffn-chunks on CUDA: the FFN's tape in row chunks (bf16 chunk buffers, the backward recomputing
// fc1 + GELU per chunk) matches the golden file at the same bound, with checkpointing on and off,
// and stays within bf16 summation-order rounding of the unchunked step (the chunks' weight
// gradients are summed; the rows themselves see the same GEMMs).
TEST(DiTTrainGoldenGpu, FfnRowChunks) {
  OSP_REQUIRE_GPU();
  run_golden_cuda("trainA", "hybrid", true, false, 3);
  run_golden_cuda("trainB", "full", false, false, 4);
  const auto in = test::golden_train_inputs("trainA");
  DiT ref = test::golden_train_model("full", true, Device::cuda(0));
  DiT ch = test::golden_train_model("full", true, Device::cuda(0));
  ch.set_ffn_chunks(3);
  auto sp = parallel::make_single_device();
  const auto ra = flow_step_cuda(ref, *sp, in);
  const auto rb = flow_step_cuda(ch, *sp, in);
  EXPECT_NEAR(rb.loss, ra.loss, 1e-3 * std::abs(ra.loss));
  EXPECT_LE(relative_error(rb.dx_sigma.to(Device::cpu()), ra.dx_sigma.to(Device::cpu())), 1e-2);
  const auto pa = ref.parameters(), pb = ch.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_LE(relative_error(pb[i].grad->to(Device::cpu()), pa[i].grad->to(Device::cpu())), 1e-2) << pa[i].name;
}

// --offload-checkpoints on CUDA: every block's input goes to pinned host memory on the copy stream
// during the forward and comes back during the backward while the previous block works. The copies
// are ordered against the compute by events only, so a missing wait would show as a wrong block
// input: the step must have the same bits as with the inputs on the device, twice in a row (the
// second step's copies out overwrite host buffers the first step's copies in read) and with the
// attention kept, and match the golden file.
TEST(DiTTrainGoldenGpu, OffloadedBlockInputsSameBits) {
  OSP_REQUIRE_GPU();
  for (const bool keep : {false, true}) {
    SCOPED_TRACE(keep ? "attention kept" : "attention recomputed");
    const auto in = test::golden_train_inputs("trainA");
    DiT ref = test::golden_train_model("hybrid", true, Device::cuda(0));
    DiT off = test::golden_train_model("hybrid", true, Device::cuda(0));
    ref.set_keep_attention(keep), off.set_keep_attention(keep);
    off.set_offload_block_inputs(true);
    auto sp = parallel::make_single_device();
    for (int step = 0; step < 2; ++step) {
      ref.zero_grad(), off.zero_grad();
      const auto ra = flow_step_cuda(ref, *sp, in);
      const auto rb = flow_step_cuda(off, *sp, in);
      if (step == 0) test::expect_matches_golden_train(off, rb, "trainA", "hybrid", 3e-2, 6e-2);
      expect_same_step_cuda(ref, ra, off, rb);
    }
  }
}

#ifdef OSP_HAVE_CUDA
// Training on the own attention kernels alone (AttnPath::Own, as OSP_ATTENTION=flash sets it: the
// mma.sync forward with statistics and the tensor-core backward, no cuDNN): the golden gradients
// at the same bound, hybrid (Skiparse packs with padding) and full, and the same bits on a second
// identical step — the own backward adds no atomics.
TEST(DiTTrainGoldenGpu, OwnAttentionKernels) {
  OSP_REQUIRE_GPU();
  struct PathScope {
    PathScope() { ops::cuda::set_attention_train_path(ops::cuda::AttnPath::Own); }
    ~PathScope() { ops::cuda::set_attention_train_path(ops::cuda::AttnPath::Auto); }
  } own;
  run_golden_cuda("trainA", "hybrid", true);
  EXPECT_STREQ(ops::cuda::last_attention_forward_lse_path(), "own");
  EXPECT_STREQ(ops::cuda::last_attention_backward_path(), "own");
  run_golden_cuda("trainB", "full", false);
  expect_repeatable_step_cuda("trainA", "hybrid");
}

// Deterministic training (ops::set_deterministic_backward, `osp train --deterministic`): the
// backward on the own kernel while the forward keeps the auto choice (not the own mma.sync one);
// the golden gradients at the same bound and the same bits on a second identical step.
TEST(DiTTrainGoldenGpu, DeterministicBackward) {
  OSP_REQUIRE_GPU();
  const ops::DeterministicBackwardScope det(true);
  run_golden_cuda("trainA", "hybrid", true);
  EXPECT_STRNE(ops::cuda::last_attention_forward_lse_path(), "own");
  EXPECT_STREQ(ops::cuda::last_attention_backward_path(), "own");
  run_golden_cuda("trainB", "full", true);
  expect_repeatable_step_cuda("trainB", "full");
}
#endif
