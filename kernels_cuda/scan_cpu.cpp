// CPU kernel of the resolution-adaptive selective scan (seed 001 §3.2, §3.3.1, §3.4 step 3):
// forward and backward behind the extension interface of binding.h. What it computes is defined
// by the float64 reference (tiling/ops/reference.py) and docs/tiling.md; this file is how.
//
// Layout and vectorisation. Work is split over (batch, group, block of W channels) with OpenMP;
// the W channels of a block are interleaved in one native vector (simd.h), so the state loop runs
// over n with no horizontal reduction in the forward and W independent recurrences hide the FMA
// latency. B_t and C_t are shared by a group's channels and broadcast from cache; the segment
// means B̄ are computed once per (batch, group), not per block. At full resolution with N = 16
// the state stays in registers across the time loop. float16/bfloat16 inputs are converted to
// float32 on entry (the kernel runs in the accumulation dtype).
//
// Chunked recomputation. The backward takes the chunks between checkpoints from last to first,
// recomputes each from its checkpoint keeping the state before each segment and its decay
// factors, so each exponential is evaluated twice in all (forward, recompute), never three times.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include <ATen/EmptyTensor.h>

#include "binding.h"
#include "simd.h"

namespace {

using namespace tiling_simd;
using tiling_scan::ScanArgs;
using tiling_scan::Tensor;

// body(i) for i in [0, n), in an OpenMP team only where `big`: a parallel region with its if-clause false
// still enters libgomp (a team of one), which showed in profiles of a decoding step that calls these for a
// handful of rows (py-spy on TiledLM.step, issue 23).
template <typename F> inline void rows_for(int64_t n, bool big, F&& body) {
  if (!big) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

template <typename T> struct Params {
  const T *u, *delta, *A, *B, *C, *D, *z, *bias, *gain, *init;
  const T* Bbar;  // segment means of B, (Bt, G, N, L): B̄ of segment j of tile i at i*T + j
  const T* R;
  const int32_t *m, *S, *slot;
  int64_t Bt, Dm, L, N, G, NT, T_;
  bool softplus;
};

// One block: batch row b, group g, channels [c0, c0 + nl).
struct Blk {
  int64_t b, g, c0;
  int nl;
};

// A block's lanes of a per-channel array (channel c at base[c * stride + off]).
template <typename T> inline Vec<T> gather(const T* base, const Blk& k, int64_t stride, int64_t off) {
  return load_lanes(base + k.c0 * stride + off, stride, k.nl);
}
template <typename T> inline void scatter(T* base, const Blk& k, int64_t stride, int64_t off, Vec<T> v) {
  store_lanes(base + k.c0 * stride + off, stride, k.nl, v);
}

// A block's (channels x n) slab of a (Bt, Dm, L) tensor at s0, as n lane vectors; the load
// prefetches the next tile.
template <typename T> void load_tile(const T* x, const Params<T>& p, const Blk& k, int64_t s0, int n, Vec<T>* out) {
  load_rows(x + (k.b * p.Dm + k.c0) * p.L + s0, p.L, k.nl, n, (int)std::min<int64_t>(n, p.L - s0 - n), out);
}
template <typename T> void store_tile(T* x, const Params<T>& p, const Blk& k, int64_t s0, int n, const Vec<T>* in) {
  store_rows(x + (k.b * p.Dm + k.c0) * p.L + s0, p.L, k.nl, n, in);
}

// Δ of a tile: raw = delta + bias, dt = softplus(raw) or raw.
template <typename T>
void load_delta(const Params<T>& p, const Blk& k, int64_t s0, int n, Vec<T> bias, Vec<T>* raw, Vec<T>* dt) {
  load_tile(p.delta, p, k, s0, n, raw);
  for (int t = 0; t < n; ++t) {
    raw[t] += bias;
    dt[t] = p.softplus ? vsoftplus(raw[t]) : raw[t];
  }
  if (k.nl < VT<T>::W)  // padded lanes carry Δ = 0 so they stay inert
    for (int t = 0; t < n; ++t)
      for (int l = k.nl; l < VT<T>::W; ++l) dt[t][l] = 0;
}

// Forward over one tile of n tokens in m segments with S active components. h holds the state
// entering the tile (after the boundary transition) and leaves holding the state after it.
// If y is given, y[t] = C_t . h_read; if hs is given, the state before segment j is saved
// in hs[j * N .. j * N + N) and the decay factors exp(Δ̄_j A) in es[j * N .. j * N + S) (the
// backward reuses them). Bp points at the group's segment means B̄ at the tile start (B̄ of
// segment j at offset j, see segment_means), Cp at its C (row stride L).
template <typename T>
void tile_forward(const Params<T>& p, const T* Bp, const T* Cp, int n, int m, int S, const Vec<T>* dt,
                  const Vec<T>* x, const Vec<T>* AT, Vec<T>* h, Vec<T>* y, Vec<T>* hs, Vec<T>* es) {
  typedef Vec<T> V;
  const int64_t L = p.L, N = p.N;
  V dsum_tile = {};
  for (int j = 0; j < m; ++j) {
    const int lo = (int)((int64_t)j * n / m), hi = (int)((int64_t)(j + 1) * n / m);
    if (hs)
      for (int64_t q = 0; q < N; ++q) hs[j * N + q] = h[q];
    if (hi - lo == 1) {
      const V a = dt[lo], U = a * x[lo];
      dsum_tile += a;
      V acc = {};
      for (int q = 0; q < S; ++q) {
        const V e = vexp(a * AT[q]);
        if (es) es[j * N + q] = e;
        h[q] = e * h[q] + U * Bp[q * L + j];
        acc += h[q] * Cp[q * L + lo];
      }
      if (y) y[lo] = acc;
    } else {
      if (y)  // four accumulators: the read-out is a reduction over q, keep it off the FMA latency
        for (int t = lo; t < hi; ++t) {
          V acc[4] = {};
          int q = 0;
          for (; q + 4 <= S; q += 4)
            for (int r = 0; r < 4; ++r) acc[r] += h[q + r] * Cp[(q + r) * L + t];
          for (; q < S; ++q) acc[0] += h[q] * Cp[q * L + t];
          y[t] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
      V ds = {}, U = {};
      for (int t = lo; t < hi; ++t) {
        ds += dt[t];
        U += dt[t] * x[t];
      }
      dsum_tile += ds;
      for (int q = 0; q < S; ++q) {
        const V e = vexp(ds * AT[q]);
        if (es) es[j * N + q] = e;
        h[q] = e * h[q] + U * Bp[q * L + j];
      }
    }
  }
  for (int64_t q = S; q < N; ++q) h[q] *= vexp(AT[q] * dsum_tile);
}

// The full-resolution forward of a tile (every segment one token, m = n) with a compile-time
// state size NS: the state stays in registers across the time loop (fully unrolled over n).
template <typename T, int NS>
void tile_forward_full(const Params<T>& p, const T* Bp, const T* Cp, int n, const Vec<T>* dt, const Vec<T>* x,
                       const Vec<T>* AT, Vec<T>* h, Vec<T>* y) {
  typedef Vec<T> V;
  const int64_t L = p.L;
  V hr[NS];
  for (int q = 0; q < NS; ++q) hr[q] = h[q];
  for (int t = 0; t < n; ++t) {
    const V a = dt[t], U = a * x[t];
    V acc = {};
#pragma GCC unroll 64
    for (int q = 0; q < NS; ++q) {
      hr[q] = vexp(a * AT[q]) * hr[q] + U * Bp[q * L + t];
      acc += hr[q] * Cp[q * L + t];
    }
    y[t] = acc;
  }
  for (int q = 0; q < NS; ++q) h[q] = hr[q];
}

// Per-thread scratch, all of it allocated before the parallel region: an exception cannot leave an
// OpenMP region (it would call std::terminate and kill Python), so a failed allocation is raised
// here, as a RuntimeError naming the size. Callers size it by min(T, L): one tile never holds more
// than L tokens, whatever tile_size is.
template <typename E> struct ScratchPool {
  std::vector<E> buf;
  int64_t per;
  ScratchPool(int nthreads, int64_t per_thread) : per(per_thread) {
    try {
      buf.resize((size_t)nthreads * (size_t)per_thread);
    } catch (const std::bad_alloc&) {
      TORCH_CHECK(false, "tiling_scan_cpu: cannot allocate ", (double)nthreads * per_thread * sizeof(E) / 1e9,
                  " GB of scratch (", nthreads, " threads x ", per_thread, " elements); use a shorter sequence, "
                  "fewer state dimensions or fewer threads");
    }
  }
  E* of(int tid) { return buf.data() + (int64_t)tid * per; }
};

template <typename T> struct Scratch {
  Vec<T>* base;
  Vec<T>* take(int64_t n, int64_t& at) {
    Vec<T>* r = base + at;
    at += n;
    return r;
  }
};

inline int64_t blocks_per_group(int64_t Dg, int W) { return (Dg + W - 1) / W; }

template <typename T> Blk make_blk(const Params<T>& p, int64_t item) {
  const int W = VT<T>::W;
  const int64_t Dg = p.Dm / p.G, nbg = blocks_per_group(Dg, W);
  Blk k;
  k.b = item / (p.G * nbg);
  const int64_t r = item % (p.G * nbg);
  k.g = r / nbg;
  const int64_t j = r % nbg;
  k.c0 = k.g * Dg + j * W;
  k.nl = (int)std::min<int64_t>(W, Dg - j * W);
  return k;
}

// What both passes start a block with: its channels (make_blk), A and gain per state component
// (lanes = channels; gain 0 without one) and D and the Δ bias of its channels, read here, and the
// scratch arrays both use, taken from the thread's scratch at `at`: the state h (N) and a tile's
// raw Δ (or z), Δ and u (Tb each).
template <typename T> struct BlockArrays {
  Blk k;
  Vec<T> *AT, *GT, *h, *raw, *dt, *x;
  Vec<T> D, bias;
};
template <typename T>
BlockArrays<T> block_arrays(const Params<T>& p, int64_t item, Scratch<T>& sc, int64_t Tb, int64_t& at) {
  typedef Vec<T> V;
  const int64_t N = p.N;
  const Blk k = make_blk(p, item);
  BlockArrays<T> a{k, sc.take(N, at), sc.take(N, at), sc.take(N, at), sc.take(Tb, at), sc.take(Tb, at),
                   sc.take(Tb, at), p.D ? gather(p.D, k, 1, 0) : V{}, p.bias ? gather(p.bias, k, 1, 0) : V{}};
  for (int64_t q = 0; q < N; ++q) {
    a.AT[q] = gather(p.A, k, N, q);
    a.GT[q] = p.gain ? gather(p.gain, k, N, q) : V{};
  }
  return a;
}

// The boundary transition φ entering tile i > 0 of batch row b: h ← h ⊙ exp(gain (R_i − R_{i−1}))
// (nothing without a gain, in tile 0, or where the resolution does not change).
template <typename T> void boundary_gain(const Params<T>& p, const Vec<T>* GT, Vec<T>* h, int64_t b, int64_t i) {
  if (i == 0 || !p.gain) return;
  const T dR = p.R[b * p.NT + i] - p.R[b * p.NT + i - 1];
  if (dR != 0)
    for (int64_t q = 0; q < p.N; ++q) h[q] *= vexp(GT[q] * dR);
}

// B̄ of every segment, shared by the channels of a group (computed once, not per block): segment
// j of tile i (j < m_i <= n_i) is stored at position i*T + j of a (Bt, G, N, L) buffer.
template <typename T> void segment_means(const Params<T>& p, T* out) {
  const int64_t rows = p.Bt * p.G * p.N;
#pragma omp parallel for num_threads(at::get_num_threads()) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / (p.G * p.N);
    const T* src = p.B + r * p.L;
    T* dst = out + r * p.L;
    for (int64_t i = 0; i < p.NT; ++i) {
      const int64_t s0 = i * p.T_, n = std::min<int64_t>(p.T_, p.L - s0), m = p.m[b * p.NT + i];
      for (int64_t j = 0; j < m; ++j) {
        const int64_t lo = j * n / m, hi = (j + 1) * n / m;
        T acc = 0;
        for (int64_t t = lo; t < hi; ++t) acc += src[s0 + t];
        dst[s0 + j] = acc / T(hi - lo);
      }
    }
  }
}

template <typename T>
void forward_impl(const Params<T>& p, T* y, T* last, T* ck, T* tiles, int64_t n_ckpt) {
  typedef Vec<T> V;
  const int W = VT<T>::W;
  const int64_t N = p.N, L = p.L, NT = p.NT, Tt = p.T_;
  const int64_t items = p.Bt * p.G * blocks_per_group(p.Dm / p.G, W);
  const int64_t Tb = std::min(Tt, L);  // the longest tile
  const int nthreads = at::get_num_threads();
  ScratchPool<V> pool(nthreads, 3 * N + 4 * Tb);
#pragma omp parallel num_threads(nthreads)
  {
    Scratch<T> sc{pool.of(omp_get_thread_num())};
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      int64_t at = 0;
      const auto [k, AT, GT, h, raw, dt, x, Dv, bias] = block_arrays(p, item, sc, Tb, at);
      V* yv = sc.take(Tb, at);
      for (int64_t q = 0; q < N; ++q) h[q] = p.init ? gather(p.init + k.b * p.Dm * N, k, N, q) : V{};
      const T* Bbg = p.Bbar + (k.b * p.G + k.g) * N * L;
      const T* Cg = p.C + (k.b * p.G + k.g) * N * L;
      for (int64_t i = 0; i < NT; ++i) {
        const int64_t s0 = i * Tt;
        const int n = (int)std::min<int64_t>(Tt, L - s0);
        const int64_t bi = k.b * NT + i;
        if (p.slot[bi] >= 0)
          for (int64_t q = 0; q < N; ++q)
            scatter(ck + (k.b * p.Dm * n_ckpt + p.slot[bi]) * N, k, n_ckpt * N, q, h[q]);
        boundary_gain(p, GT, h, k.b, i);
        load_delta(p, k, s0, n, bias, raw, dt);
        load_tile(p.u, p, k, s0, n, x);
        if (p.m[bi] == n && p.S[bi] == 16 && N == 16)  // Mamba's usual state size at full resolution
          tile_forward_full<T, 16>(p, Bbg + s0, Cg + s0, n, dt, x, AT, h, yv);
        else
          tile_forward(p, Bbg + s0, Cg + s0, n, p.m[bi], p.S[bi], dt, x, AT, h, yv, (V*)nullptr, (V*)nullptr);
        if (tiles)
          for (int64_t q = 0; q < N; ++q) scatter(tiles + (k.b * p.Dm * NT + i) * N, k, NT * N, q, h[q]);
        if (p.z) load_tile(p.z, p, k, s0, n, raw);
        for (int t = 0; t < n; ++t) {
          V o = yv[t] + Dv * x[t];
          if (p.z) o *= raw[t] * vsigmoid<T>(raw[t]);
          yv[t] = o;
        }
        store_tile(y, p, k, s0, n, yv);
      }
      for (int64_t q = 0; q < N; ++q) scatter(last + k.b * p.Dm * N, k, N, q, h[q]);
    }
  }
}

template <typename T> struct Grads {
  T *du, *ddelta, *dz;       // (Bt, Dm, L)
  T *dA, *dD, *dbias, *dgain;  // per batch row: (Bt, Dm, N), (Bt, Dm), (Bt, Dm), (Bt, Dm, N)
  T *dinit;                  // (Bt, Dm, N)
  T *dB, *dC;                // per thread: (threads, Bt, G, N, L)
  const T *dy, *dlast, *dtiles, *ck;
  int64_t n_ckpt;
};

template <typename T> void backward_impl(const Params<T>& p, const Grads<T>& gr, int nthreads) {
  typedef Vec<T> V;
  const int W = VT<T>::W;
  const int64_t N = p.N, L = p.L, NT = p.NT, Tt = p.T_;
  const int64_t items = p.Bt * p.G * blocks_per_group(p.Dm / p.G, W);
  // longest chunk between checkpoints, in segments
  int64_t max_seg = 1;
  for (int64_t b = 0; b < p.Bt; ++b) {
    int64_t run = 0;
    for (int64_t i = 0; i < NT; ++i) {
      if (p.slot[b * NT + i] >= 0) run = 0;
      run += p.m[b * NT + i];
      max_seg = std::max(max_seg, run);
    }
  }
  const int64_t Tb = std::min(Tt, L);  // the longest tile
  ScratchPool<V> pool(nthreads, 7 * N + 8 * Tb + 2 * max_seg * N);
  ScratchPool<int64_t> offsets(nthreads, NT + 1);
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    Scratch<T> sc{pool.of(tid)};
    int64_t* seg_off = offsets.of(tid);  // segment offset of each tile of a chunk in hs
    T* dBt = gr.dB + (int64_t)tid * p.Bt * p.G * N * L;
    T* dCt = gr.dC + (int64_t)tid * p.Bt * p.G * N * L;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      int64_t at = 0;
      const auto [k, AT, GT, h, raw, dt, x, Dv, bias] = block_arrays(p, item, sc, Tb, at);
      V* lam = sc.take(N, at);
      V* Hn = sc.take(N, at);
      V* dAv = sc.take(N, at);
      V* dGv = sc.take(N, at);
      V* dyv = sc.take(Tb, at);
      V* zv = sc.take(Tb, at);
      V* dx = sc.take(Tb, at);
      V* ddt = sc.take(Tb, at);
      V* dzv = sc.take(Tb, at);
      V* hs = sc.take(max_seg * N, at);
      V* es = sc.take(max_seg * N, at);
      for (int64_t q = 0; q < N; ++q) {
        lam[q] = gr.dlast ? gather(gr.dlast + k.b * p.Dm * N, k, N, q) : V{};
        dAv[q] = V{};
        dGv[q] = V{};
      }
      V dDv = {}, dbv = {};
      const T* Bg = p.B + (k.b * p.G + k.g) * N * L;
      const T* Bbg = p.Bbar + (k.b * p.G + k.g) * N * L;
      const T* Cg = p.C + (k.b * p.G + k.g) * N * L;
      T* dBg = dBt + (k.b * p.G + k.g) * N * L;
      T* dCg = dCt + (k.b * p.G + k.g) * N * L;
      const int32_t* slot = p.slot + k.b * NT;
      const int32_t* mm = p.m + k.b * NT;
      const int32_t* SS = p.S + k.b * NT;
      int64_t tb = NT;
      while (tb > 0) {
        int64_t ta = tb - 1;
        while (slot[ta] < 0) --ta;
        // recompute the chunk [ta, tb) from its checkpoint, saving the state before each segment
        for (int64_t q = 0; q < N; ++q) h[q] = gather(gr.ck + (k.b * p.Dm * gr.n_ckpt + slot[ta]) * N, k, gr.n_ckpt * N, q);
        seg_off[0] = 0;
        for (int64_t i = ta; i < tb; ++i) {
          const int64_t s0 = i * Tt;
          const int n = (int)std::min<int64_t>(Tt, L - s0);
          boundary_gain(p, GT, h, k.b, i);
          load_delta(p, k, s0, n, bias, raw, dt);
          load_tile(p.u, p, k, s0, n, x);
          tile_forward(p, Bbg + s0, Cg + s0, n, mm[i], SS[i], dt, x, AT, h, (V*)nullptr, hs + seg_off[i - ta] * N,
                       es + seg_off[i - ta] * N);
          seg_off[i - ta + 1] = seg_off[i - ta] + mm[i];
        }
        for (int64_t i = tb - 1; i >= ta; --i) {
          const int64_t s0 = i * Tt;
          const int n = (int)std::min<int64_t>(Tt, L - s0);
          const int m = mm[i], S = SS[i];
          const V* hst = hs + seg_off[i - ta] * N;
          const V* est = es + seg_off[i - ta] * N;
          const T* Bp = Bg + s0;
          const T* Bb = Bbg + s0;
          const T* Cp = Cg + s0;
          T* dBp = dBg + s0;
          T* dCp = dCg + s0;
          if (gr.dtiles)
            for (int64_t q = 0; q < N; ++q) lam[q] += gather(gr.dtiles + (k.b * p.Dm * NT + i) * N, k, NT * N, q);
          load_delta(p, k, s0, n, bias, raw, dt);
          load_tile(p.u, p, k, s0, n, x);
          load_tile(gr.dy, p, k, s0, n, dyv);
          if (p.z) load_tile(p.z, p, k, s0, n, zv);
          V dsum = {};
          for (int t = 0; t < n; ++t) dsum += dt[t];
          // components not active in this tile: h_out = exp(A ΣΔ) h_in
          V dTile = {};
          for (int64_t q = S; q < N; ++q) {
            const V e = vexp(AT[q] * dsum);
            const V gq = lam[q] * hst[q] * e;
            dAv[q] += gq * dsum;
            dTile += gq * AT[q];
            lam[q] *= e;
          }
          // gate: dy0 = dy silu(z), dz = dy y0 silu'(z)
          auto gate = [&](int t, V y0, V& dy0) {
            if (p.z) {
              const V zz = zv[t], sg = vsigmoid<T>(zz);
              dy0 = dyv[t] * zz * sg;
              dzv[t] = dyv[t] * y0 * sg * (zz * (1.0 - sg) + 1.0);
            } else {
              dy0 = dyv[t];
            }
          };
          for (int j = m - 1; j >= 0; --j) {
            const int lo = (int)((int64_t)j * n / m), hi = (int)((int64_t)(j + 1) * n / m);
            const V* hp = hst + (int64_t)j * N;
            const V* ep = est + (int64_t)j * N;
            if (hi - lo == 1) {
              const int t = lo;
              const V a = dt[t], U = a * x[t];
              V y0 = Dv * x[t];
              for (int q = 0; q < S; ++q) {
                Hn[q] = ep[q] * hp[q] + U * Bb[q * L + j];
                y0 += Hn[q] * Cp[q * L + t];
              }
              V dy0;
              gate(t, y0, dy0);
              dDv += dy0 * x[t];
              V dU = {}, dAbar = {};
              for (int q = 0; q < S; ++q) {
                dCp[q * L + t] += hsum<T>(dy0 * Hn[q]);
                const V lq = lam[q] + dy0 * Cp[q * L + t];
                dU += lq * Bb[q * L + j];
                dBp[q * L + t] += hsum<T>(lq * U);
                const V g = lq * hp[q] * ep[q];
                dAv[q] += g * a;
                dAbar += g * AT[q];
                lam[q] = ep[q] * lq;
              }
              ddt[t] = dAbar + dU * x[t] + dTile;
              dx[t] = dU * a + dy0 * Dv;
            } else {
              V ds = {}, U = {};
              for (int t = lo; t < hi; ++t) {
                ds += dt[t];
                U += dt[t] * x[t];
              }
              const T inv = T(1) / T(hi - lo);
              V dU = {}, dAbar = {};
              for (int q = 0; q < S; ++q) {
                const V e = ep[q];
                dU += lam[q] * Bb[q * L + j];
                const T dBbar = hsum<T>(lam[q] * U) * inv;
                for (int t = lo; t < hi; ++t) dBp[q * L + t] += dBbar;
                const V g = lam[q] * hp[q] * e;
                dAv[q] += g * ds;
                dAbar += g * AT[q];
                lam[q] = e * lam[q];
              }
              for (int t = lo; t < hi; ++t) {
                V y0 = Dv * x[t];
                for (int q = 0; q < S; ++q) y0 += hp[q] * Cp[q * L + t];
                V dy0;
                gate(t, y0, dy0);
                dDv += dy0 * x[t];
                for (int q = 0; q < S; ++q) {
                  dCp[q * L + t] += hsum<T>(dy0 * hp[q]);
                  lam[q] += dy0 * Cp[q * L + t];
                }
                ddt[t] = dAbar + dU * x[t] + dTile;
                dx[t] = dU * dt[t] + dy0 * Dv;
              }
            }
          }
          // boundary transition at the start of tile i > 0: h_post = h_pre * exp(gain dR)
          if (i > 0 && p.gain) {
            const T dR = p.R[k.b * NT + i] - p.R[k.b * NT + i - 1];
            for (int64_t q = 0; q < N; ++q) {
              dGv[q] += lam[q] * hst[q] * dR;
              if (dR != 0) lam[q] *= vexp(GT[q] * dR);
            }
          }
          // Δ = softplus(raw): dΔ/draw = sigmoid(raw)
          for (int t = 0; t < n; ++t) {
            if (p.softplus) ddt[t] *= vsigmoid<T>(raw[t]);
            dbv += ddt[t];
          }
          store_tile(gr.du, p, k, s0, n, dx);
          store_tile(gr.ddelta, p, k, s0, n, ddt);
          if (p.z) store_tile(gr.dz, p, k, s0, n, dzv);
        }
        tb = ta;
      }
      for (int64_t q = 0; q < N; ++q) {
        scatter(gr.dA + k.b * p.Dm * N, k, N, q, dAv[q]);
        if (gr.dgain) scatter(gr.dgain + k.b * p.Dm * N, k, N, q, dGv[q]);
        if (gr.dinit) scatter(gr.dinit + k.b * p.Dm * N, k, N, q, lam[q]);
      }
      if (gr.dD) scatter(gr.dD + k.b * p.Dm, k, 1, 0, dDv);
      if (gr.dbias) scatter(gr.dbias + k.b * p.Dm, k, 1, 0, dbv);
    }
  }
}

// ------------------------------------------------------------------------------------------
// device functions of the extension interface (binding.h)

using tiling_scan::acc_type;
using tiling_scan::cast;

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// The arguments checked, every floating tensor in the accumulation dtype and contiguous.
ScanArgs prepare(const ScanArgs& a) {
  TORCH_CHECK(a.u.device().is_cpu(), "tiling_scan_cpu: tensors must be on the CPU, got ", a.u.device());
  TORCH_CHECK(a.u.dim() == 3, "tiling_scan_cpu: u must be (batch, dim, L)");
  for (const Tensor* t : {&a.seg_counts, &a.state_dims, &a.ckpt_slot})
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous(), "tiling_scan_cpu: plans must be contiguous int32");
  const auto acc = acc_type(a.u);
  return {cast(a.u, acc), cast(a.delta, acc), cast(a.A, acc), cast(a.B, acc), cast(a.C, acc), cast(a.D, acc),
          cast(a.z, acc), cast(a.delta_bias, acc), cast(a.gain, acc), cast(a.init_state, acc),
          cast(a.resolution, acc), a.seg_counts, a.state_dims, a.ckpt_slot, a.tile_size, a.delta_softplus};
}

// Kernel parameters of prepared arguments, with the segment means B̄ computed into Bbar.
template <typename T> Params<T> make_params(const ScanArgs& x, Tensor& Bbar) {
  Params<T> p;
  p.u = ptr<T>(x.u); p.delta = ptr<T>(x.delta); p.A = ptr<T>(x.A); p.B = ptr<T>(x.B); p.C = ptr<T>(x.C);
  p.D = ptr<T>(x.D); p.z = ptr<T>(x.z); p.bias = ptr<T>(x.delta_bias); p.gain = ptr<T>(x.gain);
  p.init = ptr<T>(x.init_state);
  p.R = x.resolution.data_ptr<T>(); p.m = x.seg_counts.data_ptr<int32_t>(); p.S = x.state_dims.data_ptr<int32_t>();
  p.slot = x.ckpt_slot.data_ptr<int32_t>();
  p.Bt = x.u.size(0); p.Dm = x.u.size(1); p.L = x.u.size(2); p.N = x.A.size(1); p.G = x.B.size(1);
  p.NT = x.seg_counts.size(1); p.T_ = x.tile_size; p.softplus = x.delta_softplus;
  TORCH_CHECK(p.NT == (p.L + x.tile_size - 1) / x.tile_size, "tiling_scan_cpu: plans must have ceil(L / tile_size) columns");
  TORCH_CHECK(x.B.dim() == 4 && p.Dm % p.G == 0, "tiling_scan_cpu: B, C must be (batch, G, N, L) with G | dim");
  Bbar = torch::empty_like(x.B);
  segment_means<T>(p, Bbar.data_ptr<T>());
  p.Bbar = Bbar.data_ptr<T>();
  return p;
}

std::vector<Tensor> fwd(const ScanArgs& a, int64_t n_ckpt, bool return_tile_states) {
  const ScanArgs x = prepare(a);
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), N = x.A.size(1), NT = x.seg_counts.size(1);
  auto opts = x.u.options();
  Tensor y = torch::empty_like(x.u);
  Tensor last = torch::empty({Bt, Dm, N}, opts);
  Tensor ck = torch::zeros({Bt, Dm, n_ckpt, N}, opts);
  Tensor tiles = return_tile_states ? torch::empty({Bt, Dm, NT, N}, opts) : torch::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.u.scalar_type(), "tiling_scan_cpu_fwd", [&] {
    Tensor Bbar;
    const auto p = make_params<scalar_t>(x, Bbar);
    forward_impl<scalar_t>(p, y.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(), ck.data_ptr<scalar_t>(),
                           return_tile_states ? tiles.data_ptr<scalar_t>() : nullptr, n_ckpt);
  });
  return {y.to(a.u.scalar_type()), last, ck, tiles};
}

std::vector<Tensor> bwd(const ScanArgs& a, const Tensor& dy_, const Tensor& ck_, const Tensor& dlast_,
                        const Tensor& dtiles_) {
  const ScanArgs x = prepare(a);
  const auto in = a.u.scalar_type();
  const auto acc = x.u.scalar_type();
  const Tensor dy = cast(dy_, acc), ck = cast(ck_, acc), dlast = cast(dlast_, acc), dtiles = cast(dtiles_, acc);
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), L = x.u.size(2), N = x.A.size(1), G = x.B.size(1);
  const int nthreads = at::get_num_threads();
  auto opts = x.u.options();
  Tensor du = torch::empty_like(x.u), ddelta = torch::empty_like(x.u);
  Tensor dz = x.z.defined() ? torch::empty_like(x.u) : Tensor();
  Tensor dA = torch::empty({Bt, Dm, N}, opts);
  Tensor dD = x.D.defined() ? torch::empty({Bt, Dm}, opts) : Tensor();
  Tensor dbias = x.delta_bias.defined() ? torch::empty({Bt, Dm}, opts) : Tensor();
  Tensor dgain = x.gain.defined() ? torch::empty({Bt, Dm, N}, opts) : Tensor();
  Tensor dinit = x.init_state.defined() ? torch::empty({Bt, Dm, N}, opts) : Tensor();
  Tensor dB = torch::zeros({nthreads, Bt, G, N, L}, opts), dC = torch::zeros({nthreads, Bt, G, N, L}, opts);
  AT_DISPATCH_FLOATING_TYPES(acc, "tiling_scan_cpu_bwd", [&] {
    Tensor Bbar;
    const auto p = make_params<scalar_t>(x, Bbar);
    Grads<scalar_t> gr;
    gr.du = du.data_ptr<scalar_t>(); gr.ddelta = ddelta.data_ptr<scalar_t>();
    gr.dz = dz.defined() ? dz.data_ptr<scalar_t>() : nullptr;
    gr.dA = dA.data_ptr<scalar_t>();
    gr.dD = dD.defined() ? dD.data_ptr<scalar_t>() : nullptr;
    gr.dbias = dbias.defined() ? dbias.data_ptr<scalar_t>() : nullptr;
    gr.dgain = dgain.defined() ? dgain.data_ptr<scalar_t>() : nullptr;
    gr.dinit = dinit.defined() ? dinit.data_ptr<scalar_t>() : nullptr;
    gr.dB = dB.data_ptr<scalar_t>(); gr.dC = dC.data_ptr<scalar_t>();
    gr.dy = dy.data_ptr<scalar_t>(); gr.dlast = ptr<scalar_t>(dlast); gr.dtiles = ptr<scalar_t>(dtiles);
    gr.ck = ck.data_ptr<scalar_t>(); gr.n_ckpt = ck.size(2);
    backward_impl<scalar_t>(p, gr, nthreads);
  });
  auto empty = torch::empty({0}, opts);
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : empty; };
  return {du.to(in), ddelta.to(in), dA.sum(0), dB.sum(0).to(in), dC.sum(0).to(in),
          x.D.defined() ? dD.sum(0) : empty, x.z.defined() ? dz.to(in) : empty,
          x.delta_bias.defined() ? dbias.sum(0) : empty, x.gain.defined() ? dgain.sum(0) : empty, or_empty(dinit)};
}

// ------------------------------------------------------------------------------------------
// Mamba's causal depthwise conv1d with the SiLU that follows it (the block's other sequential
// op): y[t] = silu(b + sum_k w[k] x[t - K + 1 + k]), x[t < 0] = 0, on (Bt, E, L) rows. One pass
// instead of a padded convolution, a slice and an activation; the backward recomputes the
// pre-activation. Vectorised over t (W consecutive positions per vector); edges scalar.

template <typename T> inline T silu_scalar(T a) { return a / (T(1) + std::exp(-a)); }

template <typename T> inline Vec<T> loadu(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T> inline void storeu(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }

// Pre-activation of one row at positions [t0, t0 + W) (t0 >= K - 1, t0 + W <= L).
template <typename T> inline Vec<T> conv_vec(const T* x, const T* w, T b, int K, int64_t t0) {
  Vec<T> a = bc<T>(b);
  for (int k = 0; k < K; ++k) a += loadu(x + t0 - K + 1 + k) * w[k];
  return a;
}
template <typename T> inline T conv_at(const T* x, const T* w, T b, int K, int64_t t) {
  T a = b;
  for (int k = 0; k < K; ++k) {
    const int64_t s = t - K + 1 + k;
    if (s >= 0) a += w[k] * x[s];
  }
  return a;
}

template <typename T>
void conv_silu_forward(const T* x, const T* w, const T* bias, T* y, int64_t Bt, int64_t E, int64_t L, int K) {
  constexpr int W = VT<T>::W;
  rows_for(Bt * E, Bt * E * L > 32768, [&](int64_t r) {
    const int64_t e = r % E;
    const T* xr = x + r * L;
    T* yr = y + r * L;
    const T* we = w + e * K;
    const T b = bias ? bias[e] : T(0);
    int64_t t = 0;
    for (; t < std::min<int64_t>(K - 1, L); ++t) yr[t] = silu_scalar(conv_at(xr, we, b, K, t));
    for (; t + W <= L; t += W) {
      const Vec<T> a = conv_vec(xr, we, b, K, t);
      storeu(yr + t, a * vsigmoid<T>(a));
    }
    for (; t < L; ++t) yr[t] = silu_scalar(conv_at(xr, we, b, K, t));
  });
}

// dx, and per channel dw (E, K) and db (E,), from dy; g = dy * silu'(a) is kept per row.
template <typename T>
void conv_silu_backward(const T* x, const T* w, const T* bias, const T* dy, T* dx, T* dw, T* db, int64_t Bt,
                        int64_t E, int64_t L, int K) {
  constexpr int W = VT<T>::W;
  const int nthreads = at::get_num_threads();
  std::vector<T> scratch;
  try {
    scratch.resize((size_t)nthreads * (size_t)L);
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, "tiling_scan_cpu: cannot allocate the conv backward's scratch (", nthreads, " x ", L, ")");
  }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (Bt * E * L > 32768)
  for (int64_t e = 0; e < E; ++e) {
    T* g = scratch.data() + (int64_t)omp_get_thread_num() * L;
    const T* we = w + e * K;
    const T b = bias ? bias[e] : T(0);
    T dwk[16] = {};  // K <= 16 (checked by the caller)
    T dbe = 0;
    for (int64_t bt = 0; bt < Bt; ++bt) {
      const int64_t r = bt * E + e;
      const T* xr = x + r * L;
      const T* dyr = dy + r * L;
      T* dxr = dx + r * L;
      int64_t t = 0;
      auto grad_scalar = [&](int64_t t) {
        const T a = conv_at(xr, we, b, K, t), s = T(1) / (T(1) + std::exp(-a));
        g[t] = dyr[t] * s * (T(1) + a * (T(1) - s));
      };
      for (; t < std::min<int64_t>(K - 1, L); ++t) grad_scalar(t);
      for (; t + W <= L; t += W) {
        const Vec<T> a = conv_vec(xr, we, b, K, t), s = vsigmoid<T>(a);
        storeu(g + t, loadu(dyr + t) * s * (a * (T(1) - s) + T(1)));
      }
      for (; t < L; ++t) grad_scalar(t);
      // dx[s] = sum_k w[k] g[s + K - 1 - k] (g beyond L is zero)
      int64_t s = 0;
      for (; s + W + K - 1 <= L; s += W) {
        Vec<T> acc = {};
        for (int k = 0; k < K; ++k) acc += loadu(g + s + K - 1 - k) * we[k];
        storeu(dxr + s, acc);
      }
      for (; s < L; ++s) {
        T acc = 0;
        for (int k = 0; k < K; ++k)
          if (s + K - 1 - k < L) acc += we[k] * g[s + K - 1 - k];
        dxr[s] = acc;
      }
      // dw[k] = sum_t g[t] x[t - K + 1 + k], db = sum_t g[t]
      for (int k = 0; k < K; ++k) {
        Vec<T> acc = {};
        int64_t t0 = K - 1 - k;  // first t with t - K + 1 + k >= 0
        T tail = 0;
        int64_t t1 = t0;
        for (; t1 + W <= L; t1 += W) acc += loadu(g + t1) * loadu(xr + t1 - K + 1 + k);
        for (; t1 < L; ++t1) tail += g[t1] * xr[t1 - K + 1 + k];
        dwk[k] += hsum<T>(acc) + tail;
      }
      Vec<T> acc = {};
      T tail = 0;
      int64_t t1 = 0;
      for (; t1 + W <= L; t1 += W) acc += loadu(g + t1);
      for (; t1 < L; ++t1) tail += g[t1];
      dbe += hsum<T>(acc) + tail;
    }
    for (int k = 0; k < K; ++k) dw[e * K + k] = dwk[k];
    db[e] = dbe;
  }
}

void check_conv(const Tensor& x, const Tensor& w, const Tensor& b) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "conv_silu: x must be a contiguous CPU (Bt, E, L)");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.size(1) >= 1 && w.size(1) <= 16 && w.is_contiguous(),
              "conv_silu: w must be a contiguous (E, K) with 1 <= K <= 16");
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && (!b.defined() || (b.scalar_type() == x.scalar_type() &&
              b.numel() == x.size(1) && b.is_contiguous())), "conv_silu: w and b must match x (dtype, E)");
}

Tensor conv_silu_fwd(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b_) {
  const Tensor b = b_.value_or(Tensor());
  check_conv(x, w, b);
  Tensor y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_silu_fwd", [&] {
    conv_silu_forward<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                                y.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2), (int)w.size(1));
  });
  return y;
}

std::vector<Tensor> conv_silu_bwd(const Tensor& dy_, const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b_) {
  const Tensor b = b_.value_or(Tensor());
  check_conv(x, w, b);
  const Tensor dy = dy_.to(x.scalar_type()).contiguous();
  TORCH_CHECK(dy.sizes() == x.sizes(), "conv_silu: dy must have x's shape");
  Tensor dx = torch::empty_like(x), dw = torch::empty_like(w);
  Tensor db = torch::empty({x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_silu_bwd", [&] {
    conv_silu_backward<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                 b.defined() ? b.data_ptr<scalar_t>() : nullptr, dy.data_ptr<scalar_t>(),
                                 dx.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), x.size(0),
                                 x.size(1), x.size(2), (int)w.size(1));
  });
  return {dx, dw, db};
}

// ------------------------------------------------------------------------------------------
// The block scope's step sizes: delta = softplus(raw + bias) * gap, (Bt, E, L) raw, (E,) bias and
// (Bt, L) gap (tokens since the previous segment start), in one pass with the kernel's softplus.
template <typename T> void softplus_gap_rows(const T* rp, const T* bp, const T* gp, T* op, int64_t Bt, int64_t E,
                                              int64_t L) {
  constexpr int W = VT<T>::W;
  rows_for(Bt * E, Bt * E * L > 65536, [&](int64_t r) {
    const T* x = rp + r * L;
    const T* g = gp + (r / E) * L;
    T* o = op + r * L;
    const T b = bp[r % E];
    int64_t t = 0;
    for (; t + W <= L; t += W) storeu(o + t, vsoftplus(loadu(x + t) + b) * loadu(g + t));
    if (t < L) {  // the tail through one padded vector
      Vec<T> v = {}, gv = {};
      for (int64_t j = t; j < L; ++j) v[j - t] = x[j] + b, gv[j - t] = g[j];
      const Vec<T> res = vsoftplus(v) * gv;
      for (int64_t j = t; j < L; ++j) o[j] = res[j - t];
    }
  });
}

Tensor softplus_gap(const Tensor& raw, const Tensor& bias, const Tensor& gap) {
  TORCH_CHECK(raw.device().is_cpu() && raw.dim() == 3 && raw.is_contiguous() && bias.is_contiguous() &&
              bias.numel() == raw.size(1) && gap.is_contiguous() && gap.dim() == 2 && gap.size(0) == raw.size(0) &&
              gap.size(1) == raw.size(2) && bias.scalar_type() == raw.scalar_type() &&
              gap.scalar_type() == raw.scalar_type(), "softplus_gap: raw (Bt, E, L), bias (E,), gap (Bt, L) of one dtype");
  Tensor out = torch::empty_like(raw);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "softplus_gap", [&] {
    softplus_gap_rows<scalar_t>(raw.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), gap.data_ptr<scalar_t>(),
                                out.data_ptr<scalar_t>(), raw.size(0), raw.size(1), raw.size(2));
  });
  return out;
}

// ------------------------------------------------------------------------------------------
// The linearised density of the block scope (tiling/modules/router.py, linear_density):
// rho_t = scale * sum_k softplus(z_tk)^2 * sum_n b_tn^2, from the sampled channels' raw step sizes
// z (rows, k) and the rows ab_t = [a_t (r), b_t (N)] of the composite map's output (torch makes
// both products); one pass with the kernel's softplus.
template <typename T>
void linear_signal_rows(const T* z, const T* ab, T* out, int64_t rows, int64_t k, int64_t r, int64_t N,
                        double scale) {
  constexpr int W = VT<T>::W;
  rows_for(rows, rows * k > 262144, [&](int64_t i) {
    const T* zi = z + i * k;
    Vec<T> acc = {};
    int64_t c = 0;
    for (; c + W <= k; c += W) {
      const Vec<T> sp = vsoftplus(loadu(zi + c));
      acc += sp * sp;
    }
    if (c < k) {
      const int nl = (int)(k - c);
      Vec<T> sp = vsoftplus(load_lanes(zi + c, 1, nl));
      for (int l = nl; l < W; ++l) sp[l] = 0;
      acc += sp * sp;
    }
    const T* b = ab + i * (r + N) + r;
    double bb = 0;
    for (int64_t n = 0; n < N; ++n) bb += (double)b[n] * (double)b[n];
    out[i] = (T)(scale * (double)hsum<T>(acc) * bb);
  });
}

Tensor linear_signal(const Tensor& z, const Tensor& ab, int64_t r, double scale) {
  TORCH_CHECK(z.device().is_cpu() && z.dim() == 2 && z.is_contiguous() && ab.dim() == 2 && ab.is_contiguous() &&
              ab.size(0) == z.size(0) && ab.size(1) > r && ab.scalar_type() == z.scalar_type(),
              "linear_signal: z (rows, k) and ab (rows, r + N) of one dtype, contiguous, on the CPU");
  Tensor out = torch::empty({z.size(0)}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "linear_signal", [&] {
    linear_signal_rows<scalar_t>(z.data_ptr<scalar_t>(), ab.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), z.size(0),
                                 z.size(1), r, ab.size(1) - r, scale);
  });
  return out;
}

// ------------------------------------------------------------------------------------------
// One decoding step of the whole Mamba mixer (TiledMamba.step) for Bt rows: xz = in_proj x, the
// conv window shifted by its first half, u = silu(conv), [dt_low, B, C] = x_proj u,
// delta = softplus(dt_proj dt_low + b) * gap, h = exp(delta A) h + delta u B,
// y = (C . h + D u) silu(z), out = out_proj y. The conv, exp and softplus arithmetic is the
// forward kernels', so a step equals the forward's position to float rounding. gap =
// max(position - last_start, 1) per row (the block scope's tokens since the previous segment
// start), or 1 without last_start. One call per layer and token: at batch 1 a token's step is
// dominated by the calls, not the arithmetic (d_model 256: 0.2 MFLOP a layer).

// Y[b, i] = bias[i] + W[i] . X[b] for Bt rows (each weight row read once for the whole batch). Four weight
// rows at a time: one accumulator chain per row is bound by the FMA's latency, four independent chains
// that share the loads of X are not (each row's sum is formed in the same order either way).
template <typename T>
void matvec_rows(const T* W, const T* bias, const T* X, T* Y, int64_t rows, int64_t cols, int64_t Bt) {
  constexpr int W_ = VT<T>::W;
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    const T *w0 = W + i * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
    for (int64_t b = 0; b < Bt; ++b) {
      const T* x = X + b * cols;
      Vec<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
      int64_t c = 0;
      for (; c + W_ <= cols; c += W_) {
        const Vec<T> xv = loadu(x + c);
        a0 += loadu(w0 + c) * xv, a1 += loadu(w1 + c) * xv, a2 += loadu(w2 + c) * xv, a3 += loadu(w3 + c) * xv;
      }
      T s[4] = {hsum<T>(a0), hsum<T>(a1), hsum<T>(a2), hsum<T>(a3)};
      for (; c < cols; ++c) s[0] += w0[c] * x[c], s[1] += w1[c] * x[c], s[2] += w2[c] * x[c], s[3] += w3[c] * x[c];
      for (int k = 0; k < 4; ++k) Y[b * rows + i + k] = (bias ? bias[i + k] : T(0)) + s[k];
    }
  }
  for (; i < rows; ++i) {
    const T* w = W + i * cols;
    for (int64_t b = 0; b < Bt; ++b) {
      const T* x = X + b * cols;
      Vec<T> acc = {};
      int64_t c = 0;
      for (; c + W_ <= cols; c += W_) acc += loadu(w + c) * loadu(x + c);
      T s = hsum<T>(acc);
      for (; c < cols; ++c) s += w[c] * x[c];
      Y[b * rows + i] = (bias ? bias[i] : T(0)) + s;
    }
  }
}

template <typename T> inline Vec<T> load_n(const T* p, int nl) {
  return nl == VT<T>::W ? loadu(p) : load_lanes(p, 1, nl);
}
template <typename T> inline void store_n(T* p, int nl, Vec<T> v) {
  if (nl == VT<T>::W)
    storeu(p, v);
  else
    store_lanes(p, 1, nl, v);
}

struct StepWeights {
  Tensor W_in, b_in, cw, cb, Wx, Wdt, bdt, A, D, W_out, b_out;
};

template <typename T>
void layer_step_rows(const T* x, const T* conv, const T* h0, const StepWeights& w, const int64_t* last_start,
                     int64_t position, T* out, T* conv1, T* h1, int64_t Bt, int64_t d, int64_t E, int64_t K, int64_t N,
                     int64_t r) {
  constexpr int W = VT<T>::W;
  auto p = [](const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
  const T *cw = p(w.cw), *cb = p(w.cb), *Wdt = p(w.Wdt), *bdt = p(w.bdt), *A = p(w.A), *D = p(w.D);
  const int64_t R2 = r + 2 * N;
  std::vector<T> xz((size_t)(Bt * 2 * E)), u((size_t)(Bt * E)), dbl((size_t)(Bt * R2)), y((size_t)(Bt * E));
  std::vector<T> delta((size_t)E);
  matvec_rows(p(w.W_in), p(w.b_in), x, xz.data(), 2 * E, d, Bt);
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t e = 0; e < E; ++e) {  // conv window and u = silu(conv)
      const T* cin = conv + (b * E + e) * K;
      T* cout = conv1 + (b * E + e) * K;
      for (int64_t k = 0; k + 1 < K; ++k) cout[k] = cin[k + 1];
      cout[K - 1] = xz[b * 2 * E + e];
      T a = cb ? cb[e] : T(0);
      for (int64_t k = 0; k < K; ++k) a += cw[e * K + k] * cout[k];
      u[b * E + e] = silu_scalar(a);
    }
  matvec_rows(p(w.Wx), (const T*)nullptr, u.data(), dbl.data(), R2, E, Bt);
  for (int64_t b = 0; b < Bt; ++b) {
    const T* db = dbl.data() + b * R2;
    const T* ub = u.data() + b * E;
    const T* z = xz.data() + b * 2 * E + E;
    const T g = last_start ? (T)std::max<int64_t>(position - last_start[b], 1) : T(1);
    // dt_proj as matvec_rows' vector products: the scalar loop it replaces chained r FMAs per channel
    // (bound by the FMA's latency)
    matvec_rows(Wdt, bdt, db, delta.data(), E, r, 1);
    for (int64_t e = 0; e < E; e += W) {  // softplus, times the gap
      const int nl = (int)std::min<int64_t>(W, E - e);
      store_n(delta.data() + e, nl, vsoftplus(load_n(delta.data() + e, nl)) * g);
    }
    const T* Bv = db + r;
    const T* Cv = Bv + N;
    for (int64_t e = 0; e < E; ++e) {  // the state and the read-out
      const T* hin = h0 + (b * E + e) * N;
      T* hout = h1 + (b * E + e) * N;
      const T* Ae = A + e * N;
      const T de = delta[e], du = de * ub[e];
      Vec<T> acc = {};
      for (int64_t n = 0; n < N; n += W) {
        const int nl = (int)std::min<int64_t>(W, N - n);
        const Vec<T> hv = vexp(load_n(Ae + n, nl) * de) * load_n(hin + n, nl) + load_n(Bv + n, nl) * du;
        store_n(hout + n, nl, hv);
        acc += hv * load_n(Cv + n, nl);
      }
      y[b * E + e] = (hsum<T>(acc) + (D ? D[e] : T(0)) * ub[e]) * silu_scalar(z[e]);
    }
  }
  matvec_rows(p(w.W_out), p(w.b_out), y.data(), out, d, E, Bt);
}

std::vector<Tensor> layer_step(const Tensor& x, const Tensor& conv, const Tensor& h, const std::vector<c10::optional<Tensor>>& ws,
                               const c10::optional<Tensor>& last_start_, int64_t position) {
  TORCH_CHECK(ws.size() == 11, "layer_step: 11 weights (W_in, b_in, conv w, conv b, W_x, W_dt, b_dt, A, D, W_out, b_out)");
  auto v = [&](int i) { return ws[i].value_or(Tensor()); };
  const StepWeights w{v(0), v(1), v(2), v(3), v(4), v(5), v(6), v(7), v(8), v(9), v(10)};
  const auto dt = h.scalar_type();
  const int64_t Bt = x.size(0), d = x.size(1), E = conv.size(1), K = conv.size(2), N = h.size(2), r = w.Wdt.size(1);
  for (const Tensor* t : {&x, &conv, &h, &w.W_in, &w.b_in, &w.cw, &w.cb, &w.Wx, &w.Wdt, &w.bdt, &w.A, &w.D, &w.W_out, &w.b_out})
    TORCH_CHECK(!t->defined() || (t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt),
                "layer_step: every tensor must be contiguous on the CPU, of the state's dtype");
  TORCH_CHECK(x.dim() == 2 && w.W_in.size(0) == 2 * E && w.W_in.size(1) == d && conv.size(0) == Bt && h.size(0) == Bt &&
              h.size(1) == E && w.cw.numel() == E * K && w.Wx.size(0) == r + 2 * N && w.Wx.size(1) == E &&
              w.Wdt.size(0) == E && w.A.size(0) == E && w.A.size(1) == N && w.W_out.size(0) == d && w.W_out.size(1) == E,
              "layer_step: shapes do not match");
  const Tensor last_start = last_start_.value_or(Tensor());
  TORCH_CHECK(!last_start.defined() || (last_start.scalar_type() == at::kLong && last_start.numel() == Bt &&
              last_start.is_contiguous()), "layer_step: last_start must be (Bt,) int64");
  Tensor out = torch::empty({Bt, d}, h.options()), conv1 = torch::empty_like(conv), h1 = torch::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES(dt, "layer_step", [&] {
    layer_step_rows<scalar_t>(x.data_ptr<scalar_t>(), conv.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), w,
                              last_start.defined() ? last_start.data_ptr<int64_t>() : nullptr, position,
                              out.data_ptr<scalar_t>(), conv1.data_ptr<scalar_t>(), h1.data_ptr<scalar_t>(), Bt, d, E,
                              K, N, r);
  });
  return {out, conv1, h1};
}

// ------------------------------------------------------------------------------------------
// RMSNorm over the last dim (the LM's norms): y = x * r * w, r = 1 / sqrt(mean(x^2) + eps), with
// the sum of squares accumulated in double; the backward reads r saved per row.

// Four independent accumulators: one would chain every FMA on the last (latency-bound, ~3x slower at d 256).
template <typename T> inline double sumsq(const T* x, int64_t d) {
  constexpr int W = VT<T>::W;
  Vec<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t j = 0;
  for (; j + 4 * W <= d; j += 4 * W) {
    const Vec<T> v0 = loadu(x + j), v1 = loadu(x + j + W), v2 = loadu(x + j + 2 * W), v3 = loadu(x + j + 3 * W);
    a0 += v0 * v0;
    a1 += v1 * v1;
    a2 += v2 * v2;
    a3 += v3 * v3;
  }
  for (; j + W <= d; j += W) {
    const Vec<T> v = loadu(x + j);
    a0 += v * v;
  }
  const Vec<T> acc = (a0 + a1) + (a2 + a3);
  double s = 0;
  for (int l = 0; l < W; ++l) s += (double)acc[l];
  for (; j < d; ++j) s += (double)x[j] * (double)x[j];
  return s;
}

template <typename T> void rms_rows(const T* xp, const T* wp, T* yp, T* rp, int64_t rows, int64_t d, double eps) {
  constexpr int W = VT<T>::W;
  rows_for(rows, rows * d > 65536, [&](int64_t i) {
    const T* xr = xp + i * d;
    T* yr = yp + i * d;
    const T ri = (T)(1.0 / std::sqrt(sumsq(xr, d) / (double)d + eps));
    rp[i] = ri;
    int64_t j = 0;
    for (; j + W <= d; j += W) storeu(yr + j, loadu(xr + j) * ri * loadu(wp + j));
    for (; j < d; ++j) yr[j] = xr[j] * ri * wp[j];
  });
}

std::vector<Tensor> rms_norm_fwd(const Tensor& x, const Tensor& w, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 1 && w.dim() == 1 && w.is_contiguous() &&
              w.size(0) == x.size(-1) && w.scalar_type() == x.scalar_type(),
              "rms_norm: x must be contiguous (..., d) on the CPU and w (d,) of its dtype");
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  Tensor y = torch::empty_like(x), r = torch::empty({rows}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_fwd", [&] {
    rms_rows<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                       rows, d, eps);
  });
  return {y, r};
}

// dx = r (w dy) - x r^3 mean(x w dy); dw = sum over rows of dy x r (per-thread partial sums in double).
template <typename T>
void rms_rows_bwd(const T* xp, const T* wp, const T* gp, const T* rp, T* dxp, double* dwall, int64_t rows, int64_t d,
                  int nthreads) {
  constexpr int W = VT<T>::W;
#pragma omp parallel num_threads(nthreads)
  {
    double* dwt = dwall + (int64_t)omp_get_thread_num() * d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const T* xr = xp + i * d;
      const T* gr = gp + i * d;
      T* dxr = dxp + i * d;
      const T ri = rp[i];
      Vec<T> acc = {};
      int64_t j = 0;
      for (; j + W <= d; j += W) acc += loadu(xr + j) * loadu(wp + j) * loadu(gr + j);
      double dot = 0;
      for (int l = 0; l < W; ++l) dot += (double)acc[l];
      for (; j < d; ++j) dot += (double)xr[j] * (double)wp[j] * (double)gr[j];
      const T c = (T)(dot / (double)d * (double)ri * (double)ri * (double)ri);
      for (j = 0; j + W <= d; j += W) {
        const Vec<T> xv = loadu(xr + j), gv = loadu(gr + j);
        storeu(dxr + j, gv * loadu(wp + j) * ri - xv * c);
        const Vec<T> p = gv * xv * ri;
        for (int l = 0; l < W; ++l) dwt[j + l] += (double)p[l];
      }
      for (; j < d; ++j) {
        dxr[j] = gr[j] * wp[j] * ri - xr[j] * c;
        dwt[j] += (double)(gr[j] * xr[j] * ri);
      }
    }
  }
}

std::vector<Tensor> rms_norm_bwd(const Tensor& dy_, const Tensor& x, const Tensor& w, const Tensor& r) {
  const Tensor dy = dy_.to(x.scalar_type()).contiguous();
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  Tensor dx = torch::empty_like(x);
  const int nthreads = rows * d > 65536 ? at::get_num_threads() : 1;
  Tensor dwp = torch::zeros({nthreads, d}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_bwd", [&] {
    rms_rows_bwd<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                           r.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), dwp.data_ptr<double>(), rows, d, nthreads);
  });
  return {dx, dwp.sum(0).to(x.scalar_type())};
}

// ------------------------------------------------------------------------------------------
// The sequential parts of the resolution policy (tiling/policy.py holds the numpy reference of
// each; the layer's plan and its decoding step both call these, so the two agree bit for bit).
// float64 throughout, and no floating-point contraction: the arithmetic is that of the numpy
// reference, operation by operation (an FMA would round differently).
#if defined(__clang__)
#define TILING_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define TILING_NO_CONTRACT
#endif

void check_plan(const Tensor& t, const char* name, int dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kDouble && t.dim() == dim && t.is_contiguous(),
              "tiling policy kernel: ", name, " must be a contiguous float64 CPU tensor with ", dim, " dims");
}

// One tile of the error diffusion: m = clamp(floor(R T + e + 1/2), 1, T), and e <- R T + e - m.
inline double dither_one(double r, double Td, double& e) {
  TILING_NO_CONTRACT
  const double want = r * Td + e;
  const double mi = std::min(std::max(std::floor(want + 0.5), 1.0), Td);
  e = want - mi;
  return mi;
}

// Error-diffused segment counts: m_i = clamp(floor(R_i T + e_{i-1} + 1/2), 1, T), e_i = R_i T + e_{i-1} - m_i.
std::vector<Tensor> dither_counts(const Tensor& R, int64_t T, const Tensor& carry) {
  TILING_NO_CONTRACT
  check_plan(R, "resolution", 2);
  check_plan(carry, "carry", 1);
  const int64_t Bt = R.size(0), n = R.size(1);
  TORCH_CHECK(carry.size(0) == Bt, "dither_counts: carry must have one entry per row");
  Tensor m = torch::empty({Bt, n}, R.options().dtype(at::kLong)), out = carry.clone();
  const double* r = R.data_ptr<double>();
  int64_t* mp = m.data_ptr<int64_t>();
  double* e = out.data_ptr<double>();
  const double Td = (double)T;
  for (int64_t b = 0; b < Bt; ++b) {
    double eb = e[b];
    for (int64_t i = 0; i < n; ++i) mp[b * n + i] = (int64_t)dither_one(r[b * n + i], Td, eb);
    e[b] = eb;
  }
  return {m, out};
}

// One tile of the budget controller (below): the resolution from the desired di and the surplus s, which
// moves on by c - R; fed = whether the integral feedback applies to this tile.
inline double controller_one(double di, double& s, double budget, double r_min, bool adaptive, double slack, bool fed) {
  TILING_NO_CONTRACT
  const double lo = budget + s - slack, hi = budget + s + slack;
  double r;
  if (adaptive) {
    const double want = fed ? std::min(std::max(di * std::exp(s / slack), r_min), 1.0) : di;
    r = std::min(std::max(std::min(std::max(want, lo), hi), r_min), 1.0);
  } else {
    r = di > hi ? r_min : di;
    r = r < lo ? 1.0 : r;
  }
  s = s + budget - r;
  return r;
}

// The budget controller: the running surplus b_i = sum_{j<i} (c - R_j) kept in [-D, D]; adaptive
// mode clamps (with the integral feedback exp(b_i / D) from the second tile of the sequence on,
// first = whether column 0 is the sequence's first tile), binary mode flips.
std::vector<Tensor> budget_controller(const Tensor& desired, double budget, double r_min, bool adaptive, double slack,
                                      bool feedback, const Tensor& surplus, bool first) {
  TILING_NO_CONTRACT
  check_plan(desired, "desired", 2);
  check_plan(surplus, "surplus", 1);
  const int64_t Bt = desired.size(0), n = desired.size(1);
  TORCH_CHECK(surplus.size(0) == Bt, "budget_controller: surplus must have one entry per row");
  Tensor R = torch::empty_like(desired), out = surplus.clone();
  const double* d = desired.data_ptr<double>();
  double* rp = R.data_ptr<double>();
  double* sp = out.data_ptr<double>();
  for (int64_t b = 0; b < Bt; ++b) {
    double s = sp[b];
    for (int64_t i = 0; i < n; ++i)
      rp[b * n + i] = controller_one(d[b * n + i], s, budget, r_min, adaptive, slack, feedback && (i > 0 || !first));
    sp[b] = s;
  }
  return {R, out};
}

// The scale s with mean_j clip(s v_j, r_min, 1) = budget over the k values v: 50 bisection steps
// on log s between r_min / max v and 1 / min v.
double bisect_values(const double* v, int64_t k, double budget, double r_min) {
  TILING_NO_CONTRACT
  double big = -INFINITY, small = INFINITY;
  for (int64_t j = 0; j < k; ++j) big = std::max(big, v[j]), small = std::min(small, v[j]);
  double lo = std::log(r_min) - std::log(big), hi = -std::log(small);
  const double count = (double)k;
  for (int step = 0; step < 50; ++step) {
    const double mid = 0.5 * (lo + hi), sc = std::exp(mid);
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += std::min(std::max(sc * v[j], r_min), 1.0);
    if (sum / count > budget)
      hi = mid;
    else
      lo = mid;
  }
  return std::exp(0.5 * (lo + hi));
}

// bisect_values of each row of q (rows of n), over the entries with mask > 0.
Tensor bisect_scale(const Tensor& q, const Tensor& mask, double budget, double r_min) {
  check_plan(q, "q", 2);
  check_plan(mask, "mask", 2);
  TORCH_CHECK(mask.sizes() == q.sizes(), "bisect_scale: mask must have q's shape");
  const int64_t rows = q.size(0), n = q.size(1);
  Tensor out = torch::empty({rows}, q.options());
  const double* qp = q.data_ptr<double>();
  const double* mp = mask.data_ptr<double>();
  double* op = out.data_ptr<double>();
  std::vector<double> vals((size_t)n);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = 0;
    for (int64_t j = 0; j < n; ++j)
      if (mp[r * n + j] > 0) vals[k++] = qp[r * n + j];
    TORCH_CHECK(k > 0, "bisect_scale: a row has no entry");
    op[r] = bisect_values(vals.data(), k, budget, r_min);
  }
  return out;
}

// The causal predictor p_i = max_{i-w <= j < i} q_j of a row q of n importances, for i = 1 .. n - 1.
inline void predictions(const double* qb, int64_t n, int64_t w, double* p) {
  for (int64_t i = 1; i < n; ++i) {
    double v = -INFINITY;
    for (int64_t j = std::max<int64_t>(0, i - w); j < i; ++j) v = std::max(v, qb[j]);
    p[i] = v;
  }
}

// The desired resolution of tile i from the predictions p_1..p_i (causal_resolution, below).
inline double desired_one(const double* p, int64_t i, double budget, double r_min, bool adaptive, bool has_ref,
                          double s_ref) {
  TILING_NO_CONTRACT
  const double frac = (budget - r_min) / (1.0 - r_min);
  if (i == 0) return adaptive ? budget : (frac > 0.5 ? 1.0 : r_min);
  if (adaptive) {
    const double sc = has_ref ? s_ref : bisect_values(p + 1, i, budget, r_min);  // or the history p_1..p_i
    return std::min(std::max(sc * p[i], r_min), 1.0);
  }
  double greater = 0, equal = 0;  // mid-rank quantile of p_i among p_1..p_i
  for (int64_t j = 1; j <= i; ++j) {
    greater += p[j] > p[i] ? 1.0 : 0.0;
    equal += p[j] == p[i] ? 1.0 : 0.0;
  }
  return (greater + 0.5 * equal) < frac * (double)i ? 1.0 : r_min;
}

// The causal policy of tiling/policy.py (_causal_resolution) on the importances q (Bt, n) of the
// predictor's densities, for the columns i >= from_col: the predictor p_i = max_{i-w <= j < i} q_j,
// the desired resolution (adaptive: clip(s p_i, r_min, 1) with s calibrated on the reference, or
// on the history p_1..p_i; binary: 1 for the top (c - r_min)/(1 - r_min) of the history by
// mid-rank, else r_min; the sequence's first tile: c, binary: the value nearer to c), then the
// budget controller from the surplus entering column from_col. A decoding step passes the tiles
// so far and from_col = its tile (q's last column is a placeholder, never read).
std::vector<Tensor> causal_resolution(const Tensor& q, double budget, double r_min, bool adaptive, int64_t lookback,
                                      double slack, const Tensor& reference, int64_t from_col, const Tensor& surplus) {
  TILING_NO_CONTRACT
  check_plan(q, "q", 2);
  check_plan(surplus, "surplus", 1);
  const int64_t Bt = q.size(0), n = q.size(1), w = lookback;
  TORCH_CHECK(surplus.size(0) == Bt && from_col >= 0 && from_col < n && w >= 1, "causal_resolution: bad arguments");
  const bool has_ref = reference.defined() && reference.numel() > 0;
  double s_ref = 0;
  if (has_ref && adaptive) {
    check_plan(reference, "reference", 1);
    s_ref = bisect_values(reference.data_ptr<double>(), reference.numel(), budget, r_min);
  }
  const int64_t m = n - from_col;
  Tensor desired = torch::empty({Bt, m}, q.options());
  const double* qp = q.data_ptr<double>();
  double* dp = desired.data_ptr<double>();
  std::vector<double> p((size_t)n);
  for (int64_t b = 0; b < Bt; ++b) {
    predictions(qp + b * n, n, w, p.data());
    for (int64_t i = from_col; i < n; ++i)
      dp[b * m + (i - from_col)] = desired_one(p.data(), i, budget, r_min, adaptive, has_ref, s_ref);
  }
  return budget_controller(desired, budget, r_min, adaptive, slack, adaptive && !has_ref, surplus, from_col == 0);
}

// One tile of the causal policy at a decoding step, in one call and without a tensor op between: TileRouter.decide
// at a tile's first token (tiling/modules/router.py, whose torch ops stay the reference, tested equal bit for bit).
// From the importances q (Bt, i) of the tiles so far (tile_importance's, computed by torch: its power rounds
// otherwise than a scalar one, its square root included), the resolution R_i of causal_resolution, calibrated on
// the reference (exp of the running quantiles) or on the history where it is empty; R_i rounded to float32, the
// plan's dtype; its dithered count from the carried error. Returns {m (Bt, 1) int64, carry, surplus}.
std::vector<Tensor> causal_tile(const Tensor& importance, const Tensor& reference, double budget, double r_min,
                                bool adaptive, int64_t lookback, double slack, const Tensor& surplus, const Tensor& carry,
                                int64_t T) {
  TILING_NO_CONTRACT
  check_plan(importance, "importance", 2);
  check_plan(surplus, "surplus", 1);
  check_plan(carry, "carry", 1);
  const int64_t Bt = importance.size(0), i = importance.size(1);
  TORCH_CHECK(surplus.size(0) == Bt && carry.size(0) == Bt && lookback >= 1 && T >= 1, "causal_tile: bad arguments");
  const bool has_ref = reference.defined() && reference.numel() > 0 && adaptive;
  double s_ref = 0;
  if (has_ref) {
    check_plan(reference, "reference", 1);
    s_ref = bisect_values(reference.data_ptr<double>(), reference.numel(), budget, r_min);
  }
  Tensor m = torch::empty({Bt, 1}, importance.options().dtype(at::kLong)), e = carry.clone(), s = surplus.clone();
  const double* qp = importance.data_ptr<double>();
  int64_t* mp = m.data_ptr<int64_t>();
  double* ep = e.data_ptr<double>();
  double* sp = s.data_ptr<double>();
  std::vector<double> p((size_t)i + 1);
  for (int64_t b = 0; b < Bt; ++b) {
    predictions(qp + b * i, i + 1, lookback, p.data());  // p_1..p_i read q_0..q_{i-1} only
    const double d = desired_one(p.data(), i, budget, r_min, adaptive, has_ref, s_ref);
    const double r = (double)(float)controller_one(d, sp[b], budget, r_min, adaptive, slack,
                                                   adaptive && !has_ref && i > 0);
    mp[b] = (int64_t)dither_one(r, (double)T, ep[b]);
  }
  return {m, e, s};
}


// The SegmentLayout of per-tile counts m (Bt, n) on the nominal grid of T (chunk.py,
// segment_boundaries and layout_from_boundaries): boundary (Bt, L) bool, segment (Bt, L),
// start and span (Bt, Lc), lengths (Bt,), all int64 but boundary.
std::vector<Tensor> layout_from_counts(const Tensor& counts, int64_t L, int64_t T) {
  TORCH_CHECK(counts.device().is_cpu() && counts.scalar_type() == at::kLong && counts.dim() == 2 &&
              counts.is_contiguous() && counts.size(1) == L / T + (L % T != 0), "layout_from_counts: bad counts");
  const int64_t Bt = counts.size(0), n = counts.size(1);
  const int64_t* mp = counts.data_ptr<int64_t>();
  auto i64 = counts.options();
  Tensor boundary = torch::zeros({Bt, L}, i64.dtype(at::kBool)), segment = torch::empty({Bt, L}, i64);
  Tensor lengths = torch::empty({Bt}, i64);
  bool* bp = boundary.data_ptr<bool>();
  int64_t* sp = segment.data_ptr<int64_t>();
  int64_t* lp = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < Bt; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t mi = mp[b * n + i];
      TORCH_CHECK(mi >= 1 && mi <= T, "layout_from_counts: a count outside [1, T]");
      for (int64_t j = 0; j < mi; ++j) {
        // j·T in 128 bits: a tile size near 2^63 (a caller's, checked only to be ≥ 1) overflowed 64 and wrote
        // before the row (found by the API fuzzer)
        const int64_t t = i * T + (int64_t)((__int128)j * T / mi);
        if (t >= L) break;  // t grows with j: the tile's other starts lie past the row (a count near 2^62 looped)
        bp[b * L + t] = true;
      }
    }
    int64_t seg = -1;
    for (int64_t t = 0; t < L; ++t) sp[b * L + t] = seg += bp[b * L + t];
    lp[b] = seg + 1;
  }
  const int64_t Lc = Bt ? *std::max_element(lp, lp + Bt) : 0;
  Tensor start = torch::zeros({Bt, Lc}, i64), span = torch::zeros({Bt, Lc}, i64);
  int64_t* st = start.data_ptr<int64_t>();
  int64_t* sn = span.data_ptr<int64_t>();
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t t = 0; t < L; ++t) {
      const int64_t g = sp[b * L + t];
      if (bp[b * L + t]) st[b * Lc + g] = t;
      sn[b * Lc + g] += 1;
    }
  return {boundary, segment, start, span, lengths};
}

#if !defined(__clang__)
#pragma GCC pop_options
#endif

// Test hooks: the float32 polynomial exp and softplus applied elementwise.
template <class F>
Tensor apply_elementwise(const Tensor& x_, F f) {
  Tensor x = x_.to(at::kFloat).contiguous(), r = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* rp = r.data_ptr<float>();
  const int64_t n = x.numel();
  constexpr int W = VT<float>::W;
  for (int64_t i = 0; i < n; i += W) {
    const int c = (int)std::min<int64_t>(W, n - i);
    store_lanes(rp + i, 1, c, f(load_lanes(xp + i, 1, c)));
  }
  return r;
}

Tensor exp_approx(const Tensor& x) { return apply_elementwise(x, [](Vec<float> v) { return vexp(v); }); }
Tensor softplus_approx(const Tensor& x) { return apply_elementwise(x, [](Vec<float> v) { return vsoftplus(v); }); }

#include "lm_step.h"  // the whole LM's decoding step, over layer_step_rows, rms_rows and matvec_rows
#include "stack_step.h"  // a stack of full-resolution layers' step (the hourglass' stages)
#include "hourglass_step.h"  // the whole hourglass' step over three StackDecoders (uniform and router signals)
#include "segments.h"  // the block scope's chunk and dechunk (inference)
#include "block_fwd.h"  // the block scope's whole mixer in one call (inference)

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  tiling_scan::def_scan_module(m, "tiling: fused CPU kernel of the resolution-adaptive selective scan", fwd, bwd);
  m.def("conv_silu_fwd", &conv_silu_fwd, "silu(causal depthwise conv1d(x, w) + b), (Bt, E, L) x, (E, K) w");
  m.def("conv_silu_bwd", &conv_silu_bwd, "gradients (dx, dw, db) of conv_silu_fwd");
  m.def("softplus_gap", &softplus_gap, "softplus(raw + bias) * gap, the block scope's step sizes");
  m.def("linear_signal", &linear_signal, "the block scope's linearised density from the composite map's output");
  m.def("layer_step", &layer_step, "one decoding step of the Mamba mixer, in_proj to out_proj");
  py::class_<Decoder>(m, "LmDecoder", "the whole TiledLM's decoding step over the model's tensors (lm_step.h)")
      .def(py::init<const Tensor&, const std::vector<Tensor>&, const std::vector<double>&, const Tensor&,
                    const c10::optional<Tensor>&, const std::vector<c10::optional<Tensor>>&, const std::vector<Tensor>&,
                    const std::vector<Tensor>&, const std::vector<Tensor>&>())
      .def("step", &Decoder::step, "one token per row (kinds decided on the host): (status, [logits, state...])",
           py::arg("tokens"), py::arg("kinds"), py::arg("state"), py::arg("position"), py::arg("reads"),
           py::arg("maps"), py::arg("scales"), py::arg("row_starts") = std::vector<int64_t>{});
  py::class_<StackDecoder>(m, "StackDecoder", "a stack of full-resolution Mamba layers' decoding step (stack_step.h)")
      .def(py::init<const std::vector<Tensor>&, const std::vector<double>&, const std::vector<c10::optional<Tensor>>&,
                    const std::vector<Tensor>&, const std::vector<Tensor>&>())
      .def("step", &StackDecoder::step, "one token per row: (status, [h, last normed input, conv, ssm])");
  py::class_<HourglassDecoder>(m, "HourglassDecoder", "the whole HourglassLM's decoding step (hourglass_step.h)")
      .def(py::init<const StackDecoder&, const StackDecoder&, const StackDecoder&, const Tensor&, int64_t, bool,
                    const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&, double,
                    const c10::optional<Tensor>&, const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
                    const Tensor&, const Tensor&, double, bool, const std::vector<Tensor>&>())
      .def("step", &HourglassDecoder::step, "one byte per row: (status, [logits, state..., p, starts])");
  m.def("chunk_fwd", &chunk_fwd, "the block scope's chunk: representatives + gated mean pool (Chunk.forward)");
  m.def("block_fwd", &block_fwd, "the block scope's mixer in inference, chunk to hold, in one call");
  m.def("hold_fwd", &hold_fwd, "the block scope's dechunk: each segment's output held over its tokens");
  m.def("rms_norm_fwd", &rms_norm_fwd, "RMSNorm over the last dim: (y, 1/rms per row)");
  m.def("rms_norm_bwd", &rms_norm_bwd, "gradients (dx, dw) of rms_norm_fwd");
  m.def("dither_counts", &dither_counts, "error-diffused segment counts (tiling.policy.dithered_counts)");
  m.def("budget_controller", &budget_controller, "the causal budget controller (tiling.policy._controlled)");
  m.def("causal_resolution", &causal_resolution, "the causal policy (tiling.policy._causal_resolution)");
  m.def("causal_tile", &causal_tile, "one decoding step's tile of the causal policy (TileRouter.decide)");
  m.def("layout_from_counts", &layout_from_counts, "a SegmentLayout's tensors from per-tile counts");
  m.def("bisect_scale", &bisect_scale, "the policy's scale by bisection (tiling.policy._bisect_scale)");
  m.def("exp_approx", &exp_approx, "test hook: the kernel's float32 exp");
  m.def("softplus_approx", &softplus_approx, "test hook: the kernel's float32 softplus");
}
