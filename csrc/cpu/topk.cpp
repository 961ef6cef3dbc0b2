// CPU `top_k` (values + indices, like torch.topk) and `top_k_mask_logits`, by the candidate filter and
// radix select of select.h: one vectorised pass over each row, no sort of the vocabulary.
#include <algorithm>
#include <limits>

#include "common.h"
#include "row_plan.h"
#include "select.h"

namespace fastsample::cpu {
namespace {

// Every token >= the row's k-th largest non-NaN value (ties included), in index order. Sets has_nan.
std::vector<Candidate> top_candidates(const float* x, int64_t n, int64_t k, int nseg, bool& has_nan) {
  std::vector<std::vector<Candidate>> parts(nseg);
  std::vector<SpanStats> stats(nseg);
  std::vector<float> block_max(n / kBlock + nseg + 1);
  for_segments(n, nseg, [&](int s, int64_t lo, int64_t hi) {
    stats[s] = collect_candidates(x + lo, hi - lo, lo, k, block_max.data() + lo / kBlock + s, parts[s]);
  });
  has_nan = false;
  std::vector<Candidate> cands;
  for (int s = 0; s < nseg; ++s) {
    has_nan |= stats[s].has_nan;
    cands.insert(cands.end(), parts[s].begin(), parts[s].end());
  }
  if (static_cast<int64_t>(cands.size()) > k) drop_below(cands, kth_largest(cands, k));
  return cands;
}

std::tuple<at::Tensor, at::Tensor> top_k(const at::Tensor& x_in, int64_t k, bool sorted) {
  const InputRows in = input_rows(x_in, "x");
  const int64_t vocab = in.vocab;
  TORCH_CHECK(k >= 0 && k <= vocab, "k must be in [0, ", vocab, "], got ", k);
  at::Tensor indices = at::empty({in.batch, k}, in.x.options().dtype(at::kLong));
  int64_t* ip = indices.data_ptr<int64_t>();
  if (k > 0) {
    for_input_rows(in, [&](int64_t b, const float* xb) {
      int64_t* out = ip + b * k;
      bool has_nan = false;
      std::vector<Candidate> cands = top_candidates(xb, vocab, k, in.nseg, has_nan);
      int64_t filled = 0;
      if (has_nan) {  // NaN ranks above +inf, as in torch.topk: NaNs first, in index order
        for (int64_t i = 0; i < vocab && filled < k; ++i) {
          if (xb[i] != xb[i]) out[filled++] = i;
        }
      }
      // Only the first k - filled in (value descending, index ascending) order: a row of ties has every
      // token as a candidate, and sorting all of them would cost V log V per row.
      const auto wanted = std::min(cands.size(), static_cast<size_t>(k - filled));
      const auto before = [](const Candidate& a, const Candidate& c) {
        return a.x > c.x || (a.x == c.x && a.index < c.index);
      };
      std::partial_sort(cands.begin(), cands.begin() + wanted, cands.end(), before);
      for (size_t j = 0; j < wanted; ++j) out[filled++] = cands[j].index;
    });
  }
  (void)sorted;  // always sorted: "unspecified order" allows it, and callers mostly want it
  return {in.x.gather(1, indices), indices};
}

// out[lo, hi) = x with every token whose float32 value is below theta set to -inf. T is the input's dtype
// (the kept tokens are copied as they are, bit for bit).
template <class T>
void write_masked(const float* xf, const T* x, int64_t lo, int64_t hi, float theta, T* out) {
  const T neg_inf = static_cast<T>(-std::numeric_limits<float>::infinity());
  for (int64_t i = lo; i < hi; ++i) out[i] = xf[i] < theta ? neg_inf : x[i];
}

at::Tensor top_k_mask_logits(const at::Tensor& logits_in, const std::optional<at::Tensor>& top_k_arr,
                             int64_t top_k_val) {
  const InputRows in = input_rows(logits_in, "logits");
  const auto top_k = row_arg<int64_t>(top_k_arr, top_k_val, in.batch, "top_k");
  at::Tensor out = at::empty_like(in.x);
  const auto dtype = in.x.scalar_type();
  // Each row is written while its float32 values are at hand: no [B, V] mask or copy beside the output.
  for_input_rows(in, [&](int64_t b, const float* xb) {
    // The row's threshold: masked iff x < theta. -inf keeps the row; NaN keeps it too (NaN rows stay unchanged).
    const auto k = static_cast<int64_t>(top_k[b]);
    float theta = -std::numeric_limits<float>::infinity();
    if (k > 0 && k < in.vocab) {
      bool has_nan = false;
      std::vector<Candidate> cands = top_candidates(xb, in.vocab, k, in.nseg, has_nan);
      theta = has_nan ? std::numeric_limits<float>::quiet_NaN() : kth_largest(cands, k);
    }
    const int64_t row = b * in.vocab;  // int64: B * V may exceed 2^31
    for_segments(in.vocab, in.nseg, [&](int, int64_t lo, int64_t hi) {
      if (dtype == at::kFloat) {
        write_masked(xb, in.x.const_data_ptr<float>() + row, lo, hi, theta, out.data_ptr<float>() + row);
      } else if (dtype == at::kHalf) {
        write_masked(xb, in.x.const_data_ptr<c10::Half>() + row, lo, hi, theta, out.data_ptr<c10::Half>() + row);
      } else {
        write_masked(xb, in.x.const_data_ptr<c10::BFloat16>() + row, lo, hi, theta,
                     out.data_ptr<c10::BFloat16>() + row);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsample, CPU, m) {
  m.impl("top_k", &top_k);
  m.impl("top_k_mask_logits", &top_k_mask_logits);
}

}  // namespace fastsample::cpu
