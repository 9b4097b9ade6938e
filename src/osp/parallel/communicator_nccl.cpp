// NCCL backend (CUDA tensors, one process per GPU), bootstrapped through MPI. All collectives
// run on the stream the CUDA ops use (the legacy default stream), so they are ordered with the
// surrounding kernels without extra synchronisation.
//
// Collective timeout (communicator.h): NCCL kernels run asynchronously, so a collective that a
// dead or stalled peer never joins blocks the stream (and the next host synchronisation) rather
// than the call. With a timeout > 0 every collective records an event after itself on its stream
// and a watchdog thread polls the pending events; one still incomplete `timeout` seconds after its
// collective was enqueued prints the reason (collective_timeout_message), aborts the NCCL
// communicator (ncclCommAbort releases the blocked kernels) and ends the job (abort_all). The
// time counts from the enqueue, so it includes the GPU work queued before the collective. The
// barrier (MPI) is polled with the same deadline and throws CollectiveTimeout like the mpi backend.
#include "osp/parallel/communicator.h"

#if defined(OSP_HAVE_NCCL) && defined(OSP_HAVE_MPI) && defined(OSP_HAVE_CUDA)
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "osp/core/cuda_check.h"
#include "osp/parallel/mpi_env.h"

namespace osp::parallel {

namespace {
#define OSP_NCCL_CHECK(call)                                                             \
  do {                                                                                   \
    ncclResult_t osp_r_ = (call);                                                        \
    if (osp_r_ != ncclSuccess)                                                           \
      ::osp::fail(::osp::str(#call, " failed: ", ncclGetErrorString(osp_r_), " (",       \
                             ncclGetLastError(nullptr), ") at ", __FILE__, ":", __LINE__)); \
  } while (0)

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    default:
      fail(str("nccl communicator: sum reductions support f32, bf16, f16, f64, i32, i64; got ",
               dtype_name(t)));
  }
}

cudaStream_t stream() { return 0; }  // the ops' stream (ops/cuda/cuda_context.h)

// See the header comment: events after timed collectives, polled by one thread per communicator.
class NcclWatchdog {
 public:
  NcclWatchdog(ncclComm_t comm, int device, int rank, int size)
      : comm_(comm), device_(device), rank_(rank), size_(size), thread_([this] { loop(); }) {}
  ~NcclWatchdog() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    for (const Pending& p : pending_) cudaEventDestroy(p.event);
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
  }
  NcclWatchdog(const NcclWatchdog&) = delete;
  NcclWatchdog& operator=(const NcclWatchdog&) = delete;

  // After a collective `op` was enqueued on `st`: watch it for `timeout` seconds.
  void watch(cudaStream_t st, const char* op, double timeout) {
    std::lock_guard<std::mutex> lk(mu_);
    cudaEvent_t e = nullptr;
    if (!free_.empty()) {
      e = free_.back();
      free_.pop_back();
    } else {
      OSP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    OSP_CUDA_CHECK(cudaEventRecord(e, st));
    const auto wait = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout));
    pending_.push_back({e, op, timeout, std::chrono::steady_clock::now() + wait});
    cv_.notify_all();
  }

 private:
  struct Pending {
    cudaEvent_t event;
    const char* op;
    double timeout;
    std::chrono::steady_clock::time_point deadline;
  };
  void loop() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      for (auto it = pending_.begin(); it != pending_.end();) {
        const cudaError_t q = cudaEventQuery(it->event);
        if (q == cudaErrorNotReady) {
          if (std::chrono::steady_clock::now() >= it->deadline) fire(*it);
          ++it;
          continue;
        }
        // done, or an error the issuing thread sees at its next CUDA call
        free_.push_back(it->event);
        it = pending_.erase(it);
      }
      cv_.wait_for(lk, std::chrono::milliseconds(pending_.empty() ? 1000 : 20));
    }
  }
  [[noreturn]] void fire(const Pending& p) {
    std::fprintf(stderr, "osp: error: %s; ending every rank\n",
                 collective_timeout_message(p.op, "nccl", rank_, size_, p.timeout).c_str());
    std::fflush(stderr);
    ncclCommAbort(comm_);
    abort_all(1);
  }

  ncclComm_t comm_;
  int device_, rank_, size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the members above exist
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, MPI_Comm mpi, bool owned_mpi, int device)
      : comm_(comm), mpi_(mpi), owned_mpi_(owned_mpi), device_(device) {
    OSP_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    OSP_NCCL_CHECK(ncclCommCount(comm_, &size_));
  }
  ~NcclCommunicator() override {
    watchdog_.reset();
    if (side_) {
      cudaStreamSynchronize(side_);
      for (auto e : events_) cudaEventDestroy(e);
      cudaEventDestroy(ready_);
      cudaStreamDestroy(side_);
    }
    ncclCommDestroy(comm_);
    int fin = 0;
    MPI_Finalized(&fin);
    if (owned_mpi_ && !fin) MPI_Comm_free(&mpi_);
  }
  const char* backend() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::cuda(device_); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    OSP_CHECK(color >= 0, "Communicator::split: color must be >= 0, got ", color);
    MPI_Comm sub_mpi;
    if (MPI_Comm_split(mpi_, color, key, &sub_mpi) != MPI_SUCCESS)
      fail("MPI_Comm_split failed while splitting the nccl communicator");
    // A fresh NCCL communicator for the sub-group, bootstrapped over the sub MPI communicator
    // (works on every NCCL version, unlike ncclCommSplit).
    int sub_rank = 0;
    MPI_Comm_rank(sub_mpi, &sub_rank);
    ncclUniqueId id;
    if (sub_rank == 0) OSP_NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, sub_mpi);
    int sub_size = 0;
    MPI_Comm_size(sub_mpi, &sub_size);
    ncclComm_t sub;
    OSP_NCCL_CHECK(ncclCommInitRank(&sub, sub_size, id, sub_rank));
    return std::make_unique<NcclCommunicator>(sub, sub_mpi, true, device_);
  }

 protected:
  void check_device(const Tensor& t, const char* op) const override {
    OSP_CHECK(t.device().is_cuda() && t.device().index == device_, "Communicator::", op,
              " (nccl backend) needs tensors on cuda:", device_, " (this rank's GPU), got ",
              t.desc());
  }
  void raw_all_to_all(const void* send, const std::vector<size_t>& sb,
                      const std::vector<size_t>& sd, void* recv, const std::vector<size_t>& rb,
                      const std::vector<size_t>& rd, const Tensor&) override {
    send_recv(send, sb, sd, recv, rb, rd, stream());
    watch(stream(), "all_to_all");
  }
  // On a non-blocking side stream: it waits for the compute stream's work so far (event), runs
  // the exchange, and records a completion event = the ticket. The legacy default stream (the
  // compute stream) does not implicitly synchronise with a non-blocking stream, so kernels
  // enqueued after this call run concurrently with the exchange until wait(ticket).
  int raw_all_to_all_start(const void* send, const std::vector<size_t>& sb,
                           const std::vector<size_t>& sd, void* recv,
                           const std::vector<size_t>& rb, const std::vector<size_t>& rd,
                           const Tensor&) override {
    side_begin();
    send_recv(send, sb, sd, recv, rb, rd, side_);
    watch(side_, "all_to_all");
    return side_end();
  }
  // The same side stream for the weight prefetch's all-gathers.
  int raw_reduce_scatter_start(const void* send, void* recv, int64_t n, const Tensor& like) override {
    side_begin();
    OSP_NCCL_CHECK(ncclReduceScatter(send, recv, size_t(n), nccl_type(like.dtype()), ncclSum, comm_, side_));
    watch(side_, "reduce_scatter");
    return side_end();
  }
  int raw_all_reduce_start(void* x, int64_t n, const Tensor& like) override {
    side_begin();
    OSP_NCCL_CHECK(ncclAllReduce(x, x, size_t(n), nccl_type(like.dtype()), ncclSum, comm_, side_));
    watch(side_, "all_reduce");
    return side_end();
  }
  int raw_all_gather_start(const void* send, size_t bytes, void* recv, const Tensor&) override {
    side_begin();
    OSP_NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclChar, comm_, side_));
    watch(side_, "all_gather");
    return side_end();
  }
  // The side stream (created on first use) waits for the compute stream's work so far.
  void side_begin() {
    if (!side_) {
      OSP_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
      events_.resize(kEvents);
      for (auto& e : events_) OSP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      OSP_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    }
    OSP_CUDA_CHECK(cudaEventRecord(ready_, stream()));
    OSP_CUDA_CHECK(cudaStreamWaitEvent(side_, ready_, 0));
  }
  // The completion event of the work just enqueued on the side stream = the ticket.
  int side_end() {
    const int ticket = next_ticket_++;
    OSP_CUDA_CHECK(cudaEventRecord(events_[size_t(ticket % kEvents)], side_));
    return ticket;
  }

 public:
  void wait(int ticket) override {
    if (!side_) return;
    OSP_CHECK(ticket >= 0 && ticket < next_ticket_ && next_ticket_ - ticket <= kEvents,
              "nccl communicator: wait(", ticket, ") for a ticket that was never issued or is "
              "older than the last ", kEvents, " exchanges");
    OSP_CUDA_CHECK(cudaStreamWaitEvent(stream(), events_[size_t(ticket % kEvents)], 0));
  }
  bool overlaps() const override { return true; }

 protected:
  void send_recv(const void* send, const std::vector<size_t>& sb, const std::vector<size_t>& sd,
                 void* recv, const std::vector<size_t>& rb, const std::vector<size_t>& rd,
                 cudaStream_t st) {
    OSP_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size_; ++r) {
      if (sb[size_t(r)])
        OSP_NCCL_CHECK(ncclSend(static_cast<const char*>(send) + sd[size_t(r)], sb[size_t(r)],
                                ncclChar, r, comm_, st));
      if (rb[size_t(r)])
        OSP_NCCL_CHECK(ncclRecv(static_cast<char*>(recv) + rd[size_t(r)], rb[size_t(r)], ncclChar,
                                r, comm_, st));
    }
    OSP_NCCL_CHECK(ncclGroupEnd());
  }
  void raw_all_gather(const void* send, size_t bytes, void* recv, const Tensor&) override {
    OSP_NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclChar, comm_, stream()));
    watch(stream(), "all_gather");
  }
  void raw_reduce_scatter(const void* send, void* recv, int64_t n, const Tensor& like) override {
    OSP_NCCL_CHECK(ncclReduceScatter(send, recv, size_t(n), nccl_type(like.dtype()), ncclSum,
                                     comm_, stream()));
    watch(stream(), "reduce_scatter");
  }
  void raw_all_reduce(void* x, int64_t n, const Tensor& like) override {
    OSP_NCCL_CHECK(ncclAllReduce(x, x, size_t(n), nccl_type(like.dtype()), ncclSum, comm_, stream()));
    watch(stream(), "all_reduce");
  }
  void raw_broadcast(void* x, size_t bytes, int root, const Tensor&) override {
    OSP_NCCL_CHECK(ncclBroadcast(x, x, bytes, ncclChar, root, comm_, stream()));
    watch(stream(), "broadcast");
  }
  void raw_barrier() override {
    OSP_CUDA_CHECK(cudaStreamSynchronize(stream()));
    if (collective_timeout() <= 0) {
      if (MPI_Barrier(mpi_) != MPI_SUCCESS) fail("MPI_Barrier failed (nccl communicator barrier)");
      return;
    }
    MPI_Request req;
    if (MPI_Ibarrier(mpi_, &req) != MPI_SUCCESS) fail("MPI_Ibarrier failed (nccl communicator barrier)");
    mpi_wait(req, "barrier", "nccl", rank_, size_);
  }
  // Under a collective timeout: the watchdog (started on first use) watches the collective just
  // enqueued on `st`.
  void watch(cudaStream_t st, const char* op) {
    const double t = collective_timeout();
    if (t <= 0) return;
    if (!watchdog_) watchdog_ = std::make_unique<NcclWatchdog>(comm_, device_, rank_, size_);
    watchdog_->watch(st, op, t);
  }

 private:
  ncclComm_t comm_;
  MPI_Comm mpi_;
  bool owned_mpi_;
  int device_;
  int rank_ = 0, size_ = 1;
  static constexpr int kEvents = 64;
  cudaStream_t side_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  std::vector<cudaEvent_t> events_;
  int next_ticket_ = 0;
  std::unique_ptr<NcclWatchdog> watchdog_;
};
}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator() {
  mpi_ensure_initialized();
  int ndev = 0;
  OSP_CUDA_CHECK(cudaGetDeviceCount(&ndev));
  OSP_CHECK(ndev > 0, "nccl communicator: no CUDA device visible");
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // Local rank: ranks sharing this node (MPI_Comm_split_type), one GPU each.
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int local = 0, local_size = 1;
  MPI_Comm_rank(node, &local);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  // Either every rank sees all GPUs (device = local rank) or a launcher wrapper restricted each
  // rank to its own GPU with CUDA_VISIBLE_DEVICES (one visible device: use it).
  OSP_CHECK(ndev == 1 || local_size <= ndev, "nccl communicator: ", local_size,
            " ranks on this node but only ", ndev, " GPUs visible (one process per GPU)");
  const int device = ndev == 1 ? 0 : local;
  OSP_CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId id;
  if (rank == 0) OSP_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t comm;
  OSP_NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank));
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  return std::make_unique<NcclCommunicator>(comm, dup, true, device);
}

}  // namespace osp::parallel

#else  // no NCCL

namespace osp::parallel {
bool nccl_built() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator() {
  fail("the nccl communicator is not built in: it needs CUDA, MPI and NCCL at configure time "
       "(OSP_HAVE_NCCL)");
}
}  // namespace osp::parallel

#endif
