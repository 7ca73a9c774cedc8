// The block scope's mixer in inference, in one call from Python (issue 23: "no per-tile Python ... in
// the forward"), included by scan_cpu.cpp after the kernels it composes (segments.h, conv_silu_fwd,
// softplus_gap, fwd). It makes the same ATen products and kernel calls, in the same order and on the
// same layouts, as the Python path it replaces:
//   Chunk.forward (chunk_fwd)  ->  TiledMamba._project (in_proj as two bmm, conv + SiLU, x_proj, dt_proj)
//   ->  TiledMamba._scan (softplus_gap where the layout has gaps, the scan at R = 1)  ->  TiledMamba._out
//   ->  Dechunk.forward (hold_fwd),
// so its output equals that path's bit for bit (tests/tiling/test_model_speed.py); what goes is the
// interpreter's work between the ops (about thirty Python-level calls per layer), a cost that does not
// shrink with the plan and so weighs most at a low budget.
#pragma once

// block_fwd(x (Bt, L, d); the layout's start, span (Bt, Lc) int64 or None (every token a segment), the
// pool gate (d,) or None (closed), gap (Bt, Lc) or None (no layout); the mixer's weights as
// nn.Linear/nn.Conv1d hold them; the scan's plan at R = 1 for (Bt, Lc); residual (Bt, L, d) or None)
//   -> (Bt, L, d): the mixer's output, plus residual where given (TiledLM's h + layer(x), summed as the hold
//   writes: the same sums as the separate add, without one more pass over the full-resolution output).
Tensor block_fwd(const Tensor& x, const c10::optional<Tensor>& start, const c10::optional<Tensor>& span,
                 const c10::optional<Tensor>& gate, const c10::optional<Tensor>& gap, const Tensor& in_w,
                 const c10::optional<Tensor>& in_b, const Tensor& conv_w, const c10::optional<Tensor>& conv_b,
                 const Tensor& x_proj_w, const Tensor& dt_proj_w, const Tensor& dt_bias, const Tensor& A_log,
                 const Tensor& D, const Tensor& out_w, const c10::optional<Tensor>& out_b, const Tensor& resolution,
                 const Tensor& seg_counts, const Tensor& state_dims, const Tensor& ckpt_slot, int64_t n_ckpt,
                 int64_t tile_size, const c10::optional<Tensor>& residual) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "block_fwd: x must be contiguous (Bt, L, d) on the CPU");
  TORCH_CHECK(start.has_value() == span.has_value(), "block_fwd: start and span go together");
  const int64_t L = x.size(1), E = in_w.size(0) / 2, dm = in_w.size(1), r = dt_proj_w.size(1);
  const int64_t N = A_log.size(1), K = conv_w.size(-1);
  const Tensor xc = start ? chunk_fwd(x, *start, *span, gate) : x;
  const int64_t Bt = xc.size(0);
  // _project: every product writes the channel-first layout the scan reads
  const Tensor xt = xc.transpose(1, 2);
  Tensor u = at::bmm(in_w.narrow(0, 0, E).expand({Bt, E, dm}), xt);
  Tensor z = at::bmm(in_w.narrow(0, E, E).expand({Bt, E, dm}), xt);
  if (in_b) {
    u = u + in_b->narrow(0, 0, E).unsqueeze(1);
    z = z + in_b->narrow(0, E, E).unsqueeze(1);
  }
  u = conv_silu_fwd(u.contiguous(), conv_w.reshape({E, K}).contiguous(),
                    conv_b ? c10::optional<Tensor>(conv_b->contiguous()) : c10::nullopt);
  const Tensor xdbl = at::bmm(x_proj_w.expand({Bt, x_proj_w.size(0), E}), u);
  const Tensor dt_raw = at::bmm(dt_proj_w.expand({Bt, E, r}), xdbl.narrow(1, 0, r));
  // _scan: Δ = softplus(dt_raw + b)·gap in its own pass where the layout has gaps, else in the scan
  const auto acc = tiling_scan::acc_type(u);
  const Tensor A = -at::exp(A_log.scalar_type() == at::kDouble ? A_log : A_log.to(at::kFloat));
  Tensor delta = dt_raw, bias = dt_bias;
  if (gap) {
    delta = softplus_gap(dt_raw.contiguous(), dt_bias.contiguous(), gap->to(dt_raw.scalar_type()).contiguous());
    bias = Tensor();
  }
  const ScanArgs args{u.contiguous(), delta.contiguous(), tiling_scan::cast(A, acc),
                      xdbl.narrow(1, r, N).unsqueeze(1).contiguous(), xdbl.narrow(1, r + N, N).unsqueeze(1).contiguous(),
                      tiling_scan::cast(D, acc), z.contiguous(), tiling_scan::cast(bias, acc), Tensor(), Tensor(),
                      resolution, seg_counts, state_dims, ckpt_slot, tile_size, !gap.has_value()};
  const Tensor y = fwd(args, n_ckpt, false)[0];
  // _out, then the hold
  Tensor out = at::bmm(y.transpose(1, 2), out_w.t().expand({Bt, E, out_w.size(0)}));
  if (out_b) out = out + *out_b;
  if (start) return hold_fwd(out.contiguous(), *start, *span, L, residual);  // the residual added while held
  return residual ? *residual + out : out;
}
