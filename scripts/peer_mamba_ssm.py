#!/usr/bin/env python
"""The peer of the CUDA scan kernel: mamba_ssm's ``selective_scan_fn``, built from its sdist on the GPU machine.

    python scripts/peer_mamba_ssm.py build --sdist .gpu/sdist/mamba_ssm-2.3.2.post1.tar.gz --site .gpu/build/peer
    PYTHONPATH=.gpu/build/peer python scripts/bench_scan.py --device cuda   # then bench_scan times it too
    python scripts/peer_mamba_ssm.py bench --site .gpu/build/peer [--json PATH]

``build`` unpacks the sdist under ``SITE/src``, writes a light package ``SITE/mamba_ssm`` (the sdist's
package with an ``__init__`` that imports nothing: the full one imports the Mamba2/Mamba3 modules,
whose packages the GPU machine lacks and the scan does not need) and compiles only the
``selective_scan_cuda`` extension into ``SITE`` (``torch.utils.cpp_extension.load``, ninja,
``MAX_JOBS`` jobs): the ten sources and the compiler flags of mamba_ssm's ``setup.py``, for the
archs of ``TORCH_CUDA_ARCH_LIST`` only (``9.0`` on an H100/H200; setup.py builds seven). With
``--dry-run``, or without a CUDA toolkit, it unpacks and checks the sources and compiles nothing.

``bench`` checks that ``selective_scan_fn`` computes what ``tiling.ops.adaptive_selective_scan`` does
at R = 1 (float32, forward and the gradient of u), then times it at ``bench_scan.CUDA_SHAPES``
(forward; forward + backward), with the H100 figures of mamba_ssm 2.3.2 that bench_scan holds
beside them, unscaled and labelled as measured elsewhere.

PyPI has no sdist of 2.3.2 itself: 2.3.2.post1 is the release's sdist (``pip download
mamba-ssm==2.3.2.post1 --no-deps --no-binary :all: --no-build-isolation``, with
``MAMBA_SKIP_CUDA_BUILD=TRUE`` so its metadata step compiles nothing).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the sources of setup.py's ``selective_scan_cuda`` extension, relative to the sdist root
SOURCES = ["csrc/selective_scan/selective_scan.cpp",
           *(f"csrc/selective_scan/selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")),
           *(f"csrc/selective_scan/selective_scan_bwd_{t}_{k}.cu" for t in ("fp32", "fp16", "bf16")
             for k in ("real", "complex"))]
#: setup.py's flags, less ``--threads 4`` (one arch: nothing to split) and ``--ptxas-options=-v`` (noise);
#: the arch flags come from TORCH_CUDA_ARCH_LIST through cpp_extension
CXX_FLAGS = ["-O3", "-std=c++17"]
NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]
INTERFACE = "mamba_ssm/ops/selective_scan_interface.py"


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def unpack(sdist: Path, site: Path) -> Path:
    """Unpack ``sdist`` under ``site/src`` (once) and return the sdist root; check the sources it must hold."""
    with tarfile.open(sdist) as tar:
        top = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        if len(top) != 1:
            raise ValueError(f"--sdist {sdist}: expected one top folder, found {sorted(top)}")
        root = site / "src" / top.pop()
        if not root.is_dir():
            tar.extractall(site / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    missing = [s for s in [*SOURCES, INTERFACE] if not (root / s).is_file()]
    if missing:
        raise ValueError(f"--sdist {sdist}: missing {', '.join(missing)}")
    return root


def light_package(root: Path, site: Path) -> str:
    """``site/mamba_ssm``: the sdist's package, its ``__init__`` reduced to the version; returns the version."""
    text = (root / "mamba_ssm" / "__init__.py").read_text()
    m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    version = m.group(1) if m else "unknown"
    dest = site / "mamba_ssm"
    shutil.copytree(root / "mamba_ssm", dest, dirs_exist_ok=True)
    (dest / "__init__.py").write_text(
        f'__version__ = "{version}"\n# scripts/peer_mamba_ssm.py: the full __init__ imports Mamba2/Mamba3 and their '
        "packages; only ops.selective_scan_interface is used here\n")
    return version


def cmd_build(args) -> int:
    if not args.sdist.is_file():
        return fail(f"--sdist {args.sdist}: no such file (pip download mamba-ssm==2.3.2.post1 --no-deps "
                    "--no-binary :all: --no-build-isolation -d .gpu/sdist)")
    args.site.mkdir(parents=True, exist_ok=True)
    try:
        root = unpack(args.sdist, args.site)
    except (ValueError, tarfile.TarError) as e:
        return fail(str(e))
    version = light_package(root, args.site)
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    print(f"mamba_ssm {version}: {len(SOURCES)} sources of selective_scan_cuda found in {root}; light package "
          f"{args.site / 'mamba_ssm'}", flush=True)
    print(f"build: selective_scan_cuda for TORCH_CUDA_ARCH_LIST={archs or '(unset: the visible GPUs)'}, "
          f"MAX_JOBS={os.environ.get('MAX_JOBS', '(torch default)')}, nvcc {' '.join(NVCC_FLAGS)}", flush=True)
    from torch.utils import cpp_extension

    if args.dry_run or cpp_extension.CUDA_HOME is None:
        print("dry run: nothing compiled" + ("" if args.dry_run else " (no CUDA toolkit: CUDA_HOME is None)"))
        return 0
    t0 = time.perf_counter()
    cpp_extension.load(name="selective_scan_cuda", sources=[str(root / s) for s in SOURCES],
                       extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS,
                       extra_include_paths=[str(root / "csrc" / "selective_scan")],
                       build_directory=str(args.site), verbose=True)
    print(f"built selective_scan_cuda in {time.perf_counter() - t0:.0f} s -> {args.site}", flush=True)
    return 0


def load_bench_scan():
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_scan

    return bench_scan


def cmd_bench(args) -> int:
    import torch

    if not torch.cuda.is_available():
        return fail("bench needs a CUDA device (torch.cuda.is_available() is False)")
    sys.path.insert(0, str(args.site.resolve()))
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as e:
        return fail(f"--site {args.site}: mamba_ssm's selective_scan_fn does not import ({e}); run build first")
    from tiling.ops import adaptive_selective_scan

    bs = load_bench_scan()
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

    def peer(t, bwd):
        leaves = {k: v.detach().requires_grad_(bwd) for k, v in t.items()}
        y = selective_scan_fn(*(leaves[k] for k in order), delta_softplus=True)
        if bwd:
            y.float().sum().backward()
        return y, leaves

    # the same function: our op at R = 1 on the same float32 input
    t = bs.inputs(2, 64, 300, 16, "cuda", seed=1)
    y_p, l_p = peer(t, True)
    leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
    y_o = adaptive_selective_scan(*(leaves[k] for k in order), True)
    y_o.sum().backward()
    err_y = float((y_p - y_o).norm() / y_o.norm())
    err_du = float((l_p["u"].grad - leaves["u"].grad).norm() / leaves["u"].grad.norm())
    same = err_y <= 1e-4 and err_du <= 1e-4
    print(f"same function as tiling's op at R = 1 (float32, b2 d64 L300 N16): forward {err_y:.1e}, du {err_du:.1e} "
          f"-> {'yes' if same else 'NO'}", flush=True)
    rows = []
    for (batch, dim, L, N, dtype), (ref_f, ref_fb) in bs.CUDA_SHAPES.items():
        t = bs.inputs(batch, dim, L, N, "cuda")
        t = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in t.items()}
        with torch.no_grad():
            f = bs.cuda_ms(lambda t=t: peer(t, False), args.repeats)
        fb = bs.cuda_ms(lambda t=t: peer(t, True), args.repeats)
        rows.append({"shape": f"b{batch} d{dim} L{L} N{N} {str(dtype).split('.')[-1]}", "fwd_ms": f, "fwd_bwd_ms": fb,
                     "elsewhere_fwd_ms": ref_f, "elsewhere_fwd_bwd_ms": ref_fb})
        del t
        torch.cuda.empty_cache()
    header = (f"mamba_ssm selective_scan_fn on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"median of {args.repeats} (CUDA events); 'elsewhere': mamba_ssm 2.3.2 on an H100 80GB HBM3, "
              "measured elsewhere (bench_scan.CUDA_SHAPES), unscaled")
    print(header)
    print("| shape | fwd ms (this run) | fwd+bwd ms (this run) | fwd ms (elsewhere) | fwd+bwd ms (elsewhere) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['elsewhere_fwd_ms']:.3f} "
              f"| {r['elsewhere_fwd_bwd_ms']:.3f} |")
    if args.json:
        from tiling.train.storage import atomic_write_json
        atomic_write_json(args.json, {"header": header, "same_function": same, "err_forward": err_y,
                                      "err_du": err_du, "rows": rows}, indent=2)
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="unpack the sdist, write the light package, compile selective_scan_cuda")
    b.add_argument("--sdist", type=Path, required=True, help="mamba_ssm-*.tar.gz")
    b.add_argument("--site", type=Path, required=True, help="folder for the package and the extension (on PYTHONPATH)")
    b.add_argument("--dry-run", action="store_true", help="unpack and check only, compile nothing")
    t = sub.add_parser("bench", help="check and time selective_scan_fn at bench_scan's CUDA shapes")
    t.add_argument("--site", type=Path, required=True)
    t.add_argument("--repeats", type=int, default=15)
    t.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    if getattr(args, "repeats", 1) < 1:
        ap.error(f"--repeats must be a positive integer, got {args.repeats}")
    return cmd_build(args) if args.cmd == "build" else cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
