"""Sample text from a byte-level TiledLM checkpoint with ``step()``, showing the segments it chose.

    python -m tiling.train.generate CHECKPOINT --prompt TEXT [--budget C] [--max-bytes N] [--seed S]

The prompt (UTF-8) is fed byte by byte through :meth:`~tiling.train.TiledLM.step`, then
``--max-bytes`` bytes are sampled (``--temperature``, ``--top-k``; a generator seeded with
``--seed``, so a run is reproducible). Each layer's step decides, byte by byte, whether the byte
starts a new segment (block scope: at the first byte of a tile the causal policy sets the tile's
``m_i = ⌈R_i·T⌉`` segments from the earlier tiles, seed 001 §3.2.2; the learned router decides
per byte). Printed: the text, then for every layer that runs at the budget the text with ``|``
before each segment start and the realised resolution ``R_i = m_i / T`` of each tile of ``T``
bytes. ``--json`` prints the same as one object. Bad input exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from tiling.train.checkpoint import CheckpointError
from tiling.train.evaluate import UsageError, check_budget
from tiling.train.textmodel import TextModelError, budget_warning, load_text_model, resolve_checkpoint


@torch.no_grad()
def generate(model, prompt: bytes, *, budget: float | None = None, max_bytes: int = 200, seed: int = 0,
             temperature: float = 1.0, top_k: int | None = None) -> dict:
    """Sample ``max_bytes`` bytes after ``prompt``, recording each layer's segment starts.

    Parameters
    ----------
    model : the :class:`~tiling.train.model.TiledLM`.
    prompt : non-empty bytes (the model has no beginning-of-text symbol).
    budget : the decoding budget (None: the model's own).
    max_bytes : bytes to generate, ≥ 0.
    seed : seed of the sampler.
    temperature : > 0.
    top_k : sample among the ``top_k`` most likely bytes, in [1, 256]; None: all.

    Returns
    -------
    ``{"prompt", "generated" (bytes), "starts" (per layer: list of bool per byte)}``.

    Raises
    ------
    UsageError
        ``prompt`` is empty, ``temperature ≤ 0``, ``top_k`` outside [1, 256] or ``max_bytes < 0``.
    """
    if not prompt:
        raise UsageError("--prompt must not be empty (the model has no beginning-of-text symbol)")
    if temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= 256:
        raise UsageError(f"--top-k must lie in [1, 256], got {top_k}")
    if max_bytes < 0:
        raise UsageError(f"--max-bytes must be >= 0, got {max_bytes}")
    model.eval()
    g = torch.Generator().manual_seed(seed)
    state = model.allocate_inference_state(1)
    units = len(model.layers) if hasattr(model, "layers") else 1  # an HourglassLM: its main network
    starts: list[list[bool]] = [[] for _ in range(units)]
    out = bytearray()
    seq = list(prompt)
    t = 0
    while True:
        tok = torch.tensor([seq[t]], dtype=torch.int64)
        logits, state = model.step(tok, state, budget=budget)
        if isinstance(state, list):
            for k, st in enumerate(state):
                starts[k].append(True if st.last_start is None else int(st.last_start[0]) == t)
        else:
            starts[0].append(bool(state.starts[0]))
        t += 1
        if t < len(seq):
            continue
        if len(out) >= max_bytes:
            break
        logit = logits[0].double() / temperature
        if top_k is not None:
            kth = torch.topk(logit, top_k).values[-1]
            logit = logit.masked_fill(logit < kth, float("-inf"))
        nxt = int(torch.multinomial(torch.softmax(logit, -1), 1, generator=g))
        out.append(nxt)
        seq.append(nxt)
    return {"prompt": bytes(prompt), "generated": bytes(out), "starts": starts}


def _show(b: bytes) -> str:
    return b.decode("utf-8", "replace").replace("\n", "⏎").replace("\t", "⇥")


def segments_view(data: bytes, starts: list[bool]) -> str:
    """``data`` with ``|`` before every segment start.

    Parameters
    ----------
    data : the bytes.
    starts : one bool per byte, True at a segment start.

    Returns
    -------
    The text (UTF-8 decoded with replacement; newlines shown as ``⏎``, tabs as ``⇥``).
    """
    pieces, cur = [], bytearray()
    for byte, s in zip(data, starts):
        if s and cur:
            pieces.append(bytes(cur))
            cur = bytearray()
        cur.append(byte)
    pieces.append(bytes(cur))
    return "|" + "|".join(_show(p) for p in pieces)


def tile_resolutions(starts: list[bool], tile_size: int) -> list[float]:
    """Realised ``R_i = m_i / n_i`` of each tile (segment starts over bytes).

    Parameters
    ----------
    starts : one bool per byte, True at a segment start.
    tile_size : tile length ``T``.

    Returns
    -------
    One float per tile.
    """
    return [sum(starts[i:i + tile_size]) / len(starts[i:i + tile_size]) for i in range(0, len(starts), tile_size)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tiling.train.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a text checkpoint path, or bundled:full / bundled:adaptive")
    p.add_argument("--prompt", required=True, help="prompt text (UTF-8)")
    p.add_argument("--budget", type=float, default=None, help="resolution budget in (0, 1] (default: as trained)")
    p.add_argument("--max-bytes", type=int, default=200, help="bytes to sample (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        model, extra = load_text_model(resolve_checkpoint(args.checkpoint))
        check_budget(model, args.budget)
        warning = budget_warning(model, extra, args.budget)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        for k, layer in enumerate(getattr(model, "layers", ())):
            b = model.layer_budget(k, args.budget)
            if layer.scope == "scan" and (layer.budget if b is None else b) < 1.0:
                raise UsageError(f"checkpoint {args.checkpoint} is a scan-scope model: its step() decodes at full "
                                 f"resolution only; pass --budget 1")
        res = generate(model, args.prompt.encode("utf-8"), budget=args.budget, max_bytes=args.max_bytes,
                       seed=args.seed, temperature=args.temperature, top_k=args.top_k)
    except (TextModelError, CheckpointError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = res["prompt"] + res["generated"]
    hourglass = not hasattr(model, "layers")
    T = model.config.tiling.tile_size if hourglass else model.layers[0].tile_size
    layers = []
    for k in ([0] if hourglass else model.tiled_layers):
        st = res["starts"][k]
        layers.append({"layer": "main" if hourglass else k, "segments": segments_view(data, st), "tile_resolution": tile_resolutions(st, T),
                       "mean_resolution": sum(st) / len(st)})
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": res["generated"].decode("utf-8", "replace"),
                          "configuration": extra.get("configuration"), "budget": args.budget or extra.get("budget"),
                          "tile_size": T, "layers": layers}, ensure_ascii=False))
        return 0
    print(args.prompt + res["generated"].decode("utf-8", "replace"))
    print(f"\n--- segments ({extra.get('configuration')}, budget {args.budget or extra.get('budget'):g}; "
          f"| marks a segment start, R per tile of {T} bytes) ---")
    if not layers:
        print("every layer runs at full resolution: one segment per byte")
    for r in layers:
        print(f"layer {r['layer']}: mean R {r['mean_resolution']:.3f}")
        print("  " + r["segments"])
        print("  R: " + " ".join(f"{x:.2f}" for x in r["tile_resolution"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
