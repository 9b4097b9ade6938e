// Multi-GPU DiT forward: ms per forward of the real model (model::DiT with random bf16 weights
// at the released shapes) for
//   * 1 process:              hybrid (dual-end Skiparse, single device) and full (Wan2.1);
//   * mpirun -np S (S = 2, 4): hybrid + SSP (dist::make_ssp) and full + Ulysses (make_ulysses),
// over NCCL (one process per GPU; scripts/gpu-multi.sh restricts every rank to its own GPU with
// CUDA_VISIBLE_DEVICES). Models: 14B at 1280×720×81 and 1.3B at 832×480×81, B = 1 (one CFG
// branch), text context 512 rows.
//
// Timing: barrier, forward, device sync; wall time of the slowest rank; median of --reps after
// --warmup. Prints JSON lines (rank 0; scripts/gpu-multi.sh makes the table). For 1.3B on
// several GPUs it also reports the largest relative error of the parallel output against the
// single-device forward of the same model (rel_err_vs_1gpu; -1 where not checked).
//   bench_dit_multi_gpu [--models 14b,1.3b] [--reps 3] [--warmup 1] [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/dist/communicator.h"
#include "osp/dist/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/sparse/skiparse.h"
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace osp;

namespace {

struct Case {
  std::string model, res;
  model::DiTConfig cfg;
  int64_t frames_lat, h_lat, w_lat;  // latent grid (81 frames → 21)
};

// One shared random bf16 buffer; every weight is a view of its first numel values (timing does
// not depend on the values; this keeps host memory at one large tensor instead of 14B params).
std::map<std::string, Tensor> random_weights(const model::DiTConfig& cfg) {
  const auto shapes = model::DiT::expected_shapes(cfg);
  int64_t maxn = 0;
  for (const auto& [n, s] : shapes) maxn = std::max(maxn, shape_numel(s));
  auto buf = std::shared_ptr<uint16_t[]>(new uint16_t[size_t(maxn)]);
  std::mt19937 g(1234);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<uint16_t> period(1 << 16);
  for (auto& v : period) v = f32_to_bf16(nd(g));
  for (int64_t i = 0; i < maxn; ++i) buf[size_t(i)] = period[size_t((i * 2654435761u) >> 16) & 0xffff];
  std::map<std::string, Tensor> w;
  for (const auto& [n, s] : shapes)
    w[n] = Tensor::from_blob(buf.get(), s, DType::BF16, Device::cpu(), buf);
  return w;
}

Tensor random_device(const Shape& s, uint32_t seed, Device dev) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = nd(g);
  return Tensor::from_vector(v, s).to(DType::BF16).to(dev);
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

std::string card() {
#ifdef OSP_HAVE_CUDA
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) return p.name;
#endif
  return "none";
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "14b,1.3b";
  int reps = 3, warmup = 1;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--models") && i + 1 < argc) models = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::max(0, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--quick")) models = "1.3b", reps = 1, warmup = 1;
    else {
      std::fprintf(stderr, "usage: %s [--models 14b,1.3b] [--reps N] [--warmup N] [--quick]\n", argv[0]);
      return 2;
    }
  }
  const bool launched = dist::launcher_size() > 1;
  std::shared_ptr<dist::Communicator> comm;
  int rank = 0, S = 1;
  try {
    if (!cuda_available()) {
      std::printf("{\"bench\":\"dit_multi_gpu\",\"skipped\":\"no CUDA GPU visible\"}\n");
      return 0;
    }
    comm = launched ? std::shared_ptr<dist::Communicator>(dist::make_nccl_communicator())
                    : std::shared_ptr<dist::Communicator>(dist::make_single_communicator());
    rank = comm->rank();
    S = comm->size();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] setup failed: %s\n", dist::launcher_rank(), e.what());
    std::printf("{\"bench\":\"dit_multi_gpu\",\"error\":\"setup: %s\"}\n", e.what());
    if (launched) dist::abort_all(1);
    return 1;
  }
  const Device dev = launched ? comm->device() : Device::cuda(0);

  std::vector<Case> cases;
  if (models.find("14b") != std::string::npos)
    cases.push_back({"14B", "1280x720x81", model::DiTConfig::wan_14b(), 21, 90, 160});
  if (models.find("1.3b") != std::string::npos)
    cases.push_back({"1.3B", "832x480x81", model::DiTConfig::wan_1_3b(), 21, 60, 104});

  int status = 0;
  for (const Case& c : cases) {
    try {
      const double t_bind = now_ms();
      model::DiT m = model::DiT::bind(c.cfg, random_weights(c.cfg), {dev});
      if (S > 1) comm->barrier();
      const double bind_ms = now_ms() - t_bind;
      Tensor x = random_device({c.cfg.in_dim, c.frames_lat, c.h_lat, c.w_lat}, 7, dev);
      Tensor ctx = random_device({c.cfg.text_len, c.cfg.text_dim}, 8, dev);
      const auto hybrid = sparse::plan_blocks(int(c.cfg.num_layers), "dual_end", 8);
      const auto full = sparse::plan_blocks(int(c.cfg.num_layers), "full", 0);
      struct Mode {
        const char* name;
        const std::vector<sparse::BlockKind>* kinds;
        const char* sp;
      };
      std::vector<Mode> modes;
      if (S == 1) modes = {{"hybrid", &hybrid, "single"}, {"full", &full, "single"}};
      else modes = {{"hybrid+ssp", &hybrid, "ssp"}, {"full+ulysses", &full, "ulysses"}};
      for (const Mode& md : modes) {
        m.set_block_kinds(*md.kinds, 2);
        std::unique_ptr<dist::SequenceParallel> sp;
        if (!std::strcmp(md.sp, "single")) sp = dist::make_single_device();
        else if (!std::strcmp(md.sp, "ssp")) sp = dist::make_ssp(comm);
        else sp = dist::make_ulysses(comm);
        std::vector<double> times;
        uint64_t bytes = 0;
        for (int it = 0; it < warmup + reps; ++it) {
          if (S > 1) comm->barrier();
          sp->reset_bytes();
          const double t0 = now_ms();
          Tensor out = m.forward(x, {900.f}, ctx, *sp);
          cuda_synchronize();
          double ms = now_ms() - t0;
          bytes = sp->bytes_sent();
          if (S > 1) {
            // The slowest rank's time.
            Tensor mine = Tensor::from_vector({float(ms)}, {1}).to(dev);
            Tensor all = Tensor::empty({S}, DType::F32, dev);
            comm->all_gather(mine, all);
            const auto v = all.to_float_vector();
            ms = *std::max_element(v.begin(), v.end());
          }
          if (it >= warmup) times.push_back(ms);
        }
        std::sort(times.begin(), times.end());
        // Correctness on the GPU (1.3B only, cheap): the parallel output against the same
        // model on one device, on every rank (bf16: expect ~1e-2 or better).
        double rel = -1;
        if (S > 1 && c.model == "1.3B") {
          auto single = dist::make_single_device();
          Tensor ref = m.forward(x, {900.f}, ctx, *single);
          Tensor got = m.forward(x, {900.f}, ctx, *sp);
          rel = relative_error(got, ref);
          Tensor mine = Tensor::from_vector({float(rel)}, {1}).to(dev);
          Tensor all = Tensor::empty({S}, DType::F32, dev);
          comm->all_gather(mine, all);
          const auto v = all.to_float_vector();
          rel = *std::max_element(v.begin(), v.end());
        }
        if (rank == 0) {
          std::printf(
              "{\"bench\":\"dit_multi_gpu\",\"card\":\"%s\",\"model\":\"%s\",\"res\":\"%s\","
              "\"mode\":\"%s\",\"gpus\":%d,\"ms\":%.1f,\"ms_min\":%.1f,\"reps\":%d,"
              "\"bytes_sent_per_rank\":%llu,\"peak_gib\":%.2f,\"bind_ms\":%.0f,"
              "\"rel_err_vs_1gpu\":%.3g}\n",
              card().c_str(), c.model.c_str(), c.res.c_str(), md.name, S,
              times[times.size() / 2], times.front(), reps, (unsigned long long)bytes,
              double(cuda_peak_bytes()) / (1024.0 * 1024 * 1024), bind_ms, rel);
          std::fflush(stdout);
        }
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[rank %d] %s %s failed: %s\n", rank, c.model.c_str(), c.res.c_str(),
                   e.what());
      std::printf("{\"bench\":\"dit_multi_gpu\",\"model\":\"%s\",\"gpus\":%d,\"error\":\"%s\"}\n",
                  c.model.c_str(), S, e.what());
      std::fflush(stdout);
      if (S > 1) dist::abort_all(1);  // the other ranks may wait in a collective
      status = 1;
    }
    cuda_empty_cache();
  }
  return status;
}
