"""The house rules on imports (issue 15, docs/architecture.md): arrows run from the top of the stack down.

Every module of ``infogeo``, ``tiling`` and ``kernels_cuda`` is parsed with :mod:`ast`; every
``import`` statement (at module level and inside functions, classes and ``try`` blocks; relative
imports resolved against the importing module's package) becomes an arrow ``importer → imported
module``. ``from pkg import name`` points at the module ``pkg.name`` when that is a module, at
``pkg`` otherwise. Each module belongs to one *unit* (the nodes of the package-level graph), and
the units are layered, bottom to top::

    infogeo.checks                          public argument checks
    infogeo                                 the geometry (every other infogeo module)
    kernels_cuda                            C++/CUDA sources, no Python dependencies
    tiling.ops                              the scan op and its cost (+ tiling._build, which uses kernels_cuda)
    tiling                                  config, policy, tile, metrics (and the package root)
    tiling.modules                          the adaptive layers
    tiling.train                            model, data, checkpoints
    tiling.workflows                        the end-to-end jobs (analyse, verify, the CLI)

The rules:

* ``infogeo`` imports nothing from ``tiling``;
* nothing outside ``tiling.workflows`` imports ``tiling.workflows``;
* a module imports only from its own unit or from units below it (:data:`USES`);
* no unit imports a private (``_name``) module, or a private name, of another unit;
* the module graph is acyclic, and so is the unit graph (imports under ``if TYPE_CHECKING:``
  do not run and are left out of both).

A module that no unit claims fails the test too: a new module is placed in the table first.
"""
from __future__ import annotations

import ast
import dataclasses
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("infogeo", "tiling", "kernels_cuda")

# unit -> the units it may import directly (its own unit is always allowed; lower units transitively).
USES: dict[str, tuple[str, ...]] = {
    "infogeo.checks": (),
    "infogeo": ("infogeo.checks",),
    "kernels_cuda": (),
    "tiling.ops": ("infogeo", "kernels_cuda"),
    "tiling": ("tiling.ops",),
    "tiling.modules": ("tiling",),
    "tiling.train": ("tiling.modules",),
    "tiling.workflows": ("tiling.train",),
}
# module -> unit; a key "pkg.*" claims every submodule of pkg (the longest such key wins) and a plain key
# the module of that name only. A module no key claims is reported: a new module is placed here first.
UNIT_OF: dict[str, str] = {
    "infogeo": "infogeo",
    "infogeo.*": "infogeo",
    "infogeo.checks": "infogeo.checks",
    "kernels_cuda": "kernels_cuda",
    "kernels_cuda.*": "kernels_cuda",
    "tiling.ops": "tiling.ops",
    "tiling.ops.*": "tiling.ops",
    "tiling._build": "tiling.ops",
    "tiling": "tiling",  # the package root runs whenever a tiling module is imported: kept below modules/train/workflows
    "tiling.config": "tiling",
    "tiling.policy": "tiling",
    "tiling.tile": "tiling",
    "tiling.tile_stats": "tiling",
    "tiling.metrics": "tiling",
    "tiling.options": "tiling",
    "tiling.runtime": "tiling",
    "tiling.modules": "tiling.modules",
    "tiling.modules.*": "tiling.modules",
    "tiling.train": "tiling.train",
    "tiling.train.*": "tiling.train",
    "tiling.workflows": "tiling.workflows",
    "tiling.workflows.*": "tiling.workflows",
}


@dataclasses.dataclass(frozen=True)
class Arrow:
    """One import: ``src`` (a module, imported at ``path:line``) → ``dst`` (a module) and the names taken."""

    src: str
    dst: str
    path: str
    line: int
    names: tuple[str, ...]
    type_only: bool

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.path}:{self.line}: {self.src} → {self.dst}{names}"


def _allowed(uses: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Each unit with every unit it may import: itself and the transitive closure of :data:`USES`."""
    closure: dict[str, set[str]] = {}

    def visit(unit: str) -> set[str]:
        if unit not in closure:
            closure[unit] = {unit}.union(*(visit(u) for u in uses[unit]))
        return closure[unit]

    for unit in uses:
        visit(unit)
    return closure


def unit_of(module: str, table: dict[str, str] = UNIT_OF) -> str | None:
    """The unit a module belongs to (see :data:`UNIT_OF`), None if no key claims it."""
    if module in table:
        return table[module]
    parts = module.split(".")
    for k in range(len(parts) - 1, 0, -1):
        unit = table.get(".".join(parts[:k]) + ".*")
        if unit is not None:
            return unit
    return None


def discover(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``: dotted name → file (``pkg/__init__.py`` is ``pkg``)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in ``tree`` with whether it sits under ``if TYPE_CHECKING:``."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, type_only))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                walk(child, True)
            for child in node.orelse:
                walk(child, type_only)
            return
        for child in ast.iter_child_nodes(node):
            walk(child, type_only)

    walk(tree, False)
    return found


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of a dotted name that is a module (``pkg.mod.attr`` → ``pkg.mod``)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k])
    return name


def arrows(root: Path, packages: tuple[str, ...] = PACKAGES) -> tuple[list[Arrow], dict[str, Path]]:
    """All arrows between modules of ``packages`` under ``root``, and the modules found."""
    modules = discover(root, packages)
    found: list[Arrow] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node, type_only in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [(_known(alias.name, modules), ()) for alias in node.names]
            else:
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                taken: dict[str, list[str]] = {}  # one arrow per imported module, with the names taken from it
                for alias in node.names:
                    sub = f"{stem}.{alias.name}"
                    taken.setdefault(sub if sub in modules else _known(stem, modules), []).extend(
                        [] if sub in modules else [alias.name])
                targets = [(dst, tuple(names)) for dst, names in taken.items()]
            for dst, names in targets:
                if dst.split(".")[0] in packages and dst != module:
                    found.append(Arrow(module, dst, rel, node.lineno, names, type_only))
    return found, modules


RULES = ("module without a unit", "infogeo imports tiling", "tiling.workflows imported from below",
          "wrong-way import", "private module or name of another unit", "module cycle", "package cycle")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _cycles(nodes: list[str], edges: list[tuple[str, str, Arrow]]) -> list[list[Arrow]]:
    """The arrows inside each strongly connected component with more than one node (Tarjan)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b, _ in edges:
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(succ):
        if v not in index:
            strongconnect(v)
    return [[arrow for a, b, arrow in edges if a in c and b in c] for c in components]


def violations(root: Path, packages: tuple[str, ...] = PACKAGES, *, uses: dict[str, tuple[str, ...]] = USES,
               table: dict[str, str] = UNIT_OF) -> dict[str, list[str]]:
    """Every broken rule under ``root``: rule → the offending arrows (``file:line: from → to``)."""
    found, modules = arrows(root, packages)
    allowed = _allowed(uses)
    out: dict[str, list[str]] = {rule: [] for rule in RULES}
    for module, path in modules.items():
        if unit_of(module, table) is None:
            out["module without a unit"].append(f"{path.relative_to(root)}: {module}")
    for a in found:
        src_unit, dst_unit = unit_of(a.src, table), unit_of(a.dst, table)
        if _within(a.src, "infogeo") and _within(a.dst, "tiling"):
            out["infogeo imports tiling"].append(str(a))
        if _within(a.dst, "tiling.workflows") and not _within(a.src, "tiling.workflows"):
            out["tiling.workflows imported from below"].append(str(a))
        if src_unit is None or dst_unit is None:
            continue
        if dst_unit not in allowed[src_unit]:
            out["wrong-way import"].append(f"{a}   [{src_unit} may not import {dst_unit}]")
        if src_unit != dst_unit:
            if any(_private(p) for p in a.dst.split(".")) or any(_private(n) for n in a.names):
                out["private module or name of another unit"].append(str(a))
    runtime = [a for a in found if not a.type_only]
    for cycle in _cycles(sorted(modules), [(a.src, a.dst, a) for a in runtime]):
        out["module cycle"].append("\n    ".join(str(a) for a in cycle))
    unit_edges = [(unit_of(a.src, table), unit_of(a.dst, table), a) for a in runtime]
    unit_edges = [(s, d, a) for s, d, a in unit_edges if s is not None and d is not None and s != d]
    for cycle in _cycles(sorted(uses), unit_edges):
        out["package cycle"].append("\n    ".join(str(a) for a in cycle))
    return out


def _report(found: list[str]) -> str:
    return "\n  " + "\n  ".join(found)


@pytest.fixture(scope="module")
def repo_violations() -> dict[str, list[str]]:
    return violations(ROOT)


def test_the_walk_sees_the_packages() -> None:
    found, modules = arrows(ROOT)
    assert {"infogeo.checks", "infogeo.fisher", "tiling.ops.scan", "tiling._build", "kernels_cuda",
            "tiling.workflows.cli"} <= set(modules)
    # an import inside a function and a relative one are both seen
    assert any(a.src == "tiling.workflows.cli" and a.dst.startswith("tiling.workflows.") for a in found)
    assert any(a.src == "tiling._build" and a.dst == "kernels_cuda" for a in found)


def test_unit_table_is_a_dag() -> None:
    assert set(UNIT_OF.values()) <= set(USES)
    assert all(set(deps) <= set(USES) for deps in USES.values())
    allowed = _allowed(USES)
    assert not [u for u in USES for v in USES if u != v and u in allowed[v] and v in allowed[u]]


@pytest.mark.parametrize("rule", RULES)
def test_repo_keeps_the_rule(rule: str, repo_violations: dict[str, list[str]]) -> None:
    found = repo_violations[rule]
    assert not found, f"{rule}:{_report(found)}"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_checker_reports_wrong_way_arrows(tmp_path: Path) -> None:
    """A synthetic tree with one breach of every rule: each is reported with its file and line."""
    _write(tmp_path, {
        "infogeo/__init__.py": "",
        "infogeo/checks.py": "",
        "infogeo/fisher.py": """\
            from infogeo.checks import x

            def f():
                from tiling.ops import scan  # geometry knows tiling: wrong way, inside a function
            """,
        "kernels_cuda/__init__.py": "",
        "tiling/__init__.py": "",
        "tiling/_build.py": "import kernels_cuda\n",
        "tiling/policy.py": "from tiling.tile import Tile\n",
        "tiling/tile.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from tiling.policy import f  # a type-only cycle is no cycle
            """,
        "tiling/ops/__init__.py": "",
        "tiling/ops/scan.py": "from tiling import _build\nfrom . import cost\n",
        "tiling/ops/cost.py": "from .scan import g  # module cycle scan <-> cost\n",
        "tiling/modules/__init__.py": "",
        "tiling/modules/router.py": """\
            from ..policy import _private_helper
            from ..workflows import cli
            """,
        "tiling/workflows/__init__.py": "",
        "tiling/workflows/cli.py": "from tiling import _build\nfrom tiling.modules import router\n",
        "tiling/stray.py": "",
    })
    found = violations(tmp_path)
    assert found["infogeo imports tiling"] == ["infogeo/fisher.py:4: infogeo.fisher → tiling.ops.scan"]
    assert found["tiling.workflows imported from below"] == [
        "tiling/modules/router.py:2: tiling.modules.router → tiling.workflows.cli"]
    wrong = found["wrong-way import"]
    assert any(w.startswith("infogeo/fisher.py:4: infogeo.fisher → tiling.ops.scan") for w in wrong)
    assert any(w.startswith("tiling/modules/router.py:2: tiling.modules.router → tiling.workflows.cli") for w in wrong)
    assert len(wrong) == 2
    assert sorted(found["private module or name of another unit"]) == [
        "tiling/modules/router.py:1: tiling.modules.router → tiling.policy (_private_helper)",
        "tiling/workflows/cli.py:1: tiling.workflows.cli → tiling._build",
    ]
    assert sorted(found["module cycle"]) == [
        "tiling/modules/router.py:2: tiling.modules.router → tiling.workflows.cli\n"
        "    tiling/workflows/cli.py:2: tiling.workflows.cli → tiling.modules.router",
        "tiling/ops/cost.py:1: tiling.ops.cost → tiling.ops.scan (g)\n"
        "    tiling/ops/scan.py:2: tiling.ops.scan → tiling.ops.cost",
    ]
    # infogeo → tiling.ops and tiling.modules → tiling.workflows → tiling.modules close two unit cycles
    assert len(found["package cycle"]) == 1
    assert "tiling.modules.router → tiling.workflows.cli" in found["package cycle"][0]
    assert "tiling.workflows.cli → tiling.modules.router" in found["package cycle"][0]
    assert found["module without a unit"] == ["tiling/stray.py: tiling.stray"]


def test_checker_accepts_a_clean_tree(tmp_path: Path) -> None:
    _write(tmp_path, {
        "infogeo/__init__.py": "",
        "infogeo/checks.py": "",
        "infogeo/fisher.py": "from .checks import x\nfrom infogeo.density import _helper\n",
        "infogeo/density.py": "",
        "kernels_cuda/__init__.py": "",
        "tiling/__init__.py": "",
        "tiling/_build.py": "import kernels_cuda\n",
        "tiling/ops/__init__.py": "from .scan import f\n",
        "tiling/ops/scan.py": "from tiling import _build\nfrom infogeo.fisher import g\n",
        "tiling/workflows/__init__.py": "",
        "tiling/workflows/cli.py": "from tiling.ops import f\nimport infogeo.fisher\n",
    })
    found = violations(tmp_path)
    assert not any(found.values()), found


# ----------------------------------------------------------------------------- size rules (issue 26)
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80  # without the docstring; a longer function states why in a "# long: ..." comment
SIZE_ROOTS = PACKAGES + ("scripts",)


def _sources(root: Path) -> list[Path]:
    return sorted(p for top in SIZE_ROOTS for p in (root / top).rglob("*.py"))


def long_functions(path: Path) -> list[str]:
    """``path``'s functions whose body, docstring excluded, exceeds :data:`MAX_FUNCTION_LINES` lines and
    that hold no ``# long:`` comment saying why."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        n = node.end_lineno - node.lineno + 1
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            n -= first.end_lineno - first.lineno + 1
        reason = any(line.strip().startswith("# long:") for line in lines[node.lineno - 1:node.end_lineno])
        if n > MAX_FUNCTION_LINES and not reason:
            found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno} "
                         f"{node.name} ({n} lines)")
    return found


def test_no_module_over_the_size_limit() -> None:
    over = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _sources(ROOT)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not over, f"modules over {MAX_MODULE_LINES} lines:" + _report(over)


def test_no_long_function_without_a_stated_reason() -> None:
    over = [f for p in _sources(ROOT) for f in long_functions(p)]
    assert not over, (f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded) without a '# long: why' "
                      "comment:" + _report(over))


def test_the_size_checker_sees_a_long_function_and_its_reason(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (tmp_path / "m.py").write_text(f'def f():\n    """Doc\n\n    string."""\n{body}\n\n'
                                   f'def g():\n    # long: a table of constants\n{body}\n\n'
                                   f'def h():\n    """Doc."""\n' + "\n".join(body.splitlines()[:-2]) + "\n")
    found = long_functions(tmp_path / "m.py")
    assert len(found) == 1 and " f (82 lines)" in found[0]  # the def line and 81 statements


def test_the_training_loop_and_the_commands_are_under_the_rules() -> None:
    _, modules = arrows(ROOT)
    assert {"tiling.train.trainer", "tiling.train.sweep", "tiling.options", "tiling.workflows.cli",
            "tiling.train.evaluate", "tiling.train.generate", "tiling.train.text_cli", "tiling.train.text_run",
            "tiling.train.text_sweep", "tiling.train.synthetic.loop", "tiling.train.synthetic.command",
            "tiling.train.synthetic.sweep"} <= set(modules)
