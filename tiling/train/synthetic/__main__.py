"""``python -m tiling.train.synthetic``: the synthetic-task trainer (:mod:`tiling.train.synthetic.command`)."""
import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
