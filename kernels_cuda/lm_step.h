// The whole TiledLM's decoding step in one call (issue 23, "decoding that skips work"), included by
// scan_cpu.cpp after the mixer's step (layer_step_rows), RMSNorm (rms_rows) and matvec_rows.
//
// Reference: tiling.train.model.TiledLM.step with BlockScope.step (tiling/modules/scope_block.py),
// which this reproduces operation by operation for layers whose segment starts do not read the token
// (budget 1, or the uniform tile policy): the host decides each layer's kind before the call
// (tiling/train/fused_step.py), so the call holds no policy. Per layer, on x = RMSNorm(h):
//   kind 0 (no row starts a segment): the token joins the pool (pool_sum + x, pool_count + 1) and the
//          layer's output is the held one: O(d_model), the mixer does not run;
//   kind 2 (every row starts one): the representative x + gate * pool_sum / max(pool_count, 1) (the
//          block scope's segment, seed 001 §3.2.1's R_i as granularity; tiling.modules.chunk.Chunk.step)
//          runs the mixer with Δ times the gap since the previous start, its output is held and the
//          pool empties;
//   kind 3 (full resolution, budget 1): the mixer on x with Δ × 1, no pool;
// then h = h + out. Last, logits = head(RMSNorm_f(h)) and whether they are all finite (the caller
// raises, naming what is not finite, through the reference path). Departure: GCC may contract
// x + gate * mean into one fused multiply-add, so a pooled representative can differ from torch's two
// rounded operations by an ulp (the tests compare to 1e-6).
#pragma once

namespace lmstep {

enum Kind : int64_t { kNone = 0, kAll = 2, kFull = 3 };

constexpr int kWeights = 11;  // layer_step's: W_in, b_in, conv w, conv b, W_x, W_dt, b_dt, A, D, W_out, b_out
constexpr int kState = 6;     // per layer: conv, ssm, held, pool_sum, pool_count, last_start

template <typename T>
bool run(const int64_t* tokens, const T* emb, const std::vector<const T*>& norms, const std::vector<double>& eps,
         const T* head_w, const T* head_b, const std::vector<StepWeights>& ws, const std::vector<const T*>& gates,
         const std::vector<int64_t>& kinds, const std::vector<Tensor>& in, std::vector<Tensor>& out, T* logits,
         int64_t position, int64_t Bt, int64_t d, int64_t V) {
  const int64_t n_layers = (int64_t)kinds.size();
  std::vector<T> h((size_t)(Bt * d)), x((size_t)(Bt * d)), rep((size_t)(Bt * d)), y((size_t)(Bt * d));
  std::vector<T> r((size_t)Bt);
  for (int64_t b = 0; b < Bt; ++b) std::memcpy(h.data() + b * d, emb + tokens[b] * d, sizeof(T) * d);
  for (int64_t l = 0; l < n_layers; ++l) {
    const Tensor *s = &in[l * kState];
    Tensor* o = &out[l * kState];
    rms_rows<T>(h.data(), norms[l], x.data(), r.data(), Bt, d, eps[l]);
    const T* held;
    if (kinds[l] == kNone) {
      o[0] = s[0], o[1] = s[1], o[2] = s[2], o[5] = s[5];
      o[3] = torch::empty_like(s[3]), o[4] = torch::empty_like(s[4]);
      const T* ps = s[3].data_ptr<T>();
      T* ps1 = o[3].data_ptr<T>();
      for (int64_t j = 0; j < Bt * d; ++j) ps1[j] = ps[j] + x[j];
      const int64_t* pc = s[4].data_ptr<int64_t>();
      int64_t* pc1 = o[4].data_ptr<int64_t>();
      for (int64_t b = 0; b < Bt; ++b) pc1[b] = pc[b] + 1;
      held = s[2].data_ptr<T>();
    } else {
      const T* src = x.data();
      const int64_t* last = nullptr;
      if (kinds[l] == kAll) {
        const T* ps = s[3].data_ptr<T>();
        const int64_t* pc = s[4].data_ptr<int64_t>();
        for (int64_t b = 0; b < Bt; ++b) {
          const T count = (T)std::max<int64_t>(pc[b], 1);
          for (int64_t j = 0; j < d; ++j) rep[b * d + j] = x[b * d + j] + gates[l][j] * (ps[b * d + j] / count);
        }
        src = rep.data();
        last = s[5].data_ptr<int64_t>();
        o[3] = torch::zeros_like(s[3]), o[4] = torch::zeros_like(s[4]);
      } else {
        o[3] = s[3], o[4] = s[4];
      }
      o[0] = torch::empty_like(s[0]), o[1] = torch::empty_like(s[1]), o[2] = torch::empty_like(s[2]);
      const int64_t E = s[0].size(1), K = s[0].size(2), N = s[1].size(2), rank = ws[l].Wdt.size(1);
      layer_step_rows<T>(src, s[0].data_ptr<T>(), s[1].data_ptr<T>(), ws[l], last, position, o[2].data_ptr<T>(),
                         o[0].data_ptr<T>(), o[1].data_ptr<T>(), Bt, d, E, K, N, rank);
      o[5] = torch::full_like(s[5], position);
      held = o[2].data_ptr<T>();
    }
    for (int64_t j = 0; j < Bt * d; ++j) h[j] = h[j] + held[j];
  }
  rms_rows<T>(h.data(), norms[n_layers], x.data(), r.data(), Bt, d, eps[n_layers]);
  matvec_rows<T>(head_w, head_b, x.data(), logits, V, d, Bt);
  for (int64_t j = 0; j < Bt * V; ++j)
    if (!std::isfinite(logits[j])) return false;
  return true;
}

}  // namespace lmstep

// tokens (Bt,) int64 in range (checked by the caller); emb (V, d); norms: the layers' RMSNorm weights then
// the final one; eps likewise; head (V, d) and its bias or None; weights: 11 per layer (layer_step's);
// gates: each layer's pool gate (d,); kinds: lmstep::Kind per layer; state: 6 per layer (conv, ssm, held,
// pool_sum, pool_count, last_start); position: the tokens consumed so far (every layer's).
// Returns [logits (Bt, V), all finite (bool, 0-dim), then the 6 new state tensors per layer]; the state
// passed in is never written (a kind-0 layer passes its mixer state through).
std::vector<Tensor> lm_step(const Tensor& tokens, const Tensor& emb, const std::vector<Tensor>& norms,
                            const std::vector<double>& eps, const Tensor& head_w, const c10::optional<Tensor>& head_b,
                            const std::vector<c10::optional<Tensor>>& weights, const std::vector<Tensor>& gates,
                            const std::vector<int64_t>& kinds, const std::vector<Tensor>& state, int64_t position) {
  const int64_t n_layers = (int64_t)kinds.size(), Bt = tokens.size(0), V = emb.size(0), d = emb.size(1);
  TORCH_CHECK((int64_t)norms.size() == n_layers + 1 && (int64_t)eps.size() == n_layers + 1 &&
              (int64_t)weights.size() == lmstep::kWeights * n_layers && (int64_t)gates.size() == n_layers &&
              (int64_t)state.size() == lmstep::kState * n_layers,
              "lm_step: per layer one norm, 11 weights, a gate and 6 state tensors, and one final norm");
  TORCH_CHECK(tokens.scalar_type() == at::kLong && tokens.dim() == 1 && tokens.is_contiguous(),
              "lm_step: tokens must be (Bt,) int64");
  const int64_t* tok = tokens.data_ptr<int64_t>();
  for (int64_t b = 0; b < Bt; ++b)
    TORCH_CHECK(tok[b] >= 0 && tok[b] < V, "lm_step: token ", tok[b], " is outside [0, ", V, ")");
  const auto dt = emb.scalar_type();
  std::vector<const Tensor*> all = {&emb, &head_w};
  for (const auto& t : norms) all.push_back(&t);
  for (const auto& t : gates) all.push_back(&t);
  for (int64_t l = 0; l < n_layers; ++l)
    for (int k : {0, 1, 2, 3}) all.push_back(&state[l * lmstep::kState + k]);
  for (const Tensor* t : all)
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt,
                "lm_step: every tensor must be contiguous on the CPU, of the embedding's dtype");
  TORCH_CHECK(head_w.size(0) == V && head_w.size(1) == d, "lm_step: head must be (V, d) like the embedding");
  std::vector<StepWeights> ws;
  auto w = [&](int64_t i) { return weights[i].value_or(Tensor()); };
  for (int64_t l = 0; l < n_layers; ++l) {
    const int64_t i = l * lmstep::kWeights;
    ws.push_back({w(i), w(i + 1), w(i + 2), w(i + 3), w(i + 4), w(i + 5), w(i + 6), w(i + 7), w(i + 8), w(i + 9),
                  w(i + 10)});
    const Tensor* s = &state[l * lmstep::kState];
    TORCH_CHECK(kinds[l] == lmstep::kNone || kinds[l] == lmstep::kAll || kinds[l] == lmstep::kFull,
                "lm_step: a layer's kind is 0 (no start), 2 (every row starts) or 3 (full resolution)");
    TORCH_CHECK(s[0].size(0) == Bt && s[1].size(0) == Bt && s[2].size(0) == Bt && s[2].size(1) == d &&
                s[3].sizes() == s[2].sizes() && s[4].scalar_type() == at::kLong && s[4].numel() == Bt &&
                s[5].scalar_type() == at::kLong && s[5].numel() == Bt && gates[l].numel() == d &&
                norms[l].numel() == d && ws[l].W_in.size(1) == d && ws[l].W_out.size(0) == d,
                "lm_step: the state of layer ", l, " does not match the batch or the width");
  }
  const Tensor hb = head_b.value_or(Tensor());
  Tensor logits = torch::empty({Bt, V}, emb.options());
  std::vector<Tensor> out((size_t)(lmstep::kState * n_layers));
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(dt, "lm_step", [&] {
    std::vector<const scalar_t*> nw, gw;
    for (const auto& t : norms) nw.push_back(t.data_ptr<scalar_t>());
    for (const auto& t : gates) gw.push_back(t.data_ptr<scalar_t>());
    finite = lmstep::run<scalar_t>(tokens.data_ptr<int64_t>(), emb.data_ptr<scalar_t>(), nw, eps,
                                   head_w.data_ptr<scalar_t>(), hb.defined() ? hb.data_ptr<scalar_t>() : nullptr, ws,
                                   gw, kinds, state, out, logits.data_ptr<scalar_t>(), position, Bt, d, V);
  });
  std::vector<Tensor> result = {logits, torch::scalar_tensor(finite, at::kBool)};
  result.insert(result.end(), out.begin(), out.end());
  return result;
}
