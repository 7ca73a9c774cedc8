"""Random inputs and tiling plans for the adaptive-scan tests (CPU and CUDA kernels share them)."""
import torch

f64 = torch.float64
OPTIONAL = ("D", "z", "delta_bias", "boundary_gain", "initial_state")


def make(batch, dim, L, N, G, T, seed, dtype=f64, present=OPTIONAL, res_lo=0.05):
    """Random inputs on the CPU (B/C grouped when G is not None) and a random plan (resolution, state dims)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    nt = -(-L // T)
    Bs = (batch, N, L) if G is None else (batch, G, N, L)
    t = dict(u=r(batch, dim, L), delta=0.5 * r(batch, dim, L), A=-torch.rand(dim, N, generator=g, dtype=dtype) - 0.1,
             B=r(*Bs), C=r(*Bs), D=r(dim), z=r(batch, dim, L), delta_bias=0.3 * r(dim),
             boundary_gain=0.5 * r(dim, N), initial_state=r(batch, dim, N))
    for k in OPTIONAL:
        if k not in present:
            t[k] = None
    kw = dict(tile_size=T, resolution=(torch.rand(batch, nt, generator=g, dtype=dtype) * (1 - res_lo) + res_lo),
              state_dims=torch.randint(1, N + 1, (batch, nt), generator=g))
    return t, kw


def run(fn, t, kw, softplus=True, seed=1):
    """All outputs of fn and the gradients of a random projection of them (y, last, tile states)."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    y, last, tiles = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
                        leaves["delta_bias"], softplus, boundary_gain=leaves["boundary_gain"],
                        initial_state=leaves["initial_state"], return_tile_states=True, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=f64).to(o.device)).sum() for o in (y, last, tiles))
    loss.backward()
    grads = {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items() if v is not None}
    return {"y": y, "last": last, "tiles": tiles}, grads
