#include "osp/train/checkpoint.h"

#include "osp/model/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "osp/core/error.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/io/atomic_file.h"
#include "osp/io/safetensors.h"
#include "osp/train/output_files.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace osp::train {
namespace {

constexpr const char* kMarker = "CHECKPOINT_COMPLETE";
constexpr const char* kModelFile = "diffusion_pytorch_model.safetensors";

std::string hex_double(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", x);
  return buf;
}

double parse_hex_double(const json& j, const char* what) {
  OSP_CHECK(j.is_string(), what, " must be a string (hex float)");
  const std::string s = j.get<std::string>();
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  OSP_CHECK(end && *end == 0 && !s.empty(), what, ": '", s, "' is not a number");
  return x;
}

}  // namespace

std::string dit_config_json(const model::DiTConfig& c) {
  json j;
  j["_class_name"] = "WanModel";
  j["model_type"] = "t2v";
  j["dim"] = c.dim;
  j["ffn_dim"] = c.ffn_dim;
  j["num_heads"] = c.num_heads;
  j["num_layers"] = c.num_layers;
  j["text_dim"] = c.text_dim;
  j["text_len"] = c.text_len;
  j["freq_dim"] = c.freq_dim;
  j["in_dim"] = c.in_dim;
  j["out_dim"] = c.out_dim;
  j["eps"] = c.eps;
  j["patch_size"] = {c.patch_t, c.patch_h, c.patch_w};
  j["qk_norm"] = c.qk_norm;
  j["cross_attn_norm"] = c.cross_attn_norm;
  if (c.skiparse_mode != "full") {
    j["skiparse_model_type"] = c.skiparse_mode;
    j["sparse_ratio"] = c.sparse_ratio;
    j["num_full_blocks"] = c.num_full_blocks;
  }
  return j.dump(2) + "\n";
}

std::string checkpoint_name(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "checkpoint-%08lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& out_dir, const CheckpointSave& c) {
  OSP_CHECK(c.optimizer.params && c.optimizer.slots && c.optimizer.slots->size() == c.optimizer.params->size(),
            "save_checkpoint: no optimizer state");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  OSP_CHECK(fs::is_directory(out_dir), "cannot create the output folder ", out_dir,
            ec ? " (" + ec.message() + ")" : std::string());
  const ParamTable& params = *c.optimizer.params;
  const std::vector<AdamW::Slot>& slots = *c.optimizer.slots;
  const bool has_ema = c.ema && !c.ema->empty();
  const std::string name = checkpoint_name(c.state.step);
  const std::string dir = (fs::path(out_dir) / name).string();

  io::write_dir_atomic(
      dir,
      [&](const std::string& tmp) {
        const fs::path t(tmp);
        std::vector<std::string> files;
        auto put = [&](const std::string& file, const std::function<void(const std::string&)>& w) {
          w((t / file).string());
          files.push_back(file);
        };
        if (c.lora) {  // the adapters (small: whole tensors on the host)
          const DeferInterrupts whole;  // (save_lora's writer has Ctrl-C safe points; a checkpoint completes)
          // the parameters are "<module>.lora_A.weight" / ".lora_B.weight": model/lora.h reads them
          auto lora_of = [&](auto value_of) {
            std::map<std::string, Tensor> t;
            for (size_t k = 0; k < params.size(); ++k)
              t[params[k].name] = value_of(k).to(Device::cpu()).to(DType::F32).contiguous().view(params[k].ckpt_shape);
            return model::lora_from_tensors(t, {{"lora_alpha", hex_double(c.lora_alpha)}, {"base_model", c.lora_base},
                                                {"osp_train_step", std::to_string(c.state.step)}},
                                            "checkpoint " + name);
          };
          put("lora.safetensors", [&](const std::string& p) {
            model::save_lora(p, lora_of([&](size_t k) { return slots[k].master; }));
          });
          if (has_ema) {
            const model::Lora e = lora_of([&](size_t k) { return (*c.ema)[k]; });
            put("lora_ema.safetensors", [&](const std::string& p) { model::save_lora(p, e); });
          }
        }
        if (!c.lora)
          put("config.json", [&](const std::string& p) { write_text_atomic(p, c.model_config_json, io::Overwrite::Refuse); });
        // Tensors are produced one at a time while the file is written (no second copy of the
        // model in memory): a device tensor is converted there and copied to the host alone.
        if (!c.lora) {
          std::vector<LazyTensor> model;
          for (size_t k = 0; k < params.size(); ++k) {
            const Tensor m = slots[k].master;
            model.push_back({params[k].name, DType::BF16, params[k].ckpt_shape, [m] { return m.to(DType::BF16); }});
          }
          put(kModelFile, [&](const std::string& p) {
            write_safetensors_streaming(p, model, {{"format", "pt"}, {"osp_train_step", std::to_string(c.state.step)}},
                                        io::Overwrite::Refuse);
          });
        }
        {
          std::vector<LazyTensor> st;
          for (size_t k = 0; k < params.size(); ++k) {
            const auto& sl = slots[k];
            for (const auto& [prefix, t] : {std::pair<std::string, Tensor>{"master.", sl.master}, {"m.", sl.m}, {"v.", sl.v}})
              st.push_back({prefix + params[k].name, DType::F32, params[k].ckpt_shape, [t] { return t; }});
          }
          const AdamWConfig& a = c.optimizer.config;
          json meta = {{"lr", a.lr}, {"beta1", a.beta1}, {"beta2", a.beta2}, {"eps", a.eps},
                       {"weight_decay", a.weight_decay}};
          put("optimizer.safetensors", [&](const std::string& p) {
            write_safetensors_streaming(p, st, {{"step", std::to_string(c.optimizer.steps)}, {"adamw", meta.dump()}},
                                        io::Overwrite::Refuse);
          });
        }
        if (has_ema) {  // (the EMA's F32 state, for resuming; LoRA or not)
          std::vector<LazyTensor> st;
          for (size_t k = 0; k < params.size(); ++k) {
            const Tensor t = (*c.ema)[k];
            st.push_back({params[k].name, DType::F32, params[k].ckpt_shape, [t] { return t; }});
          }
          put("ema.safetensors", [&](const std::string& p) {
            write_safetensors_streaming(p, st, {{"decay", hex_double(c.ema_decay)}}, io::Overwrite::Refuse);
          });
        }
        if (has_ema && !c.lora) {
          // ema/: the EMA weights as a model folder of their own (what evaluation loads).
          fs::create_directories(t / "ema");
          std::vector<LazyTensor> model;
          for (size_t k = 0; k < params.size(); ++k) {
            const Tensor e = (*c.ema)[k];
            model.push_back({params[k].name, DType::BF16, params[k].ckpt_shape, [e] { return e.to(DType::BF16); }});
          }
          put("ema/config.json", [&](const std::string& p) { write_text_atomic(p, c.model_config_json, io::Overwrite::Refuse); });
          put(std::string("ema/") + kModelFile, [&](const std::string& p) {
            write_safetensors_streaming(p, model, {{"format", "pt"}, {"osp_train_step", std::to_string(c.state.step)},
                                                   {"osp_ema_decay", hex_double(c.ema_decay)}},
                                        io::Overwrite::Refuse);
          });
        }
        {
          const TrainerState& s = c.state;
          json j = {{"format", "osp-train-state"},
                    {"version", 1},
                    {"step", s.step},
                    {"seed", s.seed},
                    {"data_epoch", s.data.epoch},
                    {"data_batch", s.data.batch},
                    {"clip_initialised", s.clip.initialised},
                    {"clip_mean", hex_double(s.clip.mean)},
                    {"clip_var", hex_double(s.clip.var)},
                    {"skipped_samples", s.skipped_samples},
                    {"run_config", s.run_config.empty() ? json(nullptr) : json::parse(s.run_config)}};
          put("trainer_state.json", [&](const std::string& p) { write_text_atomic(p, j.dump(2) + "\n", io::Overwrite::Refuse); });
        }
        for (const auto& [rel, src] : c.lora ? decltype(c.links){} : c.links)
          for (const fs::path& folder : {t, t / "ema"}) {
            if (folder != t && !has_ema) continue;
            const fs::path target = folder / rel;
            fs::create_directories(target.parent_path());
            fs::create_symlink(fs::absolute(src), target, ec);
            OSP_CHECK(!ec, "cannot link ", src, " into the checkpoint as ", rel, ": ", ec.message());
          }
        json marker;
        marker["format"] = "osp-train-checkpoint";
        marker["step"] = c.state.step;
        json sizes = json::object();
        for (const auto& f : files) sizes[f] = fs::file_size(t / f);
        marker["files"] = sizes;
        write_text_atomic((t / kMarker).string(), marker.dump(2) + "\n", io::Overwrite::Refuse);
      },
      io::Overwrite::Allow);
  write_text_atomic((fs::path(out_dir) / "latest").string(), name + "\n", io::Overwrite::Allow);
  if (c.keep_last > 0) {  // older complete checkpoints beyond the newest keep_last go
    std::vector<std::string> done;
    for (const auto& e : fs::directory_iterator(out_dir)) {
      const std::string n = e.path().filename().string();
      if (e.is_directory() && n.rfind("checkpoint-", 0) == 0 && fs::exists(e.path() / kMarker)) done.push_back(n);
    }
    std::sort(done.begin(), done.end());
    for (size_t i = 0; i + size_t(c.keep_last) < done.size(); ++i) {
      if (done[i] == name) continue;
      fs::remove_all(fs::path(out_dir) / done[i], ec);
      if (ec) log_warn("could not remove the old checkpoint ", done[i], ": ", ec.message());
    }
  }
  return dir;
}

std::string resolve_checkpoint(const std::string& path) {
  OSP_CHECK(fs::is_directory(path), "--resume ", path, " is not a folder (give a checkpoint folder or the --out folder of a run)");
  if (fs::exists(fs::path(path) / kMarker)) return path;
  const fs::path latest = fs::path(path) / "latest";
  if (fs::exists(latest)) {
    std::string name = read_text_file(latest.string());
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    OSP_CHECK(!name.empty() && name.find('/') == std::string::npos, latest.string(), " does not name a checkpoint folder");
    const fs::path dir = fs::path(path) / name;
    OSP_CHECK(fs::exists(dir / kMarker), latest.string(), " names ", dir.string(), ", which is not a complete checkpoint (no ",
              kMarker, ")");
    return dir.string();
  }
  if (fs::exists(fs::path(path) / "trainer_state.json"))
    fail(str("checkpoint ", path, " is incomplete (no ", kMarker, "): its writing was interrupted; resume from an earlier one"));
  fail(str("--resume ", path, ": neither a checkpoint folder (no ", kMarker, ") nor a run folder (no 'latest' file)"));
}

namespace {

void check_complete(const std::string& dir) {
  const fs::path m = fs::path(dir) / kMarker;
  OSP_CHECK(fs::exists(m), "checkpoint ", dir, " is incomplete (no ", kMarker, ")");
  json j;
  try {
    j = json::parse(read_text_file(m.string()));
    for (const auto& [f, size] : j.at("files").items()) {
      const fs::path p = fs::path(dir) / f;
      OSP_CHECK(fs::exists(p), "checkpoint ", dir, ": ", f, " is missing");
      OSP_CHECK(fs::file_size(p) == size.get<uint64_t>(), "checkpoint ", dir, ": ", f, " has ", fs::file_size(p),
                " bytes, the marker says ", size.get<uint64_t>(), " (damaged)");
    }
  } catch (const json::exception& e) {
    fail(str("checkpoint ", dir, ": ", kMarker, " is not valid (", e.what(), ")"));
  }
}

// Names/shapes of `file` restricted to `prefix` must equal the parameter table's.
void check_matches(const io::SafetensorsFile& f, const std::string& prefix, const ParamTable& params,
                   const std::string& what) {
  std::map<std::string, Shape> want;
  for (const auto& p : params) want[p.name] = p.ckpt_shape;
  std::vector<std::string> problems;
  std::set<std::string> have;
  for (const auto& n : f.names()) {
    if (n.rfind(prefix, 0) != 0) continue;
    const std::string name = n.substr(prefix.size());
    have.insert(name);
    auto it = want.find(name);
    if (it == want.end()) {
      problems.push_back(str("'", name, "' is not a parameter of this model"));
    } else if (f.entry(n).shape != it->second) {
      problems.push_back(str("'", name, "' has shape ", shape_str(f.entry(n).shape), ", the model has ",
                             shape_str(it->second)));
    }
  }
  for (const auto& [n, s] : want)
    if (!have.count(n)) problems.push_back(str("'", n, "' ", shape_str(s), " is missing"));
  if (problems.empty()) return;
  std::string msg = str(what, " does not match the model (", problems.size(), " differences):");
  for (size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
  if (problems.size() > 20) msg += str("\n  ... ", problems.size() - 20, " more");
  fail(msg);
}

}  // namespace

TrainerState read_trainer_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  TrainerState s;
  try {
    const json j = json::parse(read_text_file(path));
    OSP_CHECK(j.value("format", "") == "osp-train-state", "format is not osp-train-state");
    s.step = j.at("step").get<int64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    s.data.epoch = j.at("data_epoch").get<int64_t>();
    s.data.batch = j.at("data_batch").get<int64_t>();
    s.clip.initialised = j.at("clip_initialised").get<bool>();
    s.clip.mean = parse_hex_double(j.at("clip_mean"), "clip_mean");
    s.clip.var = parse_hex_double(j.at("clip_var"), "clip_var");
    s.skipped_samples = j.value("skipped_samples", int64_t(0));
    if (j.contains("run_config") && !j["run_config"].is_null()) s.run_config = j["run_config"].dump();
  } catch (const json::exception& e) {
    fail(str("checkpoint state ", path, ": ", e.what()));
  } catch (const Error& e) {
    fail(str("checkpoint state ", path, ": ", e.what()));
  }
  return s;
}

TrainerState load_checkpoint(const std::string& dir, const ParamTable& params, std::vector<AdamW::Slot>& slots,
                             int64_t* steps_out, std::vector<Tensor>* ema) {
  check_complete(dir);
  OSP_CHECK(slots.size() == params.size(), "load_checkpoint: ", slots.size(), " slots for ", params.size(),
            " parameters");
  const std::string opath = (fs::path(dir) / "optimizer.safetensors").string();
  const io::SafetensorsFile f = io::SafetensorsFile::open(opath);
  for (const char* prefix : {"master.", "m.", "v."})
    check_matches(f, prefix, params, str("checkpoint ", opath, " (", prefix, "*)"));
  int64_t steps = 0;
  try {
    steps = std::stoll(f.metadata().at("step"));
  } catch (const std::exception&) {
    fail(str("checkpoint ", opath, ": metadata 'step' is missing or not a number"));
  }
  for (size_t k = 0; k < params.size(); ++k) {
    auto& slot = slots[k];
    const Shape shape = slot.master.shape();  // the value's shape (the value may be released)
    slot.master.copy_from(f.get("master." + params[k].name).view(shape));
    slot.m.copy_from(f.get("m." + params[k].name).view(shape));
    slot.v.copy_from(f.get("v." + params[k].name).view(shape));
  }
  if (ema) {
    const std::string epath = (fs::path(dir) / "ema.safetensors").string();
    OSP_CHECK(fs::exists(epath), "checkpoint ", dir, " has no ema.safetensors but this run uses an EMA (--ema)");
    const io::SafetensorsFile e = io::SafetensorsFile::open(epath);
    check_matches(e, "", params, str("checkpoint ", epath));
    OSP_CHECK(ema->size() == params.size(), "load_checkpoint: ", ema->size(), " EMA tensors for ", params.size(),
              " parameters");
    for (size_t k = 0; k < params.size(); ++k)
      (*ema)[k].copy_from(e.get(params[k].name).view((*ema)[k].shape()));
  }
  TrainerState s = read_trainer_state(dir);
  OSP_CHECK(s.step == steps, "checkpoint ", dir, ": trainer_state.json says step ", s.step,
            " but optimizer.safetensors says ", steps);
  *steps_out = steps;
  return s;
}

TrainerState load_checkpoint(const std::string& dir, AdamW& opt, Ema* ema) {
  int64_t steps = 0;
  const TrainerState s = load_checkpoint(dir, opt.params(), opt.slots(), &steps,
                                         ema && ema->enabled() ? &ema->weights() : nullptr);
  opt.restore(steps);
  return s;
}

}  // namespace osp::train
