// Collective communication over a group of ranks, with a byte counter per communicator.
// Backends:
//   single — one rank, every collective is a local copy (sends 0 bytes);
//   mpi    — CPU tensors over OpenMPI (built when OSP_HAVE_MPI);
//   nccl   — CUDA tensors over NCCL, one process per GPU (device = local rank), bootstrapped
//            through MPI: rank 0's ncclUniqueId is broadcast with MPI (built when OSP_HAVE_NCCL).
// All ranks of a communicator must call the same collectives in the same order (MPI rules).
//
// Byte accounting (bytes_sent): the bytes this rank hands to OTHER ranks, with the usual
// algorithm volumes: all_to_all = sum of the chunks for other ranks; all_gather = (S−1)·local
// (direct/ring); reduce_scatter = (S−1)/S·input (ring); all_reduce = 2(S−1)/S·input (ring);
// broadcast = (S−1)·bytes on the root, 0 elsewhere; barrier = 0.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::parallel {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* backend() const = 0;  // "single", "mpi", "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Where this backend's tensors live: CPU for single and mpi, this rank's GPU for nccl.
  virtual Device device() const { return Device::cpu(); }

  // Equal split: send and recv have the same shape [S·k, ...]; rows [r·k, (r+1)·k) of send go
  // to rank r, rows [r·k, (r+1)·k) of recv came from rank r.
  void all_to_all(const Tensor& send, Tensor& recv);
  // Uneven split, in rows of dim 0 (a row = numel/size(0) elements, equal for send and recv):
  // the first send_rows[0] rows go to rank 0, the next send_rows[1] to rank 1, …; recv is
  // filled likewise from recv_rows (which must match what the peers send: checked by the
  // shapes, not by extra messages).
  void all_to_all(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                  const std::vector<int64_t>& recv_rows);
  // Overlappable uneven all_to_all: same arguments, checks and byte accounting as above, but
  // on backends that can overlap (nccl: a side stream, ordered after the work already enqueued
  // on the compute stream) it returns at once with a ticket; wait(ticket) makes later
  // compute-stream work wait for that exchange and every one started before it. send and recv
  // must stay alive and untouched until then, and no other collective of this communicator
  // may be issued in between. Other backends run the exchange synchronously (wait is a no-op).
  int all_to_all_start(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                       const std::vector<int64_t>& recv_rows);
  virtual void wait(int ticket) { (void)ticket; }
  // True when all_to_all_start really overlaps with compute.
  virtual bool overlaps() const { return false; }
  // recv = concat over ranks of send (rank-major): recv.numel() == S·send.numel().
  void all_gather(const Tensor& send, Tensor& recv);
  // Overlappable all_gather (the weight prefetch of train/sharded_adamw.h): same checks and byte
  // accounting as all_gather, the same ticket/wait contract as all_to_all_start (nccl: the side
  // stream; other backends: synchronous, wait a no-op).
  int all_gather_start(const Tensor& send, Tensor& recv);
  // Sum over ranks of send [S·n] (any shape with S·n elements), rank r keeps chunk r → recv [n].
  void reduce_scatter(const Tensor& send, Tensor& recv);
  void all_reduce(Tensor& x);  // sum, in place
  // Overlappable in-place sum (train/trainer.cpp: the gradient reduction overlapped with the
  // backward): the checks and byte accounting of all_reduce and the ticket/wait contract of
  // all_to_all_start — nccl: the side stream; mpi: a non-blocking MPI_Iallreduce that wait()
  // completes (it and every one started before it); other backends: synchronous, ticket 0. x must
  // stay alive and untouched until then; further all_reduce_start calls may be issued in between
  // (in the same order on every rank), other collectives of this communicator may not.
  int all_reduce_start(Tensor& x);
  // Overlappable reduce_scatter (train/sharded_adamw.cpp: a block's gradients reduce-scattered as
  // its backward ends), with all_reduce_start's contract; send and recv stay untouched until wait.
  int reduce_scatter_start(const Tensor& send, Tensor& recv);
  void broadcast(Tensor& x, int root);
  void barrier();
  // True on every rank when `flag` is true on any rank (one all_reduce on this backend's device):
  // ranks that must stop together — after Ctrl-C, say — agree on it.
  bool any(bool flag);

  // Sub-communicator of the ranks passing the same color, ordered by key (MPI_Comm_split
  // semantics). Collective over this communicator. Used for 2D meshes (SSP × Ulysses).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Contiguous blocks of group_size ranks (color = rank / group_size, key = rank % group_size);
  // size() % group_size must be 0.
  virtual std::unique_ptr<Communicator> split_even(int group_size);

  uint64_t bytes_sent() const { return bytes_sent_; }
  void reset_bytes() { bytes_sent_ = 0; }

 protected:
  // Raw collectives on contiguous buffers; counts/displacements in bytes. All validated.
  virtual void raw_all_to_all(const void* send, const std::vector<size_t>& send_bytes,
                              const std::vector<size_t>& send_displ, void* recv,
                              const std::vector<size_t>& recv_bytes,
                              const std::vector<size_t>& recv_displ, const Tensor& like) = 0;
  // Default: synchronous raw_all_to_all, ticket 0.
  virtual int raw_all_to_all_start(const void* send, const std::vector<size_t>& send_bytes,
                                   const std::vector<size_t>& send_displ, void* recv,
                                   const std::vector<size_t>& recv_bytes,
                                   const std::vector<size_t>& recv_displ, const Tensor& like) {
    raw_all_to_all(send, send_bytes, send_displ, recv, recv_bytes, recv_displ, like);
    return 0;
  }
  virtual void raw_all_gather(const void* send, size_t bytes, void* recv, const Tensor& like) = 0;
  // Default: synchronous raw_all_gather, ticket 0.
  virtual int raw_all_gather_start(const void* send, size_t bytes, void* recv, const Tensor& like) {
    raw_all_gather(send, bytes, recv, like);
    return 0;
  }
  virtual void raw_reduce_scatter(const void* send, void* recv, int64_t recv_count,
                                  const Tensor& like) = 0;
  virtual void raw_all_reduce(void* x, int64_t count, const Tensor& like) = 0;
  // Default: synchronous raw_all_reduce, ticket 0.
  virtual int raw_all_reduce_start(void* x, int64_t count, const Tensor& like) {
    raw_all_reduce(x, count, like);
    return 0;
  }
  // Default: synchronous raw_reduce_scatter, ticket 0.
  virtual int raw_reduce_scatter_start(const void* send, void* recv, int64_t recv_count, const Tensor& like) {
    raw_reduce_scatter(send, recv, recv_count, like);
    return 0;
  }
  virtual void raw_broadcast(void* x, size_t bytes, int root, const Tensor& like) = 0;
  virtual void raw_barrier() = 0;
  // Device check for this backend (CPU for mpi, CUDA for nccl, anything for single).
  virtual void check_device(const Tensor& t, const char* op) const = 0;

  uint64_t bytes_sent_ = 0;

 private:
  struct A2aPlan {
    std::vector<size_t> sb, sd, rb, rd;
  };
  A2aPlan plan_all_to_all(const Tensor& send, const std::vector<int64_t>& send_rows,
                          const Tensor& recv, const std::vector<int64_t>& recv_rows,
                          const char* op);
};

// One rank; collectives copy locally.
std::unique_ptr<Communicator> make_single_communicator();

// Rank `rank` of a pretend group of `size` ranks: every collective validates its arguments and
// counts bytes exactly like a real backend but moves no data (recv buffers are left as they
// are). For communication accounting (bench/comm_report) without running S processes.
// Only split_even() can split it (the other ranks' colors are unknown).
std::unique_ptr<Communicator> make_counting_communicator(int size, int rank);

// `size` ranks as threads of this process sharing memory (tests and CPU experiments without
// mpirun): returns one communicator per rank; rank r's must be used by one thread only, and all
// of them concurrently (collectives block until every rank arrives).
std::vector<std::unique_ptr<Communicator>> make_thread_communicators(int size);

// True when this build has the MPI backend.
bool mpi_built();
// True when this build has the NCCL backend.
bool nccl_built();

// MPI_COMM_WORLD (initialises MPI on first use, finalised at exit). Throws when MPI is not
// built in.
std::unique_ptr<Communicator> make_mpi_communicator();
// NCCL over the ranks of MPI_COMM_WORLD; selects CUDA device (local rank % device count) via
// cudaSetDevice. Throws when NCCL is not built in or no GPU is visible.
std::unique_ptr<Communicator> make_nccl_communicator();

// "single", "mpi", "nccl", or "auto" (nccl when built and launched under mpirun with GPUs,
// mpi when launched under mpirun, else single).
std::unique_ptr<Communicator> make_communicator(const std::string& backend);

// ---- Collective timeouts (a rank that died or stopped answering must not hang the others).
// Process-wide, in seconds; 0 (the default) waits forever. With a timeout the mpi backend runs
// every collective as its nonblocking form polled until done or until the deadline, and the
// thread backend waits on its rendezvous with a deadline; past it the collective throws
// CollectiveTimeout (what() names the operation, the backend, this rank and the wait). The
// communicator is unusable afterwards (the peers' collectives are still pending): end the job
// (abort_all). The nccl backend's collectives return before they run (stream order), so there a
// watchdog thread ends the job itself — message on stderr, ncclCommAbort, abort_all — when a
// collective has not completed on the GPU within the timeout of its enqueue
// (communicator_nccl.cpp). Not applied to split() (MPI_Comm_split / ncclCommInitRank).
class CollectiveTimeout : public Error {
 public:
  using Error::Error;
};
void set_collective_timeout(double seconds);
double collective_timeout();
// Another timeout while alive (0: none), the previous one restored after — e.g. around a wait
// that is legitimately long (rank 0 writing a checkpoint while the others wait for it).
class ScopedCollectiveTimeout {
 public:
  explicit ScopedCollectiveTimeout(double seconds) : prev_(collective_timeout()) {
    set_collective_timeout(seconds);
  }
  ~ScopedCollectiveTimeout() { set_collective_timeout(prev_); }
  ScopedCollectiveTimeout(const ScopedCollectiveTimeout&) = delete;
  ScopedCollectiveTimeout& operator=(const ScopedCollectiveTimeout&) = delete;

 private:
  double prev_;
};
// The message of a timeout: "<op> on the <backend> communicator (rank r of n) did not complete
// within T s: ...".
std::string collective_timeout_message(const char* op, const char* backend, int rank, int size,
                                       double seconds);

// Ends every process of an mpirun job (MPI_Abort when MPI is initialised, else exit): for fatal
// errors on one rank while the others may be blocked inside a collective.
[[noreturn]] void abort_all(int code);

// World rank/size from the launcher environment (OMPI_COMM_WORLD_RANK, PMI_RANK, …) without
// initialising MPI; {0, 1} when not launched by mpirun.
int launcher_rank();
int launcher_size();
int launcher_local_rank();

}  // namespace osp::parallel
