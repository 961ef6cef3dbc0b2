// CPU per-rank passes of vocab-parallel sampling (fastsample/distributed, docs/ops.md "Vocab-parallel
// sampling"): every size is fixed by the arguments, nothing is compacted, and a row whose `mode` is 0 costs
// nothing, so the Python layer never reads a value on the host between collectives. The torch reference of
// each op is fastsample/distributed/_local.py; both follow the same rules token for token:
//
//   weight   mode 1 (finite row): d = (x - m) / T in float64 from the float32 logit, q = round(exp(d) * 2^scale)
//            (nearest, ties to even); mode 2 (+inf row): q = 2^scale on +inf tokens, 0 elsewhere; mode 0: 0.
//            Tokens with x < theta weigh 0. min-p drops a token of a mode-1 row when d < log_min_p.
//   bin      (m - x) * per_nat in float32, truncated into [0, 255] (NaN -> 0): 1/8 nat of weight per bin
//            (per_nat = 8 / T) on rows with top-p; per_nat == 0 turns the histogram off for a row.
//   key      the order key of a float32 value (fastsample/distributed/_exact.py `keys`).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"
#include "simd.h"

namespace fastsample::cpu {
namespace {

constexpr int kBins = 256;
constexpr int64_t kBlock = 2048;

// exp(d) for d in [-64, 0], without branches so that the loops below vectorise: k = round(d / ln 2),
// r = d - k ln 2 (two-part ln 2, exact for |k| < 2^11), Taylor to r^13 (truncation < 1e-17 for |r| <= ln2 / 2),
// times 2^k built in the exponent bits. Within 2 ulp of exp (tests/test_distributed.py compares it with
// torch.exp through the fixed-point weights).
inline double exp_nonpos(double d) {
  constexpr double kLog2e = 1.4426950408889634074;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits: k * kLn2Hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double t = d * kLog2e + kShifter;
  const double kd = t - kShifter;
  int64_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int64_t k = tb - int64_t{0x4338000000000000};
  const double r = (d - kd * kLn2Hi) - kd * kLn2Lo;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t eb = (k + 1023) << 52;
  double scale;
  std::memcpy(&scale, &eb, sizeof scale);
  return p * scale;
}

// q[i] for a finite row (mode 1) over x[0, n): round(exp(d) * 2^scale) (ties to even), d = (x - m) / t,
// negated where d < log_min_p, 0 where x < theta (or NaN). Needs two_s <= 2^52, so that v + 2^52 holds
// round(v) in its low bits; d below -64 weighs less than 2^-92 * 2^52 and rounds to 0.
FS_MULTIVERSION void weigh_finite(
    const float* x, int64_t n, double m, double t, double log_min_p, float theta, double two_s, int64_t* q) {
  constexpr double kTwo52 = 4503599627370496.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = (static_cast<double>(x[i]) - m) / t;
    const double v = exp_nonpos(d > -64.0 ? d : -64.0) * two_s + kTwo52;
    int64_t vb;
    std::memcpy(&vb, &v, sizeof vb);
    int64_t qi = vb - int64_t{0x4330000000000000};
    qi = d >= log_min_p ? qi : -qi;
    q[i] = x[i] >= theta ? qi : 0;
  }
}

inline int64_t key_of(float v) {
  if (v != v) return (int64_t{1} << 32) - 1;
  v += 0.0f;  // -0.0 -> +0.0
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const int64_t b = bits;
  return b >= 0 ? b + (int64_t{1} << 31) : -1 - b;
}

inline int bin_of(float x, float m, float per_nat) {
  const float v = (m - x) * per_nat;
  if (!(v >= 0.0f)) return 0;
  return v < static_cast<float>(kBins - 1) ? static_cast<int>(v) : kBins - 1;
}

// One row's weighing parameters.
struct RowWeights {
  int64_t mode;
  double m, t, log_min_p, two_s;
  float theta;
  // q of x[0, n) into q (the vectorised path for finite rows with two_s <= 2^52, else one token at a time).
  void block(const float* x, int64_t n, int64_t* q) const {
    if (mode == 1 && two_s <= 4503599627370496.0) {
      weigh_finite(x, n, m, t, log_min_p, theta, two_s, q);
    } else {
      for (int64_t i = 0; i < n; ++i) q[i] = (*this)(x[i]);
    }
  }
  // The token's fixed-point weight; negative when min-p drops it (its magnitude still counts for top-p).
  int64_t operator()(float x) const {
    if (mode == 0 || !(x >= theta)) return 0;
    if (mode == 2) return x == std::numeric_limits<float>::infinity() ? static_cast<int64_t>(two_s) : 0;
    const double d = (static_cast<double>(x) - m) / t;
    const auto q = static_cast<int64_t>(std::nearbyint(std::exp(d) * two_s));
    return d >= log_min_p ? q : -q;
  }
};

template <class T>
const T* rows_of(const at::Tensor& t, int64_t batch, at::ScalarType dtype, const char* name, at::Tensor& keep) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, name, " must have shape [", batch, "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  keep = t.contiguous();
  return keep.const_data_ptr<T>();
}

struct RowParams {
  at::Tensor m_t, t_t, mode_t, theta_t, lmp_t;
  const float *m, *t, *theta;
  const int64_t* mode;
  const double* log_min_p;
  double two_s;
  RowParams(int64_t batch, const at::Tensor& m_, const at::Tensor& t_, const at::Tensor& mode_, const at::Tensor& theta_,
            const at::Tensor& lmp_, int64_t scale) {
    TORCH_CHECK_VALUE(scale >= 0 && scale <= 62, "scale must be in [0, 62], got ", scale);
    m = rows_of<float>(m_, batch, at::kFloat, "m", m_t);
    t = rows_of<float>(t_, batch, at::kFloat, "t", t_t);
    mode = rows_of<int64_t>(mode_, batch, at::kLong, "mode", mode_t);
    theta = rows_of<float>(theta_, batch, at::kFloat, "theta", theta_t);
    log_min_p = rows_of<double>(lmp_, batch, at::kDouble, "log_min_p", lmp_t);
    two_s = std::ldexp(1.0, static_cast<int>(scale));
  }
  RowWeights row(int64_t b) const {
    const double tb = mode[b] == 1 ? static_cast<double>(t[b]) : 1.0;
    return {mode[b], static_cast<double>(m[b]), tb, log_min_p[b], two_s, theta[b]};
  }
};

struct RowStats {
  float best;
  int64_t first, count, ties;
  bool nan;
};

// Two vectorisable passes: lane-wise max and NaN flags, then per 64-token block the counts of the max and of
// tie_value (the first block holding the max is scanned for its first index).
FS_MULTIVERSION RowStats row_stats(const float* x, int64_t n,
                                                                                 float tie) {
  constexpr int kLanes = 16;
  constexpr int64_t kStatBlock = 64;
  float lane[kLanes];
  int32_t nan_lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = -std::numeric_limits<float>::infinity(), nan_lane[j] = 0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = x[i + j];
      lane[j] = v > lane[j] ? v : lane[j];
      nan_lane[j] |= v != v;
    }
  }
  RowStats st{-std::numeric_limits<float>::infinity(), 0, 0, 0, false};
  for (; i < n; ++i) {
    st.best = x[i] > st.best ? x[i] : st.best;
    st.nan |= x[i] != x[i];
  }
  for (int j = 0; j < kLanes; ++j) {
    st.best = lane[j] > st.best ? lane[j] : st.best;
    st.nan |= nan_lane[j] != 0;
  }
  if (st.nan) {  // torch.argmax: the first NaN
    for (int64_t k = 0; k < n; ++k) {
      if (x[k] != x[k]) {
        st.first = k;
        break;
      }
    }
  }
  st.first = st.nan ? st.first : -1;
  for (int64_t lo = 0; lo < n; lo += kStatBlock) {
    const int64_t hi = std::min(n, lo + kStatBlock);
    int32_t c = 0, t = 0;
    for (int64_t k = lo; k < hi; ++k) {
      c += x[k] == st.best;
      t += x[k] == tie;
    }
    st.count += c, st.ties += t;
    if (c > 0 && st.first < 0) {
      for (int64_t k = lo; k < hi; ++k) {
        if (x[k] == st.best) {
          st.first = k;
          break;
        }
      }
    }
  }
  if (st.first < 0) st.first = 0;
  return st;
}

// [B, 5] int64: key of the row max (NaN rows: the NaN key), index of its first occurrence, number of tokens
// equal to it, has-NaN, number of tokens equal to tie_value[b].
at::Tensor dist_row_stats(const at::Tensor& x_in, const at::Tensor& tie_value) {
  const InputRows in = input_rows(x_in, "x");
  at::Tensor keep;
  const float* tie = rows_of<float>(tie_value, in.batch, at::kFloat, "tie_value", keep);
  at::Tensor out = at::zeros({in.batch, 5}, in.x.options().dtype(at::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    int64_t* o = op + b * 5;
    const RowStats st = row_stats(xb, in.vocab, tie[b]);
    o[0] = st.nan ? key_of(std::numeric_limits<float>::quiet_NaN()) : key_of(st.best);
    o[1] = st.first;
    o[2] = st.nan ? 0 : st.count;
    o[3] = st.nan;
    o[4] = st.ties;
  });
  return out;
}

// Fixed-point weights of the slice (stored in q when asked: [B, n], else [B, 0]), the top-p mass histogram
// over bins ([B, 256], zero rows where per_nat == 0) and the mass min-p keeps ([B]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> dist_weigh(const at::Tensor& x_in, const at::Tensor& m,
                                                          const at::Tensor& t, const at::Tensor& mode,
                                                          const at::Tensor& theta, const at::Tensor& log_min_p,
                                                          const at::Tensor& per_nat, int64_t scale, bool store_q) {
  const InputRows in = input_rows(x_in, "x");
  const RowParams rp(in.batch, m, t, mode, theta, log_min_p, scale);
  at::Tensor keep;
  const float* pn = rows_of<float>(per_nat, in.batch, at::kFloat, "per_nat", keep);
  const auto opts = in.x.options().dtype(at::kLong);
  at::Tensor q = at::empty({in.batch, store_q ? in.vocab : 0}, opts);
  at::Tensor hist = at::zeros({in.batch, kBins}, opts);
  at::Tensor kept = at::zeros({in.batch}, opts);
  int64_t* qp = q.data_ptr<int64_t>();
  int64_t* hp = hist.data_ptr<int64_t>();
  int64_t* kp = kept.data_ptr<int64_t>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    const RowWeights w = rp.row(b);
    int64_t* qb = store_q ? qp + b * in.vocab : nullptr;
    if (w.mode == 0) {
      if (qb) std::fill(qb, qb + in.vocab, int64_t{0});
      return;
    }
    int64_t* hb = hp + b * kBins;
    const float per = pn[b], mb = rp.m[b];
    const bool binned = per > 0.0f && w.mode == 1;
    int64_t sum = 0;
    int64_t scratch[kBlock];
    for (int64_t lo = 0; lo < in.vocab; lo += kBlock) {
      const int64_t len = std::min(kBlock, in.vocab - lo);
      int64_t* out = qb ? qb + lo : scratch;
      w.block(xb + lo, len, out);
      for (int64_t i = 0; i < len; ++i) sum += out[i] > 0 ? out[i] : 0;
      if (binned) {
        for (int64_t i = 0; i < len; ++i) {
          if (out[i] != 0) hb[bin_of(xb[lo + i], mb, per)] += out[i] < 0 ? -out[i] : out[i];
        }
      }
    }
    kp[b] = sum;
  });
  return {q, hist, kept};
}

// [B, 256]: the mass (|q|) of the tokens in bin chosen[b] whose key agrees with prefix[b] above bit
// shift + 8, by the 8 bits of their key from bit shift. Rows with per_nat == 0 or chosen < 0: zeros.
at::Tensor dist_digit_hist(const at::Tensor& x_in, const at::Tensor& q, const at::Tensor& m, const at::Tensor& per_nat,
                           const at::Tensor& chosen, const at::Tensor& prefix, int64_t shift) {
  const InputRows in = input_rows(x_in, "x");
  TORCH_CHECK_VALUE(q.dim() == 2 && q.size(0) == in.batch && q.size(1) == in.vocab && q.scalar_type() == at::kLong,
                    "q must be int64 [", in.batch, ", ", in.vocab, "]");
  TORCH_CHECK_VALUE(shift >= 0 && shift <= 24 && shift % 8 == 0, "shift must be 0, 8, 16 or 24, got ", shift);
  at::Tensor k1, k2, k3, k4;
  const float* mp = rows_of<float>(m, in.batch, at::kFloat, "m", k1);
  const float* pn = rows_of<float>(per_nat, in.batch, at::kFloat, "per_nat", k2);
  const int64_t* cp = rows_of<int64_t>(chosen, in.batch, at::kLong, "chosen", k3);
  const int64_t* pp = rows_of<int64_t>(prefix, in.batch, at::kLong, "prefix", k4);
  const at::Tensor qc = q.contiguous();
  const int64_t* qp = qc.const_data_ptr<int64_t>();
  at::Tensor hist = at::zeros({in.batch, kBins}, in.x.options().dtype(at::kLong));
  int64_t* hp = hist.data_ptr<int64_t>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    const float per = pn[b], mb = mp[b];
    const int64_t want_bin = cp[b], want_prefix = pp[b];
    if (!(per > 0.0f) || want_bin < 0) return;
    const int64_t* qb = qp + b * in.vocab;
    int64_t* hb = hp + b * kBins;
    for (int64_t i = 0; i < in.vocab; ++i) {
      const int64_t qi = qb[i];
      if (qi == 0 || bin_of(xb[i], mb, per) != want_bin) continue;
      const int64_t key = key_of(xb[i]);
      if ((key >> (shift + 8)) != want_prefix) continue;
      hb[(key >> shift) & (kBins - 1)] += qi < 0 ? -qi : qi;
    }
  });
  return hist;
}

// [B]: the mass of the kept tokens, sum of q > 0 over x >= theta.
at::Tensor dist_kept(const at::Tensor& x_in, const at::Tensor& q, const at::Tensor& theta) {
  const InputRows in = input_rows(x_in, "x");
  TORCH_CHECK_VALUE(q.dim() == 2 && q.size(0) == in.batch && q.size(1) == in.vocab && q.scalar_type() == at::kLong,
                    "q must be int64 [", in.batch, ", ", in.vocab, "]");
  at::Tensor k1;
  const float* th = rows_of<float>(theta, in.batch, at::kFloat, "theta", k1);
  const at::Tensor qc = q.contiguous();
  const int64_t* qp = qc.const_data_ptr<int64_t>();
  at::Tensor kept = at::zeros({in.batch}, in.x.options().dtype(at::kLong));
  int64_t* kp = kept.data_ptr<int64_t>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    const int64_t* qb = qp + b * in.vocab;
    const float tb = th[b];
    int64_t sum = 0;
    for (int64_t i = 0; i < in.vocab; ++i) sum += (qb[i] > 0 && xb[i] >= tb) ? qb[i] : 0;
    kp[b] = sum;
  });
  return kept;
}

// [B]: the smallest index i with (sum of kept weights of tokens <= i) > target[b]; the last index when no
// such i (a guard), 0 on rows with mode 0 or target < 0. Kept weights: q > 0 and x >= theta when q is
// given, else the weights recomputed from x (x >= theta, min-p kept).
at::Tensor dist_walk(const at::Tensor& x_in, const std::optional<at::Tensor>& q, const at::Tensor& m,
                     const at::Tensor& t, const at::Tensor& mode, const at::Tensor& theta,
                     const at::Tensor& log_min_p, const at::Tensor& target, int64_t scale) {
  const InputRows in = input_rows(x_in, "x");
  const RowParams rp(in.batch, m, t, mode, theta, log_min_p, scale);
  at::Tensor k1, qc;
  const int64_t* tg = rows_of<int64_t>(target, in.batch, at::kLong, "target", k1);
  const int64_t* qp = nullptr;
  if (q.has_value()) {
    TORCH_CHECK_VALUE(q->dim() == 2 && q->size(0) == in.batch && q->size(1) == in.vocab &&
                          q->scalar_type() == at::kLong,
                      "q must be int64 [", in.batch, ", ", in.vocab, "]");
    qc = q->contiguous();
    qp = qc.const_data_ptr<int64_t>();
  }
  at::Tensor index = at::zeros({in.batch}, in.x.options().dtype(at::kLong));
  int64_t* ip = index.data_ptr<int64_t>();
  for_input_rows(in, [&](int64_t b, const float* xb) {
    const RowWeights w = rp.row(b);
    const int64_t goal = tg[b];
    if (w.mode == 0 || goal < 0) return;
    int64_t cum = 0, at = in.vocab - 1;
    int64_t scratch[kBlock];
    for (int64_t lo = 0; lo < in.vocab; lo += kBlock) {
      const int64_t len = std::min(kBlock, in.vocab - lo);
      const int64_t* qs = scratch;
      if (qp) {
        qs = qp + b * in.vocab + lo;
      } else {
        w.block(xb + lo, len, scratch);
      }
      int64_t block_sum = 0;  // skip whole blocks below the step
      for (int64_t i = 0; i < len; ++i) block_sum += (qs[i] > 0 && xb[lo + i] >= w.theta) ? qs[i] : 0;
      if (cum + block_sum <= goal) {
        cum += block_sum;
        continue;
      }
      for (int64_t i = 0; i < len; ++i) {
        cum += (qs[i] > 0 && xb[lo + i] >= w.theta) ? qs[i] : 0;
        if (cum > goal) {
          at = lo + i;
          break;
        }
      }
      break;
    }
    ip[b] = at;
  });
  return index;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("dist_row_stats", &dist_row_stats);
  m.impl("dist_weigh", &dist_weigh);
  m.impl("dist_digit_hist", &dist_digit_hist);
  m.impl("dist_kept", &dist_kept);
  m.impl("dist_walk", &dist_walk);
}

}  // namespace fastsample::cpu
