// Multi-GPU DiT forward: ms per forward of the real model (model::DiT with random bf16 weights
// at the released shapes) for
//   * 1 process:              hybrid (dual-end Skiparse, single device) and full (Wan2.1);
//   * mpirun -np S (S = 2, 4): hybrid + SSP (parallel::make_ssp) and full + Ulysses (make_ulysses),
// over NCCL (one process per GPU; scripts/gpu-multi.sh restricts every rank to its own GPU with
// CUDA_VISIBLE_DEVICES). Models: 14B at 1280×720×81 and 1.3B at 832×480×81, B = 1 (one CFG
// branch), text context 512 rows.
//
// Timing: barrier, forward, device sync; wall time of the slowest rank; median of --reps after
// --warmup. Prints JSON lines (rank 0; scripts/gpu-multi.sh makes the table). For 1.3B on
// several GPUs it also reports the largest relative error of the parallel output against the
// single-device forward of the same model (rel_err_vs_1gpu; -1 where not checked).
// enqueue_ms (median): how long the host took to return from forward(), before the sync — far
// below ms means the host ran ahead of the GPU (no host sync inside the forward, launch cost
// hidden behind the GPU's work; what a CUDA graph could still remove is the GPU-side gap between
// kernels, scripts/gpu-idle.sh).
// --kernel-gaps (1 process, builds with the toolkit's CUPTI): one more forward per mode under
// CUPTI's activity records (kernels, copies, memsets): "kernel_gaps" lines with the operations,
// the span from the first start to the last end, the GPU busy time (union of the intervals), idle
// = span − busy and the median / 90th-percentile gap — the most a CUDA graph of the forward could
// remove. (Recording adds a little to each launch; the gaps are an upper bound.)
// --models also takes "tiny": the shipped OSP-Next-Tiny shapes (dim 128, 8 blocks, 4 full,
// 64×64×9: 48 tokens), random weights, where launches rather than arithmetic set the time.
// FP8 (1 process only, with --modes): "hybrid+fp8" / "full+fp8" run model::DiTQuant::FP8 (E4M3
// cuBLASLt GEMMs for every block linear, HiF8 weights quantized at bind) on the same random
// weights; the bf16 model is released before the FP8 model is bound (peak_gib is reset per
// model). rel_err_vs_1gpu of an fp8 mode (1.3B) is its output against the bf16 model's output
// for the same attention plan (-1 when that bf16 mode did not run).
// --profile (or OSP_PROFILE=1): the DiT's stage timers (model/profile.h: CUDA events, no sync
// inside the forward) over the timed reps; after each mode's line, one JSON line per
// (stage, block kind) with ms per forward on every rank ("ms_per_rank"), rank 0's, the slowest
// rank's (the rank with the largest total) and the largest over ranks, then a text table
// (lines starting with '#'). The stages tile the forward, so their sum is the event-timed
// forward ("total" line).
// "+graph" after a 1-process mode (hybrid+graph, full+fp8+graph) runs it with the DiT's CUDA
// graph (DiTOptions::cuda_graphs; at least 2 warm-up forwards: the first runs eagerly, the second
// captures): "forward_mode" says how the last forward ran, and "max_abs_diff_vs_eager" compares
// its output with the same mode's eager output of this run (-1: that mode did not run first).
//   bench_dit_multi_gpu [--models 14b,1.3b] [--modes hybrid,full,hybrid+fp8,full+fp8]
//                       [--reps 3] [--warmup 1] [--quick] [--profile]
// Default --modes: hybrid,full (1 process) / hybrid+ssp,full+ulysses (mpirun).
#include <algorithm>
#include <chrono>
#include <cmath>
#ifdef OSP_HAVE_CUPTI
#include <cupti.h>

#include <cstdlib>
#include <mutex>
#endif
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"
#include "osp/model/profile.h"
#include "osp/sparse/skiparse.h"
#include "dit_weights.h"
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace osp;

namespace {

struct Case {
  std::string model, res;
  model::DiTConfig cfg;
  int64_t frames_lat, h_lat, w_lat;  // latent grid (81 frames → 21)
  int num_full = 8;                  // full blocks of the hybrid (dual-end) plan
};

// The shipped OSP-Next-Tiny's shapes (models/osp-next-tiny/config.json).
model::DiTConfig tiny_config() {
  model::DiTConfig c;
  c.dim = 128, c.ffn_dim = 512, c.num_heads = 2, c.num_layers = 8;
  c.text_dim = 64, c.text_len = 64, c.freq_dim = 256;
  return c;
}

#ifdef OSP_HAVE_CUPTI
// CUPTI activity records → [start, end) ns intervals of every kernel, copy and memset.
namespace gaps {
std::mutex mu;
std::vector<std::pair<uint64_t, uint64_t>> spans;

void CUPTIAPI request(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t(16) << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}
void CUPTIAPI complete(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(mu);
  CUpti_Activity* r = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
      spans.push_back({k->start, k->end});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
      spans.push_back({m->start, m->end});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
      spans.push_back({m->start, m->end});
    }
  }
  std::free(buffer);
}
const CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                     CUPTI_ACTIVITY_KIND_MEMSET};
// Throws on a CUPTI error (e.g. another profiler holds it).
void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  throw std::runtime_error(std::string(what) + ": " + (s ? s : "CUPTI error"));
}
void start() {
  static bool registered = false;
  if (!registered) check(cuptiActivityRegisterCallbacks(request, complete), "cuptiActivityRegisterCallbacks");
  registered = true;
  std::lock_guard<std::mutex> lock(mu);
  spans.clear();
  for (auto k : kKinds) check(cuptiActivityEnable(k), "cuptiActivityEnable");
}
struct Report {
  size_t ops = 0;
  double span_ms = 0, busy_ms = 0, median_gap_us = 0, p90_gap_us = 0;
};
Report stop() {
  check(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
  for (auto k : kKinds) cuptiActivityDisable(k);
  std::lock_guard<std::mutex> lock(mu);
  Report rep;
  auto v = spans;
  spans.clear();
  if (v.empty()) return rep;
  std::sort(v.begin(), v.end());
  uint64_t busy = 0, cs = v[0].first, ce = v[0].second;
  std::vector<uint64_t> gap;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i].first > ce) {
      busy += ce - cs;
      gap.push_back(v[i].first - ce);
      cs = v[i].first, ce = v[i].second;
    } else {
      ce = std::max(ce, v[i].second);
    }
  }
  busy += ce - cs;  // (ce is now the last end: merged groups are disjoint and in order)
  std::sort(gap.begin(), gap.end());
  rep.ops = v.size();
  rep.span_ms = double(ce - v[0].first) * 1e-6;
  rep.busy_ms = double(busy) * 1e-6;
  if (!gap.empty()) {
    rep.median_gap_us = double(gap[gap.size() / 2]) * 1e-3;
    rep.p90_gap_us = double(gap[gap.size() * 9 / 10]) * 1e-3;
  }
  return rep;
}
}  // namespace gaps
#endif

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

// Per-stage table of one mode: every rank's ms per forward (gathered over comm), printed by
// rank 0 as JSON lines and a text table.
void print_profile(const model::ProfileReport& mine, parallel::Communicator* comm, int S, Device dev,
                   const std::string& card_name, const std::string& model_name,
                   const std::string& res, const char* mode) {
  const int slots = model::kProfSlots;
  std::vector<float> flat(size_t(slots) + 1);
  const auto fm = mine.flat_ms();
  for (int i = 0; i < slots; ++i) flat[size_t(i)] = float(fm[size_t(i)]);
  flat[size_t(slots)] = float(mine.total_ms);
  std::vector<float> all = flat;  // [S, slots + 1]
  if (S > 1) {
    Tensor t = Tensor::from_vector(flat, {int64_t(flat.size())}).to(dev);
    Tensor a = Tensor::empty({int64_t(S) * int64_t(flat.size())}, DType::F32, dev);
    comm->all_gather(t, a);
    all = a.to_float_vector();
  }
  if (comm->rank() != 0) return;
  const size_t w = flat.size();
  auto at = [&](int r, int slot) { return double(all[size_t(r) * w + size_t(slot)]); };
  int slow = 0;
  for (int r = 1; r < S; ++r)
    if (at(r, slots) > at(slow, slots)) slow = r;
  std::string table;
  char line[256];
  std::snprintf(line, sizeof line,
                "# profile %s %s %s, %d GPU(s), %lld forward(s) per rank, ms per forward\n",
                model_name.c_str(), res.c_str(), mode, S, (long long)mine.forwards);
  table += line;
  std::snprintf(line, sizeof line, "# %-16s %-7s %10s %12s %10s %10s %8s\n", "stage", "blocks",
                "rank0", "slowest(r)", "max", "min", "laps");
  table += line;
  auto emit = [&](const char* stage, const char* kind, int slot, double laps) {
    double mx = at(0, slot), mn = at(0, slot);
    std::string per;
    for (int r = 0; r < S; ++r) {
      mx = std::max(mx, at(r, slot));
      mn = std::min(mn, at(r, slot));
      char v[32];
      std::snprintf(v, sizeof v, "%s%.3f", r ? "," : "", at(r, slot));
      per += v;
    }
    std::printf(
        "{\"bench\":\"dit_multi_gpu_profile\",\"card\":\"%s\",\"model\":\"%s\",\"res\":\"%s\","
        "\"mode\":\"%s\",\"gpus\":%d,\"stage\":\"%s\",\"blocks\":\"%s\",\"laps_per_forward\":%.1f,"
        "\"ms_rank0\":%.3f,\"ms_slowest_rank\":%.3f,\"slowest_rank\":%d,\"ms_max\":%.3f,"
        "\"ms_min\":%.3f,\"ms_per_rank\":[%s]}\n",
        card_name.c_str(), model_name.c_str(), res.c_str(), mode, S, stage, kind, laps, at(0, slot),
        at(slow, slot), slow, mx, mn, per.c_str());
    char rs[32];
    std::snprintf(rs, sizeof rs, "%.2f(%d)", at(slow, slot), slow);
    std::snprintf(line, sizeof line, "# %-16s %-7s %10.2f %12s %10.2f %10.2f %8.1f\n", stage, kind,
                  at(0, slot), rs, mx, mn, laps);
    table += line;
  };
  for (const auto& row : mine.rows)
    emit(model::prof_stage_name(row.stage), model::prof_kind_name(row.kind),
         int(row.stage) * model::kProfKinds + int(row.kind), row.calls);
  emit("total", "-", slots, 0);
  std::printf("%s", table.c_str());
  std::fflush(stdout);
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
  std::string models = "14b,1.3b", modes_arg;
  int reps = 3, warmup = 1;
  bool profile = false, kernel_gaps = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--models") && i + 1 < argc) models = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = std::max(0, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--modes") && i + 1 < argc) modes_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) models = "1.3b", reps = 1, warmup = 1;
    else if (!std::strcmp(argv[i], "--profile")) profile = true;
    else if (!std::strcmp(argv[i], "--kernel-gaps")) kernel_gaps = true;
    else {
      std::fprintf(stderr,
                   "usage: %s [--models 14b,1.3b,tiny] [--modes hybrid,full,hybrid+fp8,full+fp8 | "
                   "hybrid+ssp,full+ulysses] [--reps N] [--warmup N] [--quick] [--profile] [--kernel-gaps]\n",
                   argv[0]);
      return 2;
    }
  }
  const bool launched = parallel::launcher_size() > 1;
  std::shared_ptr<parallel::Communicator> comm;
  int rank = 0, S = 1;
  try {
    if (!cuda_available()) {
      std::printf("{\"bench\":\"dit_multi_gpu\",\"skipped\":\"no CUDA GPU visible\"}\n");
      return 0;
    }
    comm = launched ? std::shared_ptr<parallel::Communicator>(parallel::make_nccl_communicator())
                    : std::shared_ptr<parallel::Communicator>(parallel::make_single_communicator());
    rank = comm->rank();
    S = comm->size();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] setup failed: %s\n", parallel::launcher_rank(), e.what());
    std::printf("{\"bench\":\"dit_multi_gpu\",\"error\":\"setup: %s\"}\n", e.what());
    if (launched) parallel::abort_all(1);
    return 1;
  }
  const Device dev = launched ? comm->device() : Device::cuda(0);

  std::vector<Case> cases;
  if (models.find("14b") != std::string::npos)
    cases.push_back({"14B", "1280x720x81", model::DiTConfig::wan_14b(), 21, 90, 160});
  if (models.find("1.3b") != std::string::npos)
    cases.push_back({"1.3B", "832x480x81", model::DiTConfig::wan_1_3b(), 21, 60, 104});
  if (models.find("tiny") != std::string::npos) cases.push_back({"tiny", "64x64x9", tiny_config(), 3, 8, 8, 4});
#ifndef OSP_HAVE_CUPTI
  if (kernel_gaps && rank == 0)
    std::fprintf(stderr, "%s: --kernel-gaps needs CUPTI, which this build did not find (CUDA::cupti)\n", argv[0]);
#endif

  // Modes: name, attention plan, sequence-parallel layer, quantization.
  struct Mode {
    const char* name;
    bool hybrid;
    const char* sp;
    model::DiTQuant quant;
    bool graph = false;  // "+graph": DiTOptions::cuda_graphs
    std::string label;   // the name asked for (with "+graph")
  };
  const std::vector<Mode> all_modes = {
      {"hybrid", true, "single", model::DiTQuant::None},
      {"full", false, "single", model::DiTQuant::None},
      {"hybrid+fp8", true, "single", model::DiTQuant::FP8},
      {"full+fp8", false, "single", model::DiTQuant::FP8},
      {"hybrid+ssp", true, "ssp", model::DiTQuant::None},
      {"full+ulysses", false, "ulysses", model::DiTQuant::None}};
  std::vector<Mode> modes;
  {
    std::vector<std::string> want;
    if (modes_arg.empty()) {
      want = S == 1 ? std::vector<std::string>{"hybrid", "full"}
                    : std::vector<std::string>{"hybrid+ssp", "full+ulysses"};
    } else {
      size_t p = 0;
      while (p <= modes_arg.size()) {
        const size_t q = std::min(modes_arg.find(',', p), modes_arg.size());
        if (q > p) want.push_back(modes_arg.substr(p, q - p));
        p = q + 1;
      }
    }
    for (const std::string& asked : want) {
      const std::string suffix = "+graph";
      const bool graph = asked.size() > suffix.size() && asked.compare(asked.size() - suffix.size(), suffix.size(), suffix) == 0;
      const std::string w = graph ? asked.substr(0, asked.size() - suffix.size()) : asked;
      const Mode* found = nullptr;
      for (const Mode& md : all_modes)
        if (w == md.name) found = &md;
      const bool fits = found && ((S == 1) == !std::strcmp(found->sp, "single")) && (!graph || S == 1);
      if (!fits) {
        if (rank == 0)
          std::fprintf(stderr,
                       "%s: mode '%s' is %s (1 process: hybrid, full, hybrid+fp8, full+fp8, each "
                       "optionally +graph; mpirun: hybrid+ssp, full+ulysses)\n",
                       argv[0], asked.c_str(), found ? "not available with this process count" : "unknown");
        if (launched) parallel::abort_all(2);
        return 2;
      }
      modes.push_back(*found);
      modes.back().graph = graph;
      modes.back().label = asked;
    }
  }

  int status = 0;
  for (const Case& c : cases) {
    try {
      Tensor x = random_device({c.cfg.in_dim, c.frames_lat, c.h_lat, c.w_lat}, 7, dev);
      Tensor ctx = random_device({c.cfg.text_len, c.cfg.text_dim}, 8, dev);
      const auto hybrid = sparse::plan_blocks(int(c.cfg.num_layers), "dual_end", c.num_full);
      const auto full = sparse::plan_blocks(int(c.cfg.num_layers), "full", 0);
      std::map<bool, Tensor> bf16_out;  // 1 process: the bf16 output per plan (hybrid?), host
      std::map<std::string, Tensor> eager_out;  // 1 process: each eager mode's output, host
      // One model per quantization (bf16 first), released before the next one is bound.
      for (model::DiTQuant quant : {model::DiTQuant::None, model::DiTQuant::FP8}) {
        bool any = false;
        for (const Mode& md : modes) any |= md.quant == quant;
        if (!any) continue;
        if (quant != model::DiTQuant::None) {
          cuda_empty_cache();
          cuda_reset_peak();
        }
        const double t_bind = now_ms();
        model::DiTOptions opt{dev};
        opt.quant = quant;
        model::DiT m = model::DiT::bind(c.cfg, bench::random_dit_weights(c.cfg), opt);
        if (profile) m.set_profiling(true);
        if (S > 1) comm->barrier();
        const double bind_ms = now_ms() - t_bind;
        for (const Mode& md : modes) {
          if (md.quant != quant) continue;
          m.set_block_kinds(md.hybrid ? hybrid : full, 2);
          m.set_cuda_graphs(md.graph);
          const int warm = md.graph ? std::max(warmup, 2) : warmup;  // eager, capture, then replays
          std::unique_ptr<parallel::SequenceParallel> sp;
          if (!std::strcmp(md.sp, "single")) sp = parallel::make_single_device();
          else if (!std::strcmp(md.sp, "ssp")) sp = parallel::make_ssp(comm);
          else sp = parallel::make_ulysses(comm);
          std::vector<double> times, enqueue;
          uint64_t bytes = 0;
          Tensor out;
          for (int it = 0; it < warm + reps; ++it) {
            if (it == warm) m.profile_reset();  // profile the timed reps only
            if (S > 1) comm->barrier();
            sp->reset_bytes();
            const double t0 = now_ms();
            out = m.forward(x, {900.f}, ctx, *sp);
            const double enq = now_ms() - t0;  // host back from forward(), GPU maybe still busy
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
            if (it >= warm) times.push_back(ms), enqueue.push_back(enq);
          }
          std::sort(times.begin(), times.end());
          std::sort(enqueue.begin(), enqueue.end());
          const model::ProfileReport prof = m.profile_report();  // before the checks below
          // Correctness on the GPU (1.3B only, cheap): the parallel output against the same
          // model on one device, on every rank (bf16: expect ~1e-2 or better).
          double rel = -1;
          if (S > 1 && c.model == "1.3B") {
            auto single = parallel::make_single_device();
            Tensor ref = m.forward(x, {900.f}, ctx, *single);
            Tensor got = m.forward(x, {900.f}, ctx, *sp);
            rel = relative_error(got, ref);
            Tensor mine = Tensor::from_vector({float(rel)}, {1}).to(dev);
            Tensor all = Tensor::empty({S}, DType::F32, dev);
            comm->all_gather(mine, all);
            const auto v = all.to_float_vector();
            rel = *std::max_element(v.begin(), v.end());
          }
          if (S == 1 && c.model == "1.3B") {
            // FP8 against the bf16 model of the same plan (the HiF8 perturbation + FP8 GEMMs).
            if (quant == model::DiTQuant::None) bf16_out[md.hybrid] = out.to(Device::cpu());
            else if (bf16_out.count(md.hybrid))
              rel = relative_error(out.to(Device::cpu()), bf16_out[md.hybrid]);
          }
          double graph_diff = -1;
          if (S == 1) {
            if (!md.graph) {
              eager_out[md.name] = out.to(Device::cpu());
            } else if (eager_out.count(md.name)) {
              const auto a = out.to(Device::cpu()).to_float_vector(), b = eager_out[md.name].to_float_vector();
              graph_diff = 0;
              for (size_t i = 0; i < a.size(); ++i) graph_diff = std::max(graph_diff, double(std::fabs(a[i] - b[i])));
            }
          }
          out = Tensor();
          if (rank == 0) {
            std::printf(
                "{\"bench\":\"dit_multi_gpu\",\"card\":\"%s\",\"model\":\"%s\",\"res\":\"%s\","
                "\"mode\":\"%s\",\"gpus\":%d,\"ms\":%.3f,\"ms_min\":%.3f,\"reps\":%d,"
                "\"bytes_sent_per_rank\":%llu,\"peak_gib\":%.2f,\"bind_ms\":%.0f,"
                "\"rel_err_vs_1gpu\":%.3g,\"enqueue_ms\":%.3f,\"profiled\":%s,\"forward_mode\":\"%s\","
                "\"max_abs_diff_vs_eager\":%.3g}\n",
                card().c_str(), c.model.c_str(), c.res.c_str(), md.label.c_str(), S,
                times[times.size() / 2], times.front(), reps, (unsigned long long)bytes,
                double(cuda_peak_bytes()) / (1024.0 * 1024 * 1024), bind_ms, rel,
                enqueue[enqueue.size() / 2], m.profiling() ? "true" : "false", m.last_forward_mode().c_str(),
                graph_diff);
            std::fflush(stdout);
          }
          if (m.profiling())
            print_profile(prof, comm.get(), S, dev, card(), c.model, c.res, md.label.c_str());
#ifdef OSP_HAVE_CUPTI
          if (kernel_gaps && S == 1) {
            // One more forward under CUPTI's activity records (the host waits for the GPU first).
            const bool was = m.profiling();
            m.set_profiling(false);  // no profiler events in the measured forward
            cuda_synchronize();
            gaps::start();
            Tensor o2 = m.forward(x, {900.f}, ctx, *sp);
            cuda_synchronize();
            const gaps::Report g = gaps::stop();
            m.set_profiling(was);
            std::printf(
                "{\"bench\":\"kernel_gaps\",\"card\":\"%s\",\"model\":\"%s\",\"res\":\"%s\",\"mode\":\"%s\","
                "\"ops\":%zu,\"span_ms\":%.3f,\"busy_ms\":%.3f,\"idle_ms\":%.3f,\"idle_pct\":%.2f,"
                "\"median_gap_us\":%.2f,\"p90_gap_us\":%.2f}\n",
                card().c_str(), c.model.c_str(), c.res.c_str(), md.label.c_str(), g.ops, g.span_ms, g.busy_ms,
                g.span_ms - g.busy_ms, g.span_ms > 0 ? 100.0 * (g.span_ms - g.busy_ms) / g.span_ms : 0.0,
                g.median_gap_us, g.p90_gap_us);
            std::fflush(stdout);
          }
#endif
        }
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[rank %d] %s %s failed: %s\n", rank, c.model.c_str(), c.res.c_str(),
                   e.what());
      std::printf("{\"bench\":\"dit_multi_gpu\",\"model\":\"%s\",\"gpus\":%d,\"error\":\"%s\"}\n",
                  c.model.c_str(), S, e.what());
      std::fflush(stdout);
      if (S > 1) parallel::abort_all(1);  // the other ranks may wait in a collective
      status = 1;
    }
    cuda_empty_cache();
  }
  return status;
}
