// CPU threading defaults (threads.h).
#include "osp/ops/cpu/threads.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

namespace osp::ops::cpu {

namespace {
const char* get_env(const char* n) { return std::getenv(n); }
}  // namespace

int blas_parallel() { return openblas_get_parallel(); }

ThreadEnvDefaults thread_env_defaults(const char* (*get)(const char*), int blas_parallel) {
  ThreadEnvDefaults d;
  if (!get("OMP_WAIT_POLICY") && !get("GOMP_SPINCOUNT")) {
    d.name[d.n] = "OMP_WAIT_POLICY";
    d.value[d.n++] = "PASSIVE";
  }
  if (blas_parallel == 1 && !get("OPENBLAS_NUM_THREADS") && !get("GOTO_NUM_THREADS")) {
    d.name[d.n] = "OPENBLAS_NUM_THREADS";
    d.value[d.n++] = "1";
  }
  return d;
}

void reexec_with_thread_env(char** argv) {
  if (std::getenv(kThreadEnvMarker)) return;  // this is the re-executed process
  const ThreadEnvDefaults d = thread_env_defaults(get_env, blas_parallel());
  if (d.n == 0 || omp_get_max_threads() <= 1) return;
  std::string marker;
  for (int i = 0; i < d.n; ++i) {
    setenv(d.name[i], d.value[i], 0);
    if (!marker.empty()) marker += ' ';
    marker.append(d.name[i]).append("=").append(d.value[i]);
  }
  setenv(kThreadEnvMarker, marker.c_str(), 1);
  execv("/proc/self/exe", argv);
  // No /proc (or no exec): run on as the libraries started, and leave the environment as it was.
  for (int i = 0; i < d.n; ++i) unsetenv(d.name[i]);
  unsetenv(kThreadEnvMarker);
}

std::string restore_thread_env() {
  const char* m = std::getenv(kThreadEnvMarker);
  if (!m) return {};
  std::istringstream in{std::string(m)};
  std::string kv, set;
  while (in >> kv) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    unsetenv(kv.substr(0, eq).c_str());
    if (!set.empty()) set += ' ';
    set += kv;
  }
  unsetenv(kThreadEnvMarker);
  return set;
}

std::string threads_summary(const std::string& set_by_osp) {
  const int bp = blas_parallel();
  std::string s = "CPU threads: " + std::to_string(omp_get_max_threads()) + " OpenMP";
  s += bp == 2   ? ", OpenBLAS OpenMP build (GEMMs on the same threads)"
       : bp == 1 ? ", OpenBLAS pthreads build (" + std::to_string(openblas_get_num_threads()) +
                       " GEMM thread(s))"
                 : ", sequential OpenBLAS";
  if (!set_by_osp.empty()) s += "; osp set " + set_by_osp;
  return s;
}

}  // namespace osp::ops::cpu
