// Backward kernel of the CUDA resolution-adaptive selective scan (seed 001 §3.2, §3.3.1, §3.4
// step 3): gradients for u, delta, A, B, C, D, z, delta_bias, boundary_gain and the initial state
// (and through last_state / tile_states), recomputing the forward from the saved checkpoints.
//
// Adjoint of one segment S (one recurrence step h_S = a_S ⊙ h_{S−1} + x_S B̄_S with
// a_S = exp(Δ̄_S A), Δ̄_S = Σ_S Δ_t, x_S = Σ_S Δ_t u_t, B̄_S = mean_S B_t), with λ = ∂L/∂h_S:
//   ∂L/∂A     += λ ⊙ h_{S−1} ⊙ a_S · Δ̄_S          ∂L/∂Δ̄_S = Σ_n λ h_{S−1} a_S A
//   ∂L/∂x_S    = Σ_n λ B̄_S                         ∂L/∂B_t = λ x_S / |S|   (t ∈ S)
//   ∂L/∂Δ_t    = ∂L/∂Δ̄_S + ∂L/∂x_S u_t             ∂L/∂u_t = ∂L/∂x_S Δ_t + D ∂L/∂y_t
//   λ_{S−1}    = a_S ⊙ λ + Σ_{t ∈ S, reads h_{S−1}} ∂L/∂y_t C_t
// The read of h_S by a one-step segment adds ∂L/∂y_t C_t to λ before the step's adjoint; the
// boundary transition h ← h ⊙ exp(g (R_i − R_{i−1})) gives ∂L/∂g += λ ⊙ h_after (R_i − R_{i−1})
// and λ ← λ ⊙ exp(g (R_i − R_{i−1})). Since λ_S is complete when the reverse sweep reaches the
// end of S, every t ∈ S gets its gradient in one reverse pass, carrying (∂L/∂Δ̄_S, ∂L/∂x_S,
// λ x_S / |S|) across window boundaries.
//
// Schedule per block (channels as in the forward): chunks between two checkpoints (tiles
// [ta, te)) in reverse order; for each, phase 1 runs the forward from the checkpoint and stores
// the state at every window start in a global scratch (one state slice per thread and window);
// phase 2 takes the windows in reverse: stage the inputs, recompute the window forward storing the
// state before each timestep's segment in shared memory (plus the segment totals, y and hence
// ∂L/∂z), then the reverse sweep. The (batch, dim, N, L) state history never exists: per block
// the shared memory holds one window of it. dB and dC are reduced over the channels of a warp by
// a reduce-scatter, over the block's warps by shared atomics, and added to global memory with
// atomics; with `deterministic`, each warp keeps its own shared rows, summed in a fixed order
// into per-block partials that the caller sums in a fixed order (no atomics anywhere). dA, dD, d delta_bias, d gain are per batch row partials (no
// atomics) summed by the caller.
#include "scan_params.h"

namespace tiling_cuda {
namespace {

using namespace dev;
constexpr int K = kStatesPerThread;

template <typename acc_t, int TPC, int W>
struct BwdLayout {
  static constexpr int CH = Blocking<TPC>::kChannels;
  static constexpr int BT = Blocking<TPC>::kBlockThreads;
  static constexpr int NP = TPC * K;
  static constexpr int WP = W + 1;
  static constexpr int kH = 0;                       // [W][BT][K] state before each timestep's segment
  static constexpr int kChan = kH + W * BT * K;      // 9 arrays [CH][WP]
  static constexpr int kState = kChan + 9 * CH * WP;  // 3 arrays [W][NP]: B, C, B̄
  static constexpr int kDR = kState + 3 * W * NP;    // [W]
  static constexpr int kInts = kDR + W;              // 2 int arrays [W] in acc-sized slots
  static constexpr int kRed = kInts + 2 * W;         // dB, dC sums: [W][NP], or [warp][W][NP] if deterministic
  static constexpr int kWarps = BT / 32;
  __host__ __device__ static constexpr int red_size(bool det) { return (det ? kWarps : 1) * W * NP; }
  __host__ __device__ static constexpr size_t bytes(bool det) { return sizeof(acc_t) * (kRed + 2 * red_size(det)); }
};

// Sum v (this lane's K state components) over the channels of the warp into the shared row
// srow[n]: a reduce-scatter (each level halves the values a lane carries) followed by a butterfly
// for the remaining channel bits, so each lane ends with one fully reduced component. `add`:
// shared atomics into a row common to the block's warps (order-dependent rounding); otherwise a
// plain store into the warp's own row (deterministic; the rows are summed in a fixed order).
template <typename acc_t>
__device__ __forceinline__ void put(acc_t* p, acc_t v, bool add) {
  if (add)
    atomicAdd(p, v);
  else
    *p = v;
}
template <int TPC, typename acc_t>
__device__ __forceinline__ void channel_reduce_add(const acc_t (&v)[K], acc_t* srow, int n0, int lane, bool add) {
  constexpr int CPW = 32 / TPC;  // channels per warp
  static_assert(K == 4, "the reduce-scatter below assumes four components per lane");
  if constexpr (CPW == 1) {
#pragma unroll
    for (int i = 0; i < K; ++i) put(srow + n0 + i, v[i], add);
  } else {
    const int cb = lane / TPC;
    const bool b0 = cb & 1;
    acc_t k0 = b0 ? v[2] : v[0], k1 = b0 ? v[3] : v[1];
    const acc_t s0 = b0 ? v[0] : v[2], s1 = b0 ? v[1] : v[3];
    k0 += __shfl_xor_sync(kFull, s0, TPC);
    k1 += __shfl_xor_sync(kFull, s1, TPC);
    int idx = n0 + (b0 ? 2 : 0);
    if constexpr (CPW == 2) {
      put(srow + idx, k0, add);
      put(srow + idx + 1, k1, add);
    } else {
      const bool b1 = (cb >> 1) & 1;
      acc_t k = b1 ? k1 : k0;
      const acc_t s = b1 ? k0 : k1;
      k += __shfl_xor_sync(kFull, s, 2 * TPC);
      idx += b1 ? 1 : 0;
#pragma unroll
      for (int o = 4 * TPC; o < 32; o *= 2) k += __shfl_xor_sync(kFull, k, o);
      if ((cb >> 2) == 0) put(srow + idx, k, add);
    }
  }
}

// Forward recurrence over one staged window (as in scan_fwd.cu). With kRecord it also stores the
// state before each timestep's segment (sH), the totals Δ̄_S, x_S of segments longer than one
// (sSegD, sSegX at their last timestep; B̄_S in sBbar, written by the block's first channel), and
// turns the staged output gradient into ∂L/∂y_pre (sG) and ∂L/∂z (sZ).
template <int TPC, int W, bool kRecord, typename acc_t>
__device__ __forceinline__ void fwd_window(int nt, acc_t (&h)[K], acc_t (&Bacc)[K], acc_t& dacc, acc_t& xacc,
                                           const acc_t (&A2)[K], const acc_t (&G2)[K], bool has_gain,
                                           const acc_t* sDt, const acc_t* sU, const acc_t* sB, const acc_t* sC,
                                           const int* sMeta, const int* sTile, const acc_t* sDR, int cl, int ls,
                                           int n0, acc_t* sH, acc_t* sSegD, acc_t* sSegX, acc_t* sBbar,
                                           acc_t* sG, acc_t* sZ, acc_t Dd, bool has_z) {
  constexpr int NP = TPC * K, WP = W + 1, BT = Blocking<TPC>::kBlockThreads;
  for (int tt = 0; tt < nt; ++tt) {
    const int meta = sMeta[tt];
    if ((meta & kTileStart) && has_gain && sTile[tt] > 0) {
      const acc_t dr = sDR[tt];
#pragma unroll
      for (int i = 0; i < K; ++i) h[i] *= exp2_fast(G2[i] * dr);
    }
    if constexpr (kRecord) {
#pragma unroll
      for (int i = 0; i < K; ++i) sH[(tt * BT + threadIdx.x) * K + i] = h[i];
    }
    const acc_t uu = sU[cl * WP + tt];
    acc_t y = segment_step(meta, sDt[cl * WP + tt], uu, sB + tt * NP + n0, sC + tt * NP + n0, A2, h, Bacc, dacc, xacc,
                           [&](const acc_t& dsum, const acc_t& xsum, const acc_t(&Bsum)[K], int len) {
                             if constexpr (kRecord) {  // the segment's totals, for the reverse sweep
                               if (ls == 0) {
                                 sSegD[cl * WP + tt] = dsum;
                                 sSegX[cl * WP + tt] = xsum;
                               }
                               if (cl == 0) {
#pragma unroll
                                 for (int i = 0; i < K; ++i) sBbar[tt * NP + n0 + i] = Bsum[i] / (acc_t)len;
                               }
                             }
                           });
    if constexpr (kRecord) {
      if (has_z) {  // ∂L/∂z = g · y_pre · silu'(z), ∂L/∂y_pre = g · silu(z)
        y = lane_group_sum<TPC>(y);
        if (ls == 0) {
          const acc_t ypre = y + Dd * uu;
          const acc_t zv = sZ[cl * WP + tt], gv = sG[cl * WP + tt];
          const acc_t sg = sigmoid(zv);
          sZ[cl * WP + tt] = gv * ypre * sg * (acc_t(1) + zv * (acc_t(1) - sg));
          sG[cl * WP + tt] = gv * zv * sg;
        }
      }
    }
  }
}

template <typename in_t, typename acc_t, int TPC, int W>
__global__ void __launch_bounds__(Blocking<TPC>::kBlockThreads) scan_bwd_kernel(const ScanBwdParams q) {
  using Lay = BwdLayout<acc_t, TPC, W>;
  constexpr int CH = Lay::CH, BT = Lay::BT, NP = Lay::NP, WP = Lay::WP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sm = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* sH = sm + Lay::kH;
  acc_t* sDt = sm + Lay::kChan;
  acc_t* sU = sDt + CH * WP;
  acc_t* sDsp = sU + CH * WP;
  acc_t* sG = sDsp + CH * WP;
  acc_t* sZ = sG + CH * WP;
  acc_t* sDdel = sZ + CH * WP;
  acc_t* sDu = sDdel + CH * WP;
  acc_t* sSegD = sDu + CH * WP;
  acc_t* sSegX = sSegD + CH * WP;
  acc_t* sB = sm + Lay::kState;
  acc_t* sC = sB + W * NP;
  acc_t* sBbar = sC + W * NP;
  acc_t* sDR = sm + Lay::kDR;
  int* sMeta = reinterpret_cast<int*>(sm + Lay::kInts);
  int* sTile = sMeta + W;
  const bool det = q.deterministic;
  const int red = Lay::red_size(det);
  acc_t* sdB = sm + Lay::kRed;
  acc_t* sdC = sdB + red;
  const int wrow = det ? (threadIdx.x >> 5) * W * NP : 0;  // this warp's dB/dC rows

  const ScanFwdParams& p = q.f;
  const auto [g, jb, b, cbase, nch, cl, ls, d, n0, active, bd] = block_pos<CH, TPC>(p);
  const int tid = threadIdx.x, lane = tid & 31;
  const int N = p.N, T = p.tile_size;
  const long long L = p.L;
  const long long row0 = (long long)b * p.n_tiles;

  const acc_t* A = static_cast<const acc_t*>(p.A);
  const acc_t* gain = static_cast<const acc_t*>(p.gain);
  const acc_t* dlast = static_cast<const acc_t*>(q.dlast_state);
  const acc_t* dtiles = static_cast<const acc_t*>(q.dtile_states);
  const acc_t* bias = static_cast<const acc_t*>(p.delta_bias);
  const acc_t Dd = p.D ? static_cast<const acc_t*>(p.D)[d] : acc_t(0);
  const bool has_gain = gain != nullptr, has_z = p.z != nullptr;
  acc_t A2[K], Af[K], G2[K], lam[K], dAa[K], dGa[K], cBco[K], h[K], Bacc[K];
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int n = n0 + i;
    Af[i] = n < N ? A[(long long)d * N + n] : acc_t(0);
    A2[i] = Af[i] * (acc_t)kLog2e;
    G2[i] = (has_gain && n < N) ? gain[(long long)d * N + n] * (acc_t)kLog2e : acc_t(0);
    lam[i] = (dlast && active && n < N) ? dlast[bd * N + n] : acc_t(0);
    dAa[i] = dGa[i] = cBco[i] = h[i] = Bacc[i] = 0;
  }
  acc_t dDa = 0, dbias = 0, cDbar = 0, cDx = 0, dacc = 0, xacc = 0;

  const int nwmax = (q.max_chunk_len + W - 1) / W;
  acc_t* scr = static_cast<acc_t*>(q.scratch) + ((long long)b * gridDim.x + blockIdx.x) * nwmax * BT * K;
  const acc_t* ckpt = static_cast<const acc_t*>(q.checkpoints);
  const in_t* u = static_cast<const in_t*>(p.u);
  const in_t* delta = static_cast<const in_t*>(p.delta);
  const in_t* dy = static_cast<const in_t*>(q.dy);
  const long long bc0 = ((long long)b * p.G + g) * N * L;
  const in_t* Bg = static_cast<const in_t*>(p.B) + bc0;

  int tile_end = p.n_tiles;
  while (tile_end > 0) {
    int ta = tile_end - 1;
    while (ta > 0 && p.ckpt_slot[row0 + ta] < 0) --ta;
    const int slot = p.ckpt_slot[row0 + ta];
    const long long c0 = (long long)ta * T, c1 = min((long long)tile_end * T, L);
    const int nw = (int)((c1 - c0 + W - 1) / W);

    // Phase 1: forward from the checkpoint, saving the state at every window start.
#pragma unroll
    for (int i = 0; i < K; ++i) {
      h[i] = (active && n0 + i < N) ? ckpt[(bd * p.n_ckpt + slot) * N + n0 + i] : acc_t(0);
      Bacc[i] = 0;  // a chunk starts at a tile start: no segment is open
    }
    dacc = 0;
    xacc = 0;
    for (int w = 0; w < nw; ++w) {
#pragma unroll
      for (int i = 0; i < K; ++i) scr[((long long)w * BT + tid) * K + i] = h[i];
      if (w == nw - 1) break;
      const long long w0 = c0 + (long long)w * W;
      const int nt = (int)min((long long)W, c1 - w0);
      __syncthreads();
      stage_window<in_t, acc_t, CH, NP, W>(p, b, g, cbase, nch, w0, nt, sDt, sU, sB, sC, sMeta, sTile, sDR);
      __syncthreads();
      fwd_window<TPC, W, false, acc_t>(nt, h, Bacc, dacc, xacc, A2, G2, has_gain, sDt, sU, sB, sC, sMeta, sTile, sDR, cl,
                                ls, n0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, Dd, false);
    }

    // Phase 2: windows in reverse.
    for (int w = nw - 1; w >= 0; --w) {
      const long long w0 = c0 + (long long)w * W;
      const int nt = (int)min((long long)W, c1 - w0);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        h[i] = scr[((long long)w * BT + tid) * K + i];
        Bacc[i] = 0;
      }
      dacc = 0;
      xacc = 0;
      {  // a segment that began in the previous window: recompute its partial sums
        const SegPos s = segment_of(w0, T, p.L, p.seg_counts + row0);
        const long long sabs = (long long)s.tile * T + s.s0;
        if (sabs < w0) {
          const int kdim = p.state_dims[row0 + s.tile];
          for (long long t = sabs; t < w0; ++t) {
            acc_t dv = load<in_t, acc_t>(delta + bd * L + t);
            if (bias) dv += bias[d];
            if (p.delta_softplus) dv = softplus(dv);
            dacc += dv;
            xacc += dv * load<in_t, acc_t>(u + bd * L + t);
#pragma unroll
            for (int i = 0; i < K; ++i)
              if (n0 + i < N && n0 + i < kdim) Bacc[i] += load<in_t, acc_t>(Bg + (long long)(n0 + i) * L + t);
          }
        }
      }
      __syncthreads();
      stage_window<in_t, acc_t, CH, NP, W>(p, b, g, cbase, nch, w0, nt, sDt, sU, sB, sC, sMeta, sTile, sDR, dy,
                                           sDsp, sG, sZ);
      for (int e = tid; e < red; e += BT) {
        sdB[e] = 0;
        sdC[e] = 0;
      }
      __syncthreads();
      fwd_window<TPC, W, true, acc_t>(nt, h, Bacc, dacc, xacc, A2, G2, has_gain, sDt, sU, sB, sC, sMeta, sTile, sDR, cl, ls,
                               n0, sH, sSegD, sSegX, sBbar, sG, sZ, Dd, has_z);
      __syncthreads();

      for (int tt = nt - 1; tt >= 0; --tt) {
        const int meta = sMeta[tt];
        const int len = meta >> kLenShift;
        if ((meta & kTileEnd) && dtiles && active) {
          const int tile = sTile[tt];
#pragma unroll
          for (int i = 0; i < K; ++i)
            if (n0 + i < N) lam[i] += dtiles[(bd * p.n_tiles + tile) * N + n0 + i];
        }
        acc_t P[K], dCc[K];
#pragma unroll
        for (int i = 0; i < K; ++i) P[i] = sH[(tt * BT + tid) * K + i];
        const acc_t dt = sDt[cl * WP + tt], uu = sU[cl * WP + tt], dyv = sG[cl * WP + tt];
        if (meta & kSegEnd) {  // λ = ∂L/∂h_S is complete: the step's adjoint
          acc_t Dbar, xs, a[K], Bb[K];
          if (len == 1) {
            Dbar = dt;
            xs = dt * uu;
#pragma unroll
            for (int i = 0; i < K; ++i) {
              Bb[i] = sB[tt * NP + n0 + i];
              a[i] = exp2_fast(dt * A2[i]);
              dCc[i] = dyv * (a[i] * P[i] + xs * Bb[i]);  // y_t reads h_S
              lam[i] += dyv * sC[tt * NP + n0 + i];
            }
          } else {
            Dbar = sSegD[cl * WP + tt];
            xs = sSegX[cl * WP + tt];
#pragma unroll
            for (int i = 0; i < K; ++i) {
              Bb[i] = sBbar[tt * NP + n0 + i];
              a[i] = exp2_fast(Dbar * A2[i]);
            }
          }
          const acc_t inv = acc_t(1) / (acc_t)len;
          acc_t pdb = 0, pdx = 0;
#pragma unroll
          for (int i = 0; i < K; ++i) {
            const acc_t da = lam[i] * P[i] * a[i];
            dAa[i] += da * Dbar;
            pdb += da * Af[i];
            pdx += lam[i] * Bb[i];
            cBco[i] = lam[i] * xs * inv;
            lam[i] *= a[i];
          }
          cDbar = lane_group_sum<TPC>(pdb);
          cDx = lane_group_sum<TPC>(pdx);
        }
        if (len > 1) {  // y_t reads h_{S−1}
#pragma unroll
          for (int i = 0; i < K; ++i) {
            dCc[i] = dyv * P[i];
            lam[i] += dyv * sC[tt * NP + n0 + i];
          }
        }
        if (ls == 0) {
          const acc_t ddt = cDbar + cDx * uu;
          const acc_t ddraw = ddt * sDsp[cl * WP + tt];
          sDdel[cl * WP + tt] = ddraw;
          sDu[cl * WP + tt] = cDx * dt + Dd * dyv;
          dDa += dyv * uu;
          dbias += ddraw;
        }
        channel_reduce_add<TPC>(dCc, sdC + wrow + tt * NP, n0, lane, !det);
        channel_reduce_add<TPC>(cBco, sdB + wrow + tt * NP, n0, lane, !det);
        if ((meta & kTileStart) && has_gain && sTile[tt] > 0) {  // P is the state after the transition
          const acc_t dr = sDR[tt];
#pragma unroll
          for (int i = 0; i < K; ++i) {
            dGa[i] += lam[i] * P[i] * dr;
            lam[i] *= exp2_fast(G2[i] * dr);
          }
        }
      }
      __syncthreads();

      in_t* du = static_cast<in_t*>(q.du);
      in_t* ddelta = static_cast<in_t*>(q.ddelta);
      in_t* dz = static_cast<in_t*>(q.dz);
      for (int e = tid; e < CH * W; e += BT) {
        const int c = e / W, tt = e % W;
        if (c < nch && tt < nt) {
          const long long idx = ((long long)b * p.dim + cbase + c) * L + w0 + tt;
          store<in_t, acc_t>(du + idx, sDu[c * WP + tt]);
          store<in_t, acc_t>(ddelta + idx, sDdel[c * WP + tt]);
          if (has_z) store<in_t, acc_t>(dz + idx, sZ[c * WP + tt]);
        }
      }
      acc_t* dBo = static_cast<acc_t*>(q.dB);
      acc_t* dCo = static_cast<acc_t*>(q.dC);
      const long long obase = q.deterministic ? (((long long)jb * p.batch + b) * p.G + g) * N * L : bc0;
      for (int e = tid; e < NP * W; e += BT) {
        const int n = e / W, tt = e % W;
        if (n < N && tt < nt) {
          const long long t = w0 + tt;
          const bool act = n < p.state_dims[row0 + t / T];  // inactive components have no B, C
          acc_t vb = 0, vc = 0;
          if (act) {
            const int nw_red = det ? Lay::kWarps : 1;
            for (int wi = 0; wi < nw_red; ++wi) {  // fixed order
              vb += sdB[wi * W * NP + tt * NP + n];
              vc += sdC[wi * W * NP + tt * NP + n];
            }
          }
          const long long o = obase + (long long)n * L + t;
          if (q.deterministic) {
            dBo[o] = vb;
            dCo[o] = vc;
          } else {
            atomicAdd(dBo + o, vb);
            atomicAdd(dCo + o, vc);
          }
        }
      }
    }
    tile_end = ta;
  }

  if (active) {
    acc_t* dA_part = static_cast<acc_t*>(q.dA_part);
    acc_t* dg_part = static_cast<acc_t*>(q.dgain_part);
    acc_t* dinit = static_cast<acc_t*>(q.dinit_state);
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int n = n0 + i;
      if (n < N) {
        dA_part[bd * N + n] = dAa[i];
        dg_part[bd * N + n] = dGa[i];
        dinit[bd * N + n] = lam[i];
      }
    }
    if (ls == 0) {
      static_cast<acc_t*>(q.dD_part)[bd] = dDa;
      static_cast<acc_t*>(q.dbias_part)[bd] = dbias;
    }
  }
}

struct Bwd {  // the kernel's launch, for dispatch_scan
  template <typename in_t, typename acc_t, int TPC> static cudaError_t launch(const ScanBwdParams& q, cudaStream_t stream) {
    constexpr int W = sizeof(acc_t) == 8 ? 16 : 32;  // = bwd_window(): the float64 state window halves
    using Lay = BwdLayout<acc_t, TPC, W>;
    auto kernel = scan_bwd_kernel<in_t, acc_t, TPC, W>;
    const size_t bytes = Lay::bytes(q.deterministic);
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err != cudaSuccess) return err;
    kernel<<<scan_grid(q.f), Lay::BT, bytes, stream>>>(q);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t scan_bwd_launch(const ScanBwdParams& q, cudaStream_t stream) {
  return dispatch_scan<Bwd>(q.f.in_type, q.f.N, q, stream);
}

}  // namespace tiling_cuda
