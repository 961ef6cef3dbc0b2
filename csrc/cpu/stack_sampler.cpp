// CPU stack sampler (docs/ops.md "sample_stack"): mask -> bias -> penalties -> temperature -> filters ->
// n draws -> logprobs, ranks and top-N, one row per OpenMP thread.
//
// Exactness invariant: every decision is taken on the processed logits y that stack_source.h rebuilds block by
// block (float32, identical in every pass), and every filter keeps y >= a row threshold. The first pass reads the
// logits once for the exact max of y in every sub-block (row max, NaN check), then rebuilds only the sub-blocks that
// can hold the tokens >= the k-th largest y (top-k on) or the N-th (top-N logprobs). With top-k on, everything after
// that pass works on those few tokens in double. Without top-k, top-p takes a weight histogram pass and a gather of
// the one bucket holding the boundary, and the draw a pass of per-block kept weights; each pass rebuilds y again.
//
// A row runs as named steps (RowSampler): first_pass -> one of keep_equal_share / keep_top_k / keep_by_passes (the
// kept set) -> draw -> write_processed_logprobs or write_raw_logprobs.
#include <cmath>
#include <numeric>
#include <optional>

#include "fastsample/philox.h"
#include "simd.h"
#include "stack_filters.h"
#include "stack_inputs.h"
#include "stack_source.h"

namespace fastsample::cpu::stack {
namespace {

constexpr int kBuckets = 4096;      // top-p histogram over d = (max - y) / T in [0, kBucketSpan)
constexpr float kBucketSpan = 88.0f;  // exp(-88) is below float's normal range: the rest weighs ~0

// What the op's logprobs_mode asks for (the public `logprobs` argument).
enum class LogprobsMode : int { kNone = 0, kProcessed = 1, kRaw = 2 };

struct RowArgs {
  Penalties pen;
  float temperature, top_p, min_p;
  float top_n_sigma;  // <= 0: off
  int64_t top_k;
  bool vllm_order;
  int64_t n, top_n;
  LogprobsMode mode;
  int64_t seed, offset;

  // Scalar parameters in range (per-row tensors are not checked on the host: a row out of range returns -1).
  bool valid() const {
    return temperature >= 0.0f && temperature < kInf && top_p >= 0.0f && top_p <= 1.0f && min_p >= 0.0f &&
           min_p <= 1.0f && std::isfinite(top_n_sigma) && pen.valid();
  }
};

struct RowOut {
  int64_t* tokens;
  float* logprobs;  // null when mode == kNone
  int64_t* ranks;
  int64_t* top_ids;
  float* top_values;

  // A row with no valid token: tokens -1, logprobs NaN, ranks -1, top ids -1.
  void invalid(const RowArgs& a) const {
    for (int64_t j = 0; j < a.n; ++j) {
      tokens[j] = -1;
      if (a.mode != LogprobsMode::kNone) logprobs[j] = NAN, ranks[j] = -1;
    }
    for (int64_t j = 0; j < a.top_n; ++j) top_ids[j] = -1, top_values[j] = NAN;
  }
};

// The buffers of one thread, kept across its rows (fresh pages for every row cost more than the work).
struct RowScratch {
  ResolveScratch resolve;
  std::vector<Override> overrides;
  std::vector<float> sub_max, block_max;
  std::vector<Candidate> best;      // the top-k (or top-N) tokens, by value descending
  std::vector<Candidate> raw_best;  // raw mode's top-N tokens
};

// One row's sampling, step by step; run_row says in which order the steps run.
template <class T>
struct RowSampler {
  const T* x;
  int64_t vocab;
  const RowArgs& a;
  const RowOut& out;
  RowScratch& s;
  RowSource<T> src;
  bool top_k_on;   // top-k filters (k in (0, V)): the kept set is a sub-list of the top-k list
  int64_t best_m;  // how many top tokens the first pass lists: k with top-k on, else N of processed top-N
  RawStats raw;    // raw mode: the log-softmax normaliser of the raw logits
  float row_max = -kInf;
  float inv_t;

  // The kept set. Listed (equal-share and top-k rows): (value, id) by value descending, ties to the lower id, with
  // each kept token's processed logprob. Otherwise (passes): tokens with y >= theta, `total` their weight sum and
  // `block_sums` its split over the blocks of kStackBlock tokens.
  std::vector<Candidate> kept;
  std::vector<double> kept_lp;
  bool listed = true;
  float theta = -kInf;
  float sigma_floor = -kInf;  // top-n-sigma's threshold (-inf: off)
  double total = 0.0;
  std::vector<double> block_sums;
  // The draws' tokens: their processed logit and (pass rows) processed logprob.
  std::vector<float> token_y;
  std::vector<double> token_lp;

  RowSampler(const T* x_, const uint32_t* mask, int64_t vocab_, const RowArgs& a_, const RowOut& out_, RowScratch& s_)
      : x(x_), vocab(vocab_), a(a_), out(out_), s(s_), src{x_, mask, vocab_, s_.overrides, a_.pen},
        top_k_on(a_.top_k > 0 && a_.top_k < vocab_),
        best_m(top_k_on ? a_.top_k : (a_.mode == LogprobsMode::kProcessed ? a_.top_n : 0)),
        inv_t(1.0f / a_.temperature), token_y(a_.n), token_lp(a_.n) {}

  // The float weight of a processed logit under the kept set of the passes (0 when dropped).
  float weight(float v) const { return v >= theta ? exp_nonpositive((v - row_max) * inv_t) : 0.0f; }

  // Pass 1: the sub-block maxima (row max, NaN) and raw mode's stats, then the top-k (or top-N) tokens. False when
  // the row is invalid (a NaN, or nothing allowed).
  bool first_pass() {
    const int64_t subs = (vocab + kSubBlock - 1) / kSubBlock;
    s.block_max.resize((vocab + kStackBlock - 1) / kStackBlock);
    s.sub_max.resize(s.block_max.size() * kSubBlocks);
    s.raw_best.clear();
    const bool raw_mode = a.mode == LogprobsMode::kRaw;
    std::optional<TopKBuffer> raw_top;
    if (raw_mode && a.top_n > 0) raw_top.emplace(a.top_n, -kInf, s.raw_best);
    src.exact_sub_maxima(s.sub_max.data(), s.block_max.data(), [&](int64_t lo, int64_t n, const float* xf) {
      if (!raw_mode) return;
      raw.add(xf, n);
      if (!raw_top) return;
      for (int64_t i = 0; i < n; ++i) {
        if (xf[i] >= raw_top->threshold()) raw_top->push(xf[i], lo + i);
      }
    });
    row_max = *std::max_element(s.block_max.begin(), s.block_max.end());
    if (src.x_nan || src.override_nan || !(row_max > -kInf)) return false;
    s.best.clear();
    if (best_m > 0) src.collect(s.sub_max.data(), subs, s.block_max.data(), best_m, s.best);
    if (raw_top) {
      raw_top->finish();
      sort_descending(s.raw_best);
    }
    return true;
  }

  // Top-n-sigma (llama.cpp's rule on the processed logits; docs/ops.md): keep y >= max - n * sigma, sigma the
  // population standard deviation of the row's finite y. One pass of sums of d = y - max and d^2 in double (the
  // shift keeps the cancellation in var = E[d^2] - E[d]^2 small); the threshold as the smallest float >= it.
  void top_n_sigma() {
    if (!(a.top_n_sigma > 0.0f)) return;
    double count = 0.0, s1 = 0.0, s2 = 0.0;
    src.scan([&](int64_t, int64_t n, const float* y, const float*) {
      for (int64_t i = 0; i < n; ++i) {
        if (!(y[i] > -kInf)) continue;
        const double d = static_cast<double>(y[i]) - row_max;
        count += 1.0, s1 += d, s2 += d * d;
      }
    });
    const double mean = s1 / count, sigma = std::sqrt(std::max(s2 / count - mean * mean, 0.0));
    const double cut = sigma > 0.0 ? row_max - a.top_n_sigma * sigma : row_max;
    sigma_floor = static_cast<float>(cut);
    if (static_cast<double>(sigma_floor) < cut) sigma_floor = std::nextafter(sigma_floor, kInf);
  }

  // T == 0, or +inf maxima: the row's maxima share the mass equally.
  void keep_equal_share() {
    if (best_m > 0) {
      for (const auto& it : s.best) {
        if (it.x == row_max) kept.push_back(it);
      }
    } else {
      src.scan([&](int64_t lo, int64_t n, const float* y, const float*) {
        for (int64_t i = 0; i < n; ++i) {
          if (y[i] == row_max) kept.push_back({y[i], lo + i});
        }
      });
    }
    kept_lp.assign(kept.size(), -std::log(static_cast<double>(kept.size())));
  }

  // Top-k on: min-p and top-p (over the top-n-sigma survivors, and the min-p ones in vLLM order) on the top-k list,
  // in double.
  void keep_top_k() {
    const double m = row_max, t = a.temperature;
    const float theta_m = min_p_threshold(m, t, a.min_p);
    std::vector<std::pair<float, double>> survivors;  // top-p's, weights in double
    for (const auto& it : s.best) {
      if (it.x >= sigma_floor && (!a.vllm_order || it.x >= theta_m)) {
        survivors.push_back({it.x, std::exp((static_cast<double>(it.x) - m) / t)});
      }
    }
    double s_total = 0.0;
    for (const auto& e : survivors) s_total += e.second;
    const float theta_p =
        a.top_p < 1.0f ? walk_groups(survivors.size(), [&](size_t i) { return survivors[i]; }, a.top_p * s_total, 0.0)
                       : -kInf;
    theta = std::max({theta_p, theta_m, sigma_floor});
    for (const auto& it : s.best) {
      if (it.x < theta) break;
      kept.push_back(it);
      kept_lp.push_back((static_cast<double>(it.x) - m) / t);
    }
    double w = 0.0;
    for (double l : kept_lp) w += std::exp(l);
    for (double& l : kept_lp) l -= std::log(w);
  }

  // Top-p's threshold without top-k: a weight histogram pass over d = (max - y) / T, then the tokens of the one
  // bucket holding the boundary, sorted. Only tokens >= s_floor count (min-p's threshold in vLLM order).
  float top_p_threshold(float s_floor) {
    const float scale = kBuckets / kBucketSpan;
    auto bucket = [&](float v) {
      const float d = (row_max - v) * inv_t * scale;
      return d < kBuckets - 1 ? static_cast<int>(d) : kBuckets - 1;
    };
    std::vector<double> mass(kBuckets, 0.0);
    src.scan([&](int64_t, int64_t n, const float* y, const float*) {
      for (int64_t i = 0; i < n; ++i) {
        if (y[i] >= s_floor && y[i] > -kInf) mass[bucket(y[i])] += exp_nonpositive((y[i] - row_max) * inv_t);
      }
    });
    const double target = a.top_p * std::accumulate(mass.begin(), mass.end(), 0.0);
    // The boundary bucket: the first whose end reaches the target (the last with mass if rounding never does).
    // Tokens above it are kept, below it dropped; its own tokens are sorted out exactly.
    double cum = 0.0;
    int edge = -1;
    for (int b = 0; b < kBuckets; ++b) {
      if (mass[b] > 0.0 && cum + mass[b] >= target) {
        edge = b;
        break;
      }
      cum += mass[b];
    }
    if (edge < 0) {
      for (edge = kBuckets - 1; edge > 0 && mass[edge] == 0.0; --edge) {
      }
      cum = std::accumulate(mass.begin(), mass.begin() + edge, 0.0);
    }
    std::vector<std::pair<float, double>> region;
    src.scan([&](int64_t, int64_t n, const float* y, const float*) {
      for (int64_t i = 0; i < n; ++i) {
        if (y[i] >= s_floor && y[i] > -kInf && bucket(y[i]) == edge) {
          region.push_back({y[i], exp_nonpositive((y[i] - row_max) * inv_t)});
        }
      }
    });
    std::sort(region.begin(), region.end(), [](const auto& p, const auto& q) { return p.first > q.first; });
    return walk_groups(region.size(), [&](size_t i) { return region[i]; }, target, cum);
  }

  // Top-k off: the kept set is y >= theta (top-n-sigma's, min-p's and top-p's thresholds), its weights summed per
  // block for the draws. False when nothing keeps weight.
  bool keep_by_passes() {
    listed = false;
    const float theta_m = min_p_threshold(row_max, a.temperature, a.min_p);
    const float theta_p =
        a.top_p < 1.0f ? top_p_threshold(std::max(sigma_floor, a.vllm_order ? theta_m : -kInf)) : -kInf;
    theta = std::max({theta_p, theta_m, sigma_floor});
    block_sums.assign((vocab + kStackBlock - 1) / kStackBlock, 0.0);
    src.scan([&](int64_t lo, int64_t n, const float* y, const float*) {
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) sum += weight(y[i]);
      block_sums[lo / kStackBlock] = sum;
    });
    total = std::accumulate(block_sums.begin(), block_sums.end(), 0.0);
    return total > 0.0;
  }

  // Draws j = 0..n-1: the inverse CDF over the kept set in ascending id order (docs/design.md section 4).
  void draw() {
    const double m = row_max, t = a.temperature;
    std::vector<Candidate> by_id(kept);
    std::sort(by_id.begin(), by_id.end(), [](const auto& p, const auto& q) { return p.index < q.index; });
    std::vector<double> by_id_w(by_id.size());
    if (listed) {
      for (size_t i = 0; i < by_id.size(); ++i) {
        by_id_w[i] = a.temperature == 0.0f || row_max == kInf ? 1.0 : std::exp((by_id[i].x - m) / t);
      }
    }
    const double listed_total = std::accumulate(by_id_w.begin(), by_id_w.end(), 0.0);
    for (int64_t j = 0; j < a.n; ++j) {
      const double u = philox_uniform(a.seed, a.offset, static_cast<uint32_t>(j));
      int64_t token = -1;
      if (a.temperature == 0.0f) {
        token = by_id.front().index;
        token_y[j] = by_id.front().x;
      } else if (listed) {
        const double target = u * listed_total;
        double cum = 0.0;
        size_t pick = 0;
        for (size_t i = 0; i < by_id.size(); ++i) {
          if (by_id_w[i] <= 0.0) continue;
          pick = i;  // ends on the last kept token if rounding never crosses
          cum += by_id_w[i];
          if (cum > target) break;
        }
        token = by_id[pick].index;
        token_y[j] = by_id[pick].x;
      } else {
        const double target = u * total;
        double cum = 0.0;
        int64_t blk = -1;
        for (size_t b = 0; b < block_sums.size(); ++b) {
          if (block_sums[b] <= 0.0) continue;
          blk = static_cast<int64_t>(b);
          if (cum + block_sums[b] > target) break;
          cum += block_sums[b];
        }
        const int64_t lo = blk * kStackBlock, n = std::min(kStackBlock, vocab - lo);
        const float* xf;
        float sub_max[kSubBlocks];
        const float* y = src.block(lo, n, xf, sub_max);
        for (int64_t i = 0; i < n; ++i) {
          const float w = weight(y[i]);
          if (w <= 0.0f) continue;
          token = lo + i;  // as above: the last kept token of the block if rounding never crosses
          token_y[j] = y[i];
          cum += w;
          if (cum > target) break;
        }
        token_lp[j] = std::log(weight(token_y[j]) / total);
      }
      out.tokens[j] = token;
    }
  }

  // Processed mode: each draw's logprob and rank in the final distribution, and its top-N (padded with dropped
  // tokens, -inf, in id order, when fewer are kept).
  void write_processed_logprobs() {
    auto kept_logprob = [&](const Candidate& it, size_t index) {
      return listed ? kept_lp[index] : std::log(weight(it.x) / total);
    };
    for (int64_t j = 0; j < a.n; ++j) {
      int64_t rank = 0;
      if (listed) {
        for (size_t i = 0; i < kept.size() && kept[i].x >= token_y[j]; ++i) ++rank;
        for (size_t i = 0; i < kept.size(); ++i) {
          if (kept[i].index == out.tokens[j]) token_lp[j] = kept_lp[i];
        }
      } else {
        src.scan([&](int64_t, int64_t n, const float* y, const float*) {
          for (int64_t i = 0; i < n; ++i) rank += y[i] >= theta && y[i] >= token_y[j];
        });
      }
      out.logprobs[j] = static_cast<float>(token_lp[j]);
      out.ranks[j] = rank;
    }
    if (a.top_n == 0) return;
    const std::vector<Candidate>& order = listed ? kept : s.best;
    int64_t filled = 0;
    std::vector<int64_t> kept_ids;
    for (size_t i = 0; i < order.size() && filled < a.top_n; ++i) {
      if (!listed && order[i].x < theta) break;
      out.top_ids[filled] = order[i].index;
      out.top_values[filled] = static_cast<float>(kept_logprob(order[i], i));
      kept_ids.push_back(order[i].index);
      ++filled;
    }
    if (filled < a.top_n) {
      std::sort(kept_ids.begin(), kept_ids.end());
      pad_dropped(kept_ids, vocab, filled, a.top_n - filled, out.top_ids, out.top_values);
    }
  }

  // Raw mode: log-softmax of the raw logits; rank = tokens with a raw logit >= the sampled token's.
  void write_raw_logprobs() {
    for (int64_t j = 0; j < a.n; ++j) {
      const float v = to_float(x[out.tokens[j]]);
      const double lp = raw.logprob(v);
      int64_t rank = 0;
      if (std::isinf(lp)) {
        rank = vocab;
      } else {
        src.scan([&](int64_t, int64_t n, const float*, const float* xf) {
          for (int64_t i = 0; i < n; ++i) rank += xf[i] >= v;
        });
      }
      out.logprobs[j] = static_cast<float>(lp);
      out.ranks[j] = rank;
    }
    for (int64_t j = 0; j < a.top_n; ++j) {
      out.top_ids[j] = s.raw_best[j].index;
      out.top_values[j] = static_cast<float>(raw.logprob(s.raw_best[j].x));
    }
  }
};

template <class T>
void run_row(const T* x, const uint32_t* mask, int64_t vocab, const IdList& bias, const IdList& prompt,
             const IdList& output, const RowArgs& a, const RowOut& out) {
  thread_local RowScratch scratch;
  if (!a.valid() || !resolve_overrides(bias, prompt, output, vocab, scratch.resolve, scratch.overrides)) {
    return out.invalid(a);
  }
  RowSampler<T> row(x, mask, vocab, a, out, scratch);
  if (!row.first_pass()) return out.invalid(a);
  if (a.temperature == 0.0f || row.row_max == kInf) {
    row.keep_equal_share();
  } else {
    row.top_n_sigma();
    if (row.top_k_on) {
      row.keep_top_k();
    } else if (!row.keep_by_passes()) {
      return out.invalid(a);
    }
  }
  row.draw();
  if (a.mode == LogprobsMode::kProcessed) row.write_processed_logprobs();
  if (a.mode == LogprobsMode::kRaw) row.write_raw_logprobs();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_stack(
    const at::Tensor& logits, const std::optional<at::Tensor>& allowed_mask, const std::optional<at::Tensor>& bias_ids,
    const std::optional<at::Tensor>& bias_values, const std::optional<at::Tensor>& prompt_ids,
    const std::optional<at::Tensor>& output_ids, const std::optional<at::Tensor>& repetition_arr,
    double repetition_val, const std::optional<at::Tensor>& frequency_arr, double frequency_val,
    const std::optional<at::Tensor>& presence_arr, double presence_val, const std::optional<at::Tensor>& temperature_arr,
    double temperature_val, const std::optional<at::Tensor>& top_k_arr, int64_t top_k_val,
    const std::optional<at::Tensor>& top_p_arr, double top_p_val, const std::optional<at::Tensor>& min_p_arr,
    double min_p_val, bool vllm_order, int64_t num_samples, const at::Tensor& seed_in, const at::Tensor& offset_in,
    int64_t logprobs_mode, int64_t top_n, const std::optional<at::Tensor>& top_n_sigma_arr, double top_n_sigma_val) {
  const StackInputs in = stack_inputs(logits, allowed_mask, bias_ids, bias_values, prompt_ids, output_ids,
                                      repetition_arr, repetition_val, frequency_arr, frequency_val, presence_arr,
                                      presence_val);
  const int64_t batch = in.batch, vocab = in.vocab;
  TORCH_CHECK_VALUE(num_samples >= 1, "num_samples must be >= 1, got ", num_samples);
  TORCH_CHECK_VALUE(logprobs_mode >= 0 && logprobs_mode <= 2, "logprobs_mode must be 0, 1 or 2, got ", logprobs_mode);
  TORCH_CHECK_VALUE(top_n >= 0 && top_n <= vocab && (top_n == 0 || logprobs_mode != 0),
                    "top_n must be in [0, vocab] and needs a logprobs mode, got ", top_n);
  const auto temp = row_arg<float>(temperature_arr, static_cast<float>(temperature_val), batch, "temperature");
  const auto top_k = row_arg<int64_t>(top_k_arr, top_k_val, batch, "top_k");
  const auto top_p = row_arg<float>(top_p_arr, static_cast<float>(top_p_val), batch, "top_p");
  const auto min_p = row_arg<float>(min_p_arr, static_cast<float>(min_p_val), batch, "min_p");
  const auto top_n_sigma = row_arg<float>(top_n_sigma_arr, static_cast<float>(top_n_sigma_val), batch, "top_n_sigma");
  const at::Tensor seed = seed_rows(seed_in, batch, "seed"), offset = seed_rows(offset_in, batch, "offset");

  const auto opts = in.logits.options();
  const int64_t lp_rows = logprobs_mode ? batch : 0;
  at::Tensor tokens = at::empty({batch, num_samples}, opts.dtype(at::kLong));
  at::Tensor logprobs = at::empty({lp_rows, num_samples}, opts.dtype(at::kFloat));
  at::Tensor ranks = at::empty({lp_rows, num_samples}, opts.dtype(at::kLong));
  at::Tensor top_ids = at::empty({batch, top_n}, opts.dtype(at::kLong));
  at::Tensor top_values = at::empty({batch, top_n}, opts.dtype(at::kFloat));
  const int64_t *seeds = seed.data_ptr<int64_t>(), *offsets = offset.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.logits.scalar_type(), "sample_stack", [&] {
    const scalar_t* xp = in.logits.const_data_ptr<scalar_t>();
    for_rows(batch, 1, [&](int64_t b) {
      const RowArgs args{in.penalties(b), static_cast<float>(temp[b]), static_cast<float>(top_p[b]),
                         static_cast<float>(min_p[b]), static_cast<float>(top_n_sigma[b]),
                         static_cast<int64_t>(top_k[b]), vllm_order, num_samples,
                         top_n, static_cast<LogprobsMode>(logprobs_mode), seeds[b], offsets[b]};
      const RowOut row_out{tokens.data_ptr<int64_t>() + b * num_samples,
                           logprobs_mode ? logprobs.data_ptr<float>() + b * num_samples : nullptr,
                           logprobs_mode ? ranks.data_ptr<int64_t>() + b * num_samples : nullptr,
                           top_ids.data_ptr<int64_t>() + b * top_n, top_values.data_ptr<float>() + b * top_n};
      run_row<scalar_t>(xp + b * vocab, in.mask_row(b), vocab, in.bias(b), in.prompt(b), in.output(b), args,
                        row_out);
    });
  });
  return {tokens, logprobs, ranks, top_ids, top_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) { m.impl("sample_stack", &sample_stack); }

}  // namespace fastsample::cpu::stack
