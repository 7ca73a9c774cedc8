// The extension interface of the adaptive selective scan, written once for the CPU extension
// (scan_cpu.cpp) and the CUDA one (scan_cuda.cpp): tiling/ops/scan.py dispatches on the device
// only, so both expose exactly the module that def_scan_module below defines, each with its own
// device functions. What the scan computes is defined by the float64 reference
// (tiling/ops/reference.py, adaptive_selective_scan_ref) and docs/tiling.md ("Semantics").
//
// Notation: Bt = batch, Dm = dim, L = length, N = state size, G = groups of B/C (Dm % G == 0,
// channel d reads group d / (Dm / G)), T = tile_size, NT = ceil(L / T) tiles, tile i covers
// [i*T, min((i+1)*T, L)) of length n_i. "in" = the dtype of u (float32, float64, float16 or
// bfloat16; u, delta, z, B, C all share it), "acc" = float64 if in == float64 else float32.
// All tensors on one device. "opt" = optional: None when absent.
//
// fwd(u            (Bt, Dm, L)      in
//     delta        (Bt, Dm, L)      in      raw delta (softplus applied inside if delta_softplus)
//     A            (Dm, N)          acc
//     B            (Bt, G, N, L)    in      ungrouped (Bt, N, L) is passed as G = 1
//     C            (Bt, G, N, L)    in
//     D            (Dm,)            acc     opt
//     z            (Bt, Dm, L)      in      opt
//     delta_bias   (Dm,)            acc     opt
//     gain         (Dm, N)          acc     opt   boundary_gain
//     init_state   (Bt, Dm, N)      acc     opt   zeros when absent
//     resolution   (Bt, NT)         acc           R_i, read only for the boundary gain
//     seg_counts   (Bt, NT)         int32         m_i = max(1, ceil(R_i n_i)), 1 <= m_i <= n_i;
//                                                 the kernels derive the segment bounds
//                                                 floor(j n_i / m_i) themselves
//     state_dims   (Bt, NT)         int32         S_i in [1, N]
//     ckpt_slot    (Bt, NT)         int32         slot k >= 0 if the state entering tile i (before
//                                                 its boundary transition) is checkpointed in
//                                                 checkpoints[:, :, k], else -1; tile 0 has slot 0,
//                                                 slots increase with i, and at least 64 segments
//                                                 separate two checkpoints (a chunk between them
//                                                 holds fewer than 64 + T segments)
//     n_ckpt       int                            number of slots (max over the batch)
//     tile_size    int                            T >= 1
//     delta_softplus bool
//     return_tile_states bool)
//   -> [y (Bt, Dm, L) in,
//       last_state (Bt, Dm, N) acc              state after the last tile,
//       checkpoints (Bt, Dm, n_ckpt, N) acc     saved for bwd (a batch row's unused slots are zeros),
//       tile_states (Bt, Dm, NT, N) acc         state after each tile (before the next tile's
//                                               boundary transition); empty (numel 0) unless
//                                               return_tile_states]
//
// bwd(dy           (Bt, Dm, L)      in      gradient of y
//     u, delta, A, B, C, D?, z?, delta_bias?, gain?, init_state?,
//     resolution, seg_counts, state_dims, ckpt_slot      exactly as passed to fwd
//     checkpoints  (Bt, Dm, n_ckpt, N) acc  as returned by fwd
//     dlast_state  (Bt, Dm, N)      acc     opt   gradient of last_state
//     dtile_states (Bt, Dm, NT, N)  acc     opt   gradient of tile_states
//     tile_size    int
//     delta_softplus bool)
//   -> [du (Bt, Dm, L) in, ddelta (Bt, Dm, L) in, dA (Dm, N) acc, dB (Bt, G, N, L) in,
//       dC (Bt, G, N, L) in, dD (Dm,) acc, dz (Bt, Dm, L) in, ddelta_bias (Dm,) acc,
//       dgain (Dm, N) acc, dinit_state (Bt, Dm, N) acc]
//   an entry whose input is absent is empty (numel 0). The backward recomputes states chunk by
//   chunk from the checkpoints, never storing the (Bt, Dm, N, L) history. No gradient flows to
//   resolution (it sets integer segment counts); the boundary factor treats R as a constant.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace tiling_scan {

using torch::Tensor;

// The arguments fwd and bwd share; an absent optional one is an undefined tensor.
struct ScanArgs {
  Tensor u, delta, A, B, C, D, z, delta_bias, gain, init_state, resolution, seg_counts, state_dims, ckpt_slot;
  int64_t tile_size;
  bool delta_softplus;
};

// The device functions an extension supplies: the rest of fwd's and bwd's arguments.
using FwdFn = std::vector<Tensor> (*)(const ScanArgs& a, int64_t n_ckpt, bool return_tile_states);
using BwdFn = std::vector<Tensor> (*)(const ScanArgs& a, const Tensor& dy, const Tensor& checkpoints,
                                      const Tensor& dlast_state, const Tensor& dtile_states);

inline at::ScalarType acc_type(const Tensor& u) { return u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// t in dtype dt, contiguous; an absent (undefined) tensor stays absent.
inline Tensor cast(const Tensor& t, at::ScalarType dt) { return t.defined() ? t.to(dt).contiguous() : t; }

inline void def_scan_module(pybind11::module_& m, const char* doc, FwdFn fwd, BwdFn bwd) {
  using Opt = c10::optional<Tensor>;
  const auto val = [](const Opt& t) { return t.value_or(Tensor()); };
  m.doc() = doc;
  m.def(
      "fwd",
      [fwd, val](const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C, const Opt& D,
                 const Opt& z, const Opt& delta_bias, const Opt& gain, const Opt& init_state, const Tensor& resolution,
                 const Tensor& seg_counts, const Tensor& state_dims, const Tensor& ckpt_slot, int64_t n_ckpt,
                 int64_t tile_size, bool delta_softplus, bool return_tile_states) {
        return fwd({u, delta, A, B, C, val(D), val(z), val(delta_bias), val(gain), val(init_state), resolution,
                    seg_counts, state_dims, ckpt_slot, tile_size, delta_softplus},
                   n_ckpt, return_tile_states);
      },
      "adaptive selective scan, forward (interface: kernels_cuda/binding.h)");
  m.def(
      "bwd",
      [bwd, val](const Tensor& dy, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                 const Tensor& C, const Opt& D, const Opt& z, const Opt& delta_bias, const Opt& gain,
                 const Opt& init_state, const Tensor& resolution, const Tensor& seg_counts, const Tensor& state_dims,
                 const Tensor& ckpt_slot, const Tensor& checkpoints, const Opt& dlast_state, const Opt& dtile_states,
                 int64_t tile_size, bool delta_softplus) {
        return bwd({u, delta, A, B, C, val(D), val(z), val(delta_bias), val(gain), val(init_state), resolution,
                    seg_counts, state_dims, ckpt_slot, tile_size, delta_softplus},
                   dy, checkpoints, val(dlast_state), val(dtile_states));
      },
      "adaptive selective scan, backward (interface: kernels_cuda/binding.h)");
}

}  // namespace tiling_scan
