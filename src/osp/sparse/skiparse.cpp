// Skiparse-2D layout math (osp-next-spec §2.2, §3). Everything here is host-side index math;
// the maps are built once per (grid, P, kind) by the callers and cached there.
#include "osp/sparse/skiparse.h"

#include <algorithm>
#include <limits>

namespace osp::sparse {

const char* block_kind_name(BlockKind k) {
  switch (k) {
    case BlockKind::Full: return "full";
    case BlockKind::Token: return "token";
    case BlockKind::Group: return "group";
  }
  return "?";
}

std::vector<BlockKind> plan_blocks(int num_layers, const std::string& mode, int num_full_blocks) {
  OSP_CHECK(num_layers > 0, "plan_blocks: num_layers must be positive, got ", num_layers);
  std::vector<BlockKind> kinds(size_t(num_layers), BlockKind::Full);
  if (mode == "full") return kinds;
  if (mode == "uniform")
    fail("plan_blocks: skiparse mode 'uniform' is not implemented (the reference raises too); "
         "use 'dual_end' or 'full'");
  OSP_CHECK(mode == "dual_end", "plan_blocks: unknown skiparse mode '", mode,
            "' (expected 'full' or 'dual_end')");
  OSP_CHECK(num_layers % 2 == 0, "plan_blocks: dual_end needs an even number of layers, got ",
            num_layers);
  OSP_CHECK(num_full_blocks >= 0, "plan_blocks: num_full_blocks must be >= 0, got ",
            num_full_blocks);
  if (num_full_blocks > 0) {
    OSP_CHECK(num_full_blocks % 4 == 0, "plan_blocks: dual_end needs num_full_blocks % 4 == 0 "
              "(so the sparse region starts with a token block), got ", num_full_blocks);
    OSP_CHECK(num_full_blocks <= num_layers / 2, "plan_blocks: num_full_blocks (",
              num_full_blocks, ") must be at most num_layers/2 (", num_layers / 2, ")");
  }
  const int half = num_full_blocks / 2;
  for (int i = 0; i < num_layers; ++i) {
    const bool full = i < half || i >= num_layers - half;
    kinds[size_t(i)] = full ? BlockKind::Full : (i % 2 == 0 ? BlockKind::Token : BlockKind::Group);
  }
  return kinds;
}

static void check_grid(const Grid& g, int P, const char* who) {
  OSP_CHECK(g.T > 0 && g.H > 0 && g.W > 0, who, ": grid must be positive, got T=", g.T, " H=",
            g.H, " W=", g.W);
  OSP_CHECK(P >= 1 && P <= 64, who, ": sparse_ratio P must be in [1, 64], got ", P);
}

SkiparseGeometry skiparse_geometry(const Grid& g, int P) {
  check_grid(g, P, "skiparse_geometry");
  SkiparseGeometry geo;
  geo.grid = g;
  geo.P = P;
  const int64_t P2 = int64_t(P) * P;
  geo.Hp = (g.H + P2 - 1) / P2 * P2;
  geo.Wp = (g.W + P2 - 1) / P2 * P2;
  geo.L = g.T * geo.Hp * geo.Wp / P2;
  OSP_CHECK(g.T * geo.Hp * geo.Wp < int64_t(std::numeric_limits<int32_t>::max()),
            "skiparse_geometry: padded grid ", g.T, "x", geo.Hp, "x", geo.Wp,
            " has too many tokens for I32 index maps");
  return geo;
}

std::vector<int64_t> skiparse_padded_positions(const Grid& g, int P, BlockKind kind,
                                               bool padding_last) {
  OSP_CHECK(kind != BlockKind::Full, "skiparse index maps exist for token and group layouts only");
  const SkiparseGeometry geo = skiparse_geometry(g, P);
  const int64_t P2 = int64_t(P) * P, Hp = geo.Hp, Wp = geo.Wp, L = geo.L;
  std::vector<int64_t> pos(size_t(P2 * L), -1);
  for (int64_t t = 0; t < g.T; ++t)
    for (int64_t y = 0; y < Hp; ++y)
      for (int64_t x = 0; x < Wp; ++x) {
        int64_t grp, s;
        if (kind == BlockKind::Token) {
          grp = (y % P) * P + (x % P);
          s = (t * (Hp / P) + y / P) * (Wp / P) + x / P;
        } else {
          const int64_t y2 = y / P2, p1 = (y / P) % P, p2 = y % P;
          const int64_t x2 = x / P2, q1 = (x / P) % P, q2 = x % P;
          grp = p1 * P + q1;
          s = (((t * (Hp / P2) + y2) * P + p2) * (Wp / P2) + x2) * P + q2;
        }
        pos[size_t(grp * L + s)] = (t * Hp + y) * Wp + x;
      }
  if (padding_last) {
    for (int64_t r = 0; r < P2; ++r) {
      auto b = pos.begin() + r * L;
      std::stable_partition(b, b + L, [&](int64_t p) {
        const int64_t x = p % Wp, y = (p / Wp) % Hp;
        return y < g.H && x < g.W;
      });
    }
  }
  return pos;
}

int64_t padded_to_full(const Grid& g, int64_t Hp, int64_t Wp, int64_t padded_pos) {
  const int64_t x = padded_pos % Wp, y = (padded_pos / Wp) % Hp, t = padded_pos / (Wp * Hp);
  if (y >= g.H || x >= g.W) return -1;
  return (t * g.H + y) * g.W + x;
}

Tensor skiparse_index(const Grid& g, int P, BlockKind kind, bool padding_last) {
  const SkiparseGeometry geo = skiparse_geometry(g, P);
  const std::vector<int64_t> pos = skiparse_padded_positions(g, P, kind, padding_last);
  const int64_t P2 = int64_t(P) * P;
  Tensor out = Tensor::empty({P2, geo.L}, DType::I32);
  int32_t* o = out.data<int32_t>();
  for (size_t i = 0; i < pos.size(); ++i) o[i] = int32_t(padded_to_full(g, geo.Hp, geo.Wp, pos[i]));
  return out;
}

std::vector<int32_t> skiparse_row_lengths(const Grid& g, int P, BlockKind kind) {
  const SkiparseGeometry geo = skiparse_geometry(g, P);
  const std::vector<int64_t> pos = skiparse_padded_positions(g, P, kind, false);
  const int64_t P2 = int64_t(P) * P;
  std::vector<int32_t> lens(size_t(P2), 0);
  for (int64_t r = 0; r < P2; ++r)
    for (int64_t s = 0; s < geo.L; ++s)
      if (padded_to_full(g, geo.Hp, geo.Wp, pos[size_t(r * geo.L + s)]) >= 0) ++lens[size_t(r)];
  return lens;
}

// Checks an index map argument: CPU I32, contiguous; returns its flat values.
static const int32_t* map_values(const Tensor& m, const char* what) {
  OSP_CHECK(m.defined(), what, ": undefined tensor");
  OSP_CHECK(m.device().is_cpu() && m.dtype() == DType::I32 && m.is_contiguous(), what,
            ": expected a contiguous CPU i32 index map, got ", m.desc());
  return m.data<int32_t>();
}

Tensor inverse_to_full(const Tensor& layout, int64_t num_tokens) {
  const int32_t* v = map_values(layout, "inverse_to_full");
  OSP_CHECK(num_tokens >= 0, "inverse_to_full: negative token count ", num_tokens);
  Tensor out = Tensor::empty({num_tokens}, DType::I32);
  int32_t* o = out.data<int32_t>();
  std::fill(o, o + num_tokens, -1);
  for (int64_t j = 0; j < layout.numel(); ++j) {
    const int32_t n = v[j];
    if (n < 0) continue;
    OSP_CHECK(n < num_tokens, "inverse_to_full: map entry ", n, " at ", j,
              " is outside [0, ", num_tokens, ")");
    OSP_CHECK(o[n] < 0, "inverse_to_full: token ", n, " appears twice (positions ", o[n], " and ",
              j, ")");
    o[n] = int32_t(j);
  }
  for (int64_t n = 0; n < num_tokens; ++n)
    OSP_CHECK(o[n] >= 0, "inverse_to_full: token ", n, " is missing from the layout");
  return out;
}

Tensor compose_switch(const Tensor& from, const Tensor& to) {
  const int32_t* f = map_values(from, "compose_switch(from)");
  const int32_t* t = map_values(to, "compose_switch(to)");
  int64_t n_tokens = 0;
  for (int64_t j = 0; j < from.numel(); ++j) n_tokens = std::max<int64_t>(n_tokens, f[j] + 1);
  for (int64_t j = 0; j < to.numel(); ++j) n_tokens = std::max<int64_t>(n_tokens, t[j] + 1);
  const Tensor inv = inverse_to_full(from, n_tokens);
  const int32_t* iv = inv.data<int32_t>();
  Tensor out = Tensor::empty({to.numel()}, DType::I32);
  int32_t* o = out.data<int32_t>();
  for (int64_t j = 0; j < to.numel(); ++j) o[j] = t[j] < 0 ? -1 : iv[t[j]];
  return out;
}

}  // namespace osp::sparse
