// CPU (fp32 reference) implementations of ops/vae_backward.h; arguments validated by the
// dispatcher (ops/vae_backward.cpp): contiguous F32 tensors, outputs preallocated.
#include "osp/ops/vae_backward.h"

#include "osp/ops/cpu/conv_im2col.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace osp::ops::cpu {

// OpenMP only above ~256 Ki element-ops per region: the VAE runs many small per-frame regions,
// and below that a fork/join costs more than it saves (badly so on an oversubscribed machine).
// Every parallel loop writes disjoint outputs in a fixed order: results do not depend on the
// thread count.
namespace {

// Adjoint of im2col: dx[ti, ci, iy, ix] += dcol[k, p].  Parallel over input channels: the rows
// k of one ci write only that channel's planes, so there are no races.
void col2im_add(const float* dcol, int64_t T, int64_t Cin, int64_t H, int64_t W, int64_t kt,
                int64_t kh, int64_t kw, const Conv3dArgs& a, int64_t t0, int64_t y0, int64_t y1,
                int64_t Wo, float* dxp) {
  const int64_t nb = (y1 - y0) * Wo, HW = H * W;
#pragma omp parallel for schedule(static) if (Cin * kt * kh * kw * nb > (1 << 18))
  for (int64_t ci = 0; ci < Cin; ++ci)
    for (int64_t ta = 0; ta < kt; ++ta) {
      const int64_t ti = t0 + ta;
      if (ti < 0 || ti >= T) continue;
      float* di = dxp + (ti * Cin + ci) * HW;
      for (int64_t b = 0; b < kh; ++b)
        for (int64_t c = 0; c < kw; ++c) {
          const int64_t k = ((ci * kt + ta) * kh + b) * kw + c;
          const float* cr = dcol + k * nb;
          for (int64_t oy = y0; oy < y1; ++oy) {
            const int64_t iy = oy * a.stride_h - a.pad_top + b;
            if (iy < 0 || iy >= H) continue;
            float* dr = di + iy * W;
            const float* row = cr + (oy - y0) * Wo;
            for (int64_t ox = 0; ox < Wo; ++ox) {
              const int64_t ix = ox * a.stride_w - a.pad_left + c;
              if (ix >= 0 && ix < W) dr[ix] += row[ox];
            }
          }
        }
    }
}

}  // namespace

void conv3d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv3dArgs& a,
                     Tensor* dx, Tensor* dw, Tensor* db) {
  const int64_t T = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  const int64_t To = dy.size(0), Ho = dy.size(2), Wo = dy.size(3);
  const int64_t K = Cin * kt * kh * kw, HWo = Ho * Wo, HW = H * W;
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx ? dx->data<float>() : nullptr;
  float* dwp = dw ? dw->data<float>() : nullptr;
  if (dx) dx->zero_();
  if (db) {  // db[co] += Σ dy[:, co, :] (double per channel: many terms)
    float* dbp = db->data<float>();
#pragma omp parallel for schedule(static) if (To * Cout * HWo > (1 << 18))
    for (int64_t co = 0; co < Cout; ++co) {
      double s = 0;
      for (int64_t to = 0; to < To; ++to) {
        const float* r = gp + (to * Cout + co) * HWo;
        for (int64_t i = 0; i < HWo; ++i) s += r[i];
      }
      dbp[co] += float(s);
    }
  }
  if (!dx && !dw) return;
  const bool pointwise = kt == 1 && kh == 1 && kw == 1 && a.stride_h == 1 && a.stride_w == 1 &&
                         a.pad_top == 0 && a.pad_bottom == 0 && a.pad_left == 0 &&
                         a.pad_right == 0;
  const int64_t max_cols = std::max<int64_t>(Wo, (int64_t(32) << 20) / (4 * std::max<int64_t>(K, 1)));
  const int64_t band = std::clamp<int64_t>(max_cols / Wo, 1, Ho);
  std::vector<float> col(pointwise || !dw ? 0 : size_t(K * band * Wo));
  std::vector<float> dcol(pointwise || !dx ? 0 : size_t(K * band * Wo));
  for (int64_t to = 0; to < To; ++to) {
    const float* g = gp + to * Cout * HWo;
    const int64_t t0 = to * a.stride_t - a.pad_front;  // padded frame index of tap 0
    if (pointwise) {
      if (t0 < 0) continue;  // the only tap reads a zero pad frame
      const float* xt = xp + t0 * Cin * HW;
      // dw[Cout, Cin] += dy_t[Cout, HW] · x_t[Cin, HW]ᵀ
      if (dw)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Cout), int(Cin), int(HW), 1.f, g,
                    int(HWo), xt, int(HW), 1.f, dwp, int(Cin));
      // dx_t[Cin, HW] += w[Cout, Cin]ᵀ · dy_t[Cout, HW]
      if (dx)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(Cin), int(HW), int(Cout), 1.f,
                    wp, int(Cin), g, int(HWo), 1.f, dxp + t0 * Cin * HW, int(HW));
      continue;
    }
    for (int64_t y0 = 0; y0 < Ho; y0 += band) {
      const int64_t y1 = std::min(Ho, y0 + band), nb = (y1 - y0) * Wo;
      if (dw) {
        im2col(xp, T, Cin, H, W, kt, kh, kw, a, t0, y0, y1, Wo, col.data(), int64_t(1) << 18);
        // dw[Cout, K] += dy_band[Cout, nb] · col[K, nb]ᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Cout), int(K), int(nb), 1.f,
                    g + y0 * Wo, int(HWo), col.data(), int(nb), 1.f, dwp, int(K));
      }
      if (dx) {
        // dcol[K, nb] = w[Cout, K]ᵀ · dy_band[Cout, nb]
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(K), int(nb), int(Cout), 1.f, wp,
                    int(K), g + y0 * Wo, int(HWo), 0.f, dcol.data(), int(nb));
        col2im_add(dcol.data(), T, Cin, H, W, kt, kh, kw, a, t0, y0, y1, Wo, dxp);
      }
    }
  }
}

void channel_rms_norm_backward(const Tensor& x, const Tensor& gamma, bool silu, const Tensor& dy,
                               Tensor& dx, Tensor* dgamma) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  const float* xp = x.data<float>();
  const float* g = gamma.data<float>();
  const float* gy = dy.data<float>();
  float* dxp = dx.data<float>();
  const float scale = std::sqrt(float(C));
  const int64_t blk = 256;
  const int64_t nblk = (S + blk - 1) / blk, jobs = N * nblk;
  // Per-job partial dgamma, summed in job order afterwards (deterministic for any thread count).
  std::vector<double> part(dgamma ? size_t(jobs * C) : 0, 0.0);
#pragma omp parallel for schedule(static) if (N * S * C > (1 << 17))
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t n = job / nblk, s0 = (job % nblk) * blk, s1 = std::min(S, s0 + blk);
    float inv[256], dot[256];
    bool clamped[256];
    const float* xn = xp + n * C * S;
    const float* gn = gy + n * C * S;
    float* dn = dxp + n * C * S;
    for (int64_t s = s0; s < s1; ++s) inv[s - s0] = 0.f;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = s0; s < s1; ++s) inv[s - s0] += xn[c * S + s] * xn[c * S + s];
    for (int64_t s = s0; s < s1; ++s) {
      const float nrm = std::sqrt(inv[s - s0]);
      clamped[s - s0] = !(nrm > 1e-12f);
      inv[s - s0] = 1.f / std::max(nrm, 1e-12f);
      dot[s - s0] = 0.f;
    }
    // Pass 1: a_c = du_c·gamma_c·sqrt(C) into dx (temporarily), dot = Σ_c a_c·x_c, dgamma.
    for (int64_t c = 0; c < C; ++c) {
      const float gs = g[c] * scale;
      double dg = 0;
      for (int64_t s = s0; s < s1; ++s) {
        const float xh = xn[c * S + s] * inv[s - s0] * scale;  // normalised, before gamma
        float du = gn[c * S + s];
        if (silu) {
          const float u = xh * g[c];
          const float sg = 1.f / (1.f + std::exp(-u));
          du *= sg * (1.f + u * (1.f - sg));
        }
        if (dgamma) dg += double(du) * xh;
        const float av = du * gs;
        dn[c * S + s] = av;
        dot[s - s0] += av * xn[c * S + s];
      }
      if (dgamma) part[size_t(job * C + c)] = dg;
    }
    // Pass 2: dx_c = inv·a_c − x_c·inv³·dot (the second term vanishes where the norm clamps).
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = s0; s < s1; ++s) {
        const float iv = inv[s - s0];
        const float corr = clamped[s - s0] ? 0.f : xn[c * S + s] * iv * iv * iv * dot[s - s0];
        dn[c * S + s] = iv * dn[c * S + s] - corr;
      }
  }
  if (dgamma) {
    float* dg = dgamma->data<float>();
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t j = 0; j < jobs; ++j) s += part[size_t(j * C + c)];
      dg[c] += float(s);
    }
  }
}

void upsample_nearest2x_backward(const Tensor& dy, Tensor& dx) {
  const int64_t NC = dx.size(0) * dx.size(1), H = dx.size(2), W = dx.size(3);
  const float* gp = dy.data<float>();
  float* dp = dx.data<float>();
#pragma omp parallel for schedule(static) if (NC * H * W > (1 << 16))
  for (int64_t r = 0; r < NC * H; ++r) {
    const int64_t nc = r / H, y = r % H;
    const float* a = gp + (nc * 2 * H + 2 * y) * 2 * W;
    const float* b = a + 2 * W;
    float* d = dp + r * W;
    for (int64_t xx = 0; xx < W; ++xx) d[xx] = (a[2 * xx] + a[2 * xx + 1]) + (b[2 * xx] + b[2 * xx + 1]);
  }
}

void spatial_attention_backward(const Tensor& qkv, const Tensor& dout, Tensor& dqkv) {
  const int64_t N = qkv.size(0), C = qkv.size(1) / 3, L = qkv.size(2);
  const float scale = 1.f / std::sqrt(float(C));
  const int64_t qb = std::clamp<int64_t>((int64_t(8) << 20) / std::max<int64_t>(L, 1), 1, L);
  std::vector<float> p(size_t(qb * L)), dp(size_t(qb * L));
  dqkv.zero_();
  for (int64_t n = 0; n < N; ++n) {
    const float* q = qkv.data<float>() + n * 3 * C * L;
    const float* k = q + C * L;
    const float* v = k + C * L;
    const float* go = dout.data<float>() + n * C * L;
    float* dq = dqkv.data<float>() + n * 3 * C * L;
    float* dk = dq + C * L;
    float* dv = dk + C * L;
    for (int64_t i0 = 0; i0 < L; i0 += qb) {
      const int64_t m = std::min(qb, L - i0);
      // P[m, L] = softmax(scale · q[:, blk]ᵀ · k)   (recomputed as the forward does)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(m), int(L), int(C), scale, q + i0,
                  int(L), k, int(L), 0.f, p.data(), int(L));
      // dP[m, L] = dout[:, blk]ᵀ · v
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(m), int(L), int(C), 1.f, go + i0,
                  int(L), v, int(L), 0.f, dp.data(), int(L));
#pragma omp parallel for schedule(static) if (m * L > (1 << 17))
      for (int64_t i = 0; i < m; ++i) {
        float* r = p.data() + i * L;
        float* dr = dp.data() + i * L;
        float mx = r[0];
        for (int64_t j = 1; j < L; ++j) mx = std::max(mx, r[j]);
        double sum = 0;
        for (int64_t j = 0; j < L; ++j) {
          r[j] = std::exp(r[j] - mx);
          sum += r[j];
        }
        const float inv = float(1.0 / sum);
        double d = 0;  // D_i = Σ_j P_ij · dP_ij
        for (int64_t j = 0; j < L; ++j) {
          r[j] *= inv;
          d += double(r[j]) * dr[j];
        }
        const float df = float(d);
        for (int64_t j = 0; j < L; ++j) dr[j] = r[j] * (dr[j] - df);  // dS
      }
      // dv[C, L] += dout[:, blk] · P
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(C), int(L), int(m), 1.f, go + i0,
                  int(L), p.data(), int(L), 1.f, dv, int(L));
      // dq[:, blk] = scale · k · dSᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(C), int(m), int(L), scale, k,
                  int(L), dp.data(), int(L), 0.f, dq + i0, int(L));
      // dk[C, L] += scale · q[:, blk] · dS
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(C), int(L), int(m), scale,
                  q + i0, int(L), dp.data(), int(L), 1.f, dk, int(L));
    }
  }
}

}  // namespace osp::ops::cpu
