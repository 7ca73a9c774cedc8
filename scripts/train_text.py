#!/usr/bin/env python
"""Alias of ``infogeo train`` (:mod:`tiling.train.text_cli`, where the program lives), kept for one release:
``python scripts/train_text.py --help`` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiling.train.text_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
