// Wan 3D RoPE angle tables (wan-spec §2.5, osp-next-spec §3.7) for an arbitrary list of tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/sparse/skiparse.h"

namespace osp::parallel {

// Head dim D viewed as D/2 interleaved pairs, c = D/2: the first c − 2⌊c/3⌋ pairs rotate with
// the frame index, the next ⌊c/3⌋ with the row, the last ⌊c/3⌋ with the column (D = 128:
// 22/21/21 pairs = 44/42/42 channels). Axis with 2m channels uses θ_j = 10000^(−2j/(2m)).
struct RopeSplit {
  int frame_pairs = 0, row_pairs = 0, col_pairs = 0;
};
RopeSplit rope_split(int head_dim);

// cos/sin table, CPU F32 [M, D/2, 2]: row m holds (cos θ, sin θ) of every pair for the token with
// full-layout index tokens[m] = (t·H + y)·W + x of `grid` (its original grid position), or angle 0
// (cos 1, sin 0) where tokens[m] < 0 (padding). Angles are computed in fp64 (reference
// precision), then rounded to f32. Positions must be < 1024 on every axis (the reference table).
Tensor rope_cos_sin(const sparse::Grid& grid, int head_dim, const int32_t* tokens, int64_t M);

// The table for the whole grid in full-layout order: [N, D/2, 2].
Tensor rope_cos_sin_full(const sparse::Grid& grid, int head_dim);

}  // namespace osp::parallel
