// `osp serve`: the loaded pipeline behind an HTTP API and a web page (pipeline/server.h).
// SIGTERM / SIGINT: the running job stops at its next safe point (nothing is written), queued
// jobs are cancelled, the server stops listening and osp exits 0. A second signal exits at once.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "osp/cli/run_command.h"
#include "osp/cli/serve_command.h"
#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/pipeline/server.h"

namespace osp::cli {

namespace {

std::atomic<int> g_signals{0};

extern "C" void osp_serve_on_signal(int) {
  if (g_signals.fetch_add(1) >= 1) {
    const char msg[] = "\nosp serve: second signal, exiting at once\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(1);
  }
  set_interrupted(true);  // an atomic store: the running job (or the model load) stops at its next safe point
  const char msg[] = "\nosp serve: shutting down (the running job stops at its next safe point)\n";
  (void)!::write(2, msg, sizeof msg - 1);
}

struct ServeArgs {
  std::string model, device = "cpu", quant = "none", host = "127.0.0.1", token, out_dir = "osp-serve-output";
  std::string max_size = "1280x720", size = "832x480";
  std::vector<std::string> loras;
  int port = 8080, queue = 8, max_frames = 81, max_steps = 50, frames = 33, steps = 30;
  size_t max_body_kb = 64;
  bool offload = false;
  std::string dit_offload = "auto";
  double max_vram = 0;
};

void serve(const ServeArgs& a) {
  pipeline::ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.token = a.token;
  if (so.token.empty())
    if (const char* t = std::getenv("OSP_SERVE_TOKEN")) so.token = t;
  so.out_dir = a.out_dir;
  so.queue = a.queue;
  int mw = 0, mh = 0;
  pipeline::parse_size(a.max_size, mw, mh);
  so.max_width = so.max_height = std::max(mw, mh);  // either orientation
  so.max_pixels = int64_t(mw) * mh;
  so.max_frames = a.max_frames;
  so.max_steps = a.max_steps;
  so.max_body = a.max_body_kb * 1024;
  pipeline::parse_size(a.size, so.defaults.width, so.defaults.height);
  so.defaults.frames = a.frames;
  so.defaults.steps = a.steps;
  OSP_CHECK(pipeline::is_loopback_host(so.host) || !so.token.empty(), "--host ", so.host,
            " makes the server reachable from other machines: give --token TOKEN (or OSP_SERVE_TOKEN), "
            "or keep the default --host 127.0.0.1");

  pipeline::PipelineOptions po;
  po.device = a.device;
  po.quant = a.quant;
  po.offload = a.offload;
  po.dit_offload = a.dit_offload;
  po.max_vram_gib = a.max_vram;
  po.loras = a.loras;
  po.keep_loaded = true;
  // The signal handlers first: a SIGTERM while the models load stops the load.
  struct sigaction sa {};
  sa.sa_handler = osp_serve_on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  pipeline::Pipeline pipe(a.model, po);
  log_info("loading ", a.model, " on ", a.device);
  try {
    pipe.preload();
  } catch (const Interrupted&) {
    std::fprintf(stderr, "osp serve: stopped while loading the model\n");
    return;
  }
  if (g_signals.load()) return;
  pipeline::Server server(pipe, so);
  const int port = server.bind();
  std::fprintf(stderr, "osp serve: listening on http://%s:%d/ (model %s, device %s%s)\n",
               so.host.find(':') != std::string::npos ? ("[" + so.host + "]").c_str() : so.host.c_str(), port,
               a.model.c_str(), a.device.c_str(), so.token.empty() ? "" : ", token required");
  std::fflush(stderr);
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done.load() && g_signals.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (g_signals.load()) server.stop();
  });
  server.serve();
  done = true;
  watcher.join();
  server.stop();
  set_interrupted(false);
  std::fprintf(stderr, "osp serve: stopped\n");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "HTTP API and web page over a loaded model (see docs/USAGE.md)");
  cmd->add_option("-m,--model", a->model, "model folder")->required();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--quant", a->quant, "none | hif8 | fp8")->capture_default_str();
  cmd->add_flag("--offload", a->offload, "text encoder on the CPU");
  cmd->add_option("--dit-offload", a->dit_offload, "DiT weights: none | blocks (streamed) | auto (the memory plan)")
      ->capture_default_str();
  cmd->add_option("--max-vram", a->max_vram, "GPU memory limit in GiB (plan and allocator; 0 = none)");
  cmd->add_option("--lora", a->loras, "LoRA FILE[:SCALE] merged into the DiT (repeatable)");
  cmd->add_option("--host", a->host, "address to bind (other than loopback needs --token)")->capture_default_str();
  cmd->add_option("--port", a->port, "TCP port (0 = any free port, printed)")->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--token", a->token, "require Authorization: Bearer TOKEN (default $OSP_SERVE_TOKEN)");
  cmd->add_option("--out-dir", a->out_dir, "folder for finished videos")->capture_default_str();
  cmd->add_option("--queue", a->queue, "jobs waiting besides the running one (more: 429)")->capture_default_str()
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--max-size", a->max_size, "largest WxH a request may ask for (either orientation)")
      ->capture_default_str();
  cmd->add_option("--max-frames", a->max_frames, "most frames a request may ask for")->capture_default_str()
      ->check(CLI::Range(1, 1001));
  cmd->add_option("--max-steps", a->max_steps, "most steps a request may ask for")->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--max-body-kb", a->max_body_kb, "largest request body")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--size", a->size, "default size of a request")->capture_default_str();
  cmd->add_option("--frames", a->frames, "default frames of a request")->capture_default_str();
  cmd->add_option("--steps", a->steps, "default steps of a request")->capture_default_str();
  cmd->callback([cmd, a] {
    run_command(*cmd, [&] {
      serve(*a);
      return 0;
    });
  });
}

}  // namespace osp::cli
