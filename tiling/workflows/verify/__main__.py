"""``python -m tiling.workflows.verify [--quick] [--out DIR] [--seed N]``."""
import sys

from tiling.workflows.verify import main

sys.exit(main())
