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

// One block of the bracket pass, from its weights w (len a multiple of 16, or the block padded with
// tokens of no weight; only the first `real` tokens are gathered): sums[j] = sum of w[i] with
// x[i] >= edges[j], and the central region's values appended to g. Independent
// accumulators: the edges' sums do not wait on each other.
inline void bracket_block(const float* xb, const float* w, int64_t len, int64_t real, const Bracket& br,
                          float* sums, PassGather& g) {
  F16 acc[kBracketEdges] = {};
  const float lo = br.edges[kCentralLow], hi = br.edges[kCentralHigh];
  for (int64_t i = 0; i < len; i += kLanes) {
    F16 v, wv;
    std::memcpy(&v, xb + i, sizeof v);
    std::memcpy(&wv, w + i, sizeof wv);
    for (int j = 0; j < kBracketEdges; ++j) acc[j] += v >= br.edges[j] ? wv : F16{};
    // The gather (the generic path): a bit mask of the group, then its set bits.
    const int64_t rem = real - i;
    uint32_t mask = range_mask16(v, lo, hi) & (rem >= kLanes ? 0xFFFFu : rem <= 0 ? 0u : (1u << rem) - 1u);
    for (; mask != 0; mask &= mask - 1, ++g.count) {
      if (g.count >= g.capacity) continue;
      g.values[g.count] = xb[i + __builtin_ctz(mask)];
    }
  }
  for (int j = 0; j < kBracketEdges; ++j) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += acc[j][l];
    sums[j] = s;
  }
}

// One block of online_bracket_pass, after its stats (xb padded to kPassBlock past `real` tokens): adds to
// st.sum, fills sums and gathers into g; w is scratch (the generic path's weights).
inline void weigh_bracket_block(const float* xb, int64_t real, bool is_exp, float inv_t, const Bracket& br,
                                OnlinePass& st, float* sums, PassGather& g, float* w) {
  if (const VecPath* vp = vec_path(); vp != nullptr && weighable(st, is_exp)) {
    st.sum += vp->bracket_block(xb, kPassBlock, real, is_exp, st.ref, inv_t, br, sums, g, nullptr);
    return;
  }
  st.sum += block_weights(xb, kPassBlock, st, is_exp, inv_t, w);
  bracket_block(xb, w, kPassBlock, real, br, sums, g);
}

// The same block in one read (logits with a reference, on a path of vec_paths.h), its max taken
// alongside: the separate stats loop cost as much as an eighth of the pass. Sets bmax. False, with g.count
// possibly advanced and nothing else changed, where it cannot run or its block must be weighed again (as
// in online_pass).
inline bool fused_bracket_block(const float* xb, int64_t real, bool is_exp, float inv_t, const Bracket& br,
                                OnlinePass& st, float* sums, PassGather& g, float& bmax) {
  if (!fusable(st, is_exp)) return false;
  SpanStats seen;
  const float s = vec_path()->bracket_block(xb, kPassBlock, real, true, st.ref, inv_t, br, sums, g, &seen);
  if (!fused_block_stands(seen, is_exp, st)) return false;
  st.sum += s;
  bmax = seen.max;
  return true;
}

}  // namespace

FS_MULTIVERSION void online_bracket_pass(const float* x, int64_t n, bool is_exp, float inv_t, const Bracket& br,
                                         OnlinePass& st, double* mass_at, BracketBlocks blocks, PassGather& g) {
  float w[kPassBlock], xs[kPassBlock];
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
      weigh_bracket_block(xb, len, is_exp, inv_t, br, st, sums, g, w);
    }
    blocks.refs[k] = st.ref;
    for (int j = 0; j < kBracketEdges; ++j) {
      mass_at[j] += sums[j];
      blocks.above[j * blocks.stride + k] = sums[j];
    }
  }
}

}  // namespace fastsample::cpu
