"""The README's usage example runs as written and prints what it claims."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_usage_example_runs(capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README.md has no python usage example"
    scope: dict = {}
    exec(compile(block.group(1), str(README), "exec"), scope)
    y, R = scope["y"], scope["R"]
    assert y.shape == (1, 64, 256) and bool(torch.isfinite(y).all())
    # a quarter of the recurrence: 16 segments of the 64-token tiles × N exponentials per channel
    assert capsys.readouterr().out.splitlines()[-1].endswith(str(64 * 4 * 16 * 16))
    assert 0 < float(scope["categorical_distance"](scope["p"], scope["q"])) <= torch.pi  # the radius-2 sphere
