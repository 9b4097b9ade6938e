// The VAE backward dispatcher: validates shapes, dtypes, devices, aliasing and the null /
// accumulate rules of vae_backward.h, then calls the CPU reference (ops/cpu/vae_backward.cpp)
// or, for CUDA tensors in a CUDA build, ops/cuda/vae_backward.cu.
#include "osp/ops/vae_backward.h"

#include "osp/ops/op_checks.h"

namespace osp::ops {
using namespace detail;
namespace {

void check_in(const Tensor& t, const Tensor& ref, const char* op, const char* what) {
  check_defined(t, op, what);
  OSP_CHECK(t.dtype() == DType::F32, op, ": ", what, " must be f32, got ", t.desc());
  check_device(ref, t, op, what);
  OSP_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous, got ", t.desc());
}

bool run_on_cuda(const Tensor& ref, const char* op) { return on_cuda(ref, op); }

}  // namespace

void conv3d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv3dArgs& a,
                     Tensor* dx, Tensor* dw, Tensor* db) {
  const char* op = "ops::conv3d_backward";
  check_in(x, x, op, "x");
  check_in(w, x, op, "w");
  check_in(dy, x, op, "dy");
  const Shape ys = conv3d_out_shape(x.shape(), w.shape(), a);
  OSP_CHECK(dy.shape() == ys, op, ": dy must have the forward output's shape ", shape_str(ys),
            ", got ", shape_str(dy.shape()));
  check_opt_out(dx, x.shape(), x, op, "dx", /*f32=*/true);
  check_opt_out(dw, w.shape(), x, op, "dw", /*f32=*/true);
  check_opt_out(db, {w.size(0)}, x, op, "db", /*f32=*/true);
  check_outs_no_alias({dx, dw, db}, {{&x, "x"}, {&w, "w"}, {&dy, "dy"}}, op);
  OSP_CHECK(!dx || !dw || dx->storage() != dw->storage(), op, ": dx and dw must not share storage");
  if (run_on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    cuda::conv3d_backward(x, w, dy, a, dx, dw, db);
#endif
    return;
  }
  cpu::conv3d_backward(x, w, dy, a, dx, dw, db);
}

void channel_rms_norm_backward(const Tensor& x, const Tensor& gamma0, bool silu, const Tensor& dy,
                               Tensor& dx, Tensor* dgamma) {
  const char* op = "ops::channel_rms_norm_backward";
  check_in(x, x, op, "x");
  OSP_CHECK(x.dim() >= 2 && x.size(1) > 0, op, ": x must be [N, C, ...], got ", x.desc());
  const int64_t C = x.size(1);
  check_in(gamma0, x, op, "gamma");
  OSP_CHECK(gamma0.numel() == C, op, ": gamma ", gamma0.desc(), " must have ", C, " elements");
  check_in(dy, x, op, "dy");
  check_same_shape(x, dy, op, "dy");
  check_opt_out(&dx, x.shape(), x, op, "dx", /*f32=*/true);
  if (dgamma) {
    OSP_CHECK(dgamma->defined() && dgamma->numel() == C, op, ": dgamma must have ", C,
              " elements, got ", dgamma->desc());
  }
  Tensor dg;
  if (dgamma) dg = dgamma->view({C});
  Tensor* dgp = dgamma ? &dg : nullptr;
  check_opt_out(dgp, {C}, x, op, "dgamma", /*f32=*/true);
  check_outs_no_alias({&dx, dgp}, {{&x, "x"}, {&gamma0, "gamma"}, {&dy, "dy"}}, op);
  const Tensor gamma = gamma0.view({C});
  if (run_on_cuda(x, op)) {
#ifdef OSP_HAVE_CUDA
    cuda::channel_rms_norm_backward(x, gamma, silu, dy, dx, dgp);
#endif
    return;
  }
  cpu::channel_rms_norm_backward(x, gamma, silu, dy, dx, dgp);
}

void upsample_nearest2x_backward(const Tensor& dy, Tensor& dx) {
  const char* op = "ops::upsample_nearest2x_backward";
  check_in(dy, dy, op, "dy");
  OSP_CHECK(dy.dim() == 4 && dy.size(2) % 2 == 0 && dy.size(3) % 2 == 0, op,
            ": dy must be [N, C, 2H, 2W], got ", dy.desc());
  check_opt_out(&dx, {dy.size(0), dy.size(1), dy.size(2) / 2, dy.size(3) / 2}, dy, op, "dx",
                /*f32=*/true);
  check_no_alias(dy, dx, op, "dy");
  if (run_on_cuda(dy, op)) {
#ifdef OSP_HAVE_CUDA
    cuda::upsample_nearest2x_backward(dy, dx);
#endif
    return;
  }
  cpu::upsample_nearest2x_backward(dy, dx);
}

void spatial_attention_backward(const Tensor& qkv, const Tensor& dout, Tensor& dqkv) {
  const char* op = "ops::spatial_attention_backward";
  check_in(qkv, qkv, op, "qkv");
  OSP_CHECK(qkv.dim() == 3 && qkv.size(1) % 3 == 0 && qkv.size(1) > 0 && qkv.size(2) > 0, op,
            ": qkv must be [N, 3C, L], got ", qkv.desc());
  check_in(dout, qkv, op, "dout");
  const Shape os{qkv.size(0), qkv.size(1) / 3, qkv.size(2)};
  OSP_CHECK(dout.shape() == os, op, ": dout must have shape ", shape_str(os), ", got ",
            shape_str(dout.shape()));
  check_opt_out(&dqkv, qkv.shape(), qkv, op, "dqkv", /*f32=*/true);
  check_no_alias(qkv, dqkv, op, "qkv");
  check_no_alias(dout, dqkv, op, "dout");
  if (run_on_cuda(qkv, op)) {
#ifdef OSP_HAVE_CUDA
    cuda::spatial_attention_backward(qkv, dout, dqkv);
#endif
    return;
  }
  cpu::spatial_attention_backward(qkv, dout, dqkv);
}

}  // namespace osp::ops
