#include "osp/train/grpo.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "osp/core/error.h"
#include "osp/core/philox.h"

namespace osp::train {

// ------------------------------------------------------------------------ advantages

namespace {

struct Stats {
  double mean = 0, std = 0;
};

// Mean and (un)biased std of rewards[idx], sequential sums in index order, double.
Stats stats_of(const std::vector<double>& r, const std::vector<size_t>& idx, bool unbiased) {
  Stats s;
  const size_t n = idx.size();
  double sum = 0;
  for (size_t i : idx) sum += r[i];
  s.mean = sum / double(n);
  if (n < 2) return s;  // std 0: the callers never divide by it for n == 1
  double ss = 0;
  for (size_t i : idx) ss += (r[i] - s.mean) * (r[i] - s.mean);
  s.std = std::sqrt(ss / double(unbiased ? n - 1 : n));
  return s;
}

}  // namespace

std::vector<double> grpo_advantages(const std::vector<double>& rewards,
                                    const std::vector<int64_t>& group_of,
                                    const AdvantageOptions& opt) {
  OSP_CHECK(!rewards.empty(), "grpo_advantages: no rewards");
  OSP_CHECK(rewards.size() == group_of.size(), "grpo_advantages: ", rewards.size(),
            " rewards but ", group_of.size(), " group ids (one per sample expected)");
  OSP_CHECK(std::isfinite(opt.eps) && opt.eps >= 0, "grpo_advantages: eps must be >= 0, got ",
            opt.eps);
  for (size_t i = 0; i < rewards.size(); ++i)
    OSP_CHECK(std::isfinite(rewards[i]), "grpo_advantages: reward ", i, " is not finite (",
              rewards[i], "); check the reward model's output");

  std::map<int64_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < rewards.size(); ++i) groups[group_of[i]].push_back(i);

  std::vector<double> adv(rewards.size(), 0.0);
  const bool all_single =
      std::all_of(groups.begin(), groups.end(), [](const auto& g) { return g.second.size() == 1; });
  if (all_single) {
    if (rewards.size() < 2) return adv;  // one sample: nothing to compare with
    std::vector<size_t> all(rewards.size());
    std::iota(all.begin(), all.end(), size_t(0));
    const Stats s = stats_of(rewards, all, opt.unbiased_std);
    for (size_t i = 0; i < rewards.size(); ++i) adv[i] = (rewards[i] - s.mean) / (s.std + opt.eps);
    return adv;
  }
  for (const auto& [gid, idx] : groups) {
    if (idx.size() < 2) continue;  // A = 0 (dropped later)
    const Stats s = stats_of(rewards, idx, opt.unbiased_std);
    for (size_t i : idx) adv[i] = (rewards[i] - s.mean) / (s.std + opt.eps);
  }
  return adv;
}

std::vector<double> grpo_advantages(const std::vector<double>& rewards, int group_size,
                                    const AdvantageOptions& opt) {
  OSP_CHECK(group_size >= 1, "grpo_advantages: group size must be >= 1, got ", group_size);
  OSP_CHECK(!rewards.empty() && rewards.size() % size_t(group_size) == 0,
            "grpo_advantages: group size ", group_size, " does not divide the ", rewards.size(),
            " samples (every prompt needs exactly group_size rollouts)");
  std::vector<int64_t> g(rewards.size());
  for (size_t i = 0; i < g.size(); ++i) g[i] = int64_t(i / size_t(group_size));
  return grpo_advantages(rewards, g, opt);
}

SampleSelection select_training_samples(const std::vector<double>& advantages, int num_batches,
                                        uint64_t seed) {
  OSP_CHECK(num_batches >= 1, "select_training_samples: num_batches must be >= 1, got ",
            num_batches);
  SampleSelection sel;
  sel.advantages = advantages;
  std::vector<char> kept(advantages.size(), 0);
  std::vector<int64_t> dropped;
  for (size_t i = 0; i < advantages.size(); ++i) {
    if (advantages[i] != 0.0)
      kept[i] = 1;
    else
      dropped.push_back(int64_t(i));
  }
  const size_t n_kept = advantages.size() - dropped.size();
  if (n_kept == 0) {
    for (double& a : sel.advantages) a += 1e-6;
    std::fill(kept.begin(), kept.end(), 1);
    dropped.clear();
  } else if (n_kept % size_t(num_batches) != 0) {
    const size_t need = size_t(num_batches) - n_kept % size_t(num_batches);
    if (dropped.size() >= need) {
      // A random subset of the dropped samples: sort them by a Philox uniform key.
      std::vector<float> key(dropped.size());
      philox_uniform(seed, 0, 0, key.data(), int64_t(key.size()));
      std::vector<size_t> order(dropped.size());
      std::iota(order.begin(), order.end(), size_t(0));
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return key[a] < key[b]; });
      for (size_t k = 0; k < need; ++k) kept[size_t(dropped[order[k]])] = 1;
    }
  }
  for (size_t i = 0; i < kept.size(); ++i)
    if (kept[i]) sel.keep.push_back(int64_t(i));
  sel.dropped = int64_t(advantages.size() - sel.keep.size());
  return sel;
}

// ------------------------------------------------------------------------ policy loss

namespace {

void check_like(const Tensor& t, const Tensor& ref, const char* name) {
  OSP_CHECK(t.defined(), "grpo_policy_loss: ", name, " is undefined");
  OSP_CHECK(t.shape() == ref.shape(), "grpo_policy_loss: ", name, " has shape ",
            shape_str(t.shape()), ", expected ", shape_str(ref.shape()), " (the shape of x)");
  OSP_CHECK(t.dtype() == ref.dtype() && t.device() == ref.device(), "grpo_policy_loss: ", name,
            " is ", t.desc(), ", expected the dtype and device of x (", ref.desc(), ")");
}

}  // namespace

GrpoStepResult grpo_policy_loss(const GrpoStepInputs& in, const GrpoLossConfig& cfg,
                                bool want_grad) {
  const char* op = "grpo_policy_loss";
  OSP_CHECK(in.x.defined() && in.x.numel() > 0, op, ": x is undefined or empty");
  OSP_CHECK(in.x.dtype() == DType::F32 || (in.x.dtype() == DType::F64 && in.x.device().is_cpu()),
            op, ": tensors must be f32 (any device) or f64 on the CPU, got x ", in.x.desc());
  check_like(in.x_next, in.x, "x_next");
  check_like(in.v_cond, in.x, "v_cond");
  check_like(in.v_uncond, in.x, "v_uncond");
  const bool use_kl = cfg.kl_beta > 0;
  if (use_kl) check_like(in.v_ref, in.x, "v_ref (needed because kl_beta > 0)");
  OSP_CHECK(std::isfinite(cfg.guidance), op, ": guidance must be finite");
  OSP_CHECK(std::isfinite(cfg.clip_range) && cfg.clip_range >= 0, op,
            ": clip_range must be >= 0, got ", cfg.clip_range);
  OSP_CHECK(std::isfinite(cfg.adv_clip) && cfg.adv_clip > 0, op, ": adv_clip must be > 0, got ",
            cfg.adv_clip);
  OSP_CHECK(std::isfinite(cfg.kl_beta) && cfg.kl_beta >= 0, op, ": kl_beta must be >= 0, got ",
            cfg.kl_beta);
  OSP_CHECK(cfg.num_sde_steps >= 1, op, ": num_sde_steps must be >= 1, got ", cfg.num_sde_steps);
  const sample::SdeCoeffs& c = in.coeffs;
  OSP_CHECK(c.std > 0 && c.sigma_t > 0 && c.dt < 0, op,
            ": invalid SDE coefficients (std ", c.std, ", σ_t ", c.sigma_t, ", Δ ", c.dt,
            "); build them with sample::sde_coeffs");

  const int64_t B = in.x.dim() >= 2 ? in.x.size(0) : 1;
  const int64_t n = in.x.numel() / B;
  OSP_CHECK(int64_t(in.logp_old.size()) == B, op, ": ", in.logp_old.size(),
            " logp_old values for a batch of ", B, " samples");
  OSP_CHECK(int64_t(in.advantages.size()) == B, op, ": ", in.advantages.size(),
            " advantages for a batch of ", B, " samples");
  for (int64_t b = 0; b < B; ++b) {
    OSP_CHECK(std::isfinite(in.logp_old[size_t(b)]), op, ": logp_old[", b, "] is not finite");
    OSP_CHECK(std::isfinite(in.advantages[size_t(b)]), op, ": advantages[", b, "] is not finite");
  }

  const Shape& shape = in.x.shape();
  const DType dt = in.x.dtype();
  const Device dev = in.x.device();
  const double g = cfg.guidance;

  // v = v_u + g·(v_c − v_u)
  Tensor v = Tensor::empty(shape, dt, dev);
  sample::lincomb(g, in.v_cond, 1.0 - g, in.v_uncond, v);
  // residual x' − μ_θ formed as (x' − x) − (μ_θ − x): both parts are small next to x, so the
  // residual keeps its relative precision in f32.
  Tensor resid = Tensor::empty(shape, dt, dev);
  Tensor inc = Tensor::empty(shape, dt, dev);
  sample::lincomb(1.0, in.x_next, -1.0, in.x, resid);
  sample::lincomb(c.cx - 1.0, in.x, c.cv, v, inc);
  sample::lincomb(1.0, resid, -1.0, inc, resid);

  GrpoStepResult r;
  r.logp = sample::sde_log_prob_from_residual(c.std, resid);

  // μ_θ − μ_ref = cv·(v − v_ref) (the x terms cancel exactly).
  Tensor dref;
  const double kl_den = 2.0 * c.sigma_t * c.sigma_t * (-c.dt);  // 2σ_t²|Δ|
  r.kl.assign(size_t(B), 0.0);
  r.ref_ms.assign(size_t(B), 0.0);
  r.v_ms = sample::per_sample_sum_sq(v);
  for (double& m : r.v_ms) m /= double(n);
  if (use_kl) {
    dref = inc;  // reuse the buffer
    sample::lincomb(c.cv, v, -c.cv, in.v_ref, dref);
    const std::vector<double> ss = sample::per_sample_sum_sq(dref);
    for (int64_t b = 0; b < B; ++b) {
      r.kl[size_t(b)] = ss[size_t(b)] / double(n) / kl_den;
      r.ref_ms[size_t(b)] = ss[size_t(b)] / double(n) / (c.cv * c.cv);
    }
  }

  const double eps = cfg.clip_range;
  const double S = double(cfg.num_sde_steps);
  std::vector<double> dlogp(size_t(B), 0.0);  // dL/dlogp_b
  double pg = 0, kl = 0;
  int64_t clipped = 0;
  r.ratio.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b) {
    const size_t i = size_t(b);
    const double A = std::clamp(in.advantages[i], -cfg.adv_clip, cfg.adv_clip);
    const double ratio = std::exp(r.logp[i] - in.logp_old[i]);
    r.ratio[i] = ratio;
    const double rc = std::clamp(ratio, 1.0 - eps, 1.0 + eps);
    const double unclipped = -A * ratio, clip_term = -A * rc;
    pg += std::max(unclipped, clip_term);
    if (std::fabs(ratio - 1.0) > eps) ++clipped;
    // d max(u, c)/dratio: u wins → −A; c wins → −A·[1−ε ≤ ratio ≤ 1+ε] (clamp passes inside);
    // a tie splits the gradient between both, which sums to −A as well inside the range.
    double dratio;
    if (unclipped > clip_term)
      dratio = -A;
    else if (unclipped < clip_term)
      dratio = (ratio >= 1.0 - eps && ratio <= 1.0 + eps) ? -A : 0.0;
    else
      dratio = (ratio >= 1.0 - eps && ratio <= 1.0 + eps) ? -A : -A / 2;
    dlogp[i] = dratio * ratio / (double(B) * S);
    kl += r.kl[i];
  }
  r.loss_pg = pg / double(B);
  r.loss_kl = kl / double(B);
  r.loss = (r.loss_pg + cfg.kl_beta * r.loss_kl) / S;
  r.clip_fraction = double(clipped) / double(B);
  if (!want_grad) return r;

  // dL/dv_c = g·cv·[dL/dlogp_b·resid/(n·std²) + β/(B·S)·(μ_θ − μ_ref)/(n·σ_t²·|Δ|)]
  r.grad_v_cond = Tensor::empty(shape, dt, dev);
  const Tensor rv = resid.view({B, n});
  Tensor gv = r.grad_v_cond.view({B, n});
  const double kl_coef = use_kl ? g * c.cv * cfg.kl_beta / (double(B) * S) * 2.0 /
                                      (double(n) * kl_den)
                                : 0.0;
  const Tensor dv = use_kl ? dref.view({B, n}) : rv;
  for (int64_t b = 0; b < B; ++b) {
    const double a = g * c.cv * dlogp[size_t(b)] / (double(n) * c.std * c.std);
    Tensor out_b = gv.select(0, b);
    sample::lincomb(a, rv.select(0, b), kl_coef, dv.select(0, b), out_b);
  }
  return r;
}

}  // namespace osp::train
