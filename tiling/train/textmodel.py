"""The byte-level text LM's configurations, its checkpoints and the bundled checkpoints.

Configurations (``--config`` of ``scripts/train_text.py``), all :class:`~tiling.train.TiledLM`
with the same Mamba shapes, so the same parameter count up to the few parameters of a mode
(the pool gate, ``d_model`` per layer; the router's query and key maps, ``2·rank·d_model``; the
scan scope's φ and routing, ``d_inner·(N + 3)``):

``full``
    plain Mamba: block-scope layers trained at budget 1 (the block scope is exact at ``R = 1``).
    Their policy is the adaptive one, so the same weights can be *evaluated* at a budget below 1
    (tiling a model trained at full resolution after the fact).
``uniform``
    block scope, ``policy="uniform"``: every tile gets ``m = ⌈c·T⌉`` segments (seed 001 §3.6,
    "linear attention: a constant resolution field").
``adaptive``
    block scope, the causal adaptive policy on the linearised density signal
    (``tiling.modules.signal.linear_density``; seed 001 §3.4 steps 1–2), running calibration.
``router``
    block scope, ``boundaries="token"``: H-Net's learned cosine router, trained with its ratio
    loss (weight ``ratio_weight``, H-Net's 0.03) towards the budget.
``scan-adaptive``
    scan scope, adaptive policy: the resolution shrinks only the recurrence (for reference).

A text checkpoint is a :mod:`tiling.train.checkpoint` file whose ``extra`` holds
``{"kind": "tiling-text-lm-v1", "model": ..., "configuration", "budget", "context", ...}``, where
``model`` is the nested configuration with its layout (:func:`model_dict`): ``{"layout": "tiledlm",
**TiledLMConfig.to_dict()}`` or ``{"layout": "hourglass", **HourglassConfig.to_dict()}``; checkpoints
written before the nested form hold ``TiledLM``'s flat configuration (``d_model``, ``layer_kwargs``),
which the one reader, :func:`config_from_dict`, still reads. :func:`load_text_model` rebuilds the
model from it and checks that the tensors fit. Bundled checkpoints (``bundled:full``,
``bundled:adaptive``) are such files, stored without optimizer state in ``tiling/train/checkpoints/``
(package data).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tiling.train.checkpoint import CheckpointError, Header, load_checkpoint, read_meta, save_checkpoint
from tiling.config import HourglassConfig, MambaConfig, TiledLMConfig, TilingConfig
from tiling.modules.hourglass import HourglassLM
from tiling.train.model import TiledLM
from tiling.train.text import VOCAB

KIND = "tiling-text-lm-v1"
CONFIGURATIONS = {
    "full": {"scope": "block", "policy": "adaptive", "calibration": "running"},
    "uniform": {"scope": "block", "policy": "uniform"},
    "adaptive": {"scope": "block", "policy": "adaptive", "calibration": "running"},
    "router": {"scope": "block", "boundaries": "token"},
    "scan-adaptive": {"scope": "scan", "policy": "adaptive", "calibration": "running"},
}
#: bundled checkpoints: the best plain Mamba (``full``), the earlier sweep's best tiled-layer model
#: (``adaptive``) and the elastic hourglass (``hourglass``, one checkpoint for budgets in its trained range)
BUNDLED = {"full": "text_full.safetensors", "adaptive": "text_adaptive.safetensors",
           "hourglass": "text_hourglass.safetensors"}


class TextModelError(ValueError):
    """A checkpoint that is not a byte-level text LM of this project, or does not match its own shape."""


# ---- checkpoints not trusted (issue 27): the metadata is checked before anything is built --------------
#: the largest sizes a text checkpoint's metadata may ask for, checked before the model is built;
#: raise one with ``limits={"parameters": ...}`` (:func:`read_text_meta`, :func:`load_text_model`)
LIMITS = {"d_model": 16384, "n_layers": 1024, "d_state": 1024, "expand": 16, "d_conv": 64, "tile_size": 2 ** 20,
          "context": 2 ** 24, "parameters": 4 * 10 ** 9}


def _limits(limits: dict | None) -> dict:
    unknown = sorted(set(limits or {}) - set(LIMITS))
    if unknown:
        raise ValueError(f"limits: unknown names {unknown}; known: {sorted(LIMITS)}")
    return {**LIMITS, **(limits or {})}


def _bounded_int(where: str, key: str, value: object, low: int, high: int, limit: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TextModelError(f"{where}: {key} must be an int, got {value!r}")
    if not low <= value <= high:
        raise TextModelError(f"{where}: {key} = {value} is outside [{low}, {high}]"
                             + (f" (raise the limit with limits={{{key!r}: ...}})" if limit else ""))
    return value


def check_text_extra(extra: object, path, limits: dict | None = None) -> dict:
    """Check the fields every byte-level text checkpoint records, whatever its layout.

    Parameters
    ----------
    extra : the checkpoint's ``extra`` metadata.
    path : the file, for the messages.
    limits : overrides of :data:`LIMITS`.

    Returns
    -------
    ``extra``.

    Raises
    ------
    TextModelError
        ``extra`` is not an object, not of :data:`KIND`, or its ``context`` (an int in
        [1, ``limits["context"]``]), ``budget`` (a number in (0, 1]) or ``configuration`` (a string)
        is missing or malformed.
    """
    lim = _limits(limits)
    where = f"checkpoint {path}"
    if not isinstance(extra, dict) or extra.get("kind") != KIND:
        raise TextModelError(f"{where} is not a byte-level text LM checkpoint (its metadata has no kind={KIND!r}; "
                             "e.g. a synthetic-task checkpoint of scripts/train_tiled.py)")
    _bounded_int(where, "context", extra.get("context"), 1, lim["context"])
    budget = extra.get("budget")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
        raise TextModelError(f"{where}: budget must be a number in (0, 1], got {budget!r}")
    if not isinstance(extra.get("configuration"), str):
        raise TextModelError(f"{where}: configuration must be a string, got {extra.get('configuration')!r}")
    if not isinstance(extra.get("model"), dict):
        raise TextModelError(f"{where}: its model configuration is a {type(extra.get('model')).__name__}, "
                             "expected an object")
    return extra


def _check_mamba_sizes(where: str, d: int, layer: dict, lim: dict) -> int:
    """A layer's Mamba sizes against ``lim``; returns its ``expand``."""
    expand = _bounded_int(where, "expand", layer.get("expand", 2), 1, lim["expand"])
    for key, default in (("d_state", 16), ("d_conv", 4)):
        _bounded_int(where, key, layer.get(key, default), 1, lim[key])
    if layer.get("dt_rank", "auto") not in ("auto", None):
        _bounded_int(where, "dt_rank", layer["dt_rank"], 1, d * expand, limit=False)
    return expand


def config_from_dict(data: object) -> TiledLMConfig | HourglassConfig:
    """The model configuration a text checkpoint stores (``extra["model"]``), in any of its forms.

    Parameters
    ----------
    data : :func:`model_dict`'s ``{"layout": "tiledlm" | "hourglass", ...}``, or the flat ``TiledLM``
        configuration of checkpoints written before the nested form (no ``layout``; read by
        :meth:`TiledLMConfig.from_dict <tiling.config.TiledLMConfig.from_dict>`).

    Returns
    -------
    The checked :class:`~tiling.config.TiledLMConfig` or :class:`~tiling.config.HourglassConfig`.

    Raises
    ------
    TypeError, ValueError
        ``data`` is not a dict, has an unknown layout, or its configuration is refused (the message
        names the field).
    """
    if not isinstance(data, dict):
        raise TypeError(f"a model configuration must be a dict, got {type(data).__name__}")
    layout = data.get("layout", "tiledlm")  # the flat form of earlier checkpoints has no layout
    body = {k: v for k, v in data.items() if k != "layout"}
    if layout == "hourglass":
        return HourglassConfig.from_dict(body)
    if layout == "tiledlm":
        return TiledLMConfig.from_dict(body)
    raise ValueError(f"layout must be 'tiledlm' or 'hourglass', got {layout!r}")


def check_tiledlm_config(config: object, path, limits: dict | None = None) -> int:
    """Check a :class:`~tiling.train.TiledLM` configuration (``extra["model"]``) before it is built.

    Parameters
    ----------
    config : the recorded configuration, nested (:func:`model_dict`) or flat (earlier checkpoints).
    path : the file, for the messages.
    limits : overrides of :data:`LIMITS`.

    Returns
    -------
    A lower bound on the model's parameter count (the embedding, and each layer's in- and
    out-projections), for :func:`check_implied_parameters`.

    Raises
    ------
    TextModelError
        ``config`` is not an object; ``vocab_size`` is not 256; :func:`config_from_dict` refuses it
        (a field of the wrong type or out of range, an unknown one, a flat ``layer_kwargs`` that sets
        ``device``/``dtype``, another layout); ``d_model``, ``n_layers``, the Mamba sizes or
        ``tile_size`` exceed ``limits``.
    """
    lim = _limits(limits)
    where = f"checkpoint {path}"
    if not isinstance(config, dict):
        raise TextModelError(f"{where}: its model configuration is a {type(config).__name__}, expected an object")
    if config.get("vocab_size") != VOCAB:
        raise TextModelError(f"{where} has vocabulary {config.get('vocab_size')!r}, a byte-level LM has {VOCAB}")
    try:
        cfg = config_from_dict(config)  # only scalars: nothing is allocated before the limits below
    except (TypeError, ValueError) as e:
        raise TextModelError(f"{where}: invalid model configuration ({e})") from None
    if not isinstance(cfg, TiledLMConfig):
        raise TextModelError(f"{where}: expected a TiledLM configuration, got the layout {config.get('layout')!r}")
    d = _bounded_int(where, "d_model", cfg.d_model, 1, lim["d_model"])
    n = _bounded_int(where, "n_layers", cfg.n_layers, 1, lim["n_layers"])
    expand = _check_mamba_sizes(where, d, cfg.mamba.layer_kwargs(), lim)
    _bounded_int(where, "tile_size", cfg.tiling.tile_size, 1, lim["tile_size"])
    return VOCAB * d + n * 3 * expand * d * d


def check_hourglass_config(config: object, path, limits: dict | None = None) -> int:
    """Check an hourglass configuration (``extra["model"]`` with ``"layout": "hourglass"``) before it is built.

    Parameters
    ----------
    config : the recorded ``{"layout": "hourglass", ...}`` (:func:`model_dict`).
    path : the file, for the messages.
    limits : overrides of :data:`LIMITS`.

    Returns
    -------
    A lower bound on the parameter count (the embedding, and each stage's layers' in- and
    out-projections), for :func:`check_implied_parameters`.

    Raises
    ------
    TextModelError
        A stage's ``d_model``, ``n_layers`` or Mamba sizes are not ints within ``limits``, or
        :class:`~tiling.config.HourglassConfig` refuses the configuration.
    """
    lim = _limits(limits)
    where = f"checkpoint {path}"
    if not isinstance(config, dict):
        raise TextModelError(f"{where}: its model configuration is a {type(config).__name__}, expected an object")
    bound = 0
    for stage in ("encoder", "main", "decoder"):
        st = config.get(stage)
        mamba = st.get("mamba") if isinstance(st, dict) else None
        if not isinstance(mamba, dict):
            raise TextModelError(f"{where}: the hourglass {stage} stage is not an object with a 'mamba' object")
        d = _bounded_int(where, f"{stage}.mamba.d_model", mamba.get("d_model"), 1, lim["d_model"], limit=False)
        _bounded_int(where, "d_model", d, 1, lim["d_model"])
        n = _bounded_int(where, f"{stage}.n_layers", st.get("n_layers"), 0, lim["n_layers"], limit=False)
        expand = _check_mamba_sizes(where, d, {**mamba, "expand": mamba.get("expand", 1)}, lim)
        bound += n * 3 * expand * d * d + (VOCAB * d if stage == "encoder" else 0)
    try:
        HourglassConfig.from_dict({k: v for k, v in config.items() if k != "layout"})
    except (KeyError, TypeError, ValueError) as e:
        raise TextModelError(f"{where}: invalid hourglass configuration ({e})") from None
    return bound


def check_implied_parameters(lower_bound: int, header: Header, path, limits: dict | None = None) -> None:
    """Refuse metadata that implies a model larger than the limit, or than the file holds.

    Parameters
    ----------
    lower_bound : parameters the metadata implies at least (e.g. :func:`check_tiledlm_config`'s).
    header : the file's checked header (:func:`tiling.train.checkpoint.read_meta`).
    path : the file, for the messages.
    limits : overrides of :data:`LIMITS`.

    Raises
    ------
    TextModelError
        ``lower_bound`` exceeds ``limits["parameters"]``, or the values of the file's ``model.*``
        tensors (the metadata then describes another model than the file holds).
    """
    lim = _limits(limits)
    if lower_bound > lim["parameters"]:
        raise TextModelError(f"checkpoint {path}: its metadata implies at least {lower_bound:,} parameters, above the "
                             f"limit of {lim['parameters']:,} (raise it with limits={{'parameters': ...}})")
    held = header.elements("model.")
    if lower_bound > held:
        raise TextModelError(f"checkpoint {path}: its metadata implies at least {lower_bound:,} parameters but the file "
                             f"holds {held:,} model values; the metadata does not describe this file")


def model_config(configuration: str, budget: float = 1.0, *, d_model: int = 256, n_layers: int = 4,
                 d_state: int = 16, expand: int = 1, tile_size: int = 16, r_min: float = 0.0625,
                 full_resolution_layers: tuple[int, ...] = (), **tiling_options) -> TiledLMConfig:
    """The :class:`~tiling.config.TiledLMConfig` of a configuration at ``budget`` (``full``: 1).

    Parameters
    ----------
    configuration : one of ``CONFIGURATIONS``.
    budget : in (0, 1]; ignored (1) for ``full``.
    d_model, n_layers : of the model.
    d_state, expand, tile_size, r_min : of every layer (``r_min ≤ budget``: a smaller budget is refused, as
        :class:`~tiling.config.TilingConfig` refuses it, never clamped).
    full_resolution_layers : as :class:`~tiling.train.TiledLM`'s.
    **tiling_options : further :class:`~tiling.config.TilingConfig` fields (over the configuration's).

    Returns
    -------
    The configuration (:func:`build_model` builds it).

    Raises
    ------
    ValueError
        ``configuration`` is unknown or ``budget`` outside (0, 1]; a field is refused by
        :class:`~tiling.config.TiledLMConfig`.

    Notes
    -----
    The defaults are those of ``scripts/train_text.py``: ``expand = 1`` (``d_inner = d_model``)
    rather than Mamba's 2, because at 2 a full-resolution run sees only 1.4 M training bytes in
    15 minutes when two runs share this 2-core machine (``docs/training.md``, "Real text").
    """
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {sorted(CONFIGURATIONS)}, got {configuration!r}")
    budget = 1.0 if configuration == "full" else float(budget)  # (0, 1] and >= r_min: TilingConfig checks
    tiling = TilingConfig(**{**CONFIGURATIONS[configuration], **tiling_options}, tile_size=tile_size, budget=budget,
                          r_min=r_min)
    return TiledLMConfig(MambaConfig(d_model=d_model, d_state=d_state, expand=expand), n_layers=n_layers,
                         tiling=tiling, vocab_size=VOCAB, full_resolution_layers=tuple(full_resolution_layers))


def build_model(config: TiledLMConfig | HourglassConfig | dict) -> TiledLM | HourglassLM:
    """A text LM (new weights) from its configuration.

    Parameters
    ----------
    config : a :class:`~tiling.config.TiledLMConfig` (:func:`model_config`), a
        :class:`~tiling.config.HourglassConfig`, or a stored form (:func:`config_from_dict`).

    Returns
    -------
    The :class:`~tiling.train.TiledLM` or :class:`~tiling.modules.hourglass.HourglassLM`.

    Raises
    ------
    TextModelError
        The configuration is refused, by its reader or by the model (names the configuration).
    """
    try:
        cfg = config if isinstance(config, (TiledLMConfig, HourglassConfig)) else config_from_dict(config)
        return HourglassLM(cfg) if isinstance(cfg, HourglassConfig) else TiledLM(config=cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise TextModelError(f"invalid model configuration {config!r}: {e}") from e


def model_dict(model: TiledLM | HourglassLM) -> dict:
    """The stored configuration of a text LM: the nested ``config.to_dict()`` with its ``layout``,
    ``"tiledlm"`` or ``"hourglass"`` (:func:`config_from_dict` reads it back)."""
    layout = "hourglass" if isinstance(model, HourglassLM) else "tiledlm"
    return {"layout": layout, **model.config.to_dict()}


def save_text_checkpoint(path, model: TiledLM, *, configuration: str, budget: float, context: int,
                         optimizer=None, scheduler=None, step: int = 0, info: dict | None = None):
    """Write a text checkpoint atomically (:func:`tiling.train.checkpoint.save_checkpoint`).

    Parameters
    ----------
    path : the destination.
    model : the :class:`~tiling.train.TiledLM`; its ``config`` is stored.
    configuration, budget, context : recorded in the metadata.
    optimizer, scheduler, step : as for :func:`~tiling.train.checkpoint.save_checkpoint`.
    info : further metadata.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.
    """
    extra = {"kind": KIND, "model": model_dict(model), "configuration": configuration, "budget": float(budget),
             "context": int(context), **(info or {})}
    return save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra)


def read_text_meta(path, *, limits: dict | None = None) -> dict:
    """The ``extra`` of a text checkpoint, checked, without loading its tensors.

    Parameters
    ----------
    path : the checkpoint.
    limits : overrides of :data:`LIMITS` (the largest sizes the metadata may ask for).

    Returns
    -------
    The checkpoint's ``extra`` metadata.

    Raises
    ------
    CheckpointError
        The file does not exist, is not a safetensors file or has no valid metadata (no checkpoint
        at all; :func:`tiling.train.checkpoint.read_meta`).
    TextModelError
        It is a checkpoint but not one of a byte-level text LM (another kind or vocabulary), or its
        metadata is malformed or implies sizes beyond ``limits`` or beyond what the file holds
        (:func:`check_text_extra`, :func:`check_tiledlm_config` / :func:`check_hourglass_config`,
        :func:`check_implied_parameters`).

    Notes
    -----
    Only the header is read (its length checked first), never a tensor, so this is cheap and
    bounded whatever the file claims.
    """
    p = Path(path)
    meta, header = read_meta(p)
    extra = check_text_extra(meta["extra"], p, limits)
    check = check_hourglass_config if extra["model"].get("layout") == "hourglass" else check_tiledlm_config
    check_implied_parameters(check(extra["model"], p, limits), header, p, limits)
    return extra


def load_text_model(path, *, device="cpu", limits: dict | None = None) -> tuple[TiledLM, dict]:
    """Load a text checkpoint.

    Parameters
    ----------
    path : the checkpoint.
    device : where the model goes.
    limits : overrides of :data:`LIMITS` (the largest sizes the metadata may ask for).

    Returns
    -------
    ``(model in eval mode, extra)``.

    Raises
    ------
    TextModelError, ~tiling.train.CheckpointError
        Naming the file and the problem (:func:`read_text_meta`, before anything is built;
        :func:`build_model`; a ``TextModelError`` also when the tensors do not match the shape the
        metadata records, or a tied head differs from the embedding).

    Notes
    -----
    The metadata and the header are checked before the model is built, and the tensors are read one
    at a time (:func:`tiling.train.checkpoint.load_checkpoint`): memory stays at the model's size.
    """
    extra = read_text_meta(path, limits=limits)
    try:
        model = build_model(extra["model"])
    except TextModelError as e:  # a configuration the checks above let through: name the file
        raise TextModelError(f"checkpoint {path}: {str(e).splitlines()[0][-300:]}") from e
    try:
        load_checkpoint(path, model=model, restore_rng=False)
    except CheckpointError as e:
        c = model.config
        shape = (f"d_model={c.d_model}, n_layers={c.n_layers}" if isinstance(c, TiledLMConfig)
                 else f"d_outer={c.d_outer}, d_main={c.d_main}")
        raise TextModelError(f"checkpoint {path} does not match the shape it records ({shape}): {e}") from e
    return model.to(device).eval(), extra


#: directory of the bundled checkpoints (package data); tests point it elsewhere
BUNDLED_DIR = Path(__file__).resolve().parent / "checkpoints"


def shape_summary(model: dict) -> str | None:
    """A checkpoint's layers and widths from its ``model`` metadata: ``"8 × 180"`` for a ``TiledLM``,
    ``"2 × 176 | 4 × 336 | 2 × 176"`` (encoder | main network | decoder) for a hourglass; None when the
    metadata holds neither form (the flat form of the first checkpoints included)."""
    def stage(d: dict) -> str:
        return f"{d['n_layers']} × {d['mamba']['d_model']}"

    try:
        if model.get("layout") == "hourglass":
            return " | ".join(stage(model[k]) for k in ("encoder", "main", "decoder"))
        if "mamba" in model:
            return stage(model)
        return f"{model['n_layers']} × {model['d_model']}"  # the flat form written before the nested one
    except (KeyError, TypeError):
        return None


def bundled_checkpoints() -> list[dict]:
    """The bundled checkpoints.

    Returns
    -------
    One dict per bundled name: ``name, spec, path, installed, configuration, layout`` (``"tiledlm"`` or
    ``"hourglass"``), ``shape`` (its stages' layers × width, :func:`shape_summary`), ``row`` (the sweep row it
    was trained as), ``budget`` (the one it is evaluated at by default), ``trained_budgets`` (the range
    ``[low, high]`` it was trained for: one point for a model trained at one budget), ``context``,
    ``test_bpb`` (None when not installed), and ``error`` when an installed file cannot be read.
    """
    out = []
    for name, fname in BUNDLED.items():
        p = BUNDLED_DIR / fname
        row = {"name": name, "spec": f"bundled:{name}", "path": str(p), "installed": p.is_file(),
               "configuration": None, "layout": None, "shape": None, "row": None, "budget": None,
               "trained_budgets": None, "context": None, "test_bpb": None}
        if p.is_file():
            try:
                extra = read_text_meta(p)
                hourglass = extra.get("model", {}).get("layout") == "hourglass"
                b = extra.get("budget")
                rng = extra.get("budget_range") or (None if b is None else [b, b])
                row.update(configuration=extra.get("configuration"), layout="hourglass" if hourglass else "tiledlm",
                           shape=shape_summary(extra.get("model", {})), row=extra.get("row"),
                           budget=b, trained_budgets=rng, context=extra.get("context"),
                           test_bpb=extra.get("test_bpb"))
            except (CheckpointError, TextModelError) as e:
                row["error"] = str(e)
        out.append(row)
    return out


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A path, or ``bundled:NAME`` → the bundled file.

    Parameters
    ----------
    spec : a path or ``bundled:NAME``.

    Returns
    -------
    The file's path.

    Raises
    ------
    TextModelError
        An unknown bundled name, or a bundled checkpoint that is not installed.
    CheckpointError
        A path that is not a file.
    """
    s = str(spec)
    if s.startswith("bundled:"):
        name = s[len("bundled:"):]
        if name not in BUNDLED:
            raise TextModelError(f"unknown bundled checkpoint {name!r}; the bundled names are "
                                 f"{', '.join('bundled:' + n for n in BUNDLED)}")
        p = BUNDLED_DIR / BUNDLED[name]
        if not p.is_file():
            raise TextModelError(f"bundled checkpoint {s} is not installed ({p} is missing): it is written by "
                                 f"`python scripts/train_text.py --sweep --resume --bundle` once the sweep has run")
        return p
    p = Path(s)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def export_bundled(src, name: str, info: dict | None = None) -> Path:
    """Copy the model of text checkpoint ``src`` (no optimizer state) to the bundled ``name``, atomically.

    Parameters
    ----------
    src : a text checkpoint.
    name : one of the bundled names.
    info : added to its metadata (e.g. the sweep row's ``test_bpb``).

    Returns
    -------
    The bundled file's path.

    Raises
    ------
    ValueError
        ``name`` is not a bundled name.
    TextModelError, ~tiling.train.CheckpointError
        ``src`` cannot be loaded (:func:`load_text_model`).
    """
    if name not in BUNDLED:
        raise ValueError(f"bundled name must be one of {sorted(BUNDLED)}, got {name!r}")
    model, extra = load_text_model(src)
    info = {k: v for k, v in extra.items() if k not in ("kind", "model", "configuration", "budget", "context")
            } | (info or {})
    return save_text_checkpoint(BUNDLED_DIR / BUNDLED[name], model, configuration=extra["configuration"],
                                budget=extra["budget"], context=extra["context"], info=info)


def budget_warning(model, extra: dict, budget: float | None) -> str | None:
    """A warning when ``budget`` lies outside what the checkpoint was trained for, else None.

    Parameters
    ----------
    model : the loaded model.
    extra : its checkpoint metadata (:func:`read_text_meta`).
    budget : the budget asked for (None: the trained one).

    Returns
    -------
    The warning's text: an elastic hourglass outside its ``budget_range``, any other model at a budget
    other than the one it was trained at (its quality there was never trained for, e.g. a full-resolution
    model tiled after the fact).
    """
    if budget is None:
        return None
    if isinstance(model, HourglassLM):
        if model.trained_for(budget):
            return None
        r = model.config.budget_range
        trained = f"the budget range [{r[0]:g}, {r[1]:g}]" if r is not None else f"budget {model.budget:g} only"
        return f"budget {budget:g} lies outside what this checkpoint was trained for ({trained}): expect worse bpb"
    trained = extra.get("budget")
    if trained is not None and abs(float(trained) - budget) > 1e-9:
        return (f"this checkpoint was trained at budget {float(trained):g} only; at budget {budget:g} its quality "
                f"was never trained for: expect worse bpb")
    return None


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (the tied head counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "CONFIGURATIONS", "BUNDLED", "BUNDLED_DIR", "KIND", "TextModelError", "LIMITS", "check_text_extra", "check_tiledlm_config",
    "check_hourglass_config", "check_implied_parameters", "config_from_dict", "model_config", "build_model",
    "save_text_checkpoint", "read_text_meta", "load_text_model", "bundled_checkpoints", "resolve_checkpoint",
    "export_bundled", "parameter_count", "budget_warning", "model_dict",
]
