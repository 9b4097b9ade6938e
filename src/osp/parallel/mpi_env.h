// MPI process setup shared by the mpi and nccl communicators (only with OSP_HAVE_MPI).
#pragma once
#include <mpi.h>

namespace osp::parallel {
// MPI_Init_thread(FUNNELED) unless MPI is already initialised; MPI_Finalize runs at exit.
void mpi_ensure_initialized();
// Polls a started nonblocking MPI operation until it completes: MPI_Test in a tight loop for the
// first 2 ms (latency of short exchanges), then every 100 µs (a rank waiting for a slow peer
// leaves the core to it). With a collective timeout (communicator.h) > 0, past it throws
// CollectiveTimeout (collective_timeout_message(op, backend, rank, size, ...)); the request stays
// pending and the caller ends the job. Without one, waits forever.
void mpi_wait(MPI_Request& req, const char* op, const char* backend, int rank, int size);
}  // namespace osp::parallel
