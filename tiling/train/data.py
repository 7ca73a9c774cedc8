"""A synthetic task of variable information density: selective copying of bursts.

A context of ``context_len`` tokens is filler except for ``n_bursts`` bursts of ``burst_len``
consecutive content symbols at random, non-overlapping positions. After a separator the model must
reproduce the content symbols in order (teacher forced). Information density is therefore
concentrated in short stretches (seed 001 §3.1: "the rate of change in the model's internal
state" is high only where content arrives), which is the regime a resolution-adaptive scan is
meant for: coarse segments merge consecutive tokens into one recurrence step, harmless over filler
but destructive inside a burst, where the order of the symbols is the information.

With ``burst_window = W`` the bursts lie in the last ``W`` tokens of the context (all of it by
default): a shorter distance between the bursts and the answers, for runs too short to learn the
long-range copy.

Vocabulary: content symbols ``0 … n_symbols−1``, ``FILLER = n_symbols``, ``SEP = n_symbols + 1``.
Example ``i`` is a pure function of ``(seed, i)``, so a ``DistributedSampler`` over the dataset
gives each rank its own examples and a resumed run sees exactly the data of an uninterrupted one.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from infogeo.checks import check_int

Tensor = torch.Tensor


class _BurstDataset(Dataset):
    """What both burst tasks share: size, alphabet, seed, and example ``i`` as a pure function of
    ``(seed, i)`` (a ``DistributedSampler`` gives each rank its own examples; a resumed run sees
    exactly the data of an uninterrupted one)."""

    def __init__(self, size: int, n_symbols: int, seed: int) -> None:
        self.size = check_int(size, "size", minimum=1)
        self.n_symbols = check_int(n_symbols, "n_symbols", minimum=2)
        self.seed = check_int(seed, "seed", minimum=0)
        self.filler = self.n_symbols

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 2

    def __len__(self) -> int:
        return self.size

    def _generator(self, i: int) -> torch.Generator:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of size {self.size}")
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))

    @staticmethod
    def _starts(g: torch.Generator, n: int, span: int, room: int) -> Tensor:
        """Starts of ``n`` non-overlapping spans of length ``span`` in ``[0, room)``, uniformly
        (stars and bars: sorted draws from ``[0, room − n·span]``, shifted by ``k·span``)."""
        draws = torch.sort(torch.randint(0, room - n * span + 1, (n,), generator=g)).values
        return draws + torch.arange(n) * span


class BurstCopyDataset(_BurstDataset):
    """``size`` examples of selective burst copying; ``__getitem__`` returns ``(inputs, targets, mask)``.

    ``inputs`` and ``targets`` are int64 of length ``context_len + n_bursts·burst_len``
    (targets shifted by one), ``mask`` (bool) marks the answer positions on which loss and
    accuracy are computed.

    Parameters
    ----------
    size : number of examples, ≥ 1.
    context_len : tokens of the context, ≥ 1.
    n_bursts, burst_len : bursts and content symbols per burst, ≥ 1.
    n_symbols : content symbols, ≥ 2.
    burst_window : the bursts lie in the last ``burst_window`` tokens of the context (default all).
    seed : ≥ 0; example ``i`` is a pure function of ``(seed, i)``.

    Raises
    ------
    TypeError, ValueError
        An argument is not an int in its range, ``burst_window > context_len``, or the bursts do not
        fit in the burst window.
    """

    def __init__(self, size: int, *, context_len: int = 1024, n_bursts: int = 2, burst_len: int = 16,
                 n_symbols: int = 8, burst_window: int | None = None, seed: int = 0) -> None:
        super().__init__(size, n_symbols, seed)
        self.context_len = check_int(context_len, "context_len", minimum=1)
        self.n_bursts = check_int(n_bursts, "n_bursts", minimum=1)
        self.burst_len = check_int(burst_len, "burst_len", minimum=1)
        self.burst_window = self.context_len if burst_window is None else check_int(burst_window, "burst_window", minimum=1)
        if self.burst_window > self.context_len:
            raise ValueError(f"burst_window = {self.burst_window} must be <= context_len = {self.context_len}")
        if self.n_bursts * self.burst_len > self.burst_window:
            raise ValueError(
                f"n_bursts·burst_len = {self.n_bursts * self.burst_len} must fit in the burst window "
                f"(burst_window or context_len) = {self.burst_window}")
        self.sep = self.n_symbols + 1

    @property
    def seq_len(self) -> int:
        """Length of ``inputs``: the context, the separator and all answers but the last."""
        return self.context_len + self.n_bursts * self.burst_len

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        g = self._generator(i)
        K = self.n_bursts * self.burst_len
        starts = self._starts(g, self.n_bursts, self.burst_len, self.burst_window) + (self.context_len - self.burst_window)
        content = torch.randint(0, self.n_symbols, (K,), generator=g)
        ctx = torch.full((self.context_len,), self.filler, dtype=torch.int64)
        for b in range(self.n_bursts):
            s = int(starts[b])
            ctx[s:s + self.burst_len] = content[b * self.burst_len:(b + 1) * self.burst_len]
        seq = torch.cat([ctx, torch.tensor([self.sep]), content])
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[-K:] = True
        return seq[:-1], seq[1:], mask


def collate(items: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack ``(inputs, targets, mask)`` triples into a batch."""
    return tuple(torch.stack(x) for x in zip(*items))  # type: ignore[return-value]


class BurstRepeatDataset(_BurstDataset):
    """``size`` examples of periodic bursts among filler; ``__getitem__`` returns ``(inputs, targets, mask)``.

    A context of ``context_len + 1`` tokens is filler except for ``n_bursts`` non-overlapping
    bursts at random positions, each a ``MARKER`` followed by ``burst_len`` content symbols that
    repeat a random pattern of ``period`` symbols: ``c_k = pattern[k mod period]``. ``inputs`` are
    the first ``context_len`` tokens, ``targets`` the next ones (language modelling), and ``mask``
    marks the positions whose target is a repeated symbol (``k >= period``).

    Parameters
    ----------
    size : number of examples, ≥ 1.
    context_len : ≥ 2.
    n_bursts : ≥ 1.
    burst_len : content symbols per burst, ≥ 2.
    period : length of the repeated pattern, ``1 ≤ period < burst_len``.
    n_symbols : content symbols, ≥ 2.
    seed : ≥ 0.

    Raises
    ------
    TypeError, ValueError
        An argument is not an int in its range, ``period ≥ burst_len``, or the bursts (with their
        markers) do not fit in ``context_len + 1`` tokens.

    Notes
    -----
    A masked position is determined by the symbol ``period`` tokens earlier, a recall at a fixed
    lag. With ``period`` larger than the causal conv (width 4) the recall must go through the scan,
    and a segment of ``m > 1`` tokens at coarse resolution adds its inputs into one step (seed 001
    §3.2.1), losing their order; a token inside it also reads only the state before the segment.
    Every masked token sits in a dense stretch of ``burst_len`` tokens: a burst several tiles long
    is visible to the causal policy (which predicts tile ``i`` from tile ``i − 1``) from its second
    tile on.

    Vocabulary: content ``0 … n_symbols−1``, ``FILLER = n_symbols``, ``MARKER = n_symbols + 1``.
    Example ``i`` is a pure function of ``(seed, i)`` (as :class:`BurstCopyDataset`).
    """

    def __init__(self, size: int, *, context_len: int = 1024, n_bursts: int = 2, burst_len: int = 64,
                 period: int = 8, n_symbols: int = 8, seed: int = 0) -> None:
        super().__init__(size, n_symbols, seed)
        self.context_len = check_int(context_len, "context_len", minimum=2)
        self.n_bursts = check_int(n_bursts, "n_bursts", minimum=1)
        self.burst_len = check_int(burst_len, "burst_len", minimum=2)
        self.period = check_int(period, "period", minimum=1)
        if self.period >= self.burst_len:
            raise ValueError(f"period = {self.period} must be < burst_len = {self.burst_len} (nothing to recall)")
        if self.n_bursts * (self.burst_len + 1) > self.context_len + 1:
            raise ValueError(
                f"n_bursts·(burst_len + 1) = {self.n_bursts * (self.burst_len + 1)} must fit in context_len + 1 = "
                f"{self.context_len + 1}")
        self.marker = self.n_symbols + 1

    @property
    def seq_len(self) -> int:
        """Length of ``inputs``, ``context_len``."""
        return self.context_len

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        g = self._generator(i)
        span = self.burst_len + 1  # marker + content
        starts = self._starts(g, self.n_bursts, span, self.context_len + 1)
        seq = torch.full((self.context_len + 1,), self.filler, dtype=torch.int64)
        is_answer = torch.zeros(self.context_len + 1, dtype=torch.bool)
        k = torch.arange(self.burst_len)
        for b in range(self.n_bursts):
            s = int(starts[b])
            pattern = torch.randint(0, self.n_symbols, (self.period,), generator=g)
            seq[s] = self.marker
            seq[s + 1:s + span] = pattern[k % self.period]
            is_answer[s + 1 + self.period:s + span] = True
        return seq[:-1], seq[1:], is_answer[1:]

    def target_index(self, inputs: Tensor) -> Tensor:
        """Index ``k`` within its burst of the *target* of each input position, −1 outside bursts.

        Parameters
        ----------
        inputs : (..., context_len) int64.

        Returns
        -------
        int64 tensor of ``inputs``' shape: the target of position ``p`` is content symbol
        ``k = p − s`` of the burst whose marker is at ``s`` (``k ≥ period`` on the answer positions).

        Notes
        -----
        Used to break accuracy down by position in the burst: a causal tile policy predicts a tile
        from the one before it, so the first answers of a burst are the ones at risk
        (docs/benchmarks.md).
        """
        pos = torch.arange(inputs.shape[-1], device=inputs.device).expand_as(inputs)
        last = torch.where(inputs == self.marker, pos, torch.full_like(pos, -1)).cummax(-1).values
        k = pos - last
        return torch.where((last >= 0) & (k < self.burst_len), k, torch.full_like(k, -1))


__all__ = ["BurstCopyDataset", "BurstRepeatDataset", "collate"]
