// CPU training attention: attention_forward_lse and attention_backward (fp32), with the
// hand-vectorised kernels on ("avx2") and off ("portable", the plain loops) in one run, on the
// shapes CPU training meets (a small DiT's full and Skiparse self-attention, cross-attention,
// a Wan-width head). One JSON line per (shape, variant, pass): ms (wall, best of reps), CPU
// seconds per call, OpenMP threads, GFLOP (forward 4·work·D, backward 10·work·D, work = Σ
// query·key pairs per head), GFLOP/s.
//   bench_attention_backward_cpu [--reps N] [--quick]
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "osp/ops/backward.h"
#include "osp/ops/cpu/cpu_ops.h"

using namespace osp;

namespace {

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

Tensor random_tensor(const Shape& s, std::mt19937& g) {
  Tensor t = Tensor::empty(s, DType::F32);
  std::normal_distribution<float> nd(0.f, 1.f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(g);
  return t;
}

struct Shape4 {
  const char* label;
  int64_t B, Lq, Lk, H, D;
  std::vector<int32_t> seqs;  // packed sequences (Skiparse), empty: none
};

template <class F>
void time_it(const char* label, const Shape4& s, const char* variant, const char* pass,
             double gflop, int reps, F fn) {
  fn();  // warm-up
  double best = 1e30, cpu = 0;
  for (int r = 0; r < reps; ++r) {
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    cpu += cpu_seconds() - c0;
    best = std::min(best, ms);
  }
  std::printf(
      "{\"bench\":\"attention_backward_cpu\",\"shape\":\"%s\",\"B\":%lld,\"Lq\":%lld,\"Lk\":%lld,"
      "\"H\":%lld,\"D\":%lld,\"seqs\":%zu,\"variant\":\"%s\",\"pass\":\"%s\",\"threads\":%d,"
      "\"ms\":%.3f,\"cpu_s\":%.4f,\"gflop\":%.3f,\"gflops\":%.2f}\n",
      label, (long long)s.B, (long long)s.Lq, (long long)s.Lk, (long long)s.H, (long long)s.D,
      s.seqs.size(), variant, pass, omp_get_max_threads(), best, cpu / reps, gflop,
      gflop / (best * 1e-3));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  std::vector<Shape4> shapes = {
      {"small_dit_full", 2, 1024, 1024, 2, 64, {}},
      {"small_dit_skiparse", 2, 1024, 1024, 2, 64, {256, 256, 256, 256}},
      {"small_dit_cross", 2, 1024, 128, 2, 64, {}},
      {"wan_head", 1, 2048, 2048, 4, 128, {}},
  };
  if (quick) shapes.resize(1);
  std::mt19937 g(7);
  for (const Shape4& s : shapes) {
    Tensor q = random_tensor({s.B, s.Lq, s.H, s.D}, g), k = random_tensor({s.B, s.Lk, s.H, s.D}, g);
    Tensor v = random_tensor({s.B, s.Lk, s.H, s.D}, g);
    Tensor dout = random_tensor({s.B, s.Lq, s.H, s.D}, g);
    Tensor out = Tensor::empty(q.shape(), DType::F32);
    Tensor lse = Tensor::empty({s.B, s.H, s.Lq}, DType::F32);
    Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32);
    Tensor dv = Tensor::empty(v.shape(), DType::F32);
    Tensor seq;
    ops::AttentionArgs args;
    double work = double(s.Lq) * double(s.Lk);
    if (!s.seqs.empty()) {
      seq = Tensor::empty({int64_t(s.seqs.size())}, DType::I32);
      std::copy(s.seqs.begin(), s.seqs.end(), seq.data<int32_t>());
      args.seq_lens = &seq;
      work = 0;
      for (int32_t n : s.seqs) work += double(n) * n;
    }
    const double fwd = 4 * work * double(s.D) * double(s.B * s.H) * 1e-9;
    for (bool simd : {false, true}) {
      ops::cpu::set_simd_enabled(simd);
      const char* variant = simd ? "avx2" : "portable";
      if (simd && !ops::cpu::simd_enabled()) continue;  // no AVX2 here: one variant only
      time_it(s.label, s, variant, "forward_lse", fwd, reps,
              [&] { ops::attention_forward_lse(q, k, v, out, lse, args); });
      time_it(s.label, s, variant, "backward", 2.5 * fwd, reps,
              [&] { ops::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, args); });
    }
  }
  return 0;
}
