"""The main job, python -m jaxmm: its self-check catches a broken library, its options work."""

import dataclasses
import json
import subprocess
import sys

import jax.numpy as jnp
import pytest

from jaxmm import __main__ as cli
from jaxmm import _selfcheck

ALL_CASES = _selfcheck.cases


def _few_cases():
    return [c for c in ALL_CASES() if c.dtype == "float32"][:3]


def test_main_job_runs_and_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_selfcheck, "cases", _few_cases)
    out = tmp_path / "results.json"
    assert cli.main(["--sizes", "32,64", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "FAIL" not in printed and "ratio" in printed
    results = json.loads(out.read_text())
    assert len(results["self_check"]) == 3 and all(r["passed"] for r in results["self_check"])
    cases = [r["case"] for r in results["benchmark"]]
    assert cases[:2] == ["square 32", "square 64"] and any(c.startswith("mlp") for c in cases)
    for r in results["benchmark"]:
        assert r["jaxmm_ms"] > 0 and r["reference_ms"] > 0 and r["fraction_of_limit"] > 0
    assert [o["size"] for o in results["overheads"]] == [16, 64, 256]
    for o in results["overheads"]:
        assert o["eager_ratio"] > 0 and o["compile_ratio"] > 0 and o["one_operand_speedup"] > 0


def test_self_check_fails_on_a_wrong_matmul(monkeypatch, capsys):
    # A matmul that is off by 0.1%: the self-check must notice and exit non-zero.
    def wrong(a, b):
        return jnp.matmul(a, b) * 1.001

    monkeypatch.setattr(
        _selfcheck, "cases", lambda: [dataclasses.replace(c, ours=wrong) for c in _few_cases()]
    )
    assert cli.main(["--no-benchmark"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(_selfcheck, "cases", _few_cases)
    png = tmp_path / "chart.png"
    assert cli.main(["--sizes", "32", "--quick", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "bad", [["--sizes", "abc"], ["--sizes", "0"], ["--dtype", "int3"], ["--nope"]]
)
def test_bad_arguments_get_a_usage_error(bad):
    result = subprocess.run([sys.executable, "-m", "jaxmm", *bad], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr
