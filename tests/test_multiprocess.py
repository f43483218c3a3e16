"""Two local processes, joined by jax.distributed, run a data-parallel jaxmm gradient step."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Runs in the full tier (pytest --full): minutes of training or execution.
pytestmark = pytest.mark.full

WORKER = Path(__file__).with_name("multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_step():
    port = str(_free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=240)[0])
    finally:
        for worker in workers:
            worker.kill()
    for i, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, f"process {i} failed:\n{output}"
        assert f"process {i}: loss" in output
