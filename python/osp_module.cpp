// Python bindings (pybind11): `import osp`.
//
//   p = osp.Pipeline("model_dir", device="cpu")          # models load on first use, then stay
//   (also dit_offload="none"|"blocks"|"auto", max_vram=GiB: the --dit-offload / --max-vram modes)
//   frames = p.generate("a red fox", size="832x480", frames=33, steps=30, seed=1,
//                       cache="teacache:0.1",             # --cache (default None: off)
//                       noise="noise.safetensors",        # --noise (default None: seeded)
//                       out="fox.mp4", progress=lambda stage, step, steps, eta: ...)
//   frames.shape == (33, 480, 832, 3), dtype uint8
//
// For research: osp.load_checkpoint(path) → {name: float32 array} (safetensors, sharded index,
// .pth), and osp.DiT(checkpoint, prefix=, config=, device=, quant=).forward(x, t, context) → the
// velocity as a float32 array (model/dit.h: x [B, 16, F, H, W], t one per sample, context
// [B, L, text_dim]).
//
// Settings mean what the `osp generate` flags of the same name mean and are validated the same
// way; an osp error raises osp.Error with the CLI's message. Ctrl-C (KeyboardInterrupt) stops
// the run at its next safe point; a progress callback that returns False cancels the run
// (osp.Error "cancelled ..."). The GIL is released while the pipeline runs. --cfg-parallel and
// --sp are not exposed: they need one process per rank (mpirun); use `osp generate` for them.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>

#include "osp/core/error.h"
#include "osp/core/log.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/io/checkpoint.h"
#include "osp/io/name_map.h"
#include "osp/model/dit.h"
#include "osp/model/dit_config.h"
#include "osp/pipeline/pipeline.h"
#include "osp/sparse/skiparse.h"

namespace py = pybind11;
using namespace osp;

namespace {

class PyPipeline {
 public:
  PyPipeline(const std::string& model_dir, const std::string& device, const std::string& quant, bool offload,
             const std::vector<std::string>& loras, const std::string& dit_offload, double max_vram) {
    // The model-level settings are checked now, with the CLI's checks and messages (a request
    // that is otherwise valid carries them through validate_options).
    pipeline::GenerateOptions check;
    check.prompt = "-";
    check.no_output = true;
    check.device = device;
    check.quant = quant;
    check.offload = offload;
    check.dit_offload = dit_offload;
    check.max_vram_gib = max_vram;
    check.loras = loras;
    pipeline::validate_options(check);
    pipeline::warn_ineffective_settings(check);
    pipeline::PipelineOptions po = pipeline::pipeline_options(check);
    po.keep_loaded = true;
    py::gil_scoped_release nogil;
    p_ = std::make_unique<pipeline::Pipeline>(model_dir, po);
  }

  py::array_t<uint8_t> generate(const std::string& prompt, std::optional<std::string> negative_prompt,
                                bool no_negative, std::optional<std::string> size, int frames, int steps,
                                const std::string& sampler, double shift, float guidance, int64_t seed,
                                const std::string& attention, std::optional<std::string> out, bool overwrite,
                                int fps, std::optional<std::string> cache, std::optional<std::string> noise,
                                std::optional<py::function> progress) {
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
    o.cache = cache ? *cache : "none";
    if (noise) o.noise = *noise;
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
    last_steps_cached_ = r.steps_cached;
    const Tensor& f = r.rgb;
    OSP_CHECK(f.defined() && f.dim() == 4 && f.dtype() == DType::U8, "internal: no frames");
    py::array_t<uint8_t> a({f.size(0), f.size(1), f.size(2), f.size(3)});
    const Tensor c = f.to(Device::cpu()).contiguous();
    std::memcpy(a.mutable_data(), c.data<uint8_t>(), size_t(c.numel()));
    return a;
  }

  int64_t last_seed() const { return last_seed_; }
  int last_steps_cached() const { return last_steps_cached_; }
  std::string dit_offload() const { return p_->options().dit_offload; }
  double max_vram() const { return p_->options().max_vram_gib; }
  std::string model_dir() const { return p_->files().root; }
  std::string device() const { return p_->options().device; }

 private:
  std::unique_ptr<pipeline::Pipeline> p_;
  int64_t last_seed_ = -1;
  int last_steps_cached_ = 0;
};

// A float32 C-contiguous NumPy array as a CPU tensor (copied).
Tensor to_tensor(const py::array& a, const char* what) {
  py::array_t<float, py::array::c_style | py::array::forcecast> f(a);
  Shape shape(f.shape(), f.shape() + f.ndim());
  OSP_CHECK(f.ndim() >= 1, what, " must be an array, got a scalar");
  Tensor t = Tensor::empty(shape, DType::F32);
  std::memcpy(t.data<float>(), f.data(), size_t(t.numel()) * sizeof(float));
  return t;
}

py::array_t<float> to_numpy(const Tensor& t) {
  const Tensor c = t.to(Device::cpu()).to(DType::F32).contiguous();
  std::vector<py::ssize_t> shape(c.shape().begin(), c.shape().end());
  py::array_t<float> a(shape);
  std::memcpy(a.mutable_data(), c.data<float>(), size_t(c.numel()) * sizeof(float));
  return a;
}

py::dict load_checkpoint(const std::string& path, std::optional<std::vector<std::string>> names) {
  const io::Checkpoint ck = io::open_checkpoint(path);
  py::dict d;
  for (const auto& n : names ? *names : ck->names()) {
    OSP_CHECK(ck->has(n), path, " has no tensor '", n, "'");
    d[py::str(n)] = to_numpy(ck->get(n));
  }
  return d;
}

class PyDiT {
 public:
  PyDiT(const std::string& path, const std::string& prefix, std::optional<std::string> config,
        const std::string& device, const std::string& quant) {
    py::gil_scoped_release nogil;
    io::Checkpoint raw = io::open_checkpoint(path);
    const auto& meta = raw->metadata();
    io::Checkpoint ck = io::dit_with_original_names(prefix.empty() ? raw : io::strip_prefix(raw, prefix));
    if (config) {
      const std::string& c = *config;
      cfg_ = c.find('{') != std::string::npos ? model::DiTConfig::from_json(c) : model::DiTConfig::from_json_file(c);
    } else if (meta.count("config")) {
      cfg_ = model::DiTConfig::from_json(meta.at("config"));
    } else {
      std::map<std::string, Shape> shapes;
      for (const auto& n : ck->names()) shapes[n] = ck->info(n).shape;
      cfg_ = model::DiTConfig::infer(shapes);
    }
    cfg_.validate();
    std::map<std::string, Tensor> w;
    for (const auto& n : ck->names()) w[n] = ck->get(n);
    model::DiTOptions o;
    o.device = parse_device(device);
    OSP_CHECK(quant == "none" || quant == "hif8" || quant == "fp8", "quant must be none, hif8 or fp8, got '", quant, "'");
    o.quant = quant == "hif8" ? model::DiTQuant::HiF8 : quant == "fp8" ? model::DiTQuant::FP8 : model::DiTQuant::None;
    dit_ = model::DiT::bind(cfg_, w, o);
    sp_ = parallel::make_single_device();
  }

  py::array_t<float> forward(const py::array& x, const std::vector<float>& t, const py::array& context) {
    const Tensor xt = to_tensor(x, "x"), ct = to_tensor(context, "context");
    Tensor out;
    {
      py::gil_scoped_release nogil;
      const Device dev = dit_.options().device;
      out = dit_.forward(xt.to(dev), t, ct.to(dev), *sp_);
    }
    return to_numpy(out);
  }

  std::vector<std::string> block_kinds() const {
    std::vector<std::string> v;
    for (auto k : dit_.block_kinds()) v.push_back(sparse::block_kind_name(k));
    return v;
  }
  void set_block_kinds(const std::vector<std::string>& kinds, int P) {
    std::vector<sparse::BlockKind> ks;
    for (const auto& k : kinds) {
      OSP_CHECK(k == "full" || k == "token" || k == "group", "block kind must be full, token or group, got '", k, "'");
      ks.push_back(k == "full" ? sparse::BlockKind::Full : k == "token" ? sparse::BlockKind::Token : sparse::BlockKind::Group);
    }
    OSP_CHECK(ks.size() == size_t(cfg_.num_layers), "need ", cfg_.num_layers, " block kinds, got ", ks.size());
    dit_.set_block_kinds(ks, P);
  }
  std::string summary() const { return cfg_.summary(); }

 private:
  model::DiTConfig cfg_;
  model::DiT dit_;
  std::unique_ptr<parallel::SequenceParallel> sp_;
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
      .def(py::init<const std::string&, const std::string&, const std::string&, bool, const std::vector<std::string>&,
                    const std::string&, double>(),
           py::arg("model_dir"), py::arg("device") = "cpu", py::arg("quant") = "none", py::arg("offload") = false,
           py::arg("loras") = std::vector<std::string>{}, py::kw_only(), py::arg("dit_offload") = "auto",
           py::arg("max_vram") = 0.0,
           "device: cpu | cuda | cuda:N; quant: none | hif8 | fp8; offload: the text encoder on the CPU; loras: "
           "FILE[:SCALE] merged into the DiT.\n"
           "dit_offload (--dit-offload): DiT weights none (resident) | blocks (streamed block by block from pinned "
           "host memory) | auto (the memory plan picks).\n"
           "max_vram (--max-vram): GPU memory limit in GiB that the plan must fit and the allocator enforces "
           "(0 = none; CUDA devices only). Invalid settings raise osp.Error with the CLI's message.")
      .def("generate", &PyPipeline::generate, py::arg("prompt"), py::kw_only(),
           py::arg("negative_prompt") = py::none(), py::arg("no_negative") = false, py::arg("size") = "1280x720",
           py::arg("frames") = 81, py::arg("steps") = 50, py::arg("sampler") = "unipc", py::arg("shift") = -1.0,
           py::arg("guidance") = 5.0f, py::arg("seed") = -1, py::arg("attention") = "auto",
           py::arg("out") = py::none(), py::arg("overwrite") = false, py::arg("fps") = 16,
           py::arg("cache") = py::none(), py::arg("noise") = py::none(), py::arg("progress") = py::none(),
           "Text to video: uint8 frames [F, H, W, 3]; writes `out` (.mp4 or a folder/ of PNGs) when given.\n"
           "progress(stage, step, steps, eta_s) is called while it runs; returning False cancels.\n"
           "cache (--cache): None / \"none\" (off), \"teacache:THRESH\" or \"magcache:THRESH[:K]\" (THRESH >= 0; 0 caches nothing): skip "
           "the DiT blocks while the timestep modulation changes little; last_steps_cached says how often.\n"
           "noise (--noise): a .safetensors file with the initial latent [16, T, H/8, W/8] (e.g. the reference's "
           "torch.randn) used instead of the seeded noise.\n"
           "--cfg-parallel and --sp are not available here: they need one process per rank (mpirun); use "
           "`osp generate` for them.")
      .def_property_readonly("last_seed", &PyPipeline::last_seed, "the seed of the last run (random when -1 was given)")
      .def_property_readonly("last_steps_cached", &PyPipeline::last_steps_cached,
                             "steps of the last run whose DiT blocks were skipped (cache=)")
      .def_property_readonly("dit_offload", &PyPipeline::dit_offload)
      .def_property_readonly("max_vram", &PyPipeline::max_vram)
      .def_property_readonly("model_dir", &PyPipeline::model_dir)
      .def_property_readonly("device", &PyPipeline::device);
  m.def("load_checkpoint", &load_checkpoint, py::arg("path"), py::arg("names") = py::none(),
        "{name: float32 array} of a .safetensors file, sharded index .json or .pth (all tensors, or `names`)");
  py::class_<PyDiT>(m, "DiT", "The Wan2.1 / OSP-Next DiT on NumPy arrays (model/dit.h)")
      .def(py::init<const std::string&, const std::string&, std::optional<std::string>, const std::string&,
                    const std::string&>(),
           py::arg("checkpoint"), py::kw_only(), py::arg("prefix") = "", py::arg("config") = py::none(),
           py::arg("device") = "cpu", py::arg("quant") = "none",
           "checkpoint: a DiT file or folder (Wan or diffusers names); prefix: stripped from the names; config: "
           "config.json path or JSON text (default: the file's 'config' metadata, else inferred from the shapes)")
      .def("forward", &PyDiT::forward, py::arg("x"), py::arg("t"), py::arg("context"),
           "x [B, 16, F, H, W] (or without B), t: one timestep (0..1000) per sample, context [B, L, text_dim] "
           "-> velocity float32 like x")
      .def_property_readonly("block_kinds", &PyDiT::block_kinds)
      .def("set_block_kinds", &PyDiT::set_block_kinds, py::arg("kinds"), py::arg("sparse_ratio") = 2,
           "one of full/token/group per block (Skiparse-2D with sparse_ratio P)")
      .def("__repr__", [](const PyDiT& d) { return "osp.DiT(" + d.summary() + ")"; });
}
