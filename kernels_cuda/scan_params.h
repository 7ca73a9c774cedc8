// Parameter structs and launchers of the CUDA resolution-adaptive selective scan (seed 001 §3.2,
// §3.3.1, §3.4 step 3). This header needs only the CUDA runtime: the kernels in scan_fwd.cu and
// scan_bwd.cu compile with `nvcc -c` alone (no torch headers); binding.cpp fills these structs
// from tensors and calls the launchers.
//
// Semantics: see the "Extension interface" block at the top of scan_cpu.cpp and the float64
// reference tiling/ops/reference.py (the definition). Layout (all contiguous, row-major):
//   u, delta, z, y, du, ddelta, dz: (batch, dim, L)          dtype `in`
//   B, C: (batch, G, N, L)                                  dtype `in`
//   A, gain: (dim, N); D, delta_bias: (dim,); states: (batch, dim, N)   dtype `acc`
//   resolution (batch, n_tiles) acc; seg_counts, state_dims, ckpt_slot (batch, n_tiles) int32
//   checkpoints (batch, dim, n_ckpt, N), tile_states (batch, dim, n_tiles, N)  dtype `acc`
// `in` is float32, bfloat16, float16 or float64; `acc` is float64 for float64 input, else float32.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace tiling_cuda {

enum class InType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

// Work decomposition (the design is in docs/kernels.md, "CUDA kernel"):
// a block of at most kThreads threads serves channels_per_block_tpc(TPC) channels of one (batch
// row, B/C group); the TPC = ceil(N / kStatesPerThread) (rounded up to a power of two) consecutive
// lanes of a channel hold kStatesPerThread state components each in registers; time advances
// sequentially in windows of kWindow timesteps staged through shared memory.
constexpr int kThreads = 128;
constexpr int kStatesPerThread = 4;
constexpr int kWindow = 32;  // forward window; the backward uses bwd_window() (smem-bound)
constexpr int kMaxN = 64;

// Timesteps per backward window: its shared memory holds one pre-segment state per timestep and
// thread, so float64 halves the window to stay within the 227 KB a block may use.
inline int bwd_window(InType t) { return t == InType::kFloat64 ? 16 : 32; }

struct ScanFwdParams {
  int batch, dim, L, N, G, tile_size, n_tiles, n_ckpt;
  bool delta_softplus;
  InType in_type;
  const void* u;
  const void* delta;
  const void* B;
  const void* C;
  const void* z;            // nullable
  const void* A;            // acc
  const void* D;            // acc, nullable
  const void* delta_bias;   // acc, nullable
  const void* gain;         // acc, nullable
  const void* init_state;   // acc, nullable
  const void* resolution;   // acc
  const int* seg_counts;
  const int* state_dims;
  const int* ckpt_slot;
  void* y;                  // in
  void* last_state;         // acc
  void* checkpoints;        // acc, zero-initialised by the caller
  void* tile_states;        // acc, nullable
};

struct ScanBwdParams {
  ScanFwdParams f;          // forward inputs (f.y, f.last_state, f.tile_states unused)
  const void* checkpoints;  // acc, as written by the forward
  const void* dy;           // in
  const void* dlast_state;  // acc, nullable
  const void* dtile_states; // acc, nullable
  void* du;                 // in
  void* ddelta;             // in
  void* dz;                 // in, nullable (when z is absent)
  void* dB;                 // acc (batch, G, N, L), zero-initialised; or partials, see below
  void* dC;
  bool deterministic;       // dB/dC: per-block partials (blocks_per_group, batch, G, N, L), no atomics
  void* dA_part;            // acc (batch, dim, N): per batch row, summed by the caller
  void* dgain_part;         // acc (batch, dim, N)
  void* dD_part;            // acc (batch, dim)
  void* dbias_part;         // acc (batch, dim)
  void* dinit_state;        // acc (batch, dim, N)
  void* scratch;            // acc, scan_bwd_scratch_elems(...) elements: window states of a chunk
  int max_chunk_len;        // longest run of timesteps between two checkpoints
};

// Threads per channel for state size N (a power of two in {1, 2, 4, 8, 16}).
inline int threads_per_channel(int N) {
  int tpc = 1;
  while (tpc * kStatesPerThread < N) tpc *= 2;
  return tpc;
}

// Channels per block for TPC lanes per channel (at most kMaxChannels: the per-channel rows of
// shared memory stay small), and the block's thread count.
constexpr int kMaxChannels = 32;
template <int TPC> struct Blocking {
  static constexpr int kChannels = kThreads / TPC < kMaxChannels ? kThreads / TPC : kMaxChannels;
  static constexpr int kBlockThreads = kChannels * TPC;
};
inline int channels_per_block_tpc(int tpc) {
  return kThreads / tpc < kMaxChannels ? kThreads / tpc : kMaxChannels;
}
inline int block_threads(int N) {
  const int tpc = threads_per_channel(N);
  return channels_per_block_tpc(tpc) * tpc;
}

// Blocks serving one (batch row, group): ceil((dim / G) / channels_per_block).
inline int blocks_per_group(int dim, int G, int N) {
  const int ch = channels_per_block_tpc(threads_per_channel(N));
  const int dpg = dim / G;
  return (dpg + ch - 1) / ch;
}

// Elements of the backward's scratch buffer (dtype acc): one state slice per thread and window
// of the longest chunk between two checkpoints, for every block.
inline long long scan_bwd_scratch_elems(int batch, int dim, int G, int N, int max_chunk_len, InType t) {
  const int w = bwd_window(t);
  const long long windows = (max_chunk_len + w - 1) / w;
  return (long long)batch * G * blocks_per_group(dim, G, N) * windows * block_threads(N) * kStatesPerThread;
}

// The grid of both kernels: blocks_per_group blocks per (B/C group, batch row), x = group-major.
inline dim3 scan_grid(const ScanFwdParams& p) { return dim3(p.G * blocks_per_group(p.dim, p.G, p.N), p.batch); }

// Launchers: validate nothing (binding.cpp validates), launch on `stream`, return the launch error.
cudaError_t scan_fwd_launch(const ScanFwdParams& p, cudaStream_t stream);
cudaError_t scan_bwd_launch(const ScanBwdParams& p, cudaStream_t stream);

}  // namespace tiling_cuda

#if defined(__CUDACC__)
// ---- device helpers shared by scan_fwd.cu and scan_bwd.cu (only when compiled by nvcc) ----
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace tiling_cuda {

// Host-side dispatch shared by the forward and backward launchers: calls
// `Kernel::launch<in_t, acc_t, TPC>(params, stream)` for the input type and the lanes per channel of N.
template <typename Kernel, typename in_t, typename acc_t, typename Params>
cudaError_t dispatch_lanes(int N, const Params& params, cudaStream_t stream) {
  switch (threads_per_channel(N)) {
    case 1: return Kernel::template launch<in_t, acc_t, 1>(params, stream);
    case 2: return Kernel::template launch<in_t, acc_t, 2>(params, stream);
    case 4: return Kernel::template launch<in_t, acc_t, 4>(params, stream);
    case 8: return Kernel::template launch<in_t, acc_t, 8>(params, stream);
    case 16: return Kernel::template launch<in_t, acc_t, 16>(params, stream);
    default: return cudaErrorInvalidValue;  // N > kMaxN
  }
}
template <typename Kernel, typename Params>
cudaError_t dispatch_scan(InType in_type, int N, const Params& params, cudaStream_t stream) {
  switch (in_type) {
    case InType::kFloat32: return dispatch_lanes<Kernel, float, float>(N, params, stream);
    case InType::kBFloat16: return dispatch_lanes<Kernel, __nv_bfloat16, float>(N, params, stream);
    case InType::kFloat16: return dispatch_lanes<Kernel, __half, float>(N, params, stream);
    case InType::kFloat64: return dispatch_lanes<Kernel, double, double>(N, params, stream);
  }
  return cudaErrorInvalidValue;
}

namespace dev {

constexpr unsigned kFull = 0xffffffffu;
constexpr double kLog2e = 1.4426950408889634;
// Flags of a timestep in the window metadata word (bits 0-2); the segment length sits above.
constexpr int kSegEnd = 1, kTileStart = 2, kTileEnd = 4, kLenShift = 3;

template <typename in_t, typename acc_t> __device__ __forceinline__ acc_t load(const in_t* p) {
  return static_cast<acc_t>(*p);
}
template <> __device__ __forceinline__ float load<__nv_bfloat16, float>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <> __device__ __forceinline__ float load<__half, float>(const __half* p) { return __half2float(*p); }

template <typename in_t, typename acc_t> __device__ __forceinline__ void store(in_t* p, acc_t v) {
  *p = static_cast<in_t>(v);
}
template <> __device__ __forceinline__ void store<__nv_bfloat16, float>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ void store<__half, float>(__half* p, float v) { *p = __float2half_rn(v); }

// 2^x: the multi-function unit's ex2.approx (relative error ~2^-22) for float32, exp2 for float64.
// The decays exp(Δ·A) are computed as 2^(Δ·A·log2 e) with A·log2 e folded in once per channel.
__device__ __forceinline__ float exp2_fast(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else  // nvcc's host pass parses device code without compiling it; host emulation uses libm
  return exp2f(x);
#endif
}
__device__ __forceinline__ double exp2_fast(double x) { return exp2(x); }

// softplus as in mamba_ssm: x for x > 20 (where log1p(e^x) = x in float32), else log1p(e^x).
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ double softplus(double x) { return x > 20.0 ? x : log1p(exp(x)); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// Sum over the TPC consecutive lanes that hold one channel's state slices.
template <int TPC, typename acc_t> __device__ __forceinline__ acc_t lane_group_sum(acc_t v) {
#pragma unroll
  for (int o = TPC / 2; o >= 1; o /= 2) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Where a thread works (both kernels): block (g·blocks_per_group + jb, b) serves the channels
// [cbase, cbase + nch) of group g of batch row b; thread (cl, ls) is lane ls of the TPC lanes of
// channel cl and holds state components [n0, n0 + K); d is its channel (padding lanes, cl >= nch,
// mirror a real channel and write nothing: !active) and bd = b·dim + d its row of per-channel arrays.
struct BlockPos {
  int g, jb, b, cbase, nch, cl, ls, d, n0;
  bool active;
  long long bd;
};
template <int CH, int TPC> __device__ __forceinline__ BlockPos block_pos(const ScanFwdParams& p) {
  BlockPos r;
  const int bpg = gridDim.x / p.G;
  r.g = blockIdx.x / bpg;
  r.jb = blockIdx.x % bpg;
  r.b = blockIdx.y;
  const int dpg = p.dim / p.G;
  r.cbase = r.g * dpg + r.jb * CH;
  r.nch = min(CH, dpg - r.jb * CH);
  r.cl = threadIdx.x / TPC;
  r.ls = threadIdx.x % TPC;
  r.active = r.cl < r.nch;
  r.d = r.cbase + min(r.cl, r.nch - 1);
  r.n0 = r.ls * kStatesPerThread;
  r.bd = (long long)r.b * p.dim + r.d;
  return r;
}

// One timestep tt of the recurrence over a staged window (both kernels; seed 001 §3.3.1): a
// one-step segment is Mamba's update h ← exp(Δ A) h + Δu B, then the read of the new state; a
// longer segment S reads the state at its start, accumulates Σ Δ, Σ Δu and Σ B, and at its end
// steps once, h ← exp(Δ̄_S A) h + (Σ_S Δu / |S|) Σ_S B (= x_S · B̄_S). Returns this lane's part of
// y_t = C_t·h (summed over the channel's lanes by the caller). `seg_end(dacc, xacc, Bacc, len)` runs
// at the end of a longer segment before its step (the backward records the totals there).
// sB, sC point at this lane's components of timestep tt (staged rows + tt·NP + n0).
template <typename acc_t, typename SegEnd>
__device__ __forceinline__ acc_t segment_step(int meta, acc_t dt, acc_t uu, const acc_t* sB, const acc_t* sC,
                                              const acc_t (&A2)[kStatesPerThread], acc_t (&h)[kStatesPerThread],
                                              acc_t (&Bacc)[kStatesPerThread], acc_t& dacc, acc_t& xacc,
                                              SegEnd seg_end) {
  constexpr int K = kStatesPerThread;
  const int len = meta >> kLenShift;
  acc_t y = 0;
  if (len == 1) {  // a one-step segment: Mamba's update, then the read of the new state
    const acc_t du = dt * uu;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      h[i] = exp2_fast(dt * A2[i]) * h[i] + du * sB[i];
      y += sC[i] * h[i];
    }
  } else {  // a longer segment: read the state at its start, accumulate, update at its end
#pragma unroll
    for (int i = 0; i < K; ++i) {
      y += sC[i] * h[i];
      Bacc[i] += sB[i];
    }
    dacc += dt;
    xacc += dt * uu;
    if (meta & kSegEnd) {
      seg_end(dacc, xacc, Bacc, len);
      const acc_t xs = xacc / (acc_t)len;  // (Σ Δu) · mean B = (Σ Δu / |S|) · Σ B
#pragma unroll
      for (int i = 0; i < K; ++i) {
        h[i] = exp2_fast(dacc * A2[i]) * h[i] + xs * Bacc[i];
        Bacc[i] = 0;
      }
      dacc = 0;
      xacc = 0;
    }
  }
  return y;
}

// Segment of absolute timestep t (the semantics of the extension interface): tile i = t / T of
// length n_i, m_i segments, segment j covering offsets [floor(j n_i / m_i), floor((j+1) n_i / m_i)).
// j is the largest index with floor(j n_i / m_i) <= off, i.e. j = floor(((off+1) m_i - 1) / n_i).
struct SegPos {
  int tile, off, n, s0, s1;  // s0, s1: offsets of the segment within its tile
};
__device__ __forceinline__ SegPos segment_of(long long t, int T, int L, const int* m_row) {
  SegPos r;
  r.tile = (int)(t / T);
  r.off = (int)(t - (long long)r.tile * T);
  r.n = min(T, L - r.tile * T);
  const long long m = m_row[r.tile];
  const long long j = ((long long)(r.off + 1) * m - 1) / r.n;
  r.s0 = (int)(j * r.n / m);
  r.s1 = (int)((j + 1) * r.n / m);
  return r;
}

// Metadata word of timestep t: segment length << kLenShift | flags.
__device__ __forceinline__ int step_meta(const SegPos& s) {
  int f = (s.s1 - s.s0) << kLenShift;
  if (s.off == s.s1 - 1) f |= kSegEnd;
  if (s.off == 0) f |= kTileStart;
  if (s.off == s.n - 1) f |= kTileEnd;
  return f;
}

// Stage one window [w0, w0 + nt) of a block's channels [cbase, cbase + nch) into shared memory:
// Δ_t (bias and softplus applied) and u_t per channel (rows of W + 1 so that the lanes of
// different channels reading one timestep hit different banks), B_t and C_t of the block's group
// transposed to [t][n] with the components n >= S_tile (inactive state dims) and n >= N zeroed, and
// the segment metadata. With the backward's extra arrays (non-null) it also stages σ(Δ_raw) (the
// softplus derivative, or 1), the output gradient and z. Every slot is written (zeros outside the
// data) so that padding lanes compute on zeros.
template <typename in_t, typename acc_t, int CH, int NP, int W>
__device__ __forceinline__ void stage_window(const ScanFwdParams& p, int b, int g, int cbase, int nch, long long w0,
                                             int nt, acc_t* sDt, acc_t* sU, acc_t* sB, acc_t* sC, int* sMeta,
                                             int* sTile, acc_t* sDR, const in_t* dy = nullptr,
                                             acc_t* sDsp = nullptr, acc_t* sG = nullptr, acc_t* sZ = nullptr) {
  constexpr int WP = W + 1;
  const long long row0 = (long long)b * p.n_tiles;
  for (int tt = threadIdx.x; tt < W; tt += blockDim.x) {
    int meta = 0, tile = 0;
    acc_t dr = 0;
    if (tt < nt) {
      const SegPos s = segment_of(w0 + tt, p.tile_size, p.L, p.seg_counts + row0);
      meta = step_meta(s);
      tile = s.tile;
      if (s.tile > 0) {
        const acc_t* R = static_cast<const acc_t*>(p.resolution) + row0;
        dr = R[s.tile] - R[s.tile - 1];
      }
    }
    sMeta[tt] = meta;
    sTile[tt] = tile;
    sDR[tt] = dr;
  }
  const in_t* u = static_cast<const in_t*>(p.u);
  const in_t* delta = static_cast<const in_t*>(p.delta);
  const in_t* z = static_cast<const in_t*>(p.z);
  const acc_t* bias = static_cast<const acc_t*>(p.delta_bias);
  for (int e = threadIdx.x; e < CH * W; e += blockDim.x) {
    const int c = e / W, tt = e % W;
    acc_t dv = 0, uv = 0, sp = 0, gv = 0, zv = 0;
    if (c < nch && tt < nt) {
      const long long idx = ((long long)b * p.dim + cbase + c) * p.L + w0 + tt;
      uv = load<in_t, acc_t>(u + idx);
      dv = load<in_t, acc_t>(delta + idx);
      if (bias) dv += bias[cbase + c];
      sp = 1;
      if (p.delta_softplus) {
        sp = sigmoid(dv);
        dv = softplus(dv);
      }
      if (sG) {
        gv = load<in_t, acc_t>(dy + idx);
        if (z) zv = load<in_t, acc_t>(z + idx);
      }
    }
    sDt[c * WP + tt] = dv;
    sU[c * WP + tt] = uv;
    if (sG) {
      sDsp[c * WP + tt] = sp;
      sG[c * WP + tt] = gv;
      sZ[c * WP + tt] = zv;
    }
  }
  const long long bc0 = ((long long)b * p.G + g) * p.N * p.L;
  const in_t* Bp = static_cast<const in_t*>(p.B) + bc0;
  const in_t* Cp = static_cast<const in_t*>(p.C) + bc0;
  for (int e = threadIdx.x; e < NP * W; e += blockDim.x) {
    const int n = e / W, tt = e % W;
    acc_t bv = 0, cv = 0;
    if (n < p.N && tt < nt) {
      const long long t = w0 + tt;
      if (n < p.state_dims[row0 + t / p.tile_size]) {
        bv = load<in_t, acc_t>(Bp + (long long)n * p.L + t);
        cv = load<in_t, acc_t>(Cp + (long long)n * p.L + t);
      }
    }
    sB[tt * NP + n] = bv;
    sC[tt * NP + n] = cv;
  }
}

}  // namespace dev
}  // namespace tiling_cuda
#endif  // __CUDACC__
