"""The README's 'Scaling out' snippet, on 8 devices."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from readme_blocks import python_blocks  # noqa: E402


def test_readme_scaling_out_runs():
    (block,) = python_blocks("Scaling out")
    exec(compile(block, "README.md (Scaling out)", "exec"), {})
