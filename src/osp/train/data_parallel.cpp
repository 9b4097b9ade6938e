// Gradient reduction for sequence- and data-parallel training (train/data_parallel.h).
#include "osp/train/data_parallel.h"

#include <algorithm>

#include "osp/ops/ops.h"

namespace osp::train {

ParallelGroups make_parallel_groups(std::shared_ptr<parallel::Communicator> world, int sp_size) {
  OSP_CHECK(world != nullptr, "make_parallel_groups: null communicator");
  const int W = world->size(), w = world->rank();
  OSP_CHECK(sp_size >= 1 && W % sp_size == 0, "make_parallel_groups: ", W,
            " ranks do not split into sequence-parallel groups of ", sp_size,
            " (ranks = SP × DP; --dp must be ranks / SP)");
  ParallelGroups g;
  g.world = world;
  g.sp = std::shared_ptr<parallel::Communicator>(world->split(w / sp_size, w % sp_size));
  g.dp = std::shared_ptr<parallel::Communicator>(world->split(w % sp_size, w / sp_size));
  return g;
}

BatchSlice dp_batch_slice(int64_t global_batch, int dp_rank, int dp_size, int accum_steps,
                          int micro) {
  OSP_CHECK(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size, "dp_batch_slice: rank ", dp_rank,
            " of ", dp_size);
  OSP_CHECK(accum_steps >= 1 && micro >= 0 && micro < accum_steps,
            "dp_batch_slice: micro-step ", micro, " of ", accum_steps);
  const int64_t parts = int64_t(dp_size) * accum_steps;
  OSP_CHECK(global_batch >= parts && global_batch % parts == 0, "the global batch of ",
            global_batch, " samples does not split into ", dp_size, " data-parallel ranks × ",
            accum_steps, " accumulation steps of equal micro-batches (need a multiple of ", parts,
            ")");
  const int64_t per = global_batch / parts;
  return {(int64_t(dp_rank) * accum_steps + micro) * per, per};
}

bool dit_sp_replicated(const std::string& name) {
  return name.rfind("patch_embedding.", 0) == 0;
}

GradientReducer::GradientReducer(ParamTable params, ParallelGroups groups, GradReduceOptions opt)
    : params_(std::move(params)), groups_(std::move(groups)), opt_(std::move(opt)) {
  OSP_CHECK(opt_.bucket_bytes >= sizeof(float), "GradientReducer: bucket_bytes must be >= 4");
  Device dev;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamRef& p = params_[i];
    OSP_CHECK(p.grad && p.grad->defined() && p.grad->dtype() == DType::F32 &&
                  p.grad->is_contiguous(),
              "GradientReducer: parameter '", p.name, "' has no contiguous F32 gradient");
    if (i == 0) dev = p.grad->device();
    OSP_CHECK(p.grad->device() == dev, "GradientReducer: gradients on several devices ('",
              p.name, "' on ", p.grad->device().name(), ")");
    all_params_.push_back(i);
    if (!(opt_.sp_replicated && opt_.sp_replicated(p.name))) sp_params_.push_back(i);
  }
  sp_buckets_ = plan(sp_params_);
  dp_buckets_ = plan(all_params_);
}

std::vector<GradientReducer::Bucket> GradientReducer::plan(const std::vector<size_t>& which) const {
  const int64_t cap = int64_t(opt_.bucket_bytes / sizeof(float));
  std::vector<Bucket> out;
  Bucket cur;
  for (size_t k = 0; k < which.size(); ++k) {
    const int64_t n = params_[which[k]].grad->numel();
    if (cur.last > cur.first && cur.numel + n > cap) {
      out.push_back(cur);
      cur = Bucket{k, k, 0};
    }
    if (cur.last == cur.first) cur.first = k;
    cur.last = k + 1;
    cur.numel += n;
  }
  if (cur.last > cur.first) out.push_back(cur);
  return out;
}

void GradientReducer::check_same_table(parallel::Communicator& comm, const char* group) {
  if (comm.size() == 1) return;
  // (count, Σ numel mod 2^20, Σ numel div 2^20, name hash mod 2^22): exact in F32
  uint64_t total = 0, h = 1469598103934665603ull;
  for (const ParamRef& p : params_) {
    total += uint64_t(p.grad->numel());
    for (char c : p.name) h = (h ^ uint64_t(uint8_t(c))) * 1099511628211ull;
    h = (h ^ uint64_t(p.grad->numel())) * 1099511628211ull;
  }
  const std::vector<float> mine{float(params_.size()), float(total % (1u << 20)),
                                float(total >> 20), float(h % (1u << 22))};
  Tensor send = Tensor::from_vector(mine, {4}).to(params_.empty() ? Device::cpu()
                                                                    : params_[0].grad->device());
  Tensor all = Tensor::empty({4 * int64_t(comm.size())}, DType::F32, send.device());
  comm.all_gather(send, all);
  const std::vector<float> v = all.to_float_vector();
  for (int r = 0; r < comm.size(); ++r)
    for (int j = 0; j < 4; ++j)
      OSP_CHECK(v[size_t(r * 4 + j)] == mine[size_t(j)], "GradientReducer: rank ", r, " of the ",
                group, " group holds a different parameter table (count, sizes or names) than rank ",
                comm.rank());
}

void GradientReducer::run(parallel::Communicator& comm, const std::vector<size_t>& which,
                          const std::vector<Bucket>& buckets, float scale) {
  if (comm.size() == 1 && scale == 1.f) return;
  for (const Bucket& b : buckets) {
    if (b.numel == 0) continue;
    const Device dev = params_[which[b.first]].grad->device();
    if (!buffer_.defined() || buffer_.numel() < b.numel || buffer_.device() != dev)
      buffer_ = Tensor::empty({b.numel}, DType::F32, dev);
    Tensor buf = buffer_.slice(0, 0, b.numel);
    int64_t off = 0;
    for (size_t k = b.first; k < b.last; ++k) {
      const Tensor& g = *params_[which[k]].grad;
      Tensor dst = buf.slice(0, off, off + g.numel());
      dst.copy_from(g.view({g.numel()}));
      off += g.numel();
    }
    if (comm.size() > 1) comm.all_reduce(buf);
    if (scale != 1.f) ops::axpby(scale, buf, 0.f, buf, buf);
    off = 0;
    for (size_t k = b.first; k < b.last; ++k) {
      Tensor& g = *params_[which[k]].grad;
      Tensor gv = g.view({g.numel()});
      gv.copy_from(buf.slice(0, off, off + g.numel()));
      off += g.numel();
    }
  }
}

void GradientReducer::reduce(int accum_steps) {
  OSP_CHECK(accum_steps >= 1, "GradientReducer::reduce: accum_steps must be >= 1, got ",
            accum_steps);
  if (!checked_) {
    if (groups_.sp) check_same_table(*groups_.sp, "sequence-parallel");
    if (groups_.dp) check_same_table(*groups_.dp, "data-parallel");
    checked_ = true;
  }
  if (groups_.sp && groups_.sp->size() > 1) run(*groups_.sp, sp_params_, sp_buckets_, 1.f);
  const float scale = float(1.0 / (double(groups_.dp_size()) * accum_steps));
  if (groups_.dp) {
    run(*groups_.dp, all_params_, dp_buckets_, scale);
  } else if (scale != 1.f) {
    auto single = parallel::make_single_communicator();
    run(*single, all_params_, dp_buckets_, scale);
  }
}

void reduce_sp_gradients(ParamTable& params, parallel::Communicator& sp, const GradReduceOptions& opt) {
  ParallelGroups g;
  g.sp = std::shared_ptr<parallel::Communicator>(&sp, [](parallel::Communicator*) {});
  GradientReducer(params, g, opt).reduce(1);
}

void average_dp_gradients(ParamTable& params, parallel::Communicator& dp, const GradReduceOptions& opt) {
  ParallelGroups g;
  g.dp = std::shared_ptr<parallel::Communicator>(&dp, [](parallel::Communicator*) {});
  GradientReducer(params, g, opt).reduce(1);
}

}  // namespace osp::train
