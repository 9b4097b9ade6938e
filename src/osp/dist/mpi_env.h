// MPI process setup shared by the mpi and nccl communicators (only with OSP_HAVE_MPI).
#pragma once

namespace osp::dist {
// MPI_Init_thread(FUNNELED) unless MPI is already initialised; MPI_Finalize runs at exit.
void mpi_ensure_initialized();
}  // namespace osp::dist
