"""``infogeo.fisher`` as a package split by concern (issue 26): the old names, the old pickles, no geomstats.

The module ``infogeo/fisher.py`` became the package ``infogeo/fisher/`` (the families' closed forms,
the estimators, the pull-backs, the metric algebra). Every ``from infogeo.fisher import X`` and every
pickle that names ``infogeo.fisher.X`` must keep working, and geomstats, now in the test extra, must
not be needed to import the packages or to get a clear error from the one bench that uses it.
"""
from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import infogeo.fisher as fisher
from infogeo.fisher import categorical, estimators, metric, normal, pullback

ROOT = Path(__file__).resolve().parents[2]

#: each public name of infogeo/fisher.py before the split (commit 1a26a61), under the module of its concern
HOME = {
    categorical: {"categorical_metric", "categorical_distance"},
    normal: {"normal_metric", "normal_distance", "diag_normal_metric", "diag_normal_distance"},
    estimators: {"empirical_fisher", "monte_carlo_fisher"},
    pullback: {"pullback_metric", "pullback_quadratic_form", "linear_softmax_metric", "attention_row_metric",
               "FN_RAISED"},
    metric: {"regularized", "metric_inverse", "metric_logdet", "effective_dimension"},
}
BEFORE = set().union(*HOME.values())
FUNCTIONS = sorted(BEFORE - {"FN_RAISED"})

#: run first in a subprocess: geomstats cannot be imported (``import geomstats`` raises ImportError and
#: ``importlib.util.find_spec("geomstats")`` is None), as after an install without the test extra
NO_GEOMSTATS = "import sys; sys.modules['geomstats'] = None\n"


def test_the_package_exports_exactly_the_names_of_the_old_module():
    assert len(BEFORE) == 17
    assert sorted(fisher.__all__) == sorted(BEFORE)
    public = {n for n, v in vars(fisher).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == BEFORE, public ^ BEFORE


def test_each_name_is_the_object_of_the_module_of_its_concern():
    for module, names in HOME.items():
        for name in names:
            assert getattr(fisher, name) is getattr(module, name), name
            if name != "FN_RAISED":
                assert getattr(fisher, name).__module__ == module.__name__, name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_pickle_by_the_new_or_the_old_path_resolves(name):
    f = getattr(fisher, name)
    assert pickle.loads(pickle.dumps(f)) is f
    made_before_the_split = f"cinfogeo.fisher\n{name}\n.".encode()  # protocol 0: GLOBAL infogeo.fisher.<name>
    assert pickle.loads(made_before_the_split) is f


def test_the_packages_and_the_command_import_without_geomstats():
    modules = sorted({".".join(("infogeo",) + p.relative_to(ROOT / "infogeo").with_suffix("").parts).removesuffix(
        ".__init__") for p in (ROOT / "infogeo").rglob("*.py")})
    code = NO_GEOMSTATS + (f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
                           "import tiling, tiling.workflows.cli\nprint('imported', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
    assert "infogeo.fisher.pullback" in modules and "infogeo.density" in modules


def test_the_geometry_bench_names_the_missing_extra_without_geomstats(tmp_path):
    out = tmp_path / "figures"
    code = NO_GEOMSTATS + ("import runpy\nsys.argv = ['bench_geometry.py', '--figures', sys.argv[1]]\n"
                           "runpy.run_path('scripts/bench_geometry.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: --figures needs geomstats") and "test extra" in err[0], err
    assert "pip install -e '.[test]'" in err[0]
    assert not out.exists()  # refused before anything was drawn
