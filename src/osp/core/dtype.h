// Element types and the scalar conversions between them (bf16, f16 on the CPU).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace osp {

enum class DType : uint8_t { F32, BF16, F16, F8E4M3, HiF8, I32, I64, U8, F64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "f32", "bf16", ...
// Parses our names and the safetensors names ("F32", "BF16", "F8_E4M3", ...).
// Throws osp::Error on an unknown name.
DType dtype_from_name(const std::string& name);
bool dtype_is_float(DType t);

// ---- scalar conversions (round to nearest even, as PyTorch does) ----
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
// Rounds a float to the nearest bf16 value and returns it as float.
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// FP8 E4M3 (OCP "fn": no inf, NaN = 0x7f/0xff, max 448).
float e4m3_to_f32(uint8_t v);
uint8_t f32_to_e4m3(float f);  // round to nearest even, saturating to ±448

}  // namespace osp
