#include "osp/pipeline/server.h"

#ifdef OSP_HAVE_HTTPLIB
#include <httplib.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/io/image_writer.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/request.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace osp::pipeline {

bool is_loopback_host(const std::string& h) {
  return h == "localhost" || h == "::1" || h == "[::1]" || h.rfind("127.", 0) == 0;
}

#ifndef OSP_HAVE_HTTPLIB

struct Server::Impl {};
Server::Server(Pipeline&, const ServerOptions&) {
  fail("this osp was built without cpp-httplib, so it has no server: install libcpp-httplib-dev "
       "(scripts/install-deps.sh) and reconfigure");
}
Server::~Server() = default;
int Server::bind() { return 0; }
void Server::serve() {}
void Server::stop() {}
int Server::port() const { return 0; }

#else

namespace {

using Clock = std::chrono::steady_clock;

enum class State { Queued, Running, Succeeded, Failed, Cancelled };
const char* state_name(State s) {
  switch (s) {
    case State::Queued: return "queued";
    case State::Running: return "running";
    case State::Succeeded: return "succeeded";
    case State::Failed: return "failed";
    case State::Cancelled: return "cancelled";
  }
  return "?";
}
bool terminal(State s) { return s == State::Succeeded || s == State::Failed || s == State::Cancelled; }

struct Job {
  std::string id;
  Plan plan;
  State state = State::Queued;
  std::atomic<bool> cancel{false};
  std::string stage;
  int step = 0, steps = 0;
  double eta_s = -1;
  std::string error;
  std::string out;     // the output path once written
  std::string poster;  // MP4 jobs with libpng: the first frame as PNG (<out stem>.poster.png), else empty
  Clock::time_point created, started, finished;
  uint64_t version = 0;  // bumped on every change (events wait on it)
};

std::string random_id() {
  static std::mutex m;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(m);
  char buf[20];
  std::snprintf(buf, sizeof buf, "%012llx", (unsigned long long)(rng() & 0xffffffffffffull));
  return buf;
}

void json_error(httplib::Response& res, int status, const std::string& msg) {
  res.status = status;
  res.set_content(json{{"error", msg}}.dump(), "application/json");
}

}  // namespace

struct Server::Impl {
  Pipeline& pipe;
  ServerOptions opt;
  httplib::Server http;
  int port = 0;
  bool png = false;  // no FFmpeg: outputs are PNG folders

  std::mutex m;
  std::condition_variable cv;  // any job change, or stopping
  std::map<std::string, std::shared_ptr<Job>> jobs;
  std::vector<std::string> order;  // submission order (for the list)
  std::deque<std::shared_ptr<Job>> queue;
  std::shared_ptr<Job> running;
  bool stopping = false;
  std::thread worker;

  Impl(Pipeline& p, const ServerOptions& o) : pipe(p), opt(o) {}

  double secs(Clock::time_point a, Clock::time_point b) const { return std::chrono::duration<double>(b - a).count(); }

  json status_json(const Job& j) const {  // m held
    const auto now = Clock::now();
    const GenerateOptions& o = j.plan.opt;
    json s = {{"id", j.id},
              {"status", state_name(j.state)},
              {"stage", j.stage},
              {"step", j.step},
              {"steps", j.steps},
              {"progress", j.state == State::Succeeded ? 1.0 : j.steps > 0 ? double(j.step) / j.steps : 0.0},
              {"eta_s", j.eta_s},
              {"elapsed_s", j.state == State::Queued ? 0.0
                            : terminal(j.state)      ? secs(j.started, j.finished)
                                                     : secs(j.started, now)},
              {"queue_position", 0},
              {"settings",
               {{"prompt", o.prompt}, {"seed", o.seed}, {"size", std::to_string(o.width) + "x" + std::to_string(o.height)},
                {"frames", o.frames}, {"steps", o.steps}, {"sampler", o.sampler}, {"shift", o.shift},
                {"guidance", o.guidance}, {"attention", o.attention}, {"fps", o.fps}, {"cache", o.cache}}}};
    if (j.state == State::Queued) {
      int pos = 1;
      for (const auto& q : queue) {
        if (q.get() == &j) break;
        ++pos;
      }
      s["queue_position"] = pos;
    }
    if (!j.error.empty()) s["error"] = j.error;
    if (j.state == State::Succeeded) {
      if (png) s["frames_url"] = "/v1/generations/" + j.id + "/frames/0";
      else s["video_url"] = "/v1/generations/" + j.id + "/video";
      if (!j.poster.empty()) s["poster_url"] = "/v1/generations/" + j.id + "/poster";
    }
    return s;
  }

  // The first frame of an MP4 job as a PNG beside it (the page's <video poster>: shown before the
  // video's first frame is decoded). Best effort: no libpng, no frames or a write error give none.
  std::string write_poster(const std::string& out, const Tensor& rgb) {
    if (png || !io::png_available() || !rgb.defined() || rgb.dim() != 4 || rgb.size(0) < 1) return "";
    try {
      const std::string path = (fs::path(out).parent_path() / (fs::path(out).stem().string() + ".poster.png")).string();
      const Tensor first = rgb.select(0, 0).contiguous();
      io::write_png(path, first.data<uint8_t>(), int(first.size(1)), int(first.size(0)));
      return path;
    } catch (const Error& e) {
      log_info("no poster image for ", out, ": ", e.what());
      return "";
    }
  }

  void touch(Job& j) {  // m held
    ++j.version;
    cv.notify_all();
  }

  bool authorized(const httplib::Request& req) const {
    if (opt.token.empty()) return true;
    if (req.get_header_value("Authorization") == "Bearer " + opt.token) return true;
    return req.has_param("token") && req.get_param_value("token") == opt.token;
  }

  std::shared_ptr<Job> find(const std::string& id) {  // m held
    auto it = jobs.find(id);
    return it == jobs.end() ? nullptr : it->second;
  }

  // ---- the worker: one job at a time, in order
  void work() {
    for (;;) {
      std::shared_ptr<Job> j;
      {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        j = queue.front();
        queue.pop_front();
        running = j;
        j->state = State::Running;
        j->started = Clock::now();
        j->stage = "starting";
        touch(*j);
      }
      RunHooks hooks;
      hooks.cancelled = [j] { return j->cancel.load(); };
      hooks.on_progress = [this, j](const ProgressEvent& e) {
        std::lock_guard<std::mutex> lock(m);
        j->stage = e.stage;
        if (e.stage == "sampling") j->step = e.step;
        j->eta_s = e.eta_s;
        touch(*j);
      };
      State end = State::Failed;
      std::string error, out, poster;
      try {
        const GenerateResult r = pipe.run(j->plan, hooks);
        if (r.interrupted) {
          end = State::Cancelled;
          error = r.cancelled ? "cancelled during " + r.interrupted_stage
                              : "stopped (server shutting down) during " + r.interrupted_stage;
        } else {
          end = State::Succeeded;
          out = r.out_path;
          poster = write_poster(out, r.rgb);
        }
      } catch (const Error& e) {
        error = e.what();
      } catch (const std::exception& e) {
        error = std::string("internal error: ") + e.what();
      }
      std::lock_guard<std::mutex> lock(m);
      j->state = end;
      j->error = error;
      j->out = out;
      j->poster = poster;
      j->eta_s = end == State::Succeeded ? 0 : -1;
      j->stage = state_name(end);
      j->finished = Clock::now();
      running.reset();
      touch(*j);
      log_info("job ", j->id, ": ", state_name(end), error.empty() ? "" : ": " + error);
    }
  }

  // ---- POST /v1/generations
  void submit(const httplib::Request& req, httplib::Response& res) {
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::exception& e) {
      return json_error(res, 400, std::string("malformed JSON: ") + e.what());
    }
    GenerateOptions o = opt.defaults;
    try {
      apply_json_settings(body, o, /*allow_out=*/false);
      OSP_CHECK(o.width <= opt.max_width && o.height <= opt.max_height &&
                    int64_t(o.width) * o.height <= opt.max_pixels,
                "size ", o.width, "x", o.height, " is over this server's limit (", opt.max_width, "x",
                opt.max_height, " per side, ", opt.max_pixels, " pixels)");
      OSP_CHECK(o.frames <= opt.max_frames, "frames ", o.frames, " is over this server's limit of ", opt.max_frames);
      OSP_CHECK(o.steps <= opt.max_steps, "steps ", o.steps, " is over this server's limit of ", opt.max_steps);
    } catch (const Error& e) {
      return json_error(res, 400, e.what());
    }
    auto j = std::make_shared<Job>();
    j->id = random_id();
    o.out = (fs::path(opt.out_dir) / (png ? j->id + "/" : j->id + ".mp4")).string();
    o.overwrite = false;
    try {
      j->plan = pipe.plan(o);
    } catch (const Error& e) {
      return json_error(res, 400, e.what());
    }
    j->steps = j->plan.opt.steps;
    j->created = Clock::now();
    std::lock_guard<std::mutex> lock(m);
    if (stopping) return json_error(res, 503, "the server is shutting down");
    if (int(queue.size()) >= opt.queue)
      return json_error(res, 429, str("the queue is full (", queue.size(), " waiting); try again later"));
    jobs[j->id] = j;
    order.push_back(j->id);
    queue.push_back(j);
    touch(*j);
    res.status = 202;
    res.set_header("Location", "/v1/generations/" + j->id);
    res.set_content(status_json(*j).dump(), "application/json");
  }

  void cancel(const std::string& id, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(m);
    auto j = find(id);
    if (!j) return json_error(res, 404, "no generation " + id);
    if (terminal(j->state)) return json_error(res, 409, str("generation ", id, " already ", state_name(j->state)));
    j->cancel = true;
    if (j->state == State::Queued) {
      queue.erase(std::remove(queue.begin(), queue.end(), j), queue.end());
      j->state = State::Cancelled;
      j->stage = "cancelled";
      j->error = "cancelled before it started";
      j->started = j->finished = Clock::now();
    }
    touch(*j);
    res.status = 202;
    res.set_content(status_json(*j).dump(), "application/json");
  }

  void events(const std::string& id, httplib::Response& res) {
    {
      std::lock_guard<std::mutex> lock(m);
      if (!find(id)) return json_error(res, 404, "no generation " + id);
    }
    res.set_header("Cache-Control", "no-cache");
    auto last = std::make_shared<uint64_t>(0);
    res.set_chunked_content_provider("text/event-stream", [this, id, last](size_t, httplib::DataSink& sink) {
      std::unique_lock<std::mutex> lock(m);
      auto j = find(id);
      if (!j) return false;
      if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return stopping || j->version != *last; })) {
        lock.unlock();
        const std::string ka = ": keep-alive\n\n";
        return sink.write(ka.data(), ka.size());
      }
      *last = j->version;
      const bool end = terminal(j->state);
      const std::string ev = end ? state_name(j->state) : "progress";
      const std::string msg = "event: " + ev + "\ndata: " + status_json(*j).dump() + "\n\n";
      const bool stop_now = end || stopping;
      lock.unlock();
      if (!sink.write(msg.data(), msg.size())) return false;
      if (stop_now) sink.done();
      return true;
    });
  }

  void send_file(const std::string& id, httplib::Response& res, int frame) {
    std::string path;
    {
      std::lock_guard<std::mutex> lock(m);
      auto j = find(id);
      if (!j) return json_error(res, 404, "no generation " + id);
      if (j->state != State::Succeeded)
        return json_error(res, 409, str("generation ", id, " is ", state_name(j->state), ", not succeeded"));
      if (frame < 0 && png)
        return json_error(res, 404, "this server writes PNG frames (built without FFmpeg): GET /v1/generations/" +
                                        id + "/frames/N");
      if (frame >= 0 && !png) return json_error(res, 404, "this server writes MP4: GET /v1/generations/" + id + "/video");
      path = j->out;
    }
    if (frame >= 0) {
      char name[32];
      std::snprintf(name, sizeof name, "frame_%04d.png", frame);
      path = (fs::path(path) / name).string();
    }
    send_path(res, path, frame >= 0 ? "image/png" : "video/mp4", frame >= 0 ? str("no frame ", frame) : "the video file is gone");
  }

  // The file at `path` as the response body (404 with `gone` when it cannot be read).
  static void send_path(httplib::Response& res, const std::string& path, const char* type, const std::string& gone) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return json_error(res, 404, gone);
    res.set_content(std::string((std::istreambuf_iterator<char>(f)), {}), type);
  }

  void send_poster(const std::string& id, httplib::Response& res) {
    std::string path;
    {
      std::lock_guard<std::mutex> lock(m);
      auto j = find(id);
      if (!j) return json_error(res, 404, "no generation " + id);
      if (j->poster.empty()) return json_error(res, 404, "generation " + id + " has no poster image");
      path = j->poster;
    }
    send_path(res, path, "image/png", "the poster image is gone");
  }

  void routes() {
    http.set_payload_max_length(opt.max_body);
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      const std::string msg = res.status == 413   ? "the request body is too large"
                              : res.status == 404 ? "no such path: " + req.method + " " + req.path
                                                  : str("HTTP ", res.status);
      res.set_content(json{{"error", msg}}.dump(), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg += std::string(": ") + e.what();
      } catch (...) {
      }
      json_error(res, 500, msg);
    });
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.path.rfind("/v1/", 0) == 0 && !authorized(req)) {
        json_error(res, 401, "missing or wrong token: send Authorization: Bearer TOKEN");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(server_page_html(), "text/html; charset=utf-8");
    });
    http.Get("/v1/health", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(m);
      res.set_content(json{{"status", "ok"},
                           {"model", pipe.files().root},
                           {"output", png ? "png" : "mp4"},
                           {"queued", queue.size()},
                           {"running", running ? running->id : ""},
                           {"limits",
                            {{"max_width", opt.max_width}, {"max_height", opt.max_height},
                             {"max_pixels", opt.max_pixels}, {"max_frames", opt.max_frames},
                             {"max_steps", opt.max_steps}, {"queue", opt.queue}}}}
                          .dump(),
                      "application/json");
    });
    http.Post("/v1/generations", [this](const httplib::Request& req, httplib::Response& res) { submit(req, res); });
    http.Get("/v1/generations", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(m);
      json list = json::array();
      for (const auto& id : order) list.push_back(status_json(*jobs.at(id)));
      res.set_content(json{{"generations", list}}.dump(), "application/json");
    });
    const std::string idp = "/v1/generations/([0-9a-f]+)";
    http.Get(idp, [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(m);
      auto j = find(req.matches[1]);
      if (!j) return json_error(res, 404, "no generation " + std::string(req.matches[1]));
      res.set_content(status_json(*j).dump(), "application/json");
    });
    http.Delete(idp, [this](const httplib::Request& req, httplib::Response& res) { cancel(req.matches[1], res); });
    http.Get(idp + "/events", [this](const httplib::Request& req, httplib::Response& res) { events(req.matches[1], res); });
    http.Get(idp + "/video", [this](const httplib::Request& req, httplib::Response& res) { send_file(req.matches[1], res, -1); });
    http.Get(idp + "/poster", [this](const httplib::Request& req, httplib::Response& res) { send_poster(req.matches[1], res); });
    http.Get(idp + "/frames/([0-9]+)", [this](const httplib::Request& req, httplib::Response& res) {
      send_file(req.matches[1], res, std::stoi(std::string(req.matches[2]).substr(0, 6)));
    });
  }
};

Server::Server(Pipeline& pipe, const ServerOptions& opt) : impl_(std::make_unique<Impl>(pipe, opt)) {
  OSP_CHECK(is_loopback_host(opt.host) || !opt.token.empty(), "--host ", opt.host,
            " makes the server reachable from other machines: give --token TOKEN (clients then send "
            "Authorization: Bearer TOKEN), or keep the default --host 127.0.0.1");
  OSP_CHECK(opt.queue >= 0 && opt.queue <= 100000, "--queue must be in [0, 100000], got ", opt.queue);
  OSP_CHECK(opt.max_frames >= 1 && opt.max_steps >= 1 && opt.max_width >= 16 && opt.max_height >= 16 &&
                opt.max_pixels >= 256,
            "the server limits must be positive (--max-frames, --max-steps, --max-size)");
  OSP_CHECK(opt.port >= 0 && opt.port <= 65535, "--port must be in [0, 65535], got ", opt.port);
  impl_->png = !io::video_writer_available();
  OSP_CHECK(!impl_->png || io::png_available(), "this build can write neither MP4 (FFmpeg) nor PNG (libpng)");
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  OSP_CHECK(fs::is_directory(opt.out_dir), "--out-dir ", opt.out_dir, ": cannot create the folder (", ec.message(), ")");
  impl_->routes();
  impl_->worker = std::thread([this] { impl_->work(); });
}

Server::~Server() { stop(); }

int Server::bind() {
  Impl& s = *impl_;
  if (s.opt.port == 0) {
    s.port = s.http.bind_to_any_port(s.opt.host);
    OSP_CHECK(s.port > 0, "cannot listen on ", s.opt.host, " (any port)");
  } else {
    OSP_CHECK(s.http.bind_to_port(s.opt.host, s.opt.port), "cannot listen on ", s.opt.host, ":", s.opt.port,
              " (in use? choose another --port, or --port 0 for any free one)");
    s.port = s.opt.port;
  }
  return s.port;
}

void Server::serve() { impl_->http.listen_after_bind(); }

void Server::stop() {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.m);
    if (!s.stopping) {
      s.stopping = true;
      for (auto& q : s.queue) {
        q->state = State::Cancelled;
        q->stage = "cancelled";
        q->error = "the server shut down before it started";
        q->cancel = true;
        s.touch(*q);
      }
      s.queue.clear();
      if (s.running) s.running->cancel = true;
      s.cv.notify_all();
    }
  }
  if (s.worker.joinable()) s.worker.join();  // the running job stops at its next safe point
  s.http.stop();
}

int Server::port() const { return impl_->port; }

#endif  // OSP_HAVE_HTTPLIB

}  // namespace osp::pipeline
