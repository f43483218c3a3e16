"""Runs tests/multidevice in a fresh process with 8 simulated CPU devices.

XLA fixes the number of host devices when JAX starts, so these tests cannot share this process
(whose JAX sees one device) without changing every other test.
"""

import subprocess
import sys
from pathlib import Path


def test_multidevice_suite():
    here = Path(__file__).parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(here / "multidevice"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(here / "multidevice"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout
