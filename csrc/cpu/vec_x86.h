// The compares the x86 paths (vec_avx2.h, vec_avx512.h) share: each is the path's own compare, D::cmp, with a
// predicate of <immintrin.h> (ordered, false where NaN, except not_lt). Include after the intrinsics.
#pragma once

// __m256 / __m512 as template arguments (of VecShape and X86Compares) drop their may_alias attribute, which
// matters only to pointer casts: the primitives pass vectors by value and load and store through intrinsics.
#pragma GCC diagnostic ignored "-Wignored-attributes"

namespace fastsample::cpu {

template <class D, class F, class M>
struct X86Compares {
  static M ge(F a, F b) { return D::template cmp<_CMP_GE_OQ>(a, b); }
  static M lt(F a, F b) { return D::template cmp<_CMP_LT_OQ>(a, b); }
  static M not_lt(F a, F b) { return D::template cmp<_CMP_NLT_UQ>(a, b); }  // true where NaN
  static M nan(F v) { return D::template cmp<_CMP_UNORD_Q>(v, v); }
};

}  // namespace fastsample::cpu
