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
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from tiling.options import (
    Options, UsageError, add_subcommand, option, run_main, seed_option, standalone_parser, threads_option,
)
from tiling.runtime import keep_freed_memory
from tiling.train.evaluate import EXPECTED, budget_notes, budget_option, check_budget
from tiling.train.lm_state import TiledLMState
from tiling.train.text import set_threads
from tiling.train.textmodel import load_text_model, resolve_checkpoint

#: the most bytes one run samples (``--max-bytes``): decoding is one step of the whole model per byte
MAX_BYTES = 2 ** 16
#: ``--temperature`` range: outside it the logits over- or underflow (1/T of float64 logits)
TEMPERATURE = (1e-2, 1e2)


@dataclass(frozen=True)
class GenerateOptions(Options):
    """The options of ``generate`` (``infogeo generate``, ``python -m tiling.train.generate``).

    Parameters
    ----------
    checkpoint, prompt, budget, max_bytes, seed, temperature, top_k, threads, json : the flags of the same
        names (their help says what each does).
    """

    checkpoint: str | None = option(None, kind="str", positional=True,
                                    help="a text checkpoint path, or bundled:full / bundled:adaptive")
    prompt: str | None = option(None, kind="str", help="prompt text (UTF-8)")
    budget: float | None = budget_option()
    max_bytes: int = option(200, kind="int", low=0, high=MAX_BYTES, metavar="N",
                            help=f"bytes to sample, at most {MAX_BYTES} (default 200)")
    seed: int = seed_option(0, high=2 ** 63 - 1)
    temperature: float = option(1.0, kind="float", low=TEMPERATURE[0], high=TEMPERATURE[1], metavar="T",
                                help=f"in [{TEMPERATURE[0]:g}, {TEMPERATURE[1]:g}] (default 1)")
    top_k: int | None = option(None, kind="int", low=1, high=256, metavar="K",
                               help="sample among the K most likely bytes, K in [1, 256] (default: all)")
    # 1, not the physical cores: decoding one sequence is a few small products per byte, and a second
    # thread only adds synchronisation (measured 3x faster on the 2-core machine, docs/benchmarks.md)
    threads: int | None = threads_option(1, "decoding one sequence, measured fastest")
    json: bool = option(False, kind="bool", help="one JSON object at the end (no streaming)")

    def check(self) -> None:
        """A checkpoint and a prompt (required: the model has no beginning-of-text symbol)."""
        if self.checkpoint is None:
            raise UsageError("the following arguments are required: checkpoint")
        if self.prompt is None:
            raise UsageError("the following arguments are required: --prompt")


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
    specs = GenerateOptions.specs()  # the ranges of the command line's options, named by their flags
    for name, value in (("temperature", temperature), ("top_k", top_k), ("max_bytes", max_bytes), ("seed", seed)):
        specs[name].checked(value, specs[name].flag)


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
        if isinstance(state, TiledLMState):
            for k, s in enumerate(state.started()[:, 0].tolist()):
                starts[k].append(s)
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infogeo generate`` on an argparse sub-parser collection (:mod:`tiling.workflows.cli`)."""
    return add_subcommand(subparsers, "generate", GenerateOptions, command, description=__doc__,
                          help="sample text from a text checkpoint, showing its segments")


def _load(opts: GenerateOptions):
    """The checkpoint's model and metadata, once every option that needs none passed."""
    prompt = _prompt_bytes(opts.prompt)
    check_sampling(prompt, max_bytes=opts.max_bytes, seed=opts.seed, temperature=opts.temperature, top_k=opts.top_k)
    set_threads(opts.threads, decoding=True)
    keep_freed_memory()  # this process is ours: reuse freed activations (tiling.runtime)
    model, extra = load_text_model(resolve_checkpoint(opts.checkpoint))
    check_budget(model, opts.budget)
    for k, layer in enumerate(getattr(model, "layers", ())):
        b = model.layer_budget(k, opts.budget)
        if layer.scope == "scan" and (layer.budget if b is None else b) < 1.0:
            raise UsageError(f"checkpoint {opts.checkpoint} is a scan-scope model: its step() decodes at full "
                             f"resolution only; pass --budget 1")
    return prompt, model, extra


def main(argv=None) -> int:
    """``python -m tiling.train.generate`` (an alias of ``infogeo generate``); returns the exit code (0; 2 for
    any expected error; 130 when interrupted, the text streamed so far staying printed)."""
    parser = standalone_parser("python -m tiling.train.generate", GenerateOptions, __doc__)
    return run_main("generate", lambda: command(parser.parse_args(argv)), expected=EXPECTED, reads=True,
                    interrupted="\ngenerate: interrupted (the text above is what was sampled)")


def command(args: argparse.Namespace) -> int:
    """The command on a parsed command line: streams the text, then prints the segments; exit code 0."""
    opts = GenerateOptions.from_args(args)
    prompt, model, extra = _load(opts)
    stream: Callable[[int], object] | None = None
    if not opts.json:  # the text appears as it is sampled
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        print(opts.prompt, end="", flush=True)
        stream = lambda byte: print(decoder.decode(bytes([byte])), end="", flush=True)  # noqa: E731

    res = generate(model, prompt, budget=opts.budget, max_bytes=opts.max_bytes, seed=opts.seed,
                   temperature=opts.temperature, top_k=opts.top_k, on_byte=stream)
    return _show_result(opts, model, extra, res)


def _show_result(args: GenerateOptions, model, extra: dict, res: dict) -> int:
    """Print the warnings and each tiled layer's segments (or the JSON object)."""
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
