// CPU kernel of fastsample::stack_tail_filters: the filter chain of the stack sampler's long-tail route
// (docs/ops.md "Long-tail steps"; fastsample/stack/tail.py is the torch twin of every step and says which
// order each `order` runs). One row per OpenMP task, one float64 copy of the row, each step a pass or two
// over it instead of a dozen [B, V] torch ops.
//
// Input: the processed logits y (float32 [B, V], after steps 1-3 and DRY), the per-row parameters ([B]
// tensors), the steps to run in order (codes below; steps that are off in every row are left out by the
// caller) and optionally mirostat's mu. Output: z float64 [B, V] (dropped tokens -inf; greedy rows keep only
// their maxima, at 0) and greedy bool [B]. The draws, logprobs and mu update stay in tail.py.
//
// Exactness: every decision is the float64 formula of tail.py on the same float32 y; sums run in id order
// (torch's may group differently), so a decision can differ only where a threshold falls within rounding of
// a token's value, the near-ties tests count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace fastsample::cpu::stack_tail {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLn2 = 0.69314718055994530942;

// Step codes (tail.py CPU_STEP_CODES).
enum Step : int64_t {
  kTemperature = 0, kDynatemp = 1, kTopNSigma = 2, kTopK = 3, kTopP = 4, kMinP = 5, kTypical = 6, kEpsilon = 7,
  kEta = 8, kXtc = 9,
};

struct Row {
  std::vector<double>& z;
  std::vector<double>& w;
  int64_t vocab;
  double zmax = -kInf, s = 0.0;

  // w = exp(z - max z), s = sum w.
  void weigh() {
    zmax = -kInf;
    for (int64_t i = 0; i < vocab; ++i) zmax = std::max(zmax, z[i]);
    s = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      w[i] = std::exp(z[i] - zmax);
      s += w[i];
    }
  }
  // Entropy (nats) of softmax(z); weigh() first.
  double entropy() const {
    const double log_s = std::log(s);
    double h = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (w[i] > 0) h += (w[i] / s) * (z[i] - zmax - log_s);
    }
    return -h;
  }
  void drop_if_not(const std::vector<char>& keep) {
    for (int64_t i = 0; i < vocab; ++i) {
      if (!keep[i]) z[i] = -kInf;
    }
  }
};

// The key of the last token of the prefix (tokens with w > 0 in key order, ties by id) whose mass before
// them is < limit * s; the first always counts.
double prefix_threshold(const std::vector<double>& key, const Row& r, double limit, bool descending,
                        std::vector<int64_t>& ids) {
  ids.clear();
  for (int64_t i = 0; i < r.vocab; ++i) {
    if (r.w[i] > 0) ids.push_back(i);
  }
  if (ids.empty()) return descending ? kInf : -kInf;
  std::sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
    if (key[a] != key[b]) return descending ? key[a] > key[b] : key[a] < key[b];
    return a < b;
  });
  const double cut = limit * r.s;
  double before = 0.0;
  size_t last = 0;
  for (size_t j = 0; j < ids.size(); ++j) {
    if (before < cut) last = j;
    else break;
    before += r.w[ids[j]];
  }
  return key[ids[last]];
}

struct Params {
  double temperature, top_p, min_p, top_n_sigma, typical_p, epsilon, eta, xtc_p, xtc_t, u_xtc, dyn_r, dyn_x;
  int64_t top_k;
};

// Runs the steps on one row (z already holds y in double). Returns whether the row became greedy.
bool run_row(Row& r, const Params& p, const int64_t* steps, int64_t n_steps, const double* mu,
             std::vector<char>& keep, std::vector<double>& key, std::vector<int64_t>& ids) {
  const int64_t vocab = r.vocab;
  r.weigh();
  if (r.zmax == kInf) {  // +inf tokens share the mass
    for (int64_t i = 0; i < vocab; ++i) r.z[i] = r.z[i] == kInf ? 0.0 : -kInf;
  }
  bool greedy = false;
  for (int64_t k = 0; k < n_steps; ++k) {
    r.weigh();
    switch (steps[k]) {
      case kTemperature:
      case kDynatemp: {
        double t = p.temperature;
        int64_t alive = 0;
        for (int64_t i = 0; i < vocab; ++i) alive += r.z[i] > -kInf;
        bool skip = false;
        if (steps[k] == kDynatemp && p.dyn_r > 0) {
          if (alive > 1) {
            const double lo = std::max(t - p.dyn_r, 0.0), hi = t + p.dyn_r;
            const double norm_h = r.entropy() / std::log(static_cast<double>(std::max<int64_t>(alive, 2)));
            t = lo + (hi - lo) * std::pow(std::max(norm_h, 0.0), p.dyn_x);
          } else {
            skip = true;
          }
        }
        greedy = p.temperature == 0 || t <= 0;
        if (greedy) {
          for (int64_t i = 0; i < vocab; ++i) r.z[i] = r.z[i] == r.zmax ? 0.0 : -kInf;
        } else if (!skip) {
          for (int64_t i = 0; i < vocab; ++i) r.z[i] = r.z[i] / t;
        }
        break;
      }
      case kTopNSigma: {
        if (!(p.top_n_sigma > 0)) break;
        double sum = 0.0;
        int64_t count = 0;
        for (int64_t i = 0; i < vocab; ++i) {
          if (r.z[i] > -kInf) sum += r.z[i], ++count;
        }
        const double mean = sum / static_cast<double>(count);
        double sq = 0.0;
        for (int64_t i = 0; i < vocab; ++i) {
          if (r.z[i] > -kInf) sq += (r.z[i] - mean) * (r.z[i] - mean);
        }
        const double sigma = std::sqrt(sq / static_cast<double>(count));
        const double cut = sigma > 0 ? r.zmax - p.top_n_sigma * sigma : r.zmax;
        for (int64_t i = 0; i < vocab; ++i) keep[i] = r.z[i] >= cut;
        r.drop_if_not(keep);
        break;
      }
      case kTopK: {
        if (!(p.top_k > 0 && p.top_k < vocab)) break;
        key.assign(r.z.begin(), r.z.begin() + vocab);
        std::nth_element(key.begin(), key.begin() + (p.top_k - 1), key.end(), std::greater<double>());
        const double kth = key[p.top_k - 1];
        for (int64_t i = 0; i < vocab; ++i) keep[i] = r.z[i] >= kth;
        r.drop_if_not(keep);
        break;
      }
      case kTopP: {
        if (!(p.top_p < 1)) break;
        const double thr = prefix_threshold(r.z, r, p.top_p, true, ids);
        for (int64_t i = 0; i < vocab; ++i) keep[i] = r.z[i] >= thr;
        r.drop_if_not(keep);
        break;
      }
      case kMinP: {
        if (!(p.min_p > 0)) break;
        for (int64_t i = 0; i < vocab; ++i) keep[i] = r.w[i] >= p.min_p;
        r.drop_if_not(keep);
        break;
      }
      case kTypical: {
        if (!(p.typical_p < 1)) break;
        const double h = r.entropy(), log_s = std::log(r.s);
        key.resize(vocab);
        for (int64_t i = 0; i < vocab; ++i) key[i] = r.w[i] > 0 ? std::abs(-(r.z[i] - r.zmax - log_s) - h) : kInf;
        const double thr = prefix_threshold(key, r, p.typical_p, false, ids);
        for (int64_t i = 0; i < vocab; ++i) keep[i] = key[i] <= thr && r.w[i] > 0;
        r.drop_if_not(keep);
        break;
      }
      case kEpsilon:
      case kEta: {
        const double e = steps[k] == kEpsilon ? p.epsilon : p.eta;
        if (!(e > 0)) break;
        const double cut = steps[k] == kEpsilon ? e : std::min(e, std::sqrt(e) * std::exp(-r.entropy()));
        for (int64_t i = 0; i < vocab; ++i) keep[i] = r.w[i] / r.s >= cut || r.z[i] == r.zmax;
        r.drop_if_not(keep);
        break;
      }
      case kXtc: {
        int64_t alive = 0, above = 0;
        double lowest = kInf;
        for (int64_t i = 0; i < vocab; ++i) {
          alive += r.w[i] > 0;
          keep[i] = r.w[i] / r.s >= p.xtc_t && r.w[i] > 0;  // above the threshold
          if (keep[i]) ++above, lowest = std::min(lowest, r.z[i]);
        }
        if (!(p.xtc_p > 0 && p.xtc_t <= 0.5 && p.u_xtc <= p.xtc_p && alive >= 2 && above >= 2)) break;
        for (int64_t i = 0; i < vocab; ++i) {
          if (keep[i] && r.z[i] > lowest) r.z[i] = -kInf;
        }
        break;
      }
      default:
        TORCH_CHECK(false, "stack_tail_filters: unknown step code ", steps[k]);
    }
  }
  if (mu != nullptr) {
    r.weigh();
    const double log_s = std::log(r.s);
    for (int64_t i = 0; i < vocab; ++i) {
      const double surprise = -(r.z[i] - r.zmax - log_s) / kLn2;
      if (!(surprise <= *mu || r.z[i] == r.zmax)) r.z[i] = -kInf;
    }
  }
  return greedy;
}

void check_rows(const at::Tensor& t, int64_t batch, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == batch && t.scalar_type() == dtype &&
                  t.is_contiguous(),
              "stack_tail_filters: ", name, " must be a contiguous CPU tensor [", batch, "] of ", dtype);
}

std::tuple<at::Tensor, at::Tensor> stack_tail_filters(
    const at::Tensor& y, const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
    const at::Tensor& min_p, const at::Tensor& top_n_sigma, const at::Tensor& typical_p, const at::Tensor& epsilon,
    const at::Tensor& eta, const at::Tensor& xtc_probability, const at::Tensor& xtc_threshold,
    const at::Tensor& u_xtc, const at::Tensor& dynatemp_range, const at::Tensor& dynatemp_exponent,
    const std::optional<at::Tensor>& mirostat_mu, at::IntArrayRef steps) {
  TORCH_CHECK(y.device().is_cpu() && y.dim() == 2 && y.scalar_type() == at::kFloat && y.is_contiguous(),
              "stack_tail_filters: y must be a contiguous float32 CPU tensor [B, V]");
  const int64_t batch = y.size(0), vocab = y.size(1);
  const at::Tensor* f32[] = {&temperature, &top_p, &min_p, &top_n_sigma, &typical_p, &epsilon, &eta,
                             &xtc_probability, &xtc_threshold, &u_xtc, &dynatemp_range, &dynatemp_exponent};
  for (const at::Tensor* t : f32) check_rows(*t, batch, at::kFloat, "a per-row parameter");
  check_rows(top_k, batch, at::kLong, "top_k");
  if (mirostat_mu) check_rows(*mirostat_mu, batch, at::kFloat, "mirostat_mu");
  at::Tensor z = at::empty({batch, vocab}, y.options().dtype(at::kDouble));
  at::Tensor greedy = at::empty({batch}, y.options().dtype(at::kBool));
  const float* yp = y.const_data_ptr<float>();
  double* zp = z.data_ptr<double>();
  bool* gp = greedy.data_ptr<bool>();
  auto f = [](const at::Tensor& t, int64_t b) { return static_cast<double>(t.const_data_ptr<float>()[b]); };
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> zrow(vocab), w(vocab), key;
    std::vector<char> keep(vocab);
    std::vector<int64_t> ids;
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t i = 0; i < vocab; ++i) zrow[i] = static_cast<double>(yp[b * vocab + i]);
      Row r{zrow, w, vocab};
      const Params p{f(temperature, b), f(top_p, b), f(min_p, b), f(top_n_sigma, b), f(typical_p, b),
                     f(epsilon, b), f(eta, b), f(xtc_probability, b), f(xtc_threshold, b), f(u_xtc, b),
                     f(dynatemp_range, b), f(dynatemp_exponent, b), top_k.const_data_ptr<int64_t>()[b]};
      double mu = mirostat_mu ? f(*mirostat_mu, b) : 0.0;
      gp[b] = run_row(r, p, steps.data(), static_cast<int64_t>(steps.size()), mirostat_mu ? &mu : nullptr, keep,
                      key, ids);
      std::copy(zrow.begin(), zrow.end(), zp + b * vocab);
    }
  });
  return {z, greedy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("stack_tail_filters", &stack_tail_filters); }

}  // namespace fastsample::cpu::stack_tail
