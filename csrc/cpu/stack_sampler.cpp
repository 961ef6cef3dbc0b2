// CPU stack sampler (docs/ops.md "sample_stack"): mask -> bias -> penalties -> temperature -> filters ->
// n draws -> logprobs, ranks and top-N, one row per OpenMP thread.
//
// Exactness invariant: every decision is taken on the processed logits y that stack_row.h rebuilds block by block
// (float32, identical in every pass), and every filter keeps y >= a row threshold. The first pass reads the logits
// once for the exact max of y in every sub-block (row max, NaN check), then rebuilds only the sub-blocks that can hold
// the tokens >= the k-th largest y (top-k on) or the N-th (top-N logprobs). With top-k on, everything after that pass
// works on those few tokens in double. Without top-k, top-p takes a weight histogram pass and a gather of the one
// bucket holding the boundary, and the draw a pass of per-block kept weights; each pass rebuilds y again.
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <type_traits>

#include "fastsample/philox.h"
#include "simd.h"
#include "stack_inputs.h"
#include "stack_row.h"

namespace fastsample::cpu::stack {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kBuckets = 4096;      // top-p histogram over d = (max - y) / T in [0, kBucketSpan)
constexpr float kBucketSpan = 88.0f;  // exp(-88) is below float's normal range: the rest weighs ~0

struct RowArgs {
  Penalties pen;
  float temperature, top_p, min_p;
  int64_t top_k;
  bool vllm_order;
  int64_t n, top_n;
  int mode;  // 0 none, 1 processed, 2 raw
  int64_t seed, offset;
};

struct RowOut {
  int64_t* tokens;
  float* logprobs;  // null when mode == 0
  int64_t* ranks;
  int64_t* top_ids;
  float* top_values;
};

template <class T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

// One row's processed logits, block by block.
template <class T>
struct RowSource {
  const T* x;
  const uint32_t* mask;  // null: all allowed
  int64_t vocab;
  const std::vector<Override>& overrides;
  const Penalties& pen;
  bool override_nan = false;  // an allowed override token's processed logit was NaN
  bool x_nan = false;         // a raw logit was NaN
  size_t cursor = 0;          // the first override at or after the last block's start
  float xbuf[kStackBlock], ybuf[kStackBlock];

  bool allowed(int64_t i) const { return !mask || ((mask[i / 32] >> (i % 32)) & 1u); }

  // The raw logits of tokens [lo, lo + n) as float.
  const float* raw_logits(int64_t lo, int64_t n) {
    if constexpr (std::is_same_v<T, float>) return x + lo;
    for (int64_t i = 0; i < n; ++i) xbuf[i] = to_float(x[lo + i]);
    return xbuf;
  }

  // y of tokens [lo, lo + n); xf receives the block's raw logits as float, sub_max the maxima of y's
  // sub-blocks; x_nan records a NaN in the raw logits.
  const float* block(int64_t lo, int64_t n, const float*& xf, float* sub_max) {
    xf = raw_logits(lo, n);
    // Passes read blocks in order: the cursor moves forward, a jump back (a draw) searches again.
    if (cursor > 0 && overrides[cursor - 1].id >= lo) cursor = 0;
    while (cursor < overrides.size() && overrides[cursor].id < lo) ++cursor;
    auto it = overrides.begin() + cursor;
    const bool touched = it != overrides.end() && it->id < lo + n;
    if (mask) {
      masked_block(xf, mask + lo / 32, n, ybuf, sub_max, x_nan);
    } else {
      block_stats(xf, n, sub_max, x_nan);
      if (!touched) return xf;
      std::copy(xf, xf + n, ybuf);
    }
    for (; it != overrides.end() && it->id < lo + n; ++it) {
      if (!allowed(it->id)) continue;
      const int64_t i = it->id - lo;
      const float y = override_logit(*it, xf[i], pen), before = ybuf[i];
      override_nan = override_nan || y != y;
      ybuf[i] = y;
      const int64_t s = i / kSubBlock;
      if (!(before == sub_max[s] && y < before)) {
        sub_max[s] = y > sub_max[s] ? y : sub_max[s];
        continue;
      }
      // The override lowered the sub-block's max token (rare): take that sub-block's max again.
      float m = -kInf;
      for (int64_t k = s * kSubBlock; k < std::min(n, (s + 1) * kSubBlock); ++k) m = ybuf[k] > m ? ybuf[k] : m;
      sub_max[s] = m;
    }
    return ybuf;
  }

  // Pass 1's read: the exact max of y in every sub-block of the row, into sub_max (room for kSubBlocks per block; -inf
  // past the vocabulary), and in every block, into block_max; calls raw(lo, n, xf) on each block's raw logits. The
  // masked maxima of the raw logits come without writing y (masked_stats); each allowed override then raises its sub-
  // block's max to its processed logit. That is exact unless an override lowered the token that held the max (a token
  // whose logit was >= the running max): then the block is rebuilt whole (rare).
  template <class F>
  void exact_sub_maxima(float* sub_max, float* block_max, F&& raw) {
    size_t j = 0;
    for (int64_t lo = 0; lo < vocab; lo += kStackBlock) {
      const int64_t n = std::min(kStackBlock, vocab - lo);
      const float* xf = raw_logits(lo, n);
      float* sm = sub_max + lo / kSubBlock;
      masked_stats(xf, mask ? mask + lo / 32 : nullptr, n, sm, x_nan);
      bool lowered = false;
      for (; j < overrides.size() && overrides[j].id < lo + n; ++j) {
        if (!allowed(overrides[j].id)) continue;
        const int64_t i = overrides[j].id - lo;
        const float y = override_logit(overrides[j], xf[i], pen);
        override_nan = override_nan || y != y;
        float& m = sm[i / kSubBlock];
        lowered = lowered || (xf[i] >= m && y < xf[i]);
        m = y > m ? y : m;
      }
      if (lowered) block(lo, n, xf, sm);
      block_max[lo / kStackBlock] = *std::max_element(sm, sm + kSubBlocks);
      raw(lo, n, xf);
    }
  }

  // Every token whose y is >= the k-th largest y of the row (ties kept; all of them when fewer than k are > -inf),
  // sorted by y descending, ties to the lower id. sub_max (`subs` of them) and block_max: exact_sub_maxima's.
  // Exact by TopKBuffer's invariant (select.h). The threshold starts at the k-th largest block max (for k much below
  // the block count that is close to the k-th largest y, at a quarter of the selection's cost over sub-blocks), so
  // only the sub-blocks whose max reaches it are rebuilt, about k of them.
  void collect(const float* sub_max, int64_t subs, const float* block_max, int64_t k, std::vector<Candidate>& out) {
    out.clear();
    TopKBuffer top(k, kth_block_max(block_max, (vocab + kStackBlock - 1) / kStackBlock, k, out), out);
    for (int64_t s = 0; s < subs; ++s) {
      if (!(sub_max[s] >= top.threshold() && sub_max[s] > -kInf)) continue;
      const int64_t lo = s * kSubBlock, n = std::min(kSubBlock, vocab - lo);
      const float* xf;
      float unused[kSubBlocks];
      const float* y = block(lo, n, xf, unused);
      for (int64_t i = 0; i < n; ++i) {
        if (y[i] >= top.threshold() && y[i] > -kInf) top.push(y[i], lo + i);
      }
    }
    top.finish();
    sort_descending(out);
  }

  // f(lo, n, y, xf, sub_max) for every block, in order.
  template <class F>
  void scan(F&& f) {
    for (int64_t lo = 0; lo < vocab; lo += kStackBlock) {
      const int64_t n = std::min(kStackBlock, vocab - lo);
      const float* xf;
      float sub_max[kSubBlocks];
      const float* y = block(lo, n, xf, sub_max);
      f(lo, n, y, xf, sub_max);
    }
  }
};

// The smallest float v with (v - m) / T >= log(min_p), decided in double like the oracle.
float min_p_threshold(double m, double t, double min_p) {
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
void pad_dropped(const std::vector<int64_t>& kept_sorted, int64_t vocab, int64_t from, int64_t need,
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

template <class T>
void run_row(const T* x, const uint32_t* mask, int64_t vocab, const IdList& bias, const IdList& prompt,
             const IdList& output, const RowArgs& a, const RowOut& out) {
  auto invalid = [&] {
    for (int64_t j = 0; j < a.n; ++j) {
      out.tokens[j] = -1;
      if (a.mode) out.logprobs[j] = NAN, out.ranks[j] = -1;
    }
    for (int64_t j = 0; j < a.top_n; ++j) out.top_ids[j] = -1, out.top_values[j] = NAN;
  };
  const Penalties& pen = a.pen;
  const bool params_ok = a.temperature >= 0.0f && a.temperature < kInf && a.top_p >= 0.0f && a.top_p <= 1.0f &&
                         a.min_p >= 0.0f && a.min_p <= 1.0f && pen.repetition > 0 && std::isfinite(pen.repetition) &&
                         std::isfinite(pen.frequency) && std::isfinite(pen.presence);
  thread_local ResolveScratch scratch;
  thread_local std::vector<Override> overrides;
  if (!params_ok || !resolve_overrides(bias, prompt, output, vocab, scratch, overrides)) return invalid();
  RowSource<T> src{x, mask, vocab, overrides, pen};

  // Pass 1: the sub-block maxima (row max, NaN) and raw stats; then the top-k (or top-N) tokens.
  const bool top_k_on = a.top_k > 0 && a.top_k < vocab;
  const int64_t subs = (vocab + kSubBlock - 1) / kSubBlock, best_m = top_k_on ? a.top_k : (a.mode == 1 ? a.top_n : 0);
  thread_local std::vector<float> sub_max, block_max;
  block_max.resize((vocab + kStackBlock - 1) / kStackBlock);
  sub_max.resize(block_max.size() * kSubBlocks);
  thread_local std::vector<Candidate> raw_best;  // raw mode's top-N tokens
  raw_best.clear();
  std::optional<TopKBuffer> raw_top;
  if (a.mode == 2 && a.top_n > 0) raw_top.emplace(a.top_n, -kInf, raw_best);
  RawStats raw;
  src.exact_sub_maxima(sub_max.data(), block_max.data(), [&](int64_t lo, int64_t n, const float* xf) {
    if (a.mode != 2) return;
    raw.add(xf, n);
    if (!raw_top) return;
    for (int64_t i = 0; i < n; ++i) {
      if (xf[i] >= raw_top->threshold()) raw_top->push(xf[i], lo + i);
    }
  });
  const float row_max = *std::max_element(block_max.begin(), block_max.end());
  if (src.x_nan || src.override_nan || !(row_max > -kInf)) return invalid();
  thread_local std::vector<Candidate> best;  // the top-k (or top-N) tokens, by value descending
  best.clear();
  if (best_m > 0) src.collect(sub_max.data(), subs, block_max.data(), best_m, best);
  if (raw_top) {
    raw_top->finish();
    sort_descending(raw_best);
  }

  // The kept set, as (value, id) sorted by value descending with ties to the lower id when listed, and each
  // kept token's logprob under the processed distribution.
  std::vector<Candidate> kept;  // listed kept tokens (equal-share rows, top-k rows)
  std::vector<double> kept_lp;
  bool listed = true;
  float theta = -kInf;
  double total = 0.0;  // pass path: kept float-weight sum
  std::vector<double> block_sums;
  const double m = row_max, t = a.temperature;
  const float inv_t = 1.0f / a.temperature;
  auto weight_f = [&](float v) { return v >= theta ? exp_nonpositive((v - row_max) * inv_t) : 0.0f; };

  if (a.temperature == 0.0f || row_max == kInf) {  // the maxima share the mass equally
    if (best_m > 0) {
      for (const auto& it : best) {
        if (it.x == row_max) kept.push_back(it);
      }
    } else {
      src.scan([&](int64_t lo, int64_t n, const float* y, const float*, const float*) {
        for (int64_t i = 0; i < n; ++i) {
          if (y[i] == row_max) kept.push_back({y[i], lo + i});
        }
      });
    }
    kept_lp.assign(kept.size(), -std::log(static_cast<double>(kept.size())));
  } else if (top_k_on) {
    const float theta_m = min_p_threshold(m, t, a.min_p);
    std::vector<std::pair<float, double>> s;  // top-p's survivors, weights in double
    for (const auto& it : best) {
      if (!a.vllm_order || it.x >= theta_m) s.push_back({it.x, std::exp((static_cast<double>(it.x) - m) / t)});
    }
    double s_total = 0.0;
    for (const auto& e : s) s_total += e.second;
    const float theta_p = a.top_p < 1.0f
                              ? walk_groups(s.size(), [&](size_t i) { return s[i]; }, a.top_p * s_total, 0.0)
                              : -kInf;
    theta = std::max(theta_p, theta_m);
    for (const auto& it : best) {
      if (it.x < theta) break;
      kept.push_back(it);
      kept_lp.push_back((static_cast<double>(it.x) - m) / t);
    }
    double w = 0.0;
    for (double l : kept_lp) w += std::exp(l);
    for (double& l : kept_lp) l -= std::log(w);
  } else {
    listed = false;
    const float theta_m = min_p_threshold(m, t, a.min_p);
    float theta_p = -kInf;
    if (a.top_p < 1.0f) {
      const float s_floor = a.vllm_order ? theta_m : -kInf;
      const float scale = kBuckets / kBucketSpan;
      auto bucket = [&](float v) {
        const float d = (row_max - v) * inv_t * scale;
        return d < kBuckets - 1 ? static_cast<int>(d) : kBuckets - 1;
      };
      std::vector<double> mass(kBuckets, 0.0);
      src.scan([&](int64_t, int64_t n, const float* y, const float*, const float*) {
        for (int64_t i = 0; i < n; ++i) {
          if (y[i] >= s_floor && y[i] > -kInf) mass[bucket(y[i])] += exp_nonpositive((y[i] - row_max) * inv_t);
        }
      });
      const double target = a.top_p * std::accumulate(mass.begin(), mass.end(), 0.0);
      // The boundary bucket: the first whose end reaches the target (the last with mass if rounding never
      // does). Tokens above it are kept, below it dropped; its own tokens are sorted out exactly.
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
      src.scan([&](int64_t, int64_t n, const float* y, const float*, const float*) {
        for (int64_t i = 0; i < n; ++i) {
          if (y[i] >= s_floor && y[i] > -kInf && bucket(y[i]) == edge) {
            region.push_back({y[i], exp_nonpositive((y[i] - row_max) * inv_t)});
          }
        }
      });
      std::sort(region.begin(), region.end(), [](const auto& p, const auto& q) { return p.first > q.first; });
      theta_p = walk_groups(region.size(), [&](size_t i) { return region[i]; }, target, cum);
    }
    theta = std::max(theta_p, theta_m);
    block_sums.assign((vocab + kStackBlock - 1) / kStackBlock, 0.0);
    src.scan([&](int64_t lo, int64_t n, const float* y, const float*, const float*) {
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += weight_f(y[i]);
      block_sums[lo / kStackBlock] = s;
    });
    total = std::accumulate(block_sums.begin(), block_sums.end(), 0.0);
    if (!(total > 0.0)) return invalid();
  }

  // The draws.
  std::vector<Candidate> by_id(kept);
  std::sort(by_id.begin(), by_id.end(), [](const auto& p, const auto& q) { return p.index < q.index; });
  std::vector<double> by_id_w(by_id.size());
  if (listed) {
    for (size_t i = 0; i < by_id.size(); ++i) {
      by_id_w[i] = a.temperature == 0.0f || row_max == kInf ? 1.0 : std::exp((by_id[i].x - m) / t);
    }
  }
  const double listed_total = std::accumulate(by_id_w.begin(), by_id_w.end(), 0.0);
  std::vector<float> token_y(a.n);
  std::vector<double> token_lp(a.n);
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
        const float w = weight_f(y[i]);
        if (w <= 0.0f) continue;
        token = lo + i;  // as above: the last kept token of the block if rounding never crosses
        token_y[j] = y[i];
        cum += w;
        if (cum > target) break;
      }
      token_lp[j] = std::log(weight_f(token_y[j]) / total);
    }
    out.tokens[j] = token;
  }
  if (a.mode == 0) return;

  // Logprobs, ranks and top-N.
  auto kept_logprob = [&](const Candidate& it, size_t index) {
    return listed ? kept_lp[index] : std::log(weight_f(it.x) / total);
  };
  if (a.mode == 1) {
    for (int64_t j = 0; j < a.n; ++j) {
      int64_t rank = 0;
      if (listed) {
        for (size_t i = 0; i < kept.size() && kept[i].x >= token_y[j]; ++i) ++rank;
        for (size_t i = 0; i < kept.size(); ++i) {
          if (kept[i].index == out.tokens[j]) token_lp[j] = kept_lp[i];
        }
      } else {
        src.scan([&](int64_t, int64_t n, const float* y, const float*, const float*) {
          for (int64_t i = 0; i < n; ++i) rank += y[i] >= theta && y[i] >= token_y[j];
        });
      }
      out.logprobs[j] = static_cast<float>(token_lp[j]);
      out.ranks[j] = rank;
    }
    if (a.top_n > 0) {
      const std::vector<Candidate>& order = listed ? kept : best;
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
    return;
  }
  // Raw mode: log-softmax of the raw logits; rank = tokens with a raw logit >= the sampled token's.
  for (int64_t j = 0; j < a.n; ++j) {
    const float v = to_float(x[out.tokens[j]]);
    const double lp = raw.logprob(v);
    int64_t rank = 0;
    if (std::isinf(lp)) {
      rank = vocab;
    } else {
      src.scan([&](int64_t, int64_t n, const float*, const float* xf, const float*) {
        for (int64_t i = 0; i < n; ++i) rank += xf[i] >= v;
      });
    }
    out.logprobs[j] = static_cast<float>(lp);
    out.ranks[j] = rank;
  }
  for (int64_t j = 0; j < a.top_n; ++j) {
    out.top_ids[j] = raw_best[j].index;
    out.top_values[j] = static_cast<float>(raw.logprob(raw_best[j].x));
  }
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
    int64_t logprobs_mode, int64_t top_n) {
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
                         static_cast<float>(min_p[b]), static_cast<int64_t>(top_k[b]), vllm_order, num_samples,
                         top_n, static_cast<int>(logprobs_mode), seeds[b], offsets[b]};
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
