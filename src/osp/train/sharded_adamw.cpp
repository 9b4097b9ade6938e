// AdamW with DP-sharded state (train/sharded_adamw.h).
#include "osp/train/sharded_adamw.h"

#include <algorithm>
#include <cmath>

#include "osp/ops/ops.h"
#include "osp/train/grad_clip.h"

namespace osp::train {

ShardedAdamW::ShardedAdamW(ParamTable params, ParallelGroups groups, const AdamWConfig& cfg,
                           GradReduceOptions opt, ShardGroup over,
                           std::vector<std::pair<size_t, size_t>> grad_groups)
    : params_(std::move(params)), groups_(std::move(groups)), opt_(std::move(opt)),
      groups_of_(std::move(grad_groups)) {
  const bool world = over == ShardGroup::World && groups_.world != nullptr;
  shard_comm_ = world ? groups_.world : groups_.dp;
  if (shard_comm_) shard_size_ = shard_comm_->size(), shard_rank_ = shard_comm_->rank();
  check_param_table(params_, true);
  OSP_CHECK(!params_.empty(), "ShardedAdamW: empty parameter table");
  OSP_CHECK(opt_.bucket_bytes >= sizeof(float), "ShardedAdamW: bucket_bytes must be >= 4");
  const Device dev = params_[0].grad->device();
  for (const ParamRef& p : params_) {
    OSP_CHECK(p.grad->device() == dev, "ShardedAdamW: parameters on several devices");
    offset_.push_back(total_);
    total_ += p.value->numel();
  }
  const int M = shard_size_, r = shard_rank_;
  const int64_t K = std::max<int64_t>(1, int64_t(opt_.bucket_bytes / sizeof(float)) / M);
  // Segments of the flat vector: the gradient-sharding groups and the stretches between them;
  // windows are planned inside each (a window never straddles a group boundary).
  std::vector<std::pair<int64_t, int>> cuts;  // (segment start, its group or −1)
  size_t next = 0;
  for (size_t g = 0; g < groups_of_.size(); ++g) {
    const auto [first, last] = groups_of_[g];
    OSP_CHECK(first >= next && first < last && last <= params_.size(), "ShardedAdamW: gradient group ", g, " [",
              first, ", ", last, ") is empty, overlaps or is out of table order");
    if (first > next) cuts.push_back({offset_[next], -1});
    cuts.push_back({offset_[first], int(g)});
    next = last;
  }
  if (next < params_.size()) cuts.push_back({offset_[next], -1});
  if (cuts.empty()) cuts.push_back({0, -1});  // no groups: one segment, the whole table
  int64_t off = 0, maxw = 0;
  for (size_t c = 0; c < cuts.size(); ++c) {
    const int64_t seg_end = c + 1 < cuts.size() ? cuts[c + 1].first : total_;
    for (int64_t s = cuts[c].first; s < seg_end; s += int64_t(M) * K) {
      Window w;
      w.start = s;
      w.len = std::min<int64_t>(int64_t(M) * K, seg_end - s);
      w.chunk = (w.len + M - 1) / M;
      w.shard_off = off;
      w.group = cuts[c].second;
      off += w.chunk;
      maxw = std::max(maxw, w.chunk * M);
      win_.push_back(w);
    }
  }
  shard_ = Tensor::zeros({off}, DType::F32, dev);
  shard_grad_ = Tensor::zeros({off}, DType::F32, dev);
  buf_ = Tensor::zeros({maxw}, DType::F32, dev);
  for (const Window& w : win_) {
    Tensor b = buf_.slice(0, 0, w.chunk * M);
    b.zero_();
    pack(false, w.start, w.len, b);
    Tensor dst = shard_.slice(0, w.shard_off, w.shard_off + w.chunk);
    dst.copy_from(b.slice(0, int64_t(r) * w.chunk, int64_t(r + 1) * w.chunk));
  }
  shard_table_.push_back(ParamRef{"dp_shard", {off}, &shard_, &shard_grad_});
  adam_ = std::make_unique<AdamW>(shard_table_, cfg);
  adam_->slots().at(0).master = shard_;  // the F32 shard is its own master: one buffer, not two
  for (const ParamRef& p : params_)
    zero_grad_on_pack_.push_back(world && groups_.sp_rank() != 0 && opt_.sp_replicated &&
                                 opt_.sp_replicated(p.name));
  if (!world && groups_.sp && groups_.sp->size() > 1) {
    ParallelGroups sg;
    sg.sp = groups_.sp;
    sp_reducer_ = std::make_unique<GradientReducer>(params_, sg, opt_);
  }
  for (const ParamRef& p : params_) {
    grad_shape_.push_back(p.grad->shape());
    live_grad_ += p.grad->numel();
    value_shape_.push_back(p.value->shape());
    value_dtype_.push_back(p.value->dtype());
    numel_.push_back(p.value->numel());
  }
  resident_.assign(groups_of_.size(), true);
  for (const auto& [first, last] : groups_of_)
    for (size_t k = first; k < last; ++k) live_wbytes_ += int64_t(params_[k].value->nbytes());
  peak_wbytes_ = live_wbytes_;
  if (!groups_of_.empty()) {
    OSP_CHECK(!sp_reducer_, "ShardedAdamW: gradient sharding needs the state sharded over the world "
              "(ShardGroup::World) when there is sequence parallelism");
    int64_t maxc = 1;
    for (const Window& w : win_) maxc = std::max(maxc, w.chunk);
    chunk_buf_ = Tensor::zeros({maxc}, DType::F32, dev);
    for (const auto& [first, last] : groups_of_)
      for (size_t k = first; k < last; ++k) {
        live_grad_ -= params_[k].grad->numel();
        *params_[k].grad = Tensor();
      }
  }
  peak_grad_ = live_grad_;
}

void ShardedAdamW::begin_group(size_t g) {
  OSP_CHECK(g < groups_of_.size(), "ShardedAdamW::begin_group: no gradient group ", g);
  if (new_step_) {
    shard_grad_.zero_();
    new_step_ = false;
  }
  const Device dev = shard_.device();
  for (size_t k = groups_of_[g].first; k < groups_of_[g].second; ++k) {
    Tensor& gr = *params_[k].grad;
    OSP_CHECK(!gr.defined(), "ShardedAdamW::begin_group(", g, "): '", params_[k].name,
              "' already has a gradient (begin_group twice without end_group?)");
    gr = Tensor::zeros(grad_shape_[k], DType::F32, dev);
    live_grad_ += gr.numel();
  }
  peak_grad_ = std::max(peak_grad_, live_grad_);
}

ShardedAdamW::~ShardedAdamW() {
  try {
    finish_pending();
  } catch (...) {  // a failed collective ends the job anyway
  }
}

void ShardedAdamW::finish_pending() {
  if (pending_.empty()) return;
  if (pending_ticket_ >= 0) shard_comm_->wait(pending_ticket_);
  for (InFlight& f : pending_) {
    Tensor mine = shard_grad_.slice(0, f.w->shard_off, f.w->shard_off + f.w->chunk);
    ops::axpby(1.f, f.recv, 1.f, mine, mine);
  }
  pending_.clear();
  pending_ticket_ = -1;
}

void ShardedAdamW::end_group(size_t g) {
  OSP_CHECK(g < groups_of_.size(), "ShardedAdamW::end_group: no gradient group ", g);
  finish_pending();  // the previous group's, which overlapped this group's backward
  const int M = shard_size_;
  for (const Window& w : win_) {
    if (w.group != int(g)) continue;
    if (M == 1) {
      reduce_window(w, true);
      continue;
    }
    InFlight f{&w, Tensor::empty({w.chunk * M}, DType::F32, shard_.device()),
               Tensor::empty({w.chunk}, DType::F32, shard_.device())};
    pack_window_grads(w, f.send);
    pending_ticket_ = shard_comm_->reduce_scatter_start(f.send, f.recv);
    pending_.push_back(std::move(f));
  }
  for (size_t k = groups_of_[g].first; k < groups_of_[g].second; ++k) {
    live_grad_ -= params_[k].grad->numel();
    *params_[k].grad = Tensor();
  }
}

void ShardedAdamW::pack_window_grads(const Window& w, Tensor& dst) const {
  const int64_t n = w.chunk * shard_size_;
  if (n > w.len) {
    Tensor tail = dst.slice(0, w.len, n);
    tail.zero_();
  }
  pack(true, w.start, w.len, dst);
}

Tensor ShardedAdamW::gather_buffer(const Window& w, bool staging, int64_t off) const {
  const Tensor& t = w.gather == DType::BF16 ? (staging ? stage16_ : buf16_) : (staging ? stage_ : buf_);
  return t.slice(0, off, off + w.chunk * shard_size_);
}

void ShardedAdamW::reduce_window(const Window& w, bool add) {
  const int M = shard_size_;
  Tensor b = buf_.slice(0, 0, w.chunk * M);
  pack_window_grads(w, b);
  Tensor mine = shard_grad_.slice(0, w.shard_off, w.shard_off + w.chunk);
  Tensor dst = add ? chunk_buf_.slice(0, 0, w.chunk) : mine;
  if (M > 1) shard_comm_->reduce_scatter(b, dst);
  else dst.copy_from(b);
  if (add) ops::axpby(1.f, dst, 1.f, mine, mine);
}

void ShardedAdamW::pack(bool grads, int64_t a, int64_t n, Tensor& dst) const {
  // first parameter whose range ends after a
  size_t k = size_t(std::upper_bound(offset_.begin(), offset_.end(), a) - offset_.begin()) - 1;
  for (; k < params_.size() && offset_[k] < a + n; ++k) {
    const Tensor& t = grads ? *params_[k].grad : *params_[k].value;
    const int64_t lo = std::max(a, offset_[k]), hi = std::min(a + n, offset_[k] + t.numel());
    if (hi <= lo) continue;
    Tensor d = dst.slice(0, lo - a, hi - a);
    if (grads && zero_grad_on_pack_[k]) {
      d.zero_();
      continue;
    }
    d.copy_from(t.view({t.numel()}).slice(0, lo - offset_[k], hi - offset_[k]));
  }
}

void ShardedAdamW::unpack_values(int64_t a, int64_t n, const Tensor& src) {
  size_t k = size_t(std::upper_bound(offset_.begin(), offset_.end(), a) - offset_.begin()) - 1;
  for (; k < params_.size() && offset_[k] < a + n; ++k) {
    Tensor& t = *params_[k].value;
    OSP_CHECK(t.defined(), "ShardedAdamW: the value of '", params_[k].name, "' is not resident (weight sharding)");
    const int64_t lo = std::max(a, offset_[k]), hi = std::min(a + n, offset_[k] + t.numel());
    if (hi <= lo) continue;
    Tensor d = t.view({t.numel()}).slice(0, lo - offset_[k], hi - offset_[k]);
    d.copy_from(src.slice(0, lo - a, hi - a));
  }
}

void ShardedAdamW::reduce_gradients(int accum_steps) {
  OSP_CHECK(accum_steps >= 1, "ShardedAdamW::reduce_gradients: accum_steps must be >= 1");
  finish_pending();
  if (sp_reducer_) sp_reducer_->reduce(1);
  const bool sharding = !groups_of_.empty();
  if (sharding && new_step_) shard_grad_.zero_();  // a step whose backward ran no group
  for (const Window& w : win_)
    if (w.group < 0) reduce_window(w, sharding);  // the groups' windows were added by end_group
  new_step_ = true;
  const float scale = float(1.0 / (double(groups_.dp_size()) * accum_steps));
  if (scale != 1.f) ops::axpby(scale, shard_grad_, 0.f, shard_grad_, shard_grad_);
}

double ShardedAdamW::grad_norm() {
  const double n = train::grad_norm(shard_table_);
  if (shard_size_ == 1) return n;
  const double sq = n * n;
  const float hi = float(sq), lo = float(sq - double(hi));
  // gathered (not summed in F32) and added in double, in rank order: the same on every rank
  const Tensor t = Tensor::from_vector({hi, lo}, {2}).to(shard_grad_.device());
  Tensor all = Tensor::empty({2 * int64_t(shard_size_)}, DType::F32, t.device());
  shard_comm_->all_gather(t, all);
  double sum = 0;
  for (float x : all.to(Device::cpu()).to_float_vector()) sum += double(x);
  return std::sqrt(std::max(0.0, sum));
}

void ShardedAdamW::scale_gradients(float s) { scale_grads(shard_table_, s); }

void ShardedAdamW::step(double lr) {
  drain_prefetch();  // (staged values are from before the update)
  adam_->step(lr);
  gather_values();
}

void ShardedAdamW::gather_values() {
  const int M = shard_size_;
  for (const Window& w : win_) {
    if (w.group >= 0 && !resident_[size_t(w.group)]) continue;  // weight sharding: gathered when needed
    const Tensor mine = shard_.slice(0, w.shard_off, w.shard_off + w.chunk);
    Tensor b = buf_.slice(0, 0, w.chunk * M);
    if (M > 1) shard_comm_->all_gather(mine, b);
    else b.copy_from(mine);
    unpack_values(w.start, w.len, b);
  }
}

Tensor ShardedAdamW::gather_flat(const Tensor& src, int root) {
  const int M = shard_size_;
  const bool mine = root < 0 || root == shard_rank_;
  Tensor out = mine ? Tensor::empty({total_}, DType::F32, Device::cpu()) : Tensor();
  for (const Window& w : win_) {
    const Tensor part = src.slice(0, w.shard_off, w.shard_off + w.chunk);
    Tensor b = buf_.slice(0, 0, w.chunk * M);
    if (M > 1) shard_comm_->all_gather(part, b);
    else b.copy_from(part);
    if (!mine) continue;
    Tensor o = out.slice(0, w.start, w.start + w.len);
    o.copy_from(b.slice(0, 0, w.len));
  }
  return out;
}

std::vector<Tensor> ShardedAdamW::unshard(const Tensor& shard_flat, int root) {
  OSP_CHECK(shard_flat.numel() == shard_.numel(), "ShardedAdamW::unshard: ", shard_flat.numel(),
            " elements for a shard of ", shard_.numel());
  OSP_CHECK(root >= -1 && root < shard_size_, "ShardedAdamW::unshard: root ", root, " outside ",
            shard_size_, " ranks");
  const Tensor flat = gather_flat(shard_flat.contiguous().view({shard_flat.numel()}), root);
  std::vector<Tensor> out;
  if (!flat.defined()) return out;
  for (size_t k = 0; k < params_.size(); ++k) {
    const int64_t a = offset_[k], n = numel_[k];
    out.push_back(flat.slice(0, a, a + n).view(value_shape_[k]));  // views of one host buffer
  }
  return out;
}

std::vector<AdamW::Slot> ShardedAdamW::gather_state(int root) {
  const AdamW::Slot& s = adam_->slots().at(0);
  std::vector<Tensor> master = unshard(s.master, root), m = unshard(s.m, root), v = unshard(s.v, root);
  std::vector<AdamW::Slot> out(master.size());
  for (size_t k = 0; k < master.size(); ++k) out[k] = {master[k], m[k], v[k]};
  return out;
}

void ShardedAdamW::scatter_into(const std::vector<const Tensor*>& full, Tensor& dst) const {
  OSP_CHECK(full.size() == params_.size(), "ShardedAdamW: ", full.size(), " tensors for ",
            params_.size(), " parameters");
  for (size_t k = 0; k < full.size(); ++k)
    OSP_CHECK(full[k]->defined() && full[k]->numel() == numel_[k],
              "ShardedAdamW: the state of '", params_[k].name, "' does not match the parameter ",
              params_[k].value->desc());
  const int r = shard_rank_;
  for (const Window& w : win_) {
    Tensor d = dst.slice(0, w.shard_off, w.shard_off + w.chunk);
    d.zero_();
    // my chunk of window w: flat [start + r·chunk, start + min((r+1)·chunk, len))
    const int64_t a = w.start + int64_t(r) * w.chunk;
    const int64_t e = w.start + std::min<int64_t>(int64_t(r + 1) * w.chunk, w.len);
    for (size_t k = 0; k < params_.size(); ++k) {
      const int64_t lo = std::max(a, offset_[k]);
      const int64_t hi = std::min(e, offset_[k] + numel_[k]);
      if (hi <= lo) continue;
      const Tensor src = full[k]->contiguous().to(DType::F32);
      Tensor dd = d.slice(0, lo - a, hi - a);
      dd.copy_from(src.view({src.numel()}).slice(0, lo - offset_[k], hi - offset_[k]));
    }
  }
}

Tensor ShardedAdamW::shard_of(const std::vector<Tensor>& full) const {
  std::vector<const Tensor*> ptrs;
  for (const Tensor& t : full) ptrs.push_back(&t);
  Tensor out = Tensor::zeros({shard_.numel()}, DType::F32, shard_.device());
  scatter_into(ptrs, out);
  return out;
}

void ShardedAdamW::load_state(const std::vector<AdamW::Slot>& full, int64_t steps) {
  OSP_CHECK(full.size() == params_.size(), "ShardedAdamW::load_state: ", full.size(),
            " slots for ", params_.size(), " parameters");
  AdamW::Slot& s = adam_->slots().at(0);
  for (auto member : {&AdamW::Slot::master, &AdamW::Slot::m, &AdamW::Slot::v}) {
    std::vector<const Tensor*> ptrs;
    for (const AdamW::Slot& sl : full) ptrs.push_back(&(sl.*member));
    scatter_into(ptrs, s.*member);
  }
  drain_prefetch();
  adam_->restore(steps);  // shard value ← master
  gather_values();
}

// ---------------------------------------------------------------- weight sharding (ZeRO-3)

void ShardedAdamW::shard_weights(Prefetch prefetch) {
  OSP_CHECK(!groups_of_.empty(), "ShardedAdamW: weight sharding needs gradient groups (gradient sharding)");
  if (shard_weights_) return;
  gather_comm_ = shard_size_ > 1 ? std::shared_ptr<parallel::Communicator>(shard_comm_->split(0, shard_rank_)) : nullptr;
  prefetch_ = prefetch == Prefetch::On || (prefetch == Prefetch::Auto && gather_comm_ && gather_comm_->overlaps());
  // each group window's gather dtype: BF16 when every value it covers is BF16
  bool any16 = false;
  for (Window& w : win_) {
    if (w.group < 0) continue;
    bool all16 = true;
    size_t k = size_t(std::upper_bound(offset_.begin(), offset_.end(), w.start) - offset_.begin()) - 1;
    for (; k < params_.size() && offset_[k] < w.start + w.len; ++k) all16 &= value_dtype_[k] == DType::BF16;
    w.gather = all16 ? DType::BF16 : DType::F32;
    any16 |= all16;
  }
  if (any16) buf16_ = Tensor::zeros({buf_.numel()}, DType::BF16, shard_.device());
  if (prefetch_) {
    int64_t most32 = 1, most16 = 1;
    for (size_t g = 0; g < groups_of_.size(); ++g) {
      int64_t n32 = 0, n16 = 0;
      for (const Window& w : win_)
        if (w.group == int(g)) (w.gather == DType::BF16 ? n16 : n32) += w.chunk * shard_size_;
      most32 = std::max(most32, n32), most16 = std::max(most16, n16);
    }
    stage_ = Tensor::zeros({most32}, DType::F32, shard_.device());
    if (any16) stage16_ = Tensor::zeros({most16}, DType::BF16, shard_.device());
  }
  shard_weights_ = true;
  for (size_t g = 0; g < groups_of_.size(); ++g) release_group(g);
  peak_wbytes_ = live_wbytes_;
}

void ShardedAdamW::alloc_group(size_t g) {
  const Device dev = shard_.device();
  for (size_t k = groups_of_[g].first; k < groups_of_[g].second; ++k) {
    Tensor& v = *params_[k].value;
    OSP_CHECK(!v.defined(), "ShardedAdamW: '", params_[k].name, "' is resident while its group is not");
    v = Tensor::empty(value_shape_[k], value_dtype_[k], dev);
    live_wbytes_ += int64_t(v.nbytes());
  }
  resident_[g] = true;
  peak_wbytes_ = std::max(peak_wbytes_, live_wbytes_);
}

void ShardedAdamW::release_group(size_t g) {
  OSP_CHECK(g < groups_of_.size(), "ShardedAdamW::release_group: no group ", g);
  if (!shard_weights_ || !resident_[g]) return;
  for (size_t k = groups_of_[g].first; k < groups_of_[g].second; ++k) {
    Tensor& v = *params_[k].value;
    live_wbytes_ -= int64_t(v.nbytes());
    v = Tensor();
  }
  resident_[g] = false;
}

void ShardedAdamW::prefetch_group(size_t g) {
  OSP_CHECK(g < groups_of_.size(), "ShardedAdamW::prefetch_group: no group ", g);
  if (!prefetch_ || resident_[g] || staged_ == int(g)) return;
  drain_prefetch();
  // group g's windows back to back in the staging buffer, one overlappable gather each (the
  // side stream keeps them in order: the last ticket covers them all)
  int64_t off32 = 0, off16 = 0;
  for (const Window& w : win_) {
    if (w.group != int(g)) continue;
    send_.push_back(send_window(w));
    int64_t& off = w.gather == DType::BF16 ? off16 : off32;
    Tensor b = gather_buffer(w, true, off);
    if (gather_comm_) stage_ticket_ = gather_comm_->all_gather_start(send_.back(), b);
    else b.copy_from(send_.back());
    off += w.chunk * shard_size_;
  }
  staged_ = int(g);
}

void ShardedAdamW::drain_prefetch() {
  if (staged_ < 0) return;
  if (gather_comm_ && stage_ticket_ >= 0) gather_comm_->wait(stage_ticket_);
  staged_ = -1;
  stage_ticket_ = -1;
  send_.clear();
}

Tensor ShardedAdamW::send_window(const Window& w) const {
  const Tensor mine = shard_.slice(0, w.shard_off, w.shard_off + w.chunk);
  if (w.gather == DType::F32) return mine;
  Tensor t = Tensor::empty({w.chunk}, w.gather, shard_.device());
  t.copy_from(mine);
  return t;
}

int64_t ShardedAdamW::gather_bytes_per_pass() const {
  int64_t b = 0;
  for (const Window& w : win_)
    if (w.group >= 0) b += w.chunk * shard_size_ * (w.gather == DType::BF16 ? 2 : 4);
  return b;
}

void ShardedAdamW::gather_group(size_t g) {
  OSP_CHECK(g < groups_of_.size(), "ShardedAdamW::gather_group: no group ", g);
  if (!shard_weights_ || resident_[g]) return;
  alloc_group(g);
  const int M = shard_size_;
  if (staged_ == int(g)) {  // the prefetched windows, back to back
    if (gather_comm_ && stage_ticket_ >= 0) gather_comm_->wait(stage_ticket_);
    int64_t off32 = 0, off16 = 0;
    for (const Window& w : win_) {
      if (w.group != int(g)) continue;
      int64_t& off = w.gather == DType::BF16 ? off16 : off32;
      unpack_values(w.start, w.len, gather_buffer(w, true, off));
      off += w.chunk * M;
    }
    staged_ = -1;
    stage_ticket_ = -1;
    send_.clear();
    return;
  }
  drain_prefetch();  // a prefetch of another group: its order slot is spent, its data dropped
  for (const Window& w : win_) {
    if (w.group != int(g)) continue;
    const Tensor mine = send_window(w);
    Tensor b = gather_buffer(w, false, 0);
    if (gather_comm_) gather_comm_->all_gather(mine, b);
    else b.copy_from(mine);
    unpack_values(w.start, w.len, b);
  }
}

void ShardedAdamW::unshard_weights() {
  if (!shard_weights_) return;
  drain_prefetch();
  for (size_t g = 0; g < groups_of_.size(); ++g) gather_group(g);
  shard_weights_ = false;
  prefetch_ = false;
  stage_ = Tensor();
  stage16_ = Tensor();
  buf16_ = Tensor();
}

}  // namespace osp::train
