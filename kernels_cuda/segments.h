// The block scope's chunk and dechunk in one pass each (issue 23: "the chunk/dechunk gather and scatter
// ... in the C++ kernel"), included by scan_cpu.cpp after rows_for and simd.h. Inference only: the
// modules call them when no gradient is wanted, and run their torch ops (the reference) otherwise.
//
// Reference: tiling.modules.chunk.Chunk.forward and Dechunk.forward (seed 000 §3.5.1 step 1, "each
// tile processes O(R_i·n_i) tokens"), on a SegmentLayout's start a_s and span n_s (padding: span 0):
//   chunk  out[b, s] = x[b, a_s] + g ⊙ (Σ_{t = a_{s-1}+1}^{a_{s-1}+n_{s-1}-1} x[b, t]) / max(n_{s-1} − 1, 1)
//          (the tokens after the previous representative; none for s = 0), the same operations in the
//          same order as the reference (a sum in token order, a division, a product, a sum);
//   hold   out[b, t] = y[b, s]  for t in [a_s, a_s + n_s)  (every token of a row lies in one segment).
// Torch's ops take four to six passes over (batch, L, d) for the chunk (index_select, new_zeros,
// index_add_, division, product, sum) and a generic index_select for the hold; here each output row is
// written once, from rows read once.
#pragma once

// chunk_fwd(x (Bt, L, d), start (Bt, Lc) int64, span (Bt, Lc) int64, gate (d,) or None) -> (Bt, Lc, d);
// gate None: the representatives alone (the reference's closed-gate path).
Tensor chunk_fwd(const Tensor& x, const Tensor& start, const Tensor& span, const c10::optional<Tensor>& gate) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() == 3, "chunk_fwd: x must be contiguous (Bt, L, d) on the CPU");
  TORCH_CHECK(start.scalar_type() == at::kLong && span.scalar_type() == at::kLong && start.is_contiguous() &&
                  span.is_contiguous() && start.dim() == 2 && start.sizes() == span.sizes() && start.size(0) == x.size(0),
              "chunk_fwd: start and span must be contiguous int64 (Bt, Lc)");
  TORCH_CHECK(!gate || (gate->is_contiguous() && gate->dim() == 1 && gate->size(0) == x.size(2) &&
                        gate->scalar_type() == x.scalar_type()),
              "chunk_fwd: gate must be (d,) of x's dtype");
  const int64_t Bt = x.size(0), L = x.size(1), d = x.size(2), Lc = start.size(1);
  Tensor out = torch::empty({Bt, Lc, d}, x.options());
  const int64_t* a = start.data_ptr<int64_t>();
  const int64_t* n = span.data_ptr<int64_t>();
  for (int64_t i = 0; i < Bt * Lc; ++i)
    TORCH_CHECK(a[i] >= 0 && a[i] < L && n[i] >= 0 && a[i] + n[i] <= L, "chunk_fwd: a segment lies outside the row");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "chunk_fwd", [&] {
    using T = scalar_t;
    constexpr int W = VT<T>::W;
    const T* xp = x.data_ptr<T>();
    const T* gp = gate ? gate->data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    rows_for(Bt * Lc, Bt * Lc * d > 65536, [&](int64_t r) {
      const int64_t b = r / Lc, s = r % Lc;
      const T* rep = xp + (b * L + a[r]) * d;
      T* o = op + r * d;
      if (!gp) {
        std::memcpy(o, rep, sizeof(T) * d);
        return;
      }
      // the pool: the previous segment's tokens after its representative, summed in token order into o
      const int64_t first = s ? a[r - 1] + 1 : 0, count = s ? n[r - 1] - 1 : 0;
      std::fill(o, o + d, T(0));
      for (int64_t t = first; t < first + count; ++t) {
        const T* xr = xp + (b * L + t) * d;
        int64_t j = 0;
        for (; j + W <= d; j += W) storeu(o + j, loadu(o + j) + loadu(xr + j));
        for (; j < d; ++j) o[j] += xr[j];
      }
      const T c = (T)std::max<int64_t>(count, 1);
      int64_t j = 0;
      for (; j + W <= d; j += W) storeu(o + j, loadu(rep + j) + loadu(gp + j) * (loadu(o + j) / bc(c)));
      for (; j < d; ++j) o[j] = rep[j] + gp[j] * (o[j] / c);
    });
  });
  return out;
}

// hold_fwd(y (Bt, Lc, d), start (Bt, Lc) int64, span (Bt, Lc) int64, L, residual (Bt, L, d) or None)
//   -> (Bt, L, d): each segment's row of y over its tokens, plus residual where given (the LM's h + layer
//   output in the same pass: the sum a separate add would make, element for element, without writing
//   and reading the held output once more).
Tensor hold_fwd(const Tensor& y, const Tensor& start, const Tensor& span, int64_t L,
                const c10::optional<Tensor>& residual) {
  TORCH_CHECK(y.device().is_cpu() && y.is_contiguous() && y.dim() == 3, "hold_fwd: y must be contiguous (Bt, Lc, d) on the CPU");
  TORCH_CHECK(start.scalar_type() == at::kLong && span.scalar_type() == at::kLong && start.is_contiguous() &&
                  span.is_contiguous() && start.dim() == 2 && start.size(0) == y.size(0) && start.size(1) == y.size(1) &&
                  start.sizes() == span.sizes(),
              "hold_fwd: start and span must be contiguous int64 (Bt, Lc) of y's first two dims");
  const int64_t Bt = y.size(0), Lc = y.size(1), d = y.size(2);
  const int64_t* a = start.data_ptr<int64_t>();
  const int64_t* n = span.data_ptr<int64_t>();
  for (int64_t b = 0; b < Bt; ++b) {  // the segments must tile each row: every output row is written once
    int64_t next = 0;
    for (int64_t s = 0; s < Lc; ++s) {
      const int64_t r = b * Lc + s;
      TORCH_CHECK(n[r] >= 0 && (n[r] == 0 || a[r] == next), "hold_fwd: the segments of row ", b, " do not tile it");
      next += n[r];
    }
    TORCH_CHECK(next == L, "hold_fwd: the segments of row ", b, " cover ", next, " tokens, not L = ", L);
  }
  if (residual)
    TORCH_CHECK(residual->device().is_cpu() && residual->is_contiguous() && residual->scalar_type() == y.scalar_type() &&
                    residual->sizes() == at::IntArrayRef({Bt, L, d}),
                "hold_fwd: residual must be contiguous (Bt, L, d) on the CPU, of y's dtype");
  Tensor out = torch::empty({Bt, L, d}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "hold_fwd", [&] {
    using T = scalar_t;
    constexpr int W = VT<T>::W;
    const T* yp = y.data_ptr<T>();
    const T* rp = residual ? residual->data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    rows_for(Bt * Lc, Bt * L * d > 65536, [&](int64_t r) {
      const int64_t b = r / Lc;
      const T* src = yp + r * d;
      for (int64_t t = a[r]; t < a[r] + n[r]; ++t) {
        T* o = op + (b * L + t) * d;
        if (!rp) {
          std::memcpy(o, src, sizeof(T) * d);
          continue;
        }
        const T* h = rp + (b * L + t) * d;
        int64_t j = 0;
        for (; j + W <= d; j += W) storeu(o + j, loadu(h + j) + loadu(src + j));
        for (; j < d; ++j) o[j] = h[j] + src[j];
      }
    });
  });
  return out;
}
