// Checkpoint = a named set of tensors from any supported file, behind one interface.
//
//   auto ck = osp::io::open_checkpoint("Wan2.1-T2V-1.3B/");       // file or directory
//   osp::Tensor w = ck->get("blocks.0.self_attn.q.weight");        // zero-copy CPU view
//   osp::Tensor b = ck->get("head.head.bias", {64});                // with a shape check
//
// Formats: a single .safetensors, a sharded "*.safetensors.index.json", a torch.save .pth.
// A directory resolves to (first match): one *.safetensors.index.json; else
// diffusion_pytorch_model.safetensors; else its only *.safetensors; else its only *.pth; else
// the same search in its transformer/ subfolder (diffusers layout). Anything ambiguous or
// missing is an osp::Error listing what was found.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::io {

struct TensorInfo {
  DType dtype = DType::F32;
  Shape shape;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const std::string& path() const = 0;
  // "safetensors", "safetensors-sharded", "pth", "memory", or "<inner>+renamed".
  virtual std::string format() const = 0;
  virtual std::vector<std::string> names() const = 0;  // sorted
  virtual bool has(const std::string& name) const = 0;
  virtual TensorInfo info(const std::string& name) const = 0;
  // A CPU tensor; for files, a read-only view of the mapping (clone() before writing).
  // Missing names throw an osp::Error listing close names.
  virtual Tensor get(const std::string& name) const = 0;
  virtual const std::map<std::string, std::string>& metadata() const = 0;

  // get() plus a shape check ("checkpoint X: tensor 'n' has shape A, expected B").
  Tensor get(const std::string& name, const Shape& expected) const;
  size_t size() const { return names().size(); }
};

using Checkpoint = std::shared_ptr<const TensorSource>;

// Opens a file or directory (see the header comment).
Checkpoint open_checkpoint(const std::string& path);
// The file open_checkpoint would read for `path` (a directory is resolved).
std::string resolve_checkpoint_path(const std::string& path);

// In-memory tensors (tests, demo models, conversions).
Checkpoint memory_checkpoint(std::map<std::string, Tensor> tensors,
                             std::map<std::string, std::string> metadata = {},
                             std::string name = "<memory>");

// A view of `inner` under other names: `outer_to_inner` maps every exposed name to the inner
// name it reads. Inner names not in the map are hidden.
Checkpoint renamed_checkpoint(Checkpoint inner, std::map<std::string, std::string> outer_to_inner,
                              std::string what);
// Writes every tensor of `src` (in its own dtype; strided views made contiguous one at a time)
// to one safetensors file with src's metadata plus `extra_metadata` (e.g. a .pth -> safetensors
// conversion for `osp convert`).
void save_as_safetensors(const TensorSource& src, const std::string& path,
                         const std::map<std::string, std::string>& extra_metadata = {});

// The tensors whose names start with `prefix`, with the prefix removed (e.g. "weights." in
// the golden files, "model." in some training checkpoints). Throws if none match.
Checkpoint strip_prefix(Checkpoint inner, const std::string& prefix);

}  // namespace osp::io
