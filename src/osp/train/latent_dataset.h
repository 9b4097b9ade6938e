// The encoder cache: pre-encoded training samples (VAE latents + umT5 embeddings) on disk, and
// the reader the trainer draws batches from.
//
// Folder layout (written by LatentCacheWriter, `osp encode-dataset`):
//   manifest.json             written LAST (a folder without it is not a cache):
//     {"format": "osp-latent-cache", "version": 1, "latent_channels": 16, "text_dim": D,
//      "shards": ["shard-00000.safetensors", ...],
//      "empty_context": "empty_context.safetensors" | null,
//      "samples": [{"id": i, "shard": s, "latent_shape": [16, F, H, W], "context_rows": L,
//                   "caption": "...", "source": "clip.mp4"}, ...]}
//   shard-NNNNN.safetensors   tensors "<i>.latent" F32 [16, F, H, W] (normalised VAE mean) and
//                             "<i>.context" F32 [L, D] (umT5 output trimmed to the real tokens)
//   empty_context.safetensors "context" F32 [L0, D]: the embedding of the empty prompt, used for
//                             caption dropout (osp-next-spec §7: the caption becomes "")
// Every file is written atomically (temporary + fsync + rename).
//
// Reading: every epoch e visits the samples in a shuffled order (Fisher–Yates with Philox4x32-10
// keyed by the seed, counter (i, e)), and batches are formed by bucketing: walking that order,
// each sample joins the pending list of its latent shape; a list that reaches `batch` samples
// becomes the next batch (so a batch holds one latent size). Incomplete lists at the end of an
// epoch are dropped. The data position (epoch, batch index) is all the reader state there is:
// saving and restoring it resumes the exact same sequence of batches.
//
// Bad data: a missing or corrupt shard, a missing tensor, a shape that disagrees with the
// manifest or non-finite values raise an osp::Error naming the file (and sample); with
// skip_bad_samples the sample is left out of its batch, counted (skipped()) and a warning is
// logged instead.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/io/atomic_file.h"

namespace osp::train {

struct LatentSampleInfo {
  int64_t id = 0;
  int shard = 0;
  Shape latent_shape;  // [C, F, H, W]
  int64_t context_rows = 0;
  std::string caption, source;
};

struct LatentSample {
  int64_t id = 0;
  Tensor latent;   // CPU F32 [C, F, H, W]
  Tensor context;  // CPU F32 [L, D]
  std::string caption;
};

struct DataPosition {
  int64_t epoch = 0;
  int64_t batch = 0;  // index of the next batch within the epoch
  bool operator==(const DataPosition& o) const { return epoch == o.epoch && batch == o.batch; }
};

class LatentCacheWriter {
 public:
  // `dir` is created when missing; it must not hold a manifest.json already unless ow = Allow.
  LatentCacheWriter(const std::string& dir, int64_t samples_per_shard = 64,
                    io::Overwrite ow = io::Overwrite::Refuse);
  // Adds one sample (any float dtype/device; stored as F32). latent [C, F, H, W], context [L, D].
  void add(const Tensor& latent, const Tensor& context, const std::string& caption,
           const std::string& source = "");
  // The empty-prompt embedding [L0, D] for caption dropout.
  void set_empty_context(const Tensor& context);
  // Writes the last shard, the empty context and manifest.json (last). Returns the sample count.
  int64_t finish();
  ~LatentCacheWriter();

 private:
  void flush_shard();
  std::string dir_;
  int64_t per_shard_;
  io::Overwrite ow_;
  int64_t text_dim_ = -1, channels_ = -1;
  std::vector<LatentSampleInfo> samples_;
  std::vector<std::string> shards_;
  std::map<std::string, Tensor> pending_;
  Tensor empty_;
  bool finished_ = false;
};

struct LatentDatasetOptions {
  uint64_t seed = 0;
  int64_t batch = 1;
  bool skip_bad_samples = false;
};

class LatentDataset {
 public:
  // Reads and validates manifest.json (every error names the file); checks that every shard
  // exists unless skip_bad_samples; checks that some latent size has at least `batch` samples.
  static LatentDataset open(const std::string& dir, const LatentDatasetOptions& opt);

  const std::string& dir() const { return dir_; }
  int64_t size() const { return int64_t(samples_.size()); }
  const std::vector<LatentSampleInfo>& samples() const { return samples_; }
  int64_t text_dim() const { return text_dim_; }
  int64_t latent_channels() const { return channels_; }
  bool has_empty_context() const { return !empty_file_.empty(); }
  // The empty-prompt embedding (throws when the cache has none).
  Tensor empty_context() const;

  // The batches (sample ids) of epoch e, in order.
  std::vector<std::vector<int64_t>> epoch_batches(int64_t epoch) const;
  // Loads one sample (throws an osp::Error naming the shard file and the sample on bad data).
  LatentSample load(int64_t id) const;
  // The next batch at the current position (then advances); bad samples are skipped when
  // allowed (a batch may then be smaller; an all-bad batch is passed over).
  std::vector<LatentSample> next_batch();

  DataPosition position() const { return pos_; }
  void set_position(const DataPosition& p);
  int64_t skipped() const { return skipped_; }
  int64_t batch_size() const { return opt_.batch; }

 private:
  std::string dir_;
  LatentDatasetOptions opt_;
  int64_t text_dim_ = 0, channels_ = 0;
  std::vector<std::string> shard_files_;
  std::string empty_file_;
  std::vector<LatentSampleInfo> samples_;
  std::map<int64_t, size_t> by_id_;
  DataPosition pos_;
  int64_t skipped_ = 0;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<std::vector<int64_t>> cached_batches_;
  struct ShardCache;
  std::shared_ptr<ShardCache> shards_;
};

}  // namespace osp::train
