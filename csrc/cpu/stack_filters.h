// Leaf rules of the CPU stack sampler's filters and logprobs (stack_sampler.cpp), each decided in double as
// tests/oracle.py decides it.
#pragma once
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "simd.h"
#include "stack_row.h"

namespace fastsample::cpu::stack {

// The smallest float v with (v - m) / T >= log(min_p), decided in double like the oracle.
inline float min_p_threshold(double m, double t, double min_p) {
  if (min_p <= 0.0) return -kInf;
  const double log_min_p = std::log(min_p);
  auto keep = [&](float v) { return (static_cast<double>(v) - m) / t >= log_min_p; };
  float v = static_cast<float>(m + t * log_min_p);
  while (!keep(v)) v = std::nextafter(v, kInf);
  for (float below = std::nextafter(v, -kInf); keep(below); below = std::nextafter(v, -kInf)) v = below;
  return v;
}

// Top-p over tokens sorted by value descending (weights alongside), starting from `cum`, the mass above them:
// keeps a group of equal values while cum < target; the first group is always kept. Returns its last value.
template <class Get>
float walk_groups(size_t count, Get get, double target, double cum) {
  float theta = kInf;
  bool first = true;
  for (size_t i = 0; i < count;) {
    if (!first && !(cum < target)) break;
    first = false;
    theta = get(i).first;
    for (; i < count && get(i).first == theta; ++i) cum += get(i).second;
  }
  return theta;
}

// The first `need` token ids not in `kept` (sorted ascending), for top-N rows that run out of kept tokens.
inline void pad_dropped(const std::vector<int64_t>& kept_sorted, int64_t vocab, int64_t from, int64_t need,
                 int64_t* ids, float* values) {
  size_t j = 0;
  for (int64_t i = 0, filled = 0; i < vocab && filled < need; ++i) {
    while (j < kept_sorted.size() && kept_sorted[j] < i) ++j;
    if (j < kept_sorted.size() && kept_sorted[j] == i) continue;
    ids[from + filled] = i;
    values[from + filled] = -kInf;
    ++filled;
  }
}

struct RawStats {
  float ref = -kInf;  // running max of the raw logits
  double sum = 0.0;   // sum of exp(x - ref)
  int64_t inf_count = 0;

  void add(const float* x, int64_t n) {
    float m = -kInf;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
    if (m == kInf) {
      for (int64_t i = 0; i < n; ++i) inf_count += x[i] == kInf;
      return;
    }
    if (m == -kInf) return;
    if (m > ref) {
      sum *= std::exp(static_cast<double>(ref) - m);
      ref = m;
    }
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += exp_nonpositive(x[i] - ref);
    sum += s;
  }
  double logprob(float v) const {
    if (inf_count > 0) return v == kInf ? -std::log(static_cast<double>(inf_count)) : -INFINITY;
    return static_cast<double>(v) - ref - std::log(sum);
  }
};

}  // namespace fastsample::cpu::stack
