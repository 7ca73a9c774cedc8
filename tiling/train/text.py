"""Byte-level text for :class:`~tiling.train.TiledLM`: windows, bits per byte, compute, speed.

Bytes are tokens (vocabulary 256), so no tokenizer hides the cost: a text of ``N`` bytes is
``N`` positions, and the model predicts byte ``t + 1`` from bytes ``≤ t``.

Evaluation in windows (:func:`eval_windows`, :func:`evaluate_bytes`). The model is trained on
windows of ``context`` bytes and starts every window from a zero state, so a long text is cut
into windows of the trained context: window ``k`` holds the inputs ``[k·S, k·S + context)`` and
their next bytes as targets, ``S`` the stride (default ``S = context``: consecutive,
non-overlapping windows). Every target ``1 … N − 1`` is scored exactly once: in the first window
that reaches it when ``S = context``; with ``S < context`` (overlapping windows) each window after
the first scores only its last ``S`` targets, which then see ``context − S`` earlier bytes at
least. Byte 0 is context only (there is no beginning-of-text symbol), so a text of ``N`` bytes
has ``N − 1`` scored bytes, and::

    bpb = (1 / (N − 1)) · Σ_{t=1}^{N−1} −log₂ p(x_t | x_{s(t)} … x_{t−1})

with ``s(t)`` the start of the window that scores ``t``. It is exactly the mean of the per-byte
``−log₂ p`` of :meth:`~tiling.train.TiledLM.step` run from a fresh state over each window
(tested). The first positions of a window see little context, so ``S = context`` gives a
slightly pessimistic bpb next to a smaller stride.

Compute (:func:`forward_madds`). Multiply-adds of a forward are counted from each layer's plan
(:meth:`~tiling.modules.TiledMamba.cost`, ``tiling.ops.layer_cost``: seed 000 §3.5.1, "each tile
processes O(R_i·n_i) tokens"), per row with the row's own compact length ``L_c = Σ_i m_i``
(block scope; the padding of a batch to its longest row is not counted) or the row's own
resolutions (scan scope), plus the tied head, ``d_model·256`` per byte. The composite map of the
linearised signal (``signal_maps``, once per weight update, cached by the layer between calls)
is left out of the per-byte count: at inference it is computed once. Embedding look-ups, the
RMSNorms, the residual additions and the softmax are not counted (``O(d_model)`` per byte, under
1 % of a layer). FLOPs are ``2 ×`` multiply-adds.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from infogeo.checks import check_in_range, check_int

Tensor = torch.Tensor
VOCAB = 256


class TextInputError(ValueError):
    """A text file that cannot be evaluated: missing, empty, too short or not UTF-8."""


def read_text_file(path: str | os.PathLike, *, min_bytes: int = 2) -> bytes:
    """The bytes of a UTF-8 text file, checked.

    Parameters
    ----------
    path : the file.
    min_bytes : least number of bytes (byte 0 is context, bytes 1 … N−1 are predicted).

    Returns
    -------
    The file's bytes.

    Raises
    ------
    TextInputError
        Says what was read and why it is refused: the file is missing, not a regular file (e.g. a
        directory), empty, shorter than ``min_bytes``, or not UTF-8 (with the byte offset, line and
        column where decoding failed).
    """
    p = Path(path)
    if not p.exists():
        raise TextInputError(f"text file {p} does not exist")
    if not p.is_file():
        raise TextInputError(f"{p} is not a regular file")
    data = p.read_bytes()
    if not data:
        raise TextInputError(f"text file {p} is empty (0 bytes read)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start:e.end].hex(" ")
        raise TextInputError(
            f"text file {p} is not UTF-8: read {len(data)} bytes, decoding failed at byte offset {e.start} "
            f"(line {line}, column {col}; bytes {bad}: {e.reason})") from e
    if len(data) < min_bytes:
        raise TextInputError(f"text file {p} has {len(data)} byte(s) read; at least {min_bytes} are needed "
                             f"(byte 0 is context, bytes 1 … N−1 are predicted)")
    return data


def as_byte_tensor(data: bytes | bytearray | Tensor) -> Tensor:
    """``data`` as a 1-D uint8 tensor (a copy for ``bytes``).

    Parameters
    ----------
    data : bytes, bytearray or a 1-D uint8 tensor (returned as is).

    Returns
    -------
    1-D uint8 tensor.

    Raises
    ------
    TypeError
        ``data`` is of another type.
    ValueError
        A tensor that is not 1-D uint8.
    """
    if isinstance(data, Tensor):
        if data.dim() != 1 or data.dtype != torch.uint8:
            raise ValueError(f"byte tensor must be 1-D uint8, got {data.dtype} {tuple(data.shape)}")
        return data
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, bytearray or a uint8 tensor, got {type(data).__name__}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.zeros(0, dtype=torch.uint8)


class TextWindows:
    """Contiguous training windows of a byte string.

    Item ``i`` is ``(inputs, targets)`` of ``context`` bytes each, targets shifted by one (so a
    window reads ``context + 1`` bytes).

    Parameters
    ----------
    data : the text (bytes or a 1-D uint8 tensor).
    context : window length, ≥ 1.
    seed : ≥ 0.

    Attributes
    ----------
    n_starts : number of possible window starts, ``N − context``.

    Raises
    ------
    TypeError, ValueError
        ``data`` is not bytes (:func:`as_byte_tensor`), ``context``/``seed`` is not an int in its
        range, or the text is shorter than ``context + 1`` bytes.

    Notes
    -----
    Window ``i`` starts at a position drawn uniformly from ``[0, N − context − 1]`` by a generator
    seeded with ``seed·1_000_003 + i``: a pure function of ``(seed, i)``, so a run and its resumed
    continuation see the same data, and ``batch(step, B)`` is windows ``step·B … step·B + B − 1``.
    Windows may cross document boundaries (the split is documents concatenated in name order).
    """

    def __init__(self, data: bytes | Tensor, context: int, seed: int = 0) -> None:
        self.data = as_byte_tensor(data)
        self.context = check_int(context, "context", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        if self.data.numel() < self.context + 1:
            raise ValueError(f"a window of context {self.context} needs {self.context + 1} bytes, the text has "
                             f"{self.data.numel()}")

    @property
    def n_starts(self) -> int:
        return self.data.numel() - self.context

    def start(self, i: int) -> int:
        """Start of window ``i`` (``i ≥ 0``), a pure function of ``(seed, i)``."""
        i = check_int(i, "i", minimum=0)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return int(torch.randint(0, self.n_starts, (1,), generator=g))

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.start(i)
        w = self.data[s:s + self.context + 1].to(torch.int64)
        return w[:-1], w[1:]

    def batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """The batch of training step ``step``: windows ``step·B … step·B + B − 1``, stacked.

        Parameters
        ----------
        step : the training step.
        batch_size : ``B ≥ 1``.

        Returns
        -------
        ``(inputs, targets)``, each (B, context) int64.
        """
        B = check_int(batch_size, "batch_size", minimum=1)
        items = [self[step * B + j] for j in range(B)]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def eval_windows(n_bytes: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows covering a text of ``n_bytes`` bytes.

    Parameters
    ----------
    n_bytes : length of the text, ≥ 2.
    context : inputs per window, ≥ 1.
    stride : new targets per window, in ``[1, context]``; default ``context``.

    Returns
    -------
    list of ``(start, length, first_scored)``: inputs are bytes ``[start, start + length)``,
    targets ``[start + 1, start + length]``; the targets at window offsets ``≥ first_scored`` are
    scored. Every target ``1 … n − 1`` is scored exactly once (module docstring).

    Raises
    ------
    TypeError, ValueError
        An argument is not an int in its range.
    """
    n = check_int(n_bytes, "n_bytes", minimum=2)
    L = check_int(context, "context", minimum=1)
    S = L if stride is None else check_int(stride, "stride", minimum=1, maximum=L)
    out = []
    scored_to = 0  # targets 1 … scored_to are scored already
    start = 0
    while scored_to < n - 1:
        length = min(L, n - 1 - start)
        first = scored_to - start  # offset j scores target start + j + 1 > scored_to
        out.append((start, length, max(0, first)))
        scored_to = start + length
        start += S
    return out


def _row_madds(layer, plan, L: int, budget: float | None) -> list[float]:
    """Multiply-adds of ``layer`` on each row of ``plan`` (without the once-per-call signal maps)."""
    c = layer.budget if budget is None else float(budget)
    if layer.scope == "scan":
        total = plan.meta["layer_cost"]["total"]
        return [total / plan.batch] * plan.batch  # rows of one batch: the scan's count is summed over them
    used = layer.computes_signal(c)
    out = []
    for b in range(plan.batch):
        cost = layer.cost(L, compact_length=int(plan.segments[b].sum()), signal=used)
        out.append(cost["total"] - cost["signal_maps"])
    return out


def forward_madds(model, plans, L: int, budget: float | None = None) -> dict:
    """Multiply-adds of one forward over rows of ``L`` bytes, from its plans.

    Parameters
    ----------
    model : the :class:`~tiling.train.TiledLM`.
    plans : one :class:`~tiling.tile.TilePlan` per layer, of that forward.
    L : bytes per row.
    budget : the budget of the forward.

    Returns
    -------
    ``{"layers", "head", "per_byte"}``: per layer (mean per row), the head, and everything per
    byte (module docstring).
    """
    layers = []
    for k, (layer, plan) in enumerate(zip(model.layers, plans)):
        rows = _row_madds(layer, plan, L, model.layer_budget(k, budget))
        layers.append(sum(rows) / len(rows))
    head = model.head.weight.shape[1] * model.head.weight.shape[0] * L
    return {"layers": layers, "head": head, "per_byte": (sum(layers) + head) / L}


@torch.no_grad()
def score_windows(model, data: bytes | Tensor, windows: list[tuple[int, int, int]], *,
                  budget: float | None = None, batch_size: int = 8) -> dict:
    """Bits per byte over the scored targets of ``windows``, in eval mode.

    Parameters
    ----------
    model : the :class:`~tiling.train.TiledLM`.
    data : the text.
    windows : ``(start, length, first_scored)`` as :func:`eval_windows` returns; windows of equal
        length are batched.
    budget : the budget of the tiled layers, in (0, 1]; None: each layer's own.
    batch_size : windows per forward, ≥ 1.

    Returns
    -------
    dict with ``bpb``, ``scored_bytes``, ``tokens`` (input positions run), ``seconds``,
    ``mean_resolution`` (the realised ``Σ_i m_i / L`` of the layers that run at the budget, averaged
    over their positions; 1 if every layer is pinned at full resolution),
    ``mean_resolution_by_layer``, ``flops_per_byte`` (``2 ×`` :func:`forward_madds` per input
    position), ``madds_per_byte_by_layer`` and ``budget`` (the one the tiled layers ran at).

    Raises
    ------
    ValueError
        No window is given, a window does not fit the text, ``batch_size < 1`` or ``budget``
        outside (0, 1].
    """
    x = as_byte_tensor(data)
    if budget is not None:
        check_in_range(float(budget), "budget", 0.0, 1.0, low_open=True)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    device = model.embedding.weight.device
    was_training = model.training
    model.eval()
    nll, scored, tokens = 0.0, 0, 0
    n_layers = len(model.layers) if hasattr(model, "layers") else 1
    seg = [0.0] * n_layers
    madds_layers = [0.0] * n_layers
    madds_head = 0.0
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        if w[0] < 0 or w[1] < 1 or w[0] + w[1] + 1 > x.numel() or not 0 <= w[2] < w[1]:
            raise ValueError(f"window {w} does not fit a text of {x.numel()} bytes")
        groups.setdefault(w[1], []).append(w)
    t0 = time.perf_counter()
    try:
        for length, ws in groups.items():
            for i in range(0, len(ws), batch_size):
                chunk = ws[i:i + batch_size]
                idx = torch.stack([torch.arange(s, s + length + 1) for s, _, _ in chunk])
                win = x[idx].to(torch.int64).to(device)
                if hasattr(model, "score_forward"):  # a whole-model cost (HourglassLM): one unit, its main network
                    logits, info = model.score_forward(win[:, :-1], budget=budget)
                else:
                    logits, plans = model(win[:, :-1], budget=budget, return_plans=True)
                    info = None
                logp = F.log_softmax(logits.double(), dim=-1).gather(-1, win[:, 1:].unsqueeze(-1)).squeeze(-1)
                for r, (_, _, first) in enumerate(chunk):
                    nll -= float(logp[r, first:].sum())
                    scored += length - first
                rows = len(chunk)
                tokens += rows * length
                if info is not None:
                    seg[0] += info["segments"]
                    madds_layers[0] += info["madds"] * rows
                    madds_head += info["head"] * rows
                    continue
                cost = forward_madds(model, plans, length, budget)
                for k, plan in enumerate(plans):
                    seg[k] += float(plan.segments.sum())
                    madds_layers[k] += cost["layers"][k] * rows
                madds_head += cost["head"] * rows
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no window to score")
    res = [s / tokens for s in seg]
    tiled = model.tiled_layers if hasattr(model, "tiled_layers") else [0]
    return {
        "bpb": nll / scored / math.log(2.0),
        "scored_bytes": scored,
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "mean_resolution": statistics.fmean(res[k] for k in tiled) if tiled else 1.0,
        "mean_resolution_by_layer": res,
        "flops_per_byte": 2.0 * (sum(madds_layers) + madds_head) / tokens,
        "madds_per_byte_by_layer": [m / tokens for m in madds_layers],
        "budget": float(budget) if budget is not None else (
            model.budget if not hasattr(model, "layers") else model.layers[tiled[0]].budget if tiled else 1.0),
    }


def evaluate_bytes(model, data: bytes | Tensor, *, context: int, budget: float | None = None,
                   stride: int | None = None, batch_size: int = 8, max_bytes: int | None = None) -> dict:
    """Bits per byte of a whole text under ``model`` (windows of ``context``; module docstring).

    Parameters
    ----------
    model : the :class:`~tiling.train.TiledLM`.
    data : the text.
    context : inputs per window.
    budget : the budget of the tiled layers (None: each layer's own).
    stride : new targets per window (:func:`eval_windows`).
    batch_size : windows per forward.
    max_bytes : evaluate only the first ``max_bytes`` (≥ 2) bytes.

    Returns
    -------
    What :func:`score_windows` does and ``bytes`` (the text's length; ``scored_bytes`` is
    ``bytes − 1``), ``bytes_per_s`` (text bytes through the model per second of this evaluation,
    plans included), ``context``, ``stride``, ``windows``.

    Raises
    ------
    ValueError
        The text has fewer than 2 bytes, ``max_bytes < 2``, or an argument is out of range
        (:func:`eval_windows`, :func:`score_windows`).
    AssertionError
        Not every target was scored exactly once (an internal check).
    """
    x = as_byte_tensor(data)
    if max_bytes is not None:
        x = x[:check_int(max_bytes, "max_bytes", minimum=2)]
    n = int(x.numel())
    if n < 2:
        raise ValueError(f"a text of {n} byte(s) has nothing to predict: at least 2 bytes are needed")
    windows = eval_windows(n, context, stride)
    res = score_windows(model, x, windows, budget=budget, batch_size=batch_size)
    if res["scored_bytes"] != n - 1:  # eval_windows scores every target once; guard the bookkeeping
        raise AssertionError(f"scored {res['scored_bytes']} targets, expected {n - 1}")
    res.update(bytes=n, bytes_per_s=n / res["seconds"] if res["seconds"] > 0 else float("inf"), context=context,
               stride=context if stride is None else stride, windows=len(windows))
    return res


def spaced_windows(n_bytes: int, context: int, count: int) -> list[tuple[int, int, int]]:
    """Evenly spaced windows, all targets scored (a fixed validation subset).

    Parameters
    ----------
    n_bytes : length of the text, ≥ ``context + 1``.
    context : inputs per window.
    count : number of windows, ≥ 1.

    Returns
    -------
    ``count`` windows ``(start, length, first_scored)`` of ``context`` inputs: the same windows at
    every evaluation.

    Raises
    ------
    TypeError, ValueError
        An argument is not an int in its range.
    """
    n = check_int(n_bytes, "n_bytes", minimum=context + 1)
    count = check_int(count, "count", minimum=1)
    last = n - context - 1
    starts = sorted({round(k * last / max(1, count - 1)) for k in range(count)})
    return [(s, context, 0) for s in starts]


@torch.no_grad()
def step_prompts(model, prompts: list[bytes], *, budget: float | None = None) -> tuple[Tensor, list]:
    """Batched decoding: several prompts through :meth:`~tiling.train.TiledLM.step` together.

    Parameters
    ----------
    model : the :class:`~tiling.train.TiledLM`.
    prompts : non-empty list of non-empty byte strings of one length (the rows of a batch take one
        token each per step).
    budget : the decoding budget.

    Returns
    -------
    ``(logits, state)``: the logits after each prompt's last byte (len(prompts), vocab) and the
    decoding state, ready for the next byte of every row.

    Raises
    ------
    TypeError
        ``prompts`` holds something other than bytes.
    ValueError
        ``prompts`` is empty, a prompt is empty, or the prompts differ in length (naming the lengths).
    """
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of byte strings, got {prompts!r}"[:200])
    bad = [type(p).__name__ for p in prompts if not isinstance(p, (bytes, bytearray))]
    if bad:
        raise TypeError(f"prompts must hold bytes, got {bad[:4]}")
    lengths = [len(p) for p in prompts]
    if len(set(lengths)) != 1:
        raise ValueError(f"prompts must all have the same length (the rows of a batch decode together), got lengths "
                         f"{lengths[:16]}")
    if lengths[0] == 0:
        raise ValueError("prompts must not be empty (the model has no beginning-of-text symbol)")
    tokens = torch.tensor([list(p) for p in prompts], dtype=torch.int64, device=model.embedding.weight.device)
    state = model.allocate_inference_state(len(prompts))
    for t in range(lengths[0]):
        logits, state = model.step(tokens[:, t], state, budget=budget)
    return logits, state


@torch.no_grad()
def measure_speed(model, sample: bytes | Tensor, *, context: int, budget: float | None = None,
                  decode_bytes: int = 256, repeats: int = 3) -> dict:
    """Prefill and decode throughput on one row (eval mode, the current thread count).

    Parameters
    ----------
    model : the :class:`~tiling.train.TiledLM`.
    sample : text of at least ``context`` bytes.
    context : bytes of the prefill.
    budget : the budget.
    decode_bytes : bytes decoded.
    repeats : timings of the prefill.

    Returns
    -------
    ``{"prefill_bytes_per_s", "decode_bytes_per_s", "threads"}``. ``prefill_bytes_per_s``: a
    forward over ``context`` bytes of ``sample``, the median of ``repeats`` timings after one
    warm-up; ``decode_bytes_per_s``: :meth:`~tiling.train.TiledLM.step` over ``decode_bytes`` bytes
    from a fresh state (inputs taken from ``sample``, so the segments are those of real text), one
    warm-up step excluded. Scan-scope models below budget 1 cannot step: their decode rate is None.

    Raises
    ------
    ValueError
        ``sample`` is shorter than ``context`` bytes.
    """
    x = as_byte_tensor(sample)
    if x.numel() < context:
        raise ValueError(f"the speed sample has {x.numel()} bytes, {context} are needed")
    device = model.embedding.weight.device
    was_training = model.training
    model.eval()
    try:
        inp = x[:context].to(torch.int64).view(1, -1).to(device)
        model(inp, budget=budget)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(inp, budget=budget)
            times.append(time.perf_counter() - t0)
        prefill = context / statistics.median(times)
        decode = None
        can_step = not hasattr(model, "layers") or all(
            layer.scope == "block" or (model.layer_budget(k, budget) or layer.budget) >= 1.0
            for k, layer in enumerate(model.layers))
        if can_step:
            n = min(decode_bytes, context)
            state = model.allocate_inference_state(1)
            _, state = model.step(inp[:, 0], state, budget=budget)
            t0 = time.perf_counter()
            for t in range(1, n):
                _, state = model.step(inp[:, t], state, budget=budget)
            decode = (n - 1) / (time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return {"prefill_bytes_per_s": prefill, "decode_bytes_per_s": decode, "threads": torch.get_num_threads()}


def physical_cores() -> int:
    """The physical CPU cores this process may run on (hyper-threads not counted).

    Returns
    -------
    The number of distinct ``(physical id, core id)`` pairs of ``/proc/cpuinfo`` among the CPUs of
    the process's affinity mask; ``os.cpu_count()`` (at least 1) where that cannot be read.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores, cpu, phys = set(), None, "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                phys = value
            elif key == "core id" and (allowed is None or cpu in allowed):
                cores.add((phys, value))
    except (OSError, ValueError):
        cores = set()
    return len(cores) or len(allowed or ()) or os.cpu_count() or 1


def set_threads(threads: int | None, *, decoding: bool) -> int:
    """Set torch's CPU threads for a command: ``threads``, or the default of its kind.

    Parameters
    ----------
    threads : the ``--threads`` value (checked by the caller), or None.
    decoding : single-sequence decoding (``generate``): the default is 1 thread, measured faster
        than 2 on the project's 2-core machine (``docs/benchmarks.md``: a step is a few small
        products, and a second thread only adds synchronisation); otherwise the machine's
        :func:`physical_cores` (batched forwards).

    Returns
    -------
    The number of threads set.
    """
    n = threads if threads is not None else (1 if decoding else physical_cores())
    torch.set_num_threads(n)
    return n


__all__ = [
    "VOCAB", "TextInputError", "physical_cores", "set_threads", "TextWindows", "read_text_file", "as_byte_tensor", "eval_windows", "evaluate_bytes",
    "score_windows", "spaced_windows",
    "forward_madds", "step_prompts", "measure_speed",
]
