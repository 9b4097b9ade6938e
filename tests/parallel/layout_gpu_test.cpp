// make_single_device on CUDA: the layout moves (scatter, token↔group switch, crop) are exact
// gathers, so they must equal the CPU layouts bitwise; RoPE tables are the same; the hybrid
// self-attention through the layouts (bf16, padding as per-row lengths) matches the CPU fp32
// result within the bf16 bound. SKIPs without a GPU.
#include <gtest/gtest.h>

#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/ops/ops.h"
#include "ssp_stack.h"
#include "test_util.h"

using namespace osp;
using K = sparse::BlockKind;

TEST(LayoutGpu, SingleDeviceLayoutsMatchTheCpu) {
  OSP_REQUIRE_GPU();
  const sparse::Grid g{2, 7, 9};  // needs Skiparse padding (8 × 12)
  const int H = 2, D = 64;
  const int64_t B = 2, N = g.numel(), C = H * D;
  auto plan_cpu = test::make_plan(g, {K::Full, K::Token, K::Group, K::Full}, 2, H, D);
  auto plan_gpu = plan_cpu;
  plan_gpu.device = Device::cuda(0);
  auto cpu = parallel::make_single_device(), gpu = parallel::make_single_device();
  cpu->setup(plan_cpu);
  gpu->setup(plan_gpu);
  const Tensor x = test::randn_tensor({B, N, C}, 5);
  Tensor xc = cpu->scatter_input(x.clone()), xg = gpu->scatter_input(x.to(Device::cuda(0)));
  for (int i = 0; i < 4; ++i) {
    if (i > 0) {
      xc = cpu->enter_block(i, xc);
      xg = gpu->enter_block(i, xg);
    }
    ASSERT_EQ(xg.device(), Device::cuda(0));
    EXPECT_EQ(max_abs_diff(xg, xc), 0.0) << "layout of block " << i;
    EXPECT_EQ(max_abs_diff(gpu->rope_table(i), cpu->rope_table(i)), 0.0) << "rope " << i;
    // Self-attention in this block's layout: CPU f32 vs CUDA bf16.
    const int64_t n = xc.size(1);
    Tensor q = test::randn_tensor({B, n, H, D}, 10 + i), k = test::randn_tensor({B, n, H, D}, 20 + i),
           v = test::randn_tensor({B, n, H, D}, 30 + i);
    Tensor oc = Tensor::empty({B, n, H, D}, DType::F32);
    cpu->self_attention(i, q, k, v, oc);
    auto bf = [](const Tensor& t) { return t.to(DType::BF16).to(Device::cuda(0)); };
    Tensor og = Tensor::empty({B, n, H, D}, DType::BF16, Device::cuda(0));
    gpu->self_attention(i, bf(q), bf(k), bf(v), og);
    EXPECT_LT(relative_error(og, oc), 2e-2) << "attention of block " << i;
  }
  const Tensor yc = cpu->gather_output(xc), yg = gpu->gather_output(xg);
  EXPECT_EQ(max_abs_diff(yg, yc), 0.0);
  EXPECT_EQ(max_abs_diff(yc, x), 0.0);  // the layouts are a pure round trip
}

// make_ssp over the single-rank communicator on CUDA runs every device path of the SSP code
// (exchange gathers + the all-to-all copy, Ulysses pack/unpack for B = 2, the output gather)
// without NCCL: layouts bitwise equal to the CPU, attention within the bf16 bound.
TEST(LayoutGpu, SspDevicePathsMatchTheCpu) {
  OSP_REQUIRE_GPU();
  const sparse::Grid g{2, 7, 9};
  const int H = 2, D = 128;
  const int64_t B = 2, N = g.numel(), C = H * D;
  auto plan_cpu = test::make_plan(g, {K::Full, K::Token, K::Group, K::Full}, 2, H, D);
  auto plan_gpu = plan_cpu;
  plan_gpu.device = Device::cuda(0);
  std::shared_ptr<parallel::Communicator> c1 = parallel::make_single_communicator(),
                                      c2 = parallel::make_single_communicator();
  auto cpu = parallel::make_ssp(c1), gpu = parallel::make_ssp(c2);
  cpu->setup(plan_cpu);
  gpu->setup(plan_gpu);
  const Tensor x = test::randn_tensor({B, N, C}, 6);
  Tensor xc = cpu->scatter_input(x), xg = gpu->scatter_input(x.to(Device::cuda(0)));
  for (int i = 0; i < 4; ++i) {
    if (i > 0) {
      xc = cpu->enter_block(i, xc);
      xg = gpu->enter_block(i, xg);
      EXPECT_EQ(max_abs_diff(gpu->enter_block_backward(i, xg), cpu->enter_block_backward(i, xc)), 0.0);
    }
    EXPECT_EQ(max_abs_diff(xg, xc), 0.0) << "layout of block " << i;
    EXPECT_EQ(max_abs_diff(gpu->rope_table(i), cpu->rope_table(i)), 0.0) << "rope " << i;
    const int64_t n = xc.size(1);
    Tensor q = test::randn_tensor({B, n, H, D}, 40 + i), k = test::randn_tensor({B, n, H, D}, 50 + i),
           v = test::randn_tensor({B, n, H, D}, 60 + i);
    Tensor oc = Tensor::empty({B, n, H, D}, DType::F32);
    cpu->self_attention(i, q, k, v, oc);
    auto bf = [](const Tensor& t) { return t.to(DType::BF16).to(Device::cuda(0)); };
    Tensor og = Tensor::empty({B, n, H, D}, DType::BF16, Device::cuda(0));
    gpu->self_attention(i, bf(q), bf(k), bf(v), og);
    EXPECT_LT(relative_error(og, oc), 2e-2) << "attention of block " << i;
  }
  EXPECT_EQ(max_abs_diff(gpu->gather_output(xg), cpu->gather_output(xc)), 0.0);
  EXPECT_EQ(max_abs_diff(gpu->scatter_input_backward(gpu->scatter_input(x.to(Device::cuda(0)))),
                         cpu->scatter_input_backward(cpu->scatter_input(x))),
            0.0);
}
