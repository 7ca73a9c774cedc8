#!/usr/bin/env python
"""Alias of ``infogeo train-synthetic`` (``python -m tiling.train.synthetic``) for one release: the
synthetic-task trainer lives in :mod:`tiling.train.synthetic`. Also the script ``torchrun`` starts::

    torchrun --nproc_per_node=2 scripts/train_tiled.py --steps 100 --out runs/ddp
"""
import sys

from tiling.train.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
