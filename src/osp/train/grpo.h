// Mix-GRPO policy update as OSP-Next codes it (osp-next-spec §8.5–8.6, hif8-mixgrpo-vbench
// §2.3–2.4, §2.7): group-relative advantages, the PPO-clipped objective on the per-step
// Gaussian log-likelihoods of sample/sde_step.h, the KL penalty against the adapter-free model
// and the analytic gradient w.r.t. the conditional velocity, which is what enters the DiT
// backward.
//
// ---- Advantages (grpo_advantages) -------------------------------------------------------
//   per prompt group p:  A = (r − mean_p) / (std_p + eps),  eps = 1e-4
//   std_p is the UNBIASED sample standard deviation (divide by n − 1, torch.Tensor.std's
//   default). This is what golden_train.safetensors `grpo.advantages` holds: rewards
//   (0.3, −1.2, 2.0, 0.1) give A_1 = −1.5/(1.31403 + 1e-4) = −1.14144 (the biased std 1.13798
//   would give −1.318). Flow-GRPO's numpy tracker (np.std) is biased; pass
//   unbiased_std = false for that convention.
//   When EVERY group has one sample, the groups carry no statistics and a global z-score over
//   all samples is used instead (same eps and std convention). A one-sample group among larger
//   groups gets A = 0 (its own mean; it is then dropped by the rule below).
//   A single sample overall gets A = 0.
//   Statistics are computed in double over the current epoch's samples only (the caller
//   gathers rewards of all data-parallel ranks first: a group is spread over ranks).
//   Clamping to ±adv_clip (5) happens at use time, inside grpo_policy_loss.
//
// ---- Drop / re-add (select_training_samples) — §8.5 -------------------------------------
//   1. Samples with A == 0 exactly (e.g. every reward of the group equal) are dropped.
//   2. If the kept count is not a multiple of num_batches (num_batches_per_epoch), the
//      missing number of dropped samples is re-admitted, chosen at random (Philox, from the
//      given seed: deterministic). If fewer dropped samples exist than needed, nothing is
//      re-admitted (the reference's behaviour).
//   3. If no sample is kept at all, every advantage gets += 1e-6 and all samples are kept.
//
// ---- Policy loss for one stored SDE step j (grpo_policy_loss) -----------------------------
//   v     = v_u + g·(v_c − v_u)           (CFG, g = guidance; v_u is stop-gradient)
//   μ_θ   = cx·x_j + cv·v                 (sample::SdeCoeffs of step j)
//   logp  = mean_elements[ −(x_{j+1} − μ_θ)²/(2std²) − log std − ½ log 2π ]   per sample
//   ratio = exp(logp − logp_old)
//   L_pg  = mean_b max(−A·ratio, −A·clip(ratio, 1 − ε, 1 + ε)),  A = clamp(A, ±adv_clip)
//   μ_ref = cx·x_j + cv·v_ref             (v_ref: the LoRA-disabled model's CFG velocity)
//   L_kl  = mean_b mean_elements((μ_θ − μ_ref)²) / (2·σ_t²·|Δ|)
//   L     = (L_pg + β·L_kl) / num_sde_steps
// Gradient (per sample b, n elements per sample, B samples):
//   dL/dlogp_b = s_b·ratio_b / (B·S), s_b = −A_b where the unclipped term is the max (on a
//                tie, where the clamp passes its gradient, −A_b as well), 0 where the clipped
//                constant is the max;
//   dL/dμ_θ    = dL/dlogp_b·(x_{j+1} − μ_θ)/(n·std²) + β/(B·S)·(μ_θ − μ_ref)/(n·σ_t²·|Δ|)
//   dL/dv_c    = g·cv·dL/dμ_θ
// S = num_sde_steps. The caller divides further by gradient accumulation if it uses any.
//
// Tensors: F32 on any device (elementwise work through ops::axpby, per-sample sums in double on
// the host) or F64 on the CPU (a double-precision reference used by the finite-difference test).
#pragma once
#include <cstdint>
#include <vector>

#include "osp/core/tensor.h"
#include "osp/sample/sde_step.h"

namespace osp::train {

// ---- advantages ----
struct AdvantageOptions {
  double eps = 1e-4;         // added to the std
  bool unbiased_std = true;  // n − 1 (torch) vs n (numpy)
};
// group_of[i]: the prompt group of sample i (any integers; samples of one group need not be
// contiguous). rewards and group_of have the same length (≥ 1); rewards must be finite.
std::vector<double> grpo_advantages(const std::vector<double>& rewards,
                                    const std::vector<int64_t>& group_of,
                                    const AdvantageOptions& opt = {});
// Contiguous groups of group_size samples (sample i in group i / group_size). Throws when
// group_size does not divide the number of samples.
std::vector<double> grpo_advantages(const std::vector<double>& rewards, int group_size,
                                    const AdvantageOptions& opt = {});

struct SampleSelection {
  std::vector<int64_t> keep;       // indices of the samples to train on, ascending
  std::vector<double> advantages;  // all samples' advantages (shifted by 1e-6 in case 3)
  int64_t dropped = 0;             // dropped by rule 1 and not re-admitted
};
SampleSelection select_training_samples(const std::vector<double>& advantages, int num_batches,
                                        uint64_t seed);

// ---- policy loss ----
struct GrpoLossConfig {
  double guidance = 5.0;    // g (use_cfg_in_train); 1 means v = v_cond
  double clip_range = 5e-3; // ε
  double adv_clip = 5.0;    // |A| clamp at use
  double kl_beta = 0.004;   // β (0 disables the KL term; v_ref may then be undefined)
  int num_sde_steps = 10;   // S, the loss divisor
};

// One stored SDE step of B samples. All tensors [B, C, F, H, W] (any [B, ...]), the same
// dtype (F32 any device, or F64 CPU) and device.
struct GrpoStepInputs {
  sample::SdeCoeffs coeffs;  // of the step (sample::sde_coeffs)
  Tensor x, x_next;          // x_j and the stored x_{j+1}
  Tensor v_cond, v_uncond;   // this policy's conditional and (stop-gradient) unconditional
  Tensor v_ref;              // the reference (LoRA-disabled) CFG velocity; only for β > 0
  std::vector<double> logp_old;    // B, from the rollout
  std::vector<double> advantages;  // B, unclamped
};

struct GrpoStepResult {
  std::vector<double> logp, ratio;  // per sample
  std::vector<double> kl;           // per sample: mean((μ_θ − μ_ref)²)/(2σ_t²|Δ|) (0 if β = 0)
  // Per sample, diagnostics: mean(v²) of the CFG velocity v = v_u + g·(v_c − v_u), and
  // mean((v − v_ref)²) (0 if β = 0). Their ratio is the relative gap between the policy and the
  // reference; with a fresh LoRA (B = 0) it is what separates the two forward paths (0 on the CPU).
  std::vector<double> v_ms, ref_ms;
  double loss_pg = 0, loss_kl = 0, loss = 0;
  double clip_fraction = 0;  // share of samples with |ratio − 1| > ε (Flow-GRPO's clipfrac)
  Tensor grad_v_cond;        // dL/dv_cond, like v_cond (undefined unless want_grad)
};

// Throws osp::Error on mismatched shapes/dtypes/devices, wrong vector lengths, a missing v_ref
// with β > 0, or non-positive settings.
GrpoStepResult grpo_policy_loss(const GrpoStepInputs& in, const GrpoLossConfig& cfg,
                                bool want_grad = true);

}  // namespace osp::train
