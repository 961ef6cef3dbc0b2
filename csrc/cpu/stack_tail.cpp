// CPU kernel of fastsample::stack_tail_filters: the filter chain of the stack sampler's long-tail route
// (docs/ops.md "Long-tail steps"; fastsample/stack/tail.py is the torch twin of every step and says which
// order each `order` runs). One row per OpenMP task, one float64 copy of the row, then every step works on the
// list of surviving ids (after top-n-sigma or top-k: the candidates, not the vocabulary).
//
// Input: the processed logits y (float32 [B, V], after steps 1-3 and DRY), the per-row parameters ([B]
// tensors), the steps to run in order (codes below; steps that are off in every row are left out by the
// caller) and optionally mirostat's mu. Output: z float64 [B, V] (dropped tokens -inf; greedy rows keep only
// their maxima, at 0) and greedy bool [B]; with the uniforms u [B, n] also the draws over the survivors and
// the kept probability of draw 0 (mirostat's update stays in tail.py), and with dense=False no z at all.
// stack_tail_dry (below) is DRY's override list.
//
// Exactness: every decision is the float64 formula of tail.py on the same float32 y; sums run in id order
// (torch's may group differently), so a decision can differ only where a threshold falls within rounding of
// a token's value, the near-ties tests count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fastsample/philox.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace fastsample::cpu::stack_tail {
using fastsample::philox_uniform;
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLn2 = 0.69314718055994530942;
// llama.cpp clamps DRY's exponent so that base ** exponent stays a finite float: log(FLT_MAX) as it writes it.
constexpr float DRY_FLOAT_MAX_LOG = 88.7228391f;

// Step codes (tail.py CPU_STEP_CODES).
enum Step : int64_t {
  kTemperature = 0, kDynatemp = 1, kTopNSigma = 2, kTopK = 3, kTopP = 4, kMinP = 5, kTypical = 6, kEpsilon = 7,
  kEta = 8, kXtc = 9,
};

struct Row {
  std::vector<double>& z;   // the row, dense by id (dropped tokens -inf)
  std::vector<double>& w;   // exp(z - zmax), valid at the ids in `alive` after weigh()
  std::vector<int64_t>& alive;  // the ids with z > -inf (and NaN ids), in increasing id order
  int64_t vocab;
  double zmax = -kInf, s = 0.0;

  // zmax = max z over the alive ids (std::max order: a NaN never replaces a number).
  void find_max() {
    zmax = -kInf;
    for (int64_t i : alive) zmax = std::max(zmax, z[i]);
  }
  // w = exp(z - max z), s = sum w (in id order; the dropped ids would add exact zeros).
  void weigh() {
    find_max();
    s = 0.0;
    for (int64_t i : alive) {
      w[i] = std::exp(z[i] - zmax);
      s += w[i];
    }
  }
  // Entropy (nats) of softmax(z); weigh() first.
  double entropy() const {
    const double log_s = std::log(s);
    double h = 0.0;
    for (int64_t i : alive) {
      if (w[i] > 0) h += (w[i] / s) * (z[i] - zmax - log_s);
    }
    return -h;
  }
  // Drops the alive ids for which keep(i) is false (z = -inf), keeping `alive` in id order.
  template <class Keep>
  void keep_if(Keep keep) {
    size_t n = 0;
    for (int64_t i : alive) {
      if (keep(i)) alive[n++] = i;
      else z[i] = -kInf;
    }
    alive.resize(n);
  }
};

// The key of the last token of the prefix (alive tokens with w > 0 in key order, ties by id) whose mass before
// them is < limit * s; the first always counts.
double prefix_threshold(const std::vector<double>& key, const Row& r, double limit, bool descending,
                        std::vector<int64_t>& ids) {
  ids.clear();
  for (int64_t i : r.alive) {
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

// Runs the steps on one row (z already holds y in double, alive its finite ids). Every step works on the
// alive ids only: after a truncating step (top-n-sigma, top-k) the rest of the chain touches the candidates,
// not the vocabulary. Returns whether the row became greedy.
bool run_row(Row& r, const Params& p, const int64_t* steps, int64_t first, int64_t n_steps, const double* mu,
             std::vector<double>& key, std::vector<int64_t>& ids) {
  const int64_t vocab = r.vocab;
  bool greedy = false;
  for (int64_t k = first; k < n_steps; ++k) {
    switch (steps[k]) {
      case kTemperature:
      case kDynatemp: {
        double t = p.temperature;
        const int64_t alive = static_cast<int64_t>(r.alive.size());
        bool skip = false;
        if (steps[k] == kDynatemp && p.dyn_r > 0) {
          if (alive > 1) {
            r.weigh();
            const double lo = std::max(t - p.dyn_r, 0.0), hi = t + p.dyn_r;
            const double norm_h = r.entropy() / std::log(static_cast<double>(std::max<int64_t>(alive, 2)));
            t = lo + (hi - lo) * std::pow(std::max(norm_h, 0.0), p.dyn_x);
          } else {
            skip = true;
          }
        }
        greedy = p.temperature == 0 || t <= 0;
        if (greedy) {
          r.find_max();
          const double top = r.zmax;
          r.keep_if([&](int64_t i) { return r.z[i] == top; });
          for (int64_t i : r.alive) r.z[i] = 0.0;
        } else if (!skip) {
          for (int64_t i : r.alive) r.z[i] = r.z[i] / t;
        }
        break;
      }
      case kTopNSigma: {
        if (!(p.top_n_sigma > 0)) break;
        r.find_max();
        double sum = 0.0;
        int64_t count = 0;
        for (int64_t i : r.alive) {
          if (r.z[i] > -kInf) sum += r.z[i], ++count;
        }
        const double mean = sum / static_cast<double>(count);
        double sq = 0.0;
        for (int64_t i : r.alive) {
          if (r.z[i] > -kInf) sq += (r.z[i] - mean) * (r.z[i] - mean);
        }
        const double sigma = std::sqrt(sq / static_cast<double>(count));
        const double cut = sigma > 0 ? r.zmax - p.top_n_sigma * sigma : r.zmax;
        r.keep_if([&](int64_t i) { return r.z[i] >= cut; });
        break;
      }
      case kTopK: {
        if (!(p.top_k > 0 && p.top_k < vocab)) break;
        if (p.top_k >= static_cast<int64_t>(r.alive.size())) break;  // the k-th value is -inf: keeps all
        key.resize(r.alive.size());
        for (size_t j = 0; j < r.alive.size(); ++j) key[j] = r.z[r.alive[j]];
        std::nth_element(key.begin(), key.begin() + (p.top_k - 1), key.end(), std::greater<double>());
        const double kth = key[p.top_k - 1];
        r.keep_if([&](int64_t i) { return r.z[i] >= kth; });
        break;
      }
      case kTopP: {
        if (!(p.top_p < 1)) break;
        r.weigh();
        const double thr = prefix_threshold(r.z, r, p.top_p, true, ids);
        r.keep_if([&](int64_t i) { return r.z[i] >= thr; });
        break;
      }
      case kMinP: {
        if (!(p.min_p > 0)) break;
        r.weigh();
        r.keep_if([&](int64_t i) { return r.w[i] >= p.min_p; });
        break;
      }
      case kTypical: {
        if (!(p.typical_p < 1)) break;
        r.weigh();
        const double h = r.entropy(), log_s = std::log(r.s);
        key.resize(vocab);
        for (int64_t i : r.alive) key[i] = r.w[i] > 0 ? std::abs(-(r.z[i] - r.zmax - log_s) - h) : kInf;
        const double thr = prefix_threshold(key, r, p.typical_p, false, ids);
        r.keep_if([&](int64_t i) { return key[i] <= thr && r.w[i] > 0; });
        break;
      }
      case kEpsilon:
      case kEta: {
        const double e = steps[k] == kEpsilon ? p.epsilon : p.eta;
        if (!(e > 0)) break;
        r.weigh();
        const double cut = steps[k] == kEpsilon ? e : std::min(e, std::sqrt(e) * std::exp(-r.entropy()));
        r.keep_if([&](int64_t i) { return r.w[i] / r.s >= cut || r.z[i] == r.zmax; });
        break;
      }
      case kXtc: {
        r.weigh();
        int64_t alive = 0, above = 0;
        double lowest = kInf;
        for (int64_t i : r.alive) {
          alive += r.w[i] > 0;
          if (r.w[i] / r.s >= p.xtc_t && r.w[i] > 0) ++above, lowest = std::min(lowest, r.z[i]);
        }
        if (!(p.xtc_p > 0 && p.xtc_t <= 0.5 && p.u_xtc <= p.xtc_p && alive >= 2 && above >= 2)) break;
        r.keep_if([&](int64_t i) { return !(r.w[i] / r.s >= p.xtc_t && r.w[i] > 0 && r.z[i] > lowest); });
        break;
      }
      default:
        TORCH_CHECK(false, "stack_tail_filters: unknown step code ", steps[k]);
    }
  }
  if (mu != nullptr) {
    r.weigh();
    const double log_s = std::log(r.s);
    r.keep_if([&](int64_t i) {
      const double surprise = -(r.z[i] - r.zmax - log_s) / kLn2;
      return surprise <= *mu || r.z[i] == r.zmax;
    });
  }
  return greedy;
}

void check_rows(const at::Tensor& t, int64_t batch, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == batch && t.scalar_type() == dtype &&
                  t.is_contiguous(),
              "stack_tail_filters: ", name, " must be a contiguous CPU tensor [", batch, "] of ", dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> stack_tail_filters(
    const at::Tensor& y, const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
    const at::Tensor& min_p, const at::Tensor& top_n_sigma, const at::Tensor& typical_p, const at::Tensor& epsilon,
    const at::Tensor& eta, const at::Tensor& xtc_probability, const at::Tensor& xtc_threshold,
    const at::Tensor& u_xtc, const at::Tensor& dynatemp_range, const at::Tensor& dynatemp_exponent,
    const std::optional<at::Tensor>& mirostat_mu, at::IntArrayRef steps, const std::optional<at::Tensor>& u,
    bool dense, const std::optional<at::Tensor>& dry_ids, const std::optional<at::Tensor>& dry_penalty,
    const std::optional<at::Tensor>& seed, const std::optional<at::Tensor>& offset, int64_t num_draws) {
  TORCH_CHECK(y.device().is_cpu() && y.dim() == 2 && y.scalar_type() == at::kFloat && y.is_contiguous(),
              "stack_tail_filters: y must be a contiguous float32 CPU tensor [B, V]");
  const int64_t batch = y.size(0), vocab = y.size(1);
  const at::Tensor* f32[] = {&temperature, &top_p, &min_p, &top_n_sigma, &typical_p, &epsilon, &eta,
                             &xtc_probability, &xtc_threshold, &u_xtc, &dynatemp_range, &dynatemp_exponent};
  for (const at::Tensor* t : f32) check_rows(*t, batch, at::kFloat, "a per-row parameter");
  check_rows(top_k, batch, at::kLong, "top_k");
  if (mirostat_mu) check_rows(*mirostat_mu, batch, at::kFloat, "mirostat_mu");
  TORCH_CHECK(seed.has_value() == offset.has_value(), "stack_tail_filters: seed and offset go together");
  if (seed) {
    check_rows(*seed, batch, at::kLong, "seed");
    check_rows(*offset, batch, at::kLong, "offset");
    TORCH_CHECK(!u && num_draws >= 1, "stack_tail_filters: seed/offset draw num_draws >= 1 uniforms instead of u");
  }
  const int64_t* seedp = seed ? seed->const_data_ptr<int64_t>() : nullptr;
  const int64_t* offp = offset ? offset->const_data_ptr<int64_t>() : nullptr;
  const bool draws = u.has_value() || seed.has_value();
  TORCH_CHECK(draws || dense, "stack_tail_filters: dense=False needs the uniforms u (or seed and offset)");
  const int64_t n_draws = u ? u->size(1) : seed ? num_draws : 0;
  if (u) {
    TORCH_CHECK(u->device().is_cpu() && u->dim() == 2 && u->size(0) == batch && u->scalar_type() == at::kFloat &&
                    u->is_contiguous(),
                "stack_tail_filters: u must be a contiguous float32 CPU tensor [B, n]");
  }
  at::Tensor z = at::empty({dense ? batch : 0, vocab}, y.options().dtype(at::kDouble));
  at::Tensor tokens = at::empty({draws ? batch : 0, n_draws}, y.options().dtype(at::kLong));
  at::Tensor p_token = at::empty({draws ? batch : 0}, y.options().dtype(at::kDouble));
  TORCH_CHECK(dry_ids.has_value() == dry_penalty.has_value(), "stack_tail_filters: dry_ids and dry_penalty go together");
  int64_t n_dry = 0;
  if (dry_ids) {
    TORCH_CHECK(dry_ids->dim() == 2 && dry_ids->size(0) == batch && dry_ids->scalar_type() == at::kLong &&
                    dry_ids->is_contiguous() && dry_penalty->sizes() == dry_ids->sizes() &&
                    dry_penalty->scalar_type() == at::kFloat && dry_penalty->is_contiguous(),
                "stack_tail_filters: dry_ids int64 and dry_penalty float32 must be contiguous [B, L]");
    n_dry = dry_ids->size(1);
  }
  const int64_t* dip = dry_ids ? dry_ids->const_data_ptr<int64_t>() : nullptr;
  const float* dpp = dry_penalty ? dry_penalty->const_data_ptr<float>() : nullptr;
  at::Tensor finite = at::empty({batch}, y.options().dtype(at::kBool));
  bool* fp = finite.data_ptr<bool>();
  const float* up = u ? u->const_data_ptr<float>() : nullptr;
  int64_t* tp = tokens.data_ptr<int64_t>();
  double* ptp = p_token.data_ptr<double>();
  at::Tensor greedy = at::empty({batch}, y.options().dtype(at::kBool));
  const float* yp = y.const_data_ptr<float>();
  double* zp = z.data_ptr<double>();
  bool* gp = greedy.data_ptr<bool>();
  auto f = [](const at::Tensor& t, int64_t b) { return static_cast<double>(t.const_data_ptr<float>()[b]); };
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> zrow(vocab), w(vocab), key;
    std::vector<float> yf(n_dry > 0 ? vocab : 0);
    std::vector<int64_t> alive, ids;
    alive.reserve(vocab);
    for (int64_t b = begin; b < end; ++b) {
      const float* yr = yp + b * vocab;
      // With seed/offset the op draws the Philox uniforms itself (docs/design.md section 4): XTC's at index
      // 0xFFFFFFFF, the draws at 0..n-1 (u_xtc is then ignored).
      const double xtc_u = seedp != nullptr ? static_cast<double>(philox_uniform(seedp[b], offp[b], 0xFFFFFFFFu))
                                            : f(u_xtc, b);
      const Params p{f(temperature, b), f(top_p, b), f(min_p, b), f(top_n_sigma, b), f(typical_p, b),
                     f(epsilon, b), f(eta, b), f(xtc_probability, b), f(xtc_threshold, b), xtc_u,
                     f(dynatemp_range, b), f(dynatemp_exponent, b), top_k.const_data_ptr<int64_t>()[b]};
      if (n_dry > 0) {  // DRY: y.scatter_add(1, ids, -penalty) in float32, on a float copy of the row
        std::copy(yr, yr + vocab, yf.begin());
        for (int64_t j = 0; j < n_dry; ++j) {
          const int64_t id = dip[b * n_dry + j];
          TORCH_CHECK(id >= 0 && id < vocab, "stack_tail_filters: a DRY id is out of range");
          yf[id] = yf[id] + (-dpp[b * n_dry + j]);
        }
        yr = yf.data();
      }
      int64_t first = 0;
      alive.clear();
      if (!steps.empty() && steps[0] == kTopNSigma && p.top_n_sigma > 0) {
        // Top-n-sigma first (llama.cpp's chain): its sums straight from the float row (max, then the sum and
        // count of the finite values, then the squares, all in id order as below), and only its survivors are
        // copied to double: no pass over V after this one. Rows with NaN or +inf take the general path.
        float top32 = -std::numeric_limits<float>::infinity();
        double sum = 0.0;
        int64_t count = 0;
        bool odd = false;
        for (int64_t i = 0; i < vocab; ++i) {
          const float v = yr[i];
          top32 = std::max(top32, v);
          odd |= v != v;
          if (v > -std::numeric_limits<float>::infinity()) sum += static_cast<double>(v), ++count;
        }
        const double top = static_cast<double>(top32);
        if (!odd && top < kInf) {
          fp[b] = top > -kInf;
          const double mean = sum / static_cast<double>(count);
          double sq = 0.0;
          for (int64_t i = 0; i < vocab; ++i) {
            const double v = static_cast<double>(yr[i]);
            if (v > -kInf) sq += (v - mean) * (v - mean);
          }
          const double sigma = std::sqrt(sq / static_cast<double>(count));
          const double cut = sigma > 0 ? top - p.top_n_sigma * sigma : top;
          if (dense) std::fill(zrow.begin(), zrow.end(), -kInf);
          for (int64_t i = 0; i < vocab; ++i) {
            const double v = static_cast<double>(yr[i]);
            if (v >= cut && v > -kInf) {
              zrow[i] = v;
              alive.push_back(i);
            }
          }
          first = 1;
        }
      }
      if (first == 0) {
        double top = -kInf;
        for (int64_t i = 0; i < vocab; ++i) zrow[i] = static_cast<double>(yr[i]);
        for (int64_t i = 0; i < vocab; ++i) top = std::max(top, zrow[i]);
        fp[b] = top > -kInf;  // y.amax > -inf after DRY (NaN rows are invalid through `bad` anyway)
        if (top == kInf) {  // +inf tokens share the mass
          for (int64_t i = 0; i < vocab; ++i) zrow[i] = zrow[i] == kInf ? 0.0 : -kInf;
        }
        for (int64_t i = 0; i < vocab; ++i) {
          if (!(zrow[i] == -kInf)) alive.push_back(i);  // NaN ids stay (their row is invalid anyway)
        }
      }
      Row r{zrow, w, alive, vocab};
      double mu = mirostat_mu ? f(*mirostat_mu, b) : 0.0;
      gp[b] = run_row(r, p, steps.data(), first, static_cast<int64_t>(steps.size()), mirostat_mu ? &mu : nullptr, key,
                      ids);
      if (dense) std::copy(zrow.begin(), zrow.end(), zp + b * vocab);
      if (draws) {
        // The draws of tail.py over the survivors only: kept weights exp(z - max) in id order, their running
        // sum (the dropped ids would add exact zeros), the first id whose running sum is > u * total
        // (searchsorted right); greedy rows take their lowest maximum id. p_token = w[token 0] / total.
        r.find_max();
        double total = 0.0;
        for (int64_t i : alive) {
          w[i] = std::exp(zrow[i] - r.zmax);
          total += w[i];
        }
        for (int64_t j = 0; j < n_draws; ++j) {
          int64_t token = vocab - 1;
          if (gp[b]) {
            for (int64_t i : alive) {
              if (zrow[i] == r.zmax) {
                token = i;
                break;
              }
            }
            if (alive.empty()) token = 0;
          } else {
            const float uj = up != nullptr ? up[b * n_draws + j]
                                           : philox_uniform(seedp[b], offp[b], static_cast<uint32_t>(j));
            const double target = static_cast<double>(uj) * total;
            double c = 0.0;
            for (int64_t i : alive) {
              c += w[i];
              if (c > target) {
                token = i;
                break;
              }
            }
          }
          tp[b * n_draws + j] = token;
          if (j == 0) {
            const bool kept = std::binary_search(alive.begin(), alive.end(), token);
            ptp[b] = (kept ? w[token] : 0.0) / total;
          }
        }
      }
    }
  });
  return {z, greedy, tokens, p_token, finite};
}

// DRY's override list (docs/ops.md "Long-tail steps", tail.py `dry` is the torch twin): for each row of the
// right-aligned history h (int64 [B, L], -1 to the left of the first token), the tokens that would extend a
// repeat of the window's end and their penalties. Work O(L) per row: the run lengths r_e are the Z-function of
// the reversed window (r_e = the longest common prefix of the window read backwards from its end and from e).
// Returns (ids int64 [B, L], penalty float32 [B, L]): at most L entries per row, unused ones (id 0, penalty 0),
// each token at most once, so that y.scatter_add(1, ids, -penalty) is llama.cpp's float32 subtraction.
std::tuple<at::Tensor, at::Tensor> stack_tail_dry(const at::Tensor& h, const at::Tensor& multiplier,
                                                  const at::Tensor& base, const at::Tensor& allowed_length,
                                                  const at::Tensor& penalty_last_n,
                                                  const std::optional<at::Tensor>& breakers, int64_t vocab) {
  TORCH_CHECK(h.device().is_cpu() && h.dim() == 2 && h.scalar_type() == at::kLong && h.is_contiguous(),
              "stack_tail_dry: h must be a contiguous int64 CPU tensor [B, L]");
  const int64_t batch = h.size(0), L = h.size(1);
  check_rows(multiplier, batch, at::kFloat, "dry_multiplier");
  check_rows(base, batch, at::kFloat, "dry_base");
  check_rows(allowed_length, batch, at::kLong, "dry_allowed_length");
  check_rows(penalty_last_n, batch, at::kLong, "dry_penalty_last_n");
  int64_t n_br = 0;
  const int64_t* brp = nullptr;
  int64_t br_stride = 0;
  at::Tensor br;
  if (breakers && breakers->size(-1) > 0) {
    br = breakers->contiguous();
    TORCH_CHECK(br.dim() == 2 && br.scalar_type() == at::kLong && (br.size(0) == batch || br.size(0) == 1),
                "stack_tail_dry: breakers must be int64 [B, L] or [1, L]");
    n_br = br.size(1);
    brp = br.const_data_ptr<int64_t>();
    br_stride = br.size(0) == 1 ? 0 : n_br;
  }
  at::Tensor ids = at::zeros({batch, L}, h.options());
  at::Tensor pen = at::zeros({batch, L}, h.options().dtype(at::kFloat));
  const int64_t* hp = h.const_data_ptr<int64_t>();
  int64_t* ip = ids.data_ptr<int64_t>();
  float* pp = pen.data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> zf;
    std::vector<std::pair<int64_t, int64_t>> entries;  // (token, run)
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* row = hp + b * L;
      const int64_t* brow = brp == nullptr ? nullptr : brp + b * br_stride;
      auto is_breaker = [&](int64_t id) {
        for (int64_t j = 0; j < n_br; ++j) {
          if (brow[j] >= 0 && brow[j] == id) return true;
        }
        return false;
      };
      int64_t count = 0;
      for (int64_t c = 0; c < L; ++c) count += row[c] != -1;
      const int64_t last_n = penalty_last_n.const_data_ptr<int64_t>()[b];
      const int64_t allowed = allowed_length.const_data_ptr<int64_t>()[b];
      const float mult = multiplier.const_data_ptr<float>()[b], bse = base.const_data_ptr<float>()[b];
      const int64_t m = last_n < 0 ? count : std::min(count, last_n);
      int64_t last_breaker = -1;
      if (n_br > 0) {
        for (int64_t c = L - 1; c >= L - m; --c) {
          if (is_breaker(row[c])) {
            last_breaker = c;
            break;
          }
        }
      }
      const int64_t rep_limit = last_breaker >= 0 ? L - 1 - last_breaker : m;
      if (!(mult > 0 && bse >= 1 && last_n != 0 && m > allowed && rep_limit >= allowed)) continue;
      // Z-function of s[j] = row[L - 1 - j], j < m: zf[i] = the common prefix of s and s[i:].
      const int64_t* s = row + (L - 1);  // s[j] = s[-j]
      zf.assign(static_cast<size_t>(m), 0);
      for (int64_t i = 1, l = 0, r = 0; i < m; ++i) {
        int64_t z = 0;
        if (i < r) z = std::min(r - i, zf[i - l]);
        while (i + z < m && s[-z] == s[-(i + z)]) ++z;
        zf[i] = z;
        if (i + z > r) l = i, r = i + z;
      }
      entries.clear();
      for (int64_t i = 1; i < m; ++i) {  // column e = L - 1 - i, the token after it at column e + 1
        const int64_t run = std::min(zf[i], rep_limit);
        if (run < allowed) continue;
        const int64_t nxt = row[L - i];
        if (nxt < 0 || nxt >= vocab || (n_br > 0 && is_breaker(nxt))) continue;
        entries.emplace_back(nxt, run);
      }
      std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& c) {
        return a.first != c.first ? a.first < c.first : a.second > c.second;
      });
      const float log_base = std::log(bse);
      const int64_t max_exp =
          bse > 1.000001f ? static_cast<int64_t>(std::trunc(static_cast<float>(DRY_FLOAT_MAX_LOG) / log_base)) : 0;
      int64_t n = 0;
      for (size_t j = 0; j < entries.size(); ++j) {
        if (j > 0 && entries[j].first == entries[j - 1].first) continue;
        int64_t exponent = entries[j].second - allowed;
        if (max_exp > 0 && exponent > max_exp) exponent = max_exp;
        ip[b * L + n] = entries[j].first;
        pp[b * L + n] = static_cast<float>(static_cast<double>(mult) *
                                           std::pow(static_cast<double>(bse), static_cast<double>(exponent)));
        ++n;
      }
    }
  });
  return {ids, pen};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("stack_tail_filters", &stack_tail_filters);
  m.impl("stack_tail_dry", &stack_tail_dry);
}

}  // namespace fastsample::cpu::stack_tail
