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
//   kind 1 (some rows start, as the rows' own signals place them): kind 2 on the rows that start (gathered,
//          one mixer call) and kind 0 on the others, row by row as each would decode alone;
// then h = h + out. Last, logits = head(RMSNorm_f(h)) and whether they are all finite (the caller
// raises, naming what is not finite, through the reference path). Departure: GCC may contract
// x + gate * mean into one fused multiply-add, so a pooled representative can differ from torch's two
// rounded operations by an ulp (the tests compare to 1e-6).
#pragma once

namespace lmstep {

enum Kind : int64_t { kNone = 0, kSome = 1, kAll = 2, kFull = 3 };

constexpr int kWeights = 11;  // layer_step's: W_in, b_in, conv w, conv b, W_x, W_dt, b_dt, A, D, W_out, b_out
constexpr int kState = 6;     // conv, ssm, held, pool_sum, pool_count, last_start, each stacked over the layers

// A new contiguous CPU tensor, allocated without the dispatcher's layers (torch::empty and empty_like
// through it showed in profiles of a decoding step, which makes three).
inline Tensor new_cpu(at::IntArrayRef sizes, at::ScalarType dtype) {
  return Tensor(at::detail::empty_cpu(sizes, dtype, /*pin_memory=*/false, c10::nullopt));
}

// The state's fields a layer of each kind writes: the mixer's (conv, ssm, held, last_start) where the
// mixer runs, the pool's (pool_sum, pool_count) where a token joins a pool or a segment starts.
inline bool writes_mixer(int64_t kind) { return kind != kNone; }
inline bool writes_pool(int64_t kind) { return kind != kFull; }

// A stacked field's new tensor: the old one where no layer writes it (nothing is copied), else a new one
// holding the old values of the layers that do not write it.
inline Tensor next_field(const Tensor& old, const std::vector<int64_t>& kinds, bool (*writes)(int64_t)) {
  bool any = false, all = true;
  for (int64_t k : kinds) any |= writes(k), all &= writes(k);
  if (!any) return old;
  Tensor out = new_cpu(old.sizes(), old.scalar_type());
  if (!all) {  // contiguous and stacked: layer l's slice is bytes [l * per, (l + 1) * per)
    const size_t per = (size_t)(old.numel() / old.size(0)) * old.element_size();
    const char* src = static_cast<const char*>(old.data_ptr());
    char* dst = static_cast<char*>(out.data_ptr());
    for (size_t l = 0; l < kinds.size(); ++l)
      if (!writes(kinds[l])) std::memcpy(dst + l * per, src + l * per, per);
  }
  return out;
}

// A layer's linearised density (tiling.modules.router.linear_density, the signal its policy reads), from the
// maps of its decoding state: ab = P x + offset (the composite map, r + N rows), z = W_dt' ab[:r] + b_dt' (the
// sampled rows of dt_proj), rho = scale * |softplus(z)|^2 * |ab[r:]|^2 (linear_signal_rows, the kernel's
// softplus as the forward's). The products are matvec_rows, not torch's addmm: rho equals the reference's
// to float rounding.
struct SignalMaps {
  Tensor proj, offset, w, b;
  double scale;
};

template <typename T>
void signal_rows(const SignalMaps& s, const T* x, T* rho, int64_t Bt, int64_t d) {
  const int64_t rN = s.proj.size(0), k = s.w.size(0), r = s.w.size(1);
  std::vector<T> ab((size_t)(Bt * rN)), a((size_t)(Bt * r)), z((size_t)(Bt * k));
  matvec_rows<T>(s.proj.data_ptr<T>(), s.offset.defined() ? s.offset.data_ptr<T>() : nullptr, x, ab.data(), rN, d, Bt);
  for (int64_t b = 0; b < Bt; ++b) std::memcpy(a.data() + b * r, ab.data() + b * rN, sizeof(T) * r);
  matvec_rows<T>(s.w.data_ptr<T>(), s.b.data_ptr<T>(), a.data(), z.data(), k, r, Bt);
  linear_signal_rows<T>(z.data(), ab.data(), rho, Bt, k, r, rN - r, s.scale);
}

// One row's pooled representative x + gate * pool_sum / max(pool_count, 1) (Chunk.step), for kinds 2 and 1.
template <typename T>
inline void representative(const T* x, const T* gate, const T* sum, int64_t count, T* rep, int64_t d) {
  const T c = (T)std::max<int64_t>(count, 1);
  for (int64_t j = 0; j < d; ++j) rep[j] = x[j] + gate[j] * (sum[j] / c);
}

// kind 1 on one layer: the rows that start a segment (starts[b] != 0) are gathered and run the mixer on their
// pooled representative together, as kind 2; the others join their pool and keep their held output, as
// kind 0; each row's fields are written from its own kind.
template <typename T>
void some_rows(const T* x, const T* sconv, const T* sssm, const T* sheld, const T* ssum, const int64_t* scount,
               const int64_t* slast, const StepWeights& w, const T* gate, const int64_t* starts, int64_t position,
               T* oconv, T* ossm, T* oheld, T* osum, int64_t* ocount, int64_t* olast, int64_t Bt, int64_t d, int64_t E,
               int64_t K, int64_t N) {
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < Bt; ++b)
    if (starts[b]) rows.push_back(b);
  const int64_t Bs = (int64_t)rows.size(), EK = E * K, EN = E * N;
  std::vector<T> rep((size_t)(Bs * d)), conv((size_t)(Bs * EK)), ssm((size_t)(Bs * EN)), held((size_t)(Bs * d)),
      conv1((size_t)(Bs * EK)), ssm1((size_t)(Bs * EN));
  std::vector<int64_t> last((size_t)Bs);
  for (int64_t i = 0; i < Bs; ++i) {
    const int64_t b = rows[i];
    representative<T>(x + b * d, gate, ssum + b * d, scount[b], rep.data() + i * d, d);
    std::memcpy(conv.data() + i * EK, sconv + b * EK, sizeof(T) * EK);
    std::memcpy(ssm.data() + i * EN, sssm + b * EN, sizeof(T) * EN);
    last[i] = slast[b];
  }
  if (Bs) layer_step_rows<T>(rep.data(), conv.data(), ssm.data(), w, last.data(), position, held.data(), conv1.data(),
                             ssm1.data(), Bs, d, E, K, N, w.Wdt.size(1));
  for (int64_t b = 0, i = 0; b < Bt; ++b) {
    if (i < Bs && rows[i] == b) {  // started: the mixer's fields, an empty pool
      std::memcpy(oheld + b * d, held.data() + i * d, sizeof(T) * d);
      std::memcpy(oconv + b * EK, conv1.data() + i * EK, sizeof(T) * EK);
      std::memcpy(ossm + b * EN, ssm1.data() + i * EN, sizeof(T) * EN);
      std::fill(osum + b * d, osum + (b + 1) * d, T(0));
      ocount[b] = 0, olast[b] = position, ++i;
    } else {  // no start: the pool grows, the mixer's fields stay
      std::memcpy(oheld + b * d, sheld + b * d, sizeof(T) * d);
      std::memcpy(oconv + b * EK, sconv + b * EK, sizeof(T) * EK);
      std::memcpy(ossm + b * EN, sssm + b * EN, sizeof(T) * EN);
      for (int64_t j = 0; j < d; ++j) osum[b * d + j] = ssum[b * d + j] + x[b * d + j];
      ocount[b] = scount[b] + 1, olast[b] = slast[b];
    }
  }
}

template <typename T>
bool run(const int64_t* tokens, const T* emb, const std::vector<const T*>& norms, const std::vector<double>& eps,
         const T* head_w, const T* head_b, const std::vector<StepWeights>& ws, const std::vector<const T*>& gates,
         const std::vector<int64_t>& kinds, const int64_t* row_starts, const std::vector<Tensor>& in,
         const std::vector<Tensor>& out, T* logits, const std::vector<SignalMaps>& signals, T* rho, int64_t position,
         int64_t Bt, int64_t d, int64_t V) {
  const int64_t n_layers = (int64_t)kinds.size();
  const int64_t E = in[0].size(2), K = in[0].size(3), N = in[1].size(3);
  // one scratch block (h, x, rep, r): a step at a token that starts no segment is a few microseconds, in
  // which each allocation and each checked data_ptr showed
  std::vector<T> scratch((size_t)(3 * Bt * d + Bt));
  T *h = scratch.data(), *x = h + Bt * d, *rep = x + Bt * d, *r = rep + Bt * d;
  // the stacked fields before (s*) and after (o*) the step, read once: layer l's slice is at l * its size
  const T *sconv0 = in[0].data_ptr<T>(), *sssm0 = in[1].data_ptr<T>(), *sheld0 = in[2].data_ptr<T>(),
          *ssum0 = in[3].data_ptr<T>();
  const int64_t *scount0 = in[4].data_ptr<int64_t>(), *slast0 = in[5].data_ptr<int64_t>();
  T *oconv0 = out[0].data_ptr<T>(), *ossm0 = out[1].data_ptr<T>(), *oheld0 = out[2].data_ptr<T>(),
    *osum0 = out[3].data_ptr<T>();
  int64_t *ocount0 = out[4].data_ptr<int64_t>(), *olast0 = out[5].data_ptr<int64_t>();
  for (int64_t b = 0; b < Bt; ++b) std::memcpy(h + b * d, emb + tokens[b] * d, sizeof(T) * d);
  for (int64_t l = 0; l < n_layers; ++l) {
    const T *sconv = sconv0 + l * Bt * E * K, *sssm = sssm0 + l * Bt * E * N;
    const T *sheld = sheld0 + l * Bt * d, *ssum = ssum0 + l * Bt * d;
    const int64_t *scount = scount0 + l * Bt, *slast = slast0 + l * Bt;
    T *oconv = oconv0 + l * Bt * E * K, *ossm = ossm0 + l * Bt * E * N;
    T *oheld = oheld0 + l * Bt * d, *osum = osum0 + l * Bt * d;
    int64_t *ocount = ocount0 + l * Bt, *olast = olast0 + l * Bt;
    rms_rows<T>(h, norms[l], x, r, Bt, d, eps[l]);
    if (!signals.empty() && signals[l].proj.defined()) signal_rows<T>(signals[l], x, rho + l * Bt, Bt, d);
    const T* held = oheld;
    if (kinds[l] == kSome) {
      some_rows<T>(x, sconv, sssm, sheld, ssum, scount, slast, ws[l], gates[l], row_starts + l * Bt, position, oconv,
                   ossm, oheld, osum, ocount, olast, Bt, d, E, K, N);
    } else if (kinds[l] == kNone) {
      for (int64_t j = 0; j < Bt * d; ++j) osum[j] = ssum[j] + x[j];
      for (int64_t b = 0; b < Bt; ++b) ocount[b] = scount[b] + 1;
      held = sheld;
    } else {
      const T* src = x;
      const int64_t* last = nullptr;
      if (kinds[l] == kAll) {
        for (int64_t b = 0; b < Bt; ++b) representative<T>(x + b * d, gates[l], ssum + b * d, scount[b], rep + b * d, d);
        src = rep;
        last = slast;
        std::fill(osum, osum + Bt * d, T(0));
        std::fill(ocount, ocount + Bt, int64_t(0));
      }
      layer_step_rows<T>(src, sconv, sssm, ws[l], last, position, oheld, oconv, ossm, Bt, d, E, K, N,
                         ws[l].Wdt.size(1));
      std::fill(olast, olast + Bt, position);
    }
    for (int64_t j = 0; j < Bt * d; ++j) h[j] = h[j] + held[j];
  }
  rms_rows<T>(h, norms[n_layers], x, r, Bt, d, eps[n_layers]);
  matvec_rows<T>(head_w, head_b, x, logits, V, d, Bt);
  for (int64_t j = 0; j < Bt * V; ++j)
    if (!std::isfinite(logits[j])) return false;
  return true;
}

}  // namespace lmstep

// The whole model's decoding step with the model's tensors held between calls: the checks of the weights
// and their conversion from Python run once per model (tiling/train/fused_step.py keeps one Decoder per
// model, budgets and count of assignments), so a step passes only the tokens, the kinds and the state.
// The state is six tensors, each field stacked over the layers (all layers of a TiledLM have one
// shape), and a field no layer writes is passed through: at a token that starts no segment the step is
// O(d_model) per layer plus the head and makes two new tensors (the pools), where converting some 60
// tensor arguments and making 24 per call was most of its time.
//
// Decoder(emb (V, d), norms: the layers' RMSNorm weights then the final one, eps likewise, head (V, d)
//         and its bias or None, weights: 11 per layer (layer_step's), gates: each layer's pool gate (d,),
//         sources: the parameters these are made from, whose storage step watches (a .to() moves it), and
//         copied: those of them whose values the Decoder holds a copy of (A = -exp(A_log)), whose version
//         step watches as well (an in-place update; the others are read where they lie))
// step(tokens (Bt,) int64, kinds: lmstep::Kind per layer, state: conv (layers, Bt, E, K), ssm (layers, Bt, E, N),
//      held and pool_sum (layers, Bt, d), pool_count and last_start (layers, Bt) int64, position: the tokens
//      consumed so far (every layer's), reads: per layer whether its policy reads the signal (empty: none
//      does), maps: per layer the signal's maps of its state (proj, offset or None, dt rows, dt bias), scales:
//      per layer the map's scale, row_starts: for a layer of kind 1, whether each row starts a segment (layers × Bt,
//      row-major; empty where no layer is of kind 1))
//   -> (status, [logits (Bt, V), the 6 new state tensors, and where a layer reads the signal the layers'
//      signals rho (layers, Bt), 0 where not read]); status kOk, kNonFinite (some
//      logit is NaN/Inf: the caller names the cause through its reference path), kStale (a source was
//      updated in place or moved since the Decoder was made: make another; nothing computed) or
//      kToken (a token outside [0, V): the caller raises; nothing computed) or kSignal (a signal is NaN/Inf:
//      the caller names the cause through its reference path). The state passed in is never written.
class Decoder {
 public:
  enum Status : int64_t { kOk = 0, kNonFinite = 1, kStale = 2, kToken = 3, kSignal = 4 };

  Decoder(const Tensor& emb, const std::vector<Tensor>& norms, const std::vector<double>& eps, const Tensor& head_w,
          const c10::optional<Tensor>& head_b, const std::vector<c10::optional<Tensor>>& weights,
          const std::vector<Tensor>& gates, const std::vector<Tensor>& sources, const std::vector<Tensor>& copied)
      : emb_(emb), head_w_(head_w), head_b_(head_b.value_or(Tensor())), norms_(norms), gates_(gates), eps_(eps),
        sources_(sources), copied_(copied) {
    const int64_t n_layers = (int64_t)gates.size(), d = emb.size(1);
    TORCH_CHECK((int64_t)norms.size() == n_layers + 1 && (int64_t)eps.size() == n_layers + 1 &&
                (int64_t)weights.size() == lmstep::kWeights * n_layers,
                "LmDecoder: per layer one norm, 11 weights and a gate, and one final norm");
    const auto dt = emb.scalar_type();
    std::vector<const Tensor*> all = {&emb_, &head_w_};
    if (head_b_.defined()) all.push_back(&head_b_);
    for (const auto& t : norms_) all.push_back(&t);
    for (const auto& t : gates_) all.push_back(&t);
    auto w = [&](int64_t i) { return weights[i].value_or(Tensor()); };
    for (int64_t l = 0; l < n_layers; ++l) {
      const int64_t i = l * lmstep::kWeights;
      ws_.push_back({w(i), w(i + 1), w(i + 2), w(i + 3), w(i + 4), w(i + 5), w(i + 6), w(i + 7), w(i + 8), w(i + 9),
                     w(i + 10)});
      const StepWeights& s = ws_.back();
      TORCH_CHECK(gates_[l].numel() == d && norms_[l].numel() == d && s.W_in.size(1) == d && s.W_out.size(0) == d,
                  "LmDecoder: layer ", l, "'s weights do not match the width ", d);
      TORCH_CHECK(s.W_in.size(0) == ws_[0].W_in.size(0) && s.cw.numel() == ws_[0].cw.numel() &&
                  s.A.sizes() == ws_[0].A.sizes(), "LmDecoder: layer ", l, " is not of layer 0's shape (the state "
                  "is stacked over the layers)");
    }
    for (const auto& s : ws_)
      for (const Tensor* t : {&s.W_in, &s.b_in, &s.cw, &s.cb, &s.Wx, &s.Wdt, &s.bdt, &s.A, &s.D, &s.W_out, &s.b_out})
        if (t->defined()) all.push_back(t);
    for (const Tensor* t : all)
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt,
                  "LmDecoder: every tensor must be contiguous on the CPU, of the embedding's dtype");
    TORCH_CHECK(norms_[n_layers].numel() == d && head_w.size(0) == emb.size(0) && head_w.size(1) == d,
                "LmDecoder: the head must be (V, d) like the embedding, the final norm (d,)");
    for (const auto& t : sources_) pointers_.push_back(storage_of(t));
    for (const auto& t : copied_) versions_.push_back(t._version());
  }

  std::tuple<int64_t, std::vector<Tensor>> step(const Tensor& tokens, const std::vector<int64_t>& kinds,
                                                const std::vector<Tensor>& state, int64_t position,
                                                const std::vector<int64_t>& reads,
                                                const std::vector<c10::optional<Tensor>>& maps,
                                                const std::vector<double>& scales,
                                                const std::vector<int64_t>& row_starts) const {
    for (size_t i = 0; i < sources_.size(); ++i)
      if (storage_of(sources_[i]) != pointers_[i]) return {kStale, {}};
    for (size_t i = 0; i < copied_.size(); ++i)
      if (copied_[i]._version() != versions_[i]) return {kStale, {}};
    const int64_t n_layers = (int64_t)gates_.size(), Bt = tokens.size(0), V = emb_.size(0), d = emb_.size(1);
    TORCH_CHECK((int64_t)kinds.size() == n_layers && (int64_t)state.size() == lmstep::kState,
                "LmDecoder.step: one kind per layer and 6 stacked state tensors");
    TORCH_CHECK(tokens.scalar_type() == at::kLong && tokens.dim() == 1 && tokens.is_contiguous() && tokens.is_cpu(),
                "LmDecoder.step: tokens must be (Bt,) int64 on the CPU");
    const int64_t* tok = tokens.data_ptr<int64_t>();
    for (int64_t b = 0; b < Bt; ++b)
      if (tok[b] < 0 || tok[b] >= V) return {kToken, {}};
    const auto dt = emb_.scalar_type();
    bool some = false;
    for (int64_t kind : kinds) {
      TORCH_CHECK(kind == lmstep::kNone || kind == lmstep::kSome || kind == lmstep::kAll || kind == lmstep::kFull,
                  "LmDecoder.step: a layer's kind is 0 (no start), 1 (some rows start), 2 (every row starts) or 3 "
                  "(full resolution)");
      some |= kind == lmstep::kSome;
    }
    TORCH_CHECK(!some || (int64_t)row_starts.size() == n_layers * Bt,
                "LmDecoder.step: a layer of kind 1 needs row_starts, one flag per layer and row");
    const Tensor &conv = state[0], &ssm = state[1], &held = state[2], &sum = state[3], &count = state[4],
                 &last = state[5];
    for (const Tensor* t : {&conv, &ssm, &held, &sum})
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt,
                  "LmDecoder.step: the state must be contiguous on the CPU, of the model's dtype");
    const StepWeights& w = ws_[0];
    TORCH_CHECK(conv.dim() == 4 && conv.size(0) == n_layers && conv.size(1) == Bt &&
                conv.size(2) == w.W_in.size(0) / 2 && conv.size(3) * conv.size(2) == w.cw.numel() &&
                ssm.dim() == 4 && ssm.size(0) == n_layers && ssm.size(1) == Bt && ssm.size(2) == conv.size(2) &&
                ssm.size(3) == w.A.size(1) && held.sizes() == at::IntArrayRef({n_layers, Bt, d}) &&
                sum.sizes() == held.sizes() && count.scalar_type() == at::kLong && last.scalar_type() == at::kLong &&
                count.sizes() == at::IntArrayRef({n_layers, Bt}) && last.sizes() == count.sizes() &&
                count.is_contiguous() && last.is_contiguous(),
                "LmDecoder.step: the state does not match the layers, the batch or the layer's shape");
    Tensor logits = lmstep::new_cpu({Bt, V}, emb_.scalar_type());
    std::vector<Tensor> out = {logits,
                               lmstep::next_field(conv, kinds, lmstep::writes_mixer),
                               lmstep::next_field(ssm, kinds, lmstep::writes_mixer),
                               lmstep::next_field(held, kinds, lmstep::writes_mixer),
                               lmstep::next_field(sum, kinds, lmstep::writes_pool),
                               lmstep::next_field(count, kinds, lmstep::writes_pool),
                               lmstep::next_field(last, kinds, lmstep::writes_mixer)};
    std::vector<lmstep::SignalMaps> signals;
    if (!reads.empty()) {
      TORCH_CHECK((int64_t)reads.size() == n_layers && (int64_t)maps.size() == 4 * n_layers &&
                  (int64_t)scales.size() == n_layers, "LmDecoder.step: per layer a read flag, 4 maps and a scale");
      for (int64_t l = 0; l < n_layers; ++l) {
        auto m = [&](int i) { return maps[4 * l + i].value_or(Tensor()); };
        lmstep::SignalMaps s{reads[l] ? m(0) : Tensor(), m(1), m(2), m(3), scales[l]};
        if (s.proj.defined()) {
          for (const Tensor* t : {&s.proj, &s.offset, &s.w, &s.b})
            TORCH_CHECK(!t->defined() || (t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt),
                        "LmDecoder.step: the signal's maps must be contiguous on the CPU, of the model's dtype");
          TORCH_CHECK(s.proj.dim() == 2 && s.proj.size(1) == d && s.w.dim() == 2 && s.proj.size(0) > s.w.size(1) &&
                      s.b.defined() && s.b.numel() == s.w.size(0) &&
                      (!s.offset.defined() || s.offset.numel() == s.proj.size(0)),
                      "LmDecoder.step: layer ", l, "'s signal maps do not match (proj (r + N, d), dt rows (k, r))");
        }
        signals.push_back(s);
      }
      out.push_back(torch::zeros({n_layers, Bt}, emb_.options()));
    }
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(dt, "lm_step", [&] {
      std::vector<const scalar_t*> nw, gw;
      for (const auto& t : norms_) nw.push_back(t.data_ptr<scalar_t>());
      for (const auto& t : gates_) gw.push_back(t.data_ptr<scalar_t>());
      finite = lmstep::run<scalar_t>(tok, emb_.data_ptr<scalar_t>(), nw, eps_, head_w_.data_ptr<scalar_t>(),
                                     head_b_.defined() ? head_b_.data_ptr<scalar_t>() : nullptr, ws_, gw, kinds,
                                     some ? row_starts.data() : nullptr, state,
                                     {out.begin() + 1, out.begin() + 1 + lmstep::kState}, logits.data_ptr<scalar_t>(),
                                     signals, signals.empty() ? nullptr : out.back().data_ptr<scalar_t>(), position,
                                     Bt, d, V);
    });
    if (finite && !signals.empty()) {
      const Tensor& rho = out.back();
      AT_DISPATCH_FLOATING_TYPES(dt, "lm_step_signal", [&] {
        const scalar_t* p = rho.data_ptr<scalar_t>();
        for (int64_t j = 0; j < rho.numel(); ++j)
          if (!std::isfinite(p[j])) finite = false;
      });
      if (!finite) return {kSignal, std::move(out)};
    }
    return {finite ? kOk : kNonFinite, std::move(out)};
  }

 private:
  // Where a source's memory lies: a .to() or an assignment of .data gives it new storage. Read without
  // data_ptr's checks (dtype, initialised storage), which for some 60 sources showed in a step's profile.
  static const void* storage_of(const Tensor& t) { return t.unsafeGetTensorImpl()->unsafe_storage().data(); }

  Tensor emb_, head_w_, head_b_;
  std::vector<Tensor> norms_, gates_;
  std::vector<double> eps_;
  std::vector<StepWeights> ws_;
  std::vector<Tensor> sources_, copied_;
  std::vector<const void*> pointers_;
  std::vector<int64_t> versions_;
};
