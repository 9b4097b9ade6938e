// NCCL backend (CUDA tensors, one process per GPU), bootstrapped through MPI. All collectives
// run on the stream the CUDA ops use (the legacy default stream), so they are ordered with the
// surrounding kernels without extra synchronisation.
#include "osp/dist/communicator.h"

#if defined(OSP_HAVE_NCCL) && defined(OSP_HAVE_MPI) && defined(OSP_HAVE_CUDA)
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdlib>
#include <vector>

#include "osp/core/cuda_check.h"
#include "osp/dist/mpi_env.h"

namespace osp::dist {

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

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, MPI_Comm mpi, bool owned_mpi, int device)
      : comm_(comm), mpi_(mpi), owned_mpi_(owned_mpi), device_(device) {
    OSP_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    OSP_NCCL_CHECK(ncclCommCount(comm_, &size_));
  }
  ~NcclCommunicator() override {
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
  }
  // On a non-blocking side stream: it waits for the compute stream's work so far (event), runs
  // the exchange, and records a completion event = the ticket. The legacy default stream (the
  // compute stream) does not implicitly synchronise with a non-blocking stream, so kernels
  // enqueued after this call run concurrently with the exchange until wait(ticket).
  int raw_all_to_all_start(const void* send, const std::vector<size_t>& sb,
                           const std::vector<size_t>& sd, void* recv,
                           const std::vector<size_t>& rb, const std::vector<size_t>& rd,
                           const Tensor&) override {
    if (!side_) {
      OSP_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
      events_.resize(kEvents);
      for (auto& e : events_) OSP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      OSP_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    }
    OSP_CUDA_CHECK(cudaEventRecord(ready_, stream()));
    OSP_CUDA_CHECK(cudaStreamWaitEvent(side_, ready_, 0));
    send_recv(send, sb, sd, recv, rb, rd, side_);
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
  }
  void raw_reduce_scatter(const void* send, void* recv, int64_t n, const Tensor& like) override {
    OSP_NCCL_CHECK(ncclReduceScatter(send, recv, size_t(n), nccl_type(like.dtype()), ncclSum,
                                     comm_, stream()));
  }
  void raw_all_reduce(void* x, int64_t n, const Tensor& like) override {
    OSP_NCCL_CHECK(ncclAllReduce(x, x, size_t(n), nccl_type(like.dtype()), ncclSum, comm_, stream()));
  }
  void raw_broadcast(void* x, size_t bytes, int root, const Tensor&) override {
    OSP_NCCL_CHECK(ncclBroadcast(x, x, bytes, ncclChar, root, comm_, stream()));
  }
  void raw_barrier() override {
    OSP_CUDA_CHECK(cudaStreamSynchronize(stream()));
    if (MPI_Barrier(mpi_) != MPI_SUCCESS) fail("MPI_Barrier failed (nccl communicator barrier)");
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

}  // namespace osp::dist

#else  // no NCCL

namespace osp::dist {
bool nccl_built() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator() {
  fail("the nccl communicator is not built in: it needs CUDA, MPI and NCCL at configure time "
       "(OSP_HAVE_NCCL)");
}
}  // namespace osp::dist

#endif
