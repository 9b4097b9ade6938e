// DiT block streaming (model/dit_block_stream.h).
#include "osp/model/dit_block_stream.h"

#include <algorithm>
#include <set>

#include "osp/model/dit.h"

namespace osp::model {

namespace {
constexpr size_t kAlign = 256;  // every tensor of a block starts 256-byte aligned in its buffer
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

BlockStream::BlockStream(Device dev) : dev_(dev), q_(dev, 2) {}

BlockStream::~BlockStream() {
  try {
    q_.synchronize();
  } catch (...) {
  }
}

void BlockStream::take(DiT& dit, int i) {
  OSP_CHECK(!dit.options().train, "BlockStream: block streaming is for inference (the DiT was bound for training)");
  OSP_CHECK(dit.options().device == dev_, "BlockStream: the DiT is on ", dit.options().device.name(),
            ", the stream on ", dev_.name());
  OSP_CHECK(!dit_, "BlockStream::take: the stream is already attached");
  const int n = int(dit.config().num_layers);
  if (host_.empty()) host_.resize(size_t(n));
  OSP_CHECK(int(host_.size()) == n && i >= 0 && i < n, "BlockStream::take: block ", i, " of a ", n,
            "-block DiT (the stream holds ", host_.size(), ")");
  HostBlock& hb = host_[size_t(i)];
  OSP_CHECK(!hb.taken, "BlockStream::take: block ", i, " was taken already");
  const std::vector<Tensor*> ts = dit.block_weights(i);
  size_t off = 0;
  hb.entries.resize(ts.size());
  for (size_t k = 0; k < ts.size(); ++k) {
    const Tensor& t = *ts[k];
    Entry& e = hb.entries[k];
    e.defined = t.defined();
    if (!e.defined) continue;
    OSP_CHECK(t.is_contiguous() && t.device() == dev_, "BlockStream::take: block ", i, " tensor ", k, " is ",
              t.desc(), " (expected contiguous on ", dev_.name(), ")");
    e.offset = off;
    e.bytes = t.nbytes();
    e.shape = t.shape();
    e.dtype = t.dtype();
    off = align_up(off + e.bytes);
  }
  hb.bytes = off;
  hb.data = std::shared_ptr<void>(pinned_alloc(std::max<size_t>(off, 1)), [](void* p) { pinned_free(p); });
  auto* base = static_cast<uint8_t*>(hb.data.get());
  for (size_t k = 0; k < ts.size(); ++k) {
    const Entry& e = hb.entries[k];
    if (!e.defined) continue;
    memcpy_any(base + e.offset, Device::cpu(), ts[k]->raw(), dev_, e.bytes);
    *ts[k] = Tensor();  // released on the device
  }
  hb.taken = true;
  st_.host_bytes += hb.bytes;
  st_.max_block_bytes = std::max(st_.max_block_bytes, hb.bytes);
  st_.blocks = n;
}

void BlockStream::attach(const std::shared_ptr<BlockStream>& s, DiT& dit) {
  OSP_CHECK(s && !s->dit_, "BlockStream::attach: null or already attached");
  const int n = int(dit.config().num_layers);
  OSP_CHECK(int(s->host_.size()) == n, "BlockStream::attach: ", s->host_.size(), " blocks taken of ", n);
  for (int i = 0; i < n; ++i)
    OSP_CHECK(s->host_[size_t(i)].taken, "BlockStream::attach: block ", i, " was not taken");
  s->dit_ = &dit;
  for (Tensor& sl : s->slot_) sl = Tensor::empty({int64_t(std::max<size_t>(s->st_.max_block_bytes, 1))}, DType::U8, s->dev_);
  // (the slots may reuse memory the compute stream freed: the copy stream must not overtake it)
  if (s->dev_.is_cuda()) cuda_synchronize();
  s->st_.ring_bytes = 2 * s->slot_[0].nbytes();
  // The hooks own the stream: it lives as long as the DiT keeps them.
  std::shared_ptr<BlockStream> keep = s;
  dit.set_block_forward_hooks([keep](int i) { keep->before(i); }, [keep](int i) { keep->after(i); });
}

std::shared_ptr<BlockStream> BlockStream::enable(DiT& dit) {
  auto s = std::make_shared<BlockStream>(dit.options().device);
  for (int i = 0; i < int(dit.config().num_layers); ++i) s->take(dit, i);
  attach(s, dit);
  return s;
}

void BlockStream::bind_into(const std::shared_ptr<BlockStream>& s, DiTOptions& opt) {
  opt.on_block_bound = [s](DiT& d, int i) { s->take(d, i); };
}

void BlockStream::reset_stats() {
  st_.copies = 0;
  st_.bytes_copied = 0;
  st_.peak_resident = 0;
  st_.peak_bound = 0;
}

void BlockStream::count_resident() {
  std::set<int> on;
  for (int b : slot_block_)
    if (b >= 0) on.insert(b);
  if (bound_ >= 0) on.insert(bound_);
  st_.peak_resident = std::max(st_.peak_resident, int(on.size()));
  st_.peak_bound = std::max(st_.peak_bound, dit_->blocks_with_weights());
}

void BlockStream::fetch(int i) {
  const int s = i % 2;
  if (slot_block_[s] == i) return;
  OSP_CHECK(bound_ != slot_block_[s] || bound_ < 0, "BlockStream: block ", i, " would overwrite the bound block ",
            bound_, " in slot ", s);
  const HostBlock& hb = host_[size_t(i)];
  q_.wait_marked(s);  // after the compute work of the block that last read this slot
  q_.copy_to_device(slot_[s].raw(), hb.data.get(), hb.bytes);
  slot_block_[s] = i;
  ++st_.copies;
  st_.bytes_copied += hb.bytes;
  count_resident();
}

void BlockStream::before(int i) {
  const int n = int(host_.size());
  OSP_CHECK(i >= 0 && i < n, "BlockStream: no block ", i);
  if (bound_ >= 0) after(bound_);  // a forward that stopped inside a block (an exception) left it bound
  fetch(i);                  // normally prefetched by the block before
  q_.compute_wait_copies();  // block i's kernels start after its bytes arrived
  const HostBlock& hb = host_[size_t(i)];
  Tensor& sl = slot_[i % 2];
  const std::shared_ptr<void> owner = sl.storage();
  auto* base = static_cast<uint8_t*>(sl.raw());
  const std::vector<Tensor*> ts = dit_->block_weights(i);
  OSP_CHECK(ts.size() == hb.entries.size(), "BlockStream: block ", i, " has ", ts.size(), " weight tensors, ",
            hb.entries.size(), " were taken");
  for (size_t k = 0; k < ts.size(); ++k) {
    const Entry& e = hb.entries[k];
    *ts[k] = e.defined ? Tensor::from_blob(base + e.offset, e.shape, e.dtype, dev_, owner) : Tensor();
  }
  bound_ = i;
  count_resident();
  // Prefetch the next block (of this forward, or block 0 of the next one) into the other slot,
  // overlapping block i. Same slot (an odd block count wrapping to 0, or one block): after(i).
  const int next = (i + 1) % n;
  if (next % 2 != i % 2) fetch(next);
}

void BlockStream::after(int i) {
  for (Tensor* t : dit_->block_weights(i)) *t = Tensor();
  bound_ = -1;
  q_.mark_compute(i % 2);  // the slot is free once the work queued so far is done
  const int n = int(host_.size());
  const int next = (i + 1) % n;
  if (next % 2 == i % 2) fetch(next);
}

}  // namespace osp::model
