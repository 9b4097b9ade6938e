// FP8 attention (quant/fp8.h): argument checks, packed-sequence handling, the CPU emulation of
// cuDNN's FP8 SDPA arithmetic, and the CUDA dispatch (cuDNN FP8 SDPA per sequence, bf16
// fallback on the dequantized operands where cuDNN has no engine).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "osp/core/error.h"
#include "osp/ops/ops.h"
#include "osp/quant/e4m3_scalar.h"
#include "osp/quant/fp8.h"
#ifdef OSP_HAVE_CUDA
#include <cuda_runtime.h>

#include "osp/core/cuda_check.h"
#include "osp/core/settings.h"
#include "osp/ops/cuda/attention_paths.h"
#include "osp/ops/cuda/cuda_context.h"
#include "osp/quant/cuda/fp8_attention_cuda.h"
#endif

namespace osp::quant {

namespace {

std::atomic<const char*> g_last_path{""};

// One packed sequence: query rows [q0, q0 + nq) attend to key rows [k0, k0 + nk) of the same
// sample.
struct Segment {
  int64_t q0, nq, k0, nk;
};
struct Problem {
  int64_t B, Lq, Lk, H, D;
  float scale;
  std::vector<Segment> segs;
};

void check_operand(const Fp8Tensor& t, const char* fn, const char* what) {
  OSP_CHECK(t.codes.defined() && t.scale_inv.defined(), fn, ": ", what,
            " is not quantized (use hif8_quantize_e4m3 first)");
  OSP_CHECK(t.codes.dtype() == DType::F8E4M3, fn, ": ", what, ".codes must be f8e4m3, got ",
            t.codes.desc());
  OSP_CHECK(t.codes.dim() == 4, fn, ": ", what, " must be [B, L, H, D], got ",
            shape_str(t.codes.shape()));
  OSP_CHECK(t.codes.is_contiguous(), fn, ": ", what, ".codes must be contiguous");
  OSP_CHECK(t.scale_inv.dtype() == DType::F32 && t.scale_inv.numel() == 1, fn, ": ", what,
            ".scale_inv must be a single f32, got ", t.scale_inv.desc());
  check_same_device(t.codes, t.scale_inv, fn);
}

void check_args_common(const ops::AttentionArgs& args, const char* fn) {
  OSP_CHECK(!args.bias, fn, ": an additive logits bias is not supported by FP8 attention (cuDNN's ",
            "FP8 SDPA has none); use ops::attention");
  OSP_CHECK(!args.q_lens && !args.kv_lens, fn, ": q_lens / kv_lens (padding masks) are not ",
            "supported by FP8 attention; pack the sequences and pass seq_lens instead");
  OSP_CHECK(std::isfinite(args.scale) && args.scale >= 0, fn, ": scale must be finite and >= 0 ",
            "(0 means 1/sqrt(D)), got ", args.scale);
}

// Validates everything and resolves the sequences.
Problem resolve(const Shape& qs, const Shape& ks, const Shape& vs, const ops::AttentionArgs& args,
                const char* fn) {
  check_args_common(args, fn);
  OSP_CHECK(qs.size() == 4 && ks.size() == 4 && vs.size() == 4, fn,
            ": q, k, v must be [B, L, H, D], got q ", shape_str(qs), ", k ", shape_str(ks), ", v ",
            shape_str(vs));
  OSP_CHECK(ks == vs, fn, ": k ", shape_str(ks), " and v ", shape_str(vs), " must have one shape");
  OSP_CHECK(qs[0] == ks[0] && qs[2] == ks[2] && qs[3] == ks[3], fn, ": q ", shape_str(qs),
            " and k ", shape_str(ks), " disagree on B, H or D");
  Problem p;
  p.B = qs[0];
  p.Lq = qs[1];
  p.H = qs[2];
  p.D = qs[3];
  p.Lk = ks[1];
  OSP_CHECK(p.D > 0, fn, ": head dim D must be positive");
  p.scale = args.scale > 0 ? args.scale : 1.0f / std::sqrt(float(p.D));
  if (args.seq_lens) {
    const Tensor& sl = *args.seq_lens;
    OSP_CHECK(sl.defined() && sl.dtype() == DType::I32 && sl.device().is_cpu() && sl.dim() == 1, fn,
              ": seq_lens must be a host i32 [R] tensor, got ",
              sl.defined() ? sl.desc() : "undefined");
    OSP_CHECK(p.Lq == p.Lk, fn, ": seq_lens (packed sequences) needs Lq == Lk, got Lq = ", p.Lq,
              ", Lk = ", p.Lk);
    Tensor c = sl.contiguous();
    int64_t off = 0;
    for (int64_t r = 0; r < c.numel(); ++r) {
      const int64_t n = c.data<int32_t>()[r];
      OSP_CHECK(n >= 0, fn, ": seq_lens[", r, "] = ", n, " is negative");
      p.segs.push_back({off, n, off, n});
      off += n;
    }
    OSP_CHECK(off == p.Lq, fn, ": seq_lens sum to ", off, " but each sample has ", p.Lq, " rows");
  } else {
    p.segs.push_back({0, p.Lq, 0, p.Lk});
  }
  return p;
}

Problem validate(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, const Tensor& out,
                 const ops::AttentionArgs& args, const char* fn) {
  check_operand(q, fn, "q");
  check_operand(k, fn, "k");
  check_operand(v, fn, "v");
  check_same_device(q.codes, k.codes, fn);
  check_same_device(q.codes, v.codes, fn);
  Problem p = resolve(q.codes.shape(), k.codes.shape(), v.codes.shape(), args, fn);
  OSP_CHECK(out.defined() && out.shape() == q.codes.shape() && out.is_contiguous(), fn,
            ": out must be a contiguous tensor of shape ", shape_str(q.codes.shape()), ", got ",
            out.defined() ? out.desc() : "undefined");
  check_same_device(q.codes, out, fn);
  return p;
}

// ------------------------------------------------------------------ CPU emulation
void emulate(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, Tensor& out,
             const Problem& p, const Fp8AttentionEmulation& emu) {
  float lut[256];
  for (int c = 0; c < 256; ++c) lut[c] = detail::e4m3_decode_bits(uint8_t(c));
  const int64_t H = p.H, D = p.D, row = H * D;
  const uint8_t* qc = q.codes.data<uint8_t>();
  const uint8_t* kc = k.codes.data<uint8_t>();
  const uint8_t* vc = v.codes.data<uint8_t>();
  const float dq = q.scale_inv.data<float>()[0], dk = k.scale_inv.data<float>()[0],
              dv = v.scale_inv.data<float>()[0];
  const float sp = kFp8AttentionScaleP, dsp = 1.0f / kFp8AttentionScaleP;
  // output scales as fp8_attention_kernels.cu derives them from dv
  const float so16 = 1.0f / dv, so8 = 448.0f / (15.0f * dv), inv8 = 1.0f / so8;
  Tensor of = out.dtype() == DType::F32 ? out : Tensor::empty(out.shape(), DType::F32);
  float* o = of.data<float>();
  std::fill(o, o + of.numel(), 0.0f);
  for (const Segment& sg : p.segs) {
    if (sg.nq == 0 || sg.nk == 0) continue;  // rows without keys stay 0
    const int64_t blk = emu.kv_block > 0 ? emu.kv_block : sg.nk;
    const int64_t rows = p.B * H * sg.nq;
#pragma omp parallel
    {
      std::vector<float> s(static_cast<size_t>(sg.nk)), acc(static_cast<size_t>(D)),
          qv(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 4)
      for (int64_t t = 0; t < rows; ++t) {
        const int64_t b = t / (H * sg.nq), h = (t / sg.nq) % H, i = sg.q0 + t % sg.nq;
        const uint8_t* qr = qc + (b * p.Lq + i) * row + h * D;
        for (int64_t d = 0; d < D; ++d) qv[size_t(d)] = lut[qr[d]];
        for (int64_t j = 0; j < sg.nk; ++j) {
          const uint8_t* kr = kc + (b * p.Lk + sg.k0 + j) * row + h * D;
          float dot = 0;  // products of E4M3 values are exact in f32
          for (int64_t d = 0; d < D; ++d) dot += qv[size_t(d)] * lut[kr[d]];
          s[size_t(j)] = ((dot * p.scale) * dq) * dk;
        }
        float m = -std::numeric_limits<float>::infinity(), l = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j0 = 0; j0 < sg.nk; j0 += blk) {
          const int64_t j1 = std::min(sg.nk, j0 + blk);
          float bm = m;
          for (int64_t j = j0; j < j1; ++j) bm = std::max(bm, s[size_t(j)]);
          const float corr = std::isinf(m) ? 0.0f : std::exp(m - bm);
          l *= corr;
          for (float& a : acc) a *= corr;
          m = bm;
          for (int64_t j = j0; j < j1; ++j) {
            const float pj = std::exp(s[size_t(j)] - m);
            const float p8 = emu.round_p ? lut[detail::e4m3_encode_rne(pj * sp)] : pj * sp;
            l += emu.rowsum_of_rounded_p ? p8 * dsp : pj;
            const uint8_t* vr = vc + (b * p.Lk + sg.k0 + j) * row + h * D;
            for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += p8 * lut[vr[d]];
          }
        }
        float* orow = o + (b * p.Lq + i) * row + h * D;
        const float inv_l = l > 0 ? 1.0f / l : 0.0f;
        for (int64_t d = 0; d < D; ++d) {
          const float o1 = acc[size_t(d)] * inv_l * dsp * dv;
          switch (emu.o_storage) {
            case Fp8AttentionOut::BF16: orow[d] = o1; break;
            case Fp8AttentionOut::F16: orow[d] = f16_to_f32(f32_to_f16(o1 * so16)) * dv; break;
            case Fp8AttentionOut::E4M3: orow[d] = lut[detail::e4m3_encode_rne(o1 * so8)] * inv8; break;
          }
        }
      }
    }
  }
  if (out.dtype() != DType::F32) out.copy_from(of);
}

#ifdef OSP_HAVE_CUDA
// ------------------------------------------------------------------ CUDA
// bf16 attention on the dequantized codes of one sequence (all samples): the fallback.
void fallback_segment(const Tensor& qb, const Tensor& kb, const Tensor& vb, Tensor& out,
                      const Problem& p, const Segment& sg) {
  const int64_t row = p.H * p.D;
  auto view = [&](const Tensor& t, int64_t b, int64_t L, int64_t r0, int64_t n) {
    auto* ptr = static_cast<uint16_t*>(t.raw()) + (b * L + r0) * row;
    return Tensor::from_blob(ptr, {1, n, p.H, p.D}, DType::BF16, t.device(), t.storage());
  };
  ops::AttentionArgs a;
  a.scale = p.scale;
  for (int64_t b = 0; b < p.B; ++b) {
    Tensor ob = view(out, b, p.Lq, sg.q0, sg.nq);
    ops::attention(view(qb, b, p.Lq, sg.q0, sg.nq), view(kb, b, p.Lk, sg.k0, sg.nk),
                   view(vb, b, p.Lk, sg.k0, sg.nk), ob, a);
  }
}

// Whether a sequence of nk keys runs on the own Hopper FP8 kernel (Fp8AttentionKernel, fp8.h).
bool use_hopper(Fp8AttentionKernel kernel, const Problem& p, int64_t nk) {
  const EngineSettings::Attention forced = engine_settings().attention;
  if (kernel == Fp8AttentionKernel::Auto) {
    if (forced == EngineSettings::Attention::Cudnn || forced == EngineSettings::Attention::Flash) return false;
    if (forced == EngineSettings::Attention::Hopper) kernel = Fp8AttentionKernel::Hopper;
  }
  if (kernel == Fp8AttentionKernel::Cudnn) return false;
  if (kernel == Fp8AttentionKernel::Hopper) return true;  // attention_hopper_fp8 says what it cannot run
  return p.D == 128 && nk >= ops::cuda::kHopperMinKeys && ops::cuda::hopper_attention_supported();
}

void run_cuda(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, Tensor& out,
              const Problem& p, Fp8AttentionKernel kernel) {
  OSP_CHECK(out.dtype() == DType::BF16, "fp8_attention (CUDA): out must be bf16, got ", out.desc());
  const int64_t row = p.H * p.D;
  Tensor qb, kb, vb;  // dequantized operands, made on the first fallback
  bool fell_back = false, all_hopper = true;
  for (const Segment& sg : p.segs) {
    if (sg.nq == 0) continue;
    if (sg.nk == 0) {  // no key: those rows are 0
      for (int64_t b = 0; b < p.B; ++b)
        OSP_CUDA_CHECK(cudaMemsetAsync(static_cast<uint16_t*>(out.raw()) + (b * p.Lq + sg.q0) * row,
                                       0, size_t(sg.nq * row) * 2, ops::cuda::stream()));
      continue;
    }
    cuda::Fp8SdpaCall c = fp8_attention_call(q, k, v, out, p.scale);  // narrowed to the sequence
    c.Lq = sg.nq;
    c.Lk = sg.nk;
    c.q = q.codes.data<uint8_t>() + sg.q0 * row;
    c.k = k.codes.data<uint8_t>() + sg.k0 * row;
    c.v = v.codes.data<uint8_t>() + sg.k0 * row;
    c.out = static_cast<uint16_t*>(out.raw()) + sg.q0 * row;
    if (use_hopper(kernel, p, sg.nk)) {
      const int tile = ops::cuda::hopper_fp8_key_tile();
      ops::cuda::attention_hopper_fp8(c, ops::cuda::hopper_fp8_pingpong(tile), tile);
      continue;
    }
    all_hopper = false;
    std::string why;
    if (cuda::fp8_sdpa_cudnn(c, &why)) continue;
    ops::cuda::log_once(str("fp8-attn-fallback-", p.B, "-", p.H, "-", sg.nq, "-", sg.nk, "-", p.D),
                        str("fp8 attention: cuDNN FP8 SDPA unavailable for B=", p.B, " H=", p.H,
                            " Lq=", sg.nq, " Lk=", sg.nk, " D=", p.D,
                            "; bf16 attention on the dequantized HiF8 operands runs instead (",
                            why, ")"));
    if (!qb.defined()) {
      qb = Tensor::empty(q.codes.shape(), DType::BF16, out.device());
      kb = Tensor::empty(k.codes.shape(), DType::BF16, out.device());
      vb = Tensor::empty(v.codes.shape(), DType::BF16, out.device());
      fp8_dequantize(q, qb);
      fp8_dequantize(k, kb);
      fp8_dequantize(v, vb);
    }
    fallback_segment(qb, kb, vb, out, p, sg);
    fell_back = true;
  }
  g_last_path = fell_back ? "bf16_fallback" : all_hopper ? "hopper_fp8" : "cudnn_fp8";
}
#endif

}  // namespace

const char* fp8_attention_last_path() { return g_last_path.load(); }

ops::cuda::Fp8AttentionCall fp8_attention_call(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v,
                                               Tensor& out, float scale) {
  const char* fn = "fp8_attention_call";
  OSP_CHECK(q.codes.dim() == 4 && k.codes.dim() == 4 && v.codes.dim() == 4 && out.dim() == 4, fn,
            ": q, k, v, out must be [B, L, H, D], got ", q.codes.desc(), ", ", k.codes.desc(), ", ",
            v.codes.desc(), ", ", out.desc());
  OSP_CHECK(out.shape() == q.codes.shape() && k.codes.shape() == v.codes.shape() &&
                k.codes.size(0) == q.codes.size(0) && k.codes.size(2) == q.codes.size(2) &&
                k.codes.size(3) == q.codes.size(3),
            fn, ": shapes disagree: q ", q.codes.desc(), ", k ", k.codes.desc(), ", v ", v.codes.desc(), ", out ",
            out.desc());
  ops::cuda::Fp8AttentionCall c;
  c.B = q.codes.size(0);
  c.Lq = q.codes.size(1);
  c.H = q.codes.size(2);
  c.D = q.codes.size(3);
  c.Lk = k.codes.size(1);
  c.q_bstride = c.o_bstride = c.Lq * c.H * c.D;
  c.kv_bstride = c.Lk * c.H * c.D;
  c.q = q.codes.raw();
  c.k = k.codes.raw();
  c.v = v.codes.raw();
  c.descale_q = q.scale_inv.data<float>();
  c.descale_k = k.scale_inv.data<float>();
  c.descale_v = v.scale_inv.data<float>();
  c.attn_scale = scale;
  c.out = out.raw();
  return c;
}

Fp8AttentionOut fp8_attention_cudnn_o_storage() {
#ifdef OSP_HAVE_CUDA
  return Fp8AttentionOut(cuda::fp8_sdpa_cudnn_last_o_storage());
#else
  return Fp8AttentionOut::BF16;
#endif
}

std::string fp8_attention_cudnn_note() {
#ifdef OSP_HAVE_CUDA
  return cuda::fp8_sdpa_cudnn_note();
#else
  return "";
#endif
}

void fp8_attention_emulate(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v,
                           Tensor& out, const ops::AttentionArgs& args,
                           const Fp8AttentionEmulation& emu) {
  const char* fn = "fp8_attention_emulate";
  Problem p = validate(q, k, v, out, args, fn);
  OSP_CHECK(q.codes.device().is_cpu(), fn, ": the emulation runs on the CPU; got q on ",
            q.codes.device().name(), " (move the operands with .to(Device::cpu()))");
  OSP_CHECK(out.dtype() == DType::F32 || out.dtype() == DType::BF16, fn,
            ": out must be f32 or bf16, got ", out.desc());
  OSP_CHECK(emu.kv_block >= 0, fn, ": kv_block must be >= 0 (0 = whole row), got ", emu.kv_block);
  emulate(q, k, v, out, p, emu);
}

void fp8_attention(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, Tensor& out,
                   const ops::AttentionArgs& args, Fp8AttentionKernel kernel) {
  const char* fn = "fp8_attention";
  Problem p = validate(q, k, v, out, args, fn);
  if (q.codes.device().is_cuda()) {
#ifdef OSP_HAVE_CUDA
    if (out.numel() == 0) return;
    run_cuda(q, k, v, out, p, kernel);
    return;
#else
    fail("fp8_attention: tensors are on CUDA but this build has no CUDA backend");
#endif
  }
  OSP_CHECK(out.dtype() == DType::F32 || out.dtype() == DType::BF16, fn,
            " (CPU): out must be f32 or bf16, got ", out.desc());
  emulate(q, k, v, out, p, {});
  g_last_path = "cpu_emulation";
}

void hif8_attention_fp8(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                        const ops::AttentionArgs& args, Fp8AttentionKernel kernel) {
  const char* fn = "hif8_attention_fp8";
  for (const Tensor* t : {&q, &k, &v})
    OSP_CHECK(t->defined() && (t->dtype() == DType::F32 || t->dtype() == DType::BF16), fn,
              ": q, k, v must be f32 or bf16, got ", t->defined() ? t->desc() : "undefined");
  check_same_device(q, k, fn);
  check_same_device(q, v, fn);
  resolve(q.shape(), k.shape(), v.shape(), args, fn);  // shape errors before any work
  Fp8Tensor q8 = hif8_quantize_e4m3(q, kHiF8ForwardMax);
  Fp8Tensor k8 = hif8_quantize_e4m3(k, kHiF8ForwardMax);
  Fp8Tensor v8 = hif8_quantize_e4m3(v, kHiF8ForwardMax);
  fp8_attention(q8, k8, v8, out, args, kernel);
}

}  // namespace osp::quant
