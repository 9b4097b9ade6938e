// Finite-difference checking shared by the backward op tests (backward_test.cpp,
// vae_backward_test.cpp): float64 vectors, random inputs, central differences, and the
// comparison of an fp32 gradient with a float64 one.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::fd {

using Vec = std::vector<double>;

inline Tensor randn(const Shape& s, uint32_t seed, float sd = 1.f, float mean = 0.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(mean, sd);
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = nd(g);
  return Tensor::from_vector(v, s);
}

inline Vec values(const Tensor& t) {
  const auto f = t.to_float_vector();
  return Vec(f.begin(), f.end());
}

// Central differences of L at x, every element (L evaluated in double).
inline Vec fd_grad(const std::function<double(const Vec&)>& L, Vec x, double h = 1e-5) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = L(x);
    x[i] = x0 - h;
    const double lm = L(x);
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

inline Vec add(const Vec& a, const Vec& b) {
  Vec c(a.size());
  for (size_t i = 0; i < a.size(); ++i) c[i] = a[i] + b[i];
  return c;
}

// An overwritten output starts as NaN (so a skipped element shows).
inline Tensor nan_tensor(const Shape& s) {
  std::vector<float> v(size_t(shape_numel(s)), std::nanf(""));
  return Tensor::from_vector(v, s);
}

// got (f32) matches want (double): ‖got − want‖ ≤ rtol·max(‖want‖, floor) and every element
// within 10·rtol·max(max|want|, floor) (so one bad element among many good ones still fails).
// floor: the size of the terms that cancel into want where want is (near) zero by symmetry.
inline void expect_near_vec(const Tensor& got_t, const Vec& want, double rtol, const std::string& what,
                            double floor = 0) {
  const Vec got = values(got_t);
  ASSERT_EQ(got.size(), want.size()) << what;
  double num = 0, den = 0, mx = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
    mx = std::max(mx, std::abs(want[i]));
  }
  mx = std::max(mx, floor);
  EXPECT_LE(std::sqrt(num), rtol * std::max(std::sqrt(den), floor) + 1e-12) << what;
  int shown = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= 10 * rtol * mx + 1e-12)) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", want " << want[i];
      if (++shown > 5) break;
    }
}

}  // namespace osp::fd
