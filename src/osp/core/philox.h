// Philox4x32-10 counter-based RNG (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as
// easy as 1, 2, 3", SC'11) and the Gaussian noise osp draws from it.
//
// Why counter-based: the value at position n of a noise tensor is a pure function of
// (seed, stream, n). It does not depend on how many threads fill the tensor, on how many ranks
// take part, or on the device: noise is always generated on the host with this code and then
// copied to the device, so one seed gives the same latent everywhere.
//
// Noise layout (documented so other implementations can reproduce it):
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (block & 0xffffffff, block >> 32, stream, 0)   for block = n / 4
//   r[0..3] = Philox4x32-10(counter, key)
//   u_j     = (r[j] + 0.5) · 2^-32                            (in (0, 1), double)
//   element 4·block + 0 = sqrt(−2 ln u_0) · cos(2π u_1)       (Box–Muller, double, then f32)
//   element 4·block + 1 = sqrt(−2 ln u_0) · sin(2π u_1)
//   element 4·block + 2 = sqrt(−2 ln u_2) · cos(2π u_3)
//   element 4·block + 3 = sqrt(−2 ln u_2) · sin(2π u_3)
// This is NOT PyTorch's randn stream: a seed gives a different (but equally valid) video than
// the reference scripts. Use `--noise FILE` style inputs when bit-parity with PyTorch matters.
#pragma once
#include <array>
#include <cstdint>

#include "osp/core/tensor.h"

namespace osp {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// One Philox4x32 block with 10 rounds (the Random123 default).
PhiloxCounter philox4x32_10(PhiloxCounter ctr, PhiloxKey key);

// Fills out[0..n) with standard normals from (seed, stream), starting at element `first`
// (so a slice of a larger tensor can be generated independently). Multi-threaded (OpenMP);
// the result does not depend on the thread count.
void philox_normal(uint64_t seed, uint32_t stream, uint64_t first, float* out, int64_t n);
// Fills out[0..n) with uniforms in (0, 1), same counter layout (u_j above, as f32).
void philox_uniform(uint64_t seed, uint32_t stream, uint64_t first, float* out, int64_t n);

// A new CPU F32 tensor of the given shape filled with standard normals (element n of the
// row-major tensor = normal number n of (seed, stream)).
Tensor randn(const Shape& shape, uint64_t seed, uint32_t stream = 0);

}  // namespace osp
