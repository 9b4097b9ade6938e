// Step caching (issue 19) on a model folder: for each --cache setting, the same prompts and seeds
// are generated through the loaded pipeline (models loaded once) and compared with the uncached
// run of the same process. One JSON line per setting: steps reused per video, DiT seconds (sum
// over videos), latent drift ‖x − x_ref‖/‖x_ref‖ (mean and max over videos), frames' mean
// |Δ| in levels of 255, the process CPU seconds of the setting's runs (text + DiT + VAE:
// steadier than wall time on a shared CPU; with OMP_NUM_THREADS=1 it is the compute) and their
// wall seconds (what a GPU run reads).
//   bench_step_cache [--model DIR] [--prompts FILE (one caption a line)] [--n N] [--steps S]
//                    [--device cpu|cuda|cuda:N] [--cache SPEC]... (default: teacache:0 0.05 0.1 0.2 0.3)
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "osp/core/log.h"
#include "osp/pipeline/pipeline.h"

using namespace osp;

static double cpu_s() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

int main(int argc, char** argv) {
  std::string model = "models/osp-next-tiny", prompts_file, device = "cpu";
  int n = 8, steps = 30;
  std::vector<std::string> caches;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") model = v;
    else if (a == "--prompts") prompts_file = v;
    else if (a == "--n") n = std::stoi(v);
    else if (a == "--steps") steps = std::stoi(v);
    else if (a == "--device") device = v;
    else if (a == "--cache") caches.push_back(v);
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 1;
    }
  }
  if (caches.empty()) caches = {"teacache:0", "teacache:0.05", "teacache:0.1", "teacache:0.2", "teacache:0.3"};
  std::vector<std::string> prompts;
  if (!prompts_file.empty()) {
    std::ifstream f(prompts_file);
    for (std::string line; std::getline(f, line) && int(prompts.size()) < n;)
      if (!line.empty()) prompts.push_back(line);
  }
  while (int(prompts.size()) < n) prompts.push_back("a red circle moves left on a blue background");
  set_log_level(LogLevel::Warn);
  try {
    pipeline::PipelineOptions po;
    po.device = device;
    pipeline::Pipeline pipe(model, po);
    auto wall_s = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    };
    auto run = [&](const std::string& cache, int i) {
      pipeline::GenerateOptions o;
      o.device = device;
      o.prompt = prompts[size_t(i)];
      o.width = 64, o.height = 64, o.frames = 9, o.steps = steps, o.guidance = 5, o.sampler = "unipc";
      o.seed = 1000 + i;
      o.cache = cache;
      o.no_output = true;
      return pipe.run(pipe.plan(o));
    };
    std::vector<pipeline::GenerateResult> ref;
    double ref_s = 0;
    (void)run("none", 0);  // warm-up (first-touch of the weights)
    const double c0 = cpu_s(), w0 = wall_s();
    for (int i = 0; i < n; ++i) ref.push_back(run("none", i)), ref_s += ref.back().seconds.at("dit");
    const double ref_cpu = cpu_s() - c0, ref_wall = wall_s() - w0;
    std::printf("{\"bench\":\"step_cache\",\"device\":\"%s\",\"cache\":\"none\",\"videos\":%d,\"steps\":%d,"
                "\"reused_per_video\":0,\"dit_s\":%.3f,\"cpu_s\":%.3f,\"wall_s\":%.3f}\n",
                device.c_str(), n, steps, ref_s, ref_cpu, ref_wall);
    for (const std::string& c : caches) {
      double s = 0, drift = 0, drift_max = 0, levels = 0;
      int reused = 0;
      const double c1 = cpu_s(), w1 = wall_s();
      for (int i = 0; i < n; ++i) {
        const auto r = run(c, i);
        s += r.seconds.at("dit");
        reused = r.steps_cached;
        const double d = relative_error(r.latent, ref[size_t(i)].latent);
        drift += d / n, drift_max = std::max(drift_max, d);
        double sum = 0;
        const int64_t m = r.rgb.numel();
        for (int64_t k = 0; k < m; ++k)
          sum += std::abs(int(r.rgb.data<uint8_t>()[k]) - int(ref[size_t(i)].rgb.data<uint8_t>()[k]));
        levels += sum / double(m) / n;
      }
      const double cpu = cpu_s() - c1, wall = wall_s() - w1;
      std::printf("{\"bench\":\"step_cache\",\"device\":\"%s\",\"cache\":\"%s\",\"videos\":%d,\"steps\":%d,"
                  "\"reused_per_video\":%d,\"dit_s\":%.3f,\"cpu_s\":%.3f,\"cpu_speedup\":%.2f,\"wall_s\":%.3f,"
                  "\"wall_speedup\":%.2f,\"latent_drift_mean\":%.4f,\"latent_drift_max\":%.4f,"
                  "\"frames_mean_abs_levels\":%.2f}\n",
                  device.c_str(), c.c_str(), n, steps, reused, s, cpu, ref_cpu / cpu, wall, ref_wall / wall, drift,
                  drift_max, levels);
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_step_cache: %s\n", e.what());
    return 1;
  }
  return 0;
}
