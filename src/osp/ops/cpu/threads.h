// CPU threading (issue 15): one OpenMP thread pool owns the cores.
//
// osp's CPU kernels are `#pragma omp parallel` loops between OpenBLAS GEMMs. With OpenBLAS's
// pthreads build a process had two pools of busy-waiting workers: libgomp's spin (~300k
// iterations) after every parallel region and OpenBLAS's sched_yield loop after every GEMM. On
// the 2-core dev box they took the cores from each other and from the thread doing the work, so
// `osp rl` on the tiny model ran 4–15× slower with the default threads than with one.
//
// What osp does about it:
//  * the build links OpenBLAS's OpenMP build where it is installed (CMakeLists.txt,
//    libopenblas-openmp-dev): GEMMs run on osp's OpenMP team, and on the calling thread inside a
//    parallel region; OMP_NUM_THREADS sizes both (that build does not read OPENBLAS_NUM_THREADS);
//  * the osp executable, first thing in main(), sets
//      OMP_WAIT_POLICY=PASSIVE unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set: idle OpenMP
//        workers sleep instead of spinning, so a busy machine's other work (or a descheduled
//        team mate) gets the core;
//      OPENBLAS_NUM_THREADS=1 with OpenBLAS's pthreads build (the fallback) unless
//        OPENBLAS_NUM_THREADS or GOTO_NUM_THREADS is set: GEMMs on the calling thread, so
//        OpenMP stays the only pool;
//    and executes itself again (same pid, arguments and descriptors): libgomp and OpenBLAS read
//    these once, in their initializers, before main() (even an ELF preinit function is too
//    early: libc's initializer resets the environment after it). It does nothing when OpenMP
//    runs one thread (OMP_NUM_THREADS=1, one core) or nothing is to be set. The new process
//    removes the variables again once its libraries have read them (restore_thread_env), so
//    what osp starts (ffmpeg, reward scorers) sees the user's environment.
//  OMP_NUM_THREADS is never set: it is the user's knob.
#pragma once
#include <string>

namespace osp::ops::cpu {

// openblas_get_parallel() of the linked OpenBLAS: 0 sequential, 1 pthreads, 2 OpenMP.
int blas_parallel();

struct ThreadEnvDefaults {
  int n = 0;
  const char* name[2] = {nullptr, nullptr};
  const char* value[2] = {nullptr, nullptr};
};
// The variables above that osp would set, given the environment (`get` returns nullptr for an
// unset variable) and the BLAS build.
ThreadEnvDefaults thread_env_defaults(const char* (*get)(const char*), int blas_parallel);

// Names the variables the re-executed process is to remove again ("NAME=VALUE ..."). Set to
// anything else (OSP_THREAD_ENV=off) it turns the restart off: the libraries' own defaults.
inline constexpr const char* kThreadEnvMarker = "OSP_THREAD_ENV";

// If thread_env_defaults(getenv, blas_parallel()) sets anything, OpenMP would run more than one
// thread and this process is not already the re-executed one: setenv()s them and the marker and
// execv()s /proc/self/exe with `argv`. Returns only when there is nothing to do or the exec
// failed (then the process runs on with the libraries' defaults).
void reexec_with_thread_env(char** argv);
// In the re-executed process: unsetenv()s the variables the marker names, and the marker;
// returns their "NAME=VALUE ..." (empty in a process that was not re-executed).
std::string restore_thread_env();

// One line for --verbose: OpenMP threads and wait policy, the BLAS build.
std::string threads_summary(const std::string& set_by_osp);

}  // namespace osp::ops::cpu
