"""Sequential float64 Mamba selective scan written from the paper's equations.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023), §3.2,
Algorithm 2, with the discretisation used by ``mamba_ssm.selective_scan_fn`` (zero-order hold on
A, Euler on B):

    Δ_t = softplus(Δ_raw,t + bias)            (if delta_softplus)
    h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t
    y_t = C_t · h_t + D u_t,   y_t ← y_t · silu(z_t)

One channel-vectorised step per time index: an independent check of the adaptive scan at
resolution 1, written without tiles or segments.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mamba_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None):
    """Return ``(y, h_L)`` in float64. B, C: (batch, N, L) or (batch, G, N, L)."""
    f64 = torch.float64
    batch, dim, L = u.shape
    N = A.shape[1]
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    G = B.shape[1]
    g = torch.arange(dim) // (dim // G)
    Bd = B.to(f64)[:, g]  # (batch, dim, N, L)
    Cd = C.to(f64)[:, g]
    dt = delta.to(f64) + (delta_bias.to(f64)[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = F.softplus(dt)
    h = initial_state.to(f64) if initial_state is not None else torch.zeros(batch, dim, N, dtype=f64)
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, :, t, None] * A.to(f64))  # (batch, dim, N)
        h = dA * h + (dt[:, :, t] * u[:, :, t].to(f64))[:, :, None] * Bd[:, :, :, t]
        y = (h * Cd[:, :, :, t]).sum(-1)
        if D is not None:
            y = y + D.to(f64) * u[:, :, t].to(f64)
        ys.append(y)
    y = torch.stack(ys, dim=-1)
    if z is not None:
        y = y * F.silu(z.to(f64))
    return y, h
