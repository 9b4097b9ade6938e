// MPI backend (CPU tensors). Compiled to a clear error when the build has no MPI.
#include "osp/parallel/communicator.h"

#ifdef OSP_HAVE_MPI
#include <mpi.h>

#include <chrono>
#include <deque>
#include <climits>
#include <cstdlib>
#include <thread>

#include "osp/parallel/mpi_env.h"

namespace osp::parallel {

namespace {
void mpi_check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail(str(call, " failed: ", std::string(msg, size_t(len))));
}
#define OSP_MPI_CHECK(call) mpi_check((call), #call)

int to_int(size_t v, const char* what) {
  OSP_CHECK(v <= size_t(INT_MAX), "mpi communicator: ", what, " of ", v,
            " bytes exceeds MPI's int count limit (2 GiB per message); use more ranks or the "
            "nccl backend");
  return int(v);
}

MPI_Datatype reduce_type(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    default:
      fail(str("mpi communicator: sum reductions support f32, f64, i32, i64; got ",
               dtype_name(t)));
  }
}

// With a collective timeout (communicator.h) every collective runs as its nonblocking form,
// polled by mpi_wait (mpi_env.h) until done or until the deadline.
bool timed() { return collective_timeout() > 0; }

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    OSP_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    OSP_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiCommunicator() override {
    int fin = 0;
    MPI_Finalized(&fin);
    if (owned_ && !fin) MPI_Comm_free(&comm_);
  }
  const char* backend() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Communicator> split(int color, int key) override {
    OSP_CHECK(color >= 0, "Communicator::split: color must be >= 0, got ", color);
    MPI_Comm sub;
    OSP_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    return std::make_unique<MpiCommunicator>(sub, true);
  }
  MPI_Comm comm() const { return comm_; }

 protected:
  void check_device(const Tensor& t, const char* op) const override {
    OSP_CHECK(t.device().is_cpu(), "Communicator::", op, " (mpi backend) needs CPU tensors, got ",
              t.desc(), "; use the nccl backend for CUDA tensors");
  }
  void raw_all_to_all(const void* send, const std::vector<size_t>& sb,
                      const std::vector<size_t>& sd, void* recv, const std::vector<size_t>& rb,
                      const std::vector<size_t>& rd, const Tensor&) override {
    std::vector<int> sc(static_cast<size_t>(size_)), sdi(static_cast<size_t>(size_)), rc(static_cast<size_t>(size_)), rdi(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      sc[size_t(r)] = to_int(sb[size_t(r)], "all_to_all chunk");
      sdi[size_t(r)] = to_int(sd[size_t(r)] + sb[size_t(r)], "all_to_all send buffer") - sc[size_t(r)];
      rc[size_t(r)] = to_int(rb[size_t(r)], "all_to_all chunk");
      rdi[size_t(r)] = to_int(rd[size_t(r)] + rb[size_t(r)], "all_to_all recv buffer") - rc[size_t(r)];
    }
    if (!timed()) {
      OSP_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sdi.data(), MPI_BYTE, recv, rc.data(),
                                  rdi.data(), MPI_BYTE, comm_));
      return;
    }
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Ialltoallv(send, sc.data(), sdi.data(), MPI_BYTE, recv, rc.data(),
                                 rdi.data(), MPI_BYTE, comm_, &req));
    finish(req, "all_to_all");
  }
  void raw_all_gather(const void* send, size_t bytes, void* recv, const Tensor&) override {
    to_int(bytes * size_t(size_), "all_gather result");
    if (!timed()) {
      OSP_MPI_CHECK(MPI_Allgather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, comm_));
      return;
    }
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Iallgather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, comm_, &req));
    finish(req, "all_gather");
  }
  void raw_reduce_scatter(const void* send, void* recv, int64_t n, const Tensor& like) override {
    to_int(size_t(n) * size_t(size_), "reduce_scatter input (elements)");
    if (!timed()) {
      OSP_MPI_CHECK(MPI_Reduce_scatter_block(send, recv, int(n), reduce_type(like.dtype()),
                                             MPI_SUM, comm_));
      return;
    }
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, int(n), reduce_type(like.dtype()), MPI_SUM,
                                            comm_, &req));
    finish(req, "reduce_scatter");
  }
  void raw_all_reduce(void* x, int64_t n, const Tensor& like) override {
    to_int(size_t(n), "all_reduce (elements)");
    if (!timed()) {
      OSP_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, int(n), reduce_type(like.dtype()), MPI_SUM, comm_));
      return;
    }
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, x, int(n), reduce_type(like.dtype()), MPI_SUM, comm_, &req));
    finish(req, "all_reduce");
  }
  int raw_reduce_scatter_start(const void* send, void* recv, int64_t n, const Tensor& like) override {
    to_int(size_t(n) * size_t(size_), "reduce_scatter_start input (elements)");
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, int(n), reduce_type(like.dtype()), MPI_SUM, comm_, &req));
    pending_.push_back({++last_ticket_, req});
    return last_ticket_;
  }
  int raw_all_reduce_start(void* x, int64_t n, const Tensor& like) override {
    to_int(size_t(n), "all_reduce_start (elements)");
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, x, int(n), reduce_type(like.dtype()), MPI_SUM, comm_, &req));
    pending_.push_back({++last_ticket_, req});
    return last_ticket_;
  }

 public:
  // Completes the non-blocking all_reduce_start / reduce_scatter_start calls up to `ticket`, in
  // issue order.
  void wait(int ticket) override {
    while (!pending_.empty() && pending_.front().first <= ticket) {
      finish(pending_.front().second, "all_reduce");
      pending_.pop_front();
    }
  }

 protected:
  void raw_broadcast(void* x, size_t bytes, int root, const Tensor&) override {
    if (!timed()) {
      OSP_MPI_CHECK(MPI_Bcast(x, to_int(bytes, "broadcast"), MPI_BYTE, root, comm_));
      return;
    }
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Ibcast(x, to_int(bytes, "broadcast"), MPI_BYTE, root, comm_, &req));
    finish(req, "broadcast");
  }
  void raw_barrier() override {
    if (!timed()) {
      OSP_MPI_CHECK(MPI_Barrier(comm_));
      return;
    }
    MPI_Request req;
    OSP_MPI_CHECK(MPI_Ibarrier(comm_, &req));
    finish(req, "barrier");
  }

 private:
  void finish(MPI_Request& req, const char* op) const { mpi_wait(req, op, "mpi", rank_, size_); }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::deque<std::pair<int, MPI_Request>> pending_;  // the *_start calls: (ticket, request)
  int last_ticket_ = 0;
};

void finalize_at_exit() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}
}  // namespace

void mpi_ensure_initialized() {
  int init = 0;
  MPI_Initialized(&init);
  if (init) return;
  int provided = 0;
  OSP_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
  std::atexit(finalize_at_exit);
}

void mpi_wait(MPI_Request& req, const char* op, const char* backend, int rank, int size) {
  using clock = std::chrono::steady_clock;
  const double limit = collective_timeout();
  const auto t0 = clock::now();
  const auto spin_until = t0 + std::chrono::milliseconds(2);
  const auto deadline = t0 + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(limit));
  for (;;) {
    int done = 0;
    OSP_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) return;
    const auto now = clock::now();
    if (limit > 0 && now >= deadline)
      throw CollectiveTimeout(collective_timeout_message(op, backend, rank, size, limit));
    if (now >= spin_until) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

bool mpi_built() { return true; }

void abort_all(int code) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::unique_ptr<Communicator> make_mpi_communicator() {
  mpi_ensure_initialized();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

}  // namespace osp::parallel

#else  // no MPI

#include <cstdlib>

namespace osp::parallel {
bool mpi_built() { return false; }
void abort_all(int code) { std::_Exit(code); }
std::unique_ptr<Communicator> make_mpi_communicator() {
  fail("the mpi communicator is not built in: configure with OpenMPI installed "
       "(libopenmpi-dev) and -DOSP_MPI=ON");
}
}  // namespace osp::parallel

#endif
