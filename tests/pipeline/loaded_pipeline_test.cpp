// The loaded pipeline (pipeline::Pipeline) on the demo model: runs from one loaded pipeline give
// the same bytes as one-shot generate; progress is reported; a cancelled run writes nothing and
// the pipeline stays usable; model-level settings that differ are refused. LoRA: a zero-B LoRA
// leaves the video bytes unchanged, a non-zero one changes them, and a LoRA for another shape
// is refused by the plan, before any weight is loaded. --noise FILE: the seed's own noise from a
// file gives the seeded run's latent bit for bit, other noise another latent, and a bad file is
// refused by the plan with what is wrong. The same model in the diffusers layout (every file under
// diffusers / HF names) gives the same latent as the original layout.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>

#include "osp/core/philox.h"
#include "osp/io/image_writer.h"
#include "osp/io/name_map.h"
#include "osp/io/safetensors.h"
#include "osp/model/dit.h"
#include "osp/model/dit_config.h"
#include "osp/model/lora.h"
#include "osp/pipeline/demo_model.h"
#include "osp/pipeline/pipeline.h"
#include "osp/pipeline/request.h"
#include "test_util.h"

using namespace osp;
namespace fs = std::filesystem;

namespace {
// The bytes of every PNG frame of an output folder, in order. (PNG, not MP4: libswscale's
// RGB->YUV conversion takes a different rounding path for differently aligned input buffers, so
// MP4 bytes of identical frames can differ between runs inside one process.)
std::string read_all(const fs::path& dir) {
  std::string all;
  for (int i = 0;; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%04d.png", i);
    std::ifstream f(dir / name, std::ios::binary);
    if (!f) break;
    all += std::string(std::istreambuf_iterator<char>(f), {});
  }
  return all;
}

class LoadedPipeline : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("osp_loaded_pipeline_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    pipeline::make_demo_model(model());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static std::string model() { return (root_ / "model").string(); }
  static std::string path(const std::string& n) { return (root_ / n).string(); }
  static pipeline::GenerateOptions opts(const std::string& out) {
    pipeline::GenerateOptions o;
    o.prompt = "a red fox runs through the snowy forest";
    o.width = 32;
    o.height = 32;
    o.frames = 1;
    o.steps = 2;
    o.seed = 11;
    o.out = out;
    return o;
  }
  static fs::path root_;
};
fs::path LoadedPipeline::root_;

}  // namespace

TEST_F(LoadedPipeline, RunsEqualOneShotGenerateAndReportProgress) {
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const auto ref = pipeline::generate(pipeline::plan_generation(model(), opts(path("ref/"))));
  ASSERT_FALSE(ref.interrupted);

  pipeline::Pipeline pipe(model(), {});
  for (int i = 0; i < 2; ++i) {  // the second run uses the models the first one loaded
    std::vector<pipeline::ProgressEvent> ev;
    pipeline::RunHooks hooks;
    hooks.on_progress = [&](const pipeline::ProgressEvent& e) { ev.push_back(e); };
    const std::string out = path("run" + std::to_string(i) + "/");
    const auto r = pipe.run(pipe.plan(opts(out)), hooks);
    ASSERT_FALSE(r.interrupted);
    EXPECT_FALSE(read_all(out).empty());
    EXPECT_TRUE(read_all(out) == read_all(path("ref/"))) << "run " << i;
    EXPECT_EQ(max_abs_diff(r.rgb, ref.rgb), 0.0);
    int last_step = 0;
    bool loading = false;
    for (const auto& e : ev) {
      loading |= e.stage == "model loading";
      if (e.stage != "sampling") continue;
      EXPECT_EQ(e.steps, 2);
      EXPECT_GE(e.step, last_step);
      last_step = e.step;
      if (e.step > 0) EXPECT_GE(e.eta_s, 0.0);
    }
    EXPECT_EQ(last_step, 2);
    EXPECT_EQ(loading, i == 0) << "models load once";
    EXPECT_EQ(ev.back().stage, "writing");
  }

  // Cancelled after the first sampling step: nothing written, the pipeline still works.
  pipeline::RunHooks hooks;
  int steps_seen = 0;
  hooks.on_progress = [&](const pipeline::ProgressEvent& e) {
    if (e.stage == "sampling") steps_seen = e.step;
  };
  hooks.cancelled = [&] { return steps_seen >= 1; };
  const auto rc = pipe.run(pipe.plan(opts(path("cancelled/"))), hooks);
  EXPECT_TRUE(rc.interrupted);
  EXPECT_TRUE(rc.cancelled);
  EXPECT_EQ(rc.interrupted_stage, "sampling");
  EXPECT_EQ(rc.steps_done, 1);
  EXPECT_FALSE(fs::exists(path("cancelled/")));
  const auto again = pipe.run(pipe.plan(opts(path("again/"))));
  EXPECT_TRUE(read_all(path("again/")) == read_all(path("ref/")));

  // Frames only (no output file), as the Python binding asks for them.
  pipeline::GenerateOptions no = opts("");
  no.no_output = true;
  const auto rn = pipe.run(pipe.plan(no));
  EXPECT_TRUE(rn.out_path.empty());
  EXPECT_EQ(max_abs_diff(rn.rgb, ref.rgb), 0.0);

  // A plan made for other model-level settings is refused by this pipeline.
  pipeline::GenerateOptions hif8 = opts(path("hif8/"));
  hif8.quant = "hif8";
  try {
    pipe.run(pipeline::plan_generation(model(), hif8));
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("differ from the loaded pipeline"), std::string::npos) << e.what();
  }
}

TEST_F(LoadedPipeline, LoraZeroBKeepsBytesOtherShapeRefusedBeforeLoading) {
  if (!io::png_available()) GTEST_SKIP() << "SKIP: built without libpng";
  const auto cfg = model::DiTConfig::from_json_file((fs::path(model()) / "config.json").string());
  model::LoraInit li;
  li.rank = 4;
  li.alpha = 4;
  model::Lora zero = model::init_lora(model::DiT::expected_shapes(cfg), li);  // B = 0
  model::save_lora(path("zero.safetensors"), zero);
  model::Lora nonzero = zero;
  uint32_t stream = 0;
  for (auto& [name, a] : nonzero.adapters) a.B = randn(a.B.shape(), 5, stream++);
  model::save_lora(path("nonzero.safetensors"), nonzero);
  model::DiTConfig other = cfg;
  other.dim = 128;
  other.ffn_dim = 256;
  model::save_lora(path("other.safetensors"), model::init_lora(model::DiT::expected_shapes(other), li));

  const auto base = pipeline::generate(pipeline::plan_generation(model(), opts(path("base/"))));
  ASSERT_FALSE(base.interrupted);
  pipeline::GenerateOptions o = opts(path("zero/"));
  o.loras = {path("zero.safetensors") + ":0.8"};
  const pipeline::Plan pz = pipeline::plan_generation(model(), o);
  ASSERT_EQ(pz.loras.size(), 1u);
  EXPECT_DOUBLE_EQ(pz.loras[0].scale, 0.8);
  pipeline::generate(pz);
  EXPECT_TRUE(read_all(path("zero/")) == read_all(path("base/")));

  o = opts(path("nonzero/"));
  o.loras = {path("nonzero.safetensors")};
  const auto rn = pipeline::generate(pipeline::plan_generation(model(), o));
  EXPECT_GT(max_abs_diff(rn.rgb, base.rgb), 0.0);
  // The same LoRA through a loaded pipeline: the same video.
  pipeline::PipelineOptions po;
  po.loras = o.loras;
  pipeline::Pipeline pipe(model(), po);
  const auto rp = pipe.run(pipe.plan(opts(path("nonzero_pipe/"))));
  EXPECT_TRUE(read_all(path("nonzero_pipe/")) == read_all(path("nonzero/")));

  // Another model's LoRA: refused by the plan (nothing loaded yet), naming the tensors.
  o = opts(path("other/"));
  o.loras = {path("other.safetensors")};
  try {
    pipeline::plan_generation(model(), o);
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_A"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pipeline::Pipeline(model(), [&] {
                 pipeline::PipelineOptions p;
                 p.loras = o.loras;
                 return p;
               }()),
               Error);
  EXPECT_FALSE(fs::exists(path("other/")));
}

TEST_F(LoadedPipeline, NoiseFileReplacesTheSeededNoise) {
  pipeline::GenerateOptions o = opts("");
  o.no_output = true;
  const pipeline::Plan plan = pipeline::plan_generation(model(), o);
  const pipeline::Geometry& g = plan.geo;
  const auto ref = pipeline::generate(plan);
  ASSERT_FALSE(ref.interrupted);

  // Seed 11's noise written to a file, run under another seed: the same latent, bit for bit.
  const Shape lat = {16, g.T, g.h, g.w};
  io::save_safetensors(path("seed11.safetensors"), {{"latent", randn(lat, 11)}});
  pipeline::GenerateOptions of = o;
  of.seed = 5;
  of.noise = path("seed11.safetensors");
  const auto same = pipeline::generate(pipeline::plan_generation(model(), of));
  test::expect_same_bits(same.latent, ref.latent.to(Device::cpu()), "latent from the seed's noise in a file");

  // Other noise ([1, 16, T, h, w] bf16, beside another tensor, named "noise"): another latent.
  io::save_safetensors(path("other.safetensors"),
                       {{"noise", randn({1, 16, g.T, g.h, g.w}, 12).to(DType::BF16)}, {"extra", randn({3}, 1)}});
  of.noise = path("other.safetensors");
  const auto other = pipeline::generate(pipeline::plan_generation(model(), of));
  const auto a = other.latent.to(Device::cpu()).to_float_vector(), b = ref.latent.to(Device::cpu()).to_float_vector();
  ASSERT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::abs(double(a[i]) - b[i]), norm += std::abs(double(b[i]));
  EXPECT_GT(diff, 0.1 * norm) << "other noise must give another latent";

  // Bad files are refused by the plan, before any work, saying what is wrong.
  auto plan_error = [&](const std::string& file) {
    pipeline::GenerateOptions ob = o;
    ob.noise = file;
    return test::error_of([&] { (void)pipeline::plan_generation(model(), ob); });
  };
  EXPECT_NE(plan_error(path("missing.safetensors")).find("no such file"), std::string::npos);
  io::save_safetensors(path("wide.safetensors"), {{"noise", randn({16, g.T, g.h, g.w + 2}, 1)}});
  const std::string wide = plan_error(path("wide.safetensors"));
  EXPECT_NE(wide.find("has shape [16, " + std::to_string(g.T) + ", " + std::to_string(g.h) + ", " +
                      std::to_string(g.w + 2) + "]"), std::string::npos) << wide;
  EXPECT_NE(wide.find("--size " + std::to_string((g.w + 2) * 8) + "x" + std::to_string(g.h * 8)), std::string::npos) << wide;
  io::save_safetensors(path("two.safetensors"), {{"a", randn(lat, 1)}, {"b", randn(lat, 2)}});
  EXPECT_NE(plan_error(path("two.safetensors")).find("none is named 'noise'"), std::string::npos);
  Tensor bad = randn(lat, 1);
  bad.data<float>()[7] = std::numeric_limits<float>::quiet_NaN();
  io::save_safetensors(path("nan.safetensors"), {{"noise", bad}});
  const std::string nan = plan_error(path("nan.safetensors"));
  EXPECT_NE(nan.find("element 7"), std::string::npos) << nan;
  EXPECT_NE(nan.find("finite"), std::string::npos) << nan;
  io::save_safetensors(path("int.safetensors"), {{"noise", Tensor::zeros(lat, DType::I32)}});
  EXPECT_NE(plan_error(path("int.safetensors")).find("must be F32, BF16 or F16"), std::string::npos);

  // "noise" is a field of local batch lines, not of server requests (a path on the server).
  pipeline::GenerateOptions r;
  pipeline::apply_json_settings(nlohmann::json{{"prompt", "x"}, {"noise", "n.safetensors"}}, r, true);
  EXPECT_EQ(r.noise, "n.safetensors");
  EXPECT_NE(test::error_of([&] {
              pipeline::apply_json_settings(nlohmann::json{{"prompt", "x"}, {"noise", "n.safetensors"}}, r, false);
            }).find("unknown field 'noise'"),
            std::string::npos);
}

TEST_F(LoadedPipeline, DiffusersLayoutGeneratesLikeTheOriginal) {
  // The demo model rewritten as a diffusers folder: transformer/ (DiT under diffusers names),
  // text_encoder/ (HF UMT5 names), vae/ (AutoencoderKLWan names), tokenizer/, model_index.json.
  const fs::path src = model(), dst = path("diffusers");
  fs::create_directories(dst);
  auto renamed = [](const std::string& file, auto rename) {
    const io::SafetensorsFile f = io::SafetensorsFile::open(file);
    std::map<std::string, Tensor> out;
    for (const auto& n : f.names()) out[rename(n).value_or(n)] = f.get(n);
    EXPECT_EQ(out.size(), f.size()) << file << ": two names map to one";
    return out;
  };
  const auto dit = renamed((src / "diffusion_pytorch_model.safetensors").string(), io::dit_original_to_diffusers);
  const auto t5 = renamed((src / "models_t5_umt5-xxl-enc-bf16.safetensors").string(), io::t5_wan_to_hf);
  const auto vae = renamed((src / "Wan2.1_VAE.safetensors").string(), io::vae_original_to_diffusers);
  ASSERT_TRUE(dit.count("blocks.0.attn1.to_q.weight") && t5.count("encoder.block.0.layer.0.SelfAttention.q.weight") &&
              vae.count("decoder.conv_in.weight") && vae.count("post_quant_conv.weight"))
      << "the files must really be under the other names";
  for (const auto& d : {"transformer", "text_encoder", "vae", "tokenizer"}) fs::create_directories(dst / d);
  io::save_safetensors((dst / "transformer/diffusion_pytorch_model.safetensors").string(), dit);
  io::save_safetensors((dst / "text_encoder/model.safetensors").string(), t5);
  io::save_safetensors((dst / "vae/diffusion_pytorch_model.safetensors").string(), vae);
  fs::copy_file(src / "config.json", dst / "transformer/config.json");
  fs::copy_file(src / "google/umt5-xxl/spiece.model", dst / "tokenizer/spiece.model");
  std::ofstream(dst / "model_index.json") << "{}";

  pipeline::GenerateOptions o = opts("");
  o.no_output = true;
  const auto ref = pipeline::generate(pipeline::plan_generation(model(), o));
  const pipeline::Plan plan = pipeline::plan_generation(dst.string(), o);
  EXPECT_EQ(plan.files.layout, pipeline::ModelLayout::WanDiffusers);
  const auto got = pipeline::generate(plan);
  ASSERT_FALSE(got.interrupted);
  test::expect_same_bits(got.latent, ref.latent.to(Device::cpu()), "latent of the diffusers-layout model");
  ASSERT_TRUE(got.rgb.defined() && ref.rgb.defined());
  test::expect_same_bits(got.rgb, ref.rgb.to(Device::cpu()), "frames of the diffusers-layout model (its VAE)");
}
