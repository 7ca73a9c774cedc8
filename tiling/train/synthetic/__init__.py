"""The synthetic-task trainer of :class:`~tiling.train.TiledLM` (``infogeo train-synthetic``,
``python -m tiling.train.synthetic``, ``scripts/train_tiled.py``): selective burst copying and recall
at a lag inside periodic bursts (seed 001 §3.2–3.4), one run or a sweep, on one process or under
``torchrun``. One concern per module:

* :mod:`.options` -- :class:`SyntheticOptions`, every flag defined once, and :func:`settings`, the
  fingerprint a resume is checked against;
* :mod:`.rundir` -- the run folder (``--out``): refusals before a run enters it;
* :mod:`.loop` -- the model and data (:func:`build`), the batch of a step, the training loop (:func:`train`);
* :mod:`.evaluation` -- the periodic evaluation (:func:`evaluate`);
* :mod:`.sweep` -- the comparison (:func:`sweep`), its table and figure;
* :mod:`.command` -- the command line (:func:`parse_args`, :func:`main`, the ``infogeo`` subcommand).
"""
from .command import add_parser, main, parse_args, run
from .evaluation import evaluate
from .loop import batch_for_step, build, train
from .options import RUN_CONTROL, SyntheticOptions, settings
from .sweep import figure, sweep, table

__all__ = ["SyntheticOptions", "RUN_CONTROL", "settings", "parse_args", "run", "main", "add_parser", "build",
           "batch_for_step", "train", "evaluate", "sweep", "table", "figure"]
