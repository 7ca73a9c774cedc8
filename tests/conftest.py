"""Shared test configuration: hypothesis profiles, the CUDA skip, float64 helpers, fuzz sizes, the scripts."""
import collections
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Every run draws the same cases, on every machine (issue 27): the default profile is derandomised, as
# CI's is, and reads no example database (a database replays earlier failures: another run, another
# outcome). HYPOTHESIS_PROFILE=explore draws fresh random cases, to look for new failures.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_QUIET)
settings.register_profile("dev", settings.get_profile("ci"))
# derandomize=False is spelled out: under CI=1 hypothesis loads its own derandomised "ci" profile
# before this file runs, and a profile registered without it inherits that.
settings.register_profile("explore", max_examples=40, deadline=None, derandomize=False,
                          suppress_health_check=_QUIET)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiling_kwargs(kw: dict) -> dict:
    """Layer keywords with the :class:`~tiling.config.TilingConfig` fields among ``kw`` gathered into
    ``tiling=TilingConfig(...)``: ``TiledMamba(d, **tiling_kwargs(dict(d_state=4, budget=0.5)))`` is
    ``TiledMamba(d, d_state=4, tiling=TilingConfig(budget=0.5))`` (not the deprecated keyword form)."""
    from tiling.config import TilingConfig

    names = {f.name for f in dataclasses.fields(TilingConfig)}
    return {**{k: v for k, v in kw.items() if k not in names},
            "tiling": TilingConfig(**{k: v for k, v in kw.items() if k in names})}


_MODELS: dict = {}


@pytest.fixture
def cached_model_loading(monkeypatch):
    """Load each model folder once per session: the CLI calls tiling.workflows.models.load_model per run."""
    import tiling.workflows.models

    real = _MODELS.setdefault("real", tiling.workflows.models.load_model)

    def cached(path=None, device="cpu", **kw):
        key = (str(path), str(device), tuple(sorted(kw.items())))
        if key not in _MODELS:
            _MODELS[key] = real(path, device=device, **kw)
        return _MODELS[key]

    monkeypatch.setattr(tiling.workflows.models, "load_model", cached)


#: cases run by the fuzzers in this session, by harness (printed at the end of the run)
FUZZ_CASES: collections.Counter = collections.Counter()


def fuzz_settings(default: int, large: int, *, slow: bool):
    """Hypothesis settings of a fuzz test: ``default`` examples in ``make test``, ``large`` in the
    ``slow`` variant (``make test-slow``); ``FUZZ_SCALE`` (a float) scales both, e.g. for a mid-size run."""
    n = max(1, round((large if slow else default) * float(os.environ.get("FUZZ_SCALE", "1"))))
    return settings(max_examples=n, deadline=None, derandomize=not slow, database=None,
                    suppress_health_check=list(HealthCheck))


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        terminalreporter.write_line("fuzz cases run: " + ", ".join(f"{k} {v}" for k, v in sorted(FUZZ_CASES.items())))


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
#: the first ``bundled:full`` (the real-text sweep's 4 × 256, the flat checkpoint form), kept for the tests since
#: the hourglass sweep bundled 8 × 180 in its place (tiling/data/make_values_fixture.py's ``KEPT`` names it too:
#: that script runs outside pytest)
KEPT_FULL_4X256 = Path(__file__).resolve().parent / "tiling" / "data" / "text_full_4x256.safetensors"


def load_script(name: str):
    """``scripts/<name>.py`` as a module (registered in ``sys.modules``: dataclasses look their module up
    while the module executes)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
