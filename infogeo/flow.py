"""The resolution field and its flow on the token graph (seed 000 §3.2.2, Theorem 3.2).

Seed 000 §3.2.2 lets a resolution field :math:`R: \\mathcal M \\to [R_{\\min}, 1]` evolve by
:math:`\\partial R/\\partial t = -\\nabla_g E(R) + \\lambda\\Delta_g R` and states (Theorem 3.2) that it
converges to a local minimum of the energy while staying smooth. The text leaves :math:`E`
open; we take the energy that trades information loss against compute,

.. math:: E(R) = \\sum_i m_i\\big[\\rho_i (1 - R_i)^2 + \\mu R_i\\big],

where :math:`\\rho_i \\ge 0` is the information density of token :math:`i` (seed 000 §3.1.1; e.g.
:func:`infogeo.density.sequence_density` mapped to nodes), :math:`\\mu \\ge 0` the price of compute
per unit resolution, and :math:`m_i` the node masses of the Laplacian (all 1 for
``kind="belkin_niyogi"``, where :math:`E` is literally :math:`\\sum_i\\rho_i(1-R_i)^2 + \\mu\\sum_i R_i`;
mean 1 for the diffusion-maps operator, where they are the quadrature weights that make
:math:`E` a discrete integral). With :math:`-\\Delta_g \\approx M^{-1}A` (:mod:`infogeo.laplacian`)
the right-hand side is minus the :math:`M`-gradient of the total energy

.. math:: F(R) = E(R) + \\tfrac{\\lambda}{2}\\,R^\\top A R, \\qquad
          G(R) = M^{-1}\\nabla F = -2\\rho\\odot(1 - R) + \\mu + \\lambda M^{-1}AR,

(:math:`R^\\top A R = \\langle R, -\\Delta_g R\\rangle_M` is the Dirichlet energy, the smoothness of
Theorem 3.2), and the constraint :math:`R \\in [R_{\\min}, 1]` is enforced by projection:
projected explicit Euler steps :math:`R \\leftarrow \\Pi_{[R_{\\min},1]}(R - \\tau G(R))`.

Step size from the stability bound: the :math:`M`-Hessian of :math:`F` is
:math:`2\\operatorname{diag}\\rho + \\lambda M^{-1}A`, with largest eigenvalue at most
:math:`L = 2\\max\\rho + \\lambda\\,\\lambda_{\\max}(M^{-1}A)` (the latter bounded by
:meth:`GraphLaplacian.max_eigenvalue_bound`). For :math:`0 < \\tau < 2/L` every projected step
decreases :math:`F` by at least :math:`(1/\\tau - L/2)\\|R^+ - R\\|_M^2` (descent lemma plus the
projection inequality), so :math:`F` never increases; the default is :math:`\\tau = 1/L`. The
iteration stops when the projected-gradient residual
:math:`\\|R - \\Pi(R - G(R))\\|_\\infty` falls below ``tol``: then :math:`G_i \\approx 0` where
:math:`R_{\\min} < R_i < 1`, :math:`G_i \\ge 0` where :math:`R_i = R_{\\min}`, :math:`G_i \\le 0`
where :math:`R_i = 1` (the first-order optimality conditions; :math:`F` is convex, so this is
the global minimum: Theorem 3.2 holds here with "local" strengthened to "global").
Departure from the text: :math:`\\nabla_g` is the gradient in the :math:`L^2(M)` inner product of
the discretised field, not the Riemannian gradient on :math:`\\mathcal M` (the field is a
function on the manifold, so this is the natural reading).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from infogeo.checks import check_in_range, check_int, check_positive, check_tensor
from infogeo.graph import TokenGraph
from infogeo.laplacian import GraphLaplacian, laplacian

Tensor = torch.Tensor


@dataclass(frozen=True)
class FlowResult:
    """Outcome of :func:`resolution_flow`.

    Attributes
    ----------
    R : ``(n,)`` final resolution field, a torch tensor with the density's dtype and device.
    energy : ``(steps + 1,)`` float64 numpy, :math:`E(R_k)` along the trajectory.
    dirichlet : ``(steps + 1,)`` float64 numpy, :math:`R_k^\\top A R_k`.
    total : ``energy + lam / 2 * dirichlet`` (non-increasing).
    residual : final projected-gradient residual (sup norm).
    converged : ``residual <= tol``.
    step : the step size used.
    gradient : ``(n,)`` float64 numpy, :math:`G(R)` at the final field (for optimality checks).
    """

    R: Tensor
    energy: np.ndarray
    dirichlet: np.ndarray
    total: np.ndarray
    residual: float
    converged: bool
    step: float
    gradient: np.ndarray


def resolution_flow(
    graph_or_laplacian: TokenGraph | GraphLaplacian,
    density: Tensor,
    *,
    r_min: float,
    lam: float,
    mu: float,
    step: float | None = None,
    r0: Tensor | None = None,
    tol: float = 1e-6,
    max_steps: int = 10000,
    progress: bool = False,
    **laplacian_kwargs,
) -> FlowResult:
    """Evolve :math:`\\partial R/\\partial t = -\\nabla E(R) + \\lambda\\Delta_g R` on :math:`[R_{\\min}, 1]`.

    Parameters
    ----------
    graph_or_laplacian : a :class:`~infogeo.laplacian.GraphLaplacian`, or a
        :class:`~infogeo.graph.TokenGraph` turned into one by :func:`~infogeo.laplacian.laplacian`
        with ``laplacian_kwargs``.
    density : ``(n,)`` information density per node, finite and ``>= 0``.
    r_min : lower resolution bound in (0, 1].
    lam : diffusion coefficient :math:`\\lambda \\ge 0`.
    mu : compute price :math:`\\mu \\ge 0`.
    step : explicit step :math:`\\tau \\in (0, 2/L)`; default :math:`1/L`.
    r0 : ``(n,)`` initial field (clipped to the box); default all ones (full resolution).
    tol : stationarity tolerance on the projected-gradient residual.
    max_steps : iteration cap; ``converged`` is False if reached first.
    progress : tqdm bar over steps.
    **laplacian_kwargs : passed to :func:`~infogeo.laplacian.laplacian` when a graph is given.

    Returns
    -------
    :class:`FlowResult`.

    Raises
    ------
    TypeError
        ``graph_or_laplacian`` is neither a graph nor a Laplacian.
    ValueError
        ``laplacian_kwargs`` come with a Laplacian, an argument lies outside its range, or
        ``step`` ≥ 2/L (the stability bound).

    Notes
    -----
    Formulas in the module docstring (seed 000 §3.2.2, Theorem 3.2).
    """
    # long: the argument checks and the flow's stages (seed 000 §3.2.2) share their locals
    if isinstance(graph_or_laplacian, GraphLaplacian):
        if laplacian_kwargs:
            raise ValueError("laplacian keyword arguments are only used when a TokenGraph is given")
        lap = graph_or_laplacian
    elif isinstance(graph_or_laplacian, TokenGraph):
        lap = laplacian(graph_or_laplacian, **laplacian_kwargs)
    else:
        raise TypeError(
            "graph_or_laplacian must be an infogeo.graph.TokenGraph or infogeo.laplacian.GraphLaplacian, "
            f"got {type(graph_or_laplacian).__name__}"
        )
    n = lap.n
    check_tensor(density, "density", shape=(n,))
    check_positive(density, "density", strict=False)
    check_in_range(r_min, "r_min", 0.0, 1.0, low_open=True)
    check_positive(lam, "lam", strict=False)
    check_positive(mu, "mu", strict=False)
    check_positive(tol, "tol")
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    rho = density.detach().double().cpu().numpy()
    m = lap.mass
    a = lap.stiffness
    lip = 2.0 * float(rho.max()) + float(lam) * lap.max_eigenvalue_bound()
    if step is None:
        tau = 1.0 / lip if lip > 0 else 1.0
    else:
        check_positive(step, "step")
        tau = float(step)
        if lip > 0 and tau >= 2.0 / lip:
            raise ValueError(f"step must be < 2/L = {2.0 / lip:.6g} (stability bound), got {tau:.6g}")
    if r0 is None:
        r = np.ones(n)
    else:
        check_tensor(r0, "r0", shape=(n,))
        r = np.clip(r0.detach().double().cpu().numpy(), r_min, 1.0)

    def evaluate(r: np.ndarray) -> tuple[float, float, np.ndarray]:
        ar = a @ r
        e = float(np.sum(m * (rho * (1.0 - r) ** 2 + mu * r)))
        grad = -2.0 * rho * (1.0 - r) + mu + lam * ar / m
        return e, float(r @ ar), grad

    energy, dirichlet = [], []
    e, d, grad = evaluate(r)
    energy.append(e)
    dirichlet.append(d)
    residual = float(np.abs(r - np.clip(r - grad, r_min, 1.0)).max())
    bar = tqdm(total=max_steps, desc="resolution flow", disable=not progress, leave=False)
    steps = 0
    while residual > tol and steps < max_steps:
        r = np.clip(r - tau * grad, r_min, 1.0)
        e, d, grad = evaluate(r)
        energy.append(e)
        dirichlet.append(d)
        residual = float(np.abs(r - np.clip(r - grad, r_min, 1.0)).max())
        steps += 1
        bar.update(1)
    bar.close()
    energy_a, dirichlet_a = np.asarray(energy), np.asarray(dirichlet)
    return FlowResult(
        R=torch.as_tensor(r, dtype=density.dtype, device=density.device),
        energy=energy_a,
        dirichlet=dirichlet_a,
        total=energy_a + 0.5 * lam * dirichlet_a,
        residual=residual,
        converged=residual <= tol,
        step=tau,
        gradient=grad,
    )
