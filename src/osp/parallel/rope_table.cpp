#include "osp/parallel/rope_table.h"

#include <cmath>

namespace osp::parallel {

RopeSplit rope_split(int head_dim) {
  OSP_CHECK(head_dim >= 6 && head_dim % 2 == 0,
            "rope: head_dim must be even and >= 6 (three RoPE axes), got ", head_dim);
  const int c = head_dim / 2;
  RopeSplit s;
  s.row_pairs = s.col_pairs = c / 3;
  s.frame_pairs = c - 2 * (c / 3);
  return s;
}

Tensor rope_cos_sin(const sparse::Grid& grid, int head_dim, const int32_t* tokens, int64_t M) {
  const RopeSplit sp = rope_split(head_dim);
  OSP_CHECK(grid.T > 0 && grid.H > 0 && grid.W > 0, "rope: grid must be positive, got ", grid.T,
            "x", grid.H, "x", grid.W);
  OSP_CHECK(grid.T <= 1024 && grid.H <= 1024 && grid.W <= 1024,
            "rope: grid positions must be < 1024 on every axis (Wan's table length), got ",
            grid.T, "x", grid.H, "x", grid.W);
  const int c = head_dim / 2;
  // Per-pair inverse frequency and axis (0 frame, 1 row, 2 col), in fp64 as rope_params does.
  std::vector<double> freq(static_cast<size_t>(c));
  std::vector<int> axis(static_cast<size_t>(c));
  for (int p = 0; p < c; ++p) {
    int j, ax, pairs;
    if (p < sp.frame_pairs) {
      j = p, ax = 0, pairs = sp.frame_pairs;
    } else if (p < sp.frame_pairs + sp.row_pairs) {
      j = p - sp.frame_pairs, ax = 1, pairs = sp.row_pairs;
    } else {
      j = p - sp.frame_pairs - sp.row_pairs, ax = 2, pairs = sp.col_pairs;
    }
    freq[size_t(p)] = 1.0 / std::pow(10000.0, double(2 * j) / double(2 * pairs));
    axis[size_t(p)] = ax;
  }
  const int64_t N = grid.numel();
  Tensor out = Tensor::empty({M, c, 2}, DType::F32);
  float* o = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const int32_t n = tokens[m];
    float* row = o + m * c * 2;
    if (n < 0) {
      for (int p = 0; p < c; ++p) row[2 * p] = 1.f, row[2 * p + 1] = 0.f;
      continue;
    }
    if (n >= N) continue;  // validated below (no throw inside the parallel region)
    const int64_t pos[3] = {n / (grid.H * grid.W), (n / grid.W) % grid.H, n % grid.W};
    for (int p = 0; p < c; ++p) {
      const double a = double(pos[axis[size_t(p)]]) * freq[size_t(p)];
      row[2 * p] = float(std::cos(a));
      row[2 * p + 1] = float(std::sin(a));
    }
  }
  for (int64_t m = 0; m < M; ++m)
    OSP_CHECK(tokens[m] < N, "rope: token index ", tokens[m], " outside the grid of ", N,
              " tokens");
  return out;
}

Tensor rope_cos_sin_full(const sparse::Grid& grid, int head_dim) {
  const int64_t N = grid.numel();
  std::vector<int32_t> ids(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) ids[size_t(n)] = int32_t(n);
  return rope_cos_sin(grid, head_dim, ids.data(), N);
}

}  // namespace osp::parallel
