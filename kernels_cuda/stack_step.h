// A stack of full-resolution Mamba layers' decoding step in one call (issue 24's hourglass stages, issue
// 23's "decoding that skips work"), included by scan_cpu.cpp after lm_step.h (new_cpu), layer_step_rows
// and rms_rows.
//
// Reference: tiling.modules.hourglass.MambaStack.step's torch path, per layer
//   x = RMSNorm_l(h),  h = h + mixer_step_l(x)   (Δ × 1: every byte of a stage is a token of it),
// which is :class:`TiledMamba`'s step at budget 1 (the block scope's full-resolution kind, lm_step.h's
// kFull) with no pool. The encoder and decoder run it on every byte, the main network on the segment
// starts. A stage's step was a dozen Python calls per layer (the norm, the state's checks, the weights'
// cache, the scope's dispatch, the state's dataclass), 100-200 µs on a busy 2-core machine where the
// layer's arithmetic at d_model 128 is a few; here it is one call per stage.
#pragma once

// StackDecoder(norms: the layers' RMSNorm weights (d,), eps likewise, weights: 11 per layer (layer_step's,
//              lm_step.h's kWeights), sources: the parameters these are made from, whose storage step
//              watches (a .to() moves it), copied: those whose values it holds a copy of (A = -exp(A_log)),
//              whose version it watches (an in-place update))
// step(x (Bt, d), conv (layers, Bt, E, K), ssm (layers, Bt, E, N))
//   -> (status, [h (Bt, d) the stack's output, x (Bt, d) the last layer's normed input, conv, ssm]);
//   status 0 (done) or 2 (a source was moved or updated in place since the decoder was made: make
//   another; nothing computed). Values are not checked: the model checks its logits once per step. The
//   state passed in is never written.
class StackDecoder {
 public:
  StackDecoder(const std::vector<Tensor>& norms, const std::vector<double>& eps,
               const std::vector<c10::optional<Tensor>>& weights, const std::vector<Tensor>& sources,
               const std::vector<Tensor>& copied)
      : norms_(norms), eps_(eps), sources_(sources), copied_(copied) {
    const int64_t n_layers = (int64_t)norms.size();
    TORCH_CHECK(n_layers >= 1 && (int64_t)eps.size() == n_layers &&
                    (int64_t)weights.size() == lmstep::kWeights * n_layers,
                "StackDecoder: per layer one norm, its eps and 11 weights");
    auto w = [&](int64_t i) { return weights[i].value_or(Tensor()); };
    for (int64_t l = 0; l < n_layers; ++l) {
      const int64_t i = l * lmstep::kWeights;
      ws_.push_back({w(i), w(i + 1), w(i + 2), w(i + 3), w(i + 4), w(i + 5), w(i + 6), w(i + 7), w(i + 8), w(i + 9),
                     w(i + 10)});
    }
    const int64_t d = norms_[0].numel();
    const auto dt = norms_[0].scalar_type();
    for (int64_t l = 0; l < n_layers; ++l) {
      const StepWeights& s = ws_[l];
      TORCH_CHECK(norms_[l].numel() == d && s.W_in.size(1) == d && s.W_out.size(0) == d &&
                  s.W_in.size(0) == ws_[0].W_in.size(0) && s.cw.numel() == ws_[0].cw.numel() &&
                  s.A.sizes() == ws_[0].A.sizes(), "StackDecoder: layer ", l, " is not of layer 0's shape (the "
                  "state is stacked over the layers)");
      const Tensor* norm = &norms_[l];
      for (const Tensor* t :
           {norm, &s.W_in, &s.b_in, &s.cw, &s.cb, &s.Wx, &s.Wdt, &s.bdt, &s.A, &s.D, &s.W_out, &s.b_out})
        TORCH_CHECK(!t->defined() || (t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt),
                    "StackDecoder: every tensor must be contiguous on the CPU, of one dtype");
    }
    for (const auto& t : sources_) pointers_.push_back(t.data_ptr());
    for (const auto& t : copied_) versions_.push_back(t._version());
  }

  std::tuple<int64_t, std::vector<Tensor>> step(const Tensor& x, const Tensor& conv, const Tensor& ssm) const {
    for (size_t i = 0; i < sources_.size(); ++i)
      if (sources_[i].data_ptr() != pointers_[i]) return {Decoder::kStale, {}};
    for (size_t i = 0; i < copied_.size(); ++i)
      if (copied_[i]._version() != versions_[i]) return {Decoder::kStale, {}};
    const int64_t n_layers = (int64_t)ws_.size(), d = norms_[0].numel();
    const StepWeights& w = ws_[0];
    const int64_t E = w.W_in.size(0) / 2, N = w.A.size(1), K = w.cw.numel() / E;
    const auto dt = norms_[0].scalar_type();
    for (const Tensor* t : {&x, &conv, &ssm})
      TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dt,
                  "StackDecoder.step: x and the state must be contiguous on the CPU, of the stack's dtype");
    TORCH_CHECK(x.dim() == 2 && x.size(1) == d, "StackDecoder.step: x must be (Bt, ", d, ")");
    const int64_t Bt = x.size(0);
    TORCH_CHECK(conv.sizes() == at::IntArrayRef({n_layers, Bt, E, K}) &&
                ssm.sizes() == at::IntArrayRef({n_layers, Bt, E, N}),
                "StackDecoder.step: the state does not match the layers, the batch or the layer's shape");
    Tensor h = lmstep::new_cpu({Bt, d}, dt), xn = lmstep::new_cpu({Bt, d}, dt);
    Tensor conv1 = lmstep::new_cpu(conv.sizes(), dt), ssm1 = lmstep::new_cpu(ssm.sizes(), dt);
    AT_DISPATCH_FLOATING_TYPES(dt, "stack_step", [&] {
      scalar_t *hp = h.data_ptr<scalar_t>(), *xp = xn.data_ptr<scalar_t>();
      std::memcpy(hp, x.data_ptr<scalar_t>(), sizeof(scalar_t) * Bt * d);
      std::vector<scalar_t> out((size_t)(Bt * d)), r((size_t)Bt);
      for (int64_t l = 0; l < n_layers; ++l) {
        rms_rows<scalar_t>(hp, norms_[l].data_ptr<scalar_t>(), xp, r.data(), Bt, d, eps_[l]);
        const int64_t c = l * Bt * E * K, s = l * Bt * E * N;  // layer l's slice of the stacked state
        layer_step_rows<scalar_t>(xp, conv.data_ptr<scalar_t>() + c, ssm.data_ptr<scalar_t>() + s, ws_[l],
                                  /*last_start=*/nullptr, /*position=*/0, out.data(), conv1.data_ptr<scalar_t>() + c,
                                  ssm1.data_ptr<scalar_t>() + s, Bt, d, E, K, N, ws_[l].Wdt.size(1));
        for (int64_t j = 0; j < Bt * d; ++j) hp[j] = hp[j] + out[j];
      }
    });
    return {Decoder::kOk, {h, xn, conv1, ssm1}};
  }

 private:
  std::vector<Tensor> norms_;
  std::vector<double> eps_;
  std::vector<StepWeights> ws_;
  std::vector<Tensor> sources_, copied_;
  std::vector<const void*> pointers_;
  std::vector<int64_t> versions_;
};
