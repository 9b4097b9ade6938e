// Flow-matching noise schedules (wan-spec §6.1–6.2, §6.5; osp-next-spec §6.2).
//
// Convention: x_σ = (1 − σ)·x0 + σ·ε, the model predicts v = ε − x0 at timestep t ≈ 1000·σ.
// A Schedule holds the S+1 solver sigmas (σ_S = 0) and the S timesteps the DiT is fed.
#pragma once
#include <string>
#include <vector>

namespace osp::sample {

struct Schedule {
  std::vector<float> sigmas;      // S+1 values used by the solver, fp32, last one 0
  std::vector<double> timesteps;  // S values fed to the model
  int steps() const { return int(timesteps.size()); }
};

// numpy.linspace(start, stop, num) with numpy's exact arithmetic (i·step + start, last = stop).
std::vector<double> linspace(double start, double stop, int num);

// The time shift σ' = shift·σ / (1 + (shift − 1)·σ)  (double precision).
double shift_sigma(double sigma, double shift);

// Wan2.1 reference (FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1) then
// set_timesteps(steps, shift)): σ_i = shift(linspace(fp32(0.999), 0, S+1)[i]) for i < S in
// double, sigmas = fp32([σ_0..σ_{S−1}, 0]), timesteps = int64(1000·σ_i) (truncated).
Schedule wan_unipc_schedule(int steps, double shift);

// OSP-Next / stable-diffusion.cpp Euler grid: σ_i = shift(linspace(1, 0, S+1)[i]) (σ_0 = 1,
// σ_S = 0), timesteps = 1000·σ_i as floats (not truncated).
Schedule euler_schedule(int steps, double shift);

// Validates user-facing sampler settings (steps ≥ 1, ≤ 1000; shift > 0 and finite) with
// actionable messages.
void check_schedule_args(int steps, double shift);

}  // namespace osp::sample
