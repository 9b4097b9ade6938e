// Communication volume of one DiT forward under SSP or Ulysses (osp-next-spec §4.8), computed
// from the same layout/exchange tables a real run uses, with no data movement. The MPI test
// checks it against the bytes the communicators actually count.
#pragma once
#include <cstdint>
#include <string>

#include "osp/parallel/sequence_parallel.h"

namespace osp::parallel {

struct CommVolume {
  int S = 1, U = 1;                 // ranks; inner Ulysses degree of sparse blocks
  int full_blocks = 0;              // blocks using Ulysses over all ranks
  int sparse_blocks = 0;
  int switches = 0;                 // token↔group all-to-alls
  int transitions = 0;              // full→sparse / sparse→full all-to-alls
  uint64_t full_bytes = 0;          // Ulysses q, k, v, out all-to-alls of full blocks
  uint64_t sparse_ulysses_bytes = 0;  // inner Ulysses of sparse blocks (U > 1 only)
  uint64_t switch_bytes = 0;
  uint64_t transition_bytes = 0;
  uint64_t output_bytes = 0;        // final all-gather (out_channels per token)
  uint64_t total() const {
    return full_bytes + sparse_ulysses_bytes + switch_bytes + transition_bytes + output_bytes;
  }
};

// Bytes that `rank` of S sends in one forward of `plan` for B samples, hidden size
// heads·head_dim, elem_bytes per element (2 for bf16), and out_channels gathered at the end
// (64 when the head runs before gather_output, 0 to leave the gather out).
// mode: "ssp" (make_ssp) or "ulysses" (make_ulysses). Throws what setup() would throw.
CommVolume comm_volume(const ForwardPlan& plan, const std::string& mode, int S, int rank,
                       int64_t B, size_t elem_bytes, int64_t out_channels);

}  // namespace osp::parallel
