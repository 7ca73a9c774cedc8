"""``infogeo analyse --batch`` over several processes: ``torchrun --nproc_per_node K infogeo ...``.

torchrun starts K copies of the command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT``) in their environment. :meth:`Ranks.from_env` reads them and joins
a ``gloo`` process group (CPU; the texts are independent, so only a few small Python objects are
ever exchanged). Rank r analyses the texts at positions p of ``--file``'s non-empty lines with
p mod K = r and appends them to its own file ``results.rank{r}.jsonl`` beside ``results.jsonl``;
after a barrier rank 0 merges those files into ``results.jsonl`` in input order, atomically, and
removes them (:func:`tiling.workflows.batch.merge_results`). Without torchrun (or with ``WORLD_SIZE=1``)
:class:`Ranks` is the trivial group of one process, and every collective is the identity, so the
CLI has one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

__all__ = ["Ranks", "launched_world_size"]

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"the environment variable {name} must be an integer (set by torchrun), got {raw!r}") from None


def launched_world_size() -> int:
    """``WORLD_SIZE`` of the environment (1 when not launched by torchrun).

    Returns
    -------
    int ≥ 1.

    Raises
    ------
    ValueError
        ``WORLD_SIZE`` is malformed or below 1.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"the environment variable WORLD_SIZE must be >= 1, got {world}")
    return world


@dataclass
class Ranks:
    """This process's place among the ranks of a run.

    Attributes
    ----------
    rank : in ``0..world - 1``.
    world : number of ranks.

    Notes
    -----
    ``world == 1`` needs no process group: :meth:`share` and :meth:`gather` return their argument
    (wrapped in a list for :meth:`gather`).
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Ranks":
        """The ranks of a torchrun launch (joining its ``gloo`` group), or the single process.

        Returns
        -------
        :class:`Ranks`.

        Raises
        ------
        ValueError
            ``WORLD_SIZE`` is malformed, or ``RANK`` does not lie in ``0..WORLD_SIZE - 1``.
        """
        world = launched_world_size()
        if world == 1:
            return cls()
        rank = _env_int("RANK", -1)
        if not 0 <= rank < world:
            raise ValueError(f"the environment variable RANK must lie in 0..{world - 1} (WORLD_SIZE={world}), "
                             f"got {os.environ.get('RANK')!r}; launch with torchrun")
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", rank=rank, world_size=world)
        return cls(rank, world)

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that reads and writes ``results.jsonl`` and prints."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: those at positions p with p mod world == rank.

        Parameters
        ----------
        items : the sequence to share out.

        Returns
        -------
        list of the items, in order.

        Notes
        -----
        Round robin: the shards differ in size by at most one, and neighbouring texts, often of similar
        length, go to different ranks.
        """
        return list(items[self.rank::self.world])

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (``broadcast_object_list``; a barrier)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value if self.is_root else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list:
        """Every rank's ``value``, by rank, on every rank (``all_gather_object``; a barrier)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        """Leave the process group (nothing for a single process)."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
