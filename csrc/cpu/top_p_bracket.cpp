// The top-p bracket pass (top_p_bracket.h): online_pass's block loop with the bracket's masses and the
// central gather added. Compiled for AVX-512, AVX2+FMA and baseline x86-64 like the loops of simd.cpp,
// whose per-block steps (simd_blocks.h) it shares.
#include "top_p_bracket.h"

#include <algorithm>
#include <cstring>

#include "simd_blocks.h"
#include "vec_paths.h"

namespace fastsample::cpu {
namespace {

// A block that cannot be weighed (the row so far holds NaN or +inf, which its stats decide, or logits that
// are all -inf): no weight above any edge; its central tokens (the first `real`) are still gathered, as
// every block's are.
inline void unweighed_block(const float* xb, int64_t real, const Bracket& br, float* sums, PassGather& g) {
  std::fill(sums, sums + kBracketEdges, 0.0f);
  const float lo = br.edges[kCentralLow], hi = br.edges[kCentralHigh];
  for (int64_t i = 0; i < real; ++i) {
    if (!(xb[i] >= lo && xb[i] < hi)) continue;
    if (g.count < g.capacity) g.values[g.count] = xb[i];
    ++g.count;
  }
}

// One block of online_bracket_pass, after its stats (xb padded to kPassBlock past `real` tokens): adds to
// st.sum, fills sums and gathers into g.
inline void weigh_bracket_block(const float* xb, int64_t real, bool is_exp, float inv_t, const Bracket& br,
                                OnlinePass& st, float* sums, PassGather& g) {
  if (!weighable(st, is_exp)) return unweighed_block(xb, real, br, sums, g);
  st.sum += vec_path().bracket_block(xb, kPassBlock, real, is_exp, st.ref, inv_t, br, sums, g, nullptr);
}

// The same block in one read (logits with a reference, on a path of vec_paths.h), its max taken
// alongside: the separate stats loop cost as much as an eighth of the pass. Sets bmax. False, with g.count
// possibly advanced and nothing else changed, where it cannot run or its block must be weighed again (as
// in online_pass).
inline bool fused_bracket_block(const float* xb, int64_t real, bool is_exp, float inv_t, const Bracket& br,
                                OnlinePass& st, float* sums, PassGather& g, float& bmax) {
  if (!fusable(st, is_exp)) return false;
  SpanStats seen;
  const float s = vec_path().bracket_block(xb, kPassBlock, real, true, st.ref, inv_t, br, sums, g, &seen);
  if (!fused_block_stands(seen, is_exp, st)) return false;
  st.sum += s;
  bmax = seen.max;
  return true;
}

}  // namespace

FS_MULTIVERSION void online_bracket_pass(const float* x, int64_t n, bool is_exp, float inv_t, const Bracket& br,
                                         OnlinePass& st, double* mass_at, BracketBlocks blocks, PassGather& g) {
  float xs[kPassBlock];
  for (int64_t b = 0; b < n; b += kPassBlock) {
    const int64_t len = n - b < kPassBlock ? n - b : kPassBlock;
    const int64_t k = b / kPassBlock;
    const float* xb = x + b;
    if (len < kPassBlock) {  // a short last block: padded with tokens of no weight
      std::fill(std::copy(xb, xb + len, xs), xs + kPassBlock, is_exp ? -kInf : 0.0f);
      xb = xs;
    }
    blocks.central[k] = g.count;
    float sums[kBracketEdges];
    if (!fused_bracket_block(xb, len, is_exp, inv_t, br, st, sums, g, blocks.max[k])) {
      g.count = blocks.central[k];  // stats first, then the weights against the reference they set
      const double scale = block_stats(x + b, len, is_exp, inv_t, st, blocks.max[k]);
      if (scale != 1.0) {
        st.sum *= scale;
        for (int j = 0; j < kBracketEdges; ++j) mass_at[j] *= scale;
      }
      weigh_bracket_block(xb, len, is_exp, inv_t, br, st, sums, g);
    }
    blocks.refs[k] = st.ref;
    for (int j = 0; j < kBracketEdges; ++j) {
      mass_at[j] += sums[j];
      blocks.above[j * blocks.stride + k] = sums[j];
    }
  }
}

}  // namespace fastsample::cpu
