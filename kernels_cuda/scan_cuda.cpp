// CUDA extension of the resolution-adaptive selective scan: the device functions of the interface
// in binding.h (shared with the CPU extension, scan_cpu.cpp). The kernels live in scan_fwd.cu /
// scan_bwd.cu behind the parameter structs of scan_params.h (they need only the CUDA toolkit);
// this file turns tensors into those structs, allocates outputs and scratch, and checks every
// launch. Checkpoints have the CPU layout (the state entering each checkpointed tile, before its
// boundary transition), so the two extensions' saved states are interchangeable.
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <algorithm>
#include <vector>

#include "binding.h"
#include "scan_params.h"

namespace {

using tiling_cuda::InType;
using tiling_scan::acc_type;
using tiling_scan::cast;
using tiling_scan::ScanArgs;
using tiling_scan::Tensor;

InType in_type_of(const Tensor& u) {
  switch (u.scalar_type()) {
    case at::kFloat: return InType::kFloat32;
    case at::kBFloat16: return InType::kBFloat16;
    case at::kHalf: return InType::kFloat16;
    case at::kDouble: return InType::kFloat64;
    default: TORCH_CHECK(false, "tiling_scan_cuda: u must be float32, bfloat16, float16 or float64, got ", u.scalar_type());
  }
  return InType::kFloat32;
}

const void* cptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "tiling_scan_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

// The arguments checked and made contiguous in the kernel's dtypes: u, delta, B, C, z in the input
// dtype, the per-channel tensors and resolution in acc, plans int32.
ScanArgs prepare(const ScanArgs& a) {
  TORCH_CHECK(a.u.is_cuda(), "tiling_scan_cuda: tensors must be on a CUDA device, got ", a.u.device());
  TORCH_CHECK(a.u.dim() == 3, "tiling_scan_cuda: u must be (batch, dim, L)");
  TORCH_CHECK(a.B.dim() == 4 && a.C.dim() == 4, "tiling_scan_cuda: B, C must be (batch, G, N, L)");
  const auto in = a.u.scalar_type();
  const auto acc = acc_type(a.u);
  in_type_of(a.u);
  const ScanArgs x{cast(a.u, in), cast(a.delta, in), cast(a.A, acc), cast(a.B, in), cast(a.C, in), cast(a.D, acc),
                   cast(a.z, in), cast(a.delta_bias, acc), cast(a.gain, acc), cast(a.init_state, acc),
                   cast(a.resolution, acc), cast(a.seg_counts, at::kInt), cast(a.state_dims, at::kInt),
                   cast(a.ckpt_slot, at::kInt), a.tile_size, a.delta_softplus};
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), L = x.u.size(2), N = x.A.size(1), G = x.B.size(1);
  TORCH_CHECK(x.tile_size >= 1, "tiling_scan_cuda: tile_size must be >= 1");
  const int64_t NT = (L + x.tile_size - 1) / x.tile_size;
  TORCH_CHECK(N >= 1 && N <= tiling_cuda::kMaxN, "tiling_scan_cuda: N must lie in [1, ", tiling_cuda::kMaxN, "], got ", N);
  TORCH_CHECK(G >= 1 && Dm % G == 0, "tiling_scan_cuda: B/C groups must divide dim");
  TORCH_CHECK(x.B.sizes() == at::IntArrayRef({Bt, G, N, L}) && x.C.sizes() == x.B.sizes(),
              "tiling_scan_cuda: B, C must be (batch, G, N, L) = (", Bt, ", ", G, ", ", N, ", ", L, ")");
  for (const Tensor* t : {&x.resolution, &x.seg_counts, &x.state_dims, &x.ckpt_slot})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == Bt && t->size(1) == NT,
                "tiling_scan_cuda: plans must be (batch, ceil(L / tile_size)) = (", Bt, ", ", NT, ")");
  TORCH_CHECK(L <= INT32_MAX && Dm <= INT32_MAX && Bt <= 65535, "tiling_scan_cuda: sizes out of range");
  const auto dev = x.u.device();
  for (const Tensor* t : {&x.delta, &x.A, &x.B, &x.C, &x.D, &x.z, &x.delta_bias, &x.gain, &x.init_state,
                          &x.resolution, &x.seg_counts, &x.state_dims, &x.ckpt_slot})
    TORCH_CHECK(!t->defined() || t->device() == dev, "tiling_scan_cuda: all tensors must be on ", dev);
  return x;
}

tiling_cuda::ScanFwdParams make_params(const ScanArgs& x, int64_t n_ckpt) {
  tiling_cuda::ScanFwdParams p{};
  p.batch = (int)x.u.size(0);
  p.dim = (int)x.u.size(1);
  p.L = (int)x.u.size(2);
  p.N = (int)x.A.size(1);
  p.G = (int)x.B.size(1);
  p.tile_size = (int)std::min<int64_t>(x.tile_size, INT32_MAX);
  p.n_tiles = (int)x.seg_counts.size(1);
  p.n_ckpt = (int)n_ckpt;
  p.delta_softplus = x.delta_softplus;
  p.in_type = in_type_of(x.u);
  p.u = cptr(x.u);
  p.delta = cptr(x.delta);
  p.B = cptr(x.B);
  p.C = cptr(x.C);
  p.z = cptr(x.z);
  p.A = cptr(x.A);
  p.D = cptr(x.D);
  p.delta_bias = cptr(x.delta_bias);
  p.gain = cptr(x.gain);
  p.init_state = cptr(x.init_state);
  p.resolution = cptr(x.resolution);
  p.seg_counts = x.seg_counts.data_ptr<int>();
  p.state_dims = x.state_dims.data_ptr<int>();
  p.ckpt_slot = x.ckpt_slot.data_ptr<int>();
  return p;
}

std::vector<Tensor> fwd(const ScanArgs& a, int64_t n_ckpt, bool return_tile_states) {
  c10::cuda::CUDAGuard guard(a.u.device());
  const ScanArgs x = prepare(a);
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), N = x.A.size(1), NT = x.seg_counts.size(1);
  TORCH_CHECK(n_ckpt >= 1, "tiling_scan_cuda: n_ckpt must be >= 1");
  const auto opts = x.u.options().dtype(acc_type(x.u));
  Tensor y = torch::empty_like(x.u);
  Tensor last = torch::empty({Bt, Dm, N}, opts);
  Tensor ck = torch::zeros({Bt, Dm, n_ckpt, N}, opts);
  Tensor tiles = return_tile_states ? torch::empty({Bt, Dm, NT, N}, opts) : torch::empty({0}, opts);
  tiling_cuda::ScanFwdParams p = make_params(x, n_ckpt);
  p.y = y.data_ptr();
  p.last_state = last.data_ptr();
  p.checkpoints = ck.data_ptr();
  p.tile_states = return_tile_states ? tiles.data_ptr() : nullptr;
  check_cuda(tiling_cuda::scan_fwd_launch(p, c10::cuda::getCurrentCUDAStream().stream()), "forward launch");
  return {y, last, ck, tiles};
}

// Longest run of timesteps between two checkpointed tile starts (sizes the backward's scratch).
int max_chunk_len(const Tensor& slot, int64_t L, int64_t T) {
  const Tensor s = slot.to(at::kCPU);
  const int* sp = s.data_ptr<int>();
  const int64_t Bt = s.size(0), NT = s.size(1);
  int64_t best = 0;
  for (int64_t b = 0; b < Bt; ++b) {
    int64_t start = 0;
    for (int64_t i = 1; i <= NT; ++i) {
      if (i == NT || sp[b * NT + i] >= 0) {
        best = std::max(best, std::min(i * T, L) - start * T);
        start = i;
      }
    }
  }
  return (int)best;
}

std::vector<Tensor> bwd(const ScanArgs& a, const Tensor& dy_, const Tensor& ck_, const Tensor& dlast_,
                        const Tensor& dtiles_) {
  c10::cuda::CUDAGuard guard(a.u.device());
  const ScanArgs x = prepare(a);
  const auto in = x.u.scalar_type();
  const auto acc = acc_type(x.u);
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), L = x.u.size(2), N = x.A.size(1), G = x.B.size(1);
  const int64_t NT = x.seg_counts.size(1);
  const Tensor dy = cast(dy_, in), ck = cast(ck_, acc), dlast = cast(dlast_, acc), dtiles = cast(dtiles_, acc);
  TORCH_CHECK(dy.sizes() == x.u.sizes(), "tiling_scan_cuda: dy must have the shape of y");
  TORCH_CHECK(ck.dim() == 4 && ck.size(0) == Bt && ck.size(1) == Dm && ck.size(3) == N,
              "tiling_scan_cuda: checkpoints must be (batch, dim, n_ckpt, N) as returned by fwd");
  TORCH_CHECK(!dlast.defined() || dlast.sizes() == at::IntArrayRef({Bt, Dm, N}), "tiling_scan_cuda: dlast_state shape");
  TORCH_CHECK(!dtiles.defined() || dtiles.sizes() == at::IntArrayRef({Bt, Dm, NT, N}), "tiling_scan_cuda: dtile_states shape");

  const auto opts = x.u.options().dtype(acc);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int bpg = tiling_cuda::blocks_per_group((int)Dm, (int)G, (int)N);
  const int chunk = max_chunk_len(x.ckpt_slot, L, x.tile_size);
  Tensor du = torch::empty_like(x.u), ddelta = torch::empty_like(x.u);
  Tensor dz = x.z.defined() ? torch::empty_like(x.u) : Tensor();
  Tensor dB = deterministic ? torch::empty({bpg, Bt, G, N, L}, opts) : torch::zeros({Bt, G, N, L}, opts);
  Tensor dC = deterministic ? torch::empty({bpg, Bt, G, N, L}, opts) : torch::zeros({Bt, G, N, L}, opts);
  Tensor dA = torch::empty({Bt, Dm, N}, opts), dgain = torch::empty({Bt, Dm, N}, opts);
  Tensor dD = torch::empty({Bt, Dm}, opts), dbias = torch::empty({Bt, Dm}, opts);
  Tensor dinit = torch::empty({Bt, Dm, N}, opts);
  Tensor scratch = torch::empty(
      {tiling_cuda::scan_bwd_scratch_elems((int)Bt, (int)Dm, (int)G, (int)N, chunk, in_type_of(x.u))}, opts);

  tiling_cuda::ScanBwdParams q{};
  q.f = make_params(x, ck.size(2));
  q.checkpoints = ck.data_ptr();
  q.dy = dy.data_ptr();
  q.dlast_state = cptr(dlast);
  q.dtile_states = cptr(dtiles);
  q.du = du.data_ptr();
  q.ddelta = ddelta.data_ptr();
  q.dz = dz.defined() ? dz.data_ptr() : nullptr;
  q.dB = dB.data_ptr();
  q.dC = dC.data_ptr();
  q.deterministic = deterministic;
  q.dA_part = dA.data_ptr();
  q.dgain_part = dgain.data_ptr();
  q.dD_part = dD.data_ptr();
  q.dbias_part = dbias.data_ptr();
  q.dinit_state = dinit.data_ptr();
  q.scratch = scratch.data_ptr();
  q.max_chunk_len = chunk;
  check_cuda(tiling_cuda::scan_bwd_launch(q, c10::cuda::getCurrentCUDAStream().stream()), "backward launch");

  if (deterministic) {  // per-block partials summed in a fixed order
    dB = dB.sum(0);
    dC = dC.sum(0);
  }
  const Tensor empty = torch::empty({0}, opts);
  return {du,
          ddelta,
          dA.sum(0),
          dB.to(in),
          dC.to(in),
          x.D.defined() ? dD.sum(0) : empty,
          x.z.defined() ? dz : empty,
          x.delta_bias.defined() ? dbias.sum(0) : empty,
          x.gain.defined() ? dgain.sum(0) : empty,
          x.init_state.defined() ? dinit : empty};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  tiling_scan::def_scan_module(m, "tiling: CUDA kernel of the resolution-adaptive selective scan (deterministic "
                               "dB/dC under torch.use_deterministic_algorithms(True))", fwd, bwd);
}
