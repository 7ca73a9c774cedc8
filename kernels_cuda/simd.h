// SIMD helpers of the CPU scan kernel (scan_cpu.cpp): a native vector of W lanes (GCC/Clang
// vector extensions, compiled for the host's ISA level), the float32 polynomial exp and softplus,
// and the loads and stores that move W strided rows in and out of lanes.
//
// Numerics: the float32 exponential and log1p are Cephes-style polynomials, tested against libm
// (relative error <= 2e-7 on [-87, 88], tests/kernels/test_scan_cpu.py through the extension's
// exp_approx/softplus_approx hooks); float64 calls libm per lane (float64 serves tests and
// gradcheck). No -ffast-math: everything else keeps IEEE semantics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace tiling_simd {

// Vector width: one native register. With AVX-512 a 64-byte vector is one zmm register; without
// it GCC splits a 64-byte vector extension into pieces that spill through the stack (measured on
// an AVX2 EPYC, b1 d1536 L2048 N16 forward: 134 ms with 64 bytes, 36 ms with 32 bytes).
#if defined(__AVX512F__)
#define TILING_VBYTES 64
#else
#define TILING_VBYTES 32
#endif

template <typename T> struct VT;
template <> struct VT<float> {
  typedef float V __attribute__((vector_size(TILING_VBYTES)));
  typedef int32_t I __attribute__((vector_size(TILING_VBYTES)));
  static constexpr int W = TILING_VBYTES / 4;
};
template <> struct VT<double> {
  typedef double V __attribute__((vector_size(TILING_VBYTES)));
  typedef int64_t I __attribute__((vector_size(TILING_VBYTES)));
  static constexpr int W = TILING_VBYTES / 8;
};
template <typename T> using Vec = typename VT<T>::V;

template <typename T> inline Vec<T> bc(T s) {
  Vec<T> v = {};
  return v + s;
}

// Horizontal sum by halving (a tree: 4 vector adds for 16 lanes instead of a serial chain). The halves
// are register shuffles: taking them with memcpy, as before, made GCC 12 keep the accumulators of every
// caller's loop in memory (a store and a reload per FMA, perf annotate of matvec_rows).
template <typename T, int W> struct Halve {
  typedef T H __attribute__((vector_size(W * sizeof(T) / 2)));
  typedef T F __attribute__((vector_size(W * sizeof(T))));
  template <size_t... I>
  static H lo(F v, std::index_sequence<I...>) { return __builtin_shufflevector(v, v, I...); }
  template <size_t... I>
  static H hi(F v, std::index_sequence<I...>) { return __builtin_shufflevector(v, v, (I + W / 2)...); }
  static T sum(F v) {
    const auto half = std::make_index_sequence<W / 2>{};
    return Halve<T, W / 2>::sum(lo(v, half) + hi(v, half));
  }
};
template <typename T> struct Halve<T, 2> {
  typedef T F __attribute__((vector_size(2 * sizeof(T))));
  static T sum(F v) { return v[0] + v[1]; }
};
template <typename T> inline T hsum(Vec<T> v) { return Halve<T, VT<T>::W>::sum(v); }

// exp(x) for float32 lanes: Cephes expf (range reduction by ln2 in two parts, degree-6
// polynomial). x < -87.3365 (where exp underflows FLT_MIN) gives 0; x is clamped at 88.
inline Vec<float> vexp(Vec<float> x) {
  typedef Vec<float> V;
  typedef VT<float>::I I;
  const V lo = bc(-87.33654f), hi = bc(88.0f), magic = bc(12582912.0f);  // 1.5 * 2^23
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  V big = xc * 1.44269504088896341f + magic;  // round(x / ln2) in the low mantissa bits
  V nf = big - magic;
  I ni = (I)big - (I)magic;
  V r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  V p = bc(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  V res = p * (V)((ni + 127) << 23);
  return x < lo ? bc(0.0f) : res;
}

inline Vec<double> vexp(Vec<double> x) {
  Vec<double> r;
  for (int l = 0; l < VT<double>::W; ++l) r[l] = std::exp(x[l]);
  return r;
}

// log(w) for w in [1, 2] (float32 lanes): Cephes logf.
inline Vec<float> vlog12(Vec<float> w) {
  typedef Vec<float> V;
  typedef VT<float>::I I;
  I bits = (I)w;
  I e = ((bits >> 23) & 0xff) - 126;
  V m = (V)((bits & 0x807fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  V ef = __builtin_convertvector(e, V);
  I small = m < 0.707106781186547524f;
  ef = small ? ef - 1.0f : ef;
  m = small ? m + m - 1.0f : m - 1.0f;
  V z = m * m;
  V y = bc(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + ef * 0.693359375f;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(v) = log(1 + v) * v / ((1 + v) - 1)
// keeps full relative accuracy for small v (Goldberg's trick).
inline Vec<float> vsoftplus(Vec<float> x) {
  typedef Vec<float> V;
  V ax = x < 0.0f ? -x : x;
  V v = vexp(-ax);
  V w = v + 1.0f;
  V den = w - 1.0f;
  V l1p = den == 0.0f ? v : vlog12(w) * (v / (den == 0.0f ? bc(1.0f) : den));
  return (x > 0.0f ? x : bc(0.0f)) + l1p;
}

inline Vec<double> vsoftplus(Vec<double> x) {
  Vec<double> r;
  for (int l = 0; l < VT<double>::W; ++l) r[l] = std::max(x[l], 0.0) + std::log1p(std::exp(-std::abs(x[l])));
  return r;
}

template <typename T> inline Vec<T> vsigmoid(Vec<T> x) { return 1.0 / (vexp(-x) + 1.0); }

// Lanes l < nl of a vector from base[l * stride]; the other lanes are zero.
template <typename T> inline Vec<T> load_lanes(const T* base, int64_t stride, int nl) {
  Vec<T> v = {};
  for (int l = 0; l < nl; ++l) v[l] = base[l * stride];
  return v;
}
template <typename T> inline void store_lanes(T* base, int64_t stride, int nl, Vec<T> v) {
  for (int l = 0; l < nl; ++l) base[l * stride] = v[l];
}

// n consecutive elements of nl rows (row l at x + l * stride) transposed into n vectors, lane l
// holding row l (the other lanes zero). The rows are nl separate streams, too many for the
// hardware prefetcher: the `ahead` elements that follow each row's n are prefetched explicitly.
template <typename T> void load_rows(const T* x, int64_t stride, int nl, int n, int ahead, Vec<T>* out) {
  constexpr int line = 64 / sizeof(T);
  for (int t = 0; t < n; ++t) out[t] = Vec<T>{};
  for (int l = 0; l < nl; ++l) {
    const T* row = x + l * stride;
    for (int t = 0; t < ahead; t += line) __builtin_prefetch(row + n + t);
    for (int t = 0; t < n; ++t) out[t][l] = row[t];
  }
}
template <typename T> void store_rows(T* x, int64_t stride, int nl, int n, const Vec<T>* in) {
  for (int l = 0; l < nl; ++l) {
    T* row = x + l * stride;
    for (int t = 0; t < n; ++t) row[t] = in[t][l];
  }
}

}  // namespace tiling_simd
