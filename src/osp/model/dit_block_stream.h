// DiT block streaming (inference): the blocks' weights live in pinned host memory, one buffer
// per block, and reach the device only around their block's forward, through the DiT's
// per-block forward hooks (DiT::set_block_forward_hooks — the same mechanism ZeRO-3 weight
// sharding uses to gather a block's compute copy; there is one DiT forward).
//
// Device side: a ring of two block buffers ("slots"), each as large as the largest block.
// Block i runs from slot i % 2. In before(i) the compute stream waits for block i's copy, block
// i's layer tensors are bound as views into its slot, and block i + 1's copy into the other slot
// is issued on a separate copy stream (core/copy_stream.h) — ordered after the compute work of
// the block that last read that slot (an event marked in its after()), so it overlaps block i's
// compute. In after(i) block i's tensors are released (left undefined) and the slot's mark is
// recorded. The last block prefetches block 0 of the next forward. At any moment at most two
// blocks' weights are on the device (the one computing, the one arriving); a slot that already
// holds the block it is asked for is not copied again (so a 2-block model copies nothing after
// its first forward).
//
// What is streamed is exactly what the bound block holds on the device: bf16 weights (CUDA; F32
// on the CPU), FP8 mode's E4M3 codes and scales (1 byte per weight: 8-bit streaming), biases,
// norms and modulation. Embeddings, time projection and head stay resident. On the CPU the
// "device" is host memory and the copy a memcpy: the same code path, used by the tests to prove
// bitwise equality with the resident model.
//
// Use: bind with DiTOptions::on_block_bound = take (so binding never holds more than one block
// on the device), then attach(); or enable() on an already-bound DiT. The stream lives as long
// as the DiT's hooks (attach hands them a shared_ptr); the DiT must not move after attach.
#pragma once
#include <memory>
#include <vector>

#include "osp/core/copy_stream.h"
#include "osp/core/tensor.h"

namespace osp::model {

class DiT;
struct DiTOptions;

class BlockStream {
 public:
  explicit BlockStream(Device dev);
  ~BlockStream();
  BlockStream(const BlockStream&) = delete;
  BlockStream& operator=(const BlockStream&) = delete;

  // Block i of `dit` (bound, its weights on `dev`): copied into one pinned host buffer, then
  // released on the device. Blocks may be taken in any order, each once.
  void take(DiT& dit, int i);
  // Installs dit's forward hooks (replacing any); every block must have been taken. Allocates
  // the two device slots.
  static void attach(const std::shared_ptr<BlockStream>& s, DiT& dit);
  // take() of every block of an already-bound DiT, then attach().
  static std::shared_ptr<BlockStream> enable(DiT& dit);
  // Options for binding a streamed DiT: `opt` with on_block_bound = s->take.
  static void bind_into(const std::shared_ptr<BlockStream>& s, DiTOptions& opt);

  struct Stats {
    int64_t copies = 0;          // host → device block copies issued
    size_t bytes_copied = 0;
    int peak_resident = 0;       // most blocks on the device at once (bound, or in a slot)
    int peak_bound = 0;          // most blocks bound into the layers at once (DiT's own count)
    size_t host_bytes = 0;       // pinned host memory holding the blocks
    size_t ring_bytes = 0;       // device memory of the two slots
    size_t max_block_bytes = 0;  // the largest block
    int blocks = 0;
  };
  const Stats& stats() const { return st_; }
  // Zeroes copies / bytes_copied and re-measures the peaks from now on.
  void reset_stats();

 private:
  struct Entry {
    size_t offset = 0, bytes = 0;
    Shape shape;
    DType dtype = DType::F32;
    bool defined = false;
  };
  struct HostBlock {
    std::shared_ptr<void> data;  // pinned
    size_t bytes = 0;
    std::vector<Entry> entries;  // one per DiT::block_weights(i) pointer, same order
    bool taken = false;
  };
  void before(int i);
  void after(int i);
  void fetch(int i);  // block i into slot i % 2 unless it is there (copy stream)
  void count_resident();

  Device dev_;
  CopyStream q_;
  DiT* dit_ = nullptr;
  std::vector<HostBlock> host_;
  Tensor slot_[2];           // U8 [max_block_bytes] on dev_
  int slot_block_[2] = {-1, -1};
  int bound_ = -1;           // the block bound now (−1: none)
  Stats st_;
};

}  // namespace osp::model
