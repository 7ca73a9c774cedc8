"""Sample text from a byte-level TiledLM checkpoint with ``step()``, showing the segments it chose.

    python -m tiling.train.generate CHECKPOINT --prompt TEXT [--budget C] [--max-bytes N] [--seed S]

The prompt (UTF-8) is fed byte by byte through :meth:`~tiling.train.TiledLM.step`, then
``--max-bytes`` bytes are sampled (``--temperature``, ``--top-k``; a generator seeded with
``--seed``, so a run is reproducible). Each layer's step decides, byte by byte, whether the byte
starts a new segment (block scope: at the first byte of a tile the causal policy sets the tile's
``m_i = ⌈R_i·T⌉`` segments from the earlier tiles, seed 001 §3.2.2; the learned router decides
per byte). Printed: the text, streamed as it is sampled, then for every layer that runs at the
budget the text with ``|`` before each segment start, the realised resolution ``R_i = m_i / T`` of
each tile of ``T`` bytes and its mean beside the requested budget, with a warning when the
checkpoint was not trained for that budget or its router ignores it
(:func:`tiling.train.evaluate.budget_notes`). ``--json`` prints the same as one object at the end.
``--max-bytes`` is at most :data:`MAX_BYTES` (64 KiB: each byte is one step of the whole model).

Any expected error (a bad option value, a prompt that is not UTF-8, a checkpoint that is not one)
is one line ``generate: error: ...`` naming the option, exit code 2; Ctrl-C exits with 130 and the
text streamed so far stays printed.
"""
from __future__ import annotations

import argparse
import codecs
import json
import math
import sys
from typing import Callable

import torch

from tiling.train.evaluate import EXPECTED, UsageError, _Parser, budget_notes, check_budget, check_range, fail
from tiling.train.text import set_threads
from tiling.train.textmodel import load_text_model, resolve_checkpoint

#: the most bytes one run samples (``--max-bytes``): decoding is one step of the whole model per byte
MAX_BYTES = 2 ** 16
#: ``--temperature`` range: outside it the logits over- or underflow (1/T of float64 logits)
TEMPERATURE = (1e-2, 1e2)


def check_sampling(prompt: bytes, *, max_bytes: int, seed: int, temperature: float, top_k: int | None) -> None:
    """The sampling options of :func:`generate` (each error names its command-line option).

    Raises
    ------
    UsageError
        ``prompt`` is empty, ``temperature`` outside :data:`TEMPERATURE` (NaN included), ``top_k``
        outside [1, 256], ``max_bytes`` outside [0, :data:`MAX_BYTES`] or ``seed`` outside [0, 2**63).
    """
    if not prompt:
        raise UsageError("--prompt must not be empty (the model has no beginning-of-text symbol)")
    if not (math.isfinite(temperature) and TEMPERATURE[0] <= temperature <= TEMPERATURE[1]):
        raise UsageError(f"--temperature must lie in [{TEMPERATURE[0]:g}, {TEMPERATURE[1]:g}], got {temperature}")
    check_range("--top-k", top_k, 1, 256)
    check_range("--max-bytes", max_bytes, 0, MAX_BYTES)
    check_range("--seed", seed, 0, 2 ** 63 - 1)


@torch.no_grad()
def generate(model, prompt: bytes, *, budget: float | None = None, max_bytes: int = 200, seed: int = 0,
             temperature: float = 1.0, top_k: int | None = None,
             on_byte: Callable[[int], object] | None = None) -> dict:
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
    on_byte : called with each sampled byte as soon as it is drawn (to stream the text).

    Returns
    -------
    ``{"prompt", "generated" (bytes), "starts" (per layer: list of bool per byte)}``.

    Raises
    ------
    UsageError
        As :func:`check_sampling`.
    """
    check_sampling(prompt, max_bytes=max_bytes, seed=seed, temperature=temperature, top_k=top_k)
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
        if on_byte is not None:
            on_byte(nxt)
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


def _prompt_bytes(prompt: str) -> bytes:
    """``--prompt`` as UTF-8 (a command line's undecodable bytes arrive as lone surrogates)."""
    try:
        return prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(prompt[e.start])
        bad = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"lone surrogate U+{c:04X}"
        raise UsageError(f"--prompt is not valid UTF-8 ({bad} at character {e.start}); expected UTF-8 text") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m tiling.train.generate", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a text checkpoint path, or bundled:full / bundled:adaptive")
    p.add_argument("--prompt", required=True, help="prompt text (UTF-8)")
    p.add_argument("--budget", type=float, default=None, help="resolution budget in (0, 1] (default: as trained)")
    p.add_argument("--max-bytes", type=int, default=200, help=f"bytes to sample, at most {MAX_BYTES} (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0,
                   help=f"in [{TEMPERATURE[0]:g}, {TEMPERATURE[1]:g}] (default 1)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: measured fastest for decoding)")
    p.add_argument("--json", action="store_true", help="one JSON object at the end (no streaming)")
    return p.parse_args(argv)


def _load(args):
    """The checkpoint's model and metadata, once every option that needs none passed."""
    prompt = _prompt_bytes(args.prompt)
    check_range("--threads", args.threads, 1, 4096)
    if args.budget is not None and not (math.isfinite(args.budget) and 0.0 < args.budget <= 1.0):
        raise UsageError(f"--budget must lie in (0, 1], got {args.budget}")
    check_sampling(prompt, max_bytes=args.max_bytes, seed=args.seed, temperature=args.temperature, top_k=args.top_k)
    set_threads(args.threads, decoding=True)
    model, extra = load_text_model(resolve_checkpoint(args.checkpoint))
    check_budget(model, args.budget)
    for k, layer in enumerate(getattr(model, "layers", ())):
        b = model.layer_budget(k, args.budget)
        if layer.scope == "scan" and (layer.budget if b is None else b) < 1.0:
            raise UsageError(f"checkpoint {args.checkpoint} is a scan-scope model: its step() decodes at full "
                             f"resolution only; pass --budget 1")
    return prompt, model, extra


def main(argv=None) -> int:
    """Run the command; returns the exit code (0; 2 for any expected error; 130 when interrupted)."""
    try:
        args = parse_args(argv)
        prompt, model, extra = _load(args)
        stream = None
        if not args.json:  # the text appears as it is sampled
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            print(args.prompt, end="", flush=True)

            def stream(byte: int) -> None:
                print(decoder.decode(bytes([byte])), end="", flush=True)

        res = generate(model, prompt, budget=args.budget, max_bytes=args.max_bytes, seed=args.seed,
                       temperature=args.temperature, top_k=args.top_k, on_byte=stream)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except EXPECTED as e:
        return fail("generate", e)
    except KeyboardInterrupt:
        print("\ngenerate: interrupted (the text above is what was sampled)", file=sys.stderr)
        return 130
    data = res["prompt"] + res["generated"]
    hourglass = not hasattr(model, "layers")
    T = model.config.tiling.tile_size if hourglass else model.layers[0].tile_size
    layers = []
    for k in ([0] if hourglass else model.tiled_layers):
        st = res["starts"][k]
        layers.append({"layer": "main" if hourglass else k, "segments": segments_view(data, st),
                       "tile_resolution": tile_resolutions(st, T), "mean_resolution": sum(st) / len(st)})
    realised = sum(r["mean_resolution"] for r in layers) / len(layers) if layers else 1.0
    budget = args.budget if args.budget is not None else extra.get("budget")
    notes = budget_notes(model, extra, args.budget, realised)
    if not args.json:
        print(flush=True)  # end the streamed text's line
    for w in notes:
        print(f"generate: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": res["generated"].decode("utf-8", "replace"),
                          "configuration": extra.get("configuration"), "budget": budget,
                          "requested_budget": args.budget, "mean_resolution": realised, "warnings": notes,
                          "tile_size": T, "layers": layers}, ensure_ascii=False))
        return 0
    print(f"\n--- segments ({extra.get('configuration')}; budget {budget:g}"
          f"{'' if args.budget is not None else ' (as trained)'}, realised mean resolution {realised:.3f}; "
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
