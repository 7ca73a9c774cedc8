"""The report of ``infogeo analyse``: a versioned JSON document and the arrays beside it.

:class:`Report` holds what :func:`~tiling.workflows.analysis.analyse` measured (``data``, the
JSON document of schema :data:`SCHEMA` v:data:`SCHEMA_VERSION`, described in ``docs/analysis.md``;
``arrays``, the per-head matrices of ``arrays.npz``), reads and writes it, and states its numbers
as summary rows and sentences. It is data only and imports nothing that draws or writes pages:
the pages and figures are :mod:`tiling.workflows.analysis.render`'s, and
:func:`tiling.workflows.analysis.writer.save_report` writes a report's folder.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tiling.train.storage import atomic_write_bytes


__all__ = ["CAUSAL_FIGURES", "FIGURES", "MAX_ARRAY_BYTES", "REPORT_FILES", "SCHEMA", "SCHEMA_VERSION", "Report"]

SCHEMA = "tiling.workflows.analysis.report"
SCHEMA_VERSION = 2
#: the versions :meth:`Report.load` reads: v1 differs only in ``params`` (the analysed layers and heads
#: resolved, the plan's configuration in ``params.tiling``), which no reader here needs
READ_VERSIONS = (1, 2)
#: the most bytes :meth:`Report.load` decompresses from ``arrays.npz`` unless told otherwise (1 GiB)
MAX_ARRAY_BYTES = 2 ** 30

FIGURES = ("density_heatmap", "head_density", "geodesic", "curvature", "spectrum", "resolution_plan")
#: drawn only for causal language models (the report has a ``predictive`` section; ``layer_plans``
#: for a ``TiledLM`` checkpoint, whose report has a ``layer_plans`` section)
CAUSAL_FIGURES = ("predictive", "layer_plans")
#: every file :func:`~tiling.workflows.analysis.writer.save_report` writes (``overwrite`` replaces these and
#: keeps all other entries)
REPORT_FILES = ("report.json", "arrays.npz", "report.md", "report.html") + tuple(
    f"{f}.png" for f in FIGURES + CAUSAL_FIGURES)


@dataclass
class Report:
    """Everything :func:`analyse` measured for one text.

    Attributes
    ----------
    data : the JSON document (schema ``tiling.workflows.analysis.report`` v2, ``docs/analysis.md``).
    arrays : the per-head attention maps and geodesic matrices written to ``arrays.npz`` (keys
        ``attention_L{l}_H{h}``, ``geodesic_L{l}_H{h}``).
    tokens : the text's tokens, as shown.
    layers : the analysed layers' indices.
    heads : the analysed heads' indices.
    """

    data: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    # ---- access --------------------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        """The text's tokens, as shown."""
        return self.data["text"]["tokens"]

    @property
    def layers(self) -> list[int]:
        """The analysed layers' indices."""
        return [lr["layer"] for lr in self.data["layers"]]

    @property
    def heads(self) -> list[int]:
        """The analysed heads' indices (``params["heads"]`` resolved: every layer has these)."""
        return [h["head"] for h in self.data["layers"][0]["attention"]["heads"]]

    def layer(self, index: int) -> dict:
        """The entry of layer ``index`` in ``data["layers"]``.

        Parameters
        ----------
        index : the layer's index in the model.

        Returns
        -------
        dict.

        Raises
        ------
        ValueError
            The layer was not analysed.
        """
        for lr in self.data["layers"]:
            if lr["layer"] == index:
                return lr
        raise ValueError(f"layer {index} was not analysed; analysed layers: {self.layers}")

    def to_dict(self) -> dict:
        """The JSON document, ``data``."""
        return self.data

    def to_json(self, path: str | Path | None = None, *, indent: int | None = None) -> str:
        """The JSON document as text (NaN/Inf refused), also written to ``path`` when given.

        Parameters
        ----------
        path : a file to write, optional.
        indent : ``json.dumps``' indent.

        Returns
        -------
        The JSON text.
        """
        s = json.dumps(self.data, indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_bytes(path, s.encode())  # never a half-written report.json
        return s

    @classmethod
    def load(cls, out_dir: str | Path, *, max_array_bytes: int = MAX_ARRAY_BYTES) -> "Report":
        """Read a report written by :func:`~tiling.workflows.analysis.writer.save_report` (``report.json`` and
        ``arrays.npz``).

        Parameters
        ----------
        out_dir : the report's folder.
        max_array_bytes : the most bytes the arrays may hold once decompressed (default 1 GiB).

        Returns
        -------
        :class:`Report`.

        Raises
        ------
        ValueError
            Naming the file: ``report.json`` is missing, not UTF-8 JSON (e.g. truncated), of another
            schema, or ``arrays.npz`` cannot be read, or is not what the report implies
            (:func:`_read_arrays`: checked before anything is decompressed).
        """
        out = Path(out_dir)
        path = out / "report.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{str(out)!r} holds no report.json; expected a folder written by save_report") from None
        except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise ValueError(f"{str(path)!r} cannot be read as a report: {e} (truncated or corrupt?)") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("schema_version") not in READ_VERSIONS:
            got = (data.get("schema"), data.get("schema_version")) if isinstance(data, dict) else (type(data).__name__, None)
            raise ValueError(f"{str(path)!r} has schema {got[0]!r} v{got[1]}; expected {SCHEMA} v1 or v{SCHEMA_VERSION}")
        arrays = {}
        if (out / "arrays.npz").exists():
            arrays = _read_arrays(out / "arrays.npz", _implied_arrays(data), max_array_bytes)
        return cls(data=data, arrays=arrays)

    def attention_token_density(self) -> np.ndarray:
        """Per-token density of each layer's head-averaged attention rows.

        Returns
        -------
        (layers, n) array: the ``head_mean`` transitions (seed 000 §3.1.1) averaged onto the tokens as
        the tiling's ``token_density`` is (:func:`_token_density`).
        """
        return np.array([_token_density(torch.tensor(lr["head_mean"]["density"])).numpy()
                         for lr in self.data["layers"]])

    # ---- numbers in words ------------------------------------------------------------------
    def summary_rows(self) -> list[dict]:
        """Per-layer summary.

        Returns
        -------
        One dict per layer: mean density (the one the policy used), mean edge curvature, mean chosen
        resolution, scan cost saved.
        """
        rows = []
        for lr in self.data["layers"]:
            t = lr["tiling"]
            rows.append({
                "layer": lr["layer"],
                "mean_density": float(np.mean(t["token_density"])),
                "density_source": t["density_source"],
                "mean_attention_density": float(np.mean([h["density_mean"] for h in lr["attention"]["heads"]])),
                "mean_curvature": lr["head_mean"]["curvature_mean"],
                "mean_resolution": t["mean_resolution"],
                "cost_saved": t["cost_saved"],
                "recurrence_saved": t["cost_saved_recurrence"],
            })
        return rows

    def findings(self) -> list[str]:
        """Sentences that state what the numbers show."""
        d, toks = self.data, self.tokens
        out = []
        t = d["text"]
        trunc = (f", truncated from {t['n_tokens_full']} to the model's maximum {d['model']['max_length']}"
                 if t["truncated"] else "")
        out.append(f"The text has {t['n_tokens']} tokens{trunc}; {len(d['layers'])} layers × "
                   f"{len(self.heads)} heads of the {d['model']['type']} model were analysed.")
        rows = self.summary_rows()
        # where the information is: token density summed over layers
        dens = np.sum([lr["tiling"]["token_density"] for lr in d["layers"]], axis=0)
        content = [i for i in range(len(toks)) if toks[i] not in ("[CLS]", "[SEP]", "<s>", "</s>")]
        order = sorted(content, key=lambda i: -dens[i])
        src = rows[0]["density_source"]
        what = "pulled-back Fisher metric of the hidden states" if src == "pullback" else "attention Fisher–Rao speed"
        out.append("Under the " + what + ", information is densest at " +
                   ", ".join(f"'{toks[i]}' (#{i})" for i in order[:5]) + " and sparsest at " +
                   ", ".join(f"'{toks[i]}' (#{i})" for i in order[-3:]) + ".")
        ts = d["params"]["tile_size"]
        n = len(toks)
        tiles = [(s, float(np.mean(dens[s:s + ts]))) for s in range(0, n, ts)]
        hi_t, lo_t = max(tiles, key=lambda x: x[1]), min(tiles, key=lambda x: x[1])
        span = lambda s: " ".join(toks[s:min(n, s + ts)][:8])
        out.append(f"The densest {ts}-token tile starts at token {hi_t[0]} (\"{span(hi_t[0])} …\"), "
                   f"{hi_t[1] / max(lo_t[1], 1e-300):.1f}× the density of the sparsest, which starts at token "
                   f"{lo_t[0]} (\"{span(lo_t[0])} …\").")
        top = max(rows, key=lambda r: r["mean_density"])
        bot = min(rows, key=lambda r: r["mean_density"])
        if len(rows) > 1:
            out.append(f"Layer {top['layer']} carries the highest mean density ({top['mean_density']:.3g}) and "
                       f"layer {bot['layer']} the lowest ({bot['mean_density']:.3g}).")
        heads = [(lr["layer"], h["head"], h["density_mean"]) for lr in d["layers"] for h in lr["attention"]["heads"]]
        fast, slow = max(heads, key=lambda x: x[2]), min(heads, key=lambda x: x[2])
        out.append(f"Head {fast[1]} of layer {fast[0]} moves fastest along the text (mean squared Fisher–Rao "
                   f"speed {fast[2]:.3g}); head {slow[1]} of layer {slow[0]} is the most static ({slow[2]:.3g}), "
                   "i.e. its queries attend nearly the same distribution.")
        pos = [r["layer"] for r in rows if r["mean_curvature"] > 0]
        neg = [r["layer"] for r in rows if r["mean_curvature"] <= 0]
        parts = []
        if pos:
            parts.append(f"positive (clustered, redundant neighbourhoods) in layer(s) {', '.join(map(str, pos))}")
        if neg:
            parts.append(f"non-positive (tree-like, bridging) in layer(s) {', '.join(map(str, neg))}")
        out.append("Mean Ollivier–Ricci curvature of the head-averaged token graph is " + " and ".join(parts) + ".")
        gaps = [(lr["layer"], _gap(lr["head_mean"]["spectrum"])) for lr in d["layers"]]
        g_lo = min(gaps, key=lambda x: x[1])
        out.append(f"The smallest Laplace–Beltrami spectral gap is in layer {g_lo[0]} ({g_lo[1]:.3g}): its token "
                   "graph is closest to splitting into separate clusters.")
        pbs = [lr["pullback"] for lr in d["layers"] if lr["pullback"] is not None]
        if pbs:
            ed = np.mean([np.mean(p["effective_dimension"]) for p in pbs])
            out.append(f"The pulled-back metric has effective dimension {ed:.1f} on average (of "
                       f"{d['model']['hidden_size']}): the attention reads only a few directions of each hidden state.")
        out += _model_findings(d, toks)
        best = max(rows, key=lambda r: r["cost_saved"])
        out.append(f"At budget {d['params']['budget']:g} the tiling policy chooses a mean resolution of "
                   f"{np.mean([r['mean_resolution'] for r in rows]):.3f} and saves "
                   f"{np.mean([r['cost_saved'] for r in rows]):.1%} of the scan's operations on average "
                   f"(most in layer {best['layer']}: {best['cost_saved']:.1%}) and "
                   f"{np.mean([r['recurrence_saved'] for r in rows]):.1%} of its sequential recurrence.")
        return out


def _implied_arrays(data: dict) -> dict[str, tuple[int, int]] | None:
    """The arrays a report's JSON implies: ``{attention_L{l}_H{h}, geodesic_L{l}_H{h}: (n, n)}`` for every
    analysed layer and head, n its token count (None if the JSON does not say)."""
    try:
        n = int(data["text"]["n_tokens"])
        heads = [(int(lr["layer"]), int(h["head"])) for lr in data["layers"] for h in lr["attention"]["heads"]]
    except (KeyError, TypeError, ValueError):
        return None
    return {f"{kind}_L{li}_H{hi}": (n, n) for li, hi in heads for kind in ("attention", "geodesic")}


def _read_arrays(path: Path, implied: dict[str, tuple[int, int]] | None, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of ``arrays.npz``, trusting nothing (issue 27).

    Every member's ``.npy`` header is read first: a member the report does not imply, a shape other
    than the implied one, a dtype that is not a plain number, a size its header claims but the zip
    entry does not hold, or a total beyond ``max_bytes`` is refused before anything is decompressed
    (a header that claims terabytes, or a small zip that inflates to gigabytes: the read of each
    member stops at the size its header and its entry agree on).

    Raises
    ------
    ValueError
        Naming ``path`` and the problem.
    """
    where = f"{str(path)!r}"
    try:
        with zipfile.ZipFile(path) as zf:
            heads, total = [], 0
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else None
                if key is None or (implied is not None and key not in implied):
                    raise ValueError(f"{where} holds {info.filename!r}, which the report does not imply")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=10_000)
                    offset = f.tell()
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise ValueError(f"{where}: {key} has dtype {dtype}, expected numbers")
                if implied is not None and tuple(shape) != implied[key]:
                    raise ValueError(f"{where}: {key} has shape {tuple(shape)}; the report implies {implied[key]}")
                nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if info.file_size != offset + nbytes:
                    raise ValueError(f"{where}: {key} claims {nbytes} bytes, its entry holds {info.file_size - offset}")
                total += nbytes
                if total > max_bytes:
                    raise ValueError(f"{where} holds more than max_array_bytes = {max_bytes} bytes of arrays; pass a "
                                     "larger max_array_bytes to Report.load to read it")
                heads.append((key, info))
            out = {}
            for key, info in heads:
                with zf.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
            return out
    except ValueError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:  # RuntimeError: zipfile's own (encrypted)
        raise ValueError(f"{where} cannot be read: {e} (truncated or corrupt?)") from None


def _token_density(rho: torch.Tensor) -> torch.Tensor:
    """Per-token density from the n−1 transition densities: the mean of the transitions into
    and out of each token (an encoder reads both directions; ends have one transition).

    Here rather than in :mod:`.compute` (whose policy input it makes) because the report's
    figures need it too, and :mod:`.compute` builds on this module.
    """
    n = rho.shape[-1] + 1
    acc = torch.zeros(n, dtype=rho.dtype)
    cnt = torch.zeros(n, dtype=rho.dtype)
    acc[:-1] += rho
    acc[1:] += rho
    cnt[:-1] += 1
    cnt[1:] += 1
    return acc / cnt


def _model_findings(d: dict, toks: list[str]) -> list[str]:
    """Sentences on the implicit attention (Mamba) and the predictive density (causal LMs)."""
    out = []
    ia = d["model"].get("implicit_attention")
    if ia:
        err = max(ia["reproduction_error"]) if ia["reproduction_error"] else float("nan")
        out.append(f"The attention rows are the Mamba scan's implicit attention, row-normalised |M| averaged over "
                   f"{ia['groups']} groups of {ia['channels_per_group']} channels (a 'head' is such a group); "
                   f"the scan recomputed in float64 reproduces every layer's output to {err:.1g} (relative).")
    pr = d.get("predictive")
    if pr:
        rho = np.asarray(pr["density"])
        top = int(np.argmax(rho)) + 1
        corr = ("undefined (a constant series)" if pr["pearson"] is None else
                f"Pearson {pr['pearson']:+.2f}, Spearman {pr['spearman']:+.2f}")
        out.append(f"The predictive density (squared Fisher–Rao step between consecutive next-token "
                   f"distributions) has mean {pr['density_mean']:.3g} and peaks at '{toks[top]}' (#{top}); its "
                   f"correlation with the surprisal (mean {pr['bits_per_token']:.2f} bits per token) is {corr}.")
    lp = d.get("layer_plans")
    if lp:
        plans = ", ".join(f"{key} {lp[key]['bpb']:.3f} bpb at mean resolution {lp[key]['mean_resolution']:.3f}"
                          for key in ("chosen", "predictive", "implicit"))
        out.append(f"At budget {lp['budget']:g} the model's tiled layers {lp['tiled_layers']} chose their own plan; "
                   f"the plans tiling makes from the predictive and the implicit-attention densities, run by the "
                   f"same weights, give: {plans}.")
    return out


def _gap(spectrum: list[float]) -> float:
    """First non-zero eigenvalue (zeros counted below 1e-8: one per connected component)."""
    nz = [v for v in spectrum if v > 1e-8]
    return nz[0] if nz else 0.0
