// osp::quant's names for core's E4M3 codec (core/e4m3.h: RNE, saturating to ±448, host +
// device), used by the FP8 linear and attention code.
#pragma once
#include "osp/core/e4m3.h"
#include "osp/quant/hif8_scalar.h"

namespace osp::quant::detail {

using osp::detail::e4m3_decode_bits;
using osp::detail::e4m3_encode_rne;

}  // namespace osp::quant::detail
