// PyTorch binding of the CUDA resolution-adaptive selective scan (seed 001 §3.2–3.4).
//
// Exposes `fwd` and `bwd` with exactly the signatures of the "Extension interface" block at the
// top of scan_cpu.cpp, so tiling/ops/scan.py dispatches on the device only. The kernels live in
// scan_fwd.cu / scan_bwd.cu behind the parameter structs of scan_params.h (they need only the
// CUDA toolkit); this file turns tensors into those structs, allocates outputs and scratch, and
// checks every launch. Checkpoints have the CPU layout (the state entering each checkpointed tile,
// before its boundary transition), so the two extensions' saved states are interchangeable.
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "scan_params.h"

namespace {

using c10::optional;
using torch::Tensor;
using tiling_cuda::InType;

at::ScalarType acc_type(const Tensor& u) { return u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

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

Tensor as_acc(const Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }
Tensor opt_acc(const optional<Tensor>& t, at::ScalarType acc) {
  return (t.has_value() && t->defined()) ? as_acc(*t, acc) : Tensor();
}
Tensor opt_in(const optional<Tensor>& t, at::ScalarType in) {
  return (t.has_value() && t->defined()) ? t->to(in).contiguous() : Tensor();
}
const void* cptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "tiling_scan_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

// Inputs made contiguous and of the kernel's dtypes; plans int32, resolution in acc.
struct Inputs {
  Tensor u, delta, A, B, C, D, z, bias, gain, init, R, seg, sd, slot;
};

Inputs prepare(const Tensor& u_, const Tensor& delta_, const Tensor& A_, const Tensor& B_, const Tensor& C_,
               const optional<Tensor>& D_, const optional<Tensor>& z_, const optional<Tensor>& bias_,
               const optional<Tensor>& gain_, const optional<Tensor>& init_, const Tensor& R_, const Tensor& seg_,
               const Tensor& sd_, const Tensor& slot_, int64_t tile_size) {
  TORCH_CHECK(u_.is_cuda(), "tiling_scan_cuda: tensors must be on a CUDA device, got ", u_.device());
  TORCH_CHECK(u_.dim() == 3, "tiling_scan_cuda: u must be (batch, dim, L)");
  TORCH_CHECK(B_.dim() == 4 && C_.dim() == 4, "tiling_scan_cuda: B, C must be (batch, G, N, L)");
  const auto in = u_.scalar_type();
  const auto acc = acc_type(u_);
  in_type_of(u_);
  Inputs x;
  x.u = u_.contiguous();
  x.delta = delta_.to(in).contiguous();
  x.B = B_.to(in).contiguous();
  x.C = C_.to(in).contiguous();
  x.z = opt_in(z_, in);
  x.A = as_acc(A_, acc);
  x.D = opt_acc(D_, acc);
  x.bias = opt_acc(bias_, acc);
  x.gain = opt_acc(gain_, acc);
  x.init = opt_acc(init_, acc);
  x.R = as_acc(R_, acc);
  x.seg = seg_.to(at::kInt).contiguous();
  x.sd = sd_.to(at::kInt).contiguous();
  x.slot = slot_.to(at::kInt).contiguous();
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), L = x.u.size(2), N = x.A.size(1), G = x.B.size(1);
  TORCH_CHECK(tile_size >= 1, "tiling_scan_cuda: tile_size must be >= 1");
  const int64_t NT = (L + tile_size - 1) / tile_size;
  TORCH_CHECK(N >= 1 && N <= tiling_cuda::kMaxN, "tiling_scan_cuda: N must lie in [1, ", tiling_cuda::kMaxN, "], got ", N);
  TORCH_CHECK(G >= 1 && Dm % G == 0, "tiling_scan_cuda: B/C groups must divide dim");
  TORCH_CHECK(x.B.sizes() == at::IntArrayRef({Bt, G, N, L}) && x.C.sizes() == x.B.sizes(),
              "tiling_scan_cuda: B, C must be (batch, G, N, L) = (", Bt, ", ", G, ", ", N, ", ", L, ")");
  for (const Tensor* t : {&x.R, &x.seg, &x.sd, &x.slot})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == Bt && t->size(1) == NT,
                "tiling_scan_cuda: plans must be (batch, ceil(L / tile_size)) = (", Bt, ", ", NT, ")");
  TORCH_CHECK(L <= INT32_MAX && Dm <= INT32_MAX && Bt <= 65535, "tiling_scan_cuda: sizes out of range");
  const auto dev = x.u.device();
  for (const Tensor* t : {&x.delta, &x.A, &x.B, &x.C, &x.D, &x.z, &x.bias, &x.gain, &x.init, &x.R, &x.seg, &x.sd, &x.slot})
    TORCH_CHECK(!t->defined() || t->device() == dev, "tiling_scan_cuda: all tensors must be on ", dev);
  return x;
}

tiling_cuda::ScanFwdParams make_params(const Inputs& x, int64_t n_ckpt, int64_t tile_size, bool softplus) {
  tiling_cuda::ScanFwdParams p{};
  p.batch = (int)x.u.size(0);
  p.dim = (int)x.u.size(1);
  p.L = (int)x.u.size(2);
  p.N = (int)x.A.size(1);
  p.G = (int)x.B.size(1);
  p.tile_size = (int)std::min<int64_t>(tile_size, INT32_MAX);
  p.n_tiles = (int)x.seg.size(1);
  p.n_ckpt = (int)n_ckpt;
  p.delta_softplus = softplus;
  p.in_type = in_type_of(x.u);
  p.u = cptr(x.u);
  p.delta = cptr(x.delta);
  p.B = cptr(x.B);
  p.C = cptr(x.C);
  p.z = cptr(x.z);
  p.A = cptr(x.A);
  p.D = cptr(x.D);
  p.delta_bias = cptr(x.bias);
  p.gain = cptr(x.gain);
  p.init_state = cptr(x.init);
  p.resolution = cptr(x.R);
  p.seg_counts = x.seg.data_ptr<int>();
  p.state_dims = x.sd.data_ptr<int>();
  p.ckpt_slot = x.slot.data_ptr<int>();
  return p;
}

std::vector<Tensor> fwd(const Tensor& u_, const Tensor& delta_, const Tensor& A_, const Tensor& B_, const Tensor& C_,
                        const optional<Tensor>& D_, const optional<Tensor>& z_, const optional<Tensor>& bias_,
                        const optional<Tensor>& gain_, const optional<Tensor>& init_, const Tensor& R_,
                        const Tensor& seg, const Tensor& sd, const Tensor& slot, int64_t n_ckpt, int64_t tile_size,
                        bool delta_softplus, bool return_tile_states) {
  c10::cuda::CUDAGuard guard(u_.device());
  const Inputs x = prepare(u_, delta_, A_, B_, C_, D_, z_, bias_, gain_, init_, R_, seg, sd, slot, tile_size);
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), N = x.A.size(1), NT = x.seg.size(1);
  TORCH_CHECK(n_ckpt >= 1, "tiling_scan_cuda: n_ckpt must be >= 1");
  const auto opts = x.u.options().dtype(acc_type(x.u));
  Tensor y = torch::empty_like(x.u);
  Tensor last = torch::empty({Bt, Dm, N}, opts);
  Tensor ck = torch::zeros({Bt, Dm, n_ckpt, N}, opts);
  Tensor tiles = return_tile_states ? torch::empty({Bt, Dm, NT, N}, opts) : torch::empty({0}, opts);
  tiling_cuda::ScanFwdParams p = make_params(x, n_ckpt, tile_size, delta_softplus);
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

std::vector<Tensor> bwd(const Tensor& dy_, const Tensor& u_, const Tensor& delta_, const Tensor& A_, const Tensor& B_,
                        const Tensor& C_, const optional<Tensor>& D_, const optional<Tensor>& z_,
                        const optional<Tensor>& bias_, const optional<Tensor>& gain_, const optional<Tensor>& init_,
                        const Tensor& R_, const Tensor& seg, const Tensor& sd, const Tensor& slot, const Tensor& ck_,
                        const optional<Tensor>& dlast_, const optional<Tensor>& dtiles_, int64_t tile_size,
                        bool delta_softplus) {
  c10::cuda::CUDAGuard guard(u_.device());
  const Inputs x = prepare(u_, delta_, A_, B_, C_, D_, z_, bias_, gain_, init_, R_, seg, sd, slot, tile_size);
  const auto in = x.u.scalar_type();
  const auto acc = acc_type(x.u);
  const int64_t Bt = x.u.size(0), Dm = x.u.size(1), L = x.u.size(2), N = x.A.size(1), G = x.B.size(1);
  const int64_t NT = x.seg.size(1);
  const Tensor dy = dy_.to(in).contiguous();
  const Tensor ck = as_acc(ck_, acc);
  const Tensor dlast = opt_acc(dlast_, acc), dtiles = opt_acc(dtiles_, acc);
  TORCH_CHECK(dy.sizes() == x.u.sizes(), "tiling_scan_cuda: dy must have the shape of y");
  TORCH_CHECK(ck.dim() == 4 && ck.size(0) == Bt && ck.size(1) == Dm && ck.size(3) == N,
              "tiling_scan_cuda: checkpoints must be (batch, dim, n_ckpt, N) as returned by fwd");
  TORCH_CHECK(!dlast.defined() || dlast.sizes() == at::IntArrayRef({Bt, Dm, N}), "tiling_scan_cuda: dlast_state shape");
  TORCH_CHECK(!dtiles.defined() || dtiles.sizes() == at::IntArrayRef({Bt, Dm, NT, N}), "tiling_scan_cuda: dtile_states shape");

  const auto opts = x.u.options().dtype(acc);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int bpg = tiling_cuda::blocks_per_group((int)Dm, (int)G, (int)N);
  const int chunk = max_chunk_len(x.slot, L, tile_size);
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
  q.f = make_params(x, ck.size(2), tile_size, delta_softplus);
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
          x.bias.defined() ? dbias.sum(0) : empty,
          x.gain.defined() ? dgain.sum(0) : empty,
          x.init.defined() ? dinit : empty};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tiling: CUDA kernel of the resolution-adaptive selective scan (interface: scan_cpu.cpp)";
  m.def("fwd", &fwd, "adaptive selective scan, forward (see the interface comment in scan_cpu.cpp)");
  m.def("bwd", &bwd, "adaptive selective scan, backward (deterministic dB/dC under "
                     "torch.use_deterministic_algorithms(True))");
}
