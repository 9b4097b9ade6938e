// CPU threading defaults (ops/cpu/threads.h, issue 15): which variables osp sets, that a user's
// setting wins, and that the osp executable's libgomp / OpenBLAS really run with them.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "osp/ops/cpu/threads.h"

namespace {

using osp::ops::cpu::ThreadEnvDefaults;
using osp::ops::cpu::thread_env_defaults;

std::map<std::string, std::string> g_env;  // the fake environment thread_env_defaults reads
const char* fake_get(const char* n) {
  auto it = g_env.find(n);
  return it == g_env.end() ? nullptr : it->second.c_str();
}
std::map<std::string, std::string> defaults(std::map<std::string, std::string> env, int blas) {
  g_env = std::move(env);
  const ThreadEnvDefaults d = thread_env_defaults(fake_get, blas);
  std::map<std::string, std::string> out;
  for (int i = 0; i < d.n; ++i) out[d.name[i]] = d.value[i];
  return out;
}
using Env = std::map<std::string, std::string>;

TEST(CpuThreads, DefaultsPerBlasBuild) {
  // OpenMP build: only the wait policy; pthreads build: also one GEMM thread.
  EXPECT_EQ(defaults({}, 2), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}}));
  EXPECT_EQ(defaults({}, 1), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}, {"OPENBLAS_NUM_THREADS", "1"}}));
  EXPECT_EQ(defaults({}, 0), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}}));
  // OMP_NUM_THREADS is the user's: never set, and setting it changes nothing else.
  EXPECT_EQ(defaults({{"OMP_NUM_THREADS", "2"}}, 2), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}}));
}

TEST(CpuThreads, UserSettingsWin) {
  EXPECT_EQ(defaults({{"OMP_WAIT_POLICY", "active"}}, 2), Env{});
  EXPECT_EQ(defaults({{"GOMP_SPINCOUNT", "10000"}}, 2), Env{});
  EXPECT_EQ(defaults({{"OPENBLAS_NUM_THREADS", "2"}}, 1), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}}));
  EXPECT_EQ(defaults({{"GOTO_NUM_THREADS", "2"}}, 1), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}}));
  EXPECT_EQ(defaults({{"OMP_WAIT_POLICY", "passive"}, {"OPENBLAS_NUM_THREADS", "4"}}, 1), Env{});
}

// What the re-executed process finds: the variables osp set and the marker naming them. It removes
// exactly those; a user's own setting stays.
TEST(CpuThreads, RestoreRemovesOnlyWhatOspSet) {
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  setenv("OPENBLAS_NUM_THREADS", "1", 1);
  setenv("GOMP_SPINCOUNT", "77", 1);  // the user's
  setenv(osp::ops::cpu::kThreadEnvMarker, "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1", 1);
  EXPECT_EQ(osp::ops::cpu::restore_thread_env(), "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1");
  EXPECT_EQ(std::getenv("OMP_WAIT_POLICY"), nullptr);
  EXPECT_EQ(std::getenv("OPENBLAS_NUM_THREADS"), nullptr);
  EXPECT_EQ(std::getenv(osp::ops::cpu::kThreadEnvMarker), nullptr);
  EXPECT_STREQ(std::getenv("GOMP_SPINCOUNT"), "77");
  EXPECT_EQ(osp::ops::cpu::restore_thread_env(), "");  // not a re-executed process
  unsetenv("GOMP_SPINCOUNT");
}

TEST(CpuThreads, LinkedBlasIsTheBuildCMakePicked) {
#if defined(OSP_BLAS_OPENMP)
  EXPECT_EQ(osp::ops::cpu::blas_parallel(), 2) << "CMake found OpenBLAS's OpenMP build but the "
                                                   "loader picked another libopenblas.so.0";
#else
  GTEST_SKIP() << "built against the default BLAS (no libopenblas-openmp-dev)";
#endif
}

// `osp <args> 2>&1` under `env <env>`.
std::string run_osp(const std::string& env, const std::string& args, int* code) {
  const std::string cmd = "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u OPENBLAS_NUM_THREADS "
                          "-u GOTO_NUM_THREADS -u OMP_NUM_THREADS -u OSP_THREAD_ENV " + env + " " + OSP_CLI_PATH + " " + args + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  *code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

// libgomp prints its settings at start-up under OMP_DISPLAY_ENV=verbose; the spin count says
// whether idle workers spin (300000 by default, 0 when passive).
TEST(CpuThreads, OspRunsOpenMPPassiveUnlessTheUserSaysOtherwise) {
  int code = -1;
  const std::string def = run_osp("OMP_DISPLAY_ENV=verbose", "--version", &code);
  EXPECT_EQ(code, 0) << def;
  if (def.find("OPENMP DISPLAY ENVIRONMENT") == std::string::npos ||
      def.find("GOMP_SPINCOUNT") == std::string::npos)
    GTEST_SKIP() << "not GNU libgomp:\n" << def;
  EXPECT_NE(def.find("GOMP_SPINCOUNT = '0'"), std::string::npos) << def;
  const std::string active =
      run_osp("OMP_DISPLAY_ENV=verbose OMP_WAIT_POLICY=active", "--version", &code);
  EXPECT_NE(active.find("OMP_WAIT_POLICY = 'ACTIVE'"), std::string::npos) << active;
  EXPECT_EQ(active.find("GOMP_SPINCOUNT = '0'"), std::string::npos) << active;
  const std::string spin = run_osp("OMP_DISPLAY_ENV=verbose GOMP_SPINCOUNT=1234", "--version", &code);
  EXPECT_NE(spin.find("GOMP_SPINCOUNT = '1234'"), std::string::npos) << spin;
  // One thread: nothing to wait for, so osp runs as started (no second start-up).
  const std::string one = run_osp("OMP_DISPLAY_ENV=verbose OMP_NUM_THREADS=1", "--version", &code);
  EXPECT_NE(one.find("GOMP_SPINCOUNT = '300000'"), std::string::npos) << one;
}

// The --verbose line names the BLAS build osp runs with and its GEMM threads; a user's
// OPENBLAS_NUM_THREADS reaches the pthreads build.
TEST(CpuThreads, OspVerboseNamesTheBlasBuild) {
  int code = -1;
  const std::string out = run_osp("", "-v inspect /nonexistent-osp-threads-test", &code);
  EXPECT_NE(out.find("CPU threads: "), std::string::npos) << out;
  const std::string one = run_osp("OMP_NUM_THREADS=1", "-v inspect /nonexistent-osp-threads-test", &code);
  EXPECT_NE(one.find("CPU threads: 1 OpenMP"), std::string::npos) << one;
  EXPECT_EQ(one.find("osp set"), std::string::npos) << one;
#if defined(OSP_BLAS_OPENMP)
  EXPECT_NE(out.find("OpenBLAS OpenMP build"), std::string::npos) << out;
  if (out.find("CPU threads: 1 OpenMP") == std::string::npos)  // more than one core
    EXPECT_NE(out.find("osp set OMP_WAIT_POLICY=PASSIVE"), std::string::npos) << out;
#else
  if (osp::ops::cpu::blas_parallel() == 1) {
    EXPECT_NE(out.find("pthreads build (1 GEMM thread(s))"), std::string::npos) << out;
    const std::string user = run_osp("OPENBLAS_NUM_THREADS=2", "-v inspect /nonexistent-osp-threads-test", &code);
    EXPECT_NE(user.find("pthreads build (2 GEMM thread(s))"), std::string::npos) << user;
  }
#endif
}

}  // namespace
