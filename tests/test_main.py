"""The main job, python -m jaxmm: its self-check catches a broken library, its options work."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jaxmm
from jaxmm import __main__ as cli
from jaxmm import (
    _benchmark,
    _clipping_benchmark,
    _cross_entropy_benchmark,
    _models_benchmark,
    _selfcheck,
)

ALL_CASES = _selfcheck.cases


def _few_cases():
    return [c for c in ALL_CASES() if c.dtype == "float32"][:3]


def _tiny_sections(monkeypatch):
    """The linear cross-entropy and model sections at sizes that take a second."""
    monkeypatch.setattr(_models_benchmark, "MLP_SIZES", {True: (2, 8, 16, 32)})
    monkeypatch.setattr(_models_benchmark, "TRANSFORMER_SIZES", {True: (1, 1, 8, 64)})
    monkeypatch.setattr(_models_benchmark, "PER_TOKEN_SIZES", {True: (1, 4, 64)})
    variants = [v for v in _models_benchmark.VARIANTS if v[0] in ("jnp", "jaxmm exact")]
    monkeypatch.setattr(_models_benchmark, "VARIANTS", (*variants, _models_benchmark.VARIANTS[-1]))
    monkeypatch.setattr(_models_benchmark, "TRAIN_STEPS", 2)
    monkeypatch.setattr(_cross_entropy_benchmark, "QUICK_MEMORY_SIZES", ((256, 32, 2048),))
    monkeypatch.setattr(_cross_entropy_benchmark, "QUICK_TIME_SIZE", (64, 16, 512))


@pytest.mark.full
def test_main_job_runs_and_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_selfcheck, "cases", _few_cases)
    _tiny_sections(monkeypatch)
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
    # The jaxmm.experimental column and its forward-mode (jvp) rows, where JAX has it.
    experimental = _benchmark._experimental_matmul() is not None
    assert ("exp. ratio" in printed and "forward mode: jvp step" in printed) == experimental
    for r in results["benchmark"]:
        for key in ("experimental_ms", "experimental_ratio", "jvp_ms", "jvp_ratio"):
            assert (r[key] is not None and r[key] > 0) == experimental
    assert [o["size"] for o in results["overheads"]] == [16, 64, 256]
    # The linear cross-entropy section: compiled temporaries and step times, jaxmm and naive.
    assert "linear cross-entropy" in printed
    (memory,) = results["linear_cross_entropy"]["memory"]
    assert (memory["tokens"], memory["d"], memory["vocab"]) == (256, 32, 2048)
    assert memory["temp_bytes"]["jaxmm"] < memory["temp_bytes"]["naive"]
    models = results["models"]
    assert {row["variant"] for row in models["memory"]} == {
        v for v, _ in _models_benchmark.VARIANTS
    }
    exact = [r for r in models["memory"] if r["variant"] == "jaxmm exact" and not r["checkpoint"]]
    reference = [r for r in models["memory"] if r["variant"] == "jnp" and not r["checkpoint"]]
    for ours, theirs in zip(exact, reference):
        assert ours["residual_bytes"] <= theirs["residual_bytes"]
    assert [s["case"] for s in models["steps"]] == [
        "scanned MLP",
        "scanned transformer",
        "nested-vmap block",
    ]
    assert all(s["jaxmm_dots"] == s["jnp_dots"] for s in models["steps"])
    mechanisms = {row["mechanism"]: row for row in models["mechanisms"]}
    assert {"jnp", "jaxmm", "jaxmm.custom_vjp"} <= set(mechanisms)
    assert mechanisms["jaxmm"]["dots"] == mechanisms["jnp"]["dots"]
    (timing,) = results["linear_cross_entropy"]["time"]["rows"]  # one size when quick
    assert timing["ms"]["jaxmm"] > 0 and timing["ratio"]["naive"] == 1.0
    for o in results["overheads"]:
        assert o["eager_ratio"] > 0 and o["compile_ratio"] > 0 and o["one_operand_speedup"] > 0


def test_self_check_fails_on_a_wrong_matmul(monkeypatch, capsys):
    # A matmul that is off by 0.1%: the self-check must notice and exit non-zero.
    def wrong(a, b):
        return jnp.matmul(a, b) * 1.001

    monkeypatch.setattr(
        _selfcheck, "cases", lambda: [dataclasses.replace(c, ours=wrong) for c in _few_cases()]
    )
    monkeypatch.setattr(_clipping_benchmark, "self_check", list)  # its own tests check it
    assert cli.main(["--no-benchmark"]) == 1
    printed = capsys.readouterr().out
    # The table marks the cell, and a line names the case (function, shapes, dtype,
    # transformation) and what differs, with the tolerance it was held to.
    assert "FAIL" in printed
    failure = next(line for line in printed.splitlines() if line.startswith("FAIL "))
    assert "matmul (2,3,4) (4,5) float32" in failure and "rtol" in failure


def test_self_check_prints_a_compact_table(monkeypatch, capsys):
    # On success: a title, one row per function with a mark per check, a count; about 20 lines.
    # (Here the first case of each function: the whole self-check runs in the full tier.)
    first = {c.function: c for c in reversed(list(ALL_CASES()))}
    monkeypatch.setattr(_selfcheck, "cases", lambda: list(first.values()))
    monkeypatch.setattr(_clipping_benchmark, "self_check", list)  # its own tests check it
    with jax.numpy_rank_promotion("allow"):  # as outside the tests: jnp.vecdot broadcasts
        assert cli.main(["--no-benchmark"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) <= 40 and printed[-1].endswith(" passed, 0 failed")
    rows = [line for line in printed if line.startswith(("matmul ", "linear_cross_entropy "))]
    assert len(rows) == 2 and all("PASS" in row and "FAIL" not in row for row in rows)


def test_self_check_covers_every_public_function():
    # Each function in reverse mode in several dtypes, under vmap and to second order; each
    # product in forward mode, in jaxmm.experimental too (where it imports), and with its
    # operands saved narrowed; every label (name, shapes, dtype, transformation) different.
    cases = list(_selfcheck.cases())
    assert len({c.label for c in cases}) == len(cases)
    done = {(c.name, c.dtype, c.transform) for c in cases}
    # clipped_grad is checked by its own rows (_clipping_benchmark.self_check).
    for name in set(jaxmm.__all__) - {"testing", "custom_vjp", "clipped_grad"}:
        for transform in ("vjp", "vmap", "grad"):
            assert (name, "float32", transform) in done, (name, transform)
        assert (name, "float64", "vjp") in done
        if name != "linear_cross_entropy":
            assert {(name, "float32", "jvp"), (name, "bfloat16", "vjp")} <= done
        if name in _selfcheck.PRODUCTS:
            assert (name, "float32", "residual bfloat16") in done
    if _selfcheck._experimental() is not None:
        from jaxmm import experimental

        for name in experimental.__all__:
            assert (f"experimental.{name}", "float32", "jvp") in done
    for name in set(jaxmm.custom_vjp.__all__) - {"dot_general_fwd", "dot_general_bwd"}:
        assert (f"custom_vjp.{name}", "float32", "vjp") in done
    for narrow in ("float16", "float8_e4m3fn", "float8_e5m2"):
        assert ("matmul", "float32", f"residual {narrow}") in done


@pytest.mark.full
def test_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(_selfcheck, "cases", _few_cases)
    _tiny_sections(monkeypatch)
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


def _run_cli(*args, command=(sys.executable, "-m", "jaxmm"), cwd=None):
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--json", "{tmp}/results.json", "--plot", "/no/such/dir/x.png"], "does not exist"),
        (["--json", "/no/such/dir/x.json"], "does not exist"),
        (["--json", "{tmp}"], "is a directory"),
    ],
    ids=["plot", "json", "json-directory"],
)
def test_unwritable_output_paths_are_refused_before_any_work(bad, message, tmp_path):
    result = _run_cli("--quick", *(arg.format(tmp=tmp_path) for arg in bad))
    assert result.returncode == 2
    assert "usage:" in result.stderr and message in result.stderr
    # Refused at once: no self-check line was printed, and nothing was written (not even the
    # valid --json path given beside the bad --plot path).
    assert "self-check" not in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_plot_without_benchmark_is_refused(tmp_path):
    result = _run_cli("--no-benchmark", "--plot", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "--no-benchmark" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_json_with_no_benchmark_writes_the_self_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_selfcheck, "cases", _few_cases)
    monkeypatch.setattr(_clipping_benchmark, "self_check", list)  # its own tests check it
    out = tmp_path / "self_check.json"
    assert cli.main(["--no-benchmark", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results["self_check"]) == 3 and results["benchmark"] == []


def test_usage_line_names_the_command_as_invoked():
    module = _run_cli("--nope")
    assert module.stderr.startswith("usage: python -m jaxmm")
    script = shutil.which("jaxmm", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the jaxmm console script is not installed next to this Python")
    installed = _run_cli("--nope", command=(script,))
    assert installed.returncode == 2
    assert installed.stderr.startswith("usage: jaxmm ")


def test_sizes_help_says_what_it_changes():
    help_text = _run_cli("--help").stdout
    assert "MLP cases are sized" in " ".join(help_text.split())
