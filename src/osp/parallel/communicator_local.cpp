// In-process communicators: a counting one (no data moves) and a thread group (ranks are
// threads sharing memory; CPU tensors).
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "osp/parallel/communicator.h"

namespace osp::parallel {

namespace {

// ------------------------------------------------------------------ counting (no data)
class CountingCommunicator final : public Communicator {
 public:
  CountingCommunicator(int size, int rank) : size_(size), rank_(rank) {
    OSP_CHECK(size >= 1 && rank >= 0 && rank < size, "make_counting_communicator: rank ", rank,
              " outside a group of ", size);
  }
  const char* backend() const override { return "counting"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Communicator> split(int, int) override {
    fail("counting communicator: split(color, key) needs the other ranks' colors; use split_even");
  }
  std::unique_ptr<Communicator> split_even(int group_size) override {
    OSP_CHECK(group_size >= 1 && size_ % group_size == 0, "Communicator::split_even: ", size_,
              " ranks do not split into groups of ", group_size);
    return std::make_unique<CountingCommunicator>(group_size, rank_ % group_size);
  }

 protected:
  void raw_all_to_all(const void*, const std::vector<size_t>&, const std::vector<size_t>&, void*,
                      const std::vector<size_t>&, const std::vector<size_t>&,
                      const Tensor&) override {}
  void raw_all_gather(const void*, size_t, void*, const Tensor&) override {}
  void raw_reduce_scatter(const void*, void*, int64_t, const Tensor&) override {}
  void raw_all_reduce(void*, int64_t, const Tensor&) override {}
  void raw_broadcast(void*, size_t, int, const Tensor&) override {}
  void raw_barrier() override {}
  void check_device(const Tensor&, const char*) const override {}

 private:
  int size_, rank_;
};

// ------------------------------------------------------------------ thread group
struct ThreadGroup {
  explicit ThreadGroup(int n)
      : size(n), ptr(size_t(n)), cptr(size_t(n)), bytes(size_t(n)), displ(size_t(n)),
        root(size_t(n)), color(size_t(n)), key(size_t(n)), made(size_t(n)) {}
  int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  // Per-rank posted arguments of the current collective.
  std::vector<void*> ptr;
  std::vector<const void*> cptr;
  std::vector<std::vector<size_t>> bytes, displ;
  std::vector<int> root, color, key;
  std::vector<std::shared_ptr<ThreadGroup>> made;

  // Every rank's rendezvous; with a collective timeout (communicator.h) a rank that waits longer
  // throws CollectiveTimeout (the group is then unusable).
  void barrier() {
    std::unique_lock<std::mutex> lk(mu);
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    const double t = collective_timeout();
    if (t <= 0) {
      cv.wait(lk, [&] { return generation != gen; });
      return;
    }
    const auto wait = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(t));
    if (!cv.wait_for(lk, wait, [&] { return generation != gen; }))
      throw CollectiveTimeout(str("a collective of the thread communicator (", size, " ranks, ", arrived,
                                  " arrived) did not complete within ", t,
                                  " s: another rank died, hangs, or stopped calling collectives"));
  }
};

template <typename T>
void sum_into(T* out, const std::vector<const void*>& src, int64_t offset, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T s = 0;
    for (const void* p : src) s += static_cast<const T*>(p)[offset + i];
    out[i] = s;
  }
}

void sum_dispatch(DType t, void* out, const std::vector<const void*>& src, int64_t off, int64_t n) {
  switch (t) {
    case DType::F32: sum_into(static_cast<float*>(out), src, off, n); break;
    case DType::F64: sum_into(static_cast<double*>(out), src, off, n); break;
    case DType::I32: sum_into(static_cast<int32_t*>(out), src, off, n); break;
    case DType::I64: sum_into(static_cast<int64_t*>(out), src, off, n); break;
    default:
      fail(str("thread communicator: sum reductions support f32, f64, i32, i64; got ",
               dtype_name(t)));
  }
}

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}
  const char* backend() const override { return "threads"; }
  int rank() const override { return rank_; }
  int size() const override { return g_->size; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    OSP_CHECK(color >= 0, "Communicator::split: color must be >= 0, got ", color);
    ThreadGroup& g = *g_;
    g.color[size_t(rank_)] = color;
    g.key[size_t(rank_)] = key;
    g.barrier();
    // Members of my color ordered by (key, rank); the first one creates the group.
    std::vector<int> members;
    for (int r = 0; r < g.size; ++r)
      if (g.color[size_t(r)] == color) members.push_back(r);
    std::stable_sort(members.begin(), members.end(),
                     [&](int a, int b) { return g.key[size_t(a)] < g.key[size_t(b)]; });
    const int leader = *std::min_element(members.begin(), members.end());
    if (rank_ == leader) g.made[size_t(rank_)] = std::make_shared<ThreadGroup>(int(members.size()));
    g.barrier();
    auto sub = g.made[size_t(leader)];
    const int new_rank = int(std::find(members.begin(), members.end(), rank_) - members.begin());
    g.barrier();
    if (rank_ == leader) g.made[size_t(rank_)].reset();
    return std::make_unique<ThreadCommunicator>(sub, new_rank);
  }

 protected:
  void check_device(const Tensor& t, const char* op) const override {
    OSP_CHECK(t.device().is_cpu(), "Communicator::", op, " (threads backend) needs CPU tensors, got ",
              t.desc());
  }
  void raw_all_to_all(const void* send, const std::vector<size_t>& sb,
                      const std::vector<size_t>& sd, void* recv, const std::vector<size_t>& rb,
                      const std::vector<size_t>& rd, const Tensor&) override {
    ThreadGroup& g = *g_;
    g.cptr[size_t(rank_)] = send;
    g.bytes[size_t(rank_)] = sb;
    g.displ[size_t(rank_)] = sd;
    g.barrier();
    std::string err;
    for (int src = 0; src < g.size; ++src) {
      const size_t n = g.bytes[size_t(src)][size_t(rank_)];
      if (n != rb[size_t(src)] && err.empty())
        err = str("Communicator::all_to_all (threads): rank ", src, " sends ", n,
                  " bytes to rank ", rank_, " which expects ", rb[size_t(src)]);
      if (n == rb[size_t(src)] && n)
        std::memcpy(static_cast<char*>(recv) + rd[size_t(src)],
                    static_cast<const char*>(g.cptr[size_t(src)]) + g.displ[size_t(src)][size_t(rank_)], n);
    }
    g.barrier();
    OSP_CHECK(err.empty(), err);
  }
  void raw_all_gather(const void* send, size_t bytes, void* recv, const Tensor&) override {
    ThreadGroup& g = *g_;
    g.cptr[size_t(rank_)] = send;
    g.barrier();
    for (int r = 0; r < g.size; ++r)
      std::memcpy(static_cast<char*>(recv) + size_t(r) * bytes, g.cptr[size_t(r)], bytes);
    g.barrier();
  }
  void raw_reduce_scatter(const void* send, void* recv, int64_t n, const Tensor& like) override {
    ThreadGroup& g = *g_;
    g.cptr[size_t(rank_)] = send;
    g.barrier();
    sum_dispatch(like.dtype(), recv, g.cptr, int64_t(rank_) * n, n);
    g.barrier();
  }
  void raw_all_reduce(void* x, int64_t n, const Tensor& like) override {
    ThreadGroup& g = *g_;
    g.cptr[size_t(rank_)] = x;
    g.barrier();
    std::vector<char> tmp(size_t(n) * dtype_size(like.dtype()));
    sum_dispatch(like.dtype(), tmp.data(), g.cptr, 0, n);
    g.barrier();
    if (!tmp.empty()) std::memcpy(x, tmp.data(), tmp.size());
    g.barrier();
  }
  void raw_broadcast(void* x, size_t bytes, int root, const Tensor&) override {
    ThreadGroup& g = *g_;
    g.ptr[size_t(rank_)] = x;
    g.barrier();
    if (rank_ != root && bytes) std::memcpy(x, g.ptr[size_t(root)], bytes);
    g.barrier();
  }
  void raw_barrier() override { g_->barrier(); }

 private:
  std::shared_ptr<ThreadGroup> g_;
  int rank_;
};

}  // namespace

std::unique_ptr<Communicator> make_counting_communicator(int size, int rank) {
  return std::make_unique<CountingCommunicator>(size, rank);
}

std::vector<std::unique_ptr<Communicator>> make_thread_communicators(int size) {
  OSP_CHECK(size >= 1, "make_thread_communicators: size must be >= 1, got ", size);
  auto g = std::make_shared<ThreadGroup>(size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<ThreadCommunicator>(g, r));
  return out;
}

}  // namespace osp::parallel
