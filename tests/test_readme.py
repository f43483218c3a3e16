"""The README's code runs (the 'Scaling out' block runs on 8 devices, in tests/multidevice)."""

import pytest
from readme_blocks import python_blocks


@pytest.mark.parametrize("section", ["Usage", "Use in Flax", "Linear cross-entropy"])
def test_readme_section_runs(section):
    blocks = python_blocks(section)
    assert blocks
    for block in blocks:
        exec(compile(block, f"README.md ({section})", "exec"), {})
