// Skiparse-2D layout math (osp-next-spec §3): block planning, padding, and the index maps that
// turn the full token sequence into P² sub-sequences (token-wise / group-wise) and back.
// Pure index math on the host; the data movement itself is ops::gather_rows.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::sparse {

enum class BlockKind : uint8_t { Full, Token, Group };
const char* block_kind_name(BlockKind k);  // "full", "token", "group"

// Token grid after patch embedding: T frames, H rows, W columns; token n = (t·H + y)·W + x.
struct Grid {
  int64_t T = 0, H = 0, W = 0;
  int64_t numel() const { return T * H * W; }
};

// Block plan (spec §2.2): "full" → all Full; "dual_end" → num_full_blocks/2 Full blocks at each
// end and alternating Token, Group in the middle. sparse_ratio is P. Errors name the rule broken.
std::vector<BlockKind> plan_blocks(int num_layers, const std::string& mode, int num_full_blocks);

// Padded grid and sub-sequence length for a grid and P (Hp, Wp multiples of P²).
struct SkiparseGeometry {
  Grid grid;
  int P = 2;
  int64_t Hp = 0, Wp = 0;
  int64_t L = 0;  // padded sub-sequence length T·Hp·Wp / P²
};
SkiparseGeometry skiparse_geometry(const Grid& g, int P);

// Index map I32 [P², L]: entry [g, s] = full-layout token index (t·H + y)·W + x of the token at
// sub-sequence g, position s, or -1 for a padding token. padding_last = false gives the
// reference order (spec §3.2/3.3; equals the golden maps); true stably moves each row's padding
// entries to the end of the row (attention is order-free, so this only changes where padded
// rows sit: it lets attention use per-row lengths instead of masks).
Tensor skiparse_index(const Grid& g, int P, BlockKind kind, bool padding_last);

// Number of real (non-padding) tokens in each of the P² sub-sequences.
std::vector<int32_t> skiparse_row_lengths(const Grid& g, int P, BlockKind kind);

// Composes maps: out[j] = position in layout `from` (flattened [P²·L]) of the token that sits at
// position j of layout `to`, or -1 where `to` holds padding. from/to are skiparse_index results;
// used for the token↔group switch.
Tensor compose_switch(const Tensor& from, const Tensor& to);

// Inverse map to the full layout: out[n] = flattened position of full token n in `layout`.
Tensor inverse_to_full(const Tensor& layout, int64_t num_tokens);

// The same maps in padded-grid coordinates: flat [P²·L] vector whose entry g·L + s is the
// padded-grid position (t·Hp + y)·Wp + x (padding tokens included, so every entry is >= 0).
// Used where padding tokens need an identity (the SSP all-to-all buffer layout).
std::vector<int64_t> skiparse_padded_positions(const Grid& g, int P, BlockKind kind,
                                               bool padding_last);
// Padded-grid position → full-layout token index, or -1 for a padding position.
int64_t padded_to_full(const Grid& g, int64_t Hp, int64_t Wp, int64_t padded_pos);

}  // namespace osp::sparse
