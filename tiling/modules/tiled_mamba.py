"""``TiledMamba``: a Mamba block whose selective scan runs at a per-tile resolution.

Seed 001 §3.2–3.4 (tiles ``T_i = (M_i, S_i, R_i)``, ``R_i = f(ρ_i, d_i, c_i)``, transitions
``s_{i+1} = φ(s_i, R_i, R_{i+1})``, routing ``y_{i→j} = σ(W_s s_i + W_r (R_i − R_j))``, density,
resolution assignment, ``S_i = max(min(kρ_i, S_max), S_min)``) and seed 000 §3.2.1
(``T = (M, S, R, Φ)``).

Data flow of :meth:`TiledMamba.forward` (shapes for input ``(batch, L, d_model)``)::

    in_proj → (x, z)                      (batch, d_inner, L) each
    causal depthwise conv1d + SiLU on x
    x_proj → (dt_low, B, C); dt_proj      Δ_raw (batch, d_inner, L), B, C (batch, N, L)
    ρ_t = (Σ_d Δ_{t,d}²)·‖B_t‖²           infogeo.density.ssm_density, Δ = softplus(Δ_raw + b)
    ρ_i = mean over tile i                tiling.policy.tile_density
    R_i, S_i                              tiling.policy.resolution_policy / state_dims_policy,
                                          run by the layer's TileRouter (tiling.modules.router)
    adaptive scan (φ: boundary gain)      tiling.ops.adaptive_selective_scan
    routing y_{i→i+1} into tile i+1       gated, zero at initialisation
    out_proj                              (batch, L, d_model)

That is the *scan* scope (``scope="scan"``, :mod:`tiling.modules.scope_scan`): the resolution shrinks
the recurrence only, and in_proj, conv, x_proj, dt_proj and out_proj run on every token. The *block*
scope (``scope="block"``, :mod:`tiling.modules.scope_block`, seed 000 §3.5.1 step 1: "each tile
processes O(R_i·n_i) tokens") runs the whole mixer on one token per segment::

    cheap signal ρ̂ (tiling.modules.router)  →  R_i (policy)  →  m_i = ⌈R_i·T⌉ segments per tile
    Chunk: representative + gated pool (tiling.modules.chunk)   (batch, L_c = Σ_i m_i, d_model)
    in_proj, conv, x_proj, dt_proj, scan at R = 1 (Δ × gap since the last segment), out_proj
    Dechunk: hold each segment's output over its tokens      (batch, L, d_model)

or, with ``boundaries="token"``, segments start where a learned router (H-Net's) says so.

The layer owns the Mamba mixer (its parameters, the projections, conv, scan and one-token step) and
the checks at its boundary; what depends on the scope is its strategy (:mod:`tiling.modules.scope`:
``ScanScope`` or ``BlockScope``, whose boundaries are ``TileBoundaries`` or ``TokenBoundaries``),
chosen once in ``__init__``.

The parameters ``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj`` have the names, shapes
and initialisation of ``mamba_ssm``'s ``Mamba`` and of HF transformers' ``MambaMixer``. The new
parameters start as the identity: ``transition_gain = 0`` (φ = id) and ``route_gate = 0`` (no
routed contribution) in the scan scope, ``chunk.pool_gate = 0`` in the block scope, so at
budget 1 the layer *is* Mamba.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from infogeo.checks import check_choice, check_finite, check_int, check_positive, check_tensor
from tiling.config import TilingConfig
from tiling.modules.chunk import SegmentLayout
from tiling.modules.router import RunningCalibration
from tiling.modules.signal import _linear_density
from tiling.modules.scope import Scope, TiledMambaState, all_finite
from tiling.modules.scope_block import BlockScope
from tiling.modules.scope_scan import ScanScope
from tiling.modules.step_weights import step_weights
from tiling.ops import adaptive_selective_scan, tile_lengths
from tiling.ops.scan import causal_conv1d_silu, cpu_kernels, selective_scan, softplus_gap
from tiling.tile import TilePlan

Tensor = torch.Tensor

_MAMBA_NAMES = (
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
    "dt_proj.bias", "A_log", "D", "out_proj.weight", "in_proj.bias", "out_proj.bias",
)


class TiledMamba(nn.Module):
    """Resolution-adaptive Mamba block (seed 001 §3.2–3.4).

    Parameters
    ----------
    d_model : model width (Mamba's parameters, down to ``dtype``, are those of ``mamba_ssm.Mamba``).
    d_state, d_conv, expand : state size ``N`` (16), conv width (4), ``d_inner / d_model`` (2).
    dt_rank : rank of Δ's projection; ``"auto"`` (default) is ``⌈d_model/16⌉``.
    dt_min, dt_max, dt_init, dt_scale, dt_init_floor : initialisation of Δ (0.001, 0.1,
        ``"random"`` or ``"constant"``, 1.0, 1e-4).
    conv_bias, bias : biases of the conv (True) and of in_proj/out_proj (False).
    device, dtype : of the parameters.
    tiling : :class:`~tiling.config.TilingConfig`, every tiling option (tile size, budget, the
        resolution policy and its calibration, state-dimension policy, routing, scope, boundaries,
        signal channels, router rank, pooling); default ``TilingConfig()``. The layer keeps it as
        :attr:`tiling` with ``s_max`` resolved to ``d_state`` (``s_max`` must be ``≤ d_state`` and
        ``router_rank ≤ d_model``). With ``boundaries="tile"`` (both scopes) the policy is the
        submodule ``tile_router`` (:class:`~tiling.modules.router.TileRouter`);
        ``calibration="running"`` gives it the submodule ``calibrator``
        (:class:`~tiling.modules.router.RunningCalibration`, buffers
        ``tile_router.calibrator.quantiles`` and ``tile_router.calibrator.updates``; checkpoints with
        the former names ``calibrator.*`` and ``calibration_quantiles``/``calibration_updates`` still
        load), updated in training mode after the batch's resolutions are set, so a batch never
        calibrates itself. With ``boundaries="token"`` the submodule ``router`` is the learned
        :class:`~tiling.modules.router.TokenRouter`. Block scope: the whole mixer runs on one token
        per segment (module docstring; ``docs/tiling.md``, "Block scope"); it has no
        state-dimension policy, routing or φ (those act inside the scan's tiles).
    **options : deprecated (removed in the next release, with a ``DeprecationWarning``): the former
        keyword options ``tile_size=, budget=, ...``, the fields of :class:`~tiling.config.TilingConfig`.
    validate : check the input for NaN/Inf on every call (one extra pass over the input,
        ``O(batch·L·d_model)``, and a device synchronisation on GPU); off by default.

    Attributes
    ----------
    tiling : the :class:`~tiling.config.TilingConfig` with ``s_max`` resolved.
    routing : whether cross-tile routing is on (``tiling.routes``).
    tile_router : the policy, :class:`~tiling.modules.router.TileRouter` (``boundaries="tile"``; absent
        with ``boundaries="token"``).
    router : block scope: the learned :class:`~tiling.modules.router.TokenRouter`
        (``boundaries="token"``), or None.
    transition_gain, route_state_weight, route_resolution_weight, route_gate : scan scope: φ's gain
        and the routing weights (:class:`~tiling.modules.scope_scan.ScanScope`).
    chunk, dechunk, signal_index : block scope (:class:`~tiling.modules.scope_block.BlockScope`).
    ratio_loss : H-Net's ratio loss of the last forward (``boundaries="token"``), to be added to
        the task loss; None otherwise.

    Raises
    ------
    TypeError
        ``tiling`` is not a :class:`~tiling.config.TilingConfig`, is given together with the keyword
        options, or an unknown keyword option is given; an integer argument is not an int.
    ValueError
        A size is < 1, ``expand·d_model`` or ``d_inner·d_state`` exceeds what the kernels index,
        ``dt_init`` is not ``"random"``/``"constant"``, ``dt_min``/``dt_max`` not positive or
        ``dt_min > dt_max``, ``s_max > d_state``, ``s_min > s_max``, ``router_rank > d_model``, or a
        keyword option is out of range.

    Warns
    -----
    DeprecationWarning
        The keyword options are given instead of ``tiling``.

    Notes
    -----
    Loading Mamba weights: ``layer.load_state_dict(sd, strict=False)`` accepts a state dict of
    ``mamba_ssm``'s ``Mamba`` or HF's ``MambaMixer``; :meth:`load_mamba_state_dict` does the same
    but insists that every Mamba parameter is present and nothing unknown is given.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        *,
        tiling: TilingConfig | None = None,
        validate: bool = False,
        device=None,
        dtype=None,
        **options,
    ) -> None:
        super().__init__()
        tiling = _tiling_config(tiling, options)
        factory = {"device": device, "dtype": dtype}
        self.d_model = check_int(d_model, "d_model", minimum=1)
        self.d_state = check_int(d_state, "d_state", minimum=1)
        self.d_conv = check_int(d_conv, "d_conv", minimum=1)
        self.expand = check_int(expand, "expand", minimum=1)
        self.d_inner = self.expand * self.d_model
        if self.d_inner > 2 ** 31 - 1 or self.d_inner * self.d_state > 2 ** 40:
            raise ValueError(f"expand·d_model = {self.d_inner} channels with d_state = {self.d_state} exceed the "
                             "sizes the kernels index (2^31 - 1 channels, 2^40 state entries)")
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else check_int(dt_rank, "dt_rank", minimum=1)
        check_choice(dt_init, "dt_init", ["random", "constant"])
        check_positive(dt_min, "dt_min")
        check_positive(dt_max, "dt_max")
        if dt_min > dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got {dt_min} > {dt_max}")
        s_max = self.d_state if tiling.s_max is None else check_int(tiling.s_max, "s_max", minimum=1,
                                                                      maximum=self.d_state)
        check_int(tiling.s_min, "s_min", minimum=1, maximum=s_max)
        if tiling.router_rank is not None:
            check_int(tiling.router_rank, "router_rank", minimum=1, maximum=self.d_model)
        #: the tiling options (``s_max`` resolved to ``d_state``)
        self.tiling = tiling.replace(s_max=s_max)
        self.routing = tiling.routes
        self.validate = bool(validate)

        # --- Mamba's parameters (names, shapes and initialisation of mamba_ssm.Mamba) ---
        self.in_proj = nn.Linear(self.d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
                                padding=self.d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = torch.exp(
                torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.float32))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, **factory))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory)

        # --- the scope's parameters, initialised to the identity / zero contribution ---
        #: the scope's strategy, chosen once: every scope-dependent step is delegated to it
        self._scope: Scope = _SCOPES[tiling.scope](self.tiling)
        self._scope.build(self, factory)
        #: H-Net's ratio loss of the last forward (``boundaries="token"``), to be added to the task loss
        self.ratio_loss: Tensor | None = None

    # ------------------------------------------------------------------ helpers
    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
                f"dt_rank={self.dt_rank}, routing={self.routing}, tiling={self.tiling}")

    # the options read most often, as attributes of the layer (all of them: :attr:`tiling`)
    tile_size = property(lambda self: self.tiling.tile_size, doc="Tile length ``T`` (``tiling.tile_size``).")
    budget = property(lambda self: self.tiling.budget, doc="Default budget ``c`` (``tiling.budget``).")
    r_min = property(lambda self: self.tiling.r_min, doc="Smallest resolution (``tiling.r_min``).")
    policy = property(lambda self: self.tiling.policy, doc="Resolution policy (``tiling.policy``).")
    causal = property(lambda self: self.tiling.causal, doc="Causal plans (``tiling.causal``).")
    scope = property(lambda self: self.tiling.scope, doc="``\"block\"`` or ``\"scan\"`` (``tiling.scope``).")
    boundaries = property(lambda self: self.tiling.boundaries, doc="Segment boundaries (``tiling.boundaries``).")

    @property
    def calibrator(self) -> RunningCalibration | None:
        """The policy's running calibration (``tile_router.calibrator``), or None."""
        policy = getattr(self, "tile_router", None)  # none with boundaries="token"
        return None if policy is None else policy.calibrator

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Checkpoints written before the policy moved into :class:`~tiling.modules.router.TileRouter`
        name the calibration's buffers ``calibrator.*``, and before the calibration became a
        :class:`~tiling.modules.router.RunningCalibration` ``calibration_quantiles`` /
        ``calibration_updates``: read them as ``tile_router.calibrator.*``. A token-boundary layer,
        which has no calibration and never read them, drops them."""
        for old, new in _RENAMED_KEYS.items():
            if prefix + old in state_dict:
                value = state_dict.pop(prefix + old)
                if "tile_router" in self._modules:  # boundaries="tile"
                    state_dict[prefix + new] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def load_mamba_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load the weights of ``mamba_ssm.Mamba`` / HF ``MambaMixer`` (strict on the shared names).

        Parameters
        ----------
        state_dict : the Mamba layer's state dict.

        Raises
        ------
        ValueError
            A Mamba parameter this layer has is missing, or a key is unknown to the layer.

        Notes
        -----
        The tiling parameters (``transition_gain``, ``route_*``) keep their current values.
        """
        own = {k for k in self.state_dict() if k in _MAMBA_NAMES}
        missing = sorted(own - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.state_dict()))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match a Mamba layer: missing {missing}, unexpected {unexpected}")
        self.load_state_dict(state_dict, strict=False)

    def _check_input(self, x: Tensor, name: str = "hidden_states") -> None:
        check_tensor(x, name, ndim=3, finite=False)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"{name} must have shape (batch, L, d_model={self.d_model}), got {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name} must have at least one row and one position, got shape {tuple(x.shape)}")
        if x.dtype != self.in_proj.weight.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the layer's parameters are {self.in_proj.weight.dtype}")
        if self.validate:
            check_finite(x, name)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Projections and conv: ``(u, z, dt_raw, B, C)``; u, z, dt_raw (b, d_inner, L), B, C (b, N, L).

        Every product writes the channel-first layout the scan reads, as a ``bmm`` with the
        weight broadcast over the batch and ``x`` as a transposed BLAS operand, so no transpose
        is copied (``torch.matmul`` of a matrix and a batch computes ``(L, E)`` and copies it)."""
        E, r, N = self.d_inner, self.dt_rank, self.d_state
        xt = x.transpose(1, 2)
        W, bias = self.in_proj.weight, self.in_proj.bias
        u, z = _bmm(W[:E], xt), _bmm(W[E:], xt)
        if bias is not None:
            u, z = u + bias[:E, None], z + bias[E:, None]
        u = causal_conv1d_silu(u, self.conv1d.weight, self.conv1d.bias)
        xdbl = _bmm(self.x_proj.weight, u)  # (b, r + 2N, L): dt_low, B, C
        dt_raw = torch.bmm(self.dt_proj.weight.expand(x.shape[0], -1, -1), xdbl[:, :r])
        return u, z, dt_raw, xdbl[:, r:r + N], xdbl[:, r + N:]

    def _out(self, y: Tensor) -> Tensor:
        """out_proj of the channel-first ``y`` (b, d_inner, L) → (b, L, d_model), without a copy."""
        out = torch.bmm(y.transpose(1, 2), self.out_proj.weight.t().expand(y.shape[0], -1, -1))
        return out if self.out_proj.bias is None else out + self.out_proj.bias

    @staticmethod
    def _external_density(density: Tensor, batch: int, L: int, device) -> Tensor:
        check_tensor(density, "density", shape=(batch, L))
        if bool((density < 0).any()):
            raise ValueError(f"density must be non-negative, got min {float(density.min()):.6g}")
        return density.detach().to(device=device)

    def _signal_maps(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor, float]:
        """The linearised density's composite map ``P = W_x[:r+N] W_in[:E]`` (and its offset from
        in_proj's bias) and the sampled rows of dt_proj (:func:`~tiling.modules.signal.linear_density`)."""
        params = [self.in_proj.weight, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias]
        if self.in_proj.bias is not None:
            params.append(self.in_proj.bias)
        # cached until a weight changes (an optimiser step bumps the version counter in place)
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        cached = getattr(self, "_signal_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        E, r, N = self.d_inner, self.dt_rank, self.d_state
        with torch.no_grad():
            Wx = self.x_proj.weight[: r + N]
            proj = Wx @ self.in_proj.weight[:E]
            offset = None if self.in_proj.bias is None else Wx @ self.in_proj.bias[:E]
            idx = self.signal_index
            maps = (proj, offset, self.dt_proj.weight[idx], self.dt_proj.bias[idx], E / idx.numel())
        self._signal_cache = (key, maps)
        return maps

    def _signal(self, x: Tensor, maps: tuple | None = None) -> Tensor:
        """Block scope's resolution signal ``ρ̂`` (batch, L), ≈ 1.6 % of the block at d_model 768."""
        with torch.no_grad():
            proj, offset, w, b, scale = self._signal_maps() if maps is None else maps
            return _linear_density(x, proj, w, b, scale, offset)

    # ------------------------------------------------------------------ public API
    def forward(
        self, hidden_states: Tensor, *, density: Tensor | None = None, curvature: Tensor | None = None,
        budget: float | None = None, return_plan: bool = False, check: bool = True,
        residual: Tensor | None = None,
    ):
        """Apply the block: ``(batch, L, d_model) → (batch, L, d_model)``.

        Parameters
        ----------
        hidden_states : (batch, L, d_model), of the layer's dtype.
        density : (batch, L), optional: an external non-negative per-token density (e.g. from
            ``infogeo`` on a pretrained model) used instead of the layer's own signal (scan scope: the
            closed form ``ρ_t = (Σ_d Δ_{t,d}²)·‖B_t‖²``; block scope: its linearisation ρ̂).
        curvature : (batch, L), optional: per-token curvature, averaged per tile and fed to the policy.
        budget : overrides the layer's budget for this call; budget 1 is full resolution by definition
            (no policy is run unless state dims or a plan need it).
        return_plan : also return the :class:`~tiling.tile.TilePlan` used.
        check : check ``hidden_states`` (shape, dtype) and the output (NaN/Inf, one pass) at this
            call. False: the caller checks once at its own boundary (``TiledLM`` checks its tokens and
            its logits); the layer then runs no check at all, unless it was built with ``validate``.
        residual : (batch, L, d_model) of the layer's dtype, optional: the output is then ``residual +
            block(hidden_states)`` (a pre-norm stack's ``h + layer(norm(h))``), equal to that sum; the block
            scope's one-call mixer adds it as it holds, one pass over the full-resolution output fewer.

        Returns
        -------
        The output (batch, L, d_model), plus ``residual`` where given; with ``return_plan`` ``(output, plan)``.

        Raises
        ------
        TypeError
            ``hidden_states`` is not a floating tensor of the layer's dtype, or ``budget`` not a number.
        ValueError
            ``hidden_states`` is not (batch ≥ 1, L ≥ 1, d_model) or holds NaN/Inf (named as such), or
            is large enough to make the block overflow; ``density``/``curvature`` is not (batch, L) or
            not finite, ``density`` negative; ``budget`` outside (0, 1] or below ``r_min``.
        """
        scope = self._scope
        if not (check or self.validate):  # the caller checked the budget too
            return scope.forward(self, hidden_states, density, curvature,
                                 self.budget if budget is None else float(budget), return_plan, residual)
        c = self._budget(budget)
        self._check_input(hidden_states)
        batch, L, _ = hidden_states.shape
        if residual is not None:
            check_tensor(residual, "residual", shape=tuple(hidden_states.shape))
            if residual.dtype != hidden_states.dtype:
                raise TypeError(f"residual must have hidden_states' dtype {hidden_states.dtype}, got {residual.dtype}")
        if density is not None:
            density = self._external_density(density, batch, L, hidden_states.device)
        if curvature is not None:
            check_tensor(curvature, "curvature", shape=(batch, L))
        try:
            result = scope.forward(self, hidden_states, density, curvature, c, return_plan, residual)
            out = result[0] if return_plan else result
            if not all_finite(out):
                raise ValueError("the block's output contains NaN/Inf")
            return result
        except ValueError as e:
            # without ``validate`` a NaN/Inf input is caught inside (the signal, the scan's output)
            # or in the output: name the argument rather than the internal tensor
            check_finite(hidden_states, "hidden_states")
            if "overflow" in str(e) or "NaN/Inf" in str(e):  # finite, but large enough to overflow inside
                top = float(hidden_states.detach().abs().max())
                raise ValueError(f"hidden_states (values up to {top:.3g}) made the block overflow: {e}") from None
            raise

    def _budget(self, budget: float | None) -> float:
        if budget is None:
            return self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"budget must be a float in (0, 1], got {type(budget).__name__}")
        c = float(budget)
        if not 0.0 < c <= 1.0:  # a Python comparison: this runs on every call (NaN fails it too)
            raise ValueError(f"budget must lie in (0, 1], got {budget}")
        if self.r_min > c:
            raise ValueError(f"r_min must be <= budget, got r_min={self.r_min} > budget={c}")
        return c

    def _full(self, c: float) -> bool:
        """Budget 1 without a state-dimension policy: every tile at R = 1, no policy to run."""
        return c >= 1.0 and self.tiling.state_k is None

    def _scan(self, u: Tensor, dt_raw: Tensor, B: Tensor, C: Tensor, z: Tensor, gap: Tensor | None = None, **kw):
        """The selective scan op on the layer's parameters; ``gap`` (b, L) scales Δ (block scope).

        The block scope scans at ``R = 1`` (``kw`` empty): :func:`~tiling.ops.scan.selective_scan`,
        with no per-call checks (the layer checks at its boundary), or the checked op with ``validate``."""
        A = -torch.exp(self.A_log.float() if self.A_log.dtype != torch.float64 else self.A_log)
        if gap is None:
            delta, bias = dt_raw, self.dt_proj.bias
        else:
            delta, bias = softplus_gap(dt_raw, self.dt_proj.bias, gap), None
        if kw or self.validate:
            return adaptive_selective_scan(u, delta, A, B, C, self.D, z, delta_bias=bias, delta_softplus=gap is None,
                                           tile_size=self.tile_size, **kw)
        return selective_scan(u, delta, A, B, C, self.D, z, delta_bias=bias, delta_softplus=gap is None)

    def plan(self, hidden_states: Tensor, *, density: Tensor | None = None, curvature: Tensor | None = None,
             budget: float | None = None) -> TilePlan:
        """The :class:`~tiling.tile.TilePlan` the layer would use for ``hidden_states`` (no scan).

        Parameters
        ----------
        hidden_states, density, curvature, budget : as for :meth:`forward` (whose checks apply).

        Returns
        -------
        :class:`~tiling.tile.TilePlan` on the CPU, with per-tile costs and ``meta["layer_cost"]``.
        """
        self._check_input(hidden_states)
        c = self._budget(budget)
        batch, L, _ = hidden_states.shape
        if density is not None:
            density = self._external_density(density, batch, L, hidden_states.device)
        if curvature is not None:
            check_tensor(curvature, "curvature", shape=(batch, L))
        with torch.no_grad():
            return self._scope.plan(self, hidden_states, density, curvature, c)

    def computes_signal(self, budget: float | None = None) -> bool:
        """Whether the forward at ``budget`` (default the layer's) computes the resolution signal to
        place its segments: not at budget 1, nor under the uniform policy (``R_i = c``), nor for a
        plan that only reports it."""
        return self._scope.computes_signal(self, self.budget if budget is None else float(budget))

    def cost(self, L: int, *, compact_length: int | None = None, resolution: Tensor | None = None,
             state_dims: Tensor | None = None, batch: int = 1, signal: bool = True) -> dict[str, int]:
        """Multiply-adds of this layer (:func:`~tiling.ops.layer_cost`) on ``batch`` rows of ``L`` tokens.

        Parameters
        ----------
        L : tokens per row.
        compact_length : block scope: ``L_c`` as run.
        resolution, state_dims : scan scope: the plan's (batch, n_tiles) resolutions and state dims.
        batch : rows.
        signal : whether the resolution signal (block) or density (scan) is counted: what
            :meth:`computes_signal` says of the forward's budget.

        Returns
        -------
        dict of integer counts by part (:func:`~tiling.ops.layer_cost`).
        """
        kw = dict(d_model=self.d_model, d_state=self.d_state, d_inner=self.d_inner, dt_rank=self.dt_rank,
                  d_conv=self.d_conv, tile_size=self.tile_size, bias=self.in_proj.bias is not None,
                  conv_bias=self.conv1d.bias is not None, batch=batch)
        return self._scope.cost(self, L, kw, compact_length=compact_length, resolution=resolution,
                                state_dims=state_dims, signal=signal)

    def _make_plan(self, R: Tensor, S: Tensor | None, rho_tile: Tensor | None, rho: Tensor | None, L: int,
                   budget: float, layout: SegmentLayout | None = None) -> TilePlan:
        """The :class:`~tiling.tile.TilePlan` of resolutions ``R``, state dims ``S`` (None: full), tile and
        token densities, at ``budget``; the scope counts the segments and costs (:meth:`Scope.tile_costs
        <tiling.modules.scope.Scope.tile_costs>`) on the CPU copies."""
        T = self.tile_size
        lengths = tile_lengths(L, T)
        Rc = R.detach().cpu().float()
        Sc = torch.full(Rc.shape, self.d_state, dtype=torch.int64) if S is None else S.detach().cpu()
        dens = torch.zeros(Rc.shape, dtype=torch.float64) if rho_tile is None else rho_tile.detach().cpu()
        costs = self._scope.tile_costs(self, Rc, Sc, rho, L, budget, layout)
        return TilePlan(
            start=torch.arange(lengths.numel(), dtype=torch.int64) * T, length=lengths, resolution=Rc,
            segments=costs.segments, state_dims=Sc, density=dens, cost=costs.madd, exp_cost=costs.exp, budget=budget,
            mode=costs.mode, causal=self.causal, token_density=None if rho is None else rho.detach(), meta=costs.meta,
        )

    def allocate_inference_state(self, batch: int) -> TiledMambaState:
        """Zero recurrent state for :meth:`step`.

        Parameters
        ----------
        batch : rows, ≥ 1.

        Returns
        -------
        :class:`TiledMambaState`: conv window, scan state, routed vector; in the block scope also the
        held output, the pool, the router's key or the policy's history (:meth:`TileRouter.allocate
        <tiling.modules.router.TileRouter.allocate>`) and the signal's maps.

        Raises
        ------
        TypeError, ValueError
            ``batch`` is not an int ≥ 1.
        """
        batch = check_int(batch, "batch", minimum=1)
        p = self.in_proj.weight
        acc = torch.float64 if p.dtype == torch.float64 else torch.float32
        state = TiledMambaState(
            conv=p.new_zeros(batch, self.d_inner, self.d_conv),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, dtype=acc, device=p.device),
            route=p.new_zeros(batch, self.d_inner),
            position=0,
        )
        return self._scope.allocate(self, state)

    def step(self, hidden_states: Tensor, state: TiledMambaState, *, budget: float | None = None
             ) -> tuple[Tensor, TiledMambaState]:
        """One token of generation.

        Parameters
        ----------
        hidden_states : (batch, d_model) or (batch, 1, d_model).
        state : the :class:`TiledMambaState` of :meth:`allocate_inference_state`.
        budget : block scope: overrides the layer's budget; scan scope: only 1 (or None).

        Returns
        -------
        ``(output, state)``: the output (same leading shape as the input) and the new state.

        Raises
        ------
        TypeError
            ``state`` is not a :class:`TiledMambaState`, or ``hidden_states`` not a floating tensor of
            the layer's dtype.
        ValueError
            ``hidden_states`` has another shape or batch than the state, ``state`` was allocated by a
            scan-scope layer for a block-scope one, a scan-scope layer is given a budget below 1, or the
            step overflows (the state is then unchanged).

        Notes
        -----
        Scan scope: at full resolution, equal to :meth:`forward` with budget 1 (every segment one
        token, full state dims, φ = id because consecutive resolutions are equal), routing
        included: at the end of each tile the routed vector ``g ⊙ tanh(W_s·(C_t·h_t))`` is formed
        and added to the next tile's outputs.

        Block scope: at the layer's budget (or ``budget``), equal to :meth:`forward` token by
        token. The tile router decides the segment starts (:meth:`TileRouter.step
        <tiling.modules.router.TileRouter.step>`: at the first token of a tile the causal policy
        sets the tile's segments from the signal of the earlier tiles); at a segment start the
        mixer takes one step on the representative (``O(mixer)``), elsewhere the token only joins
        the pool and the held output is returned (``O(d_model)``, plus the signal's
        ``d_model·(dt_rank + N)``). Needs ``causal=True``.
        """
        check_tensor(hidden_states, "hidden_states", ndim=(2, 3))  # one token: the NaN check costs O(d_model)
        if not isinstance(state, TiledMambaState):
            raise TypeError(f"state must be a TiledMambaState (allocate_inference_state), got {type(state).__name__}")
        squeeze = hidden_states.dim() == 2
        x = hidden_states if squeeze else hidden_states.squeeze(1)
        if hidden_states.dim() not in (2, 3) or (hidden_states.dim() == 3 and hidden_states.shape[1] != 1):
            raise ValueError(f"hidden_states must have shape (batch, d_model) or (batch, 1, d_model), got "
                             f"{tuple(hidden_states.shape)}")
        self._check_input(x.unsqueeze(1))
        self.check_state(state, x.shape[0])
        c = self._budget(budget)
        self._scope.check_step_budget(budget, c)
        out, new = self.step_unchecked(x, state, c)
        if not all_finite(out):  # one token: O(d_model)
            raise ValueError(f"hidden_states (values up to {float(x.abs().max()):.3g}) made the step overflow; "
                             "the state is unchanged")
        return (out if squeeze else out.unsqueeze(1)), new

    def check_state(self, state: TiledMambaState, batch: int) -> None:
        """Refuse a state of another batch size or of another layer (its shapes or its scope).

        Raises
        ------
        TypeError
            ``state`` is not a :class:`TiledMambaState`.
        ValueError
            Naming what differs: the batch size, the layer's shapes (``d_inner``, ``d_conv``,
            ``d_state``), or the scope.
        """
        if not isinstance(state, TiledMambaState):
            raise TypeError(f"state must be a TiledMambaState (allocate_inference_state), got {type(state).__name__}")
        if state.conv.shape[0] != batch:
            raise ValueError(f"state was allocated for batch {state.conv.shape[0]}, got input batch {batch}")
        want = (self.d_inner, self.d_conv, self.d_state)
        got = (state.conv.shape[1], state.conv.shape[2], state.ssm.shape[-1])
        if got != want:
            raise ValueError(f"state was allocated by another layer: (d_inner, d_conv, d_state) = {got}, this layer "
                             f"has {want}")
        self._scope.check_state(self, state)

    def step_unchecked(self, x: Tensor, state: TiledMambaState, c: float) -> tuple[Tensor, TiledMambaState]:
        """:meth:`step` of a checked (batch, d_model) token at a checked budget ``c``, with no check
        (``TiledLM.step`` checks its tokens, its state and its logits once per call)."""
        return self._scope.step(self, x, state, c)

    def _mixer_step(self, x: Tensor, conv: Tensor, ssm: Tensor, *, last_start: Tensor | None = None,
                    position: int = 0, route: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One step of the Mamba mixer on ``x`` (batch, d_model) at ``position``: ``(out, conv, h, read)``;
        with ``last_start`` (batch,) Δ is multiplied by the gap ``max(position − last_start, 1)``
        (block scope: tokens since the previous segment start); ``route`` (batch, d_inner) is added
        before out_proj (scan scope's routed vector, which needs ``read``; else ``read`` is None). On
        the CPU the whole step is one call of the kernel (``layer_step``: the forward kernels' exp,
        softplus and conv arithmetic; its weights are
        :func:`~tiling.modules.step_weights.step_weights`)."""
        ext = cpu_kernels(x, ssm) if route is None and x.dtype == ssm.dtype else None
        if ext is not None:
            out, conv, h = ext.layer_step(x.contiguous(), conv.contiguous(), ssm.contiguous(),
                                          step_weights(self, ssm.dtype), last_start, position)
            return out, conv, h, None
        gap = None if last_start is None else (position - last_start).clamp_min(1)
        xz = self.in_proj(x)
        u, z = xz.chunk(2, dim=-1)
        conv = torch.cat([conv[:, :, 1:], u.unsqueeze(-1)], dim=-1)
        u = (conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            u = u + self.conv1d.bias
        u = F.silu(u)
        dt_low, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        acc = ssm.dtype
        delta = F.softplus(F.linear(dt_low, self.dt_proj.weight) + self.dt_proj.bias).to(acc)
        if gap is not None:
            delta = delta * gap.to(acc).unsqueeze(-1)
        A = -torch.exp(self.A_log.to(acc))
        h = torch.exp(delta.unsqueeze(-1) * A) * ssm + (delta * u.to(acc)).unsqueeze(-1) * B.to(acc).unsqueeze(1)
        read = (h * C.to(acc).unsqueeze(1)).sum(-1)
        y = (read + self.D.to(acc) * u.to(acc)) * F.silu(z.to(acc))
        if route is not None:
            y = y + route.to(acc)
        return self.out_proj(y.to(x.dtype)), conv, h, read


def _bmm(w: Tensor, x: Tensor) -> Tensor:
    """``w @ x[b]`` for every batch row: (m, k) × (batch, k, n) → contiguous (batch, m, n)."""
    return torch.bmm(w.expand(x.shape[0], -1, -1), x)


def _tiling_config(tiling: TilingConfig | None, options: dict) -> TilingConfig:
    """The layer's :class:`TilingConfig`: ``tiling``, or (deprecated) one built from the former keyword options."""
    if options:
        names = {f.name for f in fields(TilingConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"TiledMamba() got unexpected keyword arguments {unknown}")
        if tiling is not None:
            raise TypeError("TiledMamba() takes tiling=TilingConfig(...) or the deprecated tiling keywords, not both")
        warnings.warn("TiledMamba(..., tile_size=..., budget=..., ...) is deprecated: pass "
                      "tiling=tiling.config.TilingConfig(...); the keyword options will be removed in the next release",
                      DeprecationWarning, stacklevel=3)
        return TilingConfig(**options)
    if tiling is None:
        return TilingConfig()
    if not isinstance(tiling, TilingConfig):
        raise TypeError(f"tiling must be a tiling.config.TilingConfig, got {type(tiling).__name__}")
    return tiling


#: buffer names of earlier checkpoints (before the calibration became a submodule, then before the
#: policy moved into the TileRouter) → current names
_RENAMED_KEYS = {
    "calibration_quantiles": "tile_router.calibrator.quantiles",
    "calibration_updates": "tile_router.calibrator.updates",
    "calibrator.quantiles": "tile_router.calibrator.quantiles",
    "calibrator.updates": "tile_router.calibrator.updates",
}

#: ``tiling.scope`` → the layer's strategy
_SCOPES: dict[str, type[Scope]] = {"block": BlockScope, "scan": ScanScope}

__all__ = ["TiledMamba", "TiledMambaState", "all_finite"]
