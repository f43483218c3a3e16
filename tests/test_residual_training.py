"""examples/residual_training.py at tiny sizes: every column is produced, and means something."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "examples"))

import residual_training  # noqa: E402
from residual_memory import SETTINGS  # noqa: E402

# Runs in the full tier (pytest --full): minutes of training or execution.
pytestmark = pytest.mark.full


def test_training_comparison_runs_and_reports_each_setting():
    """The transformer block (the MLP's saved bytes are tested in test_residual_memory.py)."""
    settings = [SETTINGS[0], SETTINGS[5]]  # exact, e4m3 per channel
    for task in (residual_training.transformer_task,):
        exact, narrow = residual_training.compare(task, "tiny", steps=3, settings=settings)
        assert exact["saved_ratio"] == 1 and max(exact["grad_errors"].values()) == 0
        assert exact["max_loss_gap"] == 0
        # fp8 residuals keep fewer bytes, and cost a gradient error of fp8's rounding.
        assert narrow["saved_bytes"] < exact["saved_bytes"]
        assert 0 < max(narrow["grad_errors"].values()) < 0.5
        assert narrow["finite"] and narrow["max_loss_gap"] < 0.05
