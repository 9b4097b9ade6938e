// `osp serve`: the loaded pipeline behind a small JSON HTTP API and a web page (cpp-httplib).
//
//   POST   /v1/generations              submit; body = pipeline/request.h settings (no "out");
//                                       202 {"id", "status": "queued", ...}
//   GET    /v1/generations              every job's status
//   GET    /v1/generations/{id}         status, stage, step/steps, progress, eta_s, seed, error
//   GET    /v1/generations/{id}/events  server-sent events: "progress" while it runs, then one
//                                       of "succeeded" / "failed" / "cancelled" (and the stream ends)
//   GET    /v1/generations/{id}/video   the MP4 (video/mp4) once succeeded (409 before). A build
//                                       without FFmpeg keeps PNG frames instead: /video answers 404
//                                       and GET .../frames/{n} serves frame n (image/png).
//   DELETE /v1/generations/{id}         cancel: a queued job at once, a running one at its next
//                                       safe point (nothing is written); 409 when already finished
//   GET    /v1/health                   {"status": "ok", "model", "queued", "running"}
//   GET    /                            the web page (prompt, settings, live progress, the video)
//
// Every error is JSON {"error": "..."} with a 4xx code: 400 malformed JSON, unknown field, bad
// or over-limit settings; 401 missing/wrong token; 404 unknown job or path; 409 wrong state;
// 413 body over max_body; 429 queue full. Jobs run one at a time, in order, on one pipeline.
// With a token every /v1 request needs "Authorization: Bearer TOKEN" (or ?token=TOKEN, for
// EventSource); a host other than loopback requires a token.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "osp/pipeline/pipeline.h"

namespace osp::pipeline {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (see Server::port)
  std::string token;             // "" = none (loopback only)
  std::string out_dir = "osp-serve-output";  // finished videos: <out_dir>/<id>.mp4 (or <id>/ PNGs)
  int queue = 8;                 // queued jobs (besides the running one); more → 429
  int max_width = 1280, max_height = 1280;  // per side
  int64_t max_pixels = 1280 * 720;          // width × height
  int max_frames = 81, max_steps = 50;
  size_t max_body = 64 * 1024;   // bytes of a request body
  GenerateOptions defaults;      // settings a request does not give (size, frames, steps, ...)
};

// Returns true for loopback addresses (127.0.0.0/8, ::1, localhost).
bool is_loopback_host(const std::string& host);

class Server {
 public:
  // Checks the options (a token for a non-loopback host, limits) and creates out_dir.
  Server(Pipeline& pipe, const ServerOptions& opt);
  ~Server();  // stop()
  // Binds (throws osp::Error if it cannot) and returns the port.
  int bind();
  // Serves until stop(); call after bind().
  void serve();
  // Cancels the running job at its next safe point and every queued job, stops listening and
  // waits for the worker. Safe to call from another thread, more than once.
  void stop();
  int port() const;
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The web page served at "/".
const char* server_page_html();

}  // namespace osp::pipeline
