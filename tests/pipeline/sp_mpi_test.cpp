// The whole pipeline under mpirun (1, 2, 4 ranks) with Sparse Sequence Parallelism: every rank
// runs it, rank 0 writes the MP4, and the frames match a single-device run of the same seed up
// to last-bit GEMM/reduction differences (a few levels of 255 in a few pixels).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "osp/parallel/communicator.h"
#include "osp/io/video_writer.h"
#include "osp/pipeline/demo_model.h"
#include "osp/pipeline/pipeline.h"

using namespace osp;
namespace fs = std::filesystem;

TEST(PipelineSP, SspMatchesSingleDevice) {
  if (!io::video_writer_available()) GTEST_SKIP() << "SKIP: built without FFmpeg";
  auto comm = parallel::make_communicator("mpi");
  const int rank = comm->rank(), size = comm->size();
  // One folder per job (rank 0's pid, broadcast), model written by rank 0.
  Tensor id = Tensor::from_vector({float(::getpid() % 1000000)}, {1});
  comm->broadcast(id, 0);
  const fs::path dir = fs::temp_directory_path() / ("osp_sp_" + std::to_string(int(id.data<float>()[0])) +
                                                     "_np" + std::to_string(size));
  if (rank == 0) {
    fs::remove_all(dir);
    pipeline::make_demo_model((dir / "model").string());
  }
  comm->barrier();

  pipeline::GenerateOptions o;
  o.prompt = "a red fox runs through the snowy forest";
  o.width = 96;
  o.height = 64;
  o.frames = 5;
  o.steps = 3;
  o.seed = 77;
  o.sp = "ssp";
  o.out = (dir / "ssp.mp4").string();
  const auto r_sp = pipeline::generate(pipeline::plan_generation((dir / "model").string(), o));

  // The same options on this rank alone (--sp none): the frames match up to SSP's rounding.
  auto expect_matches_one_rank = [&](const pipeline::GenerateOptions& with_sp, const pipeline::GenerateResult& r_sp,
                                     const std::string& tag) {
    pipeline::GenerateOptions o1 = with_sp;
    o1.sp = "none";
    o1.out = (dir / (tag + "_single_r" + std::to_string(rank) + ".mp4")).string();
    const auto r_1 = pipeline::generate(pipeline::plan_generation((dir / "model").string(), o1));
    ASSERT_EQ(r_sp.rgb.shape(), r_1.rgb.shape());
    double sum = 0;
    const int64_t n = r_sp.rgb.numel();
    for (int64_t i = 0; i < n; ++i)
      sum += std::abs(int(r_sp.rgb.data<uint8_t>()[i]) - int(r_1.rgb.data<uint8_t>()[i]));
    EXPECT_LT(sum / n, 1.0) << tag << ": mean |ssp - single| in levels of 255, " << size << " ranks";
  };
  expect_matches_one_rank(o, r_sp, "untiled");
  // A tiled VAE decode (160x64 with a 1 MiB budget: two latent tiles of 17 columns) has its tiles
  // dealt out over the ranks (DecodeOptions::comm; with 4 ranks two get none): the same frames as
  // one process decoding both tiles.
  pipeline::GenerateOptions t = o;
  t.width = 160;
  t.vae_tile_budget = size_t(1) << 20;
  t.out = (dir / "ssp_tiled.mp4").string();
  expect_matches_one_rank(t, pipeline::generate(pipeline::plan_generation((dir / "model").string(), t)), "tiled");
  comm->barrier();
  if (rank == 0) {
    const io::VideoProbe p = io::probe_video(o.out);
    EXPECT_EQ(p.frames, 5);
    EXPECT_EQ(p.width, 96);
    EXPECT_EQ(p.height, 64);
    fs::remove_all(dir);
  }
}
