// Communicator front end (validation + byte counting) and the single-rank backend.
#include "osp/parallel/communicator.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace osp::parallel {

namespace {
void require_contig(const Tensor& t, const char* op, const char* what) {
  OSP_CHECK(t.defined(), "Communicator::", op, ": ", what, " is undefined");
  OSP_CHECK(t.is_contiguous(), "Communicator::", op, ": ", what, " must be contiguous, got ",
            t.desc());
}
void require_same_kind(const Tensor& a, const Tensor& b, const char* op) {
  OSP_CHECK(a.dtype() == b.dtype(), "Communicator::", op, ": send is ", a.desc(), " but recv is ",
            b.desc(), " (dtypes must match)");
  OSP_CHECK(a.device() == b.device(), "Communicator::", op, ": send is on ", a.device().name(),
            " but recv is on ", b.device().name());
}
}  // namespace

void Communicator::all_to_all(const Tensor& send, Tensor& recv) {
  const int S = size();
  OSP_CHECK(send.dim() >= 1 && send.size(0) % S == 0, "Communicator::all_to_all: send ",
            send.desc(), " must have dim 0 divisible by the group size ", S);
  OSP_CHECK(recv.shape() == send.shape(), "Communicator::all_to_all: recv ", recv.desc(),
            " must have the shape of send ", send.desc());
  std::vector<int64_t> rows(size_t(S), send.size(0) / S);
  all_to_all(send, rows, recv, rows);
}

Communicator::A2aPlan Communicator::plan_all_to_all(const Tensor& send,
                                                    const std::vector<int64_t>& send_rows,
                                                    const Tensor& recv,
                                                    const std::vector<int64_t>& recv_rows,
                                                    const char* op) {
  const int S = size();
  require_contig(send, op, "send");
  require_contig(recv, op, "recv");
  require_same_kind(send, recv, op);
  check_device(send, op);
  OSP_CHECK(int(send_rows.size()) == S && int(recv_rows.size()) == S, "Communicator::", op,
            ": need one row count per rank (", S, "), got ", send_rows.size(), " send and ",
            recv_rows.size(), " recv counts");
  OSP_CHECK(send.dim() >= 1 && recv.dim() >= 1, "Communicator::", op, ": send/recv need dim 0");
  const int64_t send_row = send.size(0) ? send.numel() / send.size(0) : 0;
  const int64_t recv_row = recv.size(0) ? recv.numel() / recv.size(0) : 0;
  int64_t ss = 0, rs = 0;
  for (int r = 0; r < S; ++r) {
    OSP_CHECK(send_rows[size_t(r)] >= 0 && recv_rows[size_t(r)] >= 0, "Communicator::", op,
              ": negative row count");
    ss += send_rows[size_t(r)], rs += recv_rows[size_t(r)];
  }
  OSP_CHECK(ss == send.size(0), "Communicator::", op, ": send row counts sum to ", ss,
            " but send has ", send.size(0), " rows");
  OSP_CHECK(rs == recv.size(0), "Communicator::", op, ": recv row counts sum to ", rs,
            " but recv has ", recv.size(0), " rows");
  OSP_CHECK(send.size(0) == 0 || recv.size(0) == 0 || send_row == recv_row, "Communicator::", op,
            ": send rows have ", send_row, " elements but recv rows ", recv_row);
  const int64_t row = send.size(0) ? send_row : recv_row;
  const size_t rb = size_t(row) * dtype_size(send.dtype());
  A2aPlan p;
  p.sb.resize(size_t(S)), p.sd.resize(size_t(S)), p.rb.resize(size_t(S)), p.rd.resize(size_t(S));
  size_t so = 0, ro = 0;
  for (int r = 0; r < S; ++r) {
    p.sb[size_t(r)] = size_t(send_rows[size_t(r)]) * rb, p.sd[size_t(r)] = so, so += p.sb[size_t(r)];
    p.rb[size_t(r)] = size_t(recv_rows[size_t(r)]) * rb, p.rd[size_t(r)] = ro, ro += p.rb[size_t(r)];
    if (r != rank()) bytes_sent_ += p.sb[size_t(r)];
  }
  return p;
}

void Communicator::all_to_all(const Tensor& send, const std::vector<int64_t>& send_rows,
                              Tensor& recv, const std::vector<int64_t>& recv_rows) {
  const A2aPlan p = plan_all_to_all(send, send_rows, recv, recv_rows, "all_to_all");
  raw_all_to_all(send.raw(), p.sb, p.sd, recv.raw(), p.rb, p.rd, send);
}

int Communicator::all_to_all_start(const Tensor& send, const std::vector<int64_t>& send_rows,
                                   Tensor& recv, const std::vector<int64_t>& recv_rows) {
  const A2aPlan p = plan_all_to_all(send, send_rows, recv, recv_rows, "all_to_all_start");
  return raw_all_to_all_start(send.raw(), p.sb, p.sd, recv.raw(), p.rb, p.rd, send);
}

namespace {
void check_all_gather(const Tensor& send, const Tensor& recv, int size, const char* op) {
  require_contig(send, op, "send");
  require_contig(recv, op, "recv");
  require_same_kind(send, recv, op);
  OSP_CHECK(recv.numel() == send.numel() * size, "Communicator::", op, ": recv ", recv.desc(),
            " must hold size (", size, ") × send ", send.desc());
}
}  // namespace

void Communicator::all_gather(const Tensor& send, Tensor& recv) {
  check_all_gather(send, recv, size(), "all_gather");
  check_device(send, "all_gather");
  bytes_sent_ += uint64_t(size() - 1) * send.nbytes();
  raw_all_gather(send.raw(), send.nbytes(), recv.raw(), send);
}

int Communicator::all_gather_start(const Tensor& send, Tensor& recv) {
  check_all_gather(send, recv, size(), "all_gather_start");
  check_device(send, "all_gather_start");
  bytes_sent_ += uint64_t(size() - 1) * send.nbytes();
  return raw_all_gather_start(send.raw(), send.nbytes(), recv.raw(), send);
}

void Communicator::reduce_scatter(const Tensor& send, Tensor& recv) {
  require_contig(send, "reduce_scatter", "send");
  require_contig(recv, "reduce_scatter", "recv");
  require_same_kind(send, recv, "reduce_scatter");
  check_device(send, "reduce_scatter");
  OSP_CHECK(send.numel() == recv.numel() * size(), "Communicator::reduce_scatter: send ",
            send.desc(), " must hold size (", size(), ") × recv ", recv.desc());
  bytes_sent_ += uint64_t(size() - 1) * recv.nbytes();
  raw_reduce_scatter(send.raw(), recv.raw(), recv.numel(), send);
}

int Communicator::reduce_scatter_start(const Tensor& send, Tensor& recv) {
  require_contig(send, "reduce_scatter_start", "send");
  require_contig(recv, "reduce_scatter_start", "recv");
  require_same_kind(send, recv, "reduce_scatter_start");
  check_device(send, "reduce_scatter_start");
  OSP_CHECK(send.numel() == recv.numel() * size(), "Communicator::reduce_scatter_start: send ", send.desc(),
            " must hold size (", size(), ") × recv ", recv.desc());
  bytes_sent_ += uint64_t(size() - 1) * recv.nbytes();
  return raw_reduce_scatter_start(send.raw(), recv.raw(), recv.numel(), send);
}

void Communicator::all_reduce(Tensor& x) {
  require_contig(x, "all_reduce", "x");
  check_device(x, "all_reduce");
  bytes_sent_ += 2 * uint64_t(size() - 1) * x.nbytes() / uint64_t(size());
  raw_all_reduce(x.raw(), x.numel(), x);
}

int Communicator::all_reduce_start(Tensor& x) {
  require_contig(x, "all_reduce_start", "x");
  check_device(x, "all_reduce_start");
  bytes_sent_ += 2 * uint64_t(size() - 1) * x.nbytes() / uint64_t(size());
  return raw_all_reduce_start(x.raw(), x.numel(), x);
}

void Communicator::broadcast(Tensor& x, int root) {
  require_contig(x, "broadcast", "x");
  check_device(x, "broadcast");
  OSP_CHECK(root >= 0 && root < size(), "Communicator::broadcast: root ", root,
            " outside [0, ", size(), ")");
  if (rank() == root) bytes_sent_ += uint64_t(size() - 1) * x.nbytes();
  raw_broadcast(x.raw(), x.nbytes(), root, x);
}

void Communicator::barrier() { raw_barrier(); }

bool Communicator::any(bool flag) {
  Tensor t = Tensor::from_vector({flag ? 1.f : 0.f}, {1}).to(device());
  all_reduce(t);
  return t.to(Device::cpu()).data<float>()[0] > 0.f;
}

namespace {
std::atomic<double> g_collective_timeout{0.0};
}  // namespace

void set_collective_timeout(double seconds) {
  OSP_CHECK(std::isfinite(seconds) && seconds >= 0, "collective timeout must be >= 0 seconds, got ", seconds);
  g_collective_timeout.store(seconds);
}
double collective_timeout() { return g_collective_timeout.load(); }

std::string collective_timeout_message(const char* op, const char* backend, int rank, int size,
                                       double seconds) {
  return str(op, " on the ", backend, " communicator (rank ", rank, " of ", size,
             ") did not complete within ", seconds,
             " s: another rank died, hangs, or stopped calling collectives (--collective-timeout)");
}

std::unique_ptr<Communicator> Communicator::split_even(int group_size) {
  OSP_CHECK(group_size >= 1 && size() % group_size == 0, "Communicator::split_even: ", size(),
            " ranks do not split into groups of ", group_size);
  return split(rank() / group_size, rank() % group_size);
}

// ------------------------------------------------------------------ single rank
namespace {
class SingleCommunicator final : public Communicator {
 public:
  const char* backend() const override { return "single"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::unique_ptr<Communicator> split(int, int) override {
    return std::make_unique<SingleCommunicator>();
  }

 protected:
  void copy(void* dst, const void* src, size_t bytes, const Tensor& like) {
    if (bytes && dst != src) memcpy_any(dst, like.device(), src, like.device(), bytes);
  }
  void raw_all_to_all(const void* send, const std::vector<size_t>& sb,
                      const std::vector<size_t>& sd, void* recv, const std::vector<size_t>& rb,
                      const std::vector<size_t>& rd, const Tensor& like) override {
    OSP_CHECK(sb[0] == rb[0], "Communicator::all_to_all (single): sending ", sb[0],
              " bytes to itself but expecting ", rb[0]);
    copy(static_cast<char*>(recv) + rd[0], static_cast<const char*>(send) + sd[0], sb[0], like);
  }
  void raw_all_gather(const void* send, size_t bytes, void* recv, const Tensor& like) override {
    copy(recv, send, bytes, like);
  }
  void raw_reduce_scatter(const void* send, void* recv, int64_t n, const Tensor& like) override {
    copy(recv, send, size_t(n) * dtype_size(like.dtype()), like);
  }
  void raw_all_reduce(void*, int64_t, const Tensor&) override {}
  void raw_broadcast(void*, size_t, int, const Tensor&) override {}
  void raw_barrier() override {}
  void check_device(const Tensor&, const char*) const override {}
};
}  // namespace

std::unique_ptr<Communicator> make_single_communicator() {
  return std::make_unique<SingleCommunicator>();
}

static int env_int(std::initializer_list<const char*> names, int dflt) {
  for (const char* n : names)
    if (const char* v = std::getenv(n)) return std::atoi(v);
  return dflt;
}
int launcher_rank() {
  return env_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}, 0);
}
int launcher_size() {
  return env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"}, 1);
}
int launcher_local_rank() {
  return env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}, 0);
}

std::unique_ptr<Communicator> make_communicator(const std::string& backend) {
  if (backend == "single") return make_single_communicator();
  if (backend == "mpi") return make_mpi_communicator();
  if (backend == "nccl") return make_nccl_communicator();
  OSP_CHECK(backend == "auto", "unknown communicator backend '", backend,
            "' (expected single, mpi, nccl or auto)");
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") ||
                        std::getenv("PMIX_RANK");
  if (!launched || !mpi_built()) return make_single_communicator();
  if (nccl_built() && cuda_available()) return make_nccl_communicator();
  return make_mpi_communicator();
}

}  // namespace osp::parallel
