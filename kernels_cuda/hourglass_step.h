// The whole HourglassLM's decoding step in one call, for the boundary signals uniform, H-Net's cosine router,
// the auxiliary head's entropy and surprisal, in the byte form with either rule (issue 23, time follows FLOPs;
// issue 24's deployment goal). Included by scan_cpu.cpp after stack_step.h (StackDecoder), lm_step.h (new_cpu)
// and matvec_rows.
//
// The theory: the signals are seed 001 §3.4 step 1's information density (the next byte's surprisal, the predictive
// distribution's entropy; H-Net's learned router beside them), and the byte form places a boundary per byte under
// a budget controller where the seeds set a resolution R_i per tile (seed 001 §3.2.2): docs/tiling.md, "The
// hourglass", says why. This file holds no new arithmetic of its own; it is the reference's step, fused.
// Reference: tiling.modules.hourglass.HourglassLM.step, which this reproduces operation by operation:
//   x = embed(token);  h = Encoder.step(x)
//   starts, p:  budget 1: every byte, p = 1 (the signal's state stays);  uniform: ⌊t·c⌋ > ⌊(t − 1)·c⌋ (t = 0
//               always), p = start;  else the float32 score s_t of the signal (BoundaryRouter.step):
//                 router (TokenRouter.step): k_t = k̂(h_t), s_t = p_t = clamp(½(1 − q̂(h_t)·k_{t−1}), 0, 1), p_0 = 1;
//                 entropy, surprisal: log q_t = log_softmax(W_aux RMSNorm_aux(h_t)) in float32, s_t = H(q_t) or
//                 −log q_{t−1}(x_t) (0 at the first byte);
//               the monotonic rule takes s_t − s_{t−1}; the causal controller (boundary.causal_boundaries)
//               compares the score with the float32 threshold θ(c): D += c; take if t = 0 or D ≥ S, not if
//               D − 1 < −S, else s_t > θ; D −= 1 where taken; p = sigmoid((s_t − θ)/scale) (1 while θ = ∞)
//   rep = h + gate · pool_sum / max(pool_count, 1) at a start (Chunk.step); the pool grows elsewhere
//   at a start: z = W_out Main.step(W_in rep);  EMA: z = p z + (1 − p) held, p clamped to [1e-4, 1 − 1e-6]
//               in float32 (budget < 1);  held = z
//   y = held + W_res h;  logits = head(RMSNorm_f(Decoder.step(y)))
// The main network steps only the rows that start a segment (the reference steps every row and keeps the
// others' state: the same values, as rows do not interact). The auxiliary head's score and probability are made
// by the reference's own ATen ops on the same shapes, so they are its values bit for bit (the EMA reads the score
// through sigmoid((s − θ)/scale), which magnifies a last-bit difference by up to 1/(4·scale)). Departures: the
// router's maps, norms and cosine, W_in, W_out, W_res and the head are matvec_rows with sums in double, and GCC
// may contract a product and a sum into one fused multiply-add (the pool, the EMA), so those values equal the
// reference's to float rounding (tests: 1e-5), not bit for bit. (The reference step and the forward differ so
// too: their products run on other shapes.)
#pragma once

namespace hgstep {

enum Signal : int64_t { kUniform = 0, kRouter = 1, kEntropy = 2, kSurprisal = 3 };
constexpr int kState = 13;  // enc conv, enc ssm, main conv, main ssm, dec conv, dec ssm, pool_sum, pool_count, held,
                            // surplus; and the signal's, each None until set: key, prev_logp, prev_score
constexpr int kRequired = 10;

// v / max(|v|, eps) in place, for rows of length r (F.normalize)
template <typename T> void normalize_rows(T* v, int64_t rows, int64_t r, double eps) {
  for (int64_t b = 0; b < rows; ++b) {
    T* x = v + b * r;
    double s = 0;
    for (int64_t j = 0; j < r; ++j) s += (double)x[j] * (double)x[j];
    const T n = (T)std::max(std::sqrt(s), eps);
    for (int64_t j = 0; j < r; ++j) x[j] = x[j] / n;
  }
}

// the uniform policy's start at position t (boundary.uniform_boundaries)
inline bool uniform_start(int64_t t, double c) {
  return t == 0 || std::floor((double)t * c) > std::floor((double)(t - 1) * c);
}

}  // namespace hgstep

// HourglassDecoder(encoder, main, decoder: the stages' StackDecoders; emb (V, d) (the tied head); signal
//                  (hgstep::Signal); monotonic: the rule; wq, wk (r, d): the router's maps, or None; aux_norm (d,)
//                  and its eps, aux_head (V, d): the auxiliary head, or None; gate (d,) the pool gate; w_in (d_main,
//                  d) and w_out (d, d_main) or None (identity); w_res (d, d); norm_f (d,) and its eps; ema: the EMA
//                  dechunk; sources: the tensors above as the model holds them, whose storage and version step
//                  watches)
// step(tokens (Bt,) int64, budget c, threshold θ(c), the probability's scale, slack S, position t, state: the
//      kState tensors)
//   -> (status, [logits (Bt, V), the kState new tensors, p (Bt,) the boundary probability, starts (Bt,) bool]);
//   status as LmDecoder's: kOk, kNonFinite (a logit is NaN/Inf: the caller names it through the reference path),
//   kStale (a weight moved or was updated in place: make another), kToken (a token outside [0, V)).
//   The state passed in is never written; a field the step does not change is passed through.
class HourglassDecoder {
 public:
  HourglassDecoder(const StackDecoder& encoder, const StackDecoder& main, const StackDecoder& decoder,
                   const Tensor& emb, int64_t signal, bool monotonic, const c10::optional<Tensor>& wq,
                   const c10::optional<Tensor>& wk, const c10::optional<Tensor>& aux_norm, double aux_eps,
                   const c10::optional<Tensor>& aux_head, const Tensor& gate, const c10::optional<Tensor>& w_in,
                   const c10::optional<Tensor>& w_out, const Tensor& w_res, const Tensor& norm_f, double eps_f, bool ema,
                   const std::vector<Tensor>& sources)
      : enc_(encoder), main_(main), dec_(decoder), emb_(emb), signal_(signal), monotonic_(monotonic),
        wq_(wq.value_or(Tensor())), wk_(wk.value_or(Tensor())), aux_norm_(aux_norm.value_or(Tensor())),
        aux_eps_(aux_eps), aux_head_(aux_head.value_or(Tensor())), gate_(gate), w_in_(w_in.value_or(Tensor())),
        w_out_(w_out.value_or(Tensor())), w_res_(w_res), norm_f_(norm_f), eps_f_(eps_f), ema_(ema), sources_(sources) {
    const int64_t d = emb.size(1), V = emb.size(0);
    const auto dt = emb.scalar_type();
    TORCH_CHECK(signal >= hgstep::kUniform && signal <= hgstep::kSurprisal,
                "HourglassDecoder: signal is 0 (uniform), 1 (router), 2 (entropy) or 3 (surprisal)");
    TORCH_CHECK((signal == hgstep::kRouter) == (wq_.defined() && wk_.defined()) &&
                    (!wq_.defined() || (wq_.dim() == 2 && wq_.size(1) == d && wk_.sizes() == wq_.sizes())),
                "HourglassDecoder: the router reads its two maps (r, d_outer), no other signal does");
    const bool aux = signal == hgstep::kEntropy || signal == hgstep::kSurprisal;
    TORCH_CHECK(aux == (aux_norm_.defined() && aux_head_.defined()) &&
                    (!aux || (aux_norm_.numel() == d && aux_head_.size(0) == V && aux_head_.size(1) == d)),
                "HourglassDecoder: entropy and surprisal read the auxiliary head (V, d_outer) and its norm");
    TORCH_CHECK(w_in_.defined() == w_out_.defined() &&
                    (!w_in_.defined() || (w_in_.size(1) == d && w_out_.size(0) == d && w_out_.size(1) == w_in_.size(0))),
                "HourglassDecoder: main_in (d_main, d_outer) and main_out (d_outer, d_main) go together");
    TORCH_CHECK(gate_.numel() == d && norm_f_.numel() == d && w_res_.size(0) == d && w_res_.size(1) == d,
                "HourglassDecoder: the pool gate, the final norm and the residual map are of width d_outer");
    for (const Tensor* t : {&emb_, &wq_, &wk_, &aux_norm_, &aux_head_, &gate_, &w_in_, &w_out_, &w_res_, &norm_f_})
      TORCH_CHECK(!t->defined() || (t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt),
                  "HourglassDecoder: every tensor must be contiguous on the CPU, of the embedding's dtype");
    for (const auto& t : sources_)  // an inference tensor keeps no version (nor can it be updated outside inference)
      pointers_.push_back(t.data_ptr()), versions_.push_back(t.is_inference() ? -1 : (int64_t)t._version());
  }

  std::tuple<int64_t, std::vector<Tensor>> step(const Tensor& tokens, double budget, double threshold, double scale,
                                                double slack, int64_t position,
                                                const std::vector<c10::optional<Tensor>>& state_) const {
    using Status = Decoder::Status;
    std::vector<Tensor> state;
    for (const auto& t : state_) state.push_back(t.value_or(Tensor()));
    for (size_t i = 0; i < sources_.size(); ++i)  // moved, or updated in place (a copy made of it would be stale)
      if (sources_[i].data_ptr() != pointers_[i] || (versions_[i] >= 0 && (int64_t)sources_[i]._version() != versions_[i]))
        return {Status::kStale, {}};
    TORCH_CHECK((int64_t)state.size() == hgstep::kState, "HourglassDecoder.step: ", hgstep::kState, " state tensors");
    for (int i = 0; i < hgstep::kRequired; ++i)
      TORCH_CHECK(state[i].defined(), "HourglassDecoder.step: only the signal's fields may be None");
    TORCH_CHECK(tokens.scalar_type() == at::kLong && tokens.dim() == 1 && tokens.is_contiguous() && tokens.is_cpu(),
                "HourglassDecoder.step: tokens must be (Bt,) int64 on the CPU");
    const int64_t Bt = tokens.size(0), V = emb_.size(0), d = emb_.size(1);
    const auto dt = emb_.scalar_type();
    const int64_t* tok = tokens.data_ptr<int64_t>();
    for (int64_t b = 0; b < Bt; ++b)
      if (tok[b] < 0 || tok[b] >= V) return {Status::kToken, {}};
    const Tensor &pool_sum = state[6], &pool_count = state[7], &held = state[8], &surplus = state[9];
    const Tensor &key = state[10], &prev_logp = state[11], &prev_score = state[12];
    TORCH_CHECK(pool_sum.sizes() == at::IntArrayRef({Bt, d}) && held.sizes() == pool_sum.sizes() &&
                    pool_sum.scalar_type() == dt && held.scalar_type() == dt && pool_sum.is_contiguous() &&
                    held.is_contiguous() && pool_count.scalar_type() == at::kLong && pool_count.numel() == Bt &&
                    pool_count.is_contiguous() && surplus.scalar_type() == at::kDouble && surplus.numel() == Bt &&
                    surplus.is_contiguous(),
                "HourglassDecoder.step: the pool, the held output and the surplus do not match the batch");
    TORCH_CHECK(!key.defined() || !wq_.defined() || (key.scalar_type() == dt && key.is_contiguous() &&
                                                     key.sizes() == at::IntArrayRef({Bt, wq_.size(0)})),
                "HourglassDecoder.step: the router's key must be (Bt, r) of the model's dtype");
    TORCH_CHECK(!prev_logp.defined() || (prev_logp.scalar_type() == at::kFloat && prev_logp.is_contiguous() &&
                                         prev_logp.sizes() == at::IntArrayRef({Bt, V})),
                "HourglassDecoder.step: the previous log-probabilities must be (Bt, V) float32");
    TORCH_CHECK(!prev_score.defined() || (prev_score.scalar_type() == at::kFloat && prev_score.numel() == Bt &&
                                          prev_score.is_contiguous()),
                "HourglassDecoder.step: the previous score must be (Bt,) float32");
    Tensor x = lmstep::new_cpu({Bt, d}, dt);
    AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_embed", [&] {
      for (int64_t b = 0; b < Bt; ++b)
        std::memcpy(x.data_ptr<scalar_t>() + b * d, emb_.data_ptr<scalar_t>() + tok[b] * d, sizeof(scalar_t) * d);
    });
    auto [es, eo] = enc_.step(x, state[0], state[1]);
    if (es != Status::kOk) return {es, {}};
    const Tensor& h = eo[0];
    Tensor p = lmstep::new_cpu({Bt}, dt), starts = lmstep::new_cpu({Bt}, at::kBool);
    Tensor surplus1 = surplus, key1 = key, logp1 = prev_logp, raw = prev_score;
    bool* sp = starts.data_ptr<bool>();
    const bool scored = budget < 1.0 && signal_ != hgstep::kUniform;
    Tensor head_p;  // the head's signals: the probability, by the reference's ops
    if (scored) {
      surplus1 = lmstep::new_cpu({Bt}, at::kDouble);
      if (signal_ == hgstep::kRouter) {
        raw = lmstep::new_cpu({Bt}, at::kFloat);
        key1 = lmstep::new_cpu({Bt, wk_.size(0)}, dt);
      } else {
        std::tie(raw, logp1) = head_score(h, tokens, prev_logp);
        const Tensor score = monotonic_ ? raw - (prev_score.defined() ? prev_score : raw) : raw;
        head_p = (std::isfinite(threshold) ? at::sigmoid((score - threshold) / scale) : at::ones_like(score)).to(dt);
      }
    }
    AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_signal", [&] {
      scalar_t* pp = p.data_ptr<scalar_t>();
      if (!scored) {  // every byte, or the uniform rule
        for (int64_t b = 0; b < Bt; ++b) {
          sp[b] = budget >= 1.0 || hgstep::uniform_start(position, budget);
          pp[b] = sp[b] ? scalar_t(1) : scalar_t(0);
        }
        return;
      }
      if (signal_ == hgstep::kRouter) router_rows<scalar_t>(h.data_ptr<scalar_t>(), key, key1, raw.data_ptr<float>(), pp, Bt);
      const double* D0 = surplus.data_ptr<double>();
      double* D1 = surplus1.data_ptr<double>();
      const float* rp = raw.data_ptr<float>();
      const float* prev = prev_score.defined() ? prev_score.data_ptr<float>() : nullptr;
      const float theta = (float)threshold;  // torch compares a float32 score with a Python float in float32
      for (int64_t b = 0; b < Bt; ++b) {
        const float score = monotonic_ ? rp[b] - (prev ? prev[b] : rp[b]) : rp[b];
        double D = D0[b] + budget;
        bool take;
        if (position == 0 || D >= slack)
          take = true;
        else if (D - 1.0 < -slack)
          take = false;
        else
          take = score > theta;
        if (take) D -= 1.0;
        D1[b] = D;
        sp[b] = take;
      }
    });
    if (head_p.defined()) p = head_p;
    std::vector<int64_t> rows;
    for (int64_t b = 0; b < Bt; ++b)
      if (sp[b]) rows.push_back(b);
    const int64_t Bs = (int64_t)rows.size();
    Tensor sum1 = lmstep::new_cpu({Bt, d}, dt), count1 = lmstep::new_cpu({Bt}, at::kLong);
    Tensor held1 = Bs ? lmstep::new_cpu({Bt, d}, dt) : held;
    Tensor mconv = state[2], mssm = state[3];
    Tensor rep = lmstep::new_cpu({Bs, d}, dt);
    AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_chunk", [&] {
      const scalar_t *hp = h.data_ptr<scalar_t>(), *ps = pool_sum.data_ptr<scalar_t>(), *g = gate_.data_ptr<scalar_t>();
      const int64_t* pc = pool_count.data_ptr<int64_t>();
      scalar_t *os = sum1.data_ptr<scalar_t>(), *rp = rep.data_ptr<scalar_t>();
      int64_t* oc = count1.data_ptr<int64_t>();
      for (int64_t b = 0, i = 0; b < Bt; ++b) {
        if (i < Bs && rows[i] == b) {  // a start: the representative (Chunk.step, as lm_step.h's), the pool empties
          lmstep::representative<scalar_t>(hp + b * d, g, ps + b * d, pc[b], rp + i * d, d);
          std::fill(os + b * d, os + (b + 1) * d, scalar_t(0));
          oc[b] = 0, ++i;
        } else {
          for (int64_t j = 0; j < d; ++j) os[b * d + j] = ps[b * d + j] + hp[b * d + j];
          oc[b] = pc[b] + 1;
        }
      }
    });
    if (Bs) {
      const bool all = Bs == Bt;
      Tensor idx;
      if (!all) idx = torch::tensor(rows, torch::dtype(at::kLong));
      Tensor zin = rep;
      if (w_in_.defined()) {
        zin = lmstep::new_cpu({Bs, w_in_.size(0)}, dt);
        AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_main_in", [&] {
          matvec_rows<scalar_t>(w_in_.data_ptr<scalar_t>(), nullptr, rep.data_ptr<scalar_t>(), zin.data_ptr<scalar_t>(),
                                w_in_.size(0), d, Bs);
        });
      }
      const Tensor c0 = all ? state[2] : state[2].index_select(1, idx).contiguous();
      const Tensor s0 = all ? state[3] : state[3].index_select(1, idx).contiguous();
      auto [ms, mo] = main_.step(zin, c0, s0);
      if (ms != Status::kOk) return {ms, {}};
      if (all) {
        mconv = mo[2], mssm = mo[3];
      } else {
        mconv = state[2].clone(), mssm = state[3].clone();
        mconv.index_copy_(1, idx, mo[2]);
        mssm.index_copy_(1, idx, mo[3]);
      }
      AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_main_out", [&] {
        std::vector<scalar_t> zb;
        const scalar_t* z = mo[0].data_ptr<scalar_t>();
        if (w_out_.defined()) {
          zb.resize((size_t)(Bs * d));
          matvec_rows<scalar_t>(w_out_.data_ptr<scalar_t>(), nullptr, z, zb.data(), d, w_out_.size(1), Bs);
          z = zb.data();
        }
        const scalar_t *h0 = held.data_ptr<scalar_t>(), *pp = p.data_ptr<scalar_t>();
        scalar_t* h1 = held1.data_ptr<scalar_t>();
        const bool smooth = ema_ && budget < 1.0;
        const float lo = 1e-4f, hi = (float)(1.0 - 1e-6);
        for (int64_t b = 0, i = 0; b < Bt; ++b) {
          if (i < Bs && rows[i] == b) {
            const scalar_t* zr = z + i * d;
            if (smooth) {  // prob.to(float32).clamp(lo, hi).to(dtype): p z + (1 − p) held
              const scalar_t pb = (scalar_t)std::min(std::max((float)pp[b], lo), hi), qb = scalar_t(1) - pb;
              for (int64_t j = 0; j < d; ++j) h1[b * d + j] = pb * zr[j] + qb * h0[b * d + j];
            } else {
              std::memcpy(h1 + b * d, zr, sizeof(scalar_t) * d);
            }
            ++i;
          } else {
            std::memcpy(h1 + b * d, h0 + b * d, sizeof(scalar_t) * d);
          }
        }
      });
    }
    Tensor y = lmstep::new_cpu({Bt, d}, dt);
    AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_residual", [&] {
      scalar_t* yp = y.data_ptr<scalar_t>();
      matvec_rows<scalar_t>(w_res_.data_ptr<scalar_t>(), nullptr, h.data_ptr<scalar_t>(), yp, d, d, Bt);
      const scalar_t* hl = held1.data_ptr<scalar_t>();
      for (int64_t j = 0; j < Bt * d; ++j) yp[j] = hl[j] + yp[j];
    });
    auto [ds, dout] = dec_.step(y, state[4], state[5]);
    if (ds != Status::kOk) return {ds, {}};
    Tensor logits = lmstep::new_cpu({Bt, V}, dt);
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(dt, "hourglass_head", [&] {
      std::vector<scalar_t> xn((size_t)(Bt * d)), rr((size_t)Bt);
      rms_rows<scalar_t>(dout[0].data_ptr<scalar_t>(), norm_f_.data_ptr<scalar_t>(), xn.data(), rr.data(), Bt, d, eps_f_);
      scalar_t* lp = logits.data_ptr<scalar_t>();
      matvec_rows<scalar_t>(emb_.data_ptr<scalar_t>(), nullptr, xn.data(), lp, V, d, Bt);
      for (int64_t j = 0; j < Bt * V; ++j)
        if (!std::isfinite(lp[j])) finite = false;
    });
    std::vector<Tensor> out = {logits, eo[2], eo[3], mconv, mssm, dout[2], dout[3], sum1, count1, held1,
                               surplus1, key1, logp1, raw, p, starts};
    return {finite ? Status::kOk : Status::kNonFinite, std::move(out)};
  }

 private:
  // the router's float32 score (its p_t), p and new key, by matvec_rows and loops: the reference's values to ~1e-7
  // (the router's p enters the EMA as it is), a few microseconds where its dozen torch ops take some fifty
  template <typename T>
  void router_rows(const T* h, const Tensor& key, const Tensor& key1, float* raw, T* p, int64_t Bt) const {
    const int64_t d = emb_.size(1), r = wq_.size(0);
    T* kp = key1.data_ptr<T>();
    matvec_rows<T>(wk_.data_ptr<T>(), nullptr, h, kp, r, d, Bt);
    hgstep::normalize_rows<T>(kp, Bt, r, 1e-6);
    std::vector<T> q((size_t)(Bt * r));
    const T* k0 = key.defined() ? key.data_ptr<T>() : nullptr;
    if (k0) {
      matvec_rows<T>(wq_.data_ptr<T>(), nullptr, h, q.data(), r, d, Bt);
      hgstep::normalize_rows<T>(q.data(), Bt, r, 1e-6);
    }
    for (int64_t b = 0; b < Bt; ++b) {
      T pb = T(1);
      if (k0) {
        T s = 0;
        for (int64_t j = 0; j < r; ++j) s += q[b * r + j] * k0[b * r + j];
        pb = std::min(std::max(T(0.5) * (T(1) - s), T(0)), T(1));
      }
      p[b] = pb, raw[b] = (float)pb;
    }
  }

  // (score (Bt,) float32, log-probabilities (Bt, V) float32) of the auxiliary head, by the reference's own ATen ops
  // on the same shapes, so bit for bit its values: the EMA reads the score through sigmoid((s − θ)/scale), whose
  // slope 1/(4·scale) would magnify a last-bit difference into the logits
  std::tuple<Tensor, Tensor> head_score(const Tensor& h, const Tensor& tokens, const Tensor& prev_logp) const {
    const Tensor xn = rms_norm_fwd(h, aux_norm_, aux_eps_)[0];  // the model's rms_norm on the CPU
    const Tensor logp = at::log_softmax(at::linear(xn, aux_head_).to(at::kFloat), -1);
    const Tensor raw = signal_ == hgstep::kEntropy ? at::neg((at::exp(logp) * logp).sum(-1))
                       : prev_logp.defined()       ? at::neg(prev_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
                                                   : at::zeros({h.size(0)}, logp.options());
    return {raw, logp};
  }

  StackDecoder enc_, main_, dec_;
  Tensor emb_;
  int64_t signal_;
  bool monotonic_;
  Tensor wq_, wk_, aux_norm_;
  double aux_eps_;
  Tensor aux_head_, gate_, w_in_, w_out_, w_res_, norm_f_;
  double eps_f_;
  bool ema_;
  std::vector<Tensor> sources_;
  std::vector<const void*> pointers_;
  std::vector<int64_t> versions_;
};
