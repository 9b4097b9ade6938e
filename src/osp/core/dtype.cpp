#include "osp/core/dtype.h"

#include <cmath>

#include "osp/core/e4m3.h"
#include "osp/core/error.h"

namespace osp {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F8E4M3: return 1;
    case DType::HiF8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::F64: return 8;
  }
  fail("dtype_size: invalid dtype");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::F8E4M3: return "fp8e4m3";
    case DType::HiF8: return "hif8";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::F64: return "f64";
  }
  return "?";
}

DType dtype_from_name(const std::string& n) {
  if (n == "F32" || n == "f32" || n == "float32") return DType::F32;
  if (n == "BF16" || n == "bf16" || n == "bfloat16") return DType::BF16;
  if (n == "F16" || n == "f16" || n == "float16") return DType::F16;
  if (n == "F8_E4M3" || n == "fp8e4m3" || n == "float8_e4m3fn") return DType::F8E4M3;
  if (n == "HIF8" || n == "hif8") return DType::HiF8;
  if (n == "I32" || n == "i32" || n == "int32") return DType::I32;
  if (n == "I64" || n == "i64" || n == "int64") return DType::I64;
  if (n == "U8" || n == "u8" || n == "uint8" || n == "BOOL" || n == "bool") return DType::U8;
  if (n == "F64" || n == "f64" || n == "float64") return DType::F64;
  fail(str("unknown dtype '", n, "' (supported: F32 BF16 F16 F8_E4M3 HIF8 I32 I64 U8 BOOL F64)"));
}

bool dtype_is_float(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F8E4M3 ||
         t == DType::HiF8 || t == DType::F64;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  int exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(float(man), -24);
    return sign ? -f : f;
  }
  if (exp == 31) {
    uint32_t u = sign | 0x7f800000u | (man << 13);
    std::memcpy(&f, &u, 4);
    return f;
  }
  uint32_t u = sign | (uint32_t(exp - 15 + 127) << 23) | (man << 13);
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00;  // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00;  // overflow -> inf (65520 and up)
  if (a < 0x38800000u) {                      // subnormal or zero in f16
    float af;
    std::memcpy(&af, &a, 4);
    float q = std::nearbyint(af * 16777216.0f);  // units of 2^-24, RNE
    return sign | uint16_t(q);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
  return sign | uint16_t(((r >> 13) - ((127 - 15) << 10)) & 0x7fff);
}

float e4m3_to_f32(uint8_t v) { return detail::e4m3_decode_bits(v); }

uint8_t f32_to_e4m3(float f) { return detail::e4m3_encode_rne(f); }

}  // namespace osp
