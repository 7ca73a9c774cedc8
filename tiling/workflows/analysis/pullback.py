"""The pulled-back Fisher metric of a layer's attention input (the ``pullback`` section of ``infogeo analyse``).

:func:`_pullback` is the closed form of seed 000 §3.1.1 pulled back through one layer's attention, with
the keys of the text held fixed (its docstring states the departure); :mod:`.compute` calls it per layer.
"""
from __future__ import annotations

import torch

from infogeo.fisher import attention_row_metric, effective_dimension

__all__: list[str] = []


def _pullback(x: torch.Tensor, proj, attn_layer: torch.Tensor, chunk: int = 16) -> dict:
    """Pulled-back Fisher metric of the attention input x through one layer's attention.

    For head h, p_h(x_t) = softmax(s · q_h(x_t) K_hᵀ) with q_h = A_h x_t + b_h and the keys
    K_h of this text held fixed; its Fisher metric in q is M_h = attention_row_metric(q_h, K_h)
    = s² K_hᵀ(diag p − p pᵀ)K_h (seed 000 §3.1.1, pulled back as in the Fisher issue). The heads
    are independent factors of the layer's output, so their metrics add:

        G(x_t) = Σ_h A_hᵀ M_h(x_t) A_h = Aᵀ B(x_t) A,   B = blockdiag_h M_h        (d × d).

    Holding K fixed is the departure from the full derivative of the layer (the keys depend on
    every token); it is the metric of "moving one query", the quantity that reads how a token's
    state changes which other tokens it attends to. For BERT the attention input x is the
    layer's hidden state itself (post-LayerNorm architecture); for GPT-2 and Llama (pre-LN) it is
    the normalised hidden state the query projection reads.

    Causal models (GPT-2, Llama): row t is a distribution over the keys s ≤ t, so
    M_h(x_t) = s² K_hᵀ(diag p_t − p_t p_tᵀ)K_h with p_t zero beyond t — the masked keys drop out
    (``attention_row_metric`` with the causal mask). Rotary models (Llama): the logit is
    s·(R_t q_t)·(R_s k_s) with R_t the rotation of position t, so at fixed position q is linear in
    x with Jacobian R_t A_h and G(x_t) = Σ_h A_hᵀ R_tᵀ M_h R_t A_h, M_h the metric in the rotated
    query (keys rotated, held fixed). The factor becomes L'_h = R_tᵀ L_h and the density
    ρ_t = Σ_h ‖R_t(q_h(x_{t+1}) − q_h(x_t))‖²_{M_h(x_t)}: the metric of moving the state of
    token t at its own position (the rotation of position t+1 is not part of the step).

    G is never formed (n·d³ flops): with M_h = L_h L_hᵀ (blockwise factor L), G = (LᵀA)ᵀ(LᵀA)
    has the same non-zero spectrum as Y = (LᵀA)(LᵀA)ᵀ = Lᵀ(A Aᵀ)L, which costs 2·n·d·H·d_h² flops; trace and
    effective dimension are spectral, so they are computed from Y. The density needs only the
    per-head quadratic forms: ρ_t = (x_{t+1} − x_t)ᵀ G(x_t) (x_{t+1} − x_t)
    = Σ_h ‖q_h(x_{t+1}) − q_h(x_t)‖²_{M_h(x_t)} (the bias cancels).
    Returns trace (n,), effective dimension (n,), density (n−1,) and the largest deviation
    between softmax(s q Kᵀ) and the model's attention map (a check that the hooks read the
    right modules); only the deviation when it exceeds ``_REPRODUCTION_TOL``.
    """
    W_q = proj.query.weight.detach().to("cpu", torch.float64)
    b_q = proj.query.bias.detach().to("cpu", torch.float64) if proj.query.bias is not None else None
    W_k = proj.key.weight.detach().to("cpu", torch.float64)
    b_k = proj.key.bias.detach().to("cpu", torch.float64) if proj.key.bias is not None else None
    q = torch.nn.functional.linear(x, W_q, b_q)
    k = torch.nn.functional.linear(x, W_k, b_k)
    H, dh, s = proj.n_heads, proj.head_dim, proj.scaling
    n = x.shape[0]
    group = H // proj.n_kv_heads
    Q = q.view(n, H, dh).transpose(0, 1)  # (H, n, dh)
    K = k.view(n, -1, dh).transpose(0, 1)[torch.arange(H) // group]  # (H, n, dh), kv heads shared
    rot = proj.rotary(n) if proj.rotary is not None else None
    Qr, Kr = (_rope(Q, *rot), _rope(K, *rot)) if rot is not None else (Q, K)
    mask = torch.ones(n, n, dtype=torch.bool).tril() if proj.causal else None
    logits = s * Qr @ Kr.transpose(-1, -2)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    repro = float((torch.softmax(logits, dim=-1) - attn_layer).abs().max())
    if repro > _REPRODUCTION_TOL:
        # the logits are not s·q·kᵀ of these modules (relative position biases, ALiBi, ...):
        # the closed form does not describe this model's attention
        return {"attention_reproduction_error": repro}
    M = torch.stack([attention_row_metric(Qr[h], Kr[h], scale=s, mask=mask) for h in range(H)])  # (H, n, dh, dh)
    step = Q[:, 1:] - Q[:, :-1]  # the bias cancels
    if rot is not None:
        step = _rope(step, rot[0][:-1], rot[1][:-1])  # R_t (q_{t+1} − q_t): position held at t
    density = torch.einsum("hti,htij,htj->t", step, M[:, :-1], step)
    L = _psd_factor(0.5 * (M + M.transpose(-1, -2)))
    if rot is not None:
        L = _rope(L, rot[0][..., None], rot[1][..., None], inverse=True, dim=-2)  # L' = R_tᵀ L
    S = (W_q @ W_q.T).view(H, dh, H, dh)
    trace, eff = [], []
    for Lc in L.split(chunk, dim=1):  # token chunks keep Y (c, H·dh, H·dh) cache-sized
        LS = torch.einsum("hnba,hbgc->nhagc", Lc, S)  # L_hᵀ S_hg
        Y = torch.einsum("nhagc,gncd->nhagd", LS, Lc).reshape(Lc.shape[1], H * dh, H * dh)
        Y = 0.5 * (Y + Y.transpose(-1, -2))
        trace.append(torch.diagonal(Y, dim1=-2, dim2=-1).sum(-1))
        eff.append(effective_dimension(Y, assume_psd=True))  # Y = Lᵀ(A Aᵀ)L: PSD by construction
    return {
        "trace": torch.cat(trace),
        "effective_dimension": torch.cat(eff),
        "density": density,
        "attention_reproduction_error": repro,
    }


_REPRODUCTION_TOL = 1e-3  # float32 attention maps agree with the float64 recomputation to ~1e-7


def _rope(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, inverse: bool = False,
          dim: int = -1) -> torch.Tensor:
    """R_t v = v·cos_t + rotate_half(v)·sin_t along ``dim`` (Llama's rotary embedding; cos, sin
    broadcast against v, position on the axis before the vector's). ``inverse``: R_tᵀ v =
    v·cos_t − rotate_half(v)·sin_t (cos and sin repeat over the two halves, so the rotation
    commutes with rotate_half's swap)."""
    a, b = v.chunk(2, dim=dim)
    half = torch.cat((-b, a), dim=dim)
    return v * cos - half * sin if inverse else v * cos + half * sin


def _psd_factor(M: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ = M for a batch of PSD matrices: Cholesky, and for the (rare) numerically
    singular ones V·diag(√λ₊) from an eigendecomposition (batched eigh is slow on CPU)."""
    L, info = torch.linalg.cholesky_ex(M)
    bad = info > 0
    if bool(bad.any()):
        ev, V = torch.linalg.eigh(M[bad])
        L[bad] = V * ev.clamp_min(0).sqrt().unsqueeze(-2)
    return L
