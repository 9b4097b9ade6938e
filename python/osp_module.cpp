// Python bindings (pybind11): `import osp`.
//
//   p = osp.Pipeline("model_dir", device="cpu")          # models load on first use, then stay
//   frames = p.generate("a red fox", size="832x480", frames=33, steps=30, seed=1,
//                       out="fox.mp4", progress=lambda stage, step, steps, eta: ...)
//   frames.shape == (33, 480, 832, 3), dtype uint8
//
// Settings mean what the `osp generate` flags of the same name mean and are validated the same
// way; an osp error raises osp.Error with the CLI's message. Ctrl-C (KeyboardInterrupt) stops
// the run at its next safe point; a progress callback that returns False cancels the run
// (osp.Error "cancelled ..."). The GIL is released while the pipeline runs.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/pipeline/pipeline.h"

namespace py = pybind11;
using namespace osp;

namespace {

class PyPipeline {
 public:
  PyPipeline(const std::string& model_dir, const std::string& device, const std::string& quant, bool offload,
             const std::vector<std::string>& loras) {
    pipeline::PipelineOptions po;
    po.device = device;
    po.quant = quant;
    po.offload = offload;
    po.loras = loras;
    po.keep_loaded = true;
    py::gil_scoped_release nogil;
    p_ = std::make_unique<pipeline::Pipeline>(model_dir, po);
  }

  py::array_t<uint8_t> generate(const std::string& prompt, std::optional<std::string> negative_prompt,
                                bool no_negative, std::optional<std::string> size, int frames, int steps,
                                const std::string& sampler, double shift, float guidance, int64_t seed,
                                const std::string& attention, std::optional<std::string> out, bool overwrite,
                                int fps, std::optional<py::function> progress) {
    pipeline::GenerateOptions o;
    o.prompt = prompt;
    if (negative_prompt) o.negative_prompt = *negative_prompt;
    o.no_negative = no_negative;
    if (size) pipeline::parse_size(*size, o.width, o.height);
    o.frames = frames;
    o.steps = steps;
    o.sampler = sampler;
    o.shift = shift;
    o.guidance = guidance;
    o.seed = seed;
    o.attention = attention;
    o.overwrite = overwrite;
    o.fps = fps;
    if (out) o.out = *out;
    else o.no_output = true;

    bool py_cancel = false;      // the callback returned False
    bool py_interrupt = false;   // KeyboardInterrupt (or another Python exception) is pending
    pipeline::RunHooks hooks;
    if (progress) {
      hooks.on_progress = [&](const pipeline::ProgressEvent& e) {
        py::gil_scoped_acquire gil;
        if (py_cancel || py_interrupt) return;
        try {
          py::object r = (*progress)(e.stage, e.step, e.steps, e.eta_s);
          if (!r.is_none() && !r.cast<bool>()) py_cancel = true;
        } catch (py::error_already_set& err) {
          err.restore();  // re-raised below, once the run has stopped
          py_interrupt = true;
        }
      };
    }
    hooks.cancelled = [&] {
      py::gil_scoped_acquire gil;
      if (!py_interrupt && PyErr_CheckSignals() != 0) py_interrupt = true;  // Ctrl-C
      return py_cancel || py_interrupt;
    };
    pipeline::GenerateResult r;
    {
      py::gil_scoped_release nogil;
      const pipeline::Plan plan = p_->plan(o);
      r = p_->run(plan, hooks);
    }
    if (py_interrupt) throw py::error_already_set();
    if (r.interrupted)
      throw Error(r.cancelled ? "cancelled during " + r.interrupted_stage : "interrupted during " + r.interrupted_stage);
    last_seed_ = r.seed;
    const Tensor& f = r.rgb;
    OSP_CHECK(f.defined() && f.dim() == 4 && f.dtype() == DType::U8, "internal: no frames");
    py::array_t<uint8_t> a({f.size(0), f.size(1), f.size(2), f.size(3)});
    const Tensor c = f.to(Device::cpu()).contiguous();
    std::memcpy(a.mutable_data(), c.data<uint8_t>(), size_t(c.numel()));
    return a;
  }

  int64_t last_seed() const { return last_seed_; }
  std::string model_dir() const { return p_->files().root; }
  std::string device() const { return p_->options().device; }

 private:
  std::unique_ptr<pipeline::Pipeline> p_;
  int64_t last_seed_ = -1;
};

}  // namespace

PYBIND11_MODULE(osp, m) {
  m.doc() = "osp: Wan2.1 / OSP-Next text-to-video (C++/CUDA engine)";
  static py::exception<Error> error_type(m, "Error");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(error_type.ptr(), e.what());
    }
  });
  m.def("set_log_level", [](const std::string& level) {
    OSP_CHECK(level == "warn" || level == "info" || level == "verbose", "log level must be warn, info or verbose");
    set_log_level(level == "warn" ? LogLevel::Warn : level == "info" ? LogLevel::Info : LogLevel::Verbose);
  }, py::arg("level"), "osp's own log lines on stderr: warn | info (default) | verbose");
  py::class_<PyPipeline>(m, "Pipeline",
                         "A model folder with its text encoder, DiT and VAE loaded once (on first use) and kept")
      .def(py::init<const std::string&, const std::string&, const std::string&, bool, const std::vector<std::string>&>(),
           py::arg("model_dir"), py::arg("device") = "cpu", py::arg("quant") = "none", py::arg("offload") = false,
           py::arg("loras") = std::vector<std::string>{})
      .def("generate", &PyPipeline::generate, py::arg("prompt"), py::kw_only(),
           py::arg("negative_prompt") = py::none(), py::arg("no_negative") = false, py::arg("size") = "1280x720",
           py::arg("frames") = 81, py::arg("steps") = 50, py::arg("sampler") = "unipc", py::arg("shift") = -1.0,
           py::arg("guidance") = 5.0f, py::arg("seed") = -1, py::arg("attention") = "auto",
           py::arg("out") = py::none(), py::arg("overwrite") = false, py::arg("fps") = 16,
           py::arg("progress") = py::none(),
           "Text to video: uint8 frames [F, H, W, 3]; writes `out` (.mp4 or a folder/ of PNGs) when given.\n"
           "progress(stage, step, steps, eta_s) is called while it runs; returning False cancels.")
      .def_property_readonly("last_seed", &PyPipeline::last_seed, "the seed of the last run (random when -1 was given)")
      .def_property_readonly("model_dir", &PyPipeline::model_dir)
      .def_property_readonly("device", &PyPipeline::device);
}
